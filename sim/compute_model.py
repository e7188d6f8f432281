# SPDX-License-Identifier: BSD-2-Clause
"""Drive :class:`hdl.systolic.unit.ComputeUnit` in simulation: operand placement, stream words,
the command/status handshake, and the reference from :func:`golden.qref.linear`.

Tests and ``python -m sim.bench matmul`` share this one driver:

* X (and W for attention products, and the old output for accumulation) are written straight
  into the unit's activation buffer with ``ctx.set`` on the memory's data, as the top would have
  left them there;
* weights, biases, row scales and row offsets go through the unit's ``w``, ``b``, ``s`` and ``r``
  streams, with optional random bubbles;
* ``done`` is taken with optional random stalls, and the cycles from the ``cmd`` transfer to
  ``done.valid`` are counted.

Lanes that the unit must ignore (X beyond K, weights beyond K or N, buffer words beyond a
matrix row) are filled with random garbage, and the output region's padding lanes are checked to
be left alone.
"""

import random
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from golden import qref
from golden.fixed import QFormat

from .streams import check_stream_rules, put_all

__all__ = ["Product", "ComputeDriver", "weight_words", "bias_words", "pack_row", "unpack_row",
           "write_matrix", "read_matrix", "random_operand", "product_for"]


@dataclass
class Product:
    """One matrix product for the unit: ``Y = X·Wᵀ + b``, then the epilogue.

    ``w_source`` is ``"stream"`` (weights on the ``w`` stream), ``"abuf"`` (W stored ``(N, K)``
    in the activation buffer: the keys of Q·Kᵀ) or ``"abuf_t"`` (W stored transposed, ``(K, N)``:
    the values V of A·V, ``W = Vᵀ``).

    ``row_map`` (``M`` distinct row indices below ``map_rows``) with ``gather`` and/or
    ``scatter``: X row ``m`` is row ``row_map[m]`` of a stored matrix of ``map_rows`` rows,
    and/or output row ``m`` goes to (and accumulates into) row ``row_map[m]`` of one; the other
    stored rows hold garbage that the product must leave alone (the MoE experts' tokens).
    """

    x: np.ndarray
    w: np.ndarray
    x_fmt: QFormat
    w_fmt: QFormat
    out_fmt: QFormat
    bias: np.ndarray = None
    gelu: bool = False
    row_scale: np.ndarray = None
    accumulate: np.ndarray = None
    w_source: str = "stream"
    extra_stride: int = 0              # words of gap between matrix rows (exercises strides)
    row_map: np.ndarray = None
    map_rows: int = 0
    gather: bool = False
    scatter: bool = False
    result: dict = field(default_factory=dict)

    @property
    def shape(self):
        """``(M, K, N)``."""
        return self.x.shape[0], self.x.shape[1], self.w.shape[0]

    def expected(self, numerics):
        """The twin's result (:func:`golden.qref.linear`)."""
        return qref.linear(self.x, self.w, self.bias, x_fmt=self.x_fmt, w_fmt=self.w_fmt,
                           out_fmt=self.out_fmt, numerics=numerics, gelu=self.gelu,
                           row_scale=self.row_scale, accumulate=self.accumulate)


def _garbage(rng, n, bits):
    return [rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1)) for _ in range(n)]


def weight_words(unit, w, rng=None):
    """The ``w`` stream words of the weight matrix ``w`` (N, K): N-tile outer, K-tile inner,
    ``cols`` words per tile, word ``c`` = ``w[n0 + c, k0 : k0 + rows]``. Lanes beyond the
    matrix hold random garbage when ``rng`` is given (zeros otherwise). With
    ``array.load_words = 2`` each stream word is two of them (words ``c`` and ``c + 1``)."""
    a = unit.config.array
    R, C = a.rows, a.cols
    n_rows, k = w.shape
    words = []
    for n0 in range(0, n_rows, C):
        for k0 in range(0, k, R):
            for c in range(C):
                lanes = _garbage(rng, R, a.w_bits) if rng else [0] * R
                if n0 + c < n_rows:
                    seg = w[n0 + c, k0:k0 + R]
                    lanes[:len(seg)] = [int(v) for v in seg]
                words.append(lanes)
    if a.load_words == 2:
        words = [words[i] + words[i + 1] for i in range(0, len(words), 2)]
    return words


