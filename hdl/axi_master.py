# SPDX-License-Identifier: BSD-2-Clause
"""AXI4 burst managers (masters): stream of (address, beat count) commands in, bursts out.

Both managers split a command into INCR bursts of at most ``max_burst_beats`` full-width beats
that never cross a 4 KiB boundary, keep up to ``max_outstanding`` bursts in flight, and use a
single transaction ID (0), so responses come back in order.

Flow control is credit based, so neither manager ever holds the AXI interconnect hostage to the
stream on the other side:

* :class:`AXI4ReadMaster` issues a read burst only when its data FIFO has room reserved for every
  beat of that burst, so ``rready`` stays high while a consumer stalls ``data``.
* :class:`AXI4WriteMaster` issues a write burst only when its data FIFO already holds every beat
  of that burst (store and forward), so ``wvalid`` never drops inside a burst while a producer
  is slow.
"""

from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped
from amaranth.utils import bits_for

from ._checks import check_int
from .axi import AXI4Signature, Burst, Resp
from .stream_util import Queue

__all__ = ["cmd_layout", "read_data_layout", "AXI4ReadMaster", "AXI4WriteMaster"]


_PAGE_BYTES = 4096


def cmd_layout(addr_width, data_width):
    """Build the layout of a DMA command.

    Parameters
    ----------
    addr_width : int
        Byte address width.
    data_width : int
        Bus width in bits.

    Returns
    -------
    :class:`~amaranth.lib.data.StructLayout`
        ``addr`` (``addr_width`` bits, byte address of the first beat, aligned to
        ``data_width // 8``) and ``beats`` (number of bus words, wide enough to cover the whole
        address space).
    """
    size = AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=1).size
    return _cmd_layout(addr_width, size)


def _cmd_layout(addr_width, size):
    return data.StructLayout({
        "addr": unsigned(addr_width),
        "beats": unsigned(addr_width - size + 1),
    })


def read_data_layout(data_width):
    """Build the layout of a read data word: ``data`` (``data_width`` bits) and ``last``.

    ``last`` is high on the final word of a command.
    """
    return data.StructLayout({"data": unsigned(data_width), "last": unsigned(1)})


