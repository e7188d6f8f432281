# SPDX-License-Identifier: BSD-2-Clause
"""The systolic array with stream edges: input skews, the mesh, the output de-skew and the
flow control around them (Gemmini's ``MeshWithDelays.scala``).

Dataflow: weight stationary
---------------------------
PE ``(r, c)`` holds ``W[n0 + c, k0 + r]`` of one ``rows × cols`` weight tile. Each cycle one X
row ``x[m, k0 : k0 + rows]`` enters (skewed: row ``r`` lags by ``d_r`` cycles), and ``latency``
cycles later the ``cols`` partial sums ``Σ_r x[m, k0 + r]·W[n0 + c, k0 + r]`` leave, de-skewed.
M is the streaming dimension: a tile serves as many X rows as the product has, so a pass over
one tile takes ``M`` cycles whatever ``M`` is, and the array does useful work on every cycle of
it, only the K and N edges of a product waste PEs.

Weight loading and the double buffer
------------------------------------
Every PE holds two weights: ``w_active`` (multiplying) and ``w_shadow`` (the next tile). A
weight *word* loads one PE row (a *row load*: ``cols`` weights ``W[n0 : n0 + cols, k]``, the
packets enter the top edge and travel south) or one PE column (a *column load*: ``rows`` weights
``W[n, k0 : k0 + rows]``, the packets enter the west edge and travel east). A tile is ``rows``
row-load words or ``cols`` column-load words, word ``i`` for row/column ``i``. The two load
directions make operand transposition free: a matrix stored as ``(N, K)`` (weights, the keys of
Q·Kᵀ) loads by columns, one stored as ``(K, N)`` (the values of A·V, ``W = Vᵀ``) by rows.

The X row that starts a tile carries ``first``; it swaps ``w_active ← w_shadow`` in every PE as
it passes, so the switch travels diagonally with the data wavefront (as in Gemmini) and no
global control signal crosses the array. Load packets travel with exactly the delays of the X
rows (row ``r`` lags by ``d_r``, column ``c`` by ``h_c``), so PE ``(r, c)`` writes its shadow
``s + d_r + h_c`` cycles after the word entered at cycle ``s``, and swaps ``t0 + d_r + h_c``
after a tile's first row entered at ``t0``. Hence the whole protocol is one rule at the edge:

    every word of tile ``j + 1`` enters at a cycle ``s`` with ``t0(j) ≤ s < t0(j + 1)``,

i.e. after the first row of tile ``j`` and before the first row of tile ``j + 1``. The edge
enforces it: ``w.ready`` falls once a whole tile is loaded and rises again with the next
``first`` row, which waits (``x.ready`` low) until its tile is complete. A tile therefore
occupies ``max(M, words)`` cycles: loading is hidden entirely when ``M ≥ rows`` (or ``cols``).

With ``load_words = 2`` a word may be a *pair*, two rows' (columns') weights in one packet per
lane (:func:`~hdl.systolic.pe.weight_packet_layout`: an even and an odd slot); the PE of the
first takes its weight and lets the packet go on to the second, so the rule above holds
unchanged and a tile of pairs is ``rows/2`` (``cols/2``) words: ``max(M, words)`` halves for
short passes.

Flow control
------------
The mesh has no ready. With ``backpressure=True`` the results go into a queue of ``out_depth``
entries, and ``x`` is admitted only while the rows in flight plus the rows queued leave room
(credits, STYLE §3.4). With ``backpressure=False`` there is no queue: ``o`` is always-ready
(its consumer must take a result every cycle one is valid) and ``x.ready`` only waits for
weights.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .._checks import check_int
from ..stream_util import Queue
from .config import ArrayConfig
from .mesh import Mesh
from .pe import weight_packet_layout, x_lane_layout
from .skew import Skew

__all__ = ["x_layout", "w_layout", "o_layout", "SystolicArray"]


def x_layout(config, tag_shape=unsigned(0)):
    """Payload of the array's X stream: one row of ``rows`` operands, the tile-start flag and a
    user tag that comes back with the result."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(config.a_bits), config.rows),
        "first": 1,
        "tag": tag_shape,
    })


def w_layout(config):
    """Payload of the array's weight stream: one load word of ``max(rows, cols)`` lanes.

    ``row`` set: row load, lanes ``0 … cols−1`` are ``W[n0 + c, k]``; clear: column load, lanes
    ``0 … rows−1`` are ``W[n, k0 + r]``. The word's position in its tile selects the PE row or
    column.

    With ``config.load_words = 2`` the data has ``2·max(rows, cols)`` lanes and a ``pair`` flag:
    a pair word loads two PE rows (columns), the second word's lanes from ``max(rows, cols)``
    on; a plain word (``pair`` clear) uses the first half only. A pair starts at an even PE row
    (column) of its tile.
    """
    fields = {"data": data.ArrayLayout(signed(config.w_bits),
                                       config.w_lanes * config.load_words),
              "row": 1}
    if config.load_words == 2:
        fields["pair"] = 1
    return data.StructLayout(fields)


