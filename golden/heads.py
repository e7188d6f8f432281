# SPDX-License-Identifier: BSD-2-Clause
"""The per-task PUP decoder heads of M³ViT and the whole multi-task model, float32, PyTorch.

Each task has its own progressive-upsampling ("PUP", from SETR) head on the last block's output;
heads are never shared and never run on the accelerator, but the golden flow needs them to turn a
backbone output into a task prediction.

Checkpoint layout of the whole model: :class:`M3ViTMultiTask` keeps upstream ``MultiTaskModel``'s
attribute names, so its ``state_dict()`` holds the backbone under a ``backbone.`` prefix
(``backbone.blocks.0.norm1.weight``, ...) and the heads under ``decoders.{task_name}.``
(``decoders.semseg.conv_0.weight``, ...). ``model.backbone.state_dict()`` alone has exactly the
upstream backbone keys, without a prefix.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .model import LN_EPS, M3ViT

__all__ = ["BN_EPS", "PUPHead", "M3ViTMultiTask", "postprocess"]

#: BatchNorm epsilon of the heads (mmcv SyncBN, evaluated as BatchNorm2d with running stats).
BN_EPS = 1e-5

_N_CONV = 4  # 3×3 conv + BN + ReLU stages; the first three are followed by a ×2 upsample


def _upsample2(x):
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class PUPHead(nn.Module):
    """One task's PUP decoder head (upstream ``VisionTransformerUpHead``), inference semantics.

    On the (B, N, D) output of the last block: drop the cls token (always index 0; upstream's
    ``N % 48`` test is not mirrored), ``LayerNorm(D, eps 1e-6)``, reshape row-major to
    (B, D, h, w), then ``conv_0..conv_3`` (3×3, pad 1, bias) each followed by
    ``syncbn_fc_{i}`` (BatchNorm2d, eps 1e-5, running statistics) and ReLU, with a bilinear ×2
    (``align_corners=False``) after the first three, then ``conv_4`` (1×1 → classes) and a final
    bilinear ×2. The output is (B, classes, 16h, 16w), the input resolution for 16-pixel
    patches.

    Parameters
    ----------
    cfg : ModelConfig
        Backbone shapes; ``cfg.head_channels`` is the conv width C_h.
    num_classes : int
        Output channels of the task.
    """

    def __init__(self, cfg, num_classes):
        super().__init__()
        self._cfg = cfg
        ch = cfg.head_channels
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        for i in range(_N_CONV):
            self.add_module(f"conv_{i}", nn.Conv2d(cfg.dim if i == 0 else ch, ch, 3, padding=1))
            self.add_module(f"syncbn_fc_{i}", nn.BatchNorm2d(ch, eps=BN_EPS))
        self.conv_4 = nn.Conv2d(ch, num_classes, 1)

    def forward(self, x):
        """Decode (B, N, D) block outputs into (B, classes, 16h, 16w) task logits."""
        cfg = self._cfg
        x = self.norm(x[:, 1:])
        x = x.transpose(1, 2).reshape(x.shape[0], cfg.dim, cfg.grid_h, cfg.grid_w)
        for i in range(_N_CONV):
            conv, bn = getattr(self, f"conv_{i}"), getattr(self, f"syncbn_fc_{i}")
            # Evaluated with running statistics whatever the module's training flag.
            x = F.relu(F.batch_norm(conv(x), bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                    training=False, eps=bn.eps))
            if i < _N_CONV - 1:
                x = _upsample2(x)
        return _upsample2(self.conv_4(x))


class M3ViTMultiTask(nn.Module):
    """The M³ViT backbone plus one PUP head per task (upstream ``MultiTaskModel``, multi-gate).

    Running task t runs the backbone with task t's routers and then only decoder t, as in
    upstream's single-task inference. The state-dict layout is described in the module
    docstring (``backbone.`` and ``decoders.{task_name}.`` prefixes).

    Parameters
    ----------
    cfg : ModelConfig
        Backbone shapes and the task names/classes.

    Members
    -------
    backbone : M3ViT
        The shared backbone.
    decoders : torch.nn.ModuleDict
        :class:`PUPHead` per task, keyed by task name.
    """

    def __init__(self, cfg):
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, not {cfg!r}")
        super().__init__()
        self._cfg = cfg
        self.backbone = M3ViT(cfg)
        self.decoders = nn.ModuleDict(
            (name, PUPHead(cfg, classes))
            for name, classes in zip(cfg.task_names, cfg.task_classes))

    @property
    def cfg(self):
        """The model configuration."""
        return self._cfg

    def task_id(self, task):
        """Return the task id of ``task``, given as a task id or a task name.

        Raises
        ------
        ValueError
            If ``task`` is an unknown name or an out-of-range id.
        """
        if isinstance(task, str):
            if task not in self._cfg.task_names:
                raise ValueError(f"unknown task {task!r} for {self._cfg.name}; known: "
                                 f"{', '.join(self._cfg.task_names)}")
            return self._cfg.task_names.index(task)
        self._cfg.check_task(task)
        return task

    def forward(self, image, task):
        """Predict task ``task`` (id or name) for an image, at the input resolution.

        Parameters
        ----------
        image : torch.Tensor or numpy.ndarray
            Normalised image, (3, H, W) or (B, 3, H, W).
        task : int or str
            Task id or name.

        Returns
        -------
        torch.Tensor
            Task logits (before :func:`postprocess`), (classes, H, W) or (B, classes, H, W).
        """
        tid = self.task_id(task)
        feats = self.backbone(image, tid)
        batched = feats.dim() == 3
        out = self.decoders[self._cfg.task_names[tid]](feats if batched else feats.unsqueeze(0))
        # Upstream resizes to the input size; with the ×16 head this is the identity.
        out = F.interpolate(out, size=(self._cfg.img_h, self._cfg.img_w), mode="bilinear",
                            align_corners=False)
        return out if batched else out.squeeze(0)


def postprocess(task_name, out):
    """Turn a head's logits into the task's final prediction, as upstream's evaluation does.

    ``semseg`` and ``human_parts``: the argmax over classes (int64, class dimension removed;
    ties go to the lowest class). ``depth``: unchanged. ``normals``: L2-normalised over the
    three channels, then mapped to ``(n + 1)·255/2``. ``sal`` and ``edge``: ``255·sigmoid``.
    Unlike upstream, which moves channels last, the layout stays channels-first.

    Parameters
    ----------
    task_name : str
        One of ``semseg``, ``human_parts``, ``depth``, ``normals``, ``sal``, ``edge``.
    out : torch.Tensor
        Logits, (C, H, W) or (B, C, H, W).

    Returns
    -------
    torch.Tensor
        (H, W) / (B, H, W) class indices for the segmentation tasks, otherwise the same shape
        as ``out``.

    Raises
    ------
    ValueError
        For an unknown task name or an ``out`` that is not 3- or 4-dimensional.
    """
    if out.dim() not in (3, 4):
        raise ValueError(f"out must be (C, H, W) or (B, C, H, W), not {tuple(out.shape)}")
    if task_name in ("semseg", "human_parts"):
        return torch.argmax(out, dim=-3)
    if task_name == "depth":
        return out
    if task_name == "normals":
        return (F.normalize(out, p=2, dim=-3) + 1.0) * 255.0 / 2.0
    if task_name in ("sal", "edge"):
        return 255.0 * torch.sigmoid(out)
    raise ValueError(f"unknown task {task_name!r}; postprocess knows semseg, human_parts, depth, "
                     f"normals, sal, edge")
