# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/moe/dma.py: the expert-weight DMA scheduler against the DDR model, with the AXI
protocol checker on every port."""

import random
from functools import partial

import numpy as np
import pytest

from hdl.moe.dma import ROUTER, ExpertDMA, choose_ports, geometry_layout, geometry_of
from hdl.moe.layout import PARTS, ImageLayout
from sim.axi_check import AXI4Checker
from sim.ddr import DDRModel
from sim.harness import run_sim
from sim.streams import check_stream_rules, put_all

BASE = 0x10000


def _image(lay, seed):
    return np.random.default_rng(seed).integers(0, 256, size=lay.total_bytes,
                                                dtype=np.uint8).tobytes()


def run_dma(lay, experts, *, ports=1, read_words=1, task=0, layer=0, seed=0, latency=20,
            jitter=8, bytes_per_cycle=None, compute_cycles=0, image_bytes=None, slverr=None,
            check_data=True, sim_args=None, expect_error=False, start_twice=False,
            stream_reads=False, release_fc1=True, max_layout=None, ring_halves=None):
    """Run the DMA over the image of ``lay``; with ``max_layout`` the unit is built for that
    (larger) image and told ``lay``'s geometry at run time. ``ring_halves``: a ring of that
    many of the unit's larger half experts (default the unit's own, two experts)."""
    ring = None
    if ring_halves is not None:
        half = max(ring_words_of(max_layout or lay, ports, read_words))
        ring = int(ring_halves * half) // read_words * read_words
    dut = ExpertDMA(max_layout or lay, ports=ports, read_words=read_words, ring_words=ring)
    image = _image(lay, seed)
    mem_size = BASE + (-(-lay.total_bytes // 4096) + 1) * 4096
    ddrs, checkers = [], []
    for p, bus in enumerate(dut.buses):
        ddr = DDRModel(bus, size=mem_size, latency=latency, jitter=jitter, seed=seed + p,
                       bytes_per_cycle=bytes_per_cycle, p_addr_stall=0.1,
                       slverr_range=slverr)
        ddr.write(BASE, image)
        ddrs.append(ddr)
        checkers.append(AXI4Checker(bus, name=f"bus{p}"))
    wb = lay.word_bytes
    R = read_words
    res = {"ready_cycle": [], "release_cycle": [], "early_reads": 0, "bytes_at_release": []}

    async def read_part(ctx, part, nbytes, *, stream=False):
        # With `stream`, each read as soon as rd_avail allows it, not once the part is complete.
        words = []
        nreads = -(-nbytes // (wb * R))
        for a in range(nreads):
            ctx.set(dut.rd_part, part)
            ctx.set(dut.rd_addr, a)
            if stream:
                while not ctx.get(dut.rd_avail):
                    await ctx.tick()
                if not ctx.get(dut.ready) >> part & 1:
                    res["early_reads"] += 1
            await ctx.tick()
            words.append(ctx.get(dut.rd_data).to_bytes(wb * R, "little"))
        return b"".join(words)[:nbytes]

    async def tb(ctx):
        rng = random.Random(seed)
        cycle = [0]

        async def tick(n=1):
            for _ in range(n):
                await ctx.tick()
                cycle[0] += 1

        async def pulse(port):
            ctx.set(port, 1)
            await tick()
            ctx.set(port, 0)

        if max_layout is not None:
            ctx.set(dut.geometry, geometry_of(lay))
        ctx.set(dut.image_base, BASE)
        ctx.set(dut.image_bytes, lay.total_bytes if image_bytes is None else image_bytes)
        ctx.set(dut.layer, layer)
        ctx.set(dut.task, task)
        for _ in range(2 if start_twice else 1):
            ctx.set(dut.start, 1)
            await tick()
            ctx.set(dut.start, 0)
        if expect_error:
            await put_all(ctx, dut.experts, experts)
            for _ in range(2000):
                if ctx.get(dut.error) and not ctx.get(dut.busy):
                    break
                await tick()
            assert ctx.get(dut.error)
            await tick(50)
            assert not ctx.get(dut.busy)
            res["bytes"] = ctx.get(dut.bytes_fetched)
            return
        await put_all(ctx, dut.experts, experts, rng=rng, p_idle=0.3)
        while not ctx.get(dut.router_ready):
            await tick()
        if check_data:
            off = lay.router_offset(layer, task)
            nb = lay.part_bytes("router")
            assert await read_part(ctx, ROUTER, nb) == image[off:off + nb]
        for i, e in enumerate(experts):
            ctx.set(dut.job, i)
            if stream_reads:
                for part in range(len(PARTS)):
                    off = lay.part_offset(layer, e, PARTS[part])
                    nb = lay.part_bytes(PARTS[part])
                    got = await read_part(ctx, part, nb, stream=True)
                    assert got == image[off:off + nb], f"job {i} (expert {e}) {PARTS[part]}"
                    if PARTS[part] == "fc1_w" and release_fc1:
                        await pulse(dut.release_fc1)
                await pulse(dut.release)
                continue
            for part in range(len(PARTS)):
                ctx.set(dut.want_part, part)
                ctx.set(dut.want, 1)
                while True:
                    await tick()
                    if ctx.get(dut.ready) >> part & 1:
                        break
                ctx.set(dut.want, 0)
                if part == 0:
                    res["ready_cycle"].append(cycle[0])
                if check_data:
                    off = lay.part_offset(layer, e, PARTS[part])
                    nb = lay.part_bytes(PARTS[part])
                    got = await read_part(ctx, part, nb)
                    assert got == image[off:off + nb], f"job {i} (expert {e}) {PARTS[part]}"
                if PARTS[part] == "fc1_w":
                    # FC1 computes, then frees the fc1 parts.
                    await tick(compute_cycles // 2)
                    if release_fc1:
                        await pulse(dut.release_fc1)
            await tick(compute_cycles - compute_cycles // 2)
            res["bytes_at_release"].append(ctx.get(dut.bytes_fetched))
            await pulse(dut.release)
            res["release_cycle"].append(cycle[0])
        while ctx.get(dut.busy):
            await tick()
        assert not ctx.get(dut.error)
        res["bytes"] = ctx.get(dut.bytes_fetched)
        res["router_bytes"] = ctx.get(dut.router_bytes)
        res["stall"] = ctx.get(dut.stall_cycles)
        res["cycles"] = cycle[0]

    background = [d.testbench for d in ddrs] + [c.testbench for c in checkers]
    background.append(partial(check_stream_rules, stream=dut.experts, name="experts"))
    run_sim(dut, [tb], background=background, deadline_cycles=400_000, **(sim_args or {}))
    res["bursts"] = [b for c in checkers for b in c.read_bursts]
    return res


SMALL = ImageLayout(num_layers=2, num_experts=4, num_tasks=2, dim=16, hidden=32)


@pytest.mark.parametrize("ports, read_words", [(1, 1), (1, 2), (2, 1), (4, 2)])
def test_fetches_every_used_expert_once(ports, read_words, sim_args):
    experts = [0, 2, 3]
    res = run_dma(SMALL, experts, ports=ports, read_words=read_words, task=1, layer=1,
                  seed=ports + read_words, sim_args=sim_args)
    assert res["bytes"] == len(experts) * SMALL.bytes_for_expert()
    assert res["router_bytes"] == SMALL.bytes_for_router()
    # The bus saw exactly those bytes: nothing fetched twice, no padding fetched.
    total = sum(beats for _, beats in res["bursts"]) * SMALL.word_bytes
    assert total == res["bytes"] + res["router_bytes"]


@pytest.mark.parametrize("E", [4, 16, 64])
def test_all_expert_counts(E, sim_args):
    lay = ImageLayout(num_layers=1, num_experts=E, num_tasks=2, dim=8, hidden=16)
    rng = np.random.default_rng(E)
    experts = sorted(rng.choice(E, size=min(E, 5), replace=False).tolist())
    experts[-1] = E - 1
    res = run_dma(lay, experts, ports=2, seed=E, sim_args=sim_args)
    assert res["bytes"] == len(experts) * lay.bytes_for_expert()


def test_single_expert(sim_args):
    res = run_dma(SMALL, [3], sim_args=sim_args)
    assert res["bytes"] == SMALL.bytes_for_expert()


def test_prefetch_overlaps_compute(sim_args):
    """With compute slower than the fetch, job i+1 is ready before job i is released and the
    consumer waits only for the first expert."""
    lay = ImageLayout(num_layers=1, num_experts=4, num_tasks=1, dim=16, hidden=32)
    fetch = lay.bytes_for_expert() // lay.word_bytes
    res = run_dma(lay, [0, 1, 2, 3], latency=30, jitter=0, compute_cycles=2 * fetch + 100,
                  check_data=False, sim_args=sim_args)
    for i in range(1, 4):
        assert res["ready_cycle"][i] <= res["release_cycle"][i - 1] + 1
    # Only job 0 waited (its four parts); all later parts were ready when asked for.
    first_wait = res["ready_cycle"][0]
    assert res["stall"] <= first_wait + 4 * 2 * fetch


CHUNK = 16        # the DMA's chunk (its default: a maximal burst of 16 beats)


def _ring_parts(lay, ports, read_words):
    """Words of each part of an expert of ``lay`` in each port's ring: its chunks per port, or
    its words rounded up to a read with one port."""
    out = []
    for x in PARTS:
        w = lay.part_words(x)
        n = w if ports == 1 else -(-(-(-w // CHUNK)) // ports) * CHUNK
        out.append(-(-n // read_words) * read_words)
    return out


def ring_words_of(lay, ports, read_words):
    """Words of the fc1 half and the fc2 half of an expert of ``lay`` in each port's ring."""
    r = _ring_parts(lay, ports, read_words)
    return r[0] + r[1], r[2] + r[3]


