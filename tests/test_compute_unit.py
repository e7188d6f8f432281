# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of the unified compute unit (hdl/systolic/unit.py) against golden.qref.linear.

Every simulation runs several products back to back through :class:`sim.compute_model.
ComputeDriver`, with the stream-rule checker on every stream of the unit and on the array's
edges (which, inside the unit, must never refuse).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from golden.fixed import SQ, UQ
from golden.numerics import DEFAULT_NUMERICS
from hdl.systolic.array import SystolicArray
from hdl.systolic.config import M3VIT_TINY_COMPUTE, ArrayConfig, ComputeConfig
from hdl.systolic.unit import ComputeUnit, Error
from sim.compute_model import ComputeDriver, Product, product_for
from sim.harness import run_sim

NX = DEFAULT_NUMERICS
KINDS = ("qkv", "fc1", "fc2", "expert_fc2", "qk", "av", "patch", "router", "proj")

def _unit(rows, cols, *, max_m=9, max_k=11, max_n=10, abuf_depth=512, gelu=True,
          load_words=1, **kw):
    """A fresh unit (a unit's memories can be elaborated only once)."""
    cfg = ComputeConfig(ArrayConfig(rows, cols, load_words=load_words), max_m=max_m,
                        max_k=max_k, max_n=max_n, abuf_depth=abuf_depth, gelu=gelu, **kw)
    return ComputeUnit(cfg)


def _run(unit, products, sim_args, *, seed=0, p_idle=0.0, p_stall=0.0, commands=None):
    driver = ComputeDriver(unit, products, seed=seed, p_idle=p_idle, p_stall=p_stall,
                           lead_cycles=unit.config.w_queue_tiles * unit.config.array.cols + 4,
                           commands=commands)
    benches, background = driver.testbenches()
    budget = sum(driver.formula_cycles(p) for p in products) if commands is None else 0
    run_sim(unit, benches, background=background,
            deadline_cycles=int(budget * (1 + 10 * (p_idle + p_stall))) + 300 * (
                len(products) + len(commands or ())) + 1000, **sim_args)
    return driver


def _check(unit, driver, *, exact_cycles):
    for p in driver.products:
        m, k, n = p.shape
        expected = p.expected(NX)
        got = p.result["y"]
        assert p.result["error"] == Error.OK
        mism = np.argwhere(got != expected)
        assert mism.size == 0, (f"{p.shape} {p.x_fmt}·{p.w_fmt}→{p.out_fmt}: {len(mism)} "
                                f"mismatches, first at {tuple(mism[0])}: "
                                f"{got[tuple(mism[0])]} != {expected[tuple(mism[0])]}")
        assert p.result["padding_ok"], ("lanes beyond N of the output words, or rows outside "
                                        "the row map, were written")
        formula = driver.formula_cycles(p)
        if exact_cycles:
            assert p.result["cycles"] == formula, (p.shape, p.result["cycles"], formula)
        else:
            assert p.result["cycles"] >= formula


# -- bit-exactness over shapes ------------------------------------------------------------------


@pytest.mark.parametrize("array", [(2, 2), (2, 3), (4, 4)])
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 11), st.integers(1, 10),
                               st.sampled_from(KINDS)), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16))
@example(jobs=[(1, 1, 1, "qkv"), (1, 1, 1, "av"), (1, 1, 1, "expert_fc2")], seed=1)
@example(jobs=[(9, 11, 10, "fc1"), (9, 11, 10, "qk"), (7, 1, 3, "fc2")], seed=2)
def test_random_shapes_bit_exact_and_cycles(array, jobs, seed, sim_args):
    """Random products, shapes not multiples of the array (M = K = N = 1 included), every kind
    of the model; the result equals the twin and the cycles equal the formula."""
    unit = _unit(*array)
    rng = np.random.default_rng(seed)
    products = [product_for(kind, m, k, n, NX, rng) for m, k, n, kind in jobs]
    driver = _run(unit, products, sim_args, seed=seed)
    _check(unit, driver, exact_cycles=True)


@pytest.mark.parametrize("array", [(2, 2), (4, 2), (2, 4)])
@settings(max_examples=5, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 11), st.integers(1, 10),
                               st.sampled_from(KINDS)), min_size=2, max_size=4),
       seed=st.integers(0, 2 ** 16), p_idle=st.sampled_from((0.0, 0.3)))