def o_layout(config, tag_shape=unsigned(0)):
    """Payload of the array's output stream: ``cols`` partial sums and the row's tag."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(config.acc_bits), config.cols),
        "tag": tag_shape,
    })


class SystolicArray(wiring.Component):
    """A ``rows × cols`` weight-stationary systolic array with stream edges.

    ::

                    w ──▶ top skew (h_c) ──▶ row-load packets
                    │                              │
                    └─▶ west skew (d_r) ─┐         ▼
        x ──▶ x skew (d_r) ──────────────┴──▶ [ Mesh rows × cols ] ──▶ de-skew (h_C−1 − h_c) ──▶ o
          └──────────────── tag delay line (latency) ──────────────────────────────────────┘

    Parameters
    ----------
    config : ArrayConfig
    tag_shape : shape-like
        Shape of the tag that travels with each X row to its result.
    backpressure : bool
        Whether ``o`` respects back pressure (result queue and credits) or is always-ready.
    out_depth : int or None
        Result queue depth with back pressure; default ``latency + 2`` (full throughput).

    Members
    -------
    x : In(stream.Signature(x_layout(config, tag_shape)))
        X rows. A row with ``first`` set starts the next weight tile and is accepted only once
        that tile is completely loaded; with back pressure, also only while the result queue
        has room for every row in flight. Other rows are accepted every cycle (without back
        pressure) or while there is room.
    w : In(stream.Signature(w_layout(config)))
        Weight words of the next tile. Ready while the next tile is incomplete, and in the cycle
        where the current tile's ``first`` row is accepted; low once the tile is complete.
        ``w.ready`` depends combinationally on ``x.valid`` (never the reverse).
    o : Out(stream.Signature(o_layout(config, tag_shape)))
        One result row per X row, in order, ``latency`` cycles after it (without back pressure
        exactly; with it, at the earliest). Always-ready without back pressure.
    """

    def __init__(self, config, *, tag_shape=unsigned(0), backpressure=True, out_depth=None):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        if not isinstance(backpressure, bool):
            raise TypeError(f"backpressure must be a bool, not {backpressure!r}")
        self._config = config
        self._tag_shape = tag_shape
        self._backpressure = backpressure
        self._shared_w_skew = (config.rows == config.cols
                               and config.row_delays == config.col_delays)
        if out_depth is None:
            out_depth = self.latency + 2
        check_int("out_depth", out_depth)
        self._out_depth = out_depth
        super().__init__({
            "x": In(stream.Signature(x_layout(config, tag_shape))),
            "w": In(stream.Signature(w_layout(config))),
            "o": Out(stream.Signature(o_layout(config, tag_shape),
                                      always_ready=not backpressure)),
        })

    @property
    def config(self):
        """The :class:`ArrayConfig`."""
        return self._config

    @property
    def tag_shape(self):
        """Shape of the tag carried with each row."""
        return self._tag_shape

    @property
    def backpressure(self):
        """Whether ``o`` respects back pressure."""
        return self._backpressure

    @property
    def out_depth(self):
        """Result queue depth (with back pressure)."""
        return self._out_depth

    @staticmethod
    def x_delays(config):
        """Register delays of the input skew per row: ``d_r + 1`` (every lane has one register
        more than its relative delay: the array's inputs are registered)."""
        return [d + 1 for d in config.row_delays]

    @staticmethod
    def out_delays(config):
        """Register delays of the output de-skew per column: ``h_{cols−1} − h_c + 1``."""
        last = config.col_delays[-1]
        return [last - h + 1 for h in config.col_delays]

    @classmethod
    def latency_of(cls, config):
        """:attr:`latency` of an array of ``config``, composed from its parts."""
        return (Skew.latency_of(cls.x_delays(config)) + Mesh.latency_of(config)
                + Skew.latency_of(cls.out_delays(config)))

    @property
    def latency(self):
        """Cycles from an X row's transfer on ``x`` to its result on ``o`` (no queueing).

        ``x skew (d_{rows−1} + 1) + mesh (PE latency) + de-skew (h_{cols−1} + 1)``: the last row
        enters the mesh ``d_{rows−1}`` cycles after row 0 (plus the input register), its partial
        sum leaves column 0 after the PE latency, and column 0 waits ``h_{cols−1}`` cycles for
        the last column (plus the output register).
        """
        return self.latency_of(self._config)

    @property
    def weight_words(self):
        """Plain words per tile (one PE row or column each): ``{"row": rows, "column": cols}``;
        with ``load_words = 2`` a tile of pair words takes half as many."""
        return {"row": self._config.rows, "column": self._config.cols}

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        R, C = cfg.rows, cfg.cols
        pkt = weight_packet_layout(cfg)
        m.submodules.x_skew = x_skew = Skew(x_lane_layout(cfg), self.x_delays(cfg))
        m.submodules.mesh = mesh = Mesh(cfg)
        m.submodules.out_skew = out_skew = Skew(signed(cfg.acc_bits), self.out_delays(cfg))

        # -- weight tile bookkeeping -----------------------------------------------------------
        w_count = Signal(range(cfg.w_lanes + 1))   # PE rows/columns of the next tile so far
        w_row = Signal()                           # load direction of the next tile
        full = Signal()
        m.d.comb += full.eq((w_count != 0) & (w_count == Mux(w_row, R, C)))

        credit_ok = Signal()
        x_go = Signal()
        swap = Signal()
        m.d.comb += [
            self.x.ready.eq(credit_ok & (~self.x.payload.first | full)),
            x_go.eq(self.x.valid & self.x.ready),
            swap.eq(x_go & self.x.payload.first),
            self.w.ready.eq(~full | swap),
        ]
        w_go = Signal()
        index = Signal(range(cfg.w_lanes))
        m.d.comb += [
            w_go.eq(self.w.valid & self.w.ready),
            index.eq(Mux(full, 0, w_count)),
        ]
        pair = self.w.payload.pair if cfg.load_words == 2 else Const(0, 1)
        with m.If(w_go):
            with m.If(full | (w_count == 0)):
                m.d.sync += [w_count.eq(1 + pair), w_row.eq(self.w.payload.row)]
            with m.Else():
                m.d.sync += w_count.eq(w_count + 1 + pair)
        with m.Elif(swap):
            m.d.sync += w_count.eq(0)

        # -- X skew: operand and tile-start flag travel together -----------------------------
        # The skews carry no reset, so that they map onto SRLs. A tile-start flag or a load
        # packet still in flight at a reset is harmless: every PE is reloaded and swapped again
        # before the next valid row (post-reset packets reach a PE after pre-reset ones, since
        # all packets to one PE travel the same delay), and results are qualified by the
        # tag line's valid bits, which do reset.
        # One whole-vector assignment each (cheaper in the Python simulator than one per lane).
        m.d.comb += x_skew.i.eq(Cat(Cat(self.x.payload.data[r], swap) for r in range(R)))
        m.d.comb += mesh.x_w.eq(x_skew.o)

        # -- weight skews: row loads enter the top (column c delayed h_c), column loads the
        # west edge (row r delayed d_r). A packet carries its direction, and each edge PE takes
        # only packets of its direction, so a square array without mesh registers feeds both
        # edges from one skew.
        def packet(k):
            # Lane k's packet, in the field order of weight_packet_layout.
            fields = [w_go, self.w.payload.row]
            if cfg.load_words == 2:
                fields.append(pair)
            fields += [index, self.w.payload.data[k]]
            if cfg.load_words == 2:
                # The odd slot: a pair's second word, or a plain word (for an odd PE).
                fields.append(Mux(pair, self.w.payload.data[cfg.w_lanes + k],
                                  self.w.payload.data[k]))
            return Cat(*fields)

        def packet_skew(name, lanes, delays):
            skew = Skew(pkt, [d + 1 for d in delays])
            m.submodules[name] = skew
            m.d.comb += skew.i.eq(Cat(packet(k) for k in range(lanes)))
            return skew

        top = packet_skew("w_skew" if self._shared_w_skew else "w_top_skew", C, cfg.col_delays)
        west = top if self._shared_w_skew else packet_skew("w_west_skew", R, cfg.row_delays)
        m.d.comb += [
            mesh.wp_n.eq(top.o),
            mesh.wp_w.eq(west.o),
        ]

        # -- de-skew and the tag delay line ---------------------------------------------------
        m.d.comb += out_skew.i.eq(mesh.psum_s)
        line_layout = data.StructLayout({"valid": 1, "tag": self._tag_shape})
        stage = Signal(line_layout, name="tag_q0")
        m.d.comb += [stage.valid.eq(x_go), stage.tag.eq(self.x.payload.tag)]
        for k in range(self.latency):
            nxt = Signal(line_layout, name=f"tag_q{k + 1}")
            m.d.sync += nxt.eq(stage)
            stage = nxt
        valid = stage.valid
        result = Signal(o_layout(cfg, self._tag_shape))
        m.d.comb += result.eq(Cat(out_skew.o, stage.tag))

        if self._backpressure:
            m.submodules.out_queue = queue = Queue(o_layout(cfg, self._tag_shape),
                                                   self._out_depth, buffered=False)
            in_flight = Signal(range(self.latency + 1))
            m.d.sync += in_flight.eq(in_flight + x_go - valid)
            m.d.comb += [
                credit_ok.eq(in_flight + queue.level < self._out_depth),
                queue.i.valid.eq(valid),
                queue.i.payload.eq(result),
            ]
            wiring.connect(m, wiring.flipped(self.o), queue.o)
        else:
            m.d.comb += [
                credit_ok.eq(1),
                self.o.valid.eq(valid),
                self.o.payload.eq(result),
            ]
        return m
