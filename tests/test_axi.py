# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/axi.py and hdl/axi_master.py, and of the models in sim/ddr.py and
sim/axi_check.py that they are tested with."""

import random
from functools import partial

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import ClockDomain, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.axi import AXI4LiteSignature, AXI4Signature, Burst
from hdl.axi_master import AXI4ReadMaster, AXI4WriteMaster, cmd_layout, read_data_layout
from sim.axi_check import AXI4Checker
from sim.ddr import DDRAccessError, DDRModel
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n, put, put_all

MEM_SIZE = 1 << 16


# -- reference models ------------------------------------------------------------------------

def split_bursts(addr, beats, nbytes, max_burst_beats):
    """Split a command as the AXI4 rules and the masters' documentation say: (addr, beats)."""
    out = []
    while beats:
        n = min(beats, max_burst_beats, (4096 - addr % 4096) // nbytes)
        out.append((addr, n))
        addr += n * nbytes
        beats -= n
    return out


def make_commands(seed, nbytes, max_burst_beats, max_outstanding):
    """Commands covering the interesting cases, inside a MEM_SIZE memory, in random order."""
    rng = random.Random(seed)
    words = MEM_SIZE // nbytes

    def anywhere(beats):
        return rng.randrange(words - beats + 1) * nbytes

    page = rng.randrange(1, MEM_SIZE // 4096)
    long_beats = max_burst_beats * max_outstanding + rng.randint(1, max_burst_beats)
    cmds = [
        (page * 4096 - 2 * nbytes, 2 + rng.randint(1, 6)),          # crosses a 4 KiB boundary
        (page * 4096 - nbytes, 1),                                  # single beat, end of page
        (anywhere(1), 1),                                           # single beat
        (anywhere(long_beats), long_beats),                         # > burst x outstanding
        (anywhere(max_burst_beats), max_burst_beats),
    ]
    cmds += [(anywhere(4), rng.randint(1, 4)) for _ in range(10)]   # many short, back to back
    rng.shuffle(cmds)
    return cmds


def _bare_bus(data_width=128):
    """A design holding only a ``sync`` domain, and a free-standing AXI4 interface."""
    m = Module()
    m.domains.sync = ClockDomain()
    bus = AXI4Signature(addr_width=32, data_width=data_width, id_width=2).create(path=("bus",))
    return m, bus


async def _count_pulses(ctx, signal, count, *, then=None):
    """Return after ``count`` cycles with ``signal`` high, then run the ``then`` check."""
    seen = 0
    async for _, _, value in ctx.tick().sample(signal):
        seen += value
        if seen == count:
            break
    if then is not None:
        then(ctx)


# -- signatures ------------------------------------------------------------------------------

def test_axi4_signature_members():
    sig = AXI4Signature(addr_width=40, data_width=128, id_width=6)
    members = sig.members
    assert members["araddr"] == Out(40) and members["awaddr"] == Out(40)
    assert members["arlen"] == Out(8) and members["arsize"] == Out(3)
    assert members["arburst"] == Out(2) and members["arid"] == Out(6)
    assert members["arcache"] == Out(4) and members["arprot"] == Out(3)
    assert members["arready"] == In(1) and members["awready"] == In(1)
    assert members["wdata"] == Out(128) and members["wstrb"] == Out(16)
    assert members["wlast"] == Out(1) and members["wready"] == In(1)
    assert members["rdata"] == In(128) and members["rresp"] == In(2)
    assert members["rid"] == In(6) and members["rlast"] == In(1) and members["rready"] == Out(1)
    assert members["bresp"] == In(2) and members["bid"] == In(6) and members["bready"] == Out(1)
    assert len(members) == 2 * 9 + 5 + 4 + 6
    assert (sig.bytes_per_beat, sig.size) == (16, 4)
    assert (sig.addr_width, sig.data_width, sig.id_width) == (40, 128, 6)


def test_axi4_signature_eq_repr():
    sig = AXI4Signature(addr_width=32, data_width=64, id_width=1)
    assert sig == AXI4Signature(addr_width=32, data_width=64, id_width=1)
    assert sig != AXI4Signature(addr_width=32, data_width=64, id_width=2)
    assert sig != AXI4Signature(addr_width=33, data_width=64, id_width=1)
    assert sig != AXI4Signature(addr_width=32, data_width=128, id_width=1)
    assert sig.flip() != sig and sig.flip().flip() == sig
    assert repr(sig) == "AXI4Signature(addr_width=32, data_width=64, id_width=1)"
    lite = AXI4LiteSignature(addr_width=12, data_width=32)
    assert lite == AXI4LiteSignature(addr_width=12, data_width=32)
    assert lite != AXI4LiteSignature(addr_width=12, data_width=64)
    assert repr(lite) == "AXI4LiteSignature(addr_width=12, data_width=32)"


def test_axi4_signature_connects_manager_to_subordinate():
    sig = AXI4Signature(addr_width=32, data_width=128, id_width=1)
    master = AXI4ReadMaster()
    subordinate = wiring.Signature({"bus": In(sig)}).create()
    m = Module()
    wiring.connect(m, master=master.bus, subordinate=subordinate.bus)


def test_axi4_lite_signature_members():
    sig = AXI4LiteSignature(addr_width=16, data_width=64)
    members = sig.members
    assert members["awaddr"] == Out(16) and members["awprot"] == Out(3)
    assert members["wstrb"] == Out(8) and members["rdata"] == In(64)
    assert members["bresp"] == In(2) and members["rready"] == Out(1)
    assert "arlen" not in members and "wlast" not in members
    assert len(members) == 19


@pytest.mark.parametrize("cls, kwargs, exc, msg", [
    (AXI4Signature, dict(addr_width=11, data_width=32, id_width=1), ValueError,
     r"addr_width must be an integer in the range 12\.\.64, not 11"),
    (AXI4Signature, dict(addr_width="32", data_width=32, id_width=1), TypeError,
     r"addr_width must be an integer in the range 12\.\.64, not '32'"),
    (AXI4Signature, dict(addr_width=32, data_width=16, id_width=1), ValueError,
     r"data_width must be one of 32, 64, 128, 256, 512, 1024, not 16"),
    (AXI4Signature, dict(addr_width=32, data_width=96, id_width=1), ValueError,
     r"data_width must be one of .*, not 96"),
    (AXI4Signature, dict(addr_width=32, data_width=2048, id_width=1), ValueError,
     r"data_width must be one of .*, not 2048"),
    (AXI4Signature, dict(addr_width=32, data_width=64.0, id_width=1), TypeError,
     r"data_width must be an integer, not 64\.0"),
    (AXI4Signature, dict(addr_width=32, data_width=64, id_width=0), ValueError,
     r"id_width must be an integer in the range 1\.\.32, not 0"),
    (AXI4LiteSignature, dict(addr_width=0, data_width=32), ValueError,
     r"addr_width must be an integer in the range 1\.\.64, not 0"),
    (AXI4LiteSignature, dict(addr_width=12, data_width=128), ValueError,
     r"data_width must be 32 or 64, not 128"),
])
def test_signature_validation(cls, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        cls(**kwargs)


# -- master construction -------------------------------------------------------------------

def test_master_ports_and_properties():
    rd = AXI4ReadMaster(addr_width=40, data_width=64, id_width=3, max_burst_beats=32,
                        max_outstanding=3)
    assert (rd.addr_width, rd.data_width, rd.id_width) == (40, 64, 3)
    assert (rd.max_burst_beats, rd.max_outstanding, rd.fifo_depth) == (32, 3, 96)
    assert rd.bus.signature == AXI4Signature(addr_width=40, data_width=64, id_width=3)
    assert rd.cmd.signature.members["payload"].shape == cmd_layout(40, 64)
    assert rd.data.signature.members["payload"].shape == read_data_layout(64)
    assert len(rd.cmd.payload.beats) == 40 - 3 + 1
    assert (rd.cmd_to_ar_cycles, rd.r_to_data_cycles) == (3, 2)
    wr = AXI4WriteMaster(data_width=256, max_burst_beats=8, fifo_depth=24)
    assert (wr.data_width, wr.max_burst_beats, wr.max_outstanding, wr.fifo_depth) == \
        (256, 8, 4, 24)
    assert AXI4WriteMaster(max_burst_beats=8).fifo_depth == 16
    assert wr.data.signature.members["payload"].shape == 256
    assert wr.cmd_to_aw_cycles == 3


@pytest.mark.parametrize("cls", [AXI4ReadMaster, AXI4WriteMaster])
@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(max_burst_beats=0), ValueError, r"max_burst_beats must be a positive integer, not 0"),
    (dict(max_burst_beats=2.5), TypeError,
     r"max_burst_beats must be a positive integer, not 2\.5"),
    (dict(max_burst_beats=257, data_width=32), ValueError,
     r"max_burst_beats must be at most 256 .*not 257"),
    (dict(max_burst_beats=64, data_width=1024), ValueError,
     r"max_burst_beats must be at most 32 \(256 beats and one 4 KiB page of 128-byte beats\), "
     r"not 64"),
    (dict(max_outstanding=0), ValueError, r"max_outstanding must be a positive integer, not 0"),
    (dict(max_outstanding="4"), TypeError,
     r"max_outstanding must be a positive integer, not '4'"),
    (dict(max_burst_beats=16, fifo_depth=8), ValueError,
     r"fifo_depth must be at least max_burst_beats \(16\), not 8"),
    (dict(data_width=100), ValueError, r"data_width must be one of .*, not 100"),
    (dict(addr_width=8), ValueError, r"addr_width must be an integer in the range 12\.\.64"),
])
def test_master_validation(cls, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        cls(**kwargs)


def test_masters_convert_to_verilog():
    for dut in (AXI4ReadMaster(), AXI4WriteMaster(data_width=64, max_burst_beats=256)):
        text = verilog.convert(dut, name="top", emit_src=False)
        for port in ("bus__araddr", "bus__rready", "bus__awlen", "bus__wstrb", "bus__bready",
                     "cmd__payload", "data__valid", "busy", "error"):
            assert f" {port};" in text, port


# -- read master -----------------------------------------------------------------------------

CONFIGS = [
    # master parameters, DDR model parameters, p_idle on cmd / data in, p_stall on data out
    pytest.param(dict(data_width=128, max_burst_beats=16, max_outstanding=4),
                 dict(latency=20, jitter=8), 0.3, 0.3, id="w128"),
    pytest.param(dict(data_width=64, max_burst_beats=8, max_outstanding=2, fifo_depth=8),
                 dict(latency=5, jitter=3, bytes_per_cycle=5, p_addr_stall=0.3,
                      max_outstanding=2), 0.5, 0.6, id="w64-tight"),
    pytest.param(dict(data_width=32, max_burst_beats=256, max_outstanding=2, fifo_depth=300),
                 dict(latency=3, bytes_per_cycle=4), 0.0, 0.0, id="w32-256beats"),
    pytest.param(dict(data_width=256, max_burst_beats=5, max_outstanding=1, id_width=3),
                 dict(latency=1, jitter=2, bytes_per_cycle=48), 0.2, 0.1, id="w256-odd"),
    pytest.param(dict(data_width=512, max_burst_beats=64, max_outstanding=2),   # a whole page
                 dict(latency=6, jitter=2, max_outstanding=1), 0.2, 0.2, id="w512-page"),
]


def _read_test(dut, ddr, cmds, *, p_idle, p_stall, seed, sim_args, after=None, monitors=()):
    """Run ``cmds`` through a read master; return the words and the checker."""
    checker = AXI4Checker(dut.bus, name="m_axi")
    total = sum(beats for _, beats in cmds)
    result = {}

    async def producer(ctx):
        await put_all(ctx, dut.cmd, [{"addr": a, "beats": n} for a, n in cmds],
                      rng=random.Random(seed), p_idle=p_idle)

    async def consumer(ctx):
        words = await get_n(ctx, dut.data, total, rng=random.Random(seed + 1), p_stall=p_stall)
        result["words"] = [(w.data, w.last) for w in words]
        if after is not None:
            after(ctx)

    run_sim(dut, [producer, consumer],
            background=[ddr.testbench, checker.testbench,
                        partial(check_stream_rules, stream=dut.cmd, name="cmd"),
                        partial(check_stream_rules, stream=dut.data, name="data"), *monitors],
            deadline_cycles=40 * total + 500, **sim_args)
    return result["words"], checker


def _expected_reads(ddr, cmds):
    out = []
    for addr, beats in cmds:
        out += [(w, int(i == beats - 1)) for i, w in enumerate(ddr.read_words(addr, beats))]
    return out


def _expected_bursts(cmds, dut):
    return [burst for addr, beats in cmds
            for burst in split_bursts(addr, beats, dut.data_width // 8, dut.max_burst_beats)]


def _assert_idle_and_clean(dut):
    def check(ctx):
        assert not ctx.get(dut.busy) and not ctx.get(dut.error)
    return check


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params, ddr_params, p_idle, p_stall", CONFIGS)
def test_read_master_random(params, ddr_params, p_idle, p_stall, seed, sim_args):
    dut = AXI4ReadMaster(**params)
    nbytes = dut.data_width // 8
    ddr = DDRModel(dut.bus, size=MEM_SIZE, seed=seed, **ddr_params)
    ddr.array[:] = np.frombuffer(random.Random(seed).randbytes(MEM_SIZE), np.uint8)
    cmds = make_commands(seed, nbytes, dut.max_burst_beats, dut.max_outstanding)
    words, checker = _read_test(dut, ddr, cmds, p_idle=p_idle, p_stall=p_stall, seed=seed,
                                sim_args=sim_args, after=_assert_idle_and_clean(dut))
    assert words == _expected_reads(ddr, cmds)
    assert checker.read_bursts == _expected_bursts(cmds, dut)
    assert checker.max_reads_in_flight <= dut.max_outstanding
    assert checker.write_bursts == []
    assert ddr.stats.read_bytes == sum(beats for _, beats in cmds) * nbytes


@pytest.mark.parametrize("p_stall", [0.0, 0.7])
def test_read_master_rready_and_throughput(p_stall, sim_args):
    """Credits keep rready high while the consumer stalls; without stalls, one beat a cycle."""
    beats, latency = 256, 20
    dut = AXI4ReadMaster(max_burst_beats=16, max_outstanding=4)
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=latency)
    seen = {}

    async def rready_monitor(ctx):
        seen["rready_low"] = 0
        async for _, _, rvalid, rready in ctx.tick().sample(dut.bus.rvalid, dut.bus.rready):
            seen["rready_low"] += rvalid and not rready

    words, _ = _read_test(dut, ddr, [(0x100, beats)], p_idle=0.0, p_stall=p_stall, seed=3,
                          sim_args=sim_args, monitors=[rready_monitor])
    assert words == _expected_reads(ddr, [(0x100, beats)])
    assert seen["rready_low"] == 0
    if p_stall == 0.0:
        assert ddr.stats.cycles <= beats + latency + 10


def test_read_master_latency(sim_args):
    latency = 4
    dut = AXI4ReadMaster()
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=latency)
    events = {}

    async def monitor(ctx):
        cycle = 0
        async for _, _, cmd, ar, r, data in ctx.tick().sample(
                dut.cmd.valid & dut.cmd.ready, dut.bus.arvalid,
                dut.bus.rvalid & dut.bus.rready, dut.data.valid):
            for name, hit in (("cmd", cmd), ("ar", ar), ("r", r), ("data", data)):
                if hit:
                    events.setdefault(name, cycle)
            cycle += 1

    _read_test(dut, ddr, [(0x40, 1)], p_idle=0.0, p_stall=0.0, seed=0, sim_args=sim_args,
               monitors=[monitor])
    assert events["ar"] - events["cmd"] == dut.cmd_to_ar_cycles
    assert events["r"] - events["ar"] == latency      # AR accepted at once: DDR latency
    assert events["data"] - events["r"] == dut.r_to_data_cycles


def test_read_master_rejects_bad_commands(sim_args):
    """Unaligned, empty and address-space-overflowing commands are dropped with `error`."""
    dut = AXI4ReadMaster(data_width=64)
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=3)
    ddr.array[:] = np.arange(MEM_SIZE, dtype=np.uint8)
    checker = AXI4Checker(dut.bus)
    good = [(0x0, 3), (0x1000, 2), (0xff8, 2)]
    bad = [(0x104, 2), (0x200, 0), (0xffff_fff8, 2)]
    got = []

    async def tb(ctx):
        for (addr, beats), (bad_addr, bad_beats) in zip(good, bad):
            await put(ctx, dut.cmd, {"addr": addr, "beats": beats})
            got.extend((w.data, w.last) for w in await get_n(ctx, dut.data, beats))
            assert ctx.get(dut.error) == (addr != 0x0)
            await put(ctx, dut.cmd, {"addr": bad_addr, "beats": bad_beats})
            await ctx.tick()
            assert ctx.get(dut.error) and not ctx.get(dut.busy)

    run_sim(dut, [tb], background=[ddr.testbench, checker.testbench],
            deadline_cycles=2000, **sim_args)
    assert got == _expected_reads(ddr, good)
    assert checker.read_bursts == [(0x0, 3), (0x1000, 2), (0xff8, 1), (0x1000, 1)]