@example(jobs=[(1, 11, 10, "expert_fc2"), (9, 11, 10, "qk"), (1, 5, 3, "fc1"),
               (2, 7, 9, "av")], seed=3, p_idle=0.0)
def test_pair_weight_loads(array, jobs, seed, p_idle, sim_args):
    """``load_words = 2``: stream weights come and load two words at a time, abuf weights
    (Q·Kᵀ, A·V) one at a time, in any order of products: bit-exact, and without bubbles in
    exactly the formula's cycles, where a pass of fewer than ``cols`` rows takes
    ``max(M, cols/2)``."""
    unit = _unit(*array, load_words=2)
    rng = np.random.default_rng(seed)
    products = [product_for(kind, m, k, n, NX, rng) for m, k, n, kind in jobs]
    driver = _run(unit, products, sim_args, seed=seed, p_idle=p_idle)
    _check(unit, driver, exact_cycles=not p_idle)
    # Against a plain unit: the same for abuf weights, faster for short passes of stream ones
    # (every pass after the first saves cols − max(M, cols/2)).
    plain = _unit(*array)
    for p in products:
        m, k, n = p.shape
        kw = dict(w_transposed=p.w_source == "abuf_t", w_from_abuf=p.w_source != "stream",
                  bias=p.bias is not None, row_scale=p.row_scale is not None)
        j = -(-k // array[0]) * -(-n // array[1])
        gain = plain.cycles(m, k, n, **kw) - unit.cycles(m, k, n, **kw)
        if p.w_source == "stream":
            per_pass = array[1] - max(m, array[1] // 2) if m < array[1] else 0
            assert gain >= (j - 1) * per_pass
        else:
            assert gain == 0


# -- epilogue options and transposed operands, one by one ----------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_each_product_kind(kind, sim_args):
    """Each product of the model with the twin's formats: bias, GELU, row scale, accumulation,
    W from the buffer (Q·Kᵀ) and transposed (A·V), on a 3×2 array with shapes that leave
    partial tiles in every dimension."""
    unit = _unit(3, 2)
    rng = np.random.default_rng(KINDS.index(kind))
    products = [product_for(kind, 7, 8, 5, NX, rng), product_for(kind, 2, 11, 9, NX, rng)]
    driver = _run(unit, products, sim_args)
    _check(unit, driver, exact_cycles=True)


def _mapped(kind, m, k, n, rng, *, mode, spare):
    """A product whose X rows (``gather``), output rows (``scatter``) or both lie at a random
    row map of a matrix with ``spare`` more rows."""
    p = product_for(kind, m, k, n, NX, rng)
    p.map_rows = m + spare
    p.row_map = rng.permutation(m + spare)[:m]
    p.gather = mode in ("gather", "both")
    p.scatter = mode in ("scatter", "both")
    return p


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(jobs=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 11), st.integers(1, 10),
                               st.sampled_from(("fc1", "expert_fc2", "qkv", "qk", "proj")),
                               st.sampled_from(("gather", "scatter", "both")),
                               st.integers(0, 4)), min_size=1, max_size=3),
       seed=st.integers(0, 2 ** 16), p_idle=st.sampled_from((0.0, 0.4)))
@example(jobs=[(9, 11, 10, "fc1", "gather", 3), (9, 10, 10, "expert_fc2", "scatter", 3)],
         seed=0, p_idle=0.0)
@example(jobs=[(1, 1, 1, "expert_fc2", "both", 0), (2, 3, 1, "qk", "gather", 1)],
         seed=1, p_idle=0.4)
def test_row_maps_bit_exact_and_cycles(jobs, seed, p_idle, sim_args):
    """Gathered X rows and scattered output rows (the MoE experts' fc1 and fc2): the result
    equals the twin on the mapped rows, every other row and padding lane is left alone, and
    without bubbles the cycles equal the formula (the offsets cost nothing)."""
    unit = _unit(2, 3)
    rng = np.random.default_rng(seed)
    products = [_mapped(kind, m, k, n, rng, mode=mode, spare=spare)
                for m, k, n, kind, mode, spare in jobs]
    driver = _run(unit, products, sim_args, seed=seed, p_idle=p_idle)
    _check(unit, driver, exact_cycles=not p_idle)


