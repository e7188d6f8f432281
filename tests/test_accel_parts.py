# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Unit tests of the accelerator's plumbing: width adapters (hdl/width.py), the AXI port
multiplexer and monitor (hdl/axi_port.py)."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib.wiring import connect

from hdl.axi import AXI4Signature
from hdl.axi_master import AXI4ReadMaster
from hdl.axi_port import AXIPortMonitor, AXIPortMux
from hdl.width import Packer, Unpacker, words_for
from sim.axi_check import AXI4Checker
from sim.ddr import DDRModel
from sim.harness import run_sim
from sim.streams import get_n, put_all


def _split(words, in_w, out_w, count):
    bits = 0
    for i, w in enumerate(words):
        bits |= w << (i * in_w)
    return [(bits >> (j * out_w)) & ((1 << out_w) - 1) for j in range(count)]


@pytest.mark.parametrize("in_w,out_w,count", [(128, 64, 5), (128, 256, 3), (128, 128, 4),
                                              (64, 256, 2), (128, 32, 7)])
def test_unpacker(in_w, out_w, count, sim_args):
    dut = Unpacker(in_w, out_w, 64)
    n_in = words_for(count, in_w, out_w)
    rng0 = random.Random(in_w * 7 + out_w + count)
    segments = [[rng0.getrandbits(in_w) for _ in range(n_in)] for _ in range(2)]
    got = []

    async def feed(ctx):
        rng = random.Random(1)
        for seg in segments:
            await put_all(ctx, dut.i, seg, rng=rng, p_idle=0.3)

    async def drain(ctx):
        rng = random.Random(2)
        for _ in segments:
            ctx.set(dut.start, 1)
            ctx.set(dut.count, count)
            await ctx.tick()
            ctx.set(dut.start, 0)
            got.append(await get_n(ctx, dut.o, count, rng=rng, p_stall=0.3))
            await ctx.tick().until(~dut.busy)

    run_sim(dut, [feed, drain], deadline_cycles=2000, **sim_args)
    for seg, out in zip(segments, got):
        assert out == _split(seg, in_w, out_w, count)


@pytest.mark.parametrize("in_w,out_w,count", [(64, 128, 5), (256, 128, 2), (128, 128, 3),
                                              (32, 128, 7)])
def test_packer(in_w, out_w, count, sim_args):
    dut = Packer(in_w, out_w, 64)
    rng0 = random.Random(in_w + out_w)
    words = [rng0.getrandbits(in_w) for _ in range(count)]
    n_out = -(-count * in_w // out_w)
    got = []

    async def feed(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.count, count)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await put_all(ctx, dut.i, words, rng=random.Random(3), p_idle=0.3)

    async def drain(ctx):
        await ctx.tick()
        got.extend(await get_n(ctx, dut.o, n_out, rng=random.Random(4), p_stall=0.3))

    run_sim(dut, [feed, drain], deadline_cycles=2000, **sim_args)
    assert got == _split(words, in_w, out_w, n_out)


def test_width_errors():
    with pytest.raises(ValueError, match="power of two"):
        Unpacker(128, 48, 4)
    with pytest.raises(ValueError, match="positive integer"):
        Packer(0, 128, 4)


def test_mux_and_monitor(sim_args):
    """Three read managers through one port: every word back to its manager, protocol checked,
    the monitor quiet exactly when nothing is in flight."""
    sig = AXI4Signature(addr_width=32, data_width=128, id_width=4)
    m = Module()
    masters = [AXI4ReadMaster(addr_width=32, data_width=128, max_outstanding=2)
               for _ in range(3)]
    m.submodules.mux = mux = AXIPortMux(3, addr_width=32, data_width=128, id_width=4)
    m.submodules.mon = mon = AXIPortMonitor(sig)
    for i, mst in enumerate(masters):
        m.submodules[f"m{i}"] = mst
        connect(m, mst.bus, getattr(mux, f"r{i}"))
    connect(m, mux.bus, mon.inner)
    ddr = DDRModel(mon.bus, size=1 << 16, latency=12, jitter=5, seed=3, p_addr_stall=0.2)
    for a in range(0, 1 << 16, 16):
        ddr.write(a, (a // 16).to_bytes(16, "little"))
    checker = AXI4Checker(mon.bus, name="port")
    quiet_seen = []
    reqs = [(0x1000, 40), (0x4000, 33), (0x8ff0, 18)]        # the last one crosses 4 KiB

    def reader(i):
        async def tb(ctx):
            addr, beats = reqs[i]
            await put_all(ctx, masters[i].cmd, [{"addr": addr, "beats": beats}])
            got = await get_n(ctx, masters[i].data, beats, rng=random.Random(i), p_stall=0.4)
            assert [g["data"] for g in got] == [addr // 16 + k for k in range(beats)]
            assert [g["last"] for g in got] == [0] * (beats - 1) + [1]
        return tb

    async def watch(ctx):
        async for _, _, quiet, arv in ctx.tick().sample(mon.quiet, mon.bus.arvalid):
            quiet_seen.append(quiet)

    run_sim(m, [reader(i) for i in range(3)], background=[ddr.testbench, checker.testbench,
                                                           watch],
            deadline_cycles=5000, **sim_args)
    assert sum(n for _, n in checker.read_bursts) == sum(b for _, b in reqs)
    assert quiet_seen[0] == 1 and 0 in quiet_seen
    with pytest.raises(ValueError, match="id_width"):
        AXIPortMux(5, addr_width=32, data_width=128, id_width=3)