def bias_words(unit, b):
    """The ``b`` stream words: one per N-tile, ``b[n0 : n0 + cols]`` (zero-padded)."""
    C = unit.config.array.cols
    out = []
    for n0 in range(0, len(b), C):
        seg = [int(v) for v in b[n0:n0 + C]]
        out.append(seg + [0] * (C - len(seg)))
    return out


def pack_row(values, lanes, width):
    """Activation-buffer words (ints) holding one row of ``values``: ``lanes`` elements of
    ``width`` bits each, element ``j`` of a word at bits ``j·width``; a partial last word is zero
    past the row."""
    mask = (1 << width) - 1
    words = []
    for w in range(-(-len(values) // lanes)):
        v = 0
        for j, e in enumerate(values[w * lanes:(w + 1) * lanes]):
            v |= (int(e) & mask) << (j * width)
        words.append(v)
    return words


def unpack_row(words, n, lanes, width):
    """The first ``n`` signed elements of the words (ints) :func:`pack_row` makes."""
    out = []
    for v in words:
        for j in range(lanes):
            e = (v >> (j * width)) & ((1 << width) - 1)
            out.append(e - (1 << width) if e >> (width - 1) else e)
    return out[:n]


def write_matrix(ctx, unit, base, stride, mat, rng=None):
    """Write ``mat`` into the activation buffer, row ``i`` at word ``base + i·stride``; lanes
    beyond the last column get random garbage when ``rng`` is given."""
    a = unit.config.array
    L = a.buffer_lanes
    rows, cols = mat.shape
    wpr = -(-cols // L)
    for i in range(rows):
        for j in range(wpr):
            lanes = _garbage(rng, L, a.elem_bits) if rng else [0] * L
            seg = mat[i, j * L:(j + 1) * L]
            lanes[:len(seg)] = [int(v) for v in seg]
            ctx.set(unit.abuf_word(base + i * stride + j), lanes)


def read_matrix(ctx, unit, base, stride, rows, cols, *, full=False):
    """Read a ``rows × cols`` matrix from the activation buffer (``full``: whole words)."""
    L = unit.config.array.buffer_lanes
    wpr = -(-cols // L)
    out = np.zeros((rows, wpr * L if full else cols), dtype=np.int64)
    for i in range(rows):
        row = []
        for j in range(wpr):
            word = ctx.get(unit.abuf_word(base + i * stride + j))
            row.extend(int(v) for v in word)
        out[i] = row if full else row[:cols]
    return out


def random_operand(rng, shape, fmt, *, magnitude_bits=None):
    """Random integers of ``fmt``: uniform over the whole format, or within
    ``±2**magnitude_bits`` (clipped to the format) to keep sums away from saturation."""
    lo, hi = fmt.min_int, fmt.max_int
    if magnitude_bits is not None:
        lo, hi = max(lo, -(1 << magnitude_bits)), min(hi, (1 << magnitude_bits) - 1)
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64)


def product_for(kind, m, k, n, numerics, rng, *, magnitude=None):
    """A random product of one of the model's kinds, with the twin's formats.

    ``kind``: ``"qkv"`` (ln_out·weight → qkv, bias), ``"fc1"`` (ln_out·weight → hidden, bias,
    GELU), ``"fc2"`` (hidden·weight → act, bias, accumulate: the residual add), ``"expert_fc2"``
    (hidden·weight → act, bias, row scale, accumulate), ``"qk"`` (qkv·qkv → score, W = K from
    the buffer), ``"av"`` (prob·qkv → act, W = Vᵀ from the buffer, transposed), ``"patch"``
    (pixel·weight → act, bias, accumulate: the positional embedding), ``"router"``
    (ln_out·weight → logit), ``"proj"`` (act·weight → act, bias, accumulate).
    ``magnitude``: bits of the operands' random magnitude (``None``: a random choice).
    """
    nx = numerics
    spec = {
        "qkv": (nx.ln_out, nx.weight, nx.qkv, dict(bias=True)),
        "fc1": (nx.ln_out, nx.weight, nx.hidden, dict(bias=True, gelu=True)),
        "fc2": (nx.hidden, nx.weight, nx.act, dict(bias=True, accumulate=True)),
        "expert_fc2": (nx.hidden, nx.weight, nx.act,
                       dict(bias=True, row_scale=True, accumulate=True)),
        "qk": (nx.qkv, nx.qkv, nx.score, dict(w_source="abuf")),
        "av": (nx.prob, nx.qkv, nx.act, dict(w_source="abuf_t")),
        "patch": (nx.pixel, nx.weight, nx.act, dict(bias=True, accumulate=True)),
        "router": (nx.ln_out, nx.weight, nx.logit, {}),
        "proj": (nx.act, nx.weight, nx.act, dict(bias=True, accumulate=True)),
    }[kind]
    x_fmt, w_fmt, out_fmt, opts = spec

    def mag(fmt):
        if magnitude is not None:
            return min(magnitude, fmt.width - 1)
        return int(rng.integers(fmt.width // 2, fmt.width))

    x = random_operand(rng, (m, k), x_fmt, magnitude_bits=mag(x_fmt))
    if kind == "av":          # probabilities are non-negative
        x = np.abs(x).clip(0, x_fmt.max_int)
    w = random_operand(rng, (n, k), w_fmt, magnitude_bits=mag(w_fmt))
    p = Product(x, w, x_fmt, w_fmt, out_fmt, w_source=opts.get("w_source", "stream"),
                gelu=opts.get("gelu", False))
    if opts.get("bias"):
        p.bias = random_operand(rng, (n,), nx.bias, magnitude_bits=mag(nx.bias))
    if opts.get("row_scale"):
        p.row_scale = rng.integers(0, nx.prob.max_int + 1, size=(m,), dtype=np.int64)
    if opts.get("accumulate"):
        p.accumulate = random_operand(rng, (m, n), out_fmt, magnitude_bits=mag(out_fmt))
    return p


class ComputeDriver:
    """Run a sequence of products on a :class:`~hdl.systolic.unit.ComputeUnit` in one
    simulation.

    Parameters
    ----------
    unit : ComputeUnit
    products : list of Product
        Run in order; each ``Product.result`` receives ``y``, ``cycles``, ``error`` and
        ``padding_ok`` (output padding lanes untouched).
    seed : int
        Seed of the garbage lanes, the bubbles and the stalls.
    p_idle : float
        Probability of a bubble before each word on ``cmd``, ``w``, ``b`` and ``s``.
    p_stall : float
        Probability that ``done.ready`` is low in a cycle.
    lead_cycles : int
        Cycles before the first command (lets the weight queue fill, as a running DMA would).
    garbage : bool
        Fill don't-care lanes with random values (otherwise zeros).
    commands : list of dict or None
        Raw ``cmd`` payloads to send instead of building them (for error tests); their products
        are ignored.
    check : bool
        Run the stream-rule checkers (and the array-edge check) as background testbenches.
    """

    def __init__(self, unit, products, *, seed=0, p_idle=0.0, p_stall=0.0, lead_cycles=0,
                 garbage=True, commands=None, check=True):
        self.unit = unit
        self.products = list(products)
        self.seed = seed
        self.p_idle = p_idle
        self.p_stall = p_stall
        self.lead_cycles = lead_cycles
        self.garbage = garbage
        self.raw_commands = commands
        self.check = check
        self._plan = [self._place(p) for p in self.products]

    # -- placement --------------------------------------------------------------------------

    def _place(self, p):
        unit = self.unit
        m, k, n = p.shape
        wpr = unit.words_per_row
        if (p.gather or p.scatter) != (p.row_map is not None):
            raise ValueError("a row map goes with gather or scatter, and they need one")
        x_stride = wpr(k) + p.extra_stride
        y_stride = wpr(n) + p.extra_stride
        if p.gather and p.scatter:          # one offset list for both
            x_stride = y_stride = max(x_stride, y_stride)
        x_base = 0
        nxt = x_base + (p.map_rows if p.gather else m) * x_stride
        w_base, w_stride = 0, None
        if p.w_source != "stream":
            trans = p.w_source == "abuf_t"
            w_stride = wpr(n if trans else k) + p.extra_stride
            w_base = nxt
            nxt = w_base + (k if trans else n) * w_stride
        y_base = nxt
        cmd = unit.command(
            m, k, n, x_fmt=p.x_fmt, w_fmt=p.w_fmt, out_fmt=p.out_fmt,
            x_base=x_base, x_stride=x_stride, y_base=y_base, y_stride=y_stride,
            w_from_abuf=p.w_source != "stream", w_base=w_base, w_stride=w_stride,
            w_transposed=p.w_source == "abuf_t", gather=p.gather, scatter=p.scatter,
            bias=p.bias is not None, gelu=p.gelu, row_scale=p.row_scale is not None,
            accumulate=p.accumulate is not None)
        return cmd

    @staticmethod
    def row_offsets(p, cmd):
        """The ``r`` stream of a product with a row map: ``row_map[m]`` rows of the stride."""
        stride = cmd["x_stride"] if p.gather else cmd["y_stride"]
        return [int(i) * stride for i in p.row_map]

    def formula_cycles(self, p):
        """:meth:`ComputeUnit.cycles` for one product."""
        m, k, n = p.shape
        return self.unit.cycles(m, k, n, w_transposed=p.w_source == "abuf_t",
                                w_from_abuf=p.w_source != "stream",
                                bias=p.bias is not None, row_scale=p.row_scale is not None)

    # -- testbenches ------------------------------------------------------------------------

    def testbenches(self):
        """``(testbenches, background)`` for :func:`sim.harness.run_sim`."""
        unit = self.unit
        seed = self.seed
        w_words, b_words, s_values, r_values = [], [], [], []
        if self.raw_commands is None:
            rng = random.Random(seed ^ 0x5EED) if self.garbage else None
            for p, cmd in zip(self.products, self._plan):
                if p.row_map is not None:
                    r_values += self.row_offsets(p, cmd)
                if p.w_source == "stream":
                    w_words += weight_words(unit, p.w, rng)
                if p.bias is not None:
                    b_words += bias_words(unit, p.bias)
                if p.row_scale is not None:
                    s_values += [int(v) for v in p.row_scale]

        async def w_feeder(ctx):
            await put_all(ctx, unit.w, w_words, rng=random.Random(seed + 1), p_idle=self.p_idle)

        async def b_feeder(ctx):
            await put_all(ctx, unit.b, b_words, rng=random.Random(seed + 2), p_idle=self.p_idle)

        async def s_feeder(ctx):
            await put_all(ctx, unit.s, s_values, rng=random.Random(seed + 3), p_idle=self.p_idle)

        async def r_feeder(ctx):
            await put_all(ctx, unit.r, r_values, rng=random.Random(seed + 4), p_idle=self.p_idle)

        main = partial(self._main, w_words=w_words)
        benches = [main]
        for words, tb in ((w_words, w_feeder), (b_words, b_feeder), (s_values, s_feeder),
                          (r_values, r_feeder)):
            if words:
                benches.append(tb)
        background = [partial(check_stream_rules, stream=s, name=name) for name, s in
                      (("cmd", unit.cmd), ("w", unit.w), ("b", unit.b), ("s", unit.s),
                       ("r", unit.r), ("done", unit.done), ("array.x", unit.array.x),
                       ("array.w", unit.array.w))]
        background.append(self._array_edge_check)
        return benches, (background if self.check else [])

    @staticmethod
    def _stored(p, mat, fmt, mapped, rng):
        """``mat`` as stored: itself, or with a row map its rows at ``row_map`` of a
        ``map_rows``-row matrix whose other rows are random values of ``fmt``."""
        if not mapped:
            return mat
        seed = rng.randrange(1 << 30) if rng else 0
        full = random_operand(np.random.default_rng(seed), (p.map_rows, mat.shape[1]), fmt)
        full[np.asarray(p.row_map)] = mat
        return full

    async def _array_edge_check(self, ctx):
        """Inside the unit the array's edges must never refuse: the sequencer schedules
        exactly by the array's rule, so ``valid`` implies ``ready`` on ``x`` and ``w``."""
        a = self.unit.array
        async for _, rst, xv, xr, wv, wr in ctx.tick().sample(a.x.valid, a.x.ready,
                                                              a.w.valid, a.w.ready):
            if rst:
                continue
            assert not (xv and not xr), "array.x refused a row: the sequencer broke the rule"
            assert not (wv and not wr), "array.w refused a word: the sequencer broke the rule"

    async def _main(self, ctx, w_words):
        unit = self.unit
        rng = random.Random(self.seed)
        grng = random.Random(self.seed ^ 0xA5A5) if self.garbage else None
        for _ in range(self.lead_cycles):
            await ctx.tick()
        jobs = (self.raw_commands if self.raw_commands is not None
                else list(zip(self._plan, self.products)))
        for job in jobs:
            cmd, p = (job, None) if self.raw_commands is not None else job
            if p is not None:
                m, k, n = p.shape
                write_matrix(ctx, unit, cmd["x_base"], cmd["x_stride"],
                             self._stored(p, p.x, p.x_fmt, p.gather, grng), grng)
                if p.w_source == "abuf":
                    write_matrix(ctx, unit, cmd["w_base"], cmd["w_stride"], p.w, grng)
                elif p.w_source == "abuf_t":
                    write_matrix(ctx, unit, cmd["w_base"], cmd["w_stride"], p.w.T, grng)
                old = p.accumulate if p.accumulate is not None else \
                    np.zeros((m, n), dtype=np.int64)
                y_rows = p.map_rows if p.scatter else m
                write_matrix(ctx, unit, cmd["y_base"], cmd["y_stride"],
                             self._stored(p, old, p.out_fmt, p.scatter, grng), grng)
                before = read_matrix(ctx, unit, cmd["y_base"], cmd["y_stride"], y_rows, n,
                                     full=True)
            # command, with a bubble or two
            while self.p_idle and rng.random() < self.p_idle:
                await ctx.tick()
            ctx.set(unit.cmd.payload, cmd)
            ctx.set(unit.cmd.valid, 1)
            async for _, _, ready in ctx.tick().sample(unit.cmd.ready):
                if ready:
                    break
            ctx.set(unit.cmd.valid, 0)
            # status, with random stalls; cycles counted to the first done.valid
            cycles = None
            ticks = 0
            ready = None
            while True:
                want = 0 if self.p_stall and rng.random() < self.p_stall else 1
                if want != ready:
                    ctx.set(unit.done.ready, want)
                    ready = want
                _, _, valid, payload = await ctx.tick().sample(unit.done.valid,
                                                               unit.done.payload)
                ticks += 1
                if valid and cycles is None:
                    cycles = ticks
                if valid and ready:
                    break
            ctx.set(unit.done.ready, 0)
            if p is not None:
                y_full = read_matrix(ctx, unit, cmd["y_base"], cmd["y_stride"], y_rows, n,
                                     full=True)
                # Padding lanes, and with a scatter the rows outside the map, stay as they were.
                mine = (np.asarray(p.row_map) if p.scatter else np.arange(m))
                others = np.setdiff1d(np.arange(y_rows), mine)
                p.result.update(
                    y=y_full[mine, :n], cycles=cycles, error=payload.error,
                    padding_ok=bool(np.array_equal(y_full[:, n:], before[:, n:])
                                    and np.array_equal(y_full[others], before[others])))
            else:
                self.results_raw = getattr(self, "results_raw", [])
                self.results_raw.append({"cycles": cycles, "error": payload.error})