class _BurstSplitter(wiring.Component):
    """Split (address, beats) commands into AXI4 INCR bursts.

    Each burst has 1..``max_burst_beats`` beats and stays inside one 4 KiB page. Bursts of one
    command come out in address order, one per cycle at most.

    A command is rejected (dropped, with ``error`` high in the cycle it is transferred) if its
    address is not aligned to the beat size, if ``beats`` is 0, or if it runs past the end of the
    address space.

    Parameters
    ----------
    addr_width : int
        Byte address width.
    size : int
        log2 of the bytes per beat.
    max_burst_beats : int
        Maximum beats per burst (at most 256 and at most one 4 KiB page).

    Members
    -------
    cmd : In(stream.Signature(cmd_layout))
        Commands. Ready is high while no command is being split (it does not depend on
        ``cmd.valid``); a command takes ceil(beats / max_burst_beats) or more cycles.
    burst : Out(stream.Signature(StructLayout{addr, beats, last}))
        Bursts. ``beats`` is 1..``max_burst_beats``; ``last`` marks the final burst of a command.
        Respects back pressure; the payload is registered.
    error : Out(1)
        High in the cycle a malformed command is transferred on ``cmd``.
    busy : Out(1)
        High while a command is being split (bursts still to be produced).
    """

    def __init__(self, *, addr_width, size, max_burst_beats):
        self._addr_width = addr_width
        self._size = size
        self._max_burst_beats = max_burst_beats
        super().__init__({
            "cmd": In(stream.Signature(_cmd_layout(addr_width, size))),
            "burst": Out(stream.Signature(data.StructLayout({
                "addr": unsigned(addr_width),
                "beats": range(max_burst_beats + 1),
                "last": unsigned(1),
            }))),
            "error": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        size = self._size
        max_beats = self._max_burst_beats
        page_beats = _PAGE_BYTES >> size

        addr = Signal(self._addr_width)
        remaining = Signal.like(self.cmd.payload.beats)

        # Beats of the current burst: limited by what is left, by max_burst_beats and by the
        # distance to the next 4 KiB boundary.
        to_page_end = Signal(range(page_beats + 1))
        m.d.comb += to_page_end.eq(page_beats - addr[size:12])
        if max_beats < page_beats:
            limit = Mux(to_page_end < max_beats, to_page_end, max_beats)
        else:
            limit = to_page_end
        is_last = remaining <= limit
        beats = Signal(range(max_beats + 1))
        m.d.comb += beats.eq(Mux(is_last, remaining, limit))

        cmd = self.cmd.payload
        cmd_end = Signal(self._addr_width + 2)
        m.d.comb += cmd_end.eq(cmd.addr + (cmd.beats << size))
        cmd_bad = ((cmd.addr[:size] != 0) | (cmd.beats == 0) |
                   (cmd_end > (1 << self._addr_width)))

        active = Signal()
        m.d.comb += [
            self.busy.eq(active),
            self.cmd.ready.eq(~active),
        ]
        with m.If(self.cmd.valid & ~active):
            with m.If(cmd_bad):
                m.d.comb += self.error.eq(1)
            with m.Else():
                m.d.sync += [
                    active.eq(1),
                    addr.eq(cmd.addr),
                    remaining.eq(cmd.beats),
                ]

        with m.If(active & (~self.burst.valid | self.burst.ready)):
            m.d.sync += [
                self.burst.valid.eq(1),
                self.burst.payload.addr.eq(addr),
                self.burst.payload.beats.eq(beats),
                self.burst.payload.last.eq(is_last),
                addr.eq(addr + (beats << size)),
                remaining.eq(remaining - beats),
            ]
            with m.If(is_last):
                m.d.sync += active.eq(0)
        with m.Elif(self.burst.ready):
            m.d.sync += self.burst.valid.eq(0)

        return m


class _MasterBase(wiring.Component):
    # Values of AxCACHE / AxPROT driven on every burst: normal non-cacheable bufferable memory
    # (what Xilinx DMA IP drives by default), unprivileged, secure, data access.
    AXCACHE = 0b0011
    AXPROT = 0b000

    def __init__(self, *, addr_width, data_width, id_width, max_burst_beats, max_outstanding,
                 fifo_depth):
        bus_sig = AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)
        check_int("max_burst_beats", max_burst_beats)
        page_beats = _PAGE_BYTES // bus_sig.bytes_per_beat
        if max_burst_beats > min(256, page_beats):
            raise ValueError(f"max_burst_beats must be at most {min(256, page_beats)} (256 beats "
                             f"and one 4 KiB page of {bus_sig.bytes_per_beat}-byte beats), "
                             f"not {max_burst_beats!r}")
        check_int("max_outstanding", max_outstanding)
        if fifo_depth is None:
            fifo_depth = self._default_fifo_depth(max_burst_beats, max_outstanding)
        check_int("fifo_depth", fifo_depth)
        if fifo_depth < max_burst_beats:
            raise ValueError(f"fifo_depth must be at least max_burst_beats ({max_burst_beats}), "
                             f"not {fifo_depth!r}")
        self._bus_sig = bus_sig
        self._max_burst_beats = max_burst_beats
        self._max_outstanding = max_outstanding
        self._fifo_depth = fifo_depth
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(addr_width, data_width))),
            **self._stream_members(data_width),
            "bus": Out(bus_sig),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def addr_width(self):
        """Byte address width."""
        return self._bus_sig.addr_width

    @property
    def data_width(self):
        """Data bus width in bits."""
        return self._bus_sig.data_width

    @property
    def id_width(self):
        """AXI ID width (the ID driven is always 0)."""
        return self._bus_sig.id_width

    @property
    def max_burst_beats(self):
        """Maximum beats per burst."""
        return self._max_burst_beats

    @property
    def max_outstanding(self):
        """Maximum bursts in flight."""
        return self._max_outstanding

    @property
    def fifo_depth(self):
        """Depth of the data FIFO, in beats."""
        return self._fifo_depth

    def _splitter(self, m):
        m.submodules.splitter = splitter = _BurstSplitter(
            addr_width=self.addr_width, size=self._bus_sig.size,
            max_burst_beats=self._max_burst_beats)
        connect(m, flipped(self.cmd), splitter.cmd)
        with m.If(splitter.error):
            m.d.sync += self.error.eq(1)
        return splitter


