# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""The LOAD engine (hdl.engines.LoadEngine): DDR → activation buffer through 1, 2 or 4 AXI
read managers at once, against a buffer model."""

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hdl.engines import LoadEngine
from sim.axi_check import AXI4Checker
from sim.ddr import DDRModel
from sim.harness import run_sim

DW = 128
ADDR_BITS = 10
SRC = 0x2F00             # DDR source: pieces start at various offsets, bursts cross 4 KiB


def run_load(ports, lanes, words, *, abuf_addr, seed, latency=12, p_stall=0.0, sim_args,
             observe=None, port_busy=0.0):
    wb = lanes * 16
    dut = LoadEngine(lanes=lanes, addr_bits=ADDR_BITS, addr_width=32, data_width=DW,
                     ports=ports, max_burst_beats=16, max_outstanding=4)
    rng = random.Random(seed)
    nbytes = -(-words * wb // DW) * DW // 8
    src = bytes(rng.randrange(256) for _ in range(nbytes + 64))
    ddrs, checkers = [], []
    for j in range(ports):
        bus = getattr(dut, f"bus{j}")
        ddr = DDRModel(bus, size=1 << 16, latency=latency, jitter=4, seed=seed + j,
                       p_addr_stall=p_stall)
        ddr.write(SRC, src)
        ddrs.append(ddr)
        checkers.append(AXI4Checker(bus, name=f"bus{j}"))
    writes = []
    state = {"cycles": 0}

    async def tb(ctx):
        ctx.set(dut.addr, SRC)
        ctx.set(dut.abuf_addr, abuf_addr)
        ctx.set(dut.words, words)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 1
        # With ``port_busy`` the buffer refuses random writes (ext_w_ok low): not done.
        prng = random.Random(seed + 99)
        async for _, _, busy, en, addr, data, ok in ctx.tick().sample(
                dut.busy, dut.ext.w_en, dut.ext.w_addr, dut.ext.w_data, dut.ext_w_ok):
            if en and ok:
                writes.append((addr, data))
            ctx.set(dut.ext_w_ok, int(prng.random() >= port_busy))
            if not busy:
                break
            cycles += 1
        state["cycles"] = cycles

    run_sim(dut, [tb], background=[d.testbench for d in ddrs] + [c.testbench for c in checkers],
            deadline_cycles=20000, **sim_args)

    # Every buffer word once, at its address, with its bytes; nothing else written.
    big = int.from_bytes(src, "little")
    want = {(abuf_addr + i) % (1 << ADDR_BITS): (big >> (i * wb)) & ((1 << wb) - 1)
            for i in range(words)}
    addrs = [a for a, _ in writes]
    assert len(addrs) == len(set(addrs)) == words, "a word written twice or missing"
    for a, d in writes:
        assert a in want and d == want[a], f"buffer word {a:#x}"
    # Every managers' bursts together read the source once.
    assert sum(n for c in checkers for _, n in c.read_bursts) * DW // 8 == nbytes
    if observe is not None:
        observe["cycles"] = state["cycles"]


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ports=st.sampled_from([1, 2, 4]), lanes=st.sampled_from([4, 8, 32]),
       words=st.integers(1, 45), abuf_addr=st.integers(0, (1 << ADDR_BITS) - 1),
       p_stall=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 99),
       port_busy=st.sampled_from([0.0, 0.0, 0.5]))
@example(ports=4, lanes=4, words=3, abuf_addr=1022, p_stall=0.3, seed=1, port_busy=0.0)
@example(ports=4, lanes=32, words=13, abuf_addr=5, p_stall=0.0, seed=2, port_busy=0.0)
@example(ports=2, lanes=4, words=7, abuf_addr=0, p_stall=0.3, seed=3, port_busy=0.0)
@example(ports=4, lanes=8, words=30, abuf_addr=7, p_stall=0.0, seed=4, port_busy=0.5)
def test_load_random(ports, lanes, words, abuf_addr, p_stall, seed, port_busy, sim_args):
    """Random sizes (a buffer word of a half, one or four bus words; fewer words than pieces
    — the first two examples; an odd count of half-beat words — the third), addresses wrapping
    the buffer, DDR stalls, a buffer port that refuses random writes: every word written once
    and right, the AXI rules on every manager, every source byte read once."""
    run_load(ports, lanes, words, abuf_addr=abuf_addr, seed=seed, p_stall=p_stall,
             sim_args=sim_args, port_busy=port_busy)


@pytest.mark.parametrize("ports", [1, 2, 4])
def test_load_throughput(ports, sim_args):
    """With 512-bit buffer words (four 128-bit bus words each), ``ports`` managers bring a
    word every ``4 / ports`` cycles: four ports take about a quarter of one port's cycles."""
    obs = {}
    words, latency = 96, 12
    run_load(ports, 32, words, abuf_addr=0, seed=4, latency=latency, sim_args=sim_args,
             observe=obs)
    assert obs["cycles"] <= words * 4 // ports + latency + 24, obs


def test_load_refuses():
    with pytest.raises(ValueError, match="ports"):
        LoadEngine(lanes=8, addr_bits=8, addr_width=32, data_width=DW, ports=3)


def test_load_empty(sim_args):
    """``words = 0`` reads nothing, writes nothing and ends."""
    run_load(2, 8, 0, abuf_addr=3, seed=0, sim_args=sim_args)
