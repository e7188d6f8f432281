# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/stream_util.py and of the simulation helpers in sim/harness.py and
sim/streams.py."""

import random
from functools import partial

import pytest
from amaranth.hdl import ClockDomain, Module, Signal, unsigned
from amaranth.lib import data, stream
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hdl.stream_util import Queue
from sim.harness import SimulationDeadline, run_sim
from sim.streams import check_stream_rules, get, get_n, put, put_all

PAIR = data.StructLayout({"a": unsigned(8), "b": unsigned(4)})


def _bare_module():
    """A design with nothing but a ``sync`` domain, for testbench-only simulations."""
    m = Module()
    m.domains.sync = ClockDomain()
    return m


def _run_queue(dut, payloads, *, seed, p_idle, p_stall, sim_args):
    result = {}
    max_level = []

    async def producer(ctx):
        await put_all(ctx, dut.i, payloads, rng=random.Random(seed), p_idle=p_idle)

    async def consumer(ctx):
        result["out"] = await get_n(ctx, dut.o, len(payloads), rng=random.Random(seed + 1),
                                    p_stall=p_stall)

    async def level_monitor(ctx):
        max_level.clear()
        async for _, _, level in ctx.tick().sample(dut.level):
            max_level.append(level)

    run_sim(dut, [producer, consumer],
            background=[partial(check_stream_rules, stream=dut.i, name="i"),
                        partial(check_stream_rules, stream=dut.o, name="o"), level_monitor],
            deadline_cycles=50 * (len(payloads) + 4), **sim_args)
    assert max(max_level) <= dut.depth
    return result["out"]


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(1, 6), buffered=st.booleans(),
       payloads=st.lists(st.integers(0, 255), min_size=1, max_size=40),
       p_idle=st.sampled_from([0.0, 0.3, 0.7]), p_stall=st.sampled_from([0.0, 0.3, 0.7]),
       seed=st.integers(0, 1000))
@example(depth=2, buffered=True, payloads=list(range(30)), p_idle=0.0, p_stall=0.0, seed=0)
def test_queue_random_traffic(depth, buffered, payloads, p_idle, p_stall, seed, sim_args):
    dut = Queue(8, depth, buffered=buffered)
    out = _run_queue(dut, payloads, seed=seed, p_idle=p_idle, p_stall=p_stall, sim_args=sim_args)
    assert out == payloads


@pytest.mark.parametrize("buffered", [False, True])
def test_queue_struct_payload(buffered, sim_args):
    dut = Queue(PAIR, 3, buffered=buffered)
    payloads = [{"a": i * 7 % 256, "b": i % 16} for i in range(25)]
    out = _run_queue(dut, payloads, seed=5, p_idle=0.4, p_stall=0.4, sim_args=sim_args)
    assert [{"a": p.a, "b": p.b} for p in out] == payloads


@pytest.mark.parametrize("buffered, latency", [(False, 1), (True, 2)])
def test_queue_fill_level_latency(buffered, latency, sim_args):
    depth = 4
    dut = Queue(8, depth, buffered=buffered)

    async def tb(ctx):
        ctx.set(dut.i.payload, 0xA5)
        ctx.set(dut.i.valid, 1)
        for _ in range(latency):
            assert not ctx.get(dut.o.valid)
            await ctx.tick()
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0xA5
        await ctx.tick().until(dut.level == depth)    # keep writing; o.ready stays low
        assert not ctx.get(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        assert (await get(ctx, dut.o)) == 0xA5
        assert ctx.get(dut.level) == depth - 1

    run_sim(dut, [tb], deadline_cycles=100, **sim_args)


def test_queue_properties():
    dut = Queue(PAIR, 5, buffered=False)
    assert (dut.shape, dut.depth, dut.buffered) == (PAIR, 5, False)
    assert dut.i.signature == stream.Signature(PAIR).flip()
    assert dut.o.signature == stream.Signature(PAIR)
    assert len(dut.level) == 3


@pytest.mark.parametrize("args, kwargs, exc, msg", [
    ((8, 0), {}, ValueError, r"depth must be a positive integer, not 0"),
    ((8, -3), {}, ValueError, r"depth must be a positive integer, not -3"),
    ((8, 2.0), {}, TypeError, r"depth must be a positive integer, not 2\.0"),
    ((8, True), {}, TypeError, r"depth must be a positive integer, not True"),
    (("x", 4), {}, TypeError, r"shape must be a shape-like object, not 'x'"),
    ((8, 4), {"buffered": 1}, TypeError, r"buffered must be a bool, not 1"),
])
def test_queue_validation(args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        Queue(*args, **kwargs)


def test_check_stream_rules_catches_payload_change():
    dut = Queue(8, 1)

    async def bad_producer(ctx):
        await put(ctx, dut.i, 1)                     # fills the queue; nobody reads
        ctx.set(dut.i.payload, 2)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.payload, 3)                    # changes while valid & ~ready
        for _ in range(3):
            await ctx.tick()

    with pytest.raises(AssertionError, match=r"^i: payload changed from 0x2 to 0x3 in cycle 2 "):
        run_sim(dut, [bad_producer],
                background=[partial(check_stream_rules, stream=dut.i, name="i")])


def test_check_stream_rules_catches_dropped_valid():
    dut = Queue(8, 1)

    async def bad_producer(ctx):
        await put(ctx, dut.i, 1)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)                      # withdraws before the transfer
        for _ in range(3):
            await ctx.tick()

    with pytest.raises(AssertionError, match=r"^i: valid dropped in cycle 2 "):
        run_sim(dut, [bad_producer],
                background=[partial(check_stream_rules, stream=dut.i, name="i")])


def test_run_sim_deadline():
    async def waits_forever(ctx):
        while True:
            await ctx.tick()

    with pytest.raises(SimulationDeadline, match=r"still running after 50 clock cycles"):
        run_sim(_bare_module(), [waits_forever], deadline_cycles=50)


def test_run_sim_vcd_only_on_failure(tmp_path):
    counter = Signal(4)
    m = _bare_module()
    m.d.sync += counter.eq(counter + 1)

    async def passes(ctx):
        await ctx.tick().repeat(5)

    async def fails(ctx):
        await ctx.tick().repeat(5)
        raise AssertionError("boom")

    run_sim(m, [passes], vcd_path=tmp_path / "pass.vcd")
    assert not (tmp_path / "pass.vcd").exists()
    run_sim(m, [passes], vcd_path=tmp_path / "always" / "pass.vcd", always_vcd=True)
    assert (tmp_path / "always" / "pass.vcd").stat().st_size > 0
    with pytest.raises(AssertionError, match="boom"):
        run_sim(m, [fails], vcd_path=tmp_path / "fail.vcd")
    assert "counter" in (tmp_path / "fail.vcd").read_text()
