# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""The parameter stream reader (hdl.engines.ParamStream) against the compiler's encoder: the
stream stored as interleaved sub-streams, one per AXI port, read a bus word from each per
cycle, unpacked into the weight, bias and LayerNorm-parameter queues."""

import functools
import random

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hdl import isa
from hdl.compiler import _Stream
from hdl.config import get_accel_config
from hdl.engines import ParamStream
from hdl.systolic.config import ArrayConfig
from sim.axi_check import AXI4Checker
from sim.ddr import DDRModel
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n

BASE = 0x3000            # not 4 KiB aligned in its sub-streams: bursts cross pages
DEPTH = 8


def _config(ports):
    # The `small` accelerator (16 × 4 array: 256-bit weight words, two to a `w` word, 128-bit
    # bias words, 8-lane LayerNorm: 256-bit parameter beats) with the stream on `ports` of four
    # 128-bit ports.
    return get_accel_config("small").replace(axi_ports=4, stream_ports=ports)


def _segments(cfg, kinds, rng):
    """A stream of segments of the given kinds (``("w", n, k)``, ``("b", n)``, ``("ln", n)``),
    and the items each queue must deliver, in order."""
    s = _Stream(cfg)
    want = {"w": [], "b": [], "ln": []}
    for kind in kinds:
        if kind[0] == "w":
            _, n, k = kind
            w = [[rng.randrange(-1 << 15, 1 << 15) for _ in range(k)] for _ in range(n)]
            b = [rng.randrange(-1 << 23, 1 << 23) for _ in range(n)] if rng.random() < .5 \
                else None
            s.product(np.array(w), b, "w")
            for seg in s.segments[-2 if b is not None else -1:]:
                want["b" if seg["kind"] == isa.Segment.BIAS else "w"].append(seg)
        else:
            _, n = kind
            g = [rng.randrange(-1 << 15, 1 << 15) for _ in range(n)]
            bt = [rng.randrange(-1 << 15, 1 << 15) for _ in range(n)]
            s.layernorm(g, bt, rng.randrange(1 << 20), "ln")
            want["ln"].append(s.segments[-1])
    raw = s.tobytes()
    return raw, s, want


def _items(raw, seg, bits, word_bytes, per=1):
    """The segment's ``n`` items of ``bits`` from its payload, ``per`` at a time, as
    integers."""
    start = seg["offset"] + word_bytes
    payload = int.from_bytes(raw[start:start + seg["words"] * 16], "little")
    bits *= per
    return [(payload >> (i * bits)) & ((1 << bits) - 1) for i in range(seg["n"] // per)]


def _fields(item, width, count, stride):
    """``count`` signed ``width``-bit fields of ``item``, one every ``stride`` bits."""
    out = []
    for j in range(count):
        v = (item >> (j * stride)) & ((1 << width) - 1)
        out.append(v - ((v >> (width - 1)) << width))
    return out


def run_stream(ports, kinds, *, seed, p_stall, latency=10, sim_args, observe=None,
               corrupt=False, odd=False):
    cfg = _config(ports)
    rng = random.Random(seed)
    raw, s, want = _segments(cfg, kinds, rng)
    word_bytes = cfg.beat_bytes * ports
    if corrupt:
        # The last segment's header claims one stream word more than its payload.
        seg = s.segments[-1]
        hdr = isa.decode_segment_header(raw[seg["offset"]:seg["offset"] + 16])
        if odd:
            # One weight word more, the same stream words: not a whole number of w pairs.
            bad = isa.encode_segment_header(hdr["kind"], hdr["n"] + 1, hdr["words"],
                                            hdr["eps"])
        else:
            bad = isa.encode_segment_header(hdr["kind"], hdr["n"], hdr["words"] + ports,
                                            hdr["eps"])
        raw = raw[:seg["offset"]] + bad + raw[seg["offset"] + 16:]
    image = isa.interleave_stream(raw, ports, cfg.beat_bytes)
    dut = ParamStream(compute=cfg.compute, ln_config=cfg.layernorm, n_ports=ports,
                      addr_width=32, data_width=cfg.axi_data_width, max_burst_beats=16,
                      max_outstanding=4, w_depth=DEPTH)
    ddrs, checkers = [], []
    for j in range(ports):
        bus = getattr(dut, f"bus{j}")
        ddr = DDRModel(bus, size=1 << 20, latency=latency, jitter=3, seed=seed + j,
                       p_addr_stall=0.2 if p_stall else 0.0)
        ddr.write(BASE, image)
        ddrs.append(ddr)
        checkers.append(AXI4Checker(bus, name=f"bus{j}"))
    a = cfg.compute.array
    lanes = cfg.ln_lanes
    pw = cfg.layernorm.param_fmt.width
    lw = a.load_words                     # weight words per w transfer
    n_w = sum(seg["n"] // lw for seg in want["w"])
    n_b = sum(seg["n"] for seg in want["b"])
    n_ln = sum(-(-seg["n"] // lanes) for seg in want["ln"])
    got = {}
    state = {"cycles": 0, "first_w": None, "last_w": None}

    async def go(ctx):
        ctx.set(dut.base, BASE)
        ctx.set(dut.nbytes, len(image))
        ctx.set(dut.go, 1)
        await ctx.tick()
        ctx.set(dut.go, 0)

    def consumer(name, count):
        async def tb(ctx):
            r = random.Random(seed * 7 + len(name))
            got[name] = await get_n(ctx, getattr(dut, name), count, rng=r, p_stall=p_stall)
        return tb

    async def timing(ctx):
        async for _, _, v, r in ctx.tick().sample(dut.w.valid, dut.w.ready):
            state["cycles"] += 1
            if v and r:
                if state["first_w"] is None:
                    state["first_w"] = state["cycles"]
                state["last_w"] = state["cycles"]

    streams = [functools.partial(check_stream_rules, stream=getattr(dut, n), name=n)
               for n in ("w", "b", "ln")]
    if corrupt:
        async def wait_error(ctx):
            await go(ctx)
            for _ in range(4000):
                await ctx.tick()
                if ctx.get(dut.error):
                    return
            raise AssertionError("a bad segment header did not raise error")
        run_sim(dut, [wait_error], background=[d.testbench for d in ddrs]
                + [c.testbench for c in checkers] + streams, deadline_cycles=6000, **sim_args)
        return

    run_sim(dut, [go, consumer("w", n_w), consumer("b", n_b), consumer("ln", n_ln)],
            background=[d.testbench for d in ddrs] + [c.testbench for c in checkers] + streams
            + [timing], deadline_cycles=20000, **sim_args)

    exp_w = [v for seg in want["w"] for v in _items(raw, seg, a.rows * 16, word_bytes, lw)]
    exp_b = [v for seg in want["b"] for v in _items(raw, seg, a.cols * 32, word_bytes)]
    assert len(got["w"]) == len(exp_w) and len(got["b"]) == len(exp_b)
    for i, (g, e) in enumerate(zip(got["w"], exp_w)):
        assert [int(x) for x in g] == _fields(e, 16, a.rows * lw, 16), f"weight word {i}"
    bw = cfg.numerics.bias.width
    for i, (g, e) in enumerate(zip(got["b"], exp_b)):
        assert [int(x) for x in g] == _fields(e, bw, a.cols, 32), f"bias word {i}"
    k = 0
    for seg in want["ln"]:
        start = seg["offset"] + word_bytes
        n = seg["n"]
        beats = -(-n // lanes)
        payload = int.from_bytes(raw[start:start + beats * lanes * 4], "little")
        hdr = isa.decode_segment_header(raw[seg["offset"]:seg["offset"] + 16])
        for t in range(beats):
            beat = got["ln"][k]
            k += 1
            count = min(lanes, n - t * lanes)
            assert int(beat.count) == count and int(beat.last) == (t == beats - 1)
            assert int(beat.eps) == hdr["eps"]
            item = payload >> (t * lanes * 32)
            gamma = _fields(item, pw, lanes, 16)
            beta = _fields(item >> (lanes * 16), pw, lanes, 16)
            for j in range(count):
                assert int(beat.gamma[j]) == gamma[j] and int(beat.beta[j]) == beta[j], \
                    f"LayerNorm beat {k - 1}, lane {j}"
    assert sum(n for c in checkers for _, n in c.read_bursts) == len(image) // cfg.beat_bytes
    if observe is not None:
        observe.update(state, n_w=n_w)


KIND = st.one_of(
    st.tuples(st.just("w"), st.integers(1, 9), st.integers(1, 40)),
    st.tuples(st.just("ln"), st.integers(1, 20)))


@settings(max_examples=10, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ports=st.sampled_from([1, 2, 4]), kinds=st.lists(KIND, min_size=1, max_size=4),
       p_stall=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 99))
@example(ports=2, kinds=[("w", 5, 33), ("ln", 17), ("w", 1, 1)], p_stall=0.3, seed=1)
@example(ports=4, kinds=[("ln", 3), ("w", 9, 40)], p_stall=0.3, seed=2)
def test_param_stream_random(ports, kinds, p_stall, seed, sim_args):
    """Random segments, sub-streams on 1, 2 or 4 ports, random consumer stalls and DDR
    latency: every item in order, AXI and stream rules on every bus and queue, every byte of
    the image read once."""
    run_stream(ports, kinds, seed=seed, p_stall=p_stall, sim_args=sim_args)


@pytest.mark.parametrize("ports", [1, 2, 4])
def test_param_stream_throughput(ports, sim_args):
    """A long weight segment with nothing stalling comes out at the stream's width: ``ports``
    bus words per cycle (a pair of 256-bit weight words every 4/ports cycles), so two ports
    take half the cycles of one."""
    obs = {}
    run_stream(ports, [("w", 16, 160)], seed=5, p_stall=0.0, sim_args=sim_args, observe=obs)
    cfg = _config(ports)
    a = cfg.compute.array
    per_word = a.rows * 16 * a.load_words / cfg.stream_bits     # cycles per w transfer
    span = obs["last_w"] - obs["first_w"] + 1
    assert span <= obs["n_w"] * max(per_word, 1) + 8, (span, obs["n_w"])


@pytest.mark.parametrize("ports", [1, 2])
def test_param_stream_bad_header(ports, sim_args):
    """A segment header whose ``words`` does not match its ``n`` raises ``error``."""
    run_stream(ports, [("w", 2, 8), ("ln", 5)], seed=3, p_stall=0.0, sim_args=sim_args,
               corrupt=True)


def test_param_stream_odd_weight_count(sim_args):
    """With weight words in pairs (``load_words = 2``), a WEIGHT segment of an odd number of
    words raises ``error``."""
    assert _config(2).compute.array.load_words == 2
    run_stream(2, [("w", 2, 8)], seed=4, p_stall=0.0, sim_args=sim_args, corrupt=True,
               odd=True)


def test_param_stream_refuses():
    cfg = _config(1)
    with pytest.raises(ValueError, match="n_ports"):
        ParamStream(compute=cfg.compute, ln_config=cfg.layernorm, n_ports=3, addr_width=32,
                    data_width=128)
    with pytest.raises(ValueError, match="divide"):
        # 12-row weight words (192 bits) against a 2 × 128-bit stream word.
        cc = dataclasses.replace(cfg.compute, array=ArrayConfig(12, 4))
        ParamStream(compute=cc, ln_config=cfg.layernorm, n_ports=2, addr_width=32,
                    data_width=128)
    with pytest.raises(ValueError, match="stream_ports"):
        get_accel_config("small").replace(stream_ports=4)     # two AXI ports only
    with pytest.raises(ValueError, match="stream_ports"):
        get_accel_config("small").replace(axi_ports=4, stream_ports=3)
