# SPDX-License-Identifier: BSD-2-Clause
"""The integer twin: a bit-exact NumPy definition of every operation the hardware performs.

Each function takes and returns integer arrays in the formats of :mod:`golden.numerics`. The
hardware blocks in ``hdl/`` are tested to equal these functions bit for bit; nothing here uses
floating point except where a comment says the float64 arithmetic is exact.

Operations
----------
:func:`linear`
    ``Y = X·Wᵀ + b`` with requantisation and the compute unit's epilogue (GELU, per-row scale,
    accumulation into an existing output).
:func:`softmax`
    Single-pass softmax: running max and running sum in base 2, exponent by shift plus two small
    tables, reciprocal by table and one Newton step.
:func:`gelu`
    ReLU(x) − δ(|x|) with δ from a table and linear interpolation.
:func:`layernorm`
    One pass for Σx and Σx², rsqrt by table and one Newton step, then gain and bias.
:func:`route`
    Router: logits, softmax over all experts, top-k (ties to the lowest expert index).
:func:`reorder`
    Patch reordering: per-expert token lists, used experts in :func:`expert_order`.
:func:`expert_order`
    The order the used experts are computed in: largest and smallest token counts interleaved.
"""

import math

import numpy as np

from .fixed import QFormat, requantize, round_shift, saturate
from .numerics import DEFAULT_NUMERICS, MANTISSA_FRAC
from . import tables

__all__ = ["matmul_exact", "linear", "softmax", "softmax_detail", "softmax_scale_int",
           "exp2_neg", "gelu", "gelu_detail", "layernorm", "layernorm_stats", "rsqrt",
           "reciprocal", "route", "topk", "reorder", "reorder_passes", "expert_order"]


def _check_fmt(name, fmt):
    if not isinstance(fmt, QFormat):
        raise TypeError(f"{name} must be a QFormat, not {fmt!r}")


def _check_range(name, x, fmt):
    x = np.asarray(x)
    if x.size and (x.min() < fmt.min_int or x.max() > fmt.max_int):
        raise ValueError(f"{name} holds values outside its format {fmt} "
                         f"([{x.min()}, {x.max()}] not within [{fmt.min_int}, {fmt.max_int}])")


def matmul_exact(x, w):
    """Exact integer ``x @ w.T`` for operands of at most 18 bits and K ≤ 2**16.

    Products are below 2**34 and sums below 2**50, so float64 BLAS computes them exactly in any
    summation order; the result is converted back to int64.
    """
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(f"inner dimensions differ: X is {x.shape}, W is {w.shape}")
    if x.shape[-1] > 1 << 16:
        raise ValueError(f"K = {x.shape[-1]} exceeds 2**16")
    for name, a in (("X", x), ("W", w)):
        if a.size and np.abs(a).max() > 1 << 18:
            raise ValueError(f"{name} operands exceed 18 bits")
    return (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.int64)


def linear(x, w, bias=None, *, x_fmt, w_fmt, out_fmt, numerics=DEFAULT_NUMERICS, gelu=False,
           row_scale=None, accumulate=None):
    """The compute unit: ``Y = X·Wᵀ + b``, requantised, then the optional epilogue.

    Steps, in this order:

    1. ``acc = Σ_k x[m,k]·w[n,k]``, exact (48-bit accumulator), with ``acc_frac = x.f + w.f``.
    2. ``acc += bias << (acc_frac − bias.f)`` (exact).
    3. ``y = saturate(round_shift(acc, acc_frac − out.f), out)``.
    4. ``gelu``: ``y = gelu(y)`` (``out_fmt`` is the GELU's format).
    5. ``row_scale`` (one value per row, ``prob`` format):
       ``y = saturate(round_shift(y·s[m], prob.f), out)``.
    6. ``accumulate`` (same shape and format as ``y``): ``y = saturate(accumulate + y, out)``.

    Parameters
    ----------
    x : int array (M, K)
        Activations in ``x_fmt``.
    w : int array (N, K)
        Weights in ``w_fmt`` (the product is ``X·Wᵀ``).
    bias : int array (N,) or None
        Bias in ``numerics.bias``.
    """
    for name, fmt in (("x_fmt", x_fmt), ("w_fmt", w_fmt), ("out_fmt", out_fmt)):
        _check_fmt(name, fmt)
    _check_range("X", x, x_fmt)
    _check_range("W", w, w_fmt)
    acc_frac = x_fmt.f_bits + w_fmt.f_bits
    acc = matmul_exact(x, w)
    if bias is not None:
        bias = np.asarray(bias, dtype=np.int64)
        _check_range("bias", bias, numerics.bias)
        if acc_frac < numerics.bias.f_bits:
            raise ValueError(f"accumulator has {acc_frac} fractional bits, fewer than the bias")
        acc = acc + (bias << (acc_frac - numerics.bias.f_bits))
    y = requantize(acc, acc_frac, out_fmt)
    if gelu:
        y = globals()["gelu"](y, out_fmt, numerics)
    if row_scale is not None:
        s = np.asarray(row_scale, dtype=np.int64)
        _check_range("row scale", s, numerics.prob)
        y = saturate(round_shift(y * s[:, None], numerics.prob.f_bits), out_fmt)
    if accumulate is not None:
        prev = np.asarray(accumulate, dtype=np.int64)
        _check_range("accumulated output", prev, out_fmt)
        y = saturate(prev + y, out_fmt)
    return y


