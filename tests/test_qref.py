# SPDX-License-Identifier: BSD-2-Clause
"""Every operation of the integer twin against exact math."""

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from golden import qref, tables
from golden.fixed import SQ, dequantize, quantize
from golden.numerics import DEFAULT_NUMERICS as NX, Numerics

SETTINGS = settings(max_examples=60, derandomize=True, deadline=None)


def rne(q):
    f = q.numerator // q.denominator
    r = q - f
    return f + (r > Fraction(1, 2) or (r == Fraction(1, 2) and f % 2 == 1))


def ints(rng, fmt, shape, extremes=False):
    a = rng.integers(fmt.min_int, fmt.max_int + 1, size=shape)
    if extremes and a.size:
        flat = a.reshape(-1)
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 4))] = fmt.min_int
        flat[rng.integers(0, flat.size, size=max(1, flat.size // 4))] = fmt.max_int
    return a


# -- linear -------------------------------------------------------------------------------------

@SETTINGS
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 9), st.integers(0, 2**32 - 1),
       st.booleans(), st.booleans(), st.booleans(), st.booleans())
@example(1, 1, 1, 0, False, False, False, True)
def test_linear_matches_exact_rational_arithmetic(m, k, n, seed, bias, scale, acc, extremes):
    rng = np.random.default_rng(seed)
    xf, wf, of = NX.hidden, NX.weight, NX.act
    x = ints(rng, xf, (m, k), extremes)
    w = ints(rng, wf, (n, k), extremes)
    b = ints(rng, NX.bias, (n,), extremes) if bias else None
    s = ints(rng, NX.prob, (m,)) if scale else None
    prev = ints(rng, of, (m, n)) if acc else None
    got = qref.linear(x, w, b, x_fmt=xf, w_fmt=wf, out_fmt=of, row_scale=s, accumulate=prev)
    for i in range(m):
        for j in range(n):
            v = Fraction(sum(int(x[i, t]) * int(w[j, t]) for t in range(k)),
                         1 << (xf.f_bits + wf.f_bits))
            if bias:
                v += Fraction(int(b[j]), 1 << NX.bias.f_bits)
            y = min(max(rne(v * (1 << of.f_bits)), of.min_int), of.max_int)
            if scale:
                y = min(max(rne(Fraction(y * int(s[i]), 1 << NX.prob.f_bits)), of.min_int),
                        of.max_int)
            if acc:
                y = min(max(y + int(prev[i, j]), of.min_int), of.max_int)
            assert int(got[i, j]) == y, (i, j)


def test_linear_gelu_epilogue_is_gelu_of_the_requantised_output():
    rng = np.random.default_rng(1)
    x, w = ints(rng, NX.ln_out, (5, 12)), ints(rng, NX.weight, (7, 12))
    plain = qref.linear(x, w, None, x_fmt=NX.ln_out, w_fmt=NX.weight, out_fmt=NX.hidden)
    fused = qref.linear(x, w, None, x_fmt=NX.ln_out, w_fmt=NX.weight, out_fmt=NX.hidden,
                        gelu=True)
    assert np.array_equal(fused, qref.gelu(plain, NX.hidden))


def test_linear_refuses_bad_operands():
    x = np.zeros((2, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="inner dimensions"):
        qref.linear(x, np.zeros((2, 4), np.int64), x_fmt=NX.act, w_fmt=NX.weight,
                    out_fmt=NX.act)
    with pytest.raises(ValueError, match="outside its format"):
        qref.linear(x + 40000, np.zeros((2, 3), np.int64), x_fmt=NX.act, w_fmt=NX.weight,
                    out_fmt=NX.act)
    with pytest.raises(TypeError, match="QFormat"):
        qref.linear(x, x, x_fmt="SQ(7,9)", w_fmt=NX.weight, out_fmt=NX.act)


# -- softmax ------------------------------------------------------------------------------------

def exact_softmax(s, fmt, scale):
    z = dequantize(s, fmt) * scale
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_pre(s, fmt, scale, nx=NX, lanes=None):
    e, y1, b = qref.softmax_detail(s, fmt, scale, nx, lanes)
    return e * np.ldexp(y1.astype(np.float64), -(nx.recip_frac + b))[..., None]


@SETTINGS
@given(st.integers(1, 300), st.integers(1, 12), st.integers(0, 2**32 - 1),
       st.sampled_from(["score64", "score32", "logit"]), st.integers(0, 3))
def test_softmax_is_within_bounds_of_exact(n, lanes, seed, kind, spread):
    rng = np.random.default_rng(seed)
    fmt, scale = {"score64": (NX.score, 0.125), "score32": (NX.score, 32 ** -0.5),
                  "logit": (NX.logit, 1.0)}[kind]
    if spread == 0:
        s = ints(rng, fmt, (4, n), extremes=True)
    else:
        s = np.clip(rng.normal(0, 4 ** spread, (4, n)) * (1 << fmt.f_bits), fmt.min_int,
                    fmt.max_int).astype(np.int64)
    exact = exact_softmax(s, fmt, scale)
    pre = softmax_pre(s, fmt, scale, lanes=lanes)
    out = qref.softmax(s, fmt, scale, lanes=lanes)
    assert np.max(np.abs(pre - exact)) <= 2.0 ** -15
    assert np.max(np.abs(out - quantize(exact, NX.prob))) <= 1
    assert out.min() >= 0


@pytest.mark.parametrize("row", [
    np.full(129, 77),                                  # all equal
    np.r_[np.full(64, -1000), 4000, np.full(64, -1000)],  # one dominant
    np.r_[NX.score.max_int, np.full(128, NX.score.min_int)],  # the rest underflows
    np.array([NX.score.min_int]),                      # length 1
])
def test_softmax_edge_rows(row):
    s = row[None, :].astype(np.int64)
    out = qref.softmax(s, NX.score, 0.125)
    exact = exact_softmax(s, NX.score, 0.125)
    assert np.max(np.abs(out - quantize(exact, NX.prob))) <= 1
    if len(set(row.tolist())) == 1:
        assert len(set(out[0].tolist())) == 1


def test_softmax_dominant_and_underflow_values():
    s = np.r_[NX.score.max_int, np.full(128, NX.score.min_int)][None, :]
    out = qref.softmax(s, NX.score, 0.125)
    assert out[0, 0] == NX.prob.max_int and np.all(out[0, 1:] == 0)


@SETTINGS
@given(st.integers(2, 64), st.integers(0, 2**32 - 1))
def test_softmax_is_monotone_in_the_scores(n, seed):
    rng = np.random.default_rng(seed)
    s = ints(rng, NX.score, (1, n))
    out = qref.softmax(s, NX.score, 0.125)[0]
    order = np.argsort(s[0], kind="stable")
    assert np.all(np.diff(out[order]) >= 0)


def test_softmax_lanes_change_only_the_rescale_rounding():
    rng = np.random.default_rng(3)
    s = ints(rng, NX.score, (64, 129))
    a = qref.softmax(s, NX.score, 0.125, lanes=1)
    b = qref.softmax(s, NX.score, 0.125, lanes=8)
    assert np.max(np.abs(a - b)) <= 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(lanes=0), "lanes must be a positive integer"),
    (dict(scale=0.0), "scale must be positive"),
])
def test_softmax_refuses_bad_parameters(kwargs, match):
    s = np.zeros((1, 4), np.int64)
    args = dict(scale=0.125, lanes=None) | kwargs
    with pytest.raises(ValueError, match=match):
        qref.softmax(s, NX.score, args["scale"], NX, args["lanes"])
    with pytest.raises(ValueError, match="at least one element"):
        qref.softmax(np.zeros((1, 0), np.int64), NX.score, 0.125)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.integers(0, (60 << 16)))
