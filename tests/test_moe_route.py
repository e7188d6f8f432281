# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/moe/topk.py and hdl/moe/reorder.py against golden.qref.topk / reorder."""

import random
from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from amaranth.hdl import Module
from amaranth.lib.wiring import connect

from golden import qref
from hdl.moe.reorder import Reorder
from hdl.moe.topk import TopK
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n, put_all


class _Router(object):
    """TopK feeding Reorder, as in the layer engine."""

    def __init__(self, E, k, N, lanes):
        self.topk = TopK(num_experts=E, k=k, lanes=lanes)
        self.reorder = Reorder(num_experts=E, k=k, tokens=N)

    def set_shape(self, ctx, E, k, N):
        """The frame's run-time shape (within the maxima the units were built for)."""
        ctx.set(self.topk.n_experts, E)
        for port, v in ((self.reorder.n_experts, E), (self.reorder.top_k, k),
                        (self.reorder.n_tokens, N)):
            ctx.set(port, v)

    def module(self):
        m = Module()
        m.submodules.topk = self.topk
        m.submodules.reorder = self.reorder
        connect(m, self.topk.o, self.reorder.i)
        return m


def _beats(probs, lanes, fill=0):
    """Split each row into beats of ``lanes`` (padded with ``fill``)."""
    n, E = probs.shape
    nb = -(-E // lanes)
    pad = np.full((n, nb * lanes), fill, dtype=np.int64)
    pad[:, :E] = probs
    return [[int(v) for v in pad[t, b * lanes:(b + 1) * lanes]]
            for t in range(n) for b in range(nb)]


def _probs(kind, N, E, rng):
    if kind == "random":
        return rng.integers(0, 1 << 15, size=(N, E))
    if kind == "few_values":          # many ties inside a row
        return rng.integers(0, 4, size=(N, E)) * 1000
    if kind == "tied":                # every score tied: experts 0..k-1 everywhere
        return np.full((N, E), 1234)
    if kind == "one_expert":          # every token's best expert is the last one
        p = rng.integers(0, 1000, size=(N, E))
        p[:, E - 1] = 32767
        return p
    if kind == "zeros":
        return np.zeros((N, E), dtype=np.int64)
    raise ValueError(kind)


def run_route(probs, k, lanes, *, seed, sim_args, p_idle=0.3, p_stall=0.3, restart=False,
              maxima=None):
    """Simulate TopK → Reorder; return (experts, lists) as read back from the hardware.

    ``maxima`` = ``(E, k, N)``: build the units for these and run the frame's shape at run
    time (default: built for the frame's shape)."""
    N, E = probs.shape
    r = _Router(*(maxima or (E, k, N)), lanes)
    dut = r.module()
    ro = r.reorder
    # Past the row's end the lanes carry the largest score: they must be ignored.
    beats = _beats(probs, lanes, fill=(1 << 15) - 1 if maxima else 0)
    out = {}

    async def tb(ctx):
        rng = random.Random(seed)
        if maxima:
            r.set_shape(ctx, E, k, N)
        rounds = 2 if restart else 1
        for rnd in range(rounds):
            ctx.set(ro.start, 1)
            await ctx.tick()
            ctx.set(ro.start, 0)
            if restart and rnd == 0:
                # Abandon the first frame half way, once TopK's pipeline has delivered the
                # rows it took (the layer engine only ever routes whole frames): `start` must
                # restart the reorder cleanly.
                await put_all(ctx, r.topk.i, beats[:len(beats) // 2], rng=rng, p_idle=p_idle)
                await ctx.tick().repeat(r.topk.latency + 2)
                continue
            await put_all(ctx, r.topk.i, beats, rng=rng, p_idle=p_idle)
        experts = []
        while True:
            (e,) = await get_n(ctx, ro.experts, 1, rng=rng, p_stall=p_stall)
            experts.append((e.expert, e.offset, e.count))
            if e.last:
                break
        await ctx.tick().until(ro.done)
        assert ctx.get(ro.n_used) == len(experts)
        assert not ctx.get(ro.error)
        lists = []
        for _, off, cnt in experts:
            toks, scs = [], []
            for a in range(off, off + cnt):
                ctx.set(ro.rd_addr, a)
                await ctx.tick()
                toks.append(ctx.get(ro.rd_data.token))
                scs.append(ctx.get(ro.rd_data.score))
            lists.append((toks, scs))
        out["experts"] = experts
        out["lists"] = lists

    run_sim(dut, [tb], background=[
        partial(check_stream_rules, stream=r.topk.i, name="probs"),
        partial(check_stream_rules, stream=r.topk.o, name="routes"),
        partial(check_stream_rules, stream=ro.experts, name="experts"),
    ], deadline_cycles=20 * (len(beats) + N * k + (maxima or (E,))[0] + 50), **sim_args)
    return out


def _check(probs, k, out):
    idx, scores = qref.topk(probs, k)
    ref = qref.reorder(idx, scores, probs.shape[1])
    # The experts in golden's order (qref.expert_order), each with its list.
    assert [e for e, _, _ in out["experts"]] == [e for e, _, _ in ref]
    # The lists lie in ascending expert id in the list memory, end to end.
    counts = {e: len(rtok) for e, rtok, _ in ref}
    for (e, off, cnt), (toks, scs), (re, rtok, rsc) in zip(out["experts"], out["lists"], ref):
        assert off == sum(c for e2, c in counts.items() if e2 < e) and cnt == len(rtok)
        assert toks == [int(v) for v in rtok], f"expert {e}"
        assert scs == [int(v) for v in rsc], f"expert {e}"
    assert sum(counts.values()) == probs.shape[0] * k


@pytest.mark.parametrize("E, k, lanes, N, kind", [
    (4, 2, 8, 9, "random"),            # micro: E < lanes
    (4, 1, 8, 7, "tied"),
    (16, 2, 8, 13, "random"),
    (16, 4, 8, 11, "few_values"),
    (16, 2, 8, 10, "one_expert"),      # every token → expert 15
    (64, 1, 8, 6, "random"),
    (64, 4, 8, 7, "tied"),
    (64, 2, 8, 8, "few_values"),
    (5, 4, 3, 6, "random"),            # E not a multiple of lanes
    (4, 4, 1, 5, "zeros"),             # k == E, one lane
    (16, 2, 16, 12, "few_values"),     # m3vit-tiny: one beat per row
    (16, 4, 16, 9, "random"),
])
def test_route_matches_golden(E, k, lanes, N, kind, sim_args):
    rng = np.random.default_rng(E * 100 + k * 10 + N)
    probs = _probs(kind, N, E, rng)
    out = run_route(probs, k, lanes, seed=N, sim_args=sim_args)
    _check(probs, k, out)


@pytest.mark.parametrize("maxima, E, k, N, lanes", [
    ((16, 2, 13), 4, 2, 5, 16),        # micro's router on m3vit-tiny's units
    ((16, 2, 13), 16, 1, 13, 8),       # fewer experts per token
    ((64, 4, 9), 5, 3, 9, 8),          # one beat of eight lanes out of eight
    ((64, 4, 9), 64, 4, 1, 8),
    ((8, 4, 6), 3, 3, 6, 2),           # k == E
])
def test_route_runtime_shape(maxima, E, k, N, lanes, sim_args):
    """Units built for the largest shape route a smaller frame exactly as units built for it."""
    rng = np.random.default_rng(E + 7 * k + N)
    probs = _probs("few_values", N, E, rng)
    out = run_route(probs, k, lanes, seed=E, sim_args=sim_args, maxima=maxima)
    _check(probs, k, out)


@pytest.mark.parametrize("E, k, N", [(0, 1, 4), (4, 0, 4), (2, 3, 4), (4, 2, 0)])
def test_reorder_bad_shape(E, k, N, sim_args):
    """A shape out of range: error at once, done with no expert, never a hang."""
    dut = Reorder(num_experts=8, k=4, tokens=6)
    seen = {}

    async def tb(ctx):
        for port, v in ((dut.n_experts, E), (dut.top_k, k), (dut.n_tokens, N)):
            ctx.set(port, v)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.experts.ready, 1)
        await ctx.tick().until(dut.done)
        seen["error"] = ctx.get(dut.error)
        seen["used"] = ctx.get(dut.n_used)
        seen["valid"] = ctx.get(dut.experts.valid)
        seen["ready"] = ctx.get(dut.i.ready)

    run_sim(dut, [tb], deadline_cycles=50, **sim_args)
    assert seen == {"error": 1, "used": 0, "valid": 0, "ready": 0}


def test_route_restart_mid_frame(sim_args):
    rng = np.random.default_rng(3)
    probs = _probs("random", 8, 16, rng)
    out = run_route(probs, 2, 8, seed=1, sim_args=sim_args, restart=True)
    _check(probs, 2, out)


@pytest.mark.parametrize("E", [4, 16, 64])
def test_route_cycle_count(E, sim_args):
    """Without bubbles, done rises TopK.latency + Reorder.tail_cycles after the last beat."""
    k, N, lanes = 2, 12, 8
    probs = _probs("random", N, E, np.random.default_rng(0))
    r = _Router(E, k, N, lanes)
    dut = r.module()
    beats = _beats(probs, lanes)
    result = {}

    async def tb(ctx):
        ctx.set(r.reorder.start, 1)
        await ctx.tick()
        ctx.set(r.reorder.start, 0)
        await put_all(ctx, r.topk.i, beats)
        ctx.set(r.reorder.experts.ready, 1)
        n = 0
        async for _, _, done in ctx.tick().sample(r.reorder.done):
            n += 1
            if done:
                break
        result["cycles"] = n
        result["used"] = ctx.get(r.reorder.n_used)

    run_sim(dut, [tb], deadline_cycles=2000, **sim_args)
    assert result["cycles"] == r.topk.latency + r.reorder.tail_cycles(result["used"])


@pytest.mark.parametrize("E, k", [(3, 4), (65, 1), (4, 0), (4, 5)])
def test_bad_shapes(E, k):
    with pytest.raises(ValueError):
        TopK(num_experts=E, k=k, lanes=8)
    with pytest.raises(ValueError):
        Reorder(num_experts=E, k=k, tokens=4)


def test_bad_types():
    with pytest.raises(TypeError, match=r"k must be an integer in the range 1\.\.4, not 2\.0"):
        TopK(num_experts=4, k=2.0, lanes=8)
    with pytest.raises(TypeError, match=r"tokens must be a positive integer"):
        Reorder(num_experts=4, k=2, tokens="9")


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), E=st.integers(1, 64), lanes=st.sampled_from([1, 2, 4, 8]),
       N=st.integers(1, 9), levels=st.sampled_from([1, 2, 5, 1 << 15]))