# -- softmax ------------------------------------------------------------------------------------


def softmax_scale_int(scale, numerics=DEFAULT_NUMERICS):
    """The constant ``scale·log2(e)`` in UQ(·, softmax_scale_frac), rounded half to even."""
    if not scale > 0:
        raise ValueError(f"softmax scale must be positive, not {scale!r}")
    return int(round(scale / math.log(2.0) * (1 << numerics.softmax_scale_frac)))


def exp2_neg(d, numerics=DEFAULT_NUMERICS):
    """``2**-d`` for ``d ≥ 0`` with ``softmax_logit_frac`` fractional bits, in UQ(1, exp_frac).

    ``d = k + u`` with integer ``k`` and fraction ``u``; ``u`` splits into a high and a low part,
    each looked up in its own table; the product of the two entries is shifted right by ``k``
    with one rounding. Exactly ``1 << exp_frac`` at ``d = 0``; 0 once ``k > exp_frac``.
    """
    d = np.asarray(d, dtype=np.int64)
    if d.size and d.min() < 0:
        raise ValueError("exp2_neg takes non-negative arguments")
    lf, tb, ef = numerics.softmax_logit_frac, numerics.exp_table_bits, numerics.exp_frac
    lo_bits = lf - tb
    hi_t = np.array(tables.exp2_hi_table(tb, ef), dtype=np.int64)
    lo_t = np.array(tables.exp2_lo_table(lo_bits, lf, ef), dtype=np.int64)
    k = np.minimum(d >> lf, ef + 1)
    u = d & ((1 << lf) - 1)
    prod = hi_t[u >> lo_bits] * lo_t[u & ((1 << lo_bits) - 1)]
    return round_shift(prod, ef + k)


def reciprocal(v, numerics=DEFAULT_NUMERICS):
    """Approximate ``1/v`` for positive integers ``v``.

    ``v`` is normalised to ``x`` in [1, 2) with ``MANTISSA_FRAC`` fractional bits (floor), the
    seed ``y0`` comes from :func:`golden.tables.recip_table`, and one Newton step gives
    ``y1 = y0·(2 − x·y0)`` in UQ(1, recip_frac), with ``2 − x·y0`` rounded to recip_frac bits.
    Returns ``(y1, b)`` where ``b`` is the bit index of ``v``'s leading one, so that
    ``1/v ≈ y1·2**-(recip_frac + b)``.
    """
    v = np.asarray(v, dtype=np.int64)
    if v.size and v.min() <= 0:
        raise ValueError("reciprocal takes positive arguments")
    rf, tb, mf = numerics.recip_frac, numerics.recip_table_bits, MANTISSA_FRAC
    b = _msb(v)
    x = _normalise(v, b, mf)
    seed = np.array(tables.recip_table(tb, rf), dtype=np.int64)
    y0 = seed[(x >> (mf - tb)) - (1 << tb)]
    two_minus = (np.int64(2) << (mf + rf)) - x * y0           # 2 − x·y0, frac mf + rf
    y1 = round_shift(y0 * round_shift(two_minus, mf), rf)      # frac rf
    return y1, b


def _msb(v):
    """Bit index of the leading one of positive int64 values."""
    v = np.asarray(v, dtype=np.int64)
    return (np.frexp(v.astype(np.float64))[1] - 1).astype(np.int64) if v.max(initial=0) < 1 << 53 \
        else np.array([int(a).bit_length() - 1 for a in v.ravel()], dtype=np.int64).reshape(v.shape)


def _normalise(v, b, frac):
    """``v`` shifted (floor) so that its leading one, at bit ``b``, lands on bit ``frac``."""
    s = b - frac
    return np.where(s >= 0, v >> np.maximum(s, 0), v << np.maximum(-s, 0))