def test_exp2_neg_against_exact(d):
    got = int(qref.exp2_neg(np.int64(d)))
    exact = 2.0 ** (-d / (1 << NX.softmax_logit_frac)) * (1 << NX.exp_frac)
    assert abs(got - exact) <= 1.5


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.integers(1, (1 << 62) - 1))
@example(1)
@example((1 << 62) - 1)
@example(3 << 40)
def test_reciprocal_relative_error(v):
    y1, b = qref.reciprocal(np.array([v]))
    approx = Fraction(int(y1[0]), 1 << (NX.recip_frac + int(b[0])))
    assert abs(approx * v - 1) < Fraction(1, 1 << 17)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.integers(1, (1 << 62) - 1))
@example(1)
@example(3)
@example((1 << 62) - 1)
def test_rsqrt_relative_error(v):
    y1, e = qref.rsqrt(np.array([v]))
    approx = int(y1[0]) * 2.0 ** -(NX.rsqrt_frac + int(e[0]))
    assert abs(approx * math.sqrt(v) - 1) < 2.0 ** -15


# -- GELU ---------------------------------------------------------------------------------------

def exact_gelu(x):
    return x * 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def test_gelu_over_every_input_of_the_format():
    fmt = NX.hidden
    x = np.arange(fmt.min_int, fmt.max_int + 1, dtype=np.int64)
    xr = dequantize(x, fmt)
    exact = exact_gelu(xr)
    pre = dequantize(qref.gelu_detail(x, fmt),
                     NX.gelu_frac + fmt.f_bits - NX.gelu_step_bits)
    inside = np.abs(xr) <= 8
    assert np.max(np.abs(pre - exact)[inside]) <= 1e-4
    assert np.max(np.abs(qref.gelu(x, fmt) - quantize(exact, fmt))) <= 1
    # Beyond the table GELU is ReLU exactly.
    far = np.abs(xr) >= NX.gelu_range
    assert np.array_equal(qref.gelu(x, fmt)[far], np.maximum(x, 0)[far])


