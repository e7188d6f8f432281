# SPDX-License-Identifier: BSD-2-Clause
"""The float32 golden model of the M³ViT backbone (multi-gate MoE), in PyTorch.

This is the reference the integer twin and the hardware are checked against. It computes exactly
what the upstream ``VisionTransformerMoE`` computes at inference in multi-gate mode (one router per
task in every MoE block), and its ``state_dict()`` has exactly the upstream keys and shapes:

=============================================  ==============================================
key                                            shape
=============================================  ==============================================
``cls_token``                                  (1, 1, D)
``pos_embed``                                  (1, N, D)
``patch_embed.proj.weight`` / ``.bias``        (D, 3, P, P) / (D,)
``blocks.{i}.norm1.weight`` / ``.bias``        (D,)
``blocks.{i}.attn.qkv.weight`` / ``.bias``     (3D, D) / (3D,), rows [q | k | v], heads
                                               contiguous inside each
``blocks.{i}.attn.proj.weight`` / ``.bias``    (D, D) / (D,)
``blocks.{i}.norm2.weight`` / ``.bias``        (D,)
even i: ``blocks.{i}.mlp.fc1.*``               (Hm, D) / (Hm,)
even i: ``blocks.{i}.mlp.fc2.*``               (D, Hm) / (D,)
odd i: ``blocks.{i}.mlp.gate.{t}.w_gate``      (D, E), one per task t
odd i: ``blocks.{i}.mlp.experts.htoh4.*``      (E, Hd, D) / (E, Hd)
odd i: ``blocks.{i}.mlp.experts.h4toh.*``      (E, D, Hd) / (E, D)
=============================================  ==============================================

Routing is deterministic: see :func:`route` for the tie rule.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

__all__ = ["LN_EPS", "route", "M3ViT"]

#: LayerNorm epsilon of every backbone LayerNorm (and of the decoder heads' input LayerNorm).
LN_EPS = 1e-6


def _gelu(x):
    """Exact (erf) GELU, as ``nn.GELU()`` upstream."""
    return F.gelu(x, approximate="none")


def _router(u, w_gate, k):
    """Compute router logits, probabilities and the top-k selection; see :func:`route`."""
    logits = u @ w_gate
    probs = torch.softmax(logits, dim=-1)
    # A stable descending sort keeps equal probabilities in index order, so the lowest expert
    # index wins a tie. torch.topk leaves the order of ties unspecified.
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices
    idx = order[..., :k]
    return logits, probs, idx, torch.gather(probs, -1, idx)


def route(u, w_gate, k):
    """Route tokens to their top-k experts, as upstream's ``NoisyGate_VMoE`` at inference.

    ``p = softmax(u @ w_gate)`` over all E experts; the k largest probabilities are selected in
    descending order and returned as they are, **not renormalised** (their sum is at most 1).
    Ties go to the **lowest expert index**: among equal probabilities the smaller index is
    ranked first (implemented with a stable descending sort). The selection is made on the
    probabilities, as upstream; because softmax is monotonic this equals a selection on the
    logits except where rounding in softmax makes two different logits equal probabilities.

    Parameters
    ----------
    u : torch.Tensor
        Router inputs, shape (..., D) (the LN2 output of every token, cls included).
    w_gate : torch.Tensor
        The task's router matrix, shape (D, E).
    k : int
        Experts per token, ``1 <= k <= E``.

    Returns
    -------
    idx : torch.Tensor
        Selected expert indices, shape (..., k), int64, best first.
    scores : torch.Tensor
        Their softmax probabilities, shape (..., k).

    Raises
    ------
    ValueError
        If the shapes disagree or ``k`` is out of range.
    """
    if w_gate.dim() != 2 or u.shape[-1] != w_gate.shape[0]:
        raise ValueError(f"router input of shape {tuple(u.shape)} does not match w_gate of shape "
                         f"{tuple(w_gate.shape)} (expected (..., D) and (D, E))")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= w_gate.shape[1]:
        raise ValueError(f"k must be an integer in 1..{w_gate.shape[1]}, not {k!r}")
    _, _, idx, scores = _router(u, w_gate, k)
    return idx, scores


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: ``Conv2d(C, D, P, stride P)`` with bias, raster order."""

    def __init__(self, cfg):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, x):
        """Embed (B, C, H, W) into (B, h·w, D) tokens; token r·w + c is patch (r, c)."""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (rows [q | k | v])."""

    def __init__(self, cfg):
        super().__init__()
        self.heads = cfg.heads
        self.scale = cfg.head_dim ** -0.5
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, taps=None, prefix=""):
        """Attend over (B, N, D) and return the projected output (B, N, D)."""
        b, n, d = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        probs = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(b, n, d)
        if taps is not None:
            taps[prefix + "qkv"] = qkv
            taps[prefix + "attn_probs"] = probs
            taps[prefix + "attn_out"] = out
        return self.proj(out)


class Mlp(nn.Module):
    """The dense block MLP: ``fc1`` → exact GELU → ``fc2``."""

    def __init__(self, cfg):
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.dim)

    def forward(self, x, task, taps=None, prefix=""):
        """Apply the MLP to (B, N, D); ``task`` is unused (dense blocks are shared)."""
        pre = self.fc1(x)
        hidden = _gelu(pre)
        if taps is not None:
            taps[prefix + "fc1"] = pre
            taps[prefix + "hidden"] = hidden
        return self.fc2(hidden)


class ExpertLinear(nn.Module):
    """E stacked linear layers: ``weight`` (E, out, in), ``bias`` (E, out), as fastmoe's."""

    def __init__(self, experts, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(experts, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(experts, out_features))

    def forward(self, x, expert):
        """Apply expert ``expert`` to the rows of ``x``."""
        return F.linear(x, self.weight[expert], self.bias[expert])


class Experts(nn.Module):
    """The E expert MLPs of one MoE block: ``htoh4`` → exact GELU → ``h4toh``."""

    def __init__(self, cfg):
        super().__init__()
        self.htoh4 = ExpertLinear(cfg.num_experts, cfg.dim, cfg.expert_hidden)
        self.h4toh = ExpertLinear(cfg.num_experts, cfg.expert_hidden, cfg.dim)

    def forward(self, x, expert):
        """Apply expert ``expert`` to the rows of ``x`` (M, D)."""
        return self.h4toh(_gelu(self.htoh4(x, expert)), expert)


class Router(nn.Module):
    """One task's router: ``w_gate`` (D, E), no bias, no noise at inference."""

    def __init__(self, cfg):
        super().__init__()
        self.w_gate = nn.Parameter(torch.zeros(cfg.dim, cfg.num_experts))


class MoE(nn.Module):
    """The MoE MLP of an odd block: one router per task, E shared experts, top-k combine."""

    def __init__(self, cfg):
        super().__init__()
        self.top_k = cfg.top_k
        self.gate = nn.ModuleList(Router(cfg) for _ in range(cfg.num_tasks))
        self.experts = Experts(cfg)

    def forward(self, x, task, taps=None, prefix=""):
        """Compute ``Σ_j s_j·expert_{e_j}(u)`` for (B, N, D) inputs with router ``task``.

        Each expert runs once on the tokens that selected it; the k weighted outputs of a token
        are then summed in top-k order (best first), as upstream's ``bmm(scores, outputs)``.
        """
        shape = x.shape
        u = x.reshape(-1, shape[-1])
        logits, probs, idx, scores = _router(u, self.gate[task].w_gate, self.top_k)
        outs = u.new_zeros(u.shape[0], self.top_k, shape[-1])
        for e in torch.unique(idx).tolist():
            tok, slot = torch.nonzero(idx == e, as_tuple=True)
            outs[tok, slot] = self.experts(u[tok], e)
        y = torch.bmm(scores.unsqueeze(1), outs).reshape(shape)
        if taps is not None:
            lead = shape[:-1]
            taps[prefix + "router_logits"] = logits.reshape(*lead, -1)
            taps[prefix + "router_probs"] = probs.reshape(*lead, -1)
            taps[prefix + "topk_idx"] = idx.reshape(*lead, -1)
            taps[prefix + "topk_scores"] = scores.reshape(*lead, -1)
            taps[prefix + "moe_out"] = y
        return y


class Block(nn.Module):
    """A pre-norm transformer block; the MLP is dense for even ``index`` and MoE for odd."""

    def __init__(self, cfg, index):
        super().__init__()
        self.index = index
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.mlp = MoE(cfg) if cfg.is_moe(index) else Mlp(cfg)

    def forward(self, x, task, taps=None):
        """Apply the block to (B, N, D) tokens with task ``task``'s routers."""
        prefix = f"block{self.index}."
        ln1 = self.norm1(x)
        if taps is not None:
            taps[prefix + "ln1"] = ln1
        x = x + self.attn(ln1, taps, prefix)
        ln2 = self.norm2(x)
        if taps is not None:
            taps[prefix + "resid1"] = x
            taps[prefix + "ln2"] = ln2
        x = x + self.mlp(ln2, task, taps, prefix)
        if taps is not None:
            taps[f"block{self.index}"] = x
        return x


class M3ViT(nn.Module):
    """The M³ViT backbone in multi-gate mode, float32, inference semantics.

    Patch embedding (``Conv2d(3, D, P, stride P)``), raster token order, a cls token in front,
    a learned ``pos_embed`` (1, N, D) added without interpolation, then ``depth`` pre-norm blocks
    (LayerNorm eps 1e-6; attention with scale ``head_dim**-0.5``; even blocks a dense MLP with
    exact-erf GELU, odd blocks an MoE routed by the selected task's router, see :func:`route`).
    There is no final LayerNorm. Dropout, DropPath and router noise are absent (eval mode).

    Construction gives PyTorch's default initialisation for the Linear, Conv and LayerNorm
    parameters and zeros for the cls token, position embedding, experts and routers; use
    :func:`golden.checkpoint.init_model` or :func:`golden.checkpoint.load_checkpoint` for
    meaningful weights.

    Parameters
    ----------
    cfg : ModelConfig
        Backbone shapes.
    """

    def __init__(self, cfg):
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, not {cfg!r}")
        super().__init__()
        self._cfg = cfg
        # Registered before the submodules so that state_dict() lists them first, as upstream.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))

    @property
    def cfg(self):
        """The model configuration."""
        return self._cfg

    def _check_image(self, image):
        """Return ``image`` as a batched float tensor and whether it was batched."""
        cfg = self._cfg
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be a torch.Tensor or numpy array, not "
                            f"{type(image).__name__}")
        if not image.is_floating_point():
            raise TypeError(f"image must be a floating-point tensor, not {image.dtype}")
        chw = (cfg.in_chans, cfg.img_h, cfg.img_w)
        batched = image.dim() == 4
        if image.dim() not in (3, 4) or tuple(image.shape[-3:]) != chw:
            raise ValueError(f"image has shape {tuple(image.shape)}; {cfg.name} expects {chw} "
                             f"or (B, {', '.join(map(str, chw))})")
        image = image.to(self.cls_token.dtype)
        return (image if batched else image.unsqueeze(0)), batched

    def forward(self, image, task, taps=None):
        """Run the backbone for one task and return the last block's output.

        Parameters
        ----------
        image : torch.Tensor or numpy.ndarray
            Normalised image, float, shape (3, H, W) or (B, 3, H, W), exactly the configured
            size.
        task : int
            Task id (index into ``cfg.task_names``); selects the router of every MoE block.
        taps : dict, optional
            If given, filled with the intermediate tensors (batch dimension squeezed for an
            unbatched image; N tokens, cls first): ``patch_embed`` (N, D, after cls and
            pos_embed), and for every block i ``block{i}.ln1``, ``block{i}.qkv`` (N, 3D),
            ``block{i}.attn_probs`` (heads, N, N), ``block{i}.attn_out`` (N, D, heads
            concatenated, before ``proj``), ``block{i}.resid1``, ``block{i}.ln2``; dense blocks
            ``block{i}.fc1`` (before GELU) and ``block{i}.hidden`` (after GELU); MoE blocks
            ``block{i}.router_logits`` / ``router_probs`` (N, E), ``block{i}.topk_idx`` (N, k,
            int64) / ``topk_scores`` (N, k), ``block{i}.moe_out`` (N, D, before the residual);
            and ``block{i}``, the block output.

        Returns
        -------
        torch.Tensor
            Block ``depth - 1`` output, (B, N, D), or (N, D) for an unbatched image.

        Raises
        ------
        ValueError
            If ``task`` is out of range or the image has the wrong shape.
        TypeError
            If ``task`` is not an integer or the image is not a float tensor.
        """
        self._cfg.check_task(task)
        x, batched = self._check_image(image)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        inner = None if taps is None else {}
        if inner is not None:
            inner["patch_embed"] = x
        for block in self.blocks:
            x = block(x, task, inner)
        if taps is not None:
            taps.update((key, (value if batched else value.squeeze(0)).detach())
                        for key, value in inner.items())
        return x if batched else x.squeeze(0)