def _ring_bytes(lay, n_jobs, ports, read_words, free_end):
    """Bytes the ring rule lets in while the ring is free up to ``free_end`` (per port): every
    chunk (every part, with one port) of the first ``n_jobs`` jobs that ends there or before."""
    res = _ring_parts(lay, ports, read_words)
    job = sum(res)
    total = 0
    for j in range(n_jobs):
        off = j * job
        for x, r in zip(PARTS, res):
            w = lay.part_words(x)
            if ports == 1:
                total += w if off + r <= free_end else 0
            else:
                for c in range(-(-w // CHUNK)):
                    if off + (c // ports + 1) * CHUNK <= free_end:
                        total += min(CHUNK, w - c * CHUNK)
            off += r
    return total * lay.word_bytes


@pytest.mark.parametrize("ports, halves", [(1, 4), (4, 4), (2, 5), (1, 2), (4, 7), (2, 2.5)])
def test_ring_refilled_as_released(ports, halves, sim_args):
    """Job i's fc1 half, then its fc2 half, follow job i − 1 in the ring, and a chunk is fetched
    once it fits behind what the consumer has released: when job i is about to be released (its
    fc1 parts released, compute much slower than the fetch), exactly the chunks that end at
    most a ring past the start of job i's fc2 half are in, and every part read is the image's.
    (Rings of 2 to 7 half experts; with 2.5 the fetch stops inside a part.)"""
    lay = ImageLayout(num_layers=1, num_experts=8, num_tasks=1, dim=16, hidden=32)
    fetch = lay.bytes_for_expert() // lay.word_bytes
    experts = [0, 2, 3, 5, 7, 1]
    res = run_dma(lay, experts, ports=ports, latency=30, jitter=4, compute_cycles=4 * fetch,
                  seed=ports + int(2 * halves), ring_halves=halves, sim_args=sim_args)
    h1, h2 = ring_words_of(lay, ports, 1)
    ring = int(halves * max(h1, h2))
    for i, got in enumerate(res["bytes_at_release"]):
        want = _ring_bytes(lay, len(experts), ports, 1, i * (h1 + h2) + h1 + ring)
        assert got == want, (i, got, want)
    assert res["bytes"] == len(experts) * lay.bytes_for_expert()


@pytest.mark.parametrize("halves", [4, 5])
def test_release_alone_frees_the_fc1_parts(halves, sim_args):
    """A consumer that never pulses ``release_fc1`` frees each job's halves with its
    ``release``: the chunks that end at most a ring past the start of job i are in when job i is
    about to be released (with 4 halves, whole jobs in ping-pong), and nothing waits for
    ever."""
    lay = ImageLayout(num_layers=1, num_experts=8, num_tasks=1, dim=16, hidden=32)
    fetch = lay.bytes_for_expert() // lay.word_bytes
    experts = [1, 2, 4, 6, 7]
    res = run_dma(lay, experts, ports=2, latency=30, jitter=4, compute_cycles=4 * fetch,
                  release_fc1=False, ring_halves=halves, sim_args=sim_args)
    assert res["bytes"] == len(experts) * lay.bytes_for_expert()
    h1, h2 = ring_words_of(lay, 2, 1)
    for i, got in enumerate(res["bytes_at_release"]):
        want = _ring_bytes(lay, len(experts), 2, 1, i * (h1 + h2) + halves * max(h1, h2))
        assert got == want, (i, got, want)


def test_experts_larger_than_the_ring(sim_args):
    """A run-time geometry whose expert is larger than the ring (the largest half just fits, as
    m3vit-small's experts in the zcu104 engine's ring): every expert arrives whole and exact,
    each fc2 half streaming in while the consumer reads it."""
    big = ImageLayout(num_layers=1, num_experts=4, num_tasks=1, dim=32, hidden=64)
    res = run_dma(big, [3, 0, 2], ports=2, read_words=2, latency=30, stream_reads=True,
                  ring_halves=1, sim_args=sim_args)
    assert res["bytes"] == 3 * big.bytes_for_expert()


@pytest.mark.parametrize("ports, read_words, halves", [(1, 1, 4), (2, 2, 5), (4, 1, 3)])
def test_parts_stream_while_arriving(ports, read_words, halves, sim_args):
    """A consumer that reads each word as soon as ``rd_avail`` says it is there gets the
    image's bytes (never a word of an earlier job in a reused slot, never an unwritten one)
    and starts reading parts before they are complete."""
    lay = ImageLayout(num_layers=1, num_experts=4, num_tasks=1, dim=16, hidden=64)
    res = run_dma(lay, [0, 1, 2, 3], ports=ports, read_words=read_words, latency=30,
                  stream_reads=True, seed=ports, ring_halves=halves, sim_args=sim_args)
    assert res["bytes"] == 4 * lay.bytes_for_expert()
    assert res["early_reads"] > 0


def test_bandwidth_bound(sim_args):
    """At a quarter beat per cycle the fetch dominates: the consumer stalls, bytes still exact."""
    res = run_dma(SMALL, [1, 2], bytes_per_cycle=4, check_data=False, sim_args=sim_args)
    assert res["bytes"] == 2 * SMALL.bytes_for_expert()
    assert res["stall"] > 2 * SMALL.bytes_for_expert() // 4 // 2


@pytest.mark.parametrize("kw", [
    dict(task=2), dict(layer=2), dict(image_bytes=SMALL.total_bytes - 1),
])
def test_bad_arguments_error_no_hang(kw, sim_args):
    res = run_dma(SMALL, [0, 1], expect_error=True, sim_args=sim_args, **kw)
    assert res["bytes"] == 0


def test_axi_error_is_reported_and_drains(sim_args):
    off = SMALL.part_offset(0, 1, "fc2_w")
    res = run_dma(SMALL, [0, 1, 2], expect_error=True, slverr=(BASE + off, BASE + off + 16),
                  sim_args=sim_args)
    assert res["bytes"] <= 3 * SMALL.bytes_for_expert()


BIG = ImageLayout(num_layers=3, num_experts=8, num_tasks=3, dim=32, hidden=64)
# Both biases take two chunks: every port of two has words of every part.
WIDE = ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=128, hidden=128)


@pytest.mark.parametrize("lay, max_layout, ports, read_words", [
    (SMALL, BIG, 1, 1),
    (SMALL, BIG, 4, 2),
    # Parts shorter than a chunk: ports 1..3 fetch nothing at all.
    (ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=8, hidden=8), BIG, 4, 1),
    # Some parts on every port, some on one: ports skip the parts they have no word of.
    (ImageLayout(num_layers=2, num_experts=5, num_tasks=3, dim=16, hidden=64), BIG, 2, 2),
    # Port 1 skips fc1_b (the first part) and fc2_b (between two it fetches).
    (ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=64, hidden=64), WIDE, 2, 1),
    (BIG, BIG, 4, 1),
])
def test_runtime_geometry(lay, max_layout, ports, read_words, sim_args):
    """A unit built for the largest image fetches a smaller one, told its geometry at run
    time: exactly the used experts' bytes, each part equal to the image's."""
    experts = list(range(0, lay.num_experts, 2)) + [lay.num_experts - 1]
    experts = sorted(set(experts))
    res = run_dma(lay, experts, ports=ports, read_words=read_words,
                  task=lay.num_tasks - 1, layer=lay.num_layers - 1, seed=lay.dim + ports,
                  sim_args=sim_args, max_layout=max_layout, compute_cycles=20)
    assert res["bytes"] == len(experts) * lay.bytes_for_expert()
    assert res["router_bytes"] == lay.bytes_for_router()
    total = sum(beats for _, beats in res["bursts"]) * lay.word_bytes
    assert total == res["bytes"] + res["router_bytes"]