def softmax_detail(s, s_fmt, scale, numerics=DEFAULT_NUMERICS, lanes=None):
    """Softmax over the last axis, returning the intermediate integers.

    Returns ``(e, y1, b)``: the exponentials ``e = 2**-(m − t)`` (UQ(1, exp_frac)), the
    reciprocal mantissa ``y1`` and the sum's leading-one index ``b`` of each row, so that the
    unrounded probability is ``e·y1·2**-(recip_frac + b)``. See :func:`softmax`.
    """
    _check_fmt("s_fmt", s_fmt)
    s = np.asarray(s, dtype=np.int64)
    _check_range("softmax input", s, s_fmt)
    if s.shape[-1] < 1:
        raise ValueError("softmax rows must hold at least one element")
    lanes = numerics.softmax_lanes if lanes is None else lanes
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes must be a positive integer, not {lanes!r}")
    lf, ef = numerics.softmax_logit_frac, numerics.exp_frac
    c = softmax_scale_int(scale, numerics)
    t = round_shift(s * c, s_fmt.f_bits + numerics.softmax_scale_frac - lf)
    n = t.shape[-1]
    m = None
    acc = None
    for lo in range(0, n, lanes):
        chunk = t[..., lo:lo + lanes]
        cm = chunk.max(axis=-1)
        if m is None:
            m_new = cm
            acc = np.zeros_like(cm)
        else:
            m_new = np.maximum(m, cm)
            acc = round_shift(acc * exp2_neg(m_new - m, numerics), ef)
        acc = acc + exp2_neg(m_new[..., None] - chunk, numerics).sum(axis=-1)
        m = m_new
    y1, b = reciprocal(acc, numerics)
    e = exp2_neg(m[..., None] - t, numerics)
    return e, y1, b


def softmax(s, s_fmt, scale, numerics=DEFAULT_NUMERICS, lanes=None):
    """Single-pass softmax of ``s·scale`` over the last axis, in ``numerics.prob``.

    The algorithm, with ``F = softmax_logit_frac`` and ``G = exp_frac``:

    1. ``t = round_shift(s·c, s.f + softmax_scale_frac − F)`` with the constant
       ``c = round(scale·log2(e)·2**softmax_scale_frac)``: base-2 logits with F fraction bits.
    2. Elements arrive ``lanes`` at a time. For each group, ``m' = max(m, max(group))``,
       ``acc = round_shift(acc·2**-(m'−m), G) + Σ_group 2**-(m'−t)`` (the first group starts
       from ``acc = 0``), ``m = m'``. The powers are :func:`exp2_neg`; the group sum is exact.
    3. ``1/acc`` by :func:`reciprocal`: ``y1`` and the leading-one index ``b``.
    4. Second read of the row: ``p = saturate(round_shift(2**-(m−t)·y1, recip_frac + b −
       prob.f), prob)``.

    ``lanes`` defaults to ``numerics.softmax_lanes``; the hardware's lane count must match.
    """
    e, y1, b = softmax_detail(s, s_fmt, scale, numerics, lanes)
    pf = numerics.prob.f_bits
    return saturate(round_shift(e * y1[..., None], (numerics.recip_frac + b - pf)[..., None]),
                    numerics.prob)


# -- GELU ---------------------------------------------------------------------------------------


def gelu_detail(x, fmt, numerics=DEFAULT_NUMERICS):
    """The GELU before its final rounding: integers with ``gelu_frac + fmt.f − gelu_step_bits``
    fractional bits (see :func:`gelu`)."""
    _check_fmt("fmt", fmt)
    x = np.asarray(x, dtype=np.int64)
    _check_range("GELU input", x, fmt)
    sb, gf = numerics.gelu_step_bits, numerics.gelu_frac
    fr = fmt.f_bits - sb
    if fr < 0:
        raise ValueError(f"GELU input format {fmt} is coarser than the table step")
    table = np.array(tables.gelu_delta_table(sb, numerics.gelu_range, gf), dtype=np.int64)
    n = numerics.gelu_range << sb
    a = np.abs(x)
    i = a >> fr
    frac = a & ((1 << fr) - 1)
    ic = np.minimum(i, n - 1)
    delta = (table[ic] << fr) + frac * (table[ic + 1] - table[ic])
    delta = np.where(i < n, delta, 0)
    return (np.maximum(x, 0) << (gf - sb)) - delta