def test_gelu_refuses_a_format_coarser_than_the_table():
    with pytest.raises(ValueError, match="coarser than the table step"):
        qref.gelu(np.zeros(3, np.int64), SQ(8, 4))


# -- LayerNorm ----------------------------------------------------------------------------------

def float_layernorm(x, g, b, nx=NX, eps=1e-6):
    n = x.shape[-1]
    # The twin adds eps on the grid of its integer variance: n²·4**f units.
    eps = max(1, round(eps * n * n * 4 ** nx.act.f_bits)) / (n * n * 4 ** nx.act.f_bits)
    xf = dequantize(x, nx.act)
    mu = xf.mean(axis=-1, keepdims=True)
    var = xf.var(axis=-1, keepdims=True)
    return (xf - mu) / np.sqrt(var + eps) * dequantize(g, nx.ln_param) + \
        dequantize(b, nx.ln_param)


@SETTINGS
@given(st.integers(1, 400), st.integers(0, 2**32 - 1), st.integers(0, 4))
@example(1, 0, 0)
def test_layernorm_against_float(n, seed, spread):
    rng = np.random.default_rng(seed)
    scale = [1, 16, 512, 4096, 32767][spread]
    x = np.clip(rng.normal(0, scale, (5, n)), NX.act.min_int, NX.act.max_int).astype(np.int64)
    x[0] = rng.integers(NX.act.min_int, NX.act.max_int + 1, n)
    g = ints(rng, NX.ln_param, (n,))
    b = ints(rng, NX.ln_param, (n,))
    got = dequantize(qref.layernorm(x, g, b, in_fmt=NX.act, param_fmt=NX.ln_param,
                                    out_fmt=NX.ln_out), NX.ln_out)
    ref = np.clip(float_layernorm(x, g, b), NX.ln_out.min_real, NX.ln_out.max_real)
    # One output LSB for the final rounding plus the xhat rounding and the rsqrt error scaled
    # by |gamma·xhat|.
    xhat = np.abs(ref - dequantize(b, NX.ln_param)) + 1
    bound = NX.ln_out.lsb + 2.0 ** -NX.ln_xhat_frac * 32 + 2.0 ** -15 * xhat
    assert np.all(np.abs(got - ref) <= bound)


def test_layernorm_zero_variance_gives_the_bias():
    n = 192
    x = np.full((3, n), 1234, dtype=np.int64)
    g = np.arange(n, dtype=np.int64) * 100 - 9000
    b = np.arange(n, dtype=np.int64) * 7 - 600
    got = qref.layernorm(x, g, b, in_fmt=NX.act, param_fmt=NX.ln_param, out_fmt=NX.ln_out)
    assert np.array_equal(got, np.broadcast_to(b << (NX.ln_out.f_bits - NX.ln_param.f_bits),
                                               got.shape))


def test_layernorm_stats_are_exact():
    rng = np.random.default_rng(7)
    x = ints(rng, NX.act, (4, 384))
    s1, v = qref.layernorm_stats(x, 1e-6, NX.act)
    for row, a, b in zip(x, s1, v):
        r = [int(t) for t in row]
        n = len(r)
        eps = max(1, round(1e-6 * n * n * 4 ** NX.act.f_bits))
        assert a == sum(r) and b == n * sum(t * t for t in r) - sum(r) ** 2 + eps


# -- router and reordering ----------------------------------------------------------------------