@example(data=None, E=64, lanes=8, N=9, levels=1)
def test_route_property(data, E, lanes, N, levels, sim_args):
    """Any shape, any probabilities (ties included): the hardware equals the golden routing."""
    if data is None:
        k, seed = 4, 0
    else:
        k = data.draw(st.integers(1, min(4, E)), label="k")
        seed = data.draw(st.integers(0, 1000), label="seed")
    rng = np.random.default_rng(seed)
    probs = rng.integers(0, levels, size=(N, E)) * ((1 << 15) // levels)
    out = run_route(probs, k, lanes, seed=seed, sim_args=sim_args)
    _check(probs, k, out)


def run_topk(probs, k, lanes, *, seed, sim_args, p_idle, p_stall):
    """Simulate TopK alone (bubbles on ``i``, stalls on ``o``); return its (idx, score) rows."""
    N, E = probs.shape
    dut = TopK(num_experts=E, k=k, lanes=lanes)
    beats = _beats(probs, lanes)
    rows = []

    async def producer(ctx):
        await put_all(ctx, dut.i, beats, rng=random.Random(seed), p_idle=p_idle)

    async def consumer(ctx):
        for r in await get_n(ctx, dut.o, N, rng=random.Random(seed + 1), p_stall=p_stall):
            rows.append(([int(v) for v in r.idx], [int(v) for v in r.score]))

    run_sim(dut, [producer, consumer], background=[
        partial(check_stream_rules, stream=dut.i, name="probs"),
        partial(check_stream_rules, stream=dut.o, name="routes"),
    ], deadline_cycles=20 * (len(beats) + N) + 50, **sim_args)
    return rows


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), E=st.integers(1, 64), lanes=st.sampled_from([1, 3, 4, 8, 16]),
       N=st.integers(1, 8), levels=st.sampled_from([1, 3, 1 << 16]))
