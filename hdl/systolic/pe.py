# SPDX-License-Identifier: BSD-2-Clause
"""One processing element of the weight-stationary systolic array: a DSP48E2 MAC.

The PE is Gemmini's ``PE.scala`` reduced to the one dataflow this accelerator uses (weight
stationary) and mapped register for register onto a DSP48E2 slice (UG579):

=================  ===========================  ==============================================
register           DSP48E2                       role
=================  ===========================  ==============================================
``w_shadow``       B1 (CEB1 = capture)           next tile's weight, written by a load packet
``w_active``       B2 (CEB2 = swap)              current tile's weight
``o.x``            A1/A2 (and a fabric copy)     X operand; also passed east to the next PE
``prod_q``         M (MREG)                      the 16 × 16 product
``o.psum``         P (PREG), PCIN → PCOUT        partial sum, passed south on the P cascade
``o.wp_s``         fabric                        row-load packet in transit to the south
``o.wp_e``         fabric                        column-load packet in transit to the east
=================  ===========================  ==============================================

The B1/B2 pair with separate clock enables is the double buffer: the next tile's weight is
written into B1 while B2 multiplies, and B2 ← B1 when the first X row of the next tile passes.
The partial sums of a column use the DSP column's dedicated PCOUT → PCIN cascade.
"""

from amaranth.hdl import Module, Mux, Shape, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from .config import ArrayConfig

__all__ = ["weight_packet_layout", "x_lane_layout", "pe_out_layout", "PE"]


def weight_packet_layout(config):
    """Layout of a weight-load packet travelling through the array.

    ``valid``: a packet is present. ``row``: row-load packet (enters at the top, travels south,
    ``index`` names the target PE row) or column-load packet (enters at the west edge, travels
    east, ``index`` names the target PE column). ``data``: the weight.

    With ``config.load_words = 2`` the packet has two weight slots, ``data`` for an even PE row
    (column) and ``data1`` for an odd one, and a ``pair`` flag: a pair packet (``index`` even)
    loads the PEs ``index`` (from ``data``) and ``index + 1`` (from ``data1``); a plain packet
    loads the PE ``index`` from the slot of its parity. So every PE reads one fixed slot.
    """
    fields = {"valid": 1, "row": 1}
    if config.load_words == 2:
        fields["pair"] = 1
    fields["index"] = range(config.w_lanes)
    fields["data"] = signed(config.w_bits)
    if config.load_words == 2:
        fields["data1"] = signed(config.w_bits)
    return data.StructLayout(fields)


def x_lane_layout(config):
    """Layout of one X lane inside the array: the operand and the tile-start flag that travels
    with it."""
    return data.StructLayout({"data": signed(config.a_bits), "first": 1})


def pe_out_layout(config):
    """Layout of a PE's output register: the X lane passed east, the partial sum passed south
    and the load packets in transit, row loads south and column loads east."""
    return data.StructLayout({
        "x": x_lane_layout(config),
        "psum": signed(config.acc_bits),
        "wp_s": weight_packet_layout(config),
        "wp_e": weight_packet_layout(config),
    })


def _as_view(name, value, layout):
    if isinstance(value, data.View):
        if value.shape() != layout:
            raise TypeError(f"{name} has layout {value.shape()!r}, expected {layout!r}")
        return value
    value = Value.cast(value)
    if len(value) != Shape.cast(layout).width:
        raise TypeError(f"{name} is {len(value)} bits wide, expected "
                        f"{Shape.cast(layout).width}")
    return data.View(layout, value)


