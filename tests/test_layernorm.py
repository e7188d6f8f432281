# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""The streaming LayerNorm against :func:`golden.qref.layernorm`, bit for bit."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from golden import qref
from golden.fixed import SQ, UQ
from golden.numerics import DEFAULT_NUMERICS
from hdl.nonlin.config import LayerNormConfig
from hdl.nonlin.layernorm import LayerNorm, Rsqrt
from sim.bench.layernorm import (eps_int, layernorm_error, param_beats, reference,
                                 simulate_layernorm)

NX = DEFAULT_NUMERICS
FI, FP = NX.act, NX.ln_param


def check_layers(cfg, layers, *, seed=0, p_idle=0.3, p_stall=0.3, sim_args=None,
                 observe=None):
    """``layers``: ``(gamma, beta, eps, rows)`` with float eps; all in one simulation."""
    dut = LayerNorm(cfg)
    hw = [(g, b, eps_int(cfg, len(g), eps), rows) for g, b, eps, rows in layers]
    out = simulate_layernorm(dut, hw, seed=seed, p_idle=p_idle, p_stall=p_stall,
                             observe=observe, **(sim_args or {}))
    k = 0
    for li, (g, b, eps, rows) in enumerate(layers):
        want = reference(cfg, rows, g, b, eps)
        for r, row in enumerate(rows):
            got = np.array(out[k], dtype=np.int64)
            k += 1
            bad = np.nonzero(got != want[r])[0]
            assert got.shape == want[r].shape and not bad.size, (
                f"layer {li} row {r} (n {len(g)}): first mismatch at {bad[:1]}: hw {got[bad[:1]]}"
                f", twin {want[r][bad[:1]]}; row {list(row)}")
    assert k == len(out)
    return dut


@st.composite
def layer_sets(draw, max_len):
    layers = []
    for _ in range(draw(st.integers(1, 2))):
        n = draw(st.integers(1, max_len))
        params = st.lists(st.integers(FP.min_int, FP.max_int), min_size=n, max_size=n)
        gamma, beta = draw(params), draw(params)
        rows = []
        for _ in range(draw(st.integers(1, 4))):
            spread = draw(st.sampled_from([0, 3, 1 << FI.f_bits, FI.max_int]))
            center = draw(st.integers(FI.min_int, FI.max_int))
            rows.append(draw(st.lists(st.integers(max(FI.min_int, center - spread),
                                                  min(FI.max_int, center + spread)),
                                      min_size=n, max_size=n)))
        layers.append((gamma, beta, draw(st.sampled_from([1e-6, 1e-5, 0.1])), rows))
    return layers


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(lanes=st.sampled_from([1, 2, 3, 4]), layers=layer_sets(10),
       p=st.sampled_from([0.0, 0.3, 0.6]), seed=st.integers(0, 99))
@example(lanes=3, layers=[([1024] * 7, [0] * 7, 1e-6, [[5, -3, 9, 9, 0, 1, 2]])], p=0.5, seed=1)
def test_layernorm_random(lanes, layers, p, seed, sim_args):
    check_layers(LayerNormConfig(NX, lanes, 10), layers, seed=seed, p_idle=p, p_stall=p,
                 sim_args=sim_args)


@pytest.mark.parametrize("lanes", [2, 3])
def test_layernorm_edges(lanes, sim_args):
    """Zero variance (equal rows, n = 1), the format limits, one outlier (the largest x̂),
    extreme gains and biases (output saturation), rows of length 1 and max_len."""
    max_len = 11
    cfg = LayerNormConfig(NX, lanes, max_len)
    rng = np.random.default_rng(lanes)
    lo, hi = FI.min_int, FI.max_int
    layers = []
    for n in (1, lanes, max_len):
        rows = [[0] * n, [hi] * n, [lo] * n, [7] * n,
                [hi] + [lo] * (n - 1), [lo] + [hi] * (n - 1),
                [hi if k % 2 else lo for k in range(n)],
                list(rng.integers(lo, hi + 1, n))]
        gamma = [FP.max_int] * n
        beta = [FP.min_int if k % 2 else FP.max_int for k in range(n)]
        layers.append((gamma, beta, 1e-6, rows))
        layers.append((list(rng.integers(FP.min_int, FP.max_int + 1, n)),
                       list(rng.integers(FP.min_int, FP.max_int + 1, n)), 1e-5, rows[4:]))
    check_layers(cfg, layers, seed=lanes, p_idle=0.2, p_stall=0.4, sim_args=sim_args)


def test_layernorm_real_length(sim_args):
    """The m3vit-tiny configuration (8 lanes, n = 192), then a reload to n = 100."""
    cfg = LayerNormConfig()
    assert (cfg.lanes, cfg.max_len) == (8, 192)
    rng = np.random.default_rng(3)
    n = 192
    rows = list(np.clip(np.rint(rng.normal(0.5, 3.0, (3, n)) * 512), FI.min_int, FI.max_int)
                .astype(np.int64))
    rows += [[FI.max_int] + [FI.min_int] * (n - 1), [FI.min_int] * n]
    gamma = list(np.clip(np.rint(rng.normal(1, 0.5, n) * 1024), FP.min_int, FP.max_int)
                 .astype(np.int64))
    beta = list(rng.integers(-2048, 2048, n))
    m = 100
    rows2 = list(rng.integers(FI.min_int, FI.max_int + 1, (2, m)))
    check_layers(cfg, [(gamma, beta, 1e-6, rows), (gamma[:m], beta[:m], 1e-6, rows2)],
                 seed=4, p_idle=0.1, p_stall=0.2, sim_args=sim_args)