def test_topk_ties_go_to_the_lowest_index():
    p = np.array([[5, 9, 9, 1, 9], [3, 3, 3, 3, 3]])
    idx, val = qref.topk(p, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    assert val.tolist() == [[9, 9], [3, 3]]
    with pytest.raises(ValueError, match="k = 6"):
        qref.topk(p, 6)


def test_route_scores_are_softmax_probabilities_not_renormalised():
    rng = np.random.default_rng(5)
    u = quantize(rng.normal(0, 1, (20, 32)), NX.ln_out)
    w = quantize(rng.normal(0, 0.1, (8, 32)), NX.weight)
    logits, probs, idx, scores = qref.route(u, w, 3)
    assert np.array_equal(probs, qref.softmax(logits, NX.logit, 1.0))
    assert np.array_equal(scores, np.take_along_axis(probs, idx, axis=-1))
    # Not renormalised: the chosen probabilities of most tokens sum to well under one.
    assert np.mean(scores.sum(axis=-1) < (1 << NX.prob.f_bits) - 3) > 0.5
    # the k chosen are the k largest
    assert np.all(scores.min(axis=-1) >= np.sort(probs, axis=-1)[:, -3])


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.integers(1, 40), st.integers(1, 16), st.data())
def test_reorder_is_a_counting_sort(tokens, experts, data):
    k = data.draw(st.integers(1, experts))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    idx = np.stack([rng.permutation(experts)[:k] for _ in range(tokens)])
    scores = rng.integers(0, 1 << 15, size=(tokens, k))
    lists = qref.reorder(idx, scores, experts)
    counts = np.bincount(idx.ravel(), minlength=experts)
    assert [e for e, _, _ in lists] == qref.expert_order(counts)
    pairs = set()
    for e, tok, sc in lists:
        assert np.all(np.diff(tok) > 0)
        for t, s in zip(tok, sc):
            slot = int(np.nonzero(idx[t] == e)[0][0])
            assert s == scores[t, slot]
            pairs.add((int(t), e))
    assert pairs == {(t, int(e)) for t in range(tokens) for e in idx[t]}


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.integers(1, 40), st.integers(1, 8), st.integers(1, 41), st.data())
def test_reorder_passes_tile_the_tokens(tokens, experts, tile, data):
    """One pass per tile of ``tile`` tokens, each the reorder of its own tokens (global
    indices, the tile's own expert order); no tile size is one pass of all."""
    k = data.draw(st.integers(1, experts))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    idx = np.stack([rng.permutation(experts)[:k] for _ in range(tokens)])
    scores = rng.integers(0, 1 << 15, size=(tokens, k))
    passes = qref.reorder_passes(idx, scores, experts, tile)
    starts = range(0, tokens, tile)
    assert len(passes) == len(starts)
    for t0, got in zip(starts, passes):
        want = qref.reorder(idx[t0:t0 + tile], scores[t0:t0 + tile], experts)
        assert [e for e, _, _ in got] == [e for e, _, _ in want]
        for (_, tok, sc), (_, wtok, wsc) in zip(got, want):
            assert np.array_equal(tok, wtok + t0) and np.array_equal(sc, wsc)
    whole = qref.reorder_passes(idx, scores, experts)
    assert len(whole) == 1
    assert [e for e, _, _ in whole[0]] == [e for e, _, _ in qref.reorder(idx, scores, experts)]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.integers(0, 130), min_size=1, max_size=64))
def test_expert_order_interleaves_large_and_small(counts):
    order = qref.expert_order(counts)
    used = [e for e, c in enumerate(counts) if c]
    assert sorted(order) == used                       # every used expert once, no unused one
    total = sum(counts)
    for i, e in enumerate(order):
        left = order[i:]
        share = sum(counts[x] for x in order[:i])
        # below or at its share: the largest count left, else the smallest; ties: lowest id
        want = max(counts[x] for x in left) if len(used) * share <= i * total else \
            min(counts[x] for x in left)
        assert counts[e] == want and e == min(x for x in left if counts[x] == want)


def test_expert_order_example():
    # 4 used experts, 12 tokens (share 3 each): 7 first (largest); 7 > 3 → smallest (1, the
    # lowest id of the two 1s); 8 > 6 → smallest (1); 9 ≤ 9 → largest (3).
    assert qref.expert_order([1, 0, 3, 1, 7]) == [4, 0, 3, 2]
    assert qref.expert_order([0, 0]) == []
    with pytest.raises(ValueError, match="negative"):
        qref.expert_order([2, -1])