def test_read_master_slverr(sim_args):
    dut = AXI4ReadMaster()
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=3, slverr_range=(0x2000, 0x2010))
    ddr.array[:] = 0xAB
    cmds = [(0x1000, 2), (0x2000, 2), (0x3000, 1)]
    errors = []

    def record_error(ctx):
        errors.append(ctx.get(dut.error))

    words, _ = _read_test(dut, ddr, cmds, p_idle=0.0, p_stall=0.0, seed=0, sim_args=sim_args,
                          after=record_error)
    ones = int.from_bytes(b"\xab" * 16, "little")
    assert words == [(ones, 0), (ones, 1), (0, 0), (0, 1), (ones, 1)]
    assert errors == [1]


def test_read_master_out_of_range_fails_loudly():
    dut = AXI4ReadMaster()
    ddr = DDRModel(dut.bus, size=MEM_SIZE, base=0x1000_0000)
    with pytest.raises(DDRAccessError, match=r"read burst at 0x10010000: access of 32 bytes at "
                                             r"0x10010000 is outside the memory "
                                             r"\[0x10000000, 0x10010000\)"):
        _read_test(dut, ddr, [(0x1000_fff0, 3)], p_idle=0.0, p_stall=0.0, seed=0, sim_args={})


# -- write master ----------------------------------------------------------------------------