def test_mesh_registers_in_the_unit(sim_args):
    """A 4 × 4 array built from 2 × 2 grids with a pipeline register at every grid boundary:
    the longer latency enters the formula, nothing else changes."""
    cfg = ComputeConfig(ArrayConfig(4, 4, grid_rows=2, grid_cols=2, mesh_regs=1), max_m=9,
                        max_k=11, max_n=10, abuf_depth=512, gelu=False)
    unit = ComputeUnit(cfg)
    assert unit.array.latency == SystolicArray.latency_of(ArrayConfig(4, 4)) + 2
    rng = np.random.default_rng(11)
    products = [product_for(kind, 9, 11, 10, NX, rng) for kind in ("qkv", "qk", "av")]
    products.append(product_for("expert_fc2", 2, 3, 5, NX, rng))
    _check(unit, _run(unit, products, sim_args), exact_cycles=True)


def test_banked_buffer(sim_args):
    """An activation buffer of four banks (32 words each): X, W and the output straddle bank
    boundaries, and a word of a row may sit in another bank than its neighbour."""
    cfg = ComputeConfig(ArrayConfig(2, 3), max_m=9, max_k=11, max_n=10, abuf_depth=120,
                        abuf_bank_depth=32, gelu=False)
    unit = ComputeUnit(cfg)
    assert [b.depth for b in unit.abuf_banks] == [32, 32, 32, 24]
    rng = np.random.default_rng(12)
    products = [product_for(kind, 9, 11, 10, NX, rng) for kind in ("qk", "av", "fc2")]
    products[0].extra_stride = 2
    _check(unit, _run(unit, products, sim_args), exact_cycles=True)


def test_strided_operands(sim_args):
    """Matrices with row strides longer than their rows (submatrices, e.g. one head of QKV)."""
    unit = _unit(2, 2)
    rng = np.random.default_rng(5)
    products = []
    for kind in ("qk", "av", "expert_fc2"):
        p = product_for(kind, 5, 7, 6, NX, rng)
        p.extra_stride = 3
        products.append(p)
    _check(unit, _run(unit, products, sim_args), exact_cycles=True)


# -- saturation -----------------------------------------------------------------------------------


def _extreme(p, x_val, w_val, acc_val=None, scale_val=None, bias_val=None):
    p.x = np.full_like(p.x, x_val)
    p.w = np.full_like(p.w, w_val)
    if acc_val is not None and p.accumulate is not None:
        p.accumulate = np.full_like(p.accumulate, acc_val)
    if scale_val is not None and p.row_scale is not None:
        p.row_scale = np.full_like(p.row_scale, scale_val)
    if bias_val is not None and p.bias is not None:
        p.bias = np.full_like(p.bias, bias_val)
    return p


def test_saturation_at_format_limits(sim_args):
    """Operands, biases, scales and old outputs at their format limits: every saturation path
    (requantisation, row scale, accumulation) in both directions."""
    unit = _unit(2, 3)
    rng = np.random.default_rng(9)
    products = []
    for kind in ("qkv", "fc1", "expert_fc2", "qk", "fc2"):
        x_fmt, w_fmt = product_for(kind, 1, 1, 1, NX, rng).x_fmt, \
            product_for(kind, 1, 1, 1, NX, rng).w_fmt
        b_fmt = NX.bias
        for xv, wv, bv in ((x_fmt.min_int, w_fmt.min_int, b_fmt.max_int),
                           (x_fmt.max_int, w_fmt.min_int, b_fmt.min_int),
                           (x_fmt.max_int, w_fmt.max_int, b_fmt.max_int)):
            p = product_for(kind, 4, 11, 5, NX, rng)
            out = p.out_fmt
            products.append(_extreme(p, xv, wv, acc_val=out.max_int if xv * wv > 0 else
                                     out.min_int, scale_val=NX.prob.max_int, bias_val=bv))
    driver = _run(unit, products, sim_args)
    _check(unit, driver, exact_cycles=True)
    # The limits were actually reached.
    ys = np.concatenate([p.result["y"].ravel() for p in products])
    assert ys.max() == NX.act.max_int and ys.min() == NX.act.min_int


