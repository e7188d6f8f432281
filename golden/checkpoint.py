# SPDX-License-Identifier: BSD-2-Clause
"""Seeded weights, seeded images and strict checkpoint I/O for the golden M³ViT.

There are no released M³ViT weights, so tests and benches use :func:`init_model`: a deterministic
initialisation with realistic ViT magnitudes in which every parameter (biases and LayerNorm
affines included) is random, so that every datapath is exercised. fastmoe's own expert init is
deliberately not mirrored: its fan-in over the whole (E, out, in) tensor gives near-zero experts.

Checkpoints are the plain ``state_dict()`` saved with :func:`torch.save`: upstream backbone keys
for :class:`~golden.model.M3ViT`; ``backbone.``/``decoders.{task}.`` keys for
:class:`~golden.heads.M3ViTMultiTask` (see :mod:`golden.heads`). Loading also accepts a
training checkpoint that wraps the state dict under ``'model'`` or ``'state_dict'``.
"""

import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from .config import ModelConfig
from .heads import M3ViTMultiTask
from .model import M3ViT

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "init_model", "init_multitask", "seeded_image",
           "save_checkpoint", "load_checkpoint", "load_multitask"]

#: Per-channel normalisation of the input images (upstream ``Normalize``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_STD = 0.02          # trunc-normal std of weights, cls and pos; normal std of biases, LN bias
_LN_GAIN_STD = 0.05  # LayerNorm / BatchNorm gain is 1 + N(0, this)
_MAX_LISTED = 10     # keys named per category in a checkpoint mismatch message


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in 0..2**63-1, not {seed!r}")


def _check_cfg(cfg):
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, not {cfg!r}")


def _empty(cls, cfg):
    """Build ``cls(cfg)`` with uninitialised CPU storage (no RNG draws, no wasted init)."""
    _check_cfg(cfg)
    with torch.device("meta"):
        model = cls(cfg)
    return model.to_empty(device="cpu")


def _trunc_normal(t, std, gen):
    torch.nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std, generator=gen)


def _init_backbone(model, gen):
    """Fill every backbone parameter in place, in ``state_dict()`` order, from ``gen``."""
    cfg = model.cfg
    conv_bound = 1 / math.sqrt(cfg.patch_dim)
    gate_bound = 1 / math.sqrt(cfg.num_experts)
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name in ("cls_token", "pos_embed"):
            _trunc_normal(p.data, _STD, gen)
        elif name.startswith("patch_embed."):
            # PyTorch's Conv2d default, which timm keeps for the ViT patch embedding.
            p.data.uniform_(-conv_bound, conv_bound, generator=gen)
        elif leaf == "w_gate":
            # kaiming_uniform(a=√5) on a (D, E) tensor: fan-in E, as upstream.
            p.data.uniform_(-gate_bound, gate_bound, generator=gen)
        elif name.endswith("attn.qkv.weight"):
            # Trained ViTs attend sharply; std 0.02 would give near-uniform attention. With
            # std sqrt(2/D), q and k have about twice unit variance and the scaled scores a
            # standard deviation near 2.
            _trunc_normal(p.data, math.sqrt(2.0 / cfg.dim), gen)
        elif ".norm" in name and leaf == "weight":
            p.data.normal_(1.0, _LN_GAIN_STD, generator=gen)
        elif leaf == "weight":
            _trunc_normal(p.data, _STD, gen)
        elif leaf == "bias":
            p.data.normal_(0.0, _STD, generator=gen)
        else:
            raise AssertionError(f"no initialisation rule for parameter {name}")


def _init_decoders(decoders, gen):
    """Fill every decoder parameter and BatchNorm statistic in place from ``gen``."""
    for name, t in decoders.state_dict(keep_vars=True).items():
        t = t.data
        leaf = name.rsplit(".", 1)[-1]
        norm = ".norm." in name or ".syncbn_fc_" in name
        if leaf == "num_batches_tracked":
            t.zero_()
        elif leaf == "running_mean":
            t.normal_(0.0, 0.1, generator=gen)
        elif leaf == "running_var":
            t.uniform_(0.5, 1.5, generator=gen)
        elif norm and leaf == "weight":
            t.normal_(1.0, _LN_GAIN_STD, generator=gen)
        elif leaf == "weight":
            # He-normal on the fan-in keeps the ReLU stack's activations at unit scale.
            t.normal_(0.0, math.sqrt(2.0 / t[0].numel()), generator=gen)
        elif leaf == "bias":
            t.normal_(0.0, _STD, generator=gen)
        else:
            raise AssertionError(f"no initialisation rule for decoder tensor {name}")