def _write_test(dut, ddr, cmds, words, *, p_idle, seed, sim_args, n_done=None, after=None,
                monitors=()):
    """Write ``words`` by ``cmds``; wait for ``n_done`` done pulses; return the checker."""
    checker = AXI4Checker(dut.bus, name="m_axi")

    async def cmd_producer(ctx):
        await put_all(ctx, dut.cmd, [{"addr": a, "beats": n} for a, n in cmds],
                      rng=random.Random(seed), p_idle=p_idle)

    async def data_producer(ctx):
        await put_all(ctx, dut.data, words, rng=random.Random(seed + 1), p_idle=p_idle)

    run_sim(dut, [cmd_producer, data_producer,
                  partial(_count_pulses, signal=dut.done,
                          count=len(cmds) if n_done is None else n_done, then=after)],
            background=[ddr.testbench, checker.testbench,
                        partial(check_stream_rules, stream=dut.cmd, name="cmd"),
                        partial(check_stream_rules, stream=dut.data, name="data"), *monitors],
            deadline_cycles=40 * len(words) + 500, **sim_args)
    return checker


def _w_gap_monitor(bus, seen):
    """Count cycles inside a W burst (after its first beat, before wlast) with wvalid low."""
    async def monitor(ctx):
        seen["gaps"] = 0
        inside = False
        async for _, _, wvalid, wready, wlast in ctx.tick().sample(bus.wvalid, bus.wready,
                                                                   bus.wlast):
            seen["gaps"] += inside and not wvalid
            if wvalid and wready:
                inside = not wlast
    return monitor


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params, ddr_params, p_idle, _", CONFIGS)
def test_write_master_random(params, ddr_params, p_idle, _, seed, sim_args):
    params = {k: v for k, v in params.items() if k != "fifo_depth"}
    dut = AXI4WriteMaster(**params)
    nbytes = dut.data_width // 8
    ddr = DDRModel(dut.bus, size=MEM_SIZE, seed=seed, **ddr_params)
    rng = random.Random(seed)
    ddr.array[:] = np.frombuffer(rng.randbytes(MEM_SIZE), np.uint8)
    cmds = make_commands(seed, nbytes, dut.max_burst_beats, dut.max_outstanding)
    words = [rng.getrandbits(dut.data_width) for _ in range(sum(n for _, n in cmds))]
    expected = bytearray(ddr.array.tobytes())
    pos = 0
    for addr, beats in cmds:
        for word in words[pos:pos + beats]:
            expected[addr:addr + nbytes] = word.to_bytes(nbytes, "little")
            addr += nbytes
        pos += beats
    seen = {}
    checker = _write_test(dut, ddr, cmds, words, p_idle=p_idle, seed=seed, sim_args=sim_args,
                          after=_assert_idle_and_clean(dut),
                          monitors=[_w_gap_monitor(dut.bus, seen)])
    assert ddr.read(0, MEM_SIZE) == bytes(expected)
    assert checker.write_bursts == _expected_bursts(cmds, dut)
    assert checker.max_writes_in_flight <= dut.max_outstanding
    assert checker.read_bursts == []
    assert seen["gaps"] == 0                          # store and forward: no bubbles in a burst