def gelu(x, fmt, numerics=DEFAULT_NUMERICS):
    """GELU(x) = ReLU(x) − δ(|x|), in and out in ``fmt``.

    ``δ(a) = a·Φ(−a)`` is read from :func:`golden.tables.gelu_delta_table` at step
    ``2**-gelu_step_bits`` and interpolated linearly with the remaining ``fmt.f − step_bits``
    bits of ``|x|``: ``δ = T[i]·2**r + frac·(T[i+1] − T[i])``; beyond ``gelu_range``, δ = 0.
    Then ``y = saturate(round_shift((ReLU(x) << (gelu_frac − step_bits)) − δ, gelu_frac −
    step_bits), fmt)``.
    """
    shift = numerics.gelu_frac - numerics.gelu_step_bits
    return saturate(round_shift(gelu_detail(x, fmt, numerics), shift), fmt)


# -- LayerNorm ----------------------------------------------------------------------------------


def rsqrt(v, numerics=DEFAULT_NUMERICS):
    """Approximate ``1/sqrt(v)`` for positive integers ``v``.

    ``v = x·4**e`` with ``x`` in [1, 4) (``MANTISSA_FRAC`` fractional bits, floor); the seed
    ``y0`` comes from :func:`golden.tables.rsqrt_table`; one Newton step
    ``y1 = y0·(3 − x·y0²)/2`` with ``y0²`` and ``x·y0²`` each rounded to rsqrt_frac bits.
    Returns ``(y1, e)`` with ``1/sqrt(v) ≈ y1·2**-(rsqrt_frac + e)``.
    """
    v = np.asarray(v, dtype=np.int64)
    if v.size and v.min() <= 0:
        raise ValueError("rsqrt takes positive arguments")
    rf, tb, mf = numerics.rsqrt_frac, numerics.rsqrt_table_bits, MANTISSA_FRAC
    e = _msb(v) >> 1
    x = _normalise(v, 2 * e, mf)                       # [1, 4) with mf fractional bits
    seed = np.array(tables.rsqrt_table(tb, rf), dtype=np.int64)
    y0 = seed[(x >> (mf - tb)) - (1 << tb)]
    y0sq = round_shift(y0 * y0, rf)                   # frac rf
    xy = round_shift(x * y0sq, mf)                     # frac rf, close to 1
    y1 = round_shift(y0 * ((3 << rf) - xy), rf + 1)    # frac rf
    return y1, e


def layernorm_stats(x, eps=1e-6, fmt=None):
    """Integer statistics of rows of ``x``: ``(S1, V')`` with ``S1 = Σx`` and
    ``V' = n·Σx² − S1² + eps_int`` where ``eps_int = max(1, round(eps·n²·4**fmt.f))``.

    ``V'`` equals ``n²·(var + eps')`` in units of the squared LSB, exactly, where ``eps'`` is
    ``eps`` rounded to that grid (for D = 192 and the ``act`` format, 9664 units: 3e-5 relative).
    """
    x = np.asarray(x, dtype=np.int64)
    n = x.shape[-1]
    s1 = x.sum(axis=-1)
    s2 = (x * x).sum(axis=-1)
    eps_int = max(1, int(round(eps * n * n * 4.0 ** fmt.f_bits)))
    return s1, n * s2 - s1 * s1 + eps_int


def layernorm(x, gamma, beta, *, in_fmt, param_fmt, out_fmt, numerics=DEFAULT_NUMERICS,
              eps=1e-6):
    """LayerNorm over the last axis (biased variance, ``eps`` 1e-6), in integers.

    1. One pass: ``S1 = Σx``, ``V' = n·Σx² − S1² + eps_int`` (:func:`layernorm_stats`).
    2. ``(y1, e) = rsqrt(V')``.
    3. ``xhat = round_shift((n·x − S1)·y1, rsqrt_frac + e − ln_xhat_frac)``, which is
       ``(x − mean)/sqrt(var + eps)`` with ``ln_xhat_frac`` fractional bits.
    4. ``y = saturate(round_shift(xhat·γ + (β << ln_xhat_frac), ln_xhat_frac + param.f −
       out.f), out)``.
    """
    for name, fmt in (("in_fmt", in_fmt), ("param_fmt", param_fmt), ("out_fmt", out_fmt)):
        _check_fmt(name, fmt)
    x = np.asarray(x, dtype=np.int64)
    gamma = np.asarray(gamma, dtype=np.int64)
    beta = np.asarray(beta, dtype=np.int64)
    _check_range("LayerNorm input", x, in_fmt)
    _check_range("LayerNorm gain", gamma, param_fmt)
    _check_range("LayerNorm bias", beta, param_fmt)
    n = x.shape[-1]
    if gamma.shape != (n,) or beta.shape != (n,):
        raise ValueError(f"gain and bias must have shape ({n},), not {gamma.shape} and "
                         f"{beta.shape}")
    hf = numerics.ln_xhat_frac
    s1, v = layernorm_stats(x, eps, in_fmt)
    y1, e = rsqrt(v, numerics)
    xc = n * x - s1[..., None]
    xhat = round_shift(xc * y1[..., None], (numerics.rsqrt_frac + e - hf)[..., None])
    y = xhat * gamma + (beta << hf)
    return saturate(round_shift(y, hf + param_fmt.f_bits - out_fmt.f_bits), out_fmt)


