# SPDX-License-Identifier: BSD-2-Clause
"""A block of PEs wired neighbour to neighbour (Gemmini's ``Tile.scala``).

Inside a grid every PE reads only its west and north neighbours' output registers (``o.x``,
``o.psum``, ``o.wp_s``, ``o.wp_e``), directly, so the grid adds no delay and no wiring copies of
its own but one wire per edge lane. The :class:`~hdl.systolic.mesh.Mesh` tiles the array with grids and may
add pipeline registers at their boundaries.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig
from .pe import PE, weight_packet_layout, x_lane_layout

__all__ = ["PEGrid"]


class PEGrid(wiring.Component):
    """``n_rows × n_cols`` PEs at array position ``(row0, col0)``.

    ::

        x_w[0] ─▶ pe_{r0}_{c0} ─▶ pe_{r0}_{c0+1} ─▶ … ─▶ x_e[0]
                      │                │
        x_w[1] ─▶ pe_{r0+1}_{c0} ─▶ …                ─▶ x_e[1]
                      │
                   psum_s[0] …

    Submodules are named ``pe_{r}_{c}`` by their position in the whole array.

    Neither provides nor respects back pressure.

    Parameters
    ----------
    config : ArrayConfig
    row0, col0 : int
        Array position of the top-left PE.
    n_rows, n_cols : int
        Size of the grid.

    Members
    -------
    x_w : In(ArrayLayout(x_lane_layout, n_rows))
        X operand and tile-start flag entering each row from the west.
    wp_w : In(ArrayLayout(weight_packet_layout, n_rows))
        Column-load packets entering each row from the west.
    x_e, wp_e : Out(...)
        The same leaving each row at the east edge.
    psum_n : In(ArrayLayout(signed(acc_bits), n_cols))
        Partial sums entering each column from the north.
    wp_n : In(ArrayLayout(weight_packet_layout, n_cols))
        Row-load packets entering each column from the north.
    psum_s, wp_s : Out(...)
        The same leaving each column at the south edge.
    """

    def __init__(self, config, row0, col0, n_rows, n_cols):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        if not (0 <= row0 and 0 <= col0 and n_rows >= 1 and n_cols >= 1 and
                row0 + n_rows <= config.rows and col0 + n_cols <= config.cols):
            raise ValueError(f"grid {n_rows}×{n_cols} at ({row0}, {col0}) does not fit the "
                             f"{config.rows}×{config.cols} array")
        self._config = config
        self._row0, self._col0, self._n_rows, self._n_cols = row0, col0, n_rows, n_cols
        pkt = weight_packet_layout(config)
        xl, acc = x_lane_layout(config), signed(config.acc_bits)
        super().__init__({
            "x_w": In(data.ArrayLayout(xl, n_rows)),
            "wp_w": In(data.ArrayLayout(pkt, n_rows)),
            "x_e": Out(data.ArrayLayout(xl, n_rows)),
            "wp_e": Out(data.ArrayLayout(pkt, n_rows)),
            "psum_n": In(data.ArrayLayout(acc, n_cols)),
            "wp_n": In(data.ArrayLayout(pkt, n_cols)),
            "psum_s": Out(data.ArrayLayout(acc, n_cols)),
            "wp_s": Out(data.ArrayLayout(pkt, n_cols)),
        })

    @property
    def config(self):
        """The :class:`ArrayConfig`."""
        return self._config

    @property
    def shape(self):
        """``(n_rows, n_cols)``."""
        return self._n_rows, self._n_cols

    @property
    def latency(self):
        """Cycles from ``x_w`` of a row to that row's contribution on ``psum_s`` of the first
        column (the PE latency; further columns follow one cycle per column)."""
        return PE.LATENCY

    def elaborate(self, platform):
        m = Module()
        nr, nc = self._n_rows, self._n_cols
        # The edge inputs, one signal per row and per column, all of a kind named alike: a PE
        # that read a lane of the wide edge port would take the whole port and slice it at its
        # own offset, so every edge PE would be a module of its own (the resource estimate
        # synthesizes each kind of module once).
        edge_w = [(Signal.like(self.x_w[i], name="x_w"), Signal.like(self.wp_w[i], name="wp_w"))
                  for i in range(nr)]
        edge_n = [(Signal.like(self.psum_n[j], name="psum_n"),
                   Signal.like(self.wp_n[j], name="wp_n")) for j in range(nc)]
        for i, (x, wp) in enumerate(edge_w):
            m.d.comb += [x.eq(self.x_w[i]), wp.eq(self.wp_w[i])]
        for j, (psum, wp) in enumerate(edge_n):
            m.d.comb += [psum.eq(self.psum_n[j]), wp.eq(self.wp_n[j])]
        pes = {}
        # Inside, each PE reads its neighbours' output registers directly: no wiring copies.
        for i in range(nr):
            for j in range(nc):
                r, c = self._row0 + i, self._col0 + j
                west = pes[i, j - 1].o if j else None
                north = pes[i - 1, j].o if i else None
                pe = PE(self._config, r, c,
                        x_w=west.x if west is not None else edge_w[i][0],
                        wp_w=west.wp_e if west is not None else edge_w[i][1],
                        psum_n=north.psum if north is not None else edge_n[j][0],
                        wp_n=north.wp_s if north is not None else edge_n[j][1])
                pes[i, j] = m.submodules[f"pe_{r}_{c}"] = pe
        for i in range(nr):
            east = pes[i, nc - 1].o
            m.d.comb += [self.x_e[i].eq(east.x), self.wp_e[i].eq(east.wp_e)]
        for j in range(nc):
            south = pes[nr - 1, j].o
            m.d.comb += [self.psum_s[j].eq(south.psum), self.wp_s[j].eq(south.wp_s)]
        return m