def test_rounding_ties(sim_args):
    """Exact halves at the requantisation shift round to even."""
    unit = _unit(2, 2)
    nx = NX
    # qkv·qkv → score: q_shift = 9 + 9 − 7 = 11; products of ±2**5·2**5 = 2**10 are halves.
    x = np.array([[32, 32, 0], [96, 32, 0], [-32, 0, 0], [-96, 32, 0]], dtype=np.int64)
    w = np.array([[32, 0, 0], [32, 32, 0]], dtype=np.int64)
    p = Product(x, w, nx.qkv, nx.qkv, nx.score, w_source="abuf")
    _check(unit, _run(unit, [p], sim_args), exact_cycles=True)
    raw = x @ w.T
    assert set(np.unique(raw % 2048)) & {1024}


# -- stalls and bubbles ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bubbles_and_stalls(seed, sim_args):
    """Random bubbles on cmd, w, b and s and random stalls on done: still bit-exact, never
    faster than the formula, every stream obeys the transfer rules."""
    unit = _unit(2, 3)
    rng = np.random.default_rng(100 + seed)
    products = [product_for(kind, int(rng.integers(1, 10)), int(rng.integers(1, 12)),
                            int(rng.integers(1, 11)), NX, rng)
                for kind in ("expert_fc2", "qkv", "fc1", "av", "patch")]
    driver = _run(unit, products, sim_args, seed=seed, p_idle=0.5, p_stall=0.6)
    _check(unit, driver, exact_cycles=False)
    assert any(p.result["cycles"] > driver.formula_cycles(p) for p in products)


# -- cycle formula ---------------------------------------------------------------------------------


def test_cycle_formula_terms():
    unit = _unit(4, 4)
    lat = unit.latency
    # M ≥ Lw: passes back to back; the first tile's load, then J·M, then the drain.
    assert unit.cycles(9, 8, 8) == 2 + 4 + (2 * 2 - 1) * 9 + 9 - 1 + lat + 1
    # M < Lw: every pass waits for its weights.
    assert unit.cycles(1, 8, 8) == 2 + 4 + 3 * 4 + 1 - 1 + lat + 1
    # Biases (one word per N-tile) and scales (one per row) load before the first pass.
    assert unit.cycles(9, 8, 8, row_scale=True) == unit.cycles(9, 8, 8) + 9 - 4
    b = unit.loss_breakdown(9, 5, 7)
    assert sum(b.values()) == pytest.approx(unit.cycles(9, 5, 7))
    assert b["tile_edges"] == pytest.approx(2 * 2 * 9 - 9 * 5 * 7 / 16)


def test_m3vit_tiny_utilisation():
    """The dense products of m3vit-tiny reach ≥ 90 % of PE-cycles on 16 × 16 by the formula
    (the bench checks the simulation); attention and expert products as documented."""
    unit = ComputeUnit(M3VIT_TINY_COMPUTE)
    for m, k, n in ((129, 192, 576), (129, 192, 768), (129, 768, 192)):
        util = unit.ideal_cycles(m, k, n) / unit.cycles(m, k, n, bias=True)
        assert util >= 0.99
    assert unit.ideal_cycles(129, 64, 129) / unit.cycles(129, 64, 129) > 0.88
    assert unit.ideal_cycles(129, 129, 64) / unit.cycles(129, 129, 64, w_transposed=True) > 0.88
    assert unit.ideal_cycles(16, 192, 384) / unit.cycles(16, 192, 384, bias=True) > 0.98


