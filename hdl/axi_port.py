# SPDX-License-Identifier: BSD-2-Clause
"""Sharing one AXI4 port between several managers, and watching it.

:class:`AXIPortMux`
    Several read managers and at most one write manager on one AXI4 port: read addresses are
    arbitrated round-robin, each manager's ID is extended with its index, and read data is routed
    back by ID.
:class:`AXIPortMonitor`
    A combinational pass-through that counts the port's outstanding transactions, so that the
    accelerator knows when the port is *quiet* (nothing in flight, nothing offered): the only
    moments when the managers behind it may be reset without breaking the AXI protocol.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ._checks import check_int
from .axi import AXI4Signature

__all__ = ["AXIPortMux", "AXIPortMonitor"]

_AR = ("araddr", "arlen", "arsize", "arburst", "arcache", "arprot")
_AW = ("awaddr", "awlen", "awsize", "awburst", "awcache", "awprot")


class AXIPortMux(wiring.Component):
    """``n_read`` AXI4 read managers and an optional write manager on one AXI4 port.

    * **AR**: round-robin among the managers with ``arvalid`` high, starting after the last one
      granted; a grant is held until its AR handshake (an offered AR is never withdrawn or
      changed). ``arid`` is the manager's own ID with the manager index above it.
    * **R**: routed to the manager named by the index bits of ``rid``, with its own ID.
      Responses of different managers may interleave (different IDs), those of one manager
      stay in order.
    * **AW/W/B**: passed through from the write manager (``awid`` extended with zeros).
      Without a write manager the write channels are idle.

    Parameters
    ----------
    n_read : int
        Read managers (``r0 … r{n_read−1}``), at least 1.
    write : bool
        Whether there is a write manager (``w``).
    addr_width, data_width : int
        Address and data width of every interface.
    inner_id_width : int
        ID width of the managers.
    id_width : int
        ID width of the port; at least ``inner_id_width + bits(n_read − 1)``.

    Members
    -------
    r<i> : In(AXI4Signature(addr_width, data_width, inner_id_width))
        Read managers (their write channels are ignored; ``bvalid`` is 0 to them).
    w : In(AXI4Signature(addr_width, data_width, inner_id_width))
        Write manager (its read channels are ignored), if ``write``.
    bus : Out(AXI4Signature(addr_width, data_width, id_width))
        The port.
    """

    def __init__(self, n_read, *, write=False, addr_width, data_width, inner_id_width=1,
                 id_width):
        check_int("n_read", n_read)
        self._n = n_read
        self._sel_bits = max(n_read - 1, 1).bit_length() if n_read > 1 else 0
        if id_width < inner_id_width + self._sel_bits:
            raise ValueError(f"id_width ({id_width}) must be at least {inner_id_width} + "
                             f"{self._sel_bits} for {n_read} read managers")
        self._inner = inner_id_width
        self._write = write
        inner = AXI4Signature(addr_width=addr_width, data_width=data_width,
                              id_width=inner_id_width)
        members = {f"r{i}": In(inner) for i in range(n_read)}
        if write:
            members["w"] = In(inner)
        members["bus"] = Out(AXI4Signature(addr_width=addr_width, data_width=data_width,
                                           id_width=id_width))
        super().__init__(members)

    @property
    def n_read(self):
        """Number of read managers."""
        return self._n

    def elaborate(self, platform):
        m = Module()
        n, bus = self._n, self.bus
        rs = [getattr(self, f"r{i}") for i in range(n)]

        # -- AR: round-robin, grant held until the handshake --------------------------------
        held = Signal()
        sel_r = Signal(range(max(n, 2)))
        last = Signal(range(max(n, 2)))
        pick = Signal(range(max(n, 2)))
        sel = Signal(range(max(n, 2)))
        valids = Cat(*(r.arvalid for r in rs))
        with m.Switch(last):
            for lst in range(n):
                with m.Case(lst):
                    order = [(lst + 1 + k) % n for k in range(n)]
                    for idx in reversed(order):
                        with m.If(valids[idx]):
                            m.d.comb += pick.eq(idx)
        m.d.comb += sel.eq(Mux(held, sel_r, pick))
        ar_valid = Array(r.arvalid for r in rs)[sel] if n > 1 else rs[0].arvalid
        m.d.comb += bus.arvalid.eq(ar_valid)
        for name in _AR:
            src = Array(getattr(r, name) for r in rs)[sel] if n > 1 else getattr(rs[0], name)
            m.d.comb += getattr(bus, name).eq(src)
        inner_ids = Array(r.arid for r in rs)[sel] if n > 1 else rs[0].arid
        m.d.comb += bus.arid.eq(Cat(inner_ids, sel[:self._sel_bits]) if self._sel_bits
                                else inner_ids)
        for i, r in enumerate(rs):
            m.d.comb += r.arready.eq(bus.arready & (sel == i))
        with m.If(bus.arvalid & ~bus.arready):
            m.d.sync += [held.eq(1), sel_r.eq(sel)]
        with m.Elif(bus.arvalid):
            m.d.sync += [held.eq(0), last.eq(sel)]

        # -- R: routed by the index bits of rid -------------------------------------------------
        src = Signal(range(max(n, 2)))
        if self._sel_bits:
            m.d.comb += src.eq(bus.rid[self._inner:self._inner + self._sel_bits])
        for i, r in enumerate(rs):
            m.d.comb += [
                r.rvalid.eq(bus.rvalid & (src == i)),
                r.rdata.eq(bus.rdata),
                r.rresp.eq(bus.rresp),
                r.rlast.eq(bus.rlast),
                r.rid.eq(bus.rid[:self._inner]),
                r.awready.eq(0), r.wready.eq(0), r.bvalid.eq(0),
            ]
        m.d.comb += bus.rready.eq(Array(r.rready for r in rs)[src] if n > 1 else rs[0].rready)

        # -- AW / W / B -----------------------------------------------------------------------
        if self._write:
            w = self.w
            m.d.comb += [
                bus.awvalid.eq(w.awvalid), w.awready.eq(bus.awready),
                bus.awid.eq(w.awid),
                bus.wvalid.eq(w.wvalid), w.wready.eq(bus.wready),
                bus.wdata.eq(w.wdata), bus.wstrb.eq(w.wstrb), bus.wlast.eq(w.wlast),
                w.bvalid.eq(bus.bvalid),
                w.bresp.eq(bus.bresp), w.bid.eq(bus.bid[:self._inner]),
                bus.bready.eq(w.bready),
                w.arready.eq(0), w.rvalid.eq(0),
            ]
            for name in _AW:
                m.d.comb += getattr(bus, name).eq(getattr(w, name))
        else:
            m.d.comb += [bus.awvalid.eq(0), bus.wvalid.eq(0), bus.bready.eq(1)]
        return m


class AXIPortMonitor(wiring.Component):
    """Pass an AXI4 port through and count what is in flight on it.

    Every signal passes combinationally from ``inner`` to ``bus`` and back. The monitor counts
    read bursts accepted and not yet completed (last R beat), write bursts accepted and not yet
    answered (B), and W beats owed to accepted write bursts.

    Members
    -------
    inner : In(AXI4Signature)
        The manager side.
    bus : Out(AXI4Signature)
        The port.
    quiet : Out(1)
        Nothing is in flight and nothing is offered in this cycle: no ``arvalid``,
        ``awvalid`` or ``wvalid``, no outstanding read or write burst, no W beat owed. A reset
        of everything behind the monitor at the end of such a cycle leaves the AXI protocol
        intact.
    r_beat, w_beat : Out(1)
        An R / W beat is transferred in this cycle.
    """

    def __init__(self, signature, *, max_outstanding=256):
        if not isinstance(signature, AXI4Signature):
            raise TypeError(f"signature must be an AXI4Signature, not {signature!r}")
        self._sig = signature
        self._max = max_outstanding
        super().__init__({
            "inner": In(signature),
            "bus": Out(signature),
            "quiet": Out(1),
            "r_beat": Out(1),
            "w_beat": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        inner, bus = self.inner, self.bus
        for name, member in self._sig.members.items():
            if member.flow == Out:
                m.d.comb += getattr(bus, name).eq(getattr(inner, name))
            else:
                m.d.comb += getattr(inner, name).eq(getattr(bus, name))
        reads = Signal(range(self._max + 1))
        writes = Signal(range(self._max + 1))
        owed = Signal(range(-256 * self._max, 256 * self._max + 1))
        ar = bus.arvalid & bus.arready
        r_end = bus.rvalid & bus.rready & bus.rlast
        aw = bus.awvalid & bus.awready
        b = bus.bvalid & bus.bready
        w = bus.wvalid & bus.wready
        m.d.sync += [
            reads.eq(reads + ar - r_end),
            writes.eq(writes + aw - b),
            owed.eq(owed + Mux(aw, bus.awlen + 1, 0) - w),
        ]
        m.d.comb += [
            self.quiet.eq(~bus.arvalid & ~bus.awvalid & ~bus.wvalid & (reads == 0)
                          & (writes == 0) & (owed == 0)),
            self.r_beat.eq(bus.rvalid & bus.rready),
            self.w_beat.eq(w),
        ]
        return m