def test_write_master_latency_and_throughput(sim_args):
    beats, latency = 256, 10
    dut = AXI4WriteMaster(max_burst_beats=16, max_outstanding=4)
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=latency)
    events = {}

    async def monitor(ctx):
        cycle = 0
        async for _, _, cmd, aw in ctx.tick().sample(dut.cmd.valid & dut.cmd.ready,
                                                     dut.bus.awvalid):
            if cmd:
                events.setdefault("cmd", cycle)
            if aw:
                events.setdefault("aw", cycle)
            cycle += 1

    words = list(range(1, beats + 1))

    async def cmd_after_data(ctx):
        await ctx.tick().until(dut.data.ready == 0)       # data FIFO full: data is buffered
        await put(ctx, dut.cmd, {"addr": 0x800, "beats": beats})

    async def data_producer(ctx):
        await put_all(ctx, dut.data, words)

    run_sim(dut, [cmd_after_data, data_producer,
                  partial(_count_pulses, signal=dut.done, count=1)],
            background=[ddr.testbench, AXI4Checker(dut.bus).testbench, monitor],
            deadline_cycles=5000, **sim_args)
    assert events["aw"] - events["cmd"] == dut.cmd_to_aw_cycles
    assert ddr.read_words(0x800, beats) == words
    assert ddr.stats.cycles - events["cmd"] <= beats + 2 * latency + 10