def test_every_model_product_is_a_command():
    """Every matrix product of m3vit-tiny, with its formats and epilogue, is a valid command
    of the m3vit-tiny unit (one head of Q·Kᵀ and A·V read from inside the QKV matrix)."""
    unit = ComputeUnit(M3VIT_TINY_COMPUTE)
    nx = NX
    L = 16
    qkv_base, qkv_stride = 8192, 576 // L      # 129 × 36 words
    common = dict(x_base=0, y_base=2048)
    cmds = [
        unit.command(128, 768, 192, x_fmt=nx.pixel, w_fmt=nx.weight, out_fmt=nx.act,
                     bias=True, accumulate=True, **common),                      # patch embed
        unit.command(129, 192, 576, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.qkv,
                     bias=True, x_base=0, y_base=qkv_base),                       # QKV
        unit.command(129, 64, 129, x_fmt=nx.qkv, w_fmt=nx.qkv, out_fmt=nx.score,
                     x_base=qkv_base + 4, x_stride=qkv_stride, w_from_abuf=True,
                     w_base=qkv_base + 12 + 4, w_stride=qkv_stride, y_base=0),   # Q·Kᵀ, head 1
        unit.command(129, 129, 64, x_fmt=nx.prob, w_fmt=nx.qkv, out_fmt=nx.act,
                     x_base=0, w_from_abuf=True, w_transposed=True,
                     w_base=qkv_base + 24 + 4, w_stride=qkv_stride, y_base=2048 + 4,
                     y_stride=12),                                                # A·V, head 1
        unit.command(129, 192, 192, x_fmt=nx.act, w_fmt=nx.weight, out_fmt=nx.act,
                     bias=True, accumulate=True, **common),                      # proj
        unit.command(129, 192, 768, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.hidden,
                     bias=True, gelu=True, x_base=0, y_base=4096),                # fc1
        unit.command(129, 768, 192, x_fmt=nx.hidden, w_fmt=nx.weight, out_fmt=nx.act,
                     bias=True, accumulate=True, x_base=4096, y_base=2048),       # fc2
        unit.command(16, 192, 384, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.hidden,
                     bias=True, gelu=True, **common),                            # expert fc1
        unit.command(16, 384, 192, x_fmt=nx.hidden, w_fmt=nx.weight, out_fmt=nx.act,
                     bias=True, row_scale=True, accumulate=True, **common),      # expert fc2
        unit.command(129, 192, 16, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.logit,
                     **common),                                                   # router
    ]
    assert all(c["q_shift"] >= 0 for c in cmds)


# -- refusals --------------------------------------------------------------------------------------


def test_command_builder_refuses():
    unit = _unit(2, 2, gelu=False)
    nx = NX
    f = dict(x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.qkv, x_base=0, y_base=100)
    with pytest.raises(ValueError, match=r"M must be a positive integer, not 0"):
        unit.command(0, 4, 4, **f)
    with pytest.raises(ValueError, match=r"K = 12 is above the configured maximum max_k = 11"):
        unit.command(1, 12, 4, **f)
    with pytest.raises(ValueError, match=r"N must be a positive integer, not -3"):
        unit.command(1, 1, -3, **f)
    with pytest.raises(ValueError, match=r"no GELU"):
        unit.command(1, 1, 1, **{**f, "out_fmt": nx.hidden}, gelu=True)
    with pytest.raises(ValueError, match=r"wider than the array's X operand"):
        unit.command(1, 1, 1, **{**f, "x_fmt": SQ(10, 10)})
    with pytest.raises(ValueError, match=r"must be signed"):
        unit.command(1, 1, 1, **{**f, "w_fmt": UQ(2, 14)})
    with pytest.raises(ValueError, match=r"requantisation shift .* is outside"):
        unit.command(1, 1, 1, **{**f, "out_fmt": SQ(-20, 30)})
    with pytest.raises(ValueError, match=r"w_transposed needs W in the activation buffer"):
        unit.command(1, 1, 1, **f, w_transposed=True)
    with pytest.raises(ValueError, match=r"share a buffer read port"):
        unit.command(1, 1, 1, **f, w_from_abuf=True, w_base=50, accumulate=True)
    with pytest.raises(ValueError, match=r"output region ends at word 520, beyond abuf_depth"):
        unit.command(9, 1, 1, **{**f, "y_base": 512})
    with pytest.raises(TypeError, match=r"x_fmt must be a QFormat"):
        unit.command(1, 1, 1, **{**f, "x_fmt": 16})
    g = _unit(2, 2)
    with pytest.raises(ValueError, match=r"GELU works in the hidden format"):
        g.command(1, 1, 1, **f, gelu=True)
    with pytest.raises(TypeError, match=r"config must be a ComputeConfig"):
        ComputeUnit(ArrayConfig(2, 2))