def test_reorder_all_tokens_to_one_expert():
    idx = np.zeros((129, 1), dtype=np.int64)
    lists = qref.reorder(idx, np.ones((129, 1), np.int64), 16)
    assert len(lists) == 1 and lists[0][0] == 0 and lists[0][1].tolist() == list(range(129))


# -- tables and numerics ------------------------------------------------------------------------

def test_tables_are_generated_to_their_definitions():
    hi = tables.exp2_hi_table(NX.exp_table_bits, NX.exp_frac)
    lo = tables.exp2_lo_table(NX.softmax_logit_frac - NX.exp_table_bits,
                              NX.softmax_logit_frac, NX.exp_frac)
    assert hi[0] == lo[0] == 1 << NX.exp_frac
    assert all(a > b for a, b in zip(hi, hi[1:])) and all(a >= b for a, b in zip(lo, lo[1:]))
    g = tables.gelu_delta_table(NX.gelu_step_bits, NX.gelu_range, NX.gelu_frac)
    assert len(g) == (NX.gelu_range << NX.gelu_step_bits) + 1 and g[0] == 0 and g[-1] == 0
    peak = max(range(len(g)), key=g.__getitem__) / (1 << NX.gelu_step_bits)
    assert 0.7 < peak < 0.8                                  # δ peaks near a ≈ 0.75
    r = tables.recip_table(NX.recip_table_bits, NX.recip_frac)
    assert all(a > b for a, b in zip(r, r[1:]))
    s = tables.rsqrt_table(NX.rsqrt_table_bits, NX.rsqrt_frac)
    assert len(s) == 3 << NX.rsqrt_table_bits


@pytest.mark.parametrize("change, exc, match", [
    (dict(act=SQ(10, 10)), ValueError, "at most 18 bits"),
    (dict(softmax_lanes=0), TypeError, "softmax_lanes must be a positive integer"),
    (dict(weight="SQ(2,14)"), TypeError, "weight must be a QFormat"),
    (dict(hidden=SQ(10, 4)), ValueError, "finer than the hidden format"),
    (dict(operand_bits=19), ValueError, "operand_bits must be at most 18"),
    (dict(acc_bits=40), ValueError, "cannot hold a sum"),
    (dict(expert_weight_bits=17), ValueError, r"expert_weight_bits \(17\) must lie in 3\.\.16"),
    (dict(expert_weight_bits=2), ValueError, r"expert_weight_bits \(2\) must lie in 3\.\.16"),
    (dict(weight=SQ(2, 10)), ValueError, r"expert_weight_bits \(14\) must lie in 3\.\.12"),
    (dict(expert_weight_bits=14.0), TypeError, "expert_weight_bits must be a positive integer"),
])
def test_bad_numerics_are_refused(change, exc, match):
    with pytest.raises(exc, match=match):
        dataclasses.replace(NX, **change)


def test_default_formats_hold_trained_magnitudes():
    # Trained M³ViT-Ti (Edge-MoE's dump): qkv bias 50.9, LayerNorm gain 15.6, residual ~30
    # (absmax 39.3 at the output), fc1 pre-activation in [-7.2, 5.2], norm2 output 8.8.
    assert NX.bias.max_real > 50.9 and NX.ln_param.max_real > 15.6
    assert NX.act.max_real > 39.3 and NX.qkv.max_real > 50.9
    assert NX.hidden.max_real > 7.2 and NX.ln_out.max_real > 8.8
    assert isinstance(Numerics(), Numerics)


def test_expert_weights_on_their_grid():
    """Expert weights are ``weight`` integers rounded to ``expert_weight_bits``: multiples of
    2**shift, within one half step of the value, saturated at the format's ends."""
    from golden.twin import quantize_expert_weight
    assert NX.expert_weight_format == SQ(2, 12) and NX.expert_weight_shift == 2
    x = np.random.default_rng(1).uniform(-2.5, 2.5, 4000)
    q = quantize_expert_weight(x, NX)
    step = 1 << NX.expert_weight_shift
    assert np.all(q % step == 0) and q.min() >= NX.weight.min_int
    assert q.max() <= NX.weight.max_int - (step - 1)
    inside = np.abs(x) < 1.99
    err = np.abs(q[inside] - x[inside] * (1 << NX.weight.f_bits))
    assert err.max() <= step / 2
    wide = dataclasses.replace(NX, expert_weight_bits=16)
    assert np.array_equal(quantize_expert_weight(x, wide), quantize(x, NX.weight))
