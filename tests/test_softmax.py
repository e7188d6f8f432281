# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""The streaming softmax against :func:`golden.qref.softmax`, bit for bit."""

import random
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from golden import qref
from golden.fixed import SQ, UQ
from golden.numerics import DEFAULT_NUMERICS
from hdl.nonlin.config import SoftmaxConfig
from hdl.nonlin.softmax import Exp2Neg, Reciprocal, Softmax
from sim.bench.softmax import edge_rows, reference, row_beats, simulate_softmax, softmax_error

NX = DEFAULT_NUMERICS
SCALES = (64 ** -0.5, 32 ** -0.5, 1.0, 2.5)


def small_config(lanes=2, max_len=10, **kwargs):
    """A configuration with ``lanes`` lanes (the numerics' softmax_lanes follow)."""
    return SoftmaxConfig(replace(NX, softmax_lanes=lanes), lanes, max_len, **kwargs)


def check_rows(cfg, rows, *, seed=0, p_idle=0.3, p_stall=0.3, sim_args=None, observe=None):
    """``rows``: ``(values, fmt_index, scale)``; runs them all in one simulation."""
    dut = Softmax(cfg)
    hw_rows = [(v, k, qref.softmax_scale_int(sc, cfg.numerics)) for v, k, sc in rows]
    out = simulate_softmax(dut, hw_rows, seed=seed, p_idle=p_idle, p_stall=p_stall,
                           observe=observe, **(sim_args or {}))
    assert len(out) == len(rows)
    for n, ((values, k, sc), got) in enumerate(zip(rows, out)):
        want = reference(cfg, values, k, sc)
        assert len(got) == len(values)
        bad = np.nonzero(np.array(got) != want)[0]
        assert not bad.size, (f"row {n} (len {len(values)}, {cfg.in_formats[k]}, scale {sc}): "
                              f"{bad.size} mismatches, first at {bad[0]}: hw {got[bad[0]]}, "
                              f"twin {want[bad[0]]}; row {list(values)}")
    return dut


@st.composite
def row_sets(draw, max_len, n_formats):
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        k = draw(st.integers(0, n_formats - 1))
        fmt = (NX.score, NX.logit)[k]
        length = draw(st.integers(1, max_len))
        spread = draw(st.sampled_from([1 << fmt.f_bits, 8 << fmt.f_bits, fmt.max_int]))
        center = draw(st.integers(fmt.min_int, fmt.max_int))
        values = draw(st.lists(st.integers(max(fmt.min_int, center - spread),
                                           min(fmt.max_int, center + spread)),
                               min_size=length, max_size=length))
        rows.append((values, k, draw(st.sampled_from(SCALES))))
    return rows


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lanes=st.sampled_from([1, 2, 3, 4]), rows=row_sets(10, 2),
       p=st.sampled_from([0.0, 0.3, 0.6]), seed=st.integers(0, 99))
@example(lanes=3, rows=[([5, -3, 9, 9, 0, 1, 2], 0, 1.0), ([7], 1, 0.125)], p=0.5, seed=1)
def test_softmax_random(lanes, rows, p, seed, sim_args):
    check_rows(small_config(lanes, 10), rows, seed=seed, p_idle=p, p_stall=p,
               sim_args=sim_args)


@pytest.mark.parametrize("lanes", [2, 3])
def test_softmax_edges(lanes, sim_args):
    """All equal, one dominant, underflow to zero, the format limits, rows of length 1 and
    max_len, ramps (the maximum rises in every group), both input formats."""
    max_len = 9
    cfg = small_config(lanes, max_len)
    rng = np.random.default_rng(lanes)
    rows = []
    for k, fmt in enumerate(cfg.in_formats):
        for length in (1, 2, lanes, max_len):
            for values in edge_rows(fmt, length, rng):
                rows.append((values, k, 1.0))
        rows.append(([fmt.max_int] + [fmt.min_int] * (max_len - 1), k, 2.5))   # underflow
        rows.append((list(range(0, 40 * max_len, 40)), k, 2.5))           # rises every group
        rows.append(([fmt.min_int] * max_len, k, 64 ** -0.5))
    check_rows(cfg, rows, seed=lanes, p_idle=0.2, p_stall=0.4, sim_args=sim_args)


def test_softmax_underflow_is_zero():
    """The edge-case row whose tail underflows: the twin gives exact zeros (checked above)."""
    cfg = small_config(2, 6)
    fmt = cfg.in_formats[0]
    p = reference(cfg, [fmt.max_int] + [fmt.min_int] * 5, 0, 1.0)
    assert p[0] == NX.prob.max_int and not p[1:].any()


def test_softmax_real_max_len(sim_args):
    """The default numerics (8 lanes) at a real row length: 129 tokens (m3vit-tiny)."""
    cfg = SoftmaxConfig(NX, None, 129)
    rng = np.random.default_rng(7)
    fmt = cfg.in_formats[0]
    rows = [(list(np.clip(np.rint(rng.normal(0, s, 129) * 128), fmt.min_int, fmt.max_int)
                  .astype(np.int64)), 0, 64 ** -0.5) for s in (1.0, 4.0, 30.0)]
    rows += [([fmt.max_int] * 129, 0, 64 ** -0.5), ([3], 0, 64 ** -0.5),
             (list(range(-129 * 60, 0, 60)), 0, 1.0)]
    check_rows(cfg, rows, seed=2, p_idle=0.1, p_stall=0.2, sim_args=sim_args)