@example(data=None, E=16, lanes=16, N=8, levels=3)
def test_topk_back_pressure(data, E, lanes, N, levels, sim_args):
    """TopK alone under bubbles and stalls, signed scores (negatives and ties included): each
    row's routing equals golden.qref.topk, in row order."""
    if data is None:
        k, seed, p_idle, p_stall = 2, 0, 0.3, 0.6
    else:
        k = data.draw(st.integers(1, min(4, E)), label="k")
        seed = data.draw(st.integers(0, 1000), label="seed")
        p_idle = data.draw(st.sampled_from([0.0, 0.3]), label="p_idle")
        p_stall = data.draw(st.sampled_from([0.0, 0.5, 0.8]), label="p_stall")
    rng = np.random.default_rng(seed)
    step = (1 << 16) // levels
    probs = rng.integers(0, levels, size=(N, E)) * step - (1 << 15)
    rows = run_topk(probs, k, lanes, seed=seed, sim_args=sim_args, p_idle=p_idle,
                    p_stall=p_stall)
    idx, scores = qref.topk(probs, k)
    assert rows == [([int(v) for v in i], [int(v) for v in s]) for i, s in zip(idx, scores)]


@pytest.mark.parametrize("E, lanes, latency", [(16, 16, 3), (4, 8, 3), (16, 8, 4), (5, 3, 4)])
def test_topk_latency(E, lanes, latency, sim_args):
    """The routing is on ``o`` ``latency`` cycles after the row's last beat, and the unit takes
    a beat every cycle while ``o`` is taken."""
    probs = np.arange(2 * E).reshape(2, E)
    dut = TopK(num_experts=E, k=1, lanes=lanes)
    beats = _beats(probs, lanes)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        ticks = ctx.tick().sample(dut.i.ready, dut.o.valid).__aiter__()
        cycle = 0
        ctx.set(dut.i.valid, 1)
        for b in beats:
            ctx.set(dut.i.payload, b)
            _, _, ready, _ = await ticks.__anext__()
            assert ready
            cycle += 1
        ctx.set(dut.i.valid, 0)
        while "out" not in seen or len(seen["out"]) < 2:
            _, _, _, valid = await ticks.__anext__()
            cycle += 1
            if valid:
                seen.setdefault("out", []).append(cycle)

    run_sim(dut, [tb], deadline_cycles=100, **sim_args)
    assert dut.latency == latency
    nb = len(beats) // 2
    assert seen["out"] == [nb + latency, 2 * nb + latency]