def test_write_master_rejects_bad_commands(sim_args):
    """A rejected command consumes no data; later commands still write the right words."""
    dut = AXI4WriteMaster(data_width=64)
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=2)
    cmds = [(0x0, 2), (0x104, 3), (0x200, 0), (0x1000, 2)]
    words = [0x11, 0x22, 0x33, 0x44]
    errors = []

    def record_error(ctx):
        errors.append(ctx.get(dut.error))

    _write_test(dut, ddr, cmds, words, p_idle=0.0, seed=0, sim_args=sim_args, n_done=2,
                after=record_error)
    assert ddr.read_words(0x0, 2) == [0x11, 0x22]
    assert ddr.read_words(0x1000, 2) == [0x33, 0x44]
    assert ddr.read_words(0x100, 4) == [0] * 4
    assert errors == [1]


def test_write_master_slverr(sim_args):
    dut = AXI4WriteMaster()
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=2, slverr_range=(0x2000, 0x2001))
    cmds = [(0x1000, 1), (0x2000, 1), (0x3000, 1)]
    errors = []

    def record_error(ctx):
        errors.append(ctx.get(dut.error))

    _write_test(dut, ddr, cmds, [1, 2, 3], p_idle=0.0, seed=0, sim_args=sim_args,
                after=record_error)
    assert ddr.read_words(0x1000, 1) == [1] and ddr.read_words(0x3000, 1) == [3]
    assert ddr.read_words(0x2000, 1) == [0]
    assert errors == [1]