@pytest.mark.parametrize("experts", [4, 16])
def test_softmax_router(experts, sim_args):
    """Router use: rows of E logits (logit format, scale 1.0), many tokens back to back."""
    cfg = SoftmaxConfig(NX, None, 1201)
    fmt = NX.logit
    assert cfg.in_formats[1] == fmt
    rng = np.random.default_rng(experts)
    rows = [(list(rng.integers(-4 << fmt.f_bits, 4 << fmt.f_bits, experts)), 1, 1.0)
            for _ in range(24)]
    rows.append(([fmt.max_int] * (experts - 1) + [fmt.min_int], 1, 1.0))
    rows.append(([fmt.min_int] * experts, 1, 1.0))
    check_rows(cfg, rows, seed=experts, p_idle=0.2, p_stall=0.2, sim_args=sim_args)
    probs = qref.route(np.zeros((1, 8), dtype=np.int64), np.zeros((experts, 8), dtype=np.int64),
                       2, NX)[1]
    assert np.array_equal(probs[0], reference(cfg, [0] * experts, 1, 1.0))


def test_softmax_latency_and_throughput(sim_args):
    cfg = small_config(4, 32)
    # Isolated rows whose maximum never rises after the first group: latency as documented.
    for length in (1, 4, 13, 32):
        obs = {}
        dut = check_rows(cfg, [([5] * length, 0, 1.0)], p_idle=0.0, p_stall=0.0,
                         sim_args=sim_args, observe=obs)
        assert obs["first_out"][0] - obs["last_in"][0] == dut.latency
    # Back-to-back rows at one beat per cycle (the row buffer and rows in flight suffice).
    length, n_rows = 32, 12
    obs = {}
    dut = check_rows(cfg, [([k] * length, 1, 1.0) for k in range(n_rows)], p_idle=0.0,
                     p_stall=0.0, sim_args=sim_args, observe=obs)
    assert dut.row_period(length) == length // 4
    cycles = obs["cycles"] - obs["first_in"]
    g = length // 4
    assert cycles <= n_rows * g - 1 + dut.latency + g + n_rows
    # A ramp raises the maximum in every group: one group per acc_loop cycles in each of the
    # two running-sum contexts at worst. One context alone would need (g − 1)·acc_loop per row.
    obs, n_rows = {}, 8
    dut = check_rows(cfg, [(list(range(length)), 0, 1.0)] * n_rows, p_idle=0.0, p_stall=0.0,
                     sim_args=sim_args, observe=obs)
    cycles = obs["cycles"] - obs["first_in"]
    assert cycles <= n_rows * g * dut.acc_loop // 2 + g * dut.acc_loop + dut.latency
    assert cycles < n_rows * (g - 1) * dut.acc_loop


def _run_component(dut, inputs, port_in, ports_out, latency):
    """Drive ``port_in`` with one input per cycle; sample ``ports_out`` ``latency`` later."""
    outs = []

    async def tb(ctx):
        for k in range(len(inputs) + latency):
            if k < len(inputs):
                ctx.set(port_in, inputs[k])
            await ctx.tick()
            if k + 1 >= latency:
                outs.append(tuple(ctx.get(p) for p in ports_out))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return outs[:len(inputs)]


def test_exp2_neg_unit():
    """Exp2Neg against golden.qref.exp2_neg: both ends, every table index, the cut-off."""
    cfg = SoftmaxConfig(NX, None, 64)
    lf = NX.softmax_logit_frac
    rng = random.Random(0)
    ds = [0, 1, 2, 255, 256, 257, (1 << lf) - 1, 1 << lf, cfg.d_sat - 1, cfg.d_sat]
    ds += [(i << (lf - NX.exp_table_bits)) + rng.randrange(1 << (lf - NX.exp_table_bits))
           for i in range(1 << NX.exp_table_bits)]
    ds += [rng.randrange(cfg.d_sat + 1) for _ in range(300)]
    ds += [(k << lf) + rng.randrange(1 << lf) for k in range(NX.exp_frac + 1)]
    ds = [min(d, cfg.d_sat) for d in ds]
    dut = Exp2Neg(cfg, 3)
    vecs = [[ds[k], ds[(k + 7) % len(ds)], ds[(k + 13) % len(ds)]] for k in range(len(ds))]
    outs = _run_component(dut, vecs, dut.d, [dut.e], Exp2Neg.LATENCY)
    got = np.array([[int(x) for x in o[0]] for o in outs])
    assert np.array_equal(got, qref.exp2_neg(np.array(vecs), NX))
    big = np.array([cfg.d_sat, cfg.d_sat + 1, 10 ** 7])
    assert not qref.exp2_neg(big, NX).any()          # saturating d at d_sat is exact