class AXI4ReadMaster(_MasterBase):
    """AXI4 read manager: reads runs of bus words from memory into a stream.

    Each command reads ``beats`` consecutive bus words starting at byte address ``addr``. Words
    come out on ``data`` in address order; ``last`` marks the final word of each command.

    Credit scheme: a burst is issued only when ``fifo_depth`` covers every beat already issued
    but not yet delivered on ``data`` plus the new burst. The data FIFO can therefore always take
    the next R beat, and ``rready`` is high except for at most one cycle after the first write
    into an empty FIFO of depth 2. A stalled consumer slows the issue of bursts, never the R
    channel.

    Latency: the first burst's ``arvalid`` rises :attr:`cmd_to_ar_cycles` (3) cycles after the
    cycle its command is transferred in, and an R beat appears on an idle ``data`` stream
    :attr:`r_to_data_cycles` (2) cycles after the cycle of its transfer. Bursts are issued back
    to back, one per cycle, while credits last; to keep the bus busy, ``fifo_depth`` must cover
    the memory round-trip time in beats.

    Errors: a command with an address not aligned to ``data_width // 8``, with ``beats == 0``, or
    running past the end of the address space is dropped (no bursts, no data) and sets ``error``.
    A non-OKAY ``rresp`` sets ``error`` too; its data is still delivered. ``error`` is sticky until
    reset.

    Parameters
    ----------
    addr_width : int
        Byte address width, 12..64.
    data_width : int
        Bus width in bits, 32..1024 (a power of two).
    id_width : int
        AXI ID width (the ID driven is always 0).
    max_burst_beats : int
        Maximum beats per burst, 1..min(256, 4096 / bytes per beat).
    max_outstanding : int
        Maximum bursts issued and not yet completed.
    fifo_depth : int or None
        Depth of the read data FIFO in beats, at least ``max_burst_beats``. Defaults to
        ``max_burst_beats * max_outstanding``.

    Members
    -------
    cmd : In(stream.Signature(cmd_layout(addr_width, data_width)))
        Commands ``{addr, beats}``. Ready while no command is being split into bursts; a command
        of ``n`` bursts occupies it for about ``n`` cycles plus credit waits.
    data : Out(stream.Signature(read_data_layout(data_width)))
        Read words ``{data, last}``. Respects back pressure without stalling the bus.
    bus : Out(AXI4Signature(addr_width, data_width, id_width))
        AXI4 manager port. Only the read channels are used; ``awvalid``, ``wvalid`` and
        ``bready`` stay low.
    busy : Out(1)
        High while any accepted command has words not yet delivered on ``data``.
    error : Out(1)
        Sticky error flag (see above).
    """

    def __init__(self, *, addr_width=32, data_width=128, id_width=1, max_burst_beats=16,
                 max_outstanding=4, fifo_depth=None):
        super().__init__(addr_width=addr_width, data_width=data_width, id_width=id_width,
                         max_burst_beats=max_burst_beats, max_outstanding=max_outstanding,
                         fifo_depth=fifo_depth)

    @staticmethod
    def _default_fifo_depth(max_burst_beats, max_outstanding):
        return max_burst_beats * max_outstanding

    @staticmethod
    def _stream_members(data_width):
        return {"data": Out(stream.Signature(read_data_layout(data_width)))}

    @property
    def cmd_to_ar_cycles(self):
        """Cycles from a command transfer on an idle master to its first ``arvalid``."""
        return 3    # splitter state, splitter output register, AR register

    @property
    def r_to_data_cycles(self):
        """Cycles from an R transfer to the word on ``data``, when the data FIFO is empty."""
        return 1 if self._fifo_depth == 1 else 2     # SyncFIFOBuffered: memory, output register

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        splitter = self._splitter(m)
        burst = splitter.burst

        # One entry per burst in flight: is it the final burst of its command? Its depth is
        # what limits the bursts in flight to max_outstanding.
        m.submodules.tags = tags = fifo.SyncFIFO(width=1, depth=self._max_outstanding)
        m.submodules.rdata = rdata = Queue(read_data_layout(self.data_width), self._fifo_depth)

        # Beats issued on AR and not yet delivered on `data` (in flight or in the FIFO).
        reserved = Signal(range(self._fifo_depth + 1))

        issue = Signal()
        m.d.comb += [
            issue.eq(burst.valid & (~bus.arvalid | bus.arready) & tags.w_rdy &
                     (reserved + burst.payload.beats <= self._fifo_depth)),
            burst.ready.eq(issue),
            tags.w_en.eq(issue),
            tags.w_data.eq(burst.payload.last),
        ]
        with m.If(issue):
            m.d.sync += [
                bus.arvalid.eq(1),
                bus.araddr.eq(burst.payload.addr),
                bus.arlen.eq(burst.payload.beats - 1),
            ]
        with m.Elif(bus.arready):
            m.d.sync += bus.arvalid.eq(0)
        m.d.comb += [
            bus.arsize.eq(self._bus_sig.size),
            bus.arburst.eq(Burst.INCR),
            bus.arid.eq(0),
            bus.arcache.eq(self.AXCACHE),
            bus.arprot.eq(self.AXPROT),
        ]

        r_beat = bus.rvalid & bus.rready
        m.d.comb += [
            rdata.i.valid.eq(bus.rvalid),
            rdata.i.payload.data.eq(bus.rdata),
            rdata.i.payload.last.eq(bus.rlast & tags.r_data),
            bus.rready.eq(rdata.i.ready),
            tags.r_en.eq(r_beat & bus.rlast),
        ]
        with m.If(r_beat & (bus.rresp != Resp.OKAY)):
            m.d.sync += self.error.eq(1)

        connect(m, rdata.o, flipped(self.data))
        delivered = self.data.valid & self.data.ready
        m.d.sync += reserved.eq(reserved + Mux(issue, burst.payload.beats, 0) - delivered)

        m.d.comb += self.busy.eq(splitter.busy | burst.valid | (reserved != 0))
        return m


