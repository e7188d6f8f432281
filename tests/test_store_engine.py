# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""The STORE engine (hdl.engines.StoreEngine): activation buffer → DDR through 1, 2 or 4 AXI
write managers at once, from a buffer model."""

import random

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hdl.engines import StoreEngine
from sim.axi_check import AXI4Checker
from sim.ddr import DDRModel
from sim.harness import run_sim

DW = 128
ADDR_BITS = 10
DST = 0x2F00             # DDR destination: pieces start at various offsets, bursts cross 4 KiB
SIZE = 1 << 16


def run_store(ports, lanes, words, *, abuf_addr, seed, latency=12, p_stall=0.0,
              bytes_per_cycle=None, sim_args, observe=None, slverr=None):
    wb = lanes * 16
    dut = StoreEngine(lanes=lanes, addr_bits=ADDR_BITS, addr_width=32, data_width=DW,
                      ports=ports, max_burst_beats=16, max_outstanding=4)
    rng = random.Random(seed)
    buf = [rng.getrandbits(wb) for _ in range(1 << ADDR_BITS)]
    # Every port sees the same memory in the PS; here each port has its own model, so each
    # starts with the same background and the results are merged by which port wrote what.
    background = bytes(rng.randrange(256) for _ in range(SIZE))
    ddrs, checkers = [], []
    for j in range(ports):
        bus = getattr(dut, f"bus{j}")
        ddr = DDRModel(bus, size=SIZE, latency=latency, jitter=4, seed=seed + j,
                       p_addr_stall=p_stall, bytes_per_cycle=bytes_per_cycle,
                       slverr_range=slverr)
        ddr.write(0, background)
        ddrs.append(ddr)
        checkers.append(AXI4Checker(bus, name=f"bus{j}"))
    state = {"cycles": 0, "error": 0}

    async def tb(ctx):
        ctx.set(dut.addr, DST)
        ctx.set(dut.abuf_addr, abuf_addr)
        ctx.set(dut.words, words)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 1
        # The buffer's read port: the word at the previous cycle's address.
        async for _, _, busy, r_addr, w_en in ctx.tick().sample(dut.busy, dut.ext.r_addr,
                                                                 dut.ext.w_en):
            assert not w_en, "a STORE never writes the buffer"
            ctx.set(dut.ext_rdata, buf[r_addr])
            if not busy:
                break
            cycles += 1
        state["cycles"] = cycles
        state["error"] = ctx.get(dut.error)

    run_sim(dut, [tb], background=[d.testbench for d in ddrs] + [c.testbench for c in checkers],
            deadline_cycles=20000, **sim_args)
    if observe is not None:
        observe.update(state)
    if slverr is not None:
        return ddrs, checkers
    assert not state["error"]

    # The words, little-endian, zero padded to whole bus words, at DST; each byte written by
    # exactly one port; no byte outside written at all.
    nbytes = -(-words * wb // DW) * DW // 8
    big = sum(buf[(abuf_addr + i) % (1 << ADDR_BITS)] << (i * wb) for i in range(words))
    want = big.to_bytes(nbytes, "little") if nbytes else b""
    written = {}
    for j, c in enumerate(checkers):
        for addr, beats in c.write_bursts:
            for a in range(addr, addr + beats * DW // 8):
                assert a not in written, f"byte {a:#x} written by ports {written[a]} and {j}"
                written[a] = j
    assert sorted(written) == list(range(DST, DST + nbytes))
    got = bytes(ddrs[written[a]].read(a, 1)[0] for a in range(DST, DST + nbytes))
    assert got == want
    for j, ddr in enumerate(ddrs):
        mine = [a for a, p in written.items() if p == j]
        lo, hi = (min(mine), max(mine) + 1) if mine else (DST, DST)
        assert ddr.read(0, lo) == background[:lo] and ddr.read(hi, SIZE - hi) == background[hi:]
    return ddrs, checkers


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ports=st.sampled_from([1, 2, 4]), lanes=st.sampled_from([4, 8, 32]),
       words=st.integers(1, 45), abuf_addr=st.integers(0, (1 << ADDR_BITS) - 1),
       p_stall=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 99),
       slow=st.sampled_from([False, False, True]))
@example(ports=4, lanes=4, words=3, abuf_addr=1022, p_stall=0.3, seed=1, slow=False)
@example(ports=4, lanes=32, words=13, abuf_addr=5, p_stall=0.0, seed=2, slow=False)
@example(ports=2, lanes=4, words=7, abuf_addr=0, p_stall=0.3, seed=3, slow=False)
@example(ports=4, lanes=8, words=30, abuf_addr=7, p_stall=0.0, seed=4, slow=True)
def test_store_random(ports, lanes, words, abuf_addr, p_stall, seed, slow, sim_args):
    """Random sizes (a buffer word of a half, one or four bus words; fewer words than pieces
    — the first two examples; an odd count of half-beat words, the last bus word zero padded
    — the third), addresses wrapping the buffer, DDR address stalls, a DDR slower than the
    buffer (the queues fill and the reads wait): every byte written once, by one port, and
    right, nothing else written, the AXI rules on every manager."""
    run_store(ports, lanes, words, abuf_addr=abuf_addr, seed=seed, p_stall=p_stall,
              bytes_per_cycle=4 if slow else None, sim_args=sim_args)


@pytest.mark.parametrize("ports", [1, 2, 4])
def test_store_throughput(ports, sim_args):
    """With 512-bit buffer words (four 128-bit bus words each), ``ports`` managers write a
    word every ``4 / ports`` cycles: four ports take about a quarter of one port's cycles."""
    obs = {}
    words, latency = 96, 12
    run_store(ports, 32, words, abuf_addr=0, seed=4, latency=latency, sim_args=sim_args,
              observe=obs)
    assert obs["cycles"] <= words * 4 // ports + 2 * latency + 40, obs


def test_store_error_ends(sim_args):
    """An SLVERR response on one piece sets ``error`` and the STORE still ends."""
    obs = {}
    run_store(4, 8, 40, abuf_addr=0, seed=5, sim_args=sim_args, observe=obs,
              slverr=(DST + 40 * 16 // 2, DST + 40 * 16 // 2 + 16))
    assert obs["error"]


def test_store_refuses():
    with pytest.raises(ValueError, match="ports"):
        StoreEngine(lanes=8, addr_bits=8, addr_width=32, data_width=DW, ports=3)


def test_store_empty(sim_args):
    """``words = 0`` reads nothing, writes nothing and ends."""
    run_store(2, 8, 0, abuf_addr=3, seed=0, sim_args=sim_args)