def init_model(cfg, seed):
    """Build a backbone with deterministic, seeded, ViT-like random weights.

    Weights of every Linear and expert layer, the cls token and ``pos_embed`` are truncated
    normal, std 0.02, cut at ±2 std; the patch-embedding conv weight and bias are
    U(±1/√(3·P²)) (PyTorch's conv default, kept by timm's ViT); Linear and expert biases are
    N(0, 0.02²); LayerNorm gains 1 + N(0, 0.05²) and biases N(0, 0.02²); routers ``w_gate``
    U(±1/√E) as upstream. The values depend only on ``cfg`` and ``seed`` (a private
    :class:`torch.Generator`; the global RNG is neither used nor advanced).

    Parameters
    ----------
    cfg : ModelConfig
        Backbone shapes.
    seed : int
        Seed, 0 ≤ seed < 2**63.

    Returns
    -------
    M3ViT
        The model, in eval mode.
    """
    _check_seed(seed)
    model = _empty(M3ViT, cfg)
    _init_backbone(model, torch.Generator().manual_seed(seed))
    return model.eval()


def init_multitask(cfg, seed):
    """Build the backbone plus heads with deterministic, seeded random weights.

    The backbone is identical to ``init_model(cfg, seed)``. The heads' LayerNorm follows the
    backbone rule, conv weights are He-normal N(0, 2/fan_in), conv biases N(0, 0.02²),
    BatchNorm gains 1 + N(0, 0.05²), biases N(0, 0.02²), running means N(0, 0.1²), running
    variances U(0.5, 1.5), so that the eval-mode BatchNorm is not the identity.

    Parameters
    ----------
    cfg : ModelConfig
        Backbone shapes and task names/classes.
    seed : int
        Seed, 0 ≤ seed < 2**63.

    Returns
    -------
    M3ViTMultiTask
        The model, in eval mode.
    """
    _check_seed(seed)
    model = _empty(M3ViTMultiTask, cfg)
    gen = torch.Generator().manual_seed(seed)
    _init_backbone(model.backbone, gen)
    _init_decoders(model.decoders, gen)
    return model.eval()


def _bilinear_matrix(n_out, n_in):
    """(n_out, n_in) matrix that resamples a length-n_in signal linearly, ends aligned."""
    pos = np.linspace(0.0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def seeded_image(cfg, seed):
    """Return a deterministic, natural-looking, normalised test image.

    A smooth random field (four octaves of bilinearly upsampled noise, a luminance field shared
    by the channels plus weaker per-channel colour fields) is stretched to [0, 1], given
    N(0, 0.02²) pixel noise, clipped, quantised to 8 bits as a decoded JPEG would be, and then
    normalised with the ImageNet mean and std, as upstream's input pipeline does.

    Parameters
    ----------
    cfg : ModelConfig
        Supplies the image size; ``cfg.in_chans`` must be 3.
    seed : int
        Seed, 0 ≤ seed < 2**63.

    Returns
    -------
    numpy.ndarray
        float32, shape (3, H, W).
    """
    _check_cfg(cfg)
    _check_seed(seed)
    if cfg.in_chans != len(IMAGENET_MEAN):
        raise ValueError(f"seeded_image makes RGB images; {cfg.name} has {cfg.in_chans} "
                         f"input channels")
    rng = np.random.default_rng(seed)
    h, w = cfg.img_h, cfg.img_w

    def field(channels):
        total = np.zeros((channels, h, w))
        for octave in range(4):
            cells = 2 ** (octave + 1)
            grid = rng.standard_normal((channels, cells + 1, cells + 1))
            up = _bilinear_matrix(h, cells + 1) @ grid @ _bilinear_matrix(w, cells + 1).T
            total += 0.5 ** octave * up
        return total

    img = field(1) + 0.3 * field(3)
    img = (img - img.min()) / (img.max() - img.min())
    img = np.clip(img + rng.normal(0.0, 0.02, img.shape), 0.0, 1.0)
    img = np.round(img * 255.0) / 255.0
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    return ((img - mean) / std).astype(np.float32)


def save_checkpoint(model, path):
    """Save ``model.state_dict()`` (nothing else) to ``path`` with :func:`torch.save`.

    Parameters
    ----------
    model : M3ViT or M3ViTMultiTask
        The model to save.
    path : str or os.PathLike
        Destination file.
    """
    if not isinstance(model, (M3ViT, M3ViTMultiTask)):
        raise TypeError(f"model must be an M3ViT or M3ViTMultiTask, not {type(model).__name__}")
    torch.save(model.state_dict(), path)


def _read_state_dict(source):
    """Return the state dict of a path or mapping, unwrapping ``'model'``/``'state_dict'``."""
    if isinstance(source, (str, os.PathLike)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping):
        raise TypeError(f"a checkpoint must be a path or a state dict, not "
                        f"{type(source).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(source.get(wrapper), Mapping):
            source = source[wrapper]
            break
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key!r} is a {type(value).__name__}, "
                             f"not a tensor")
    return source