@pytest.mark.parametrize("change", [
    dict(num_experts=0), dict(num_experts=9), dict(part=1, words=0),
    dict(part=ROUTER, words=1000),
])
def test_bad_geometry_is_an_error(change, sim_args):
    """A geometry the buffers cannot hold (or an empty one) is refused at start."""
    g = geometry_of(SMALL)
    if "part" in change:
        g["part_words"][change["part"]] = change["words"]
    else:
        g.update(change)
    dut = ExpertDMA(BIG)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.geometry, g)
        ctx.set(dut.image_base, BASE)
        ctx.set(dut.image_bytes, SMALL.total_bytes)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().repeat(30)
        seen["error"] = ctx.get(dut.error)
        seen["busy"] = ctx.get(dut.busy)
        seen["router_ready"] = ctx.get(dut.router_ready)

    run_sim(dut, [tb], deadline_cycles=100, **sim_args)
    assert seen == {"error": 1, "busy": 0, "router_ready": 0}


def test_geometry_layout_fits():
    """The geometry of every image within the largest fits its fields."""
    lay_t = geometry_layout(BIG)
    for lay in (SMALL, BIG):
        lay_t.const(geometry_of(lay))
    with pytest.raises(TypeError):
        geometry_of("BIG")


def test_choose_ports():
    assert choose_ports(10, 16) == 1
    assert choose_ports(30, 16) == 2
    assert choose_ports(40, 16) == 4
    assert choose_ports(400, 16) == 4


@pytest.mark.parametrize("kw, exc", [
    (dict(ports=3), ValueError), (dict(ports=8), ValueError), (dict(read_words=3), ValueError),
    (dict(read_words=32), ValueError), (dict(ports=1.0), TypeError),
    (dict(ring_words=1), ValueError), (dict(ring_words=4.0), TypeError),
    (dict(read_words=2, ring_words=4 * 1024 + 1), ValueError),
])
def test_bad_parameters(kw, exc):
    with pytest.raises(exc):
        ExpertDMA(SMALL, **kw)
