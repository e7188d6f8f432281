# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of the systolic array and its parts: configuration, PE, skew, mesh, SystolicArray.

The array is checked against exact integer products (``X·Wᵀ`` per tile, NumPy) under random
bubbles on both inputs and random stalls on the output, with the stream-rule checker on every
stream; its latency is measured and compared with the composed ``latency`` property.
"""

import random
from functools import partial

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed, unsigned

from golden.numerics import DEFAULT_NUMERICS
from hdl.systolic.array import SystolicArray
from hdl.systolic.config import ArrayConfig, ComputeConfig
from hdl.systolic.pe import PE, weight_packet_layout, x_lane_layout
from hdl.systolic.skew import Skew
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n, put_all


# -- configuration -----------------------------------------------------------------------------


def test_array_config_defaults_from_numerics():
    cfg = ArrayConfig(16, 16)
    nx = DEFAULT_NUMERICS
    assert cfg.a_bits == 16 and cfg.w_bits == 16 and cfg.acc_bits == nx.acc_bits == 48
    assert cfg.n_pes == 256
    assert cfg.buffer_lanes == 16
    assert ArrayConfig(2, 3).buffer_lanes == 6
    assert cfg.row_delays == tuple(range(16))
    mesh = ArrayConfig(4, 4, grid_rows=2, grid_cols=2, mesh_regs=1)
    assert mesh.row_delays == (0, 1, 3, 4) and mesh.col_delays == (0, 1, 3, 4)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(rows=0, cols=4), ValueError, r"rows must be a positive integer, not 0"),
    (dict(rows=4, cols=-2), ValueError, r"cols must be a positive integer, not -2"),
    (dict(rows=2.5, cols=4), TypeError, r"rows must be a positive integer, not 2\.5"),
    (dict(rows=True, cols=4), TypeError, r"rows must be a positive integer, not True"),
    (dict(rows=4, cols=4, a_bits=28), ValueError, r"a_bits \(28\) is wider than a DSP48E2"),
    (dict(rows=4, cols=4, w_bits=19), ValueError, r"w_bits \(19\) is wider than a DSP48E2"),
    (dict(rows=4, cols=4, acc_bits=49), ValueError, r"wider than a DSP48E2's 48-bit"),
    (dict(rows=4, cols=4, a_bits=12), ValueError, r"narrower than the widest X operand"),
    (dict(rows=4, cols=4, w_bits=8), ValueError, r"narrower than the widest W operand"),
    (dict(rows=4, cols=4, grid_rows=8), ValueError, r"larger than the array"),
    (dict(rows=4, cols=4, mesh_regs=-1), ValueError, r"mesh_regs must be an integer ≥ 0"),
    (dict(rows=4, cols=4, numerics="x"), TypeError, r"numerics must be a golden"),
    (dict(rows=4, cols=4, load_words=3), ValueError,
     r"load_words must be an integer in the range 1\.\.2, not 3"),
    (dict(rows=4, cols=4, load_words=2.0), TypeError, r"load_words must be an integer"),
    (dict(rows=4, cols=3, load_words=2), ValueError, r"rows and cols must be even, not 4×3"),
])
def test_array_config_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ArrayConfig(**kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(max_m=0), ValueError, r"max_m must be a positive integer, not 0"),
    (dict(max_k=-5), ValueError, r"max_k must be a positive integer, not -5"),
    (dict(max_n=1.0), TypeError, r"max_n must be a positive integer, not 1\.0"),
    (dict(max_k=(1 << 16) + 1), ValueError, r"max_k \(65537\) is above 65536"),
    (dict(abuf_depth=0), ValueError, r"abuf_depth must be a positive integer"),
    (dict(gelu=1), TypeError, r"gelu must be a bool"),
])
def test_compute_config_refuses(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ComputeConfig(ArrayConfig(2, 2), **kwargs)
    with pytest.raises(TypeError, match=r"array must be an ArrayConfig"):
        ComputeConfig((2, 2))


def test_compute_config_check_shape():
    cfg = ComputeConfig(ArrayConfig(2, 2), max_m=4, max_k=5, max_n=6)
    cfg.check_shape(4, 5, 6)
    with pytest.raises(ValueError, match=r"M must be a positive integer, not 0"):
        cfg.check_shape(0, 1, 1)
    with pytest.raises(ValueError, match=r"K = 6 is above the configured maximum max_k = 5"):
        cfg.check_shape(1, 6, 1)
    with pytest.raises(ValueError, match=r"N must be a positive integer, not -1"):
        cfg.check_shape(1, 1, -1)


# -- PE ------------------------------------------------------------------------------------------


def _pe_harness(cfg, row=1, col=1):
    x = Signal(x_lane_layout(cfg))
    psum = Signal(signed(cfg.acc_bits))
    wp_n = Signal(weight_packet_layout(cfg))
    wp_w = Signal(weight_packet_layout(cfg))
    pe = PE(cfg, row, col, x_w=x, psum_n=psum, wp_n=wp_n, wp_w=wp_w)
    m = Module()
    m.submodules.pe = pe
    return m, pe, x, psum, wp_n, wp_w


def test_pe_mac_swap_and_latency():
    cfg = ArrayConfig(2, 2)
    m, pe, x, psum, wp_n, wp_w = _pe_harness(cfg, row=1, col=0)
    out = {}

    async def tb(ctx):
        # Row-load packet for row 1 (this PE) from the north: shadow ← −7.
        ctx.set(wp_n, {"valid": 1, "row": 1, "index": 1, "data": -7})
        await ctx.tick()
        ctx.set(wp_n, {"valid": 0, "row": 0, "index": 0, "data": 0})
        assert not ctx.get(pe.o.wp_s.valid)         # consumed, not forwarded
        assert not ctx.get(pe.o.wp_e.valid)
        # Column-load packet for column 1 from the west: not ours, forwarded east in transit.
        ctx.set(wp_w, {"valid": 1, "row": 0, "index": 1, "data": 5})
        await ctx.tick()
        ctx.set(wp_w, {"valid": 0, "row": 0, "index": 0, "data": 0})
        assert ctx.get(pe.o.wp_e.valid) and ctx.get(pe.o.wp_e.data) == 5
        assert not ctx.get(pe.o.wp_s.valid)
        await ctx.tick()
        assert not ctx.get(pe.o.wp_e.valid)
        # X rows: the first swaps the shadow in; psum = psum_n + x·w after LATENCY cycles.
        seq = [(3, 1, 100), (-4, 0, 0), (32767, 0, -1)]
        results = []
        for t in range(len(seq) + PE.LATENCY):
            xv, first, pn = seq[t] if t < len(seq) else (0, 0, 0)
            ctx.set(x, {"data": xv, "first": first})
            # psum_n must carry this row's partial one cycle before the PE adds it, i.e. two
            # cycles after its X (the PE to the north saw the same row a cycle earlier).
            if t >= 2 and t - 2 < len(seq):
                ctx.set(psum, seq[t - 2][2])
            await ctx.tick()
            results.append(ctx.get(pe.o.psum))
        out["psums"] = [results[i + PE.LATENCY - 1] for i in range(len(seq))]

    run_sim(m, [tb])
    assert out["psums"] == [100 + 3 * -7, 0 + -4 * -7, -1 + 32767 * -7]


def test_pe_refuses_bad_position_and_inputs():
    cfg = ArrayConfig(2, 2)
    ok = dict(x_w=Signal(x_lane_layout(cfg)), psum_n=Signal(signed(48)),
              wp_n=Signal(weight_packet_layout(cfg)), wp_w=Signal(weight_packet_layout(cfg)))
    with pytest.raises(ValueError, match=r"PE \(2, 0\) is outside the 2×2 array"):
        PE(cfg, 2, 0, **ok)
    with pytest.raises(TypeError, match=r"x_w is 3 bits wide"):
        PE(cfg, 0, 0, **{**ok, "x_w": Signal(3)})


# -- skew ------------------------------------------------------------------------------------


def test_skew_delays_each_lane():
    dut = Skew(unsigned(8), [0, 2, 1, 3])
    assert dut.latency == 3 and dut.registers == 6
    seen = []

    async def tb(ctx):
        for t in range(8):
            ctx.set(dut.i, [10 * t + k for k in range(4)])
            await ctx.delay(1e-9)
            seen.append([ctx.get(dut.o[k]) for k in range(4)])
            await ctx.tick()

    run_sim(dut, [tb])
    for t in range(3, 8):
        assert seen[t] == [10 * t, 10 * (t - 2) + 1, 10 * (t - 1) + 2, 10 * (t - 3) + 3]


def test_skew_refuses():
    with pytest.raises(ValueError, match=r"non-negative"):
        Skew(unsigned(1), [0, -1])
    with pytest.raises(ValueError, match=r"at least one lane"):
        Skew(unsigned(1), [])


# -- the array ---------------------------------------------------------------------------------


def _tiles(cfg, rng, n_tiles, m_rows, modes):
    """Random weight tiles W (cols × rows: W[c, r] sits in PE (r, c)), X rows, load words.

    ``modes``: per tile ``"row"`` or ``"column"`` (plain words), ``"row2"`` or ``"column2"``
    (pair words), ``"row_mixed"`` or ``"column_mixed"`` (pairs and plain words at random, a
    pair always at an even position); pair modes need ``load_words = 2``.
    """
    R, C = cfg.rows, cfg.cols
    words, rows, ref = [], [], []
    for t in range(n_tiles):
        w = rng.integers(-2 ** 15, 2 ** 15, (C, R))
        x = rng.integers(-2 ** 15, 2 ** 15, (m_rows[t], R))
        pad = lambda v: [int(a) for a in v] + [int(a) for a in
                                               rng.integers(-9, 9, cfg.w_lanes - len(v))]
        row = modes[t].startswith("row")
        vecs = [w[:, r] for r in range(R)] if row else [w[c, :] for c in range(C)]
        i = 0
        while i < len(vecs):
            pair = (modes[t].endswith("2") or (modes[t].endswith("mixed")
                                               and rng.integers(0, 2) == 1)) and i % 2 == 0
            word = {"data": pad(vecs[i]), "row": int(row)}
            if cfg.load_words == 2:
                # A plain word's second half is junk the array must ignore.
                word["data"] += pad(vecs[i + 1]) if pair else pad([])
                word["pair"] = int(pair)
            words.append(word)
            i += 2 if pair else 1
        for i in range(m_rows[t]):
            rows.append({"data": [int(v) for v in x[i]], "first": int(i == 0),
                         "tag": len(rows) % 256})
        ref.append(x @ w.T)
    return words, rows, np.concatenate(ref)


@pytest.mark.parametrize("shape, mesh", [
    ((2, 2), {}), ((2, 3), {}), ((3, 2), {}), ((1, 1), {}),
    ((4, 4), dict(grid_rows=2, grid_cols=2, mesh_regs=1)),
    ((4, 3), dict(grid_rows=3, grid_cols=2, mesh_regs=2)),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_array_random_traffic(shape, mesh, seed, sim_args):
    cfg = ArrayConfig(*shape, **mesh)
    rng = np.random.default_rng(seed)
    n_tiles = 5
    m_rows = [int(v) for v in rng.integers(1, 7, n_tiles)]
    modes = [("row", "column")[int(v)] for v in rng.integers(0, 2, n_tiles)]
    _random_traffic(cfg, rng, m_rows, modes, seed, sim_args)


@pytest.mark.parametrize("shape, mesh", [
    ((2, 2), {}), ((4, 2), {}), ((2, 6), {}),
    ((4, 4), dict(grid_rows=2, grid_cols=2, mesh_regs=1)),
    ((6, 4), dict(grid_rows=3, grid_cols=2, mesh_regs=2)),
])
def test_array_pair_loads(shape, mesh, sim_args):
    """``load_words = 2``: tiles of pair words, plain words and both mixed, in both
    directions, under random bubbles and stalls, give exact products."""
    cfg = ArrayConfig(*shape, **mesh, load_words=2)
    rng = np.random.default_rng(sum(shape))
    modes = ["column2", "row2", "column", "row_mixed", "column_mixed", "row", "column2"]
    m_rows = [int(v) for v in rng.integers(1, 6, len(modes))]
    words = _random_traffic(cfg, rng, m_rows, modes, 1, sim_args)
    assert any(w["pair"] for w in words) and not all(w["pair"] for w in words)


def _random_traffic(cfg, rng, m_rows, modes, seed, sim_args):
    """Run random tiles through an array with bubbles on ``x``/``w`` and stalls on ``o``, the
    stream rules checked; the results and tags must be exact. Returns the load words."""
    dut = SystolicArray(cfg, tag_shape=unsigned(8))
    words, rows, ref = _tiles(cfg, rng, len(modes), m_rows, modes)
    out = {}

    async def w_tb(ctx):
        await put_all(ctx, dut.w, words, rng=random.Random(seed), p_idle=0.4)

    async def x_tb(ctx):
        await put_all(ctx, dut.x, rows, rng=random.Random(seed + 1), p_idle=0.3)

    async def o_tb(ctx):
        out["o"] = await get_n(ctx, dut.o, len(rows), rng=random.Random(seed + 2), p_stall=0.4)

    run_sim(dut, [w_tb, x_tb, o_tb],
            background=[partial(check_stream_rules, stream=s, name=n)
                        for n, s in (("x", dut.x), ("w", dut.w), ("o", dut.o))],
            deadline_cycles=5000, **sim_args)
    got = np.array([[int(v) for v in o.data] for o in out["o"]])
    assert np.array_equal(got, ref)
    assert [int(o.tag) for o in out["o"]] == [r["tag"] for r in rows]
    return words


@pytest.mark.parametrize("shape, load_words, modes", [
    ((2, 3), 1, ["column", "row", "column"]),
    ((4, 4), 1, ["column", "row", "column"]),
    ((4, 4), 2, ["column2", "row2", "column2"]),
    ((4, 6), 2, ["row2", "column2", "row2"]),
])
def test_array_latency_and_full_rate(shape, load_words, modes, sim_args):
    """Without back pressure the first result comes exactly ``latency`` cycles after its row,
    and a tile of M ≥ words rows follows the previous one with no gap (weights preloaded)."""
    cfg = ArrayConfig(*shape, load_words=load_words)
    dut = SystolicArray(cfg, backpressure=False)
    assert dut.latency == (cfg.rows - 1 + 1) + PE.LATENCY + (cfg.cols - 1 + 1)
    rng = np.random.default_rng(3)
    # A tile of pairs loads in half the words: passes of w_lanes / 2 rows follow back to back.
    m_rows = [max(cfg.rows, cfg.cols) // load_words] * 3
    words, rows, ref = _tiles(cfg, rng, 3, m_rows, modes)
    rows = [{**r, "tag": 0} for r in rows]
    marks = {"x": [], "o": []}
    got = []

    async def w_tb(ctx):
        await put_all(ctx, dut.w, words)

    async def x_tb(ctx):
        await put_all(ctx, dut.x, rows)

    async def monitor(ctx):
        cycle = 0
        async for _, _, xv, xr, ov, od in ctx.tick().sample(dut.x.valid, dut.x.ready,
                                                            dut.o.valid, dut.o.payload.data):
            if xv and xr:
                marks["x"].append(cycle)
            if ov:
                marks["o"].append(cycle)
                got.append([int(v) for v in od])
            cycle += 1

    async def wait(ctx):
        await ctx.tick().repeat(len(rows) + len(words) + dut.latency + 10)

    run_sim(dut, [w_tb, x_tb, wait], background=[monitor], **sim_args)
    assert np.array_equal(np.array(got), ref)
    assert [o - x for x, o in zip(marks["x"], marks["o"])] == [dut.latency] * len(rows)
    # Tiles after the first start right after the previous one: no cycle lost to loading.
    assert marks["x"][-1] - marks["x"][m_rows[0]] == sum(m_rows[1:]) - 1