class PE(wiring.Component):
    """A MAC cell: ``psum = psum_n + x · w`` with a double-buffered stationary weight.

    Timing (cycle ``T``: ``x_w`` present at the west input)::

        T    edge: o.x ← x_w; if x_w.first: w_active ← w_shadow
        T+1  edge: prod_q ← o.x.data · w_active
        T+2  edge: o.psum ← prod_q + psum_n       (psum_n: the partial of the PE to the north,
        T+3  o.psum holds the partial sum           which saw the same X row at T − 1)

    so the X row entering row ``r`` must lag row ``r − 1`` by one cycle (the input skew), and
    reaches the east neighbour one cycle later (``X_HOP``).

    Weight load: a packet arriving from the north (``row`` set) or the west (``row`` clear) whose
    ``index`` equals this PE's row (row load) or column (column load) is written into
    ``w_shadow`` and stops; any other packet of that direction goes on, registered into
    ``o.wp_s`` (row loads, to the south neighbour) or ``o.wp_e`` (column loads, to the east
    one). The two transit registers copy their packet's fields unconditionally (only ``valid``
    has logic), so the packet network costs flip-flops, not multiplexers. Writing the shadow
    and swapping it in on the same edge is safe: the swap reads the old shadow.

    With ``load_words = 2`` a PE at an even position takes ``data`` of a packet naming it and
    lets a pair packet go on (the next PE takes ``data1``); a PE at an odd position ``p`` takes
    ``data1`` of a plain packet naming ``p`` or a pair packet naming ``p − 1`` (``index | pair
    == p``), and stops both.

    Inputs are not ports: they are the neighbours' output registers (or the grid's edge
    inputs), given at construction, and the PE reads them directly. All outputs are one
    registered struct ``o``, all internal state one more (``prod_q``, ``w_shadow``,
    ``w_active``). In hardware this is the same set of flip-flops as separate signals; in the
    pure-Python simulator every signal and every wiring copy costs bookkeeping on every cycle,
    and this form runs a 16 × 16 array about twice as fast.

    Neither provides nor respects back pressure: it computes every cycle.

    Parameters
    ----------
    config : ArrayConfig
    row, col : int
        Position in the array (the load packets' target indices).
    x_w : value of ``x_lane_layout(config)``
        X operand and tile-start flag from the west.
    psum_n : value of ``signed(acc_bits)``
        Partial sum from the north (0 at the top row).
    wp_n, wp_w : values of ``weight_packet_layout(config)``
        Weight-load packets from the north and from the west.

    Members
    -------
    o : Out(pe_out_layout(config))
        The PE's registers: ``o.x`` (``x_w`` one cycle later, to the east neighbour), ``o.psum``
        (``psum_n + x·w``, ``LATENCY`` cycles after ``x_w``, to the south neighbour),
        ``o.wp_s`` and ``o.wp_e`` (the packets in transit to the south and east neighbours).
    """

    #: Cycles from ``x_w`` to the partial sum on ``o.psum``.
    LATENCY = 3
    #: Cycles from ``x_w`` to ``o.x`` (and from ``wp_n``/``wp_w`` to ``o.wp_s``/``o.wp_e``).
    X_HOP = 1

    def __init__(self, config, row, col, *, x_w, psum_n, wp_n, wp_w):
        if not isinstance(config, ArrayConfig):
            raise TypeError(f"config must be an ArrayConfig, not {config!r}")
        if not (0 <= row < config.rows and 0 <= col < config.cols):
            raise ValueError(f"PE ({row}, {col}) is outside the {config.rows}×{config.cols} "
                             f"array")
        self._config = config
        self._row = row
        self._col = col
        pkt = weight_packet_layout(config)
        self._x_w = _as_view("x_w", x_w, x_lane_layout(config))
        psum_n = Value.cast(psum_n)
        if len(psum_n) > config.acc_bits:
            raise TypeError(f"psum_n is {len(psum_n)} bits wide, more than acc_bits "
                            f"({config.acc_bits})")
        self._psum_n = psum_n
        self._wp_n = _as_view("wp_n", wp_n, pkt)
        self._wp_w = _as_view("wp_w", wp_w, pkt)
        super().__init__({"o": Out(pe_out_layout(config))})

    @property
    def config(self):
        """The :class:`ArrayConfig`."""
        return self._config

    @property
    def row(self):
        """PE row."""
        return self._row

    @property
    def col(self):
        """PE column."""
        return self._col

    @property
    def latency(self):
        """Cycles from ``x_w`` to ``o.psum``."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        x_w, psum_n, wp_n, wp_w = self._x_w, self._psum_n, self._wp_n, self._wp_w
        o = self.o

        # Internal datapath registers carry no reset (STYLE §4.6): they map onto the DSP48E2's
        # B1/B2/M registers and nothing reads them before valid data has passed.
        st = Signal(data.StructLayout({
            "prod_q": signed(cfg.a_bits + cfg.w_bits),
            "w_shadow": signed(cfg.w_bits),
            "w_active": signed(cfg.w_bits),
        }), reset_less=True)

        m.d.sync += [
            o.x.eq(x_w),
            st.prod_q.eq(o.x.data * st.w_active),
            # Exact: |psum| < rows · 2**(a+w−2) ≪ 2**(acc−1) (ArrayConfig checks acc_bits).
            o.psum.eq(st.prod_q + psum_n),
        ]
        with m.If(x_w.first):
            m.d.sync += st.w_active.eq(st.w_shadow)

        # Weight-load packets. Row packets only ever come from the north and column packets
        # only from the west; two never meet in one PE (one word enters the array per cycle and
        # every packet of a word travels with the same delay as the X rows, see array.py).
        def arrive(wp, here, row):
            """(take, stop, weight) of a packet ``wp`` for the PE at position ``here``."""
            valid = wp.valid & (wp.row if row else ~wp.row)
            if cfg.load_words == 1:
                take = valid & (wp.index == here)
                return take, take, wp.data
            if here % 2 == 0:
                take = valid & (wp.index == here)
                return take, take & ~wp.pair, wp.data
            take = valid & ((wp.index | wp.pair) == here)
            return take, take, wp.data1

        take_n, stop_n, w_n = arrive(wp_n, self._row, True)
        take_w, stop_w, w_w = arrive(wp_w, self._col, False)
        with m.If(take_n | take_w):
            m.d.sync += st.w_shadow.eq(Mux(take_n, w_n, w_w))
        m.d.sync += [
            o.wp_s.eq(wp_n),
            o.wp_s.valid.eq(wp_n.valid & wp_n.row & ~stop_n),
            o.wp_e.eq(wp_w),
            o.wp_e.valid.eq(wp_w.valid & ~wp_w.row & ~stop_w),
        ]
        return m
