# SPDX-License-Identifier: BSD-2-Clause
"""The whole PE array: a grid of :class:`~hdl.systolic.grid.PEGrid` blocks (Gemmini's
``Mesh.scala``), with optional pipeline registers where paths cross a grid boundary.

A DSP48E2 column holds a few dozen slices and columns sit apart on the die; a 16 × 16 array
spans several clock regions. ``ArrayConfig.mesh_regs`` adds that many registers on every path
that crosses a grid boundary (X, tile-start flag and column-load packets going east; partial
sums and row-load packets going south), so that long routes get a whole cycle. All paths of one
direction get the same extra delay, so the skews :attr:`ArrayConfig.row_delays` and
:attr:`ArrayConfig.col_delays` describe the timing completely.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import ArrayConfig
from .grid import PEGrid
from .pe import PE, weight_packet_layout, x_lane_layout

__all__ = ["Mesh"]


def _delay(m, value, n, name, *, reset_less):
    """``value`` through ``n`` registers (``n`` = 0: a wire)."""
    for k in range(n):
        reg = Signal(value.shape(), name=f"{name}_q{k + 1}", reset_less=reset_less)
        m.d.sync += reg.eq(value)
        value = reg
    return value


class Mesh(wiring.Component):
    """``rows × cols`` PEs, as ``ceil(rows/grid_rows) × ceil(cols/grid_cols)`` grids.

    Inputs must be skewed: row ``r``'s X (and tile-start flag, and column-load packets) lags
    row 0's by ``config.row_delays[r]`` cycles, column ``c``'s row-load packets lag column 0's
    by ``config.col_delays[c]``. Column ``c``'s partial sums then leave ``latency +
    col_delays[c]`` cycles after the X row entered the last row.

    Neither provides nor respects back pressure.

    Parameters
    ----------
    config : ArrayConfig

    Members
    -------
    x_w : In(ArrayLayout(x_lane_layout, rows))
        X operand and tile-start flag entering each row (skewed).
    wp_w : In(ArrayLayout(weight_packet_layout, rows))
        Column-load packets per row (skewed like ``x_w``).
    wp_n : In(ArrayLayout(weight_packet_layout, cols))
        Row-load packets per column (skewed by ``col_delays``).
    psum_s : Out(ArrayLayout(signed(acc_bits), cols))
        Partial sums leaving each column (skewed by ``col_delays``).
    """

    def __init__(self, config):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        self._config = config
        pkt = weight_packet_layout(config)
        super().__init__({
            "x_w": In(data.ArrayLayout(x_lane_layout(config), config.rows)),
            "wp_w": In(data.ArrayLayout(pkt, config.rows)),
            "wp_n": In(data.ArrayLayout(pkt, config.cols)),
            "psum_s": Out(data.ArrayLayout(signed(config.acc_bits), config.cols)),
        })

    @property
    def config(self):
        """The :class:`ArrayConfig`."""
        return self._config

    @property
    def latency(self):
        """Cycles from the X row at the west edge of the last row to its partial sums at the
        bottom of column 0 (column ``c`` follows ``col_delays[c]`` cycles later): the grid's,
        which is the PE's."""
        return self.latency_of(self._config)

    @staticmethod
    def latency_of(config):
        """:attr:`latency` of the mesh of ``config`` (without building one)."""
        return PE.LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        gr, gc = cfg.grid_rows, cfg.grid_cols
        row_starts = list(range(0, cfg.rows, gr))
        col_starts = list(range(0, cfg.cols, gc))
        e = cfg.mesh_regs
        grids = {}
        for i, r0 in enumerate(row_starts):
            for j, c0 in enumerate(col_starts):
                nr, nc = min(gr, cfg.rows - r0), min(gc, cfg.cols - c0)
                grids[i, j] = m.submodules[f"grid_{i}_{j}"] = PEGrid(cfg, r0, c0, nr, nc)
        for (i, j), g in grids.items():
            r0, c0 = row_starts[i], col_starts[j]
            nr, nc = g.shape
            for a in range(nr):
                if j == 0:
                    m.d.comb += [g.x_w[a].eq(self.x_w[r0 + a]),
                                 g.wp_w[a].eq(self.wp_w[r0 + a])]
                else:
                    west = grids[i, j - 1]
                    tag = f"h_{r0 + a}_{c0}"
                    m.d.comb += [
                        g.x_w[a].eq(_delay(m, west.x_e[a], e, f"x_{tag}", reset_less=True)),
                        g.wp_w[a].eq(_delay(m, west.wp_e[a], e, f"wp_{tag}", reset_less=False)),
                    ]
            for b in range(nc):
                if i == 0:
                    m.d.comb += [g.psum_n[b].eq(0), g.wp_n[b].eq(self.wp_n[c0 + b])]
                else:
                    north = grids[i - 1, j]
                    tag = f"v_{r0}_{c0 + b}"
                    m.d.comb += [
                        g.psum_n[b].eq(_delay(m, north.psum_s[b], e, f"psum_{tag}",
                                              reset_less=True)),
                        g.wp_n[b].eq(_delay(m, north.wp_s[b], e, f"wp_{tag}", reset_less=False)),
                    ]
                if i == len(row_starts) - 1:
                    m.d.comb += self.psum_s[c0 + b].eq(g.psum_s[b])
        return m