# -- the checker catches violations ----------------------------------------------------------

async def _bad_ar_dropped(ctx, bus):
    ctx.set(bus.araddr, 0x100)
    ctx.set(bus.arsize, 4)
    ctx.set(bus.arburst, Burst.INCR.value)
    ctx.set(bus.arvalid, 1)                       # arready stays low (nobody drives it)
    await ctx.tick()
    ctx.set(bus.arvalid, 0)
    for _ in range(3):
        await ctx.tick()


async def _bad_aw_payload_changed(ctx, bus):
    ctx.set(bus.awaddr, 0x100)
    ctx.set(bus.awsize, 4)
    ctx.set(bus.awburst, Burst.INCR.value)
    ctx.set(bus.awvalid, 1)
    await ctx.tick()
    ctx.set(bus.awlen, 3)
    for _ in range(3):
        await ctx.tick()


async def _bad_ar_crosses_4k(ctx, bus):
    ctx.set(bus.arready, 1)                       # a subordinate that accepts everything
    ctx.set(bus.araddr, 0xfc0)
    ctx.set(bus.arlen, 7)
    ctx.set(bus.arsize, 4)
    ctx.set(bus.arburst, Burst.INCR.value)
    ctx.set(bus.arvalid, 1)
    for _ in range(3):
        await ctx.tick()