def _listed(keys):
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _load_strict(model, state, hint):
    """Load ``state`` into ``model`` after checking keys and shapes; raise naming every problem."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [k for k in expected
                 if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing key(s) {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s) {_listed(unexpected)}" + hint(unexpected))
    for key in misshaped[:_MAX_LISTED]:
        problems.append(f"key {key!r} has shape {tuple(state[key].shape)} in the checkpoint "
                        f"but {tuple(expected[key].shape)} in the model")
    if len(misshaped) > _MAX_LISTED:
        problems.append(f"and {len(misshaped) - _MAX_LISTED} more misshaped keys")
    if problems:
        raise ValueError(f"checkpoint does not match config {model.cfg.name!r}: "
                         + "; ".join(problems))
    model.load_state_dict(state)
    return model.eval()


def _backbone_hint(unexpected):
    if any(k.startswith(("decoders.", "backbone.")) for k in unexpected):
        return (" (this looks like a whole-model checkpoint: use load_multitask(...) and take "
                "its .backbone)")
    return ""


def _multitask_hint(unexpected):
    if not any(k.startswith(("decoders.", "backbone.")) for k in unexpected):
        return (" (this looks like a backbone-only checkpoint: use load_checkpoint, or "
                "init_multitask for random heads)")
    return ""


def load_checkpoint(source, cfg):
    """Load a backbone checkpoint strictly.

    Parameters
    ----------
    source : str, os.PathLike or Mapping
        A file written by :func:`save_checkpoint` (or any :func:`torch.save` of a state dict),
        or the state dict itself; a dict wrapping the state dict under ``'model'`` or
        ``'state_dict'`` (other top-level entries ignored) is unwrapped.
    cfg : ModelConfig
        The configuration the checkpoint must match.

    Returns
    -------
    M3ViT
        The loaded backbone, in eval mode.

    Raises
    ------
    ValueError
        Naming every missing key, every unexpected key (decoder or ``backbone.``-prefixed keys
        of a whole-model checkpoint included) and every misshaped key with both shapes.
    """
    state = _read_state_dict(source)
    return _load_strict(_empty(M3ViT, cfg), state, _backbone_hint)


def load_multitask(source, cfg):
    """Load a whole-model (backbone plus every task head) checkpoint strictly.

    Parameters
    ----------
    source : str, os.PathLike or Mapping
        As for :func:`load_checkpoint`; keys ``backbone.*`` and ``decoders.{task}.*``.
    cfg : ModelConfig
        The configuration the checkpoint must match; every task of ``cfg`` needs its head.

    Returns
    -------
    M3ViTMultiTask
        The loaded model, in eval mode.

    Raises
    ------
    ValueError
        Naming every missing, unexpected or misshaped key.
    """
    state = _read_state_dict(source)
    return _load_strict(_empty(M3ViTMultiTask, cfg), state, _multitask_hint)