def test_reciprocal_unit():
    cfg = SoftmaxConfig(NX, None, 1201)
    rng = random.Random(1)
    lo, hi = cfg.exp_one, cfg.acc_max
    vs = [lo, lo + 1, hi, hi - 1, 1 << 20, (1 << 20) - 1, (1 << 24), (1 << 25) + 12345,
          3 << 18, 5 << 18]
    vs += [(1 << b) + rng.randrange(1 << b) for b in range(18, hi.bit_length() - 1)
           for _ in range(20)]
    vs += [rng.randrange(lo, hi + 1) for _ in range(300)]
    dut = Reciprocal(cfg)
    outs = _run_component(dut, vs, dut.v, [dut.y1, dut.b], Reciprocal.LATENCY)
    y1, b = qref.reciprocal(np.array(vs), NX)
    assert [o[0] for o in outs] == list(y1)
    assert [o[1] for o in outs] == list(b)


def test_softmax_error_figures():
    """The twin's error against float softmax (the README figures; the bench prints them)."""
    rng = np.random.default_rng(0)
    rows = list(np.clip(np.rint(rng.normal(0, 4, (200, 129)) * 128), -32768, 32767)
                .astype(np.int64))
    rows += edge_rows(NX.score, 129, rng)
    unrounded, lsb = softmax_error(rows, NX.score, 64 ** -0.5)
    assert unrounded < 2 ** -15
    assert lsb <= 1.5


def test_softmax_config_errors():
    with pytest.raises(ValueError, match=r"lanes must be a positive integer, not 0"):
        SoftmaxConfig(NX, 0)
    with pytest.raises(ValueError, match=r"lanes \(4\) must equal numerics.softmax_lanes \(16\)"):
        SoftmaxConfig(NX, 4)
    with pytest.raises(ValueError, match=r"max_len must be a positive integer, not 0"):
        SoftmaxConfig(NX, None, 0)
    with pytest.raises(ValueError, match=r"above the supported maximum row length"):
        SoftmaxConfig(NX, None, 1 << 20)
    with pytest.raises(ValueError, match=r"at most 18 bits are supported"):
        SoftmaxConfig(NX, None, 64, (SQ(12, 12),))
    with pytest.raises(ValueError, match=r"must be a signed format"):
        SoftmaxConfig(NX, None, 64, (UQ(8, 8),))
    with pytest.raises(ValueError, match=r"at least one input format"):
        SoftmaxConfig(NX, None, 64, ())
    with pytest.raises(ValueError, match=r"must not repeat a format"):
        SoftmaxConfig(NX, None, 64, (NX.score, NX.score))
    with pytest.raises(TypeError, match=r"in_formats must be a tuple of QFormat"):
        SoftmaxConfig(NX, None, 64, NX.score)
    with pytest.raises(ValueError, match=r"scale_bits \(27\) must be at most 26"):
        SoftmaxConfig(NX, None, 64, scale_bits=27)
    with pytest.raises(ValueError, match=r"buffer_words \(2\) must hold a whole row"):
        SoftmaxConfig(NX, None, 3 * NX.softmax_lanes, buffer_words=2)
    with pytest.raises(ValueError, match=r"max_rows must be a positive integer, not 0"):
        SoftmaxConfig(NX, None, 64, max_rows=0)
    with pytest.raises(TypeError, match=r"numerics must be a golden.numerics.Numerics"):
        SoftmaxConfig("default")
    with pytest.raises(TypeError, match=r"config must be a SoftmaxConfig"):
        Softmax(NX)
    cfg = SoftmaxConfig(NX, None, 129)
    with pytest.raises(ValueError, match=r"row length 130 is outside 1..max_len = 129"):
        cfg.check_row_len(130)
    with pytest.raises(ValueError, match=r"row length 0 is outside"):
        cfg.check_row_len(0)
    with pytest.raises(ValueError, match=r"row length 130 is outside 1..max_len = 129"):
        row_beats(cfg, [0] * 130, 0, 11819)
    bits = NX.softmax_scale_frac + 2
    with pytest.raises(ValueError,
                       match=rf"scale constant {1 << bits} does not fit scale_bits = {bits}"):
        row_beats(cfg, [0] * 4, 0, 1 << bits)
    with pytest.raises(ValueError, match=r"format index 2 is outside 0..1"):
        row_beats(cfg, [0] * 4, 2, 11819)
    # Default buffer: the power of two at or above two rows plus the slack.
    from hdl.nonlin.config import ROW_SLACK_WORDS
    groups = -(-129 // NX.softmax_lanes)
    assert cfg.lanes == NX.softmax_lanes
    assert cfg.buffer_words == 1 << (2 * groups + ROW_SLACK_WORDS - 1).bit_length()


@pytest.mark.parametrize("lanes", [4, 32])
def test_bench_lanes_set_the_numerics(lanes, capsys):
    """``sim.bench softmax --lanes N`` builds the unit and the twin with N-lane numerics."""
    import json
    from sim.bench import main
    main(["softmax", "--lanes", str(lanes), "--rows", "2", "--len", "40", "--max-len", "64",
          "--error-rows", "4", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["lanes"] == lanes and out["bit_exact"] and out["mismatches"] == 0