async def _bad_wlast_early(ctx, bus):
    ctx.set(bus.awready, 1)
    ctx.set(bus.wready, 1)
    ctx.set(bus.awaddr, 0x100)
    ctx.set(bus.awlen, 3)
    ctx.set(bus.awsize, 4)
    ctx.set(bus.awburst, Burst.INCR.value)
    ctx.set(bus.awvalid, 1)
    await ctx.tick()
    ctx.set(bus.awvalid, 0)
    ctx.set(bus.wvalid, 1)
    for beat in range(4):
        ctx.set(bus.wlast, beat == 1)
        await ctx.tick()


async def _bad_b_before_wlast(ctx, bus):
    ctx.set(bus.awready, 1)
    ctx.set(bus.awaddr, 0x100)
    ctx.set(bus.awlen, 1)
    ctx.set(bus.awsize, 4)
    ctx.set(bus.awburst, Burst.INCR.value)
    ctx.set(bus.awvalid, 1)
    await ctx.tick()
    ctx.set(bus.awvalid, 0)
    ctx.set(bus.bvalid, 1)                        # no W beat was sent
    ctx.set(bus.bready, 1)
    for _ in range(3):
        await ctx.tick()


@pytest.mark.parametrize("scenario, msg", [
    (_bad_ar_dropped, r"^axi: AR channel: arvalid dropped before the handshake in cycle 1: "
                      r"pending payload araddr=0x100, arlen=0x0, arsize=0x4"),
    (_bad_aw_payload_changed, r"^axi: AW channel: payload changed while valid and not ready "
                              r"in cycle 1: was awaddr=0x100, awlen=0x0.*now awaddr=0x100, "
                              r"awlen=0x3"),
    (_bad_ar_crosses_4k, r"^axi: AR channel: INCR burst must not cross a 4 KiB boundary in "
                         r"cycle 0: 8-beat burst at 0xfc0 of 16 bytes ends at 0x103f"),
    (_bad_wlast_early, r"^axi: W channel: wlast must be high exactly on the last beat in "
                       r"cycle 2: wlast on beat 2 of a 4-beat burst"),
    (_bad_b_before_wlast, r"^axi: B channel: B response before the last W beat of its burst "
                          r"in cycle 1"),
])
def test_checker_catches_bad_manager(scenario, msg):
    m, bus = _bare_bus()
    with pytest.raises(AssertionError, match=msg):
        run_sim(m, [partial(scenario, bus=bus)], background=[AXI4Checker(bus).testbench])


