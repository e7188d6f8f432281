# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""The streaming GELU against :func:`golden.qref.gelu`, bit for bit."""

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
from hdl.nonlin.config import GeluConfig
from hdl.nonlin.gelu import Gelu, GeluPipeline
from sim.bench.gelu import gelu_error, simulate_gelu

NX = DEFAULT_NUMERICS


def _beats(values, lanes):
    values = list(values)
    pad = (-len(values)) % lanes
    values = values + [0] * pad
    return [values[k:k + lanes] for k in range(0, len(values), lanes)], len(values) - pad


def _check(cfg, values, *, seed=0, p_idle=0.3, p_stall=0.3, sim_args=None):
    dut = Gelu(cfg)
    beats, n = _beats(values, cfg.lanes)
    out = simulate_gelu(dut, beats, seed=seed, p_idle=p_idle, p_stall=p_stall, **(sim_args or {}))
    got = np.array(out, dtype=np.int64).ravel()[:n]
    want = qref.gelu(np.array(values, dtype=np.int64), cfg.fmt, cfg.numerics)
    bad = np.nonzero(got != want)[0]
    assert not bad.size, (f"{bad.size} mismatches, first at x={values[bad[0]]}: "
                          f"hw {got[bad[0]]}, twin {want[bad[0]]}")


FORMATS = [NX.hidden, SQ(4, 8), SQ(3, 6), SQ(8, 12)]


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), lanes=st.integers(1, 4), fmt=st.sampled_from(FORMATS),
       p=st.sampled_from([0.0, 0.4]), seed=st.integers(0, 99))
@example(data=None, lanes=3, fmt=NX.hidden, p=0.4, seed=1)
def test_gelu_random(data, lanes, fmt, p, seed, sim_args):
    if data is None:
        values = [fmt.min_int, fmt.max_int, 0, -1, 1] * 3
    else:
        values = data.draw(st.lists(st.integers(fmt.min_int, fmt.max_int), min_size=1,
                                    max_size=60))
    _check(GeluConfig(NX, fmt, lanes), values, seed=seed, p_idle=p, p_stall=p, sim_args=sim_args)


def test_gelu_edges(sim_args):
    """Every segment boundary ±1 LSB, the table range ±8, and the format limits."""
    fmt = NX.hidden
    r = fmt.f_bits - NX.gelu_step_bits
    step = 1 << r
    pos = [k * step + d for k in range(NX.gelu_range << NX.gelu_step_bits | 1) for d in (-1, 0, 1)]
    pos += [fmt.max_int, fmt.max_int - 1, (NX.gelu_range << fmt.f_bits) + 1]
    values = sorted({v for x in pos for v in (x, -x) if fmt.min_int <= v <= fmt.max_int})
    values += [fmt.min_int, fmt.min_int + 1]
    _check(GeluConfig(NX, fmt, 8), values, seed=3, p_idle=0.2, p_stall=0.2, sim_args=sim_args)


def test_gelu_exhaustive_small_format(sim_args):
    """Every value of SQ(4, 8): 4096 inputs, including the ±8 cut-off and both limits."""
    fmt = SQ(4, 8)
    values = list(range(fmt.min_int, fmt.max_int + 1))
    _check(GeluConfig(NX, fmt, 8), values, seed=4, p_idle=0.1, p_stall=0.1, sim_args=sim_args)


def test_gelu_exhaustive_default(sim_args):
    """Every value of the default format (hidden, SQ(5,11)) through the default 16 lanes."""
    fmt = NX.hidden
    cfg = GeluConfig()
    assert cfg.fmt == fmt and cfg.lanes == 16
    values = list(range(fmt.min_int, fmt.max_int + 1))
    _check(cfg, values, seed=5, p_idle=0.05, p_stall=0.05, sim_args=sim_args)


def test_gelu_error_bound():
    """The twin's error against the exact GELU, as reported by the bench (README figures)."""
    unrounded, lsb = gelu_error(NX.hidden)
    assert unrounded < 2 ** -15
    assert lsb <= 0.55


def test_gelu_latency_and_throughput(sim_args):
    cfg = GeluConfig(NX, NX.hidden, 2)
    dut = Gelu(cfg)
    obs = {}
    beats = [[i, -i] for i in range(40)]
    out = simulate_gelu(dut, beats, observe=obs, **sim_args)
    assert out == [list(qref.gelu(np.array(b), cfg.fmt)) for b in beats]
    assert obs["first_out"] - obs["first_in"] == dut.latency
    # One beat per cycle: the last result leaves latency cycles after the last input.
    assert obs["cycles"] - obs["first_in"] == len(beats) + dut.latency
    assert dut.throughput == 2


def test_gelu_signature():
    dut = Gelu(GeluConfig(NX, NX.hidden, 4))
    layout = dut.i.payload.shape()
    assert layout == dut.o.payload.shape()
    assert layout.length == 4 and layout.elem_shape.width == 16
    assert dut.latency == GeluPipeline.LATENCY + Gelu.QUEUE_LATENCY


def test_gelu_pipeline_always_valid():
    """The bare datapath (for the compute unit's epilogue): one vector per cycle, results and
    their valid bit exactly LATENCY cycles later."""
    cfg = GeluConfig(NX, NX.hidden, 3)
    dut = GeluPipeline(cfg)
    rng = random.Random(6)
    vecs = [[rng.randrange(cfg.fmt.min_int, cfg.fmt.max_int + 1) for _ in range(3)]
            for _ in range(50)]
    valids = [rng.random() < 0.7 for _ in vecs]
    seen = []

    async def tb(ctx):
        for k in range(len(vecs) + dut.latency):
            if k < len(vecs):
                ctx.set(dut.i, vecs[k])
                ctx.set(dut.i_valid, valids[k])
            else:
                ctx.set(dut.i_valid, 0)
            await ctx.tick()
            if k + 1 >= dut.latency:
                seen.append((ctx.get(dut.o_valid), [int(v) for v in ctx.get(dut.o)]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    for k, (valid, out) in enumerate(seen[:len(vecs)]):
        assert valid == valids[k]
        assert out == list(qref.gelu(np.array(vecs[k]), cfg.fmt))


def test_gelu_config_errors():
    with pytest.raises(ValueError, match=r"lanes must be a positive integer, not 0"):
        GeluConfig(NX, NX.hidden, 0)
    with pytest.raises(TypeError, match=r"lanes must be a positive integer, not 2.0"):
        GeluConfig(NX, NX.hidden, 2.0)
    with pytest.raises(ValueError, match=r"coarser than the table step"):
        GeluConfig(NX, SQ(8, 4), 4)
    with pytest.raises(ValueError, match=r"must be a signed format"):
        GeluConfig(NX, UQ(4, 8), 4)
    with pytest.raises(TypeError, match=r"fmt must be a QFormat"):
        GeluConfig(NX, 16, 4)
    with pytest.raises(TypeError, match=r"numerics must be a golden.numerics.Numerics"):
        GeluConfig(None, NX.hidden, 4)
    with pytest.raises(TypeError, match=r"config must be a GeluConfig"):
        Gelu(NX)
    assert GeluConfig().fmt == NX.hidden
    assert GeluConfig(replace(NX, gelu_step_bits=5)).interp_bits == 6