class AXI4WriteMaster(_MasterBase):
    """AXI4 write manager: writes a stream of bus words to runs of memory.

    Each command writes the next ``beats`` words from ``data`` to consecutive bus words starting
    at byte address ``addr``. All byte strobes are set.

    Store and forward: a burst's AW is issued only when the data FIFO holds every beat of that
    burst not already promised to an earlier burst, so W beats of a burst go out back to back
    (``wvalid`` is high from the first beat to ``wlast`` while the data of the burst sits in the
    FIFO). W beats may start in the cycle ``awvalid`` rises, before the AW transfer, which AXI4
    allows. Up to ``max_outstanding`` bursts may wait for their B response.

    Latency: the first ``awvalid`` rises :attr:`cmd_to_aw_cycles` (3) cycles after the cycle of
    the command transfer if the burst's data is already buffered; ``done`` pulses in the cycle
    after the B response of a command's final burst is transferred.

    Errors: a malformed command (see :class:`AXI4ReadMaster`) is dropped, consumes no data and
    sets ``error``; no ``done`` pulse follows. A non-OKAY ``bresp`` sets ``error``. ``error`` is
    sticky until reset.

    Parameters
    ----------
    addr_width, data_width, id_width, max_burst_beats, max_outstanding : int
        As for :class:`AXI4ReadMaster`.
    fifo_depth : int or None
        Depth of the write data FIFO in beats, at least ``max_burst_beats``. Defaults to
        ``2 * max_burst_beats`` so that one burst can fill while another drains.

    Members
    -------
    cmd : In(stream.Signature(cmd_layout(addr_width, data_width)))
        Commands ``{addr, beats}``. Ready while no command is being split into bursts.
    data : In(stream.Signature(data_width))
        Words to write, in command order. Ready while the data FIFO has space; the FIFO accepts
        words before their command arrives.
    bus : Out(AXI4Signature(addr_width, data_width, id_width))
        AXI4 manager port. Only the write channels are used; ``arvalid`` and ``rready`` stay low.
        ``bready`` is always high.
    done : Out(1)
        One-cycle pulse per completed command, the cycle after the B response of its final
        burst. Neither provides nor respects back pressure.
    busy : Out(1)
        High while any accepted command has bursts not yet acknowledged on B.
    error : Out(1)
        Sticky error flag (see above).
    """

    def __init__(self, *, addr_width=32, data_width=128, id_width=1, max_burst_beats=16,
                 max_outstanding=4, fifo_depth=None):
        super().__init__(addr_width=addr_width, data_width=data_width, id_width=id_width,
                         max_burst_beats=max_burst_beats, max_outstanding=max_outstanding,
                         fifo_depth=fifo_depth)

    @staticmethod
    def _default_fifo_depth(max_burst_beats, max_outstanding):
        return 2 * max_burst_beats

    @staticmethod
    def _stream_members(data_width):
        return {"data": In(stream.Signature(data_width)), "done": Out(1)}

    @property
    def cmd_to_aw_cycles(self):
        """Cycles from a command transfer on an idle master, its data buffered, to ``awvalid``."""
        return 3    # splitter state, splitter output register, AW register

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        splitter = self._splitter(m)
        burst = splitter.burst

        m.submodules.wdata = wdata = Queue(self.data_width, self._fifo_depth)
        connect(m, flipped(self.data), wdata.i)
        # Per burst waiting for B: is it the final burst of its command? Its depth limits the
        # bursts in flight to max_outstanding.
        m.submodules.btags = btags = fifo.SyncFIFO(width=1, depth=self._max_outstanding)
        # Per burst whose W beats are not all sent yet: its beat count. It never holds more
        # entries than `btags` (a burst leaves it before its B response), so it never fills.
        m.submodules.wlens = wlens = fifo.SyncFIFO(
            width=bits_for(self._max_burst_beats), depth=self._max_outstanding)

        # Beats of issued bursts not yet sent on W; all of them are in the data FIFO.
        committed = Signal(range(self._fifo_depth + 1))

        issue = Signal()
        m.d.comb += [
            issue.eq(burst.valid & (~bus.awvalid | bus.awready) & btags.w_rdy &
                     (wdata.level >= committed + burst.payload.beats)),
            burst.ready.eq(issue),
            btags.w_en.eq(issue),
            btags.w_data.eq(burst.payload.last),
            wlens.w_en.eq(issue),
            wlens.w_data.eq(burst.payload.beats),
        ]
        with m.If(issue):
            m.d.sync += [
                bus.awvalid.eq(1),
                bus.awaddr.eq(burst.payload.addr),
                bus.awlen.eq(burst.payload.beats - 1),
            ]
        with m.Elif(bus.awready):
            m.d.sync += bus.awvalid.eq(0)
        m.d.comb += [
            bus.awsize.eq(self._bus_sig.size),
            bus.awburst.eq(Burst.INCR),
            bus.awid.eq(0),
            bus.awcache.eq(self.AXCACHE),
            bus.awprot.eq(self.AXPROT),
        ]

        w_index = Signal(range(self._max_burst_beats))    # beat number within the current burst
        w_beat = bus.wvalid & bus.wready
        m.d.comb += [
            bus.wvalid.eq(wlens.r_rdy & wdata.o.valid),
            bus.wdata.eq(wdata.o.payload),
            bus.wstrb.eq(Const(-1, self.data_width // 8)),
            bus.wlast.eq(w_index == wlens.r_data - 1),
            wdata.o.ready.eq(wlens.r_rdy & bus.wready),
            wlens.r_en.eq(w_beat & bus.wlast),
        ]
        with m.If(w_beat):
            m.d.sync += w_index.eq(Mux(bus.wlast, 0, w_index + 1))
        m.d.sync += committed.eq(committed + Mux(issue, burst.payload.beats, 0) - w_beat)

        b_resp = bus.bvalid & bus.bready
        m.d.comb += [
            bus.bready.eq(1),
            btags.r_en.eq(b_resp),
        ]
        m.d.sync += self.done.eq(b_resp & btags.r_rdy & btags.r_data)
        with m.If(b_resp & (bus.bresp != Resp.OKAY)):
            m.d.sync += self.error.eq(1)

        m.d.comb += self.busy.eq(splitter.busy | burst.valid | btags.r_rdy)
        return m