def test_hardware_refuses_bad_commands(sim_args):
    """Commands that bypass the builder are answered with an error status (no hang, nothing
    consumed), and a good command afterwards still works."""
    unit = _unit(2, 2, gelu=False)
    rng = np.random.default_rng(1)
    good = product_for("qkv", 3, 5, 4, NX, rng)
    driver = ComputeDriver(unit, [good])
    base = driver._plan[0]
    bad = [
        ({**base, "m": 0}, Error.ZERO_SIZE),
        ({**base, "k": 0}, Error.ZERO_SIZE),
        ({**base, "n": 11}, Error.TOO_LARGE),
        ({**base, "m": 10}, Error.TOO_LARGE),
        ({**base, "out_bits": 17}, Error.BAD_FORMAT),
        ({**base, "out_bits": 1}, Error.BAD_FORMAT),
        ({**base, "q_shift": 48}, Error.BAD_FORMAT),
        ({**base, "b_shift": 30}, Error.BAD_FORMAT),
        ({**base, "gelu": 1}, Error.NO_GELU),
        ({**base, "w_transposed": 1}, Error.BAD_SOURCE),
        ({**base, "w_from_abuf": 1, "accumulate": 1}, Error.BAD_SOURCE),
    ]
    driver = _run(unit, [], sim_args, commands=[c for c, _ in bad])
    assert [r["error"] for r in driver.results_raw] == [e for _, e in bad]
    assert all(r["cycles"] == 2 for r in driver.results_raw)
    # A good command after errors.
    unit = _unit(2, 2, gelu=False)
    _check(unit, _run(unit, [good], sim_args), exact_cycles=True)


def test_external_port_and_busy(sim_args):
    """The top reaches the activation buffer through ``ext`` while the unit is idle: a read and
    a write in every cycle, at their own addresses; a read of the word written in the same cycle
    returns the old word."""
    unit = _unit(2, 2, gelu=False)
    L = unit.config.array.buffer_lanes
    assert L == 2
    got = {}

    async def tb(ctx):
        assert not ctx.get(unit.busy)
        ctx.set(unit.ext.w_addr, 17)
        ctx.set(unit.ext.w_data, [-5, 7])
        ctx.set(unit.ext.w_en, 1)
        await ctx.tick()
        ctx.set(unit.ext.w_addr, 18)
        ctx.set(unit.ext.w_data, [3, -4])
        ctx.set(unit.ext.r_addr, 17)
        await ctx.tick()
        got["r17"] = [int(v) for v in ctx.get(unit.ext.r_data)]
        ctx.set(unit.ext.w_data, [9, -9])
        ctx.set(unit.ext.r_addr, 18)
        await ctx.tick()
        got["r18_old"] = [int(v) for v in ctx.get(unit.ext.r_data)]
        ctx.set(unit.ext.w_en, 0)
        await ctx.tick()
        got["r18_new"] = [int(v) for v in ctx.get(unit.ext.r_data)]
        got["mem"] = [[int(v) for v in ctx.get(unit.abuf_word(a))] for a in (17, 18)]

    run_sim(unit, [tb], **sim_args)
    assert got["r17"] == got["mem"][0] == [-5, 7]
    assert got["r18_old"] == [3, -4]
    assert got["r18_new"] == got["mem"][1] == [9, -9]


@pytest.mark.parametrize("kinds, banks", [(("qk", "av", "proj"), 1),
                                          (("fc2", "expert_fc2", "qkv"), 1),
                                          (("qk", "av", "proj"), 4)])
