# SPDX-License-Identifier: BSD-2-Clause
"""The whole-frame integer twin: quantised parameters and the integer forward pass.

:func:`quantize_params` turns a float checkpoint (upstream key layout) into the integer
parameters the hardware holds; :func:`twin_forward` runs one backbone frame for one task with
the operations of :mod:`golden.qref`, in the order the accelerator's sequencer runs them, and can
record per-layer taps. Its output is the definition of what the accelerator must produce.

Host-side folds (done once, in float64, then rounded): the cls token is added to ``pos_embed[0]``
so that row 0 of the token matrix is one quantised vector; the router weights ``w_gate`` (D, E)
are stored transposed, (E, D), the layout of every other weight (``Y = X·Wᵀ``).
"""

from dataclasses import dataclass

import numpy as np

from . import qref
from .config import ModelConfig, get_config
from .fixed import quantize
from .numerics import DEFAULT_NUMERICS, Numerics

__all__ = ["QuantizedModel", "quantize_params", "quantize_expert_weight", "quantize_image",
           "image_patches", "twin_forward"]


@dataclass(frozen=True)
class QuantizedModel:
    """Integer parameters of one backbone.

    ``params`` maps names to int64 arrays: ``patch_w`` (D, 3·p·p), ``patch_b`` (D,), ``pos``
    (N, D, cls folded into row 0), and per block ``blocks.{i}.`` + ``ln1_g``, ``ln1_b``,
    ``qkv_w`` (3D, D), ``qkv_b``, ``proj_w`` (D, D), ``proj_b``, ``ln2_g``, ``ln2_b``; dense blocks
    ``fc1_w`` (H, D), ``fc1_b``, ``fc2_w`` (D, H), ``fc2_b``; MoE blocks ``w1`` (E, Hd, D),
    ``b1`` (E, Hd), ``w2`` (E, D, Hd), ``b2`` (E, D), ``gate`` (T, E, D).
    """

    cfg: ModelConfig
    numerics: Numerics
    params: dict

    def __getitem__(self, key):
        return self.params[key]


def _get(state, key, shape):
    if key not in state:
        raise ValueError(f"checkpoint is missing key {key!r}")
    value = state[key]
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    value = np.asarray(value, dtype=np.float64)
    if value.shape != tuple(shape):
        raise ValueError(f"checkpoint key {key!r} has shape {value.shape}, expected "
                         f"{tuple(shape)}")
    return value


def quantize_expert_weight(values, numerics=DEFAULT_NUMERICS):
    """Quantise expert weights: rounded half to even and saturated to
    ``numerics.expert_weight_format``, returned as ``weight`` integers (their low
    ``expert_weight_shift`` bits zero; see :mod:`golden.numerics`)."""
    return quantize(values, numerics.expert_weight_format) << numerics.expert_weight_shift


def quantize_params(state, cfg, numerics=DEFAULT_NUMERICS):
    """Quantise a float state dict in the upstream M³ViT key layout.

    Values are rounded half to even and saturated to their formats (see
    :mod:`golden.numerics`; expert weights with :func:`quantize_expert_weight`). Missing or
    misshaped keys raise ``ValueError`` naming the key.
    """
    cfg = get_config(cfg)
    nx = numerics
    d, n, e, hd = cfg.dim, cfg.tokens, cfg.num_experts, cfg.expert_hidden
    p = {}
    w = _get(state, "patch_embed.proj.weight", (d, cfg.in_chans, cfg.patch, cfg.patch))
    p["patch_w"] = quantize(w.reshape(d, -1), nx.weight)
    p["patch_b"] = quantize(_get(state, "patch_embed.proj.bias", (d,)), nx.bias)
    pos = _get(state, "pos_embed", (1, n, d))[0].copy()
    pos[0] += _get(state, "cls_token", (1, 1, d))[0, 0]
    p["pos"] = quantize(pos, nx.act)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        for ln in ("1", "2"):
            p[b + f"ln{ln}_g"] = quantize(_get(state, b + f"norm{ln}.weight", (d,)), nx.ln_param)
            p[b + f"ln{ln}_b"] = quantize(_get(state, b + f"norm{ln}.bias", (d,)), nx.ln_param)
        p[b + "qkv_w"] = quantize(_get(state, b + "attn.qkv.weight", (3 * d, d)), nx.weight)
        p[b + "qkv_b"] = quantize(_get(state, b + "attn.qkv.bias", (3 * d,)), nx.bias)
        p[b + "proj_w"] = quantize(_get(state, b + "attn.proj.weight", (d, d)), nx.weight)
        p[b + "proj_b"] = quantize(_get(state, b + "attn.proj.bias", (d,)), nx.bias)
        if cfg.is_moe(i):
            m = b + "mlp.experts."
            p[b + "w1"] = quantize_expert_weight(_get(state, m + "htoh4.weight", (e, hd, d)), nx)
            p[b + "b1"] = quantize(_get(state, m + "htoh4.bias", (e, hd)), nx.bias)
            p[b + "w2"] = quantize_expert_weight(_get(state, m + "h4toh.weight", (e, d, hd)), nx)
            p[b + "b2"] = quantize(_get(state, m + "h4toh.bias", (e, d)), nx.bias)
            p[b + "gate"] = np.stack([
                quantize(_get(state, b + f"mlp.gate.{t}.w_gate", (d, e)).T, nx.weight)
                for t in range(cfg.num_tasks)])
        else:
            h = cfg.mlp_hidden
            p[b + "fc1_w"] = quantize(_get(state, b + "mlp.fc1.weight", (h, d)), nx.weight)
            p[b + "fc1_b"] = quantize(_get(state, b + "mlp.fc1.bias", (h,)), nx.bias)
            p[b + "fc2_w"] = quantize(_get(state, b + "mlp.fc2.weight", (d, h)), nx.weight)
            p[b + "fc2_b"] = quantize(_get(state, b + "mlp.fc2.bias", (d,)), nx.bias)
    return QuantizedModel(cfg, numerics, p)