def test_layernorm_latency_and_throughput(sim_args):
    cfg = LayerNormConfig(NX, 4, 32)
    gamma, beta = [1024] * 32, [0] * 32
    for n in (1, 5, 32):
        obs = {}
        dut = check_layers(cfg, [(gamma[:n], beta[:n], 1e-6, [list(range(n))])], p_idle=0.0,
                           p_stall=0.0, sim_args=sim_args, observe=obs)
        assert obs["first_out"][0] - obs["last_in"][0] == dut.latency
    n, n_rows = 32, 12
    obs = {}
    rows = [[(k * 37 + j * 11) % 200 - 100 for j in range(n)] for k in range(n_rows)]
    dut = check_layers(cfg, [(gamma, beta, 1e-6, rows)], p_idle=0.0, p_stall=0.0,
                       sim_args=sim_args, observe=obs)
    assert dut.row_period(n) == n // 4
    # One beat per cycle in and out: the last row's last beat leaves latency + G − 1 cycles after
    # it entered, and it entered n_rows·G − 1 cycles after the first beat.
    g = n // 4
    assert obs["cycles"] - obs["first_in"] == n_rows * g - 1 + dut.latency + g


def test_rsqrt_unit():
    cfg = LayerNormConfig(NX, 8, 1024)
    rng = random.Random(2)
    top = cfg.var_max
    vs = [1, 2, 3, 4, 5, 7, 8, 15, 16, (1 << 24) - 1, 1 << 24, (1 << 25) + 1, top, top - 1]
    vs += [(1 << b) + rng.randrange(1 << b) for b in range(top.bit_length() - 1)
           for _ in range(6)]
    vs += [rng.randrange(1, top + 1) for _ in range(200)]
    dut = Rsqrt(cfg)
    outs = []

    async def tb(ctx):
        for k in range(len(vs) + Rsqrt.LATENCY):
            if k < len(vs):
                ctx.set(dut.v, vs[k])
            await ctx.tick()
            if k + 1 >= Rsqrt.LATENCY:
                outs.append((ctx.get(dut.y1), ctx.get(dut.e)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    y1, e = qref.rsqrt(np.array(vs), NX)
    assert outs[:len(vs)] == list(zip(y1.tolist(), e.tolist()))


def test_layernorm_error_figures():
    """The twin's error against float LayerNorm (the bench prints these figures)."""
    cfg = LayerNormConfig()
    rng = np.random.default_rng(5)
    rows = np.clip(np.rint(rng.normal(0, 2, (64, 192)) * 512), FI.min_int, FI.max_int)
    gamma = np.full(192, 1024)
    beta = np.zeros(192, dtype=np.int64)
    xhat_err, lsb = layernorm_error(cfg, rows.astype(np.int64), gamma, beta, 1e-6)
    assert xhat_err < 2 ** -14
    assert lsb <= 1.0


def test_layernorm_config_errors():
    with pytest.raises(ValueError, match=r"lanes must be a positive integer, not 0"):
        LayerNormConfig(NX, 0)
    with pytest.raises(TypeError, match=r"lanes must be a positive integer, not '8'"):
        LayerNormConfig(NX, "8")
    with pytest.raises(ValueError, match=r"max_len must be a positive integer, not -1"):
        LayerNormConfig(NX, 8, -1)
    with pytest.raises(ValueError, match=r"above the supported maximum row length 4096"):
        LayerNormConfig(NX, 8, 5000)
    with pytest.raises(ValueError, match=r"in_fmt SQ\(12,12\) is 24 bits wide"):
        LayerNormConfig(NX, 8, 192, SQ(12, 12))
    with pytest.raises(ValueError, match=r"param_fmt UQ\(6,10\) must be a signed format"):
        LayerNormConfig(NX, 8, 192, param_fmt=UQ(6, 10))
    with pytest.raises(ValueError, match=r"eps_bits \(41\) must be at most 40"):
        LayerNormConfig(NX, 8, 192, eps_bits=41)
    with pytest.raises(ValueError, match=r"buffer_words \(3\) must hold a whole row"):
        LayerNormConfig(NX, 8, 192, buffer_words=3)
    with pytest.raises(TypeError, match=r"config must be a LayerNormConfig"):
        LayerNorm(NX)
    cfg = LayerNormConfig()
    with pytest.raises(ValueError, match=r"row length 193 is outside 1..max_len = 192"):
        cfg.check_row_len(193)
    with pytest.raises(ValueError, match=r"row length 193 is outside 1..max_len = 192"):
        param_beats(cfg, [0] * 193, [0] * 193, 1)
    with pytest.raises(ValueError, match=r"eps_int 16777216 is outside 1..16777215"):
        param_beats(cfg, [0] * 8, [0] * 8, 1 << 24)
    assert cfg.in_fmt == NX.act and cfg.param_fmt == NX.ln_param and cfg.out_fmt == NX.ln_out
    assert eps_int(cfg, 192, 1e-6) == 9664
