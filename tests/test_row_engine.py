# SPDX-License-Identifier: BSD-2-Clause
"""``hdl.engines.RowEngine``: rows from the activation buffer through a row unit and back.

The buffer is a model behind the engine's external port (a read and a write every cycle, read
data one cycle later, a read of the word written in the same cycle returns the old word; with
``port_busy`` it refuses random reads and writes, ``ext_r_ok``/``ext_w_ok`` low, as the compute
unit does while a product uses its ports, and answers a refused read with garbage); the
row unit is a model too, an element-wise function with its own random stalls and bubbles
(zeros past ``count``, as the real units). The
tests check the written words, the beats the unit sees (``count``, ``last``), the stream rules
on both unit streams, that an in-place row is never overwritten before it was read, and the
engine's throughput of ``max(words, beats)`` cycles per row when nothing stalls.
"""

import random
from collections import deque
from functools import partial

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hdl.engines import RowEngine
from sim.compute_model import pack_row, unpack_row
from sim.harness import run_sim
from sim.streams import check_stream_rules

ADDR_BITS = 9
WIDTH = 16


def _f(v):
    """The model unit's element-wise function (16-bit two's complement)."""
    r = (3 * v + 1) & 0xFFFF
    return r - 0x10000 if r & 0x8000 else r


def run_rows(L, lanes, n, rows, *, in_place, p, seed, sim_args, observe=None, port_busy=0.0):
    """Run one RowEngine command over a random buffer and check everything it wrote."""
    words = -(-n // L)
    beats = -(-n // lanes)
    in_base, in_stride = 3, words + 1
    out_base, out_stride = (in_base, in_stride) if in_place else (300, words)
    dut = RowEngine(lanes_buffer=L, lanes_unit=lanes, addr_bits=ADDR_BITS, max_len=n + L,
                    max_rows=rows + 1)
    rng0 = random.Random(seed)
    mem0 = {a: rng0.getrandbits(L * WIDTH) for a in range(1 << ADDR_BITS)}
    mem = dict(mem0)
    in_words = {in_base + r * in_stride + w for r in range(rows) for w in range(words)}
    read, written = set(), []
    in_rows = [unpack_row([mem0[in_base + r * in_stride + w] for w in range(words)], n, L, WIDTH)
               for r in range(rows)]
    expect_beats = []
    for row in in_rows:
        for b in range(beats):
            chunk = row[b * lanes:(b + 1) * lanes]
            expect_beats.append((chunk + [None] * (lanes - len(chunk)), len(chunk),
                                 b == beats - 1))
    got_beats = []
    pending = deque()
    state = {"cycles": None}

    async def buffer(ctx):
        # The buffer behind the port: sample at the edge, answer the read next cycle; a refused
        # read returns garbage, a refused write is not done.
        rng = random.Random(seed + 3)
        ctx.set(dut.ext_r_ok, 1)
        ctx.set(dut.ext_w_ok, 1)
        async for _, _, r_addr, w_en, w_addr, w_data, r_ok, w_ok in ctx.tick().sample(
                dut.ext.r_addr, dut.ext.w_en, dut.ext.w_addr, dut.ext.w_data,
                dut.ext_r_ok, dut.ext_w_ok):
            if r_ok:
                ctx.set(dut.ext_rdata, mem[r_addr])
                read.add(r_addr)
            else:
                ctx.set(dut.ext_rdata, rng.getrandbits(L * WIDTH))
            ctx.set(dut.ext_r_ok, int(rng.random() >= port_busy))
            ctx.set(dut.ext_w_ok, int(rng.random() >= port_busy))
            if w_en and w_ok:
                assert w_addr not in in_words or w_addr in read, \
                    f"word {w_addr} overwritten before it was read"
                mem[w_addr] = w_data
                written.append(w_addr)

    async def unit_in(ctx):
        rng = random.Random(seed + 1)
        ready = None
        async for _, _, valid, payload in ctx.tick().sample(dut.ui.valid, dut.ui.payload):
            if valid and ready:
                count, last = payload.count, payload.last
                data = [int(payload.data[j]) for j in range(lanes)]
                got_beats.append((data[:count] + [None] * (lanes - count), count, bool(last)))
                pending.append((data, count, last))
            want = 0 if rng.random() < p else 1
            if want != ready:
                ctx.set(dut.ui.ready, want)
                ready = want

    async def unit_out(ctx):
        rng = random.Random(seed + 2)
        sent = 0
        while sent < rows * beats:
            if not pending or rng.random() < p:
                await ctx.tick()
                continue
            data, count, last = pending.popleft()
            # Lanes past ``count`` are zero, as the real units' outputs.
            ctx.set(dut.uo.payload, {"data": [_f(v) if j < count else 0
                                              for j, v in enumerate(data)],
                                     "count": count, "last": last})
            ctx.set(dut.uo.valid, 1)
            await ctx.tick().until(dut.uo.ready)
            ctx.set(dut.uo.valid, 0)
            sent += 1

    async def command(ctx):
        ctx.set(dut.rows, rows)
        ctx.set(dut.n, n)
        ctx.set(dut.in_base, in_base)
        ctx.set(dut.in_stride, in_stride)
        ctx.set(dut.out_base, out_base)
        ctx.set(dut.out_stride, out_stride)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        cycles = 1
        while ctx.get(dut.busy):
            await ctx.tick()
            cycles += 1
        state["cycles"] = cycles
        await ctx.tick().repeat(2)          # the buffer model sees the last edges too

    run_sim(dut, [command, unit_out],
            background=[buffer, unit_in, partial(check_stream_rules, stream=dut.ui, name="ui"),
                        partial(check_stream_rules, stream=dut.uo, name="uo")],
            deadline_cycles=int(50 * rows * (words + beats) / (1 - port_busy)) + 200, **sim_args)

    assert got_beats == expect_beats
    out_words = [out_base + r * out_stride + w for r in range(rows) for w in range(words)]
    assert sorted(written) == sorted(out_words), "each output word written exactly once"
    for r, row in enumerate(in_rows):
        # A partial last word is zero past the row.
        want = pack_row([_f(v) for v in row], L, WIDTH)
        for w in range(words):
            assert mem[out_base + r * out_stride + w] == want[w], f"row {r}, word {w}"
    untouched = set(mem0) - set(out_words)
    assert all(mem[a] == mem0[a] for a in untouched)
    if observe is not None:
        observe["cycles"] = state["cycles"]
    return words, beats


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shape=st.sampled_from([(8, 4), (4, 8), (8, 8), (4, 2)]), n=st.integers(1, 40),
       rows=st.integers(1, 6), in_place=st.booleans(), p=st.sampled_from([0.0, 0.3, 0.6]),
       seed=st.integers(0, 99), port_busy=st.sampled_from([0.0, 0.0, 0.5]))
@example(shape=(8, 4), n=17, rows=5, in_place=True, p=0.5, seed=3, port_busy=0.0)
@example(shape=(4, 8), n=9, rows=4, in_place=True, p=0.0, seed=4, port_busy=0.0)
@example(shape=(8, 4), n=20, rows=3, in_place=True, p=0.3, seed=5, port_busy=0.5)
@example(shape=(4, 8), n=17, rows=4, in_place=False, p=0.0, seed=6, port_busy=0.5)
def test_row_engine_random(shape, n, rows, in_place, p, seed, port_busy, sim_args):
    """Random shapes, unit stalls and (``port_busy``) a port that refuses random accesses."""
    L, lanes = shape
    run_rows(L, lanes, n, rows, in_place=in_place, p=p, seed=seed, sim_args=sim_args,
             port_busy=port_busy)


@pytest.mark.parametrize("L, lanes, n", [(8, 4, 24), (8, 8, 24), (4, 8, 24), (8, 4, 17)])
def test_row_engine_throughput(L, lanes, n, sim_args):
    """With nothing stalling, rows stream in and out at once: ``max(words, beats)`` cycles per
    row (a shared read/write port would need ``2·words``), plus the pipeline's fill."""
    rows, obs = 16, {}
    words, beats = run_rows(L, lanes, n, rows, in_place=True, p=0.0, seed=7,
                            sim_args=sim_args, observe=obs)
    assert obs["cycles"] <= rows * max(words, beats) + 8