def quantize_image(image, cfg, numerics=DEFAULT_NUMERICS):
    """Quantise a normalised float image of shape (3, H, W) to the ``pixel`` format."""
    cfg = get_config(cfg)
    image = np.asarray(image)
    expected = (cfg.in_chans, cfg.img_h, cfg.img_w)
    if image.shape != expected:
        raise ValueError(f"image has shape {image.shape}; {cfg.name} takes {expected}")
    return quantize(image, numerics.pixel)


def image_patches(image_q, cfg):
    """Flatten an image into patch rows (num_patches, C·p·p), raster order, (c, y, x) inside."""
    cfg = get_config(cfg)
    c, p = cfg.in_chans, cfg.patch
    x = np.asarray(image_q).reshape(c, cfg.grid_h, p, cfg.grid_w, p)
    return x.transpose(1, 3, 0, 2, 4).reshape(cfg.num_patches, c * p * p)


def _attention(qm, i, h, taps):
    cfg, nx, b = qm.cfg, qm.numerics, f"blocks.{i}."
    d, hd = cfg.dim, cfg.head_dim
    qkv = qref.linear(h, qm[b + "qkv_w"], qm[b + "qkv_b"], x_fmt=nx.ln_out, w_fmt=nx.weight,
                      out_fmt=nx.qkv, numerics=nx)
    out = np.empty((h.shape[0], d), dtype=np.int64)
    probs = []
    for head in range(cfg.heads):
        cols = slice(head * hd, (head + 1) * hd)
        q, k, v = qkv[:, cols], qkv[:, d:][:, cols], qkv[:, 2 * d:][:, cols]
        s = qref.linear(q, k, None, x_fmt=nx.qkv, w_fmt=nx.qkv, out_fmt=nx.score, numerics=nx)
        pr = qref.softmax(s, nx.score, hd ** -0.5, nx)
        out[:, cols] = qref.linear(pr, v.T, None, x_fmt=nx.prob, w_fmt=nx.qkv, out_fmt=nx.act,
                                   numerics=nx)
        probs.append(pr)
    if taps is not None:
        taps[f"block{i}.qkv"] = qkv
        taps[f"block{i}.attn_probs"] = np.stack(probs)
        taps[f"block{i}.attn_out"] = out
    return out