def test_checker_catches_wrong_rlast():
    """A subordinate that raises rlast on the second of four beats."""
    dut = AXI4ReadMaster()
    checker = AXI4Checker(dut.bus, name="m_axi")

    async def bad_subordinate(ctx):
        ctx.set(dut.bus.arready, 1)
        await ctx.tick().until(dut.bus.arvalid)
        ctx.set(dut.bus.arready, 0)
        for beat in range(4):
            ctx.set(dut.bus.rlast, beat == 1)
            ctx.set(dut.bus.rvalid, 1)
            await ctx.tick()

    async def tb(ctx):
        await put(ctx, dut.cmd, {"addr": 0x0, "beats": 4})
        await get_n(ctx, dut.data, 4)

    with pytest.raises(AssertionError, match=r"^m_axi: R channel: rlast must be high exactly on "
                                             r"the last beat in cycle \d+: beat 2 of 4 has "
                                             r"rlast=1"):
        run_sim(dut, [tb], background=[bad_subordinate, checker.testbench])


@pytest.mark.parametrize("bytes_per_cycle", [8, 12, 56.9 / 4, 5.5])
def test_ddr_bandwidth_cap(bytes_per_cycle, sim_args):
    """A long read runs at the configured rate, fractions of a beat per cycle included (a
    bucket of one beat would round 12 B/cycle on a 16-byte bus down to 8)."""
    beats, latency = 256, 5
    dut = AXI4ReadMaster(max_outstanding=8)
    ddr = DDRModel(dut.bus, size=MEM_SIZE, latency=latency, bytes_per_cycle=bytes_per_cycle)
    words, _ = _read_test(dut, ddr, [(0x0, beats)], p_idle=0.0, p_stall=0.0, seed=0,
                          sim_args=sim_args)
    assert words == _expected_reads(ddr, [(0x0, beats)])
    ideal = beats * 16 / bytes_per_cycle
    assert ideal - 2 <= ddr.stats.cycles <= ideal + latency + 12
    assert ddr.stats.busy_cycles == beats and ddr.stats.read_bursts == beats // 16


def test_ddr_model_validation():
    _, bus = _bare_bus(data_width=64)
    with pytest.raises(ValueError, match=r"size must be a positive multiple of 8, not 12"):
        DDRModel(bus, size=12)
    with pytest.raises(ValueError, match=r"latency must be at least 1, not 0"):
        DDRModel(bus, size=64, latency=0)
    with pytest.raises(TypeError, match=r"bus must be an AXI4Signature interface"):
        DDRModel(AXI4LiteSignature(addr_width=12, data_width=32).create(), size=64)
    ddr = DDRModel(bus, size=64, base=0x100)
    ddr.write_words(0x108, [0x0123456789abcdef])
    assert ddr.read(0x108, 2) == b"\xef\xcd"
    assert ddr.array[8] == 0xef
    with pytest.raises(DDRAccessError, match=r"access of 8 bytes at 0x140 is outside"):
        ddr.read_words(0x140, 1)