# -- router and patch reordering ----------------------------------------------------------------


def topk(p, k):
    """Indices and values of the ``k`` largest entries of each row, largest first.

    Ties go to the lowest index (a stable sort on ``-p``), the rule the hardware follows.
    """
    p = np.asarray(p, dtype=np.int64)
    if not 1 <= k <= p.shape[-1]:
        raise ValueError(f"k = {k} must be between 1 and the row length {p.shape[-1]}")
    idx = np.argsort(-p, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(p, idx, axis=-1)


def route(u, w_gate_t, k, numerics=DEFAULT_NUMERICS):
    """The MoE router of one task: logits, softmax over all E experts, top-k.

    ``u`` is the LayerNorm output (``ln_out``), ``w_gate_t`` the task's router weights
    transposed to (E, D) (``weight`` format). The scores are the softmax probabilities of the
    chosen experts, not renormalised. Returns ``(logits, probs, idx, scores)``.
    """
    logits = linear(u, w_gate_t, None, x_fmt=numerics.ln_out, w_fmt=numerics.weight,
                    out_fmt=numerics.logit, numerics=numerics)
    probs = softmax(logits, numerics.logit, 1.0, numerics)
    idx, scores = topk(probs, k)
    return logits, probs, idx, scores


def expert_order(counts):
    """The order in which the used experts of a layer are computed (and their outputs added).

    ``counts[e]`` is expert ``e``'s token count (0: unused). With U used experts holding T
    tokens in all, the next expert is the **largest** remaining one (most tokens) while the
    experts already taken hold at most their share, ``U·Σn ≤ i·T`` after ``i`` of them, and the
    **smallest** remaining one otherwise; ties go to the lowest expert id. Returns the used
    expert ids in that order.

    Why: an expert's weights take the same time to fetch whatever its token count, its products
    take time in proportion to it. In ascending id, experts with a few tokens wait for their
    weights and the DMA idles while one with many tokens computes (its buffer full);
    taking the large ones early and following each with small ones keeps both busy. The order
    is part of the numerics: each expert's output is added to the residual with saturation, so
    the order can change a saturated sum.
    """
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"token counts must not be negative: {counts}")
    left = [e for e, c in enumerate(counts) if c]
    used, total = len(left), sum(counts)
    order, taken = [], 0
    while left:
        if used * taken <= len(order) * total:
            e = max(left, key=lambda e: (counts[e], -e))
        else:
            e = min(left, key=lambda e: (counts[e], e))
        left.remove(e)
        order.append(e)
        taken += counts[e]
    return order


def reorder(idx, scores, num_experts):
    """Patch reordering: a counting sort of tokens into per-expert lists.

    Returns a list of ``(expert, tokens, scores)`` for the used experts in the order of
    :func:`expert_order`; each list holds its tokens in ascending token order with the router
    score that token gave the expert. Unused experts do not appear.
    """
    idx = np.asarray(idx)
    scores = np.asarray(scores)
    if idx.size and (idx.min() < 0 or idx.max() >= num_experts):
        raise ValueError(f"expert index out of range 0..{num_experts - 1}")
    out = {}
    for e in range(num_experts):
        tok, slot = np.nonzero(idx == e)
        if tok.size:
            order = np.argsort(tok, kind="stable")
            out[e] = (e, tok[order], scores[tok[order], slot[order]])
    counts = [len(out[e][1]) if e in out else 0 for e in range(num_experts)]
    return [out[e] for e in expert_order(counts)]


def reorder_passes(idx, scores, num_experts, tokens_per_pass=None):
    """:func:`reorder` of each pass of an MoE layer run on consecutive tiles of
    ``tokens_per_pass`` tokens (``None``: one pass of every token): a list with, per pass, its
    ``(expert, tokens, scores)`` in the order of the tile's own counts, ``tokens`` indices into
    the whole matrix."""
    idx = np.asarray(idx)
    scores = np.asarray(scores)
    n = len(idx)
    step = n if tokens_per_pass is None else tokens_per_pass
    return [[(e, tok + t0, s) for e, tok, s in reorder(idx[t0:t0 + step], scores[t0:t0 + step],
                                                      num_experts)]
            for t0 in range(0, n, step)]