def twin_forward(qm, image_q, task, taps=None, route_override=None, moe_tokens=None):
    """Run one backbone frame in integers.

    Parameters
    ----------
    qm : QuantizedModel
    image_q : int array (3, H, W)
        The image in the ``pixel`` format (:func:`quantize_image`).
    task : int
        Task id: selects the router of every MoE block.
    taps : dict or None
        If given, filled with int arrays: ``patch_embed`` and, per block ``i``,
        ``block{i}.ln1``, ``.qkv``, ``.attn_probs`` (heads, N, N), ``.attn_out``, ``.resid1``,
        ``.ln2``; dense: ``.hidden``; MoE: ``.router_logits``, ``.router_probs``, ``.topk_idx``,
        ``.topk_scores``; and ``block{i}`` (the block output, ``act`` format).
    route_override : callable or None
        ``route_override(i, idx, scores) -> (idx, scores)`` replaces the routing of MoE block
        ``i`` (teacher-forced routing in the numerics study).
    moe_tokens : int or None
        Tokens per pass of the MoE layer (``None``: every token in one pass). The tokens are
        cut into consecutive tiles of this many, and each tile is one pass: its used experts
        in :func:`golden.qref.expert_order` of the tile's own counts, each adding its results
        to its tokens (saturating) in that order. The hardware runs the MoE in tiles when the
        compiler spills the token matrix to DDR (``CompiledModel.moe_tokens``). Only the
        order of the saturating additions depends on it: a token's result differs from the
        one-pass result only where an intermediate sum saturates.

    Returns
    -------
    int array (N, D)
        The last block's output in the ``act`` format.
    """
    cfg, nx = qm.cfg, qm.numerics
    cfg.check_task(task)
    if moe_tokens is None:
        moe_tokens = cfg.tokens
    elif isinstance(moe_tokens, bool) or not isinstance(moe_tokens, (int, np.integer)):
        raise TypeError(f"moe_tokens must be a positive integer or None, not {moe_tokens!r}")
    elif moe_tokens < 1:
        raise ValueError(f"moe_tokens must be a positive integer or None, not {moe_tokens!r}")
    image_q = np.asarray(image_q)
    if image_q.shape != (cfg.in_chans, cfg.img_h, cfg.img_w):
        raise ValueError(f"image has shape {image_q.shape}; {cfg.name} takes "
                         f"{(cfg.in_chans, cfg.img_h, cfg.img_w)}")

    def tap(key, value):
        if taps is not None:
            taps[key] = value

    x = qm["pos"].copy()
    x[1:] = qref.linear(image_patches(image_q, cfg), qm["patch_w"], qm["patch_b"],
                        x_fmt=nx.pixel, w_fmt=nx.weight, out_fmt=nx.act, numerics=nx,
                        accumulate=x[1:])
    tap("patch_embed", x.copy())
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        ln = dict(param_fmt=nx.ln_param, in_fmt=nx.act, out_fmt=nx.ln_out, numerics=nx)
        h = qref.layernorm(x, qm[b + "ln1_g"], qm[b + "ln1_b"], **ln)
        tap(f"block{i}.ln1", h)
        o = _attention(qm, i, h, taps)
        x = qref.linear(o, qm[b + "proj_w"], qm[b + "proj_b"], x_fmt=nx.act, w_fmt=nx.weight,
                        out_fmt=nx.act, numerics=nx, accumulate=x)
        tap(f"block{i}.resid1", x.copy())
        u = qref.layernorm(x, qm[b + "ln2_g"], qm[b + "ln2_b"], **ln)
        tap(f"block{i}.ln2", u)
        if cfg.is_moe(i):
            logits, probs, idx, scores = qref.route(u, qm[b + "gate"][task], cfg.top_k, nx)
            if route_override is not None:
                idx, scores = route_override(i, idx, scores)
            tap(f"block{i}.router_logits", logits)
            tap(f"block{i}.router_probs", probs)
            tap(f"block{i}.topk_idx", idx)
            tap(f"block{i}.topk_scores", scores)
            for one_pass in qref.reorder_passes(idx, scores, cfg.num_experts, moe_tokens):
                for e, tokens, s in one_pass:
                    hid = qref.linear(u[tokens], qm[b + "w1"][e], qm[b + "b1"][e],
                                      x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.hidden,
                                      numerics=nx, gelu=True)
                    x[tokens] = qref.linear(hid, qm[b + "w2"][e], qm[b + "b2"][e],
                                            x_fmt=nx.hidden, w_fmt=nx.weight, out_fmt=nx.act,
                                            numerics=nx, row_scale=s, accumulate=x[tokens])
        else:
            hid = qref.linear(u, qm[b + "fc1_w"], qm[b + "fc1_b"], x_fmt=nx.ln_out,
                              w_fmt=nx.weight, out_fmt=nx.hidden, numerics=nx, gelu=True)
            tap(f"block{i}.hidden", hid)
            x = qref.linear(hid, qm[b + "fc2_w"], qm[b + "fc2_b"], x_fmt=nx.hidden,
                            w_fmt=nx.weight, out_fmt=nx.act, numerics=nx, accumulate=x)
        tap(f"block{i}", x.copy())
    return x