def test_external_port_beside_products(kinds, banks, sim_args):
    """While products run, an initiator moves a block of words from region to region through
    ``ext`` (each hop reads the block the previous hop wrote), offering an access every cycle:
    it gets only the cycles the products leave the second read port and the write port
    (``r_ok``, ``w_ok``), every region ends with the block, and the products stay bit-exact in
    exactly their formula's cycles (the unit has priority). With four banks the products'
    outputs (bank 0) never hold off the initiator's writes (banks 1–3): a write is refused
    only in the few cycles a command starts or its status waits."""
    unit = _unit(4, 4, max_m=9, max_k=11, max_n=10, abuf_bank_depth=512 // banks)
    L = unit.config.array.buffer_lanes
    rng = np.random.default_rng(len(kinds[0]))
    products = [product_for(kind, m, 11, 10, NX, rng) for kind in kinds for m in (9, 3)]
    driver = ComputeDriver(unit, products, seed=5,
                           lead_cycles=unit.config.w_queue_tiles * unit.config.array.cols + 4)
    words, first, regions = 8, 192, 40
    pyrng = np.random.default_rng(7)
    block = [[int(v) for v in pyrng.integers(-2 ** 15, 2 ** 15, L)] for _ in range(words)]
    seen = {"r_ok": 0, "r_refused": 0, "w_ok": 0, "w_refused": 0, "hops": 0}
    done = {"main": False}

    def region(i):
        return first + (i % regions) * words

    async def mover(ctx):
        for a, word in enumerate(block):
            ctx.set(unit.abuf_word(region(0) + a), word)
        while not ctx.get(unit.busy):
            await ctx.tick()
        hop = 0
        while not done["main"]:
            # Read the block of region `hop`, then write it into region `hop + 1`; a refused
            # access is offered again in the next cycle.
            got = []
            while len(got) < words:
                ctx.set(unit.ext.r_addr, region(hop) + len(got))
                _, _, r_ok, busy = await ctx.tick().sample(unit.ext.r_ok, unit.busy)
                seen["r_ok" if r_ok else "r_refused"] += busy
                if r_ok:
                    got.append([int(v) for v in ctx.get(unit.ext.r_data)])
            put = 0
            while put < words:
                ctx.set(unit.ext.w_addr, region(hop + 1) + put)
                ctx.set(unit.ext.w_data, got[put])
                ctx.set(unit.ext.w_en, 1)
                _, _, w_ok, busy = await ctx.tick().sample(unit.ext.w_ok, unit.busy)
                seen["w_ok" if w_ok else "w_refused"] += busy
                put += w_ok
            ctx.set(unit.ext.w_en, 0)
            hop += 1
        seen["hops"] = hop
        seen["regions"] = [[[int(v) for v in ctx.get(unit.abuf_word(region(i) + a))]
                            for a in range(words)] for i in range(min(hop + 1, regions))]

    benches, background = driver.testbenches()

    async def main(ctx):
        await benches[0](ctx)
        done["main"] = True
        await ctx.tick().repeat(4 * words)

    budget = sum(driver.formula_cycles(p) for p in products)
    run_sim(unit, [main, *benches[1:]], background=background + [mover],
            deadline_cycles=budget + 300 * len(products) + 1000, **sim_args)
    _check(unit, driver, exact_cycles=True)
    assert seen["hops"] >= 8, seen["hops"]
    assert seen["r_refused"] > 0, seen
    if banks == 1:
        assert seen["w_refused"] > 10 * len(products), seen
    else:
        assert 0 < seen["w_refused"] <= 4 * len(products), seen
    assert all(r == block for r in seen["regions"])


# -- the bench sub-command -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["matmul", "--m", "5", "--k", "7", "--n", "9", "--rows", "2", "--cols", "3", "--json"],
    ["matmul", "--m", "3", "--k", "6", "--n", "4", "--rows", "2", "--cols", "2",
     "--kind", "expert_fc2", "--p-idle", "0.3", "--json"],
])
def test_bench_matmul(argv, capsys):
    import json

    from sim.bench import main
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bit_exact"] is True
    for key in ("cycles", "formula_cycles", "ideal_cycles", "utilization", "loss_cycles"):
        assert key in out
    assert out["cycles"] == out["formula_cycles"] + out["loss_cycles"]["weight_stalls"]
    assert set(out["loss_cycles"]) == {"tile_edges", "weight_load", "preload", "fill_drain",
                                       "weight_stalls"}


def test_bench_matmul_refuses(capsys):
    from sim.bench import main
    assert main(["matmul", "--m", "0", "--json"]) == 2
    assert "--m must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["qkv", "fc1", "av", "expert_fc2"])
def test_bench_matmul_formula_matches_the_simulation(kind, capsys):
    """``--no-sim`` reports the cycle formula the simulation meets."""
    import json

    from sim.bench import main
    argv = ["matmul", "--m", "5", "--k", "7", "--n", "9", "--rows", "2", "--cols", "4",
            "--kind", kind, "--json"]
    assert main(argv) == 0
    sim = json.loads(capsys.readouterr().out)
    assert main(argv + ["--no-sim"]) == 0
    formula = json.loads(capsys.readouterr().out)
    assert sim["bit_exact"] is True
    assert formula["formula_cycles"] == sim["formula_cycles"] == sim["cycles"]
    assert formula["formula_utilization"] == sim["utilization"]
    assert formula["loss_cycles"] == {k: v for k, v in sim["loss_cycles"].items()
                                      if k != "weight_stalls"}
