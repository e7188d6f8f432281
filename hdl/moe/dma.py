# SPDX-License-Identifier: BSD-2-Clause
"""The expert-weight DMA scheduler: AXI4 reads of each used expert's weights into a ring of
half-expert slots, prefetching the next experts while one computes.

Addresses come from the geometry of an :class:`~hdl.moe.layout.ImageLayout`, given at run time
(:func:`geometry_layout`); the buffers are sized for the largest. The image itself is produced
by :func:`hdl.moe.layout.pack`.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, exact_log2

from .._checks import check_int, check_pow2
from ..axi import AXI4Signature
from ..axi_master import AXI4ReadMaster
from .layout import PARTS, ImageLayout


__all__ = ["ExpertDMA", "ROUTER", "choose_ports", "geometry_layout", "geometry_of"]

#: Part number of the router region in :class:`ExpertDMA`'s read port (expert parts are
#: numbered 0..3 in :data:`hdl.moe.layout.PARTS` order).
ROUTER = len(PARTS)

_GEOMETRY_FIELDS = ("num_layers", "num_tasks", "num_experts", "router_stride", "expert_stride",
                    "experts_offset", "layer_stride", "total_bytes")


def geometry_layout(layout):
    """Layout of the run-time geometry of an image whose shape lies within ``layout`` (the
    largest): its layer, task and expert counts, the bus words of each part (:data:`PARTS`, then
    the router), each part's offset in an expert region, and the strides and size of
    :class:`~hdl.moe.layout.ImageLayout`. Each field is as wide as the largest value."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    g = geometry_of(layout)
    fields = {name: range(g[name] + 1) for name in _GEOMETRY_FIELDS}
    fields["part_words"] = data.ArrayLayout(range(max(g["part_words"]) + 1), len(PARTS) + 1)
    fields["part_offsets"] = data.ArrayLayout(range(layout.expert_span + 1), len(PARTS))
    return data.StructLayout(fields)


def geometry_of(layout):
    """The geometry of an :class:`~hdl.moe.layout.ImageLayout`, as a dict for
    :func:`geometry_layout` (what :class:`hdl.moe.geometry.Geometry` computes in hardware)."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    g = {name: getattr(layout, name) for name in _GEOMETRY_FIELDS}
    g["part_words"] = [layout.part_words(x) for x in PARTS + ("router",)]
    g["part_offsets"] = [layout.part_offsets[x] for x in PARTS]
    return g


def choose_ports(weight_bytes_per_cycle, port_bytes_per_cycle, max_ports=4):
    """Number of AXI read ports (a power of two, at most ``max_ports``) whose combined bandwidth
    covers the compute unit's weight consumption.

    Parameters
    ----------
    weight_bytes_per_cycle : float
        Bytes of weights the compute unit consumes per cycle while computing an expert.
    port_bytes_per_cycle : float
        Bandwidth of one port (16 B/cycle for a 128-bit HP port that is never throttled).
    max_ports : int
        Ports available (the ZCU104 PS has four HP ports; beyond ~3.5 the DDR itself, about
        57 B/cycle at 300 MHz, is the limit).
    """
    p = 1
    while p < max_ports and p * port_bytes_per_cycle < weight_bytes_per_cycle:
        p *= 2
    return p


class ExpertDMA(wiring.Component):
    """Fetch a layer's router and its used experts into on-chip buffers.

    Operation
    ---------
    The unit is built for the largest image (``layout``: its buffers hold that image's parts);
    the image of a layer is described at run time by ``geometry`` (:func:`geometry_layout`, the
    :func:`geometry_of` an :class:`ImageLayout` of at most ``layout``'s dimensions, which
    :class:`hdl.moe.geometry.Geometry` computes in hardware from the model's shape).
    ``start`` latches ``geometry``, ``image_base``, ``image_bytes``, ``layer`` and ``task`` and
    checks them: a task or layer out of range, an image smaller than the geometry's
    ``total_bytes``, a base not aligned to 4 KiB, an image running past the address space, a
    geometry with a part larger than ``layout``'s (or empty) or an expert count of 0 or above
    ``layout``'s, or a ``start`` while reads are still outstanding (``busy``) set the sticky
    ``error`` and nothing is fetched. Otherwise the
    task's router (E × D weights) is fetched at once into the router buffer; ``router_ready``
    rises when it is complete.

    Then every used expert that arrives on ``experts`` (the order of
    :class:`~hdl.moe.reorder.Reorder`) becomes a *job*, fetched part by part in
    :data:`~hdl.moe.layout.PARTS` order (each bias before its weights). The buffer is a ring of
    ``slots`` half-expert slots: job ``i``'s fc1 parts (half ``2i``) go to slot ``2i mod
    slots``, its fc2 parts (half ``2i + 1``) to slot ``(2i + 1) mod slots``, and half ``h`` is
    fetched once its expert is known and the consumer has released half ``h − slots`` (the fc1
    half of a job with ``release_fc1``, its fc2 half with ``release``). With 4 slots (two
    banks) expert ``i + 1`` is fetched while expert ``i`` computes, and the fc1 half of expert
    ``i + 2`` while expert ``i`` computes its fc2; each slot more lets the fetch run half an
    expert further ahead, which an expert with many tokens (long products on the same bytes)
    leaves time for.

    The consumer names the job it works on (``job``) and sees which of its four parts are
    complete (``ready``); when it is done with the job's fc1 parts it pulses ``release_fc1``,
    when it is done with the whole job ``release`` (jobs are released in order, each
    ``release_fc1`` before its ``release``; a ``release`` frees the fc1 parts too, so a consumer
    that never pulses ``release_fc1`` gets whole jobs). ``want`` tells the
    unit in which cycles the consumer waits for a part (``want_part``), which it counts in
    ``stall_cycles`` when that part is not ready.

    Ports
    -----
    With ``ports`` = P > 1 AXI4 read managers share the load: every part is cut into chunks of
    ``chunk_words`` bus words (one maximal burst), chunk ``c`` goes to port ``c mod P`` and is
    stored in that port's buffer memory, so all ports stream concurrently and a part is complete
    when every port has delivered its chunks. With P = 1 each part is one command. The read
    managers keep ``rready`` high (the buffers always accept), so the AXI bus is never stalled.

    Buffers
    -------
    One memory per port, ``read_words`` bus words wide (each write fills one bus-word lane),
    holding the ``slots`` half-expert slots and the router. The read port (``rd_*``) returns
    ``read_words`` consecutive bus words of a part of job ``job`` one cycle after the address;
    word ``w`` of a part lives in port ``(w / chunk_words) mod P``'s memory, so consecutive
    reads may come from different ports.

    Errors
    ------
    ``error`` is sticky: bad ``start`` arguments (see above) and an expert id ≥ the geometry's
    ``num_experts`` until the next ``start``; an AXI error response or a malformed command until
    reset (the :class:`~hdl.axi_master.AXI4ReadMaster` flags are sticky until reset).
    After an error no new read is issued, outstanding reads drain, and ``busy`` falls: the
    consumer must watch ``error`` instead of waiting for ``ready``.

    Parameters
    ----------
    layout : ImageLayout
        The largest image's geometry: it sizes the buffers (``slots`` halves of its expert's
        parts and its router) and is the default ``geometry``.
    ports : int
        AXI4 read managers, 1, 2 or 4.
    addr_width : int
        AXI address width.
    max_burst_beats : int
        Longest burst (16: the ZCU104 HP ports' AXI4 limit).
    max_outstanding : int
        Bursts in flight per port; with 16-beat bursts, 8 cover a 128-cycle round trip.
    read_words : int
        Bus words per read of the buffer (a power of two ≤ ``chunk_words``).
    chunk_words : int or None
        Interleave granule with P > 1, a power of two (default ``max_burst_beats``).
    slots : int
        Half-expert slots of the buffer, at least 2 (4: two whole experts).

    Members
    -------
    geometry : In(geometry_layout(layout)), init ``geometry_of(layout)``
        The image's run-time geometry (latched at ``start``).
    start : In(1)
        Pulse: begin a layer (see above).
    image_base : In(addr_width)
        Byte address of the image (4 KiB aligned).
    image_bytes : In(addr_width + 1)
        Size of the image in bytes.
    layer : In(8)
        MoE layer index (0 = the model's first MoE block).
    task : In(8)
        Task id: selects the router.
    experts : In(stream.Signature(unsigned(bits_for(E − 1))))
        Used expert ids in processing order. Always ready (at most E per layer are stored).
    router_ready : Out(1)
        The router buffer holds the task's router.
    job : In(range(E))
        The job (index into the used-expert order) the consumer works on.
    ready : Out(4)
        Bit ``p``: part ``p`` of job ``job`` is complete in its slot.
    release_fc1 : In(1)
        Pulse: the consumer is done with the fc1 parts of job ``job`` (frees their slot).
    release : In(1)
        Pulse: the consumer is done with job ``job`` (frees its slots, fc1 parts included).
    want, want_part : In(1), In(range(4))
        The consumer waits for part ``want_part`` of job ``job`` in this cycle.
    rd_part : In(range(5)), rd_addr : In(...)
        Read request: ``read_words`` words starting at bus word ``rd_addr·read_words`` of part
        ``rd_part`` (``ROUTER`` = 4 for the router) of job ``job``.
    rd_data : Out(read_words · data_width)
        The words read, one cycle after the request (first word in the low bits).
    rd_avail : Out(1)
        The words of the request (of job ``job``, or the router) are in the buffer: a consumer
        may read a part while it is still arriving, as far as ``rd_avail`` says.
    bytes_fetched : Out(32)
        Expert weight bytes delivered since ``start``.
    router_bytes : Out(32)
        Router bytes delivered since ``start``.
    stall_cycles : Out(32)
        Cycles since ``start`` with ``want`` high and the wanted part not ready (the consumer
        waits for a word it needs).
    busy : Out(1)
        Reads are being issued or are outstanding.
    error : Out(1)
        Sticky error (see above).
    bus0 … bus{P−1} : Out(AXI4Signature(addr_width, data_width, 1))
        The AXI4 manager ports (read channels only).
    """

    def __init__(self, layout, *, ports=1, addr_width=32, max_burst_beats=16, max_outstanding=8,
                 read_words=1, chunk_words=None, slots=4):
        if not isinstance(layout, ImageLayout):
            raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
        check_pow2("ports", ports)
        if ports > 4:
            raise ValueError(f"ports must be 1, 2 or 4, not {ports!r}")
        check_pow2("max_burst_beats", max_burst_beats)
        check_int("max_outstanding", max_outstanding)
        check_pow2("read_words", read_words)
        if chunk_words is None:
            chunk_words = max_burst_beats
        check_pow2("chunk_words", chunk_words)
        if read_words > chunk_words:
            raise ValueError(f"read_words ({read_words}) must not exceed chunk_words "
                             f"({chunk_words})")
        if chunk_words * (layout.data_width // 8) > 4096:
            raise ValueError(f"chunk_words ({chunk_words}) × the bus word must fit one 4 KiB page")
        check_int("slots", slots, 2)        # an fc1 and an fc2 half
        self._slots = slots
        self._layout = layout
        self._ports = ports
        self._addr_width = addr_width
        self._max_burst_beats = max_burst_beats
        self._max_outstanding = max_outstanding
        self._read_words = read_words
        self._chunk_words = chunk_words
        E = layout.num_experts
        bus_sig = AXI4Signature(addr_width=addr_width, data_width=layout.data_width, id_width=1)
        members = {
            "geometry": In(geometry_layout(layout), init=geometry_of(layout)),
            "start": In(1),
            "image_base": In(addr_width),
            "image_bytes": In(addr_width + 1),
            "layer": In(8),
            "task": In(8),
            "experts": In(stream.Signature(unsigned(bits_for(E - 1)))),
            "router_ready": Out(1),
            "job": In(range(E)),
            "ready": Out(len(PARTS)),
            "release_fc1": In(1),
            "release": In(1),
            "want": In(1),
            "want_part": In(range(len(PARTS))),
            "rd_part": In(range(len(PARTS) + 1)),
            "rd_addr": In(range(max(self.max_part_rwords, 2))),
            "rd_data": Out(read_words * layout.data_width),
            "rd_avail": Out(1),
            "bytes_fetched": Out(32),
            "router_bytes": Out(32),
            "stall_cycles": Out(32),
            "busy": Out(1),
            "error": Out(1),
        }
        for p in range(ports):
            members[f"bus{p}"] = Out(bus_sig)
        super().__init__(members)

    # -- parameters and geometry ------------------------------------------------------------

    @property
    def layout(self):
        """The :class:`ImageLayout`."""
        return self._layout

    @property
    def ports(self):
        """Number of AXI4 read managers."""
        return self._ports

    @property
    def addr_width(self):
        """AXI address width."""
        return self._addr_width

    @property
    def read_words(self):
        """Bus words per buffer read."""
        return self._read_words

    @property
    def chunk_words(self):
        """Interleave granule between ports, in bus words."""
        return self._chunk_words

    @property
    def slots(self):
        """Half-expert slots of the buffer."""
        return self._slots

    @property
    def buses(self):
        """The AXI4 manager interfaces, port 0 first."""
        return [getattr(self, f"bus{p}") for p in range(self._ports)]

    def _part_words(self, part):
        return self._layout.part_words("router" if part == ROUTER else PARTS[part])

    def _chunks(self, part):
        return -(-self._part_words(part) // self._chunk_words)

    def _port_chunks(self, part, port):
        """Chunks of ``part`` that port ``port`` fetches."""
        return len(range(port, self._chunks(part), self._ports))

    def _port_words(self, part, port):
        """Bus words of ``part`` that port ``port`` fetches."""
        n = self._port_chunks(part, port)
        if n == 0:
            return 0
        last_c = port + (n - 1) * self._ports
        tail = self._part_words(part) - (self._chunks(part) - 1) * self._chunk_words
        return (n - 1) * self._chunk_words + (tail if last_c == self._chunks(part) - 1
                                              else self._chunk_words)

    def _local_words(self, part):
        """Words reserved for ``part`` in each port's memory (a multiple of read_words)."""
        n = -(-self._chunks(part) // self._ports) * self._chunk_words
        if self._ports == 1:
            n = self._part_words(part)
        return -(-n // self._read_words) * self._read_words

    @staticmethod
    def _half(part):
        """The half of an expert a part belongs to: 0 (fc1 parts) or 1 (fc2 parts)."""
        return 0 if PARTS[part].startswith("fc1") else 1

    @property
    def part_bases(self):
        """Word offset of each part (0..3) in its half-expert slot of a port memory, then the
        router's (after the slots)."""
        out, off = [], [0, 0]
        for part in range(len(PARTS)):
            out.append(off[self._half(part)])
            off[self._half(part)] += self._local_words(part)
        out.append(self._slots * self.slot_words)
        return out

    @property
    def slot_words(self):
        """Words of one half-expert slot in each port's memory (the larger half's)."""
        return max(sum(self._local_words(p) for p in range(len(PARTS)) if self._half(p) == h)
                   for h in (0, 1))

    @property
    def memory_words(self):
        """Words (bus words) of each port's memory."""
        return self._slots * self.slot_words + self._local_words(ROUTER)

    @property
    def max_part_rwords(self):
        """Reads (of ``read_words``) that cover the largest part."""
        return max(-(-self._part_words(p) // self._read_words) for p in range(len(PARTS) + 1))

    @property
    def buffer_bytes(self):
        """On-chip buffer bytes (all ports): the slots and the router."""
        return self._ports * self.memory_words * self._layout.word_bytes

    def fetch_cycles(self, bytes_per_cycle):
        """Cycles to fetch one expert at ``bytes_per_cycle`` (all ports together)."""
        return self._layout.bytes_for_expert() / bytes_per_cycle

    # -- hardware ---------------------------------------------------------------------------

    def _chunking(self, words):
        """Run-time chunks of a part of ``words`` bus words (a value), and the length of its last
        chunk: ``(chunks, tail)``."""
        cw = self._chunk_words
        return (words + (cw - 1)) >> exact_log2(cw), ((words - 1) & (cw - 1)) + 1

    def _port_share(self, words, chunks, tail, port):
        """Run-time chunks and bus words that ``port`` fetches of a part of ``words`` bus words
        cut into ``chunks`` chunks, the last of ``tail`` words (:meth:`_chunking`)."""
        P, cw = self._ports, self._chunk_words
        if P == 1:
            return Mux(words != 0, 1, 0), words
        n = (chunks + (P - 1 - port)) >> exact_log2(P)
        owns_last = (((chunks - 1) & (P - 1)) == port) & (n != 0)
        return n, (n << exact_log2(cw)) - Mux(owns_last, cw - tail, 0)

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        P, cw, R = self._ports, self._chunk_words, self._read_words
        E = lay.num_experts
        wb = lay.word_bytes
        aw = self._addr_width
        n_parts = len(PARTS)
        max_words = [self._part_words(x) for x in range(n_parts + 1)]

        # -- start: latch the geometry and the arguments, and check them ------------------------
        gi = self.geometry
        geo = Signal.like(gi)                  # the layer's geometry, latched at start
        layer_base = Signal(aw + 1)
        router_base = Signal(aw + 1)
        started = Signal()
        bad_args = Signal()
        arg_error = Signal()
        list_error = Signal()
        axi_errors = []
        bad_geometry = Cat(
            (gi.num_experts == 0) | (gi.num_experts > E),
            *[(gi.part_words[x] == 0) | (gi.part_words[x] > max_words[x])
              for x in range(n_parts + 1)]).any()
        m.d.comb += bad_args.eq((self.task >= gi.num_tasks) | (self.layer >= gi.num_layers) |
                                (self.image_bytes < gi.total_bytes) |
                                (self.image_base[:12] != 0) |
                                (self.image_base + gi.total_bytes > (1 << aw)) |
                                bad_geometry | self.busy)
        with m.If(self.start):
            layer_off = self.layer * gi.layer_stride
            m.d.sync += [
                geo.eq(gi),
                layer_base.eq(self.image_base + layer_off + gi.experts_offset),
                router_base.eq(self.image_base + layer_off + lay.routers_offset +
                               self.task * gi.router_stride),
                started.eq(~bad_args),
                arg_error.eq(bad_args),
                list_error.eq(0),
            ]

        # -- the used-expert list ----------------------------------------------------------------
        elist = Array(Signal(range(E), name=f"elist{i}") for i in range(E))
        n_known = Signal(range(E + 1))
        m.d.comb += self.experts.ready.eq(1)
        with m.If(self.experts.valid & started):
            with m.If(n_known < E):
                m.d.sync += [
                    elist[n_known].eq(self.experts.payload),
                    n_known.eq(n_known + 1),
                ]
            with m.If((self.experts.payload >= geo.num_experts) | (n_known >= geo.num_experts)):
                m.d.sync += list_error.eq(1)
        released = Signal(range(E + 1))         # jobs released
        released1 = Signal(range(E + 1))        # jobs whose fc1 parts are released
        with m.If(self.release):
            m.d.sync += released.eq(released + 1)
        with m.If(self.release_fc1):
            m.d.sync += released1.eq(released1 + 1)
        with m.If(self.start):
            m.d.sync += [n_known.eq(0), released.eq(0), released1.eq(0)]

        # The fc1 parts of a job are free once released on their own or with the whole job.
        fc1_free = Mux(released1 > released, released1, released)
        S = self._slots

        def slot_free(job, part):
            """Job ``job``'s half of ``part`` (half ``g = 2·job + h``) may be fetched: half
            ``g − S`` is released. That half is job ``job − c``'s fc1 half when ``g − S`` is
            even, its fc2 half when odd (the parity and ``c`` do not depend on ``job``)."""
            h = self._half(part)
            odd = (h - S) % 2
            c = (S - h + odd) // 2
            return job < (released if odd else fc1_free) + c

        def slot_bases(job):
            """Word offsets of job ``job``'s two slots (its fc1 half, its fc2 half) in a port
            memory."""
            return [Array(Const(((2 * j + h) % S) * self.slot_words,
                                range(S * self.slot_words + 1)) for j in range(E + 1))[job]
                    for h in (0, 1)]

        # Run-time chunks of each part and the length of its last chunk, of the latched
        # geometry and (for the write side's first part at start) of the input.
        chunks, tails, in_chunking = [], [], []
        for x in range(n_parts + 1):
            c_, t_ = self._chunking(geo.part_words[x])
            chunks.append(Signal(range(-(-max_words[x] // cw) + 1), name=f"chunks{x}"))
            tails.append(Signal(range(cw + 1), name=f"tail{x}"))
            m.d.comb += [chunks[x].eq(c_), tails[x].eq(t_)]
            in_chunking.append(self._chunking(gi.part_words[x]))

        # -- ports -----------------------------------------------------------------------------
        bases = self.part_bases
        wjob = []            # per port: job being written
        wpart = []           # per port: part being written
        wcounts = []         # per port: words of that part written
        rdone = []           # per port: router written
        has = []             # per port: [part] the port fetches words of it in this layer
        mems = []
        words_in = []        # per port: a word was delivered this cycle (expert / router)
        any_busy = []
        for p in range(P):
            master = AXI4ReadMaster(addr_width=aw, data_width=lay.data_width, id_width=1,
                                    max_burst_beats=self._max_burst_beats,
                                    max_outstanding=self._max_outstanding)
            m.submodules[f"master{p}"] = master
            wiring.connect(m, wiring.flipped(getattr(self, f"bus{p}")), master.bus)
            axi_errors.append(master.error)
            any_busy.append(master.busy)

            mem = Memory(shape=unsigned(R * lay.data_width), depth=-(-self.memory_words // R),
                         init=[])
            m.submodules[f"buf{p}"] = mem
            mems.append(mem)

            # The parts this port may fetch (at the largest geometry; at run time a part may
            # have fewer chunks than ports, and a port none of it).
            my_parts = [x for x in range(n_parts) if self._port_chunks(x, p)]
            may_router = self._port_chunks(ROUTER, p) > 0

            # This port's share of each part, of the latched geometry and (at start) the input.
            n_my, pwords, in_words = [], [], []
            for x in range(n_parts + 1):
                n_, w_ = self._port_share(geo.part_words[x], chunks[x], tails[x], p)
                n_my.append(Signal(range(self._port_chunks(x, p) + 1), name=f"n_my{p}_{x}"))
                pwords.append(Signal(range(max(self._port_words(x, p), 1) + 1),
                                     name=f"pwords{p}_{x}"))
                m.d.comb += [n_my[x].eq(n_), pwords[x].eq(w_)]
                in_words.append(self._port_share(gi.part_words[x], *in_chunking[x], p)[1])
            has.append([pw != 0 for pw in pwords])

            # Command side. State: which region (router / job), part, chunk ordinal.
            cjob = Signal(range(E + 1), name=f"cjob{p}")
            cpart = Signal(range(n_parts), name=f"cpart{p}")
            cchunk = Signal(range(max(self._port_chunks(x, p) for x in range(n_parts + 1)) + 1),
                            name=f"cchunk{p}")
            job_base = Signal(aw + 1, name=f"job_base{p}")
            cmd = master.cmd

            def chunk_cmd(part, region_base, chunk_ordinal, *, p=p):
                """Drive ``cmd`` for chunk ``chunk_ordinal`` of this port in ``part``."""
                if P == 1:
                    addr = region_base
                    beats = geo.part_words[part]
                else:
                    c = p + chunk_ordinal * P
                    addr = region_base + c * (cw * wb)
                    beats = Mux(c == chunks[part] - 1, tails[part], cw)
                return [cmd.payload.addr.eq(addr), cmd.payload.beats.eq(beats)]

            def part_addr(part, job_base=job_base):
                return job_base + geo.part_offsets[part]

            first_state = "ROUTER" if may_router else "WAIT"

            def restart(first_state=first_state, cjob=cjob, cchunk=cchunk):
                # A start abandons whatever the port was doing (it is refused with an error
                # while reads are outstanding, which would land in the new layer's buffers).
                with m.If(self.start):
                    m.d.sync += [cjob.eq(0), cchunk.eq(0)]
                    m.next = first_state
                    with m.If(bad_args):
                        m.next = "IDLE"

            with m.FSM(name=f"cmd{p}"):
                with m.State("IDLE"):
                    restart()
                if may_router:
                    with m.State("ROUTER"):
                        with m.If(n_my[ROUTER] == 0):
                            m.next = "WAIT"
                        with m.Else():
                            m.d.comb += chunk_cmd(ROUTER, router_base, cchunk)
                            m.d.comb += cmd.valid.eq(~self.error)
                            with m.If(cmd.ready & ~self.error):
                                m.d.sync += cchunk.eq(cchunk + 1)
                                with m.If(cchunk == n_my[ROUTER] - 1):
                                    m.d.sync += cchunk.eq(0)
                                    m.next = "WAIT"
                        restart()
                with m.State("WAIT"):
                    # Job cjob may start once its expert is known (each part waits in JOB for
                    # its place in the bank).
                    can = (cjob < n_known) & ~self.error
                    if my_parts:
                        with m.If(can):
                            m.d.sync += [
                                job_base.eq(layer_base + elist[cjob] * geo.expert_stride),
                                cpart.eq(my_parts[0]),
                                cchunk.eq(0),
                            ]
                            m.next = "JOB"
                    restart()
                if my_parts:
                    with m.State("JOB"):
                        with m.Switch(cpart):
                            for i, x in enumerate(my_parts):
                                with m.Case(x):
                                    def next_part(i=i):
                                        if i + 1 < len(my_parts):
                                            return [cpart.eq(my_parts[i + 1])]
                                        m.next = "WAIT"
                                        return [cjob.eq(cjob + 1)]
                                    free = slot_free(cjob, x)
                                    with m.If(n_my[x] == 0):
                                        # None of this part is ours in this layer.
                                        m.d.sync += next_part()
                                    with m.Else():
                                        m.d.comb += chunk_cmd(x, part_addr(x), cchunk)
                                        m.d.comb += cmd.valid.eq(~self.error & free)
                                        with m.If(cmd.ready & ~self.error & free):
                                            m.d.sync += cchunk.eq(cchunk + 1)
                                            with m.If(cchunk == n_my[x] - 1):
                                                m.d.sync += cchunk.eq(0)
                                                m.d.sync += next_part()
                        with m.If(self.error):
                            m.next = "WAIT"
                        restart()

            # Write side: every delivered word goes to the buffer; counters follow the same
            # (region, part, word) sequence as the commands, skipping the parts with no word
            # for this port.
            w_port = mem.write_port(granularity=lay.data_width)
            data_s = master.data
            m.d.comb += data_s.ready.eq(1)
            wj = Signal(range(E + 1), name=f"wjob{p}")
            wp = Signal(range(n_parts + 1), name=f"wpart{p}")
            wr = Signal(name=f"wrouter{p}")       # 1 while writing the router
            wcount = Signal(range(max(self._port_words(x, p) for x in range(n_parts + 1)) + 1),
                            name=f"wcount{p}")
            rd = Signal(name=f"rdone{p}")
            wjob.append(wj)
            wpart.append(wp)
            wcounts.append(wcount)
            rdone.append(rd)
            word_e = Signal(name=f"word_e{p}")
            word_r = Signal(name=f"word_r{p}")
            words_in.append((word_e, word_r))

            def first_part(present, parts=my_parts, default=None, my_parts=my_parts):
                """The first of ``parts`` whose ``present`` is true, else ``default`` (the first
                of ``my_parts``)."""
                out = (my_parts[0] if my_parts else 0) if default is None else default
                for x in reversed(parts):
                    out = Mux(present[x], x, out)
                return out

            in_has = [w != 0 for w in in_words]
            with m.If(self.start & ~bad_args):
                m.d.sync += [wj.eq(0), wcount.eq(0),
                             wr.eq(in_has[ROUTER] if may_router else 0),
                             rd.eq(~in_has[ROUTER] if may_router else 1),
                             wp.eq(first_part(in_has))]

            got = data_s.valid & started
            local = Signal(range(self.memory_words + 1), name=f"local{p}")
            with m.If(wr):
                m.d.comb += local.eq(bases[ROUTER] + wcount)
                with m.If(got):
                    m.d.comb += word_r.eq(1)
                    m.d.sync += wcount.eq(wcount + 1)
                    with m.If(wcount == pwords[ROUTER] - 1):
                        m.d.sync += [wcount.eq(0), wr.eq(0), rd.eq(1)]
            with m.Else():
                w_slots = slot_bases(wj)
                with m.Switch(wp):
                    for i, x in enumerate(my_parts):
                        with m.Case(x):
                            m.d.comb += local.eq(w_slots[self._half(x)] + bases[x] + wcount)
                            with m.If(got):
                                m.d.comb += word_e.eq(1)
                                m.d.sync += wcount.eq(wcount + 1)
                                with m.If(wcount == pwords[x] - 1):
                                    m.d.sync += wcount.eq(0)
                                    # The next part with words for this port, or the next
                                    # job's first.
                                    later = my_parts[i + 1:]
                                    wrap = ~Cat(has[p][y] for y in later).any() if later else 1
                                    m.d.sync += [wp.eq(first_part(has[p], later,
                                                                  first_part(has[p]))),
                                                 wj.eq(wj + wrap)]
            m.d.comb += [
                w_port.addr.eq(local >> exact_log2(R)),
                w_port.data.eq(data_s.payload.data.replicate(R)),
            ]
            if R == 1:
                m.d.comb += w_port.en.eq(got)
            else:
                m.d.comb += w_port.en.eq(Mux(got, Const(1, R) << local[:exact_log2(R)], 0))

        # -- readiness -------------------------------------------------------------------------
        for x in range(n_parts):
            terms = []
            for p in range(P):
                if self._port_chunks(x, p):
                    terms.append(~has[p][x] | (wjob[p] > self.job)
                                 | ((wjob[p] == self.job) & (wpart[p] > x)))
            m.d.comb += self.ready[x].eq(Cat(*terms).all() & started if terms else started)
        rterms = [rdone[p] for p in range(P) if self._port_chunks(ROUTER, p)]
        m.d.comb += self.router_ready.eq(Cat(*rterms).all() & started)

        # The words of the read at rd_addr of part rd_part of job `job`: all in the bank once its
        # last word is (each port writes its words of a part in ascending order, and a read's
        # words lie in one chunk). Bus word w of a part is fetched by port (w / cw) mod P, as
        # word ((w / cw) div P)·cw + w mod cw of that port's share.
        with m.Switch(self.rd_part):
            for x in range(n_parts):
                with m.Case(x):
                    last = Signal(range(max(max_words[x], 2)), name=f"rd_last{x}")
                    w = self.rd_addr * R + (R - 1)
                    nw = geo.part_words[x]
                    m.d.comb += last.eq(Mux(w >= nw, nw - 1, w))
                    if P == 1:
                        port, local = Const(0, 1), last
                    else:
                        chunk = last >> exact_log2(cw)
                        port = chunk[:exact_log2(P)]
                        local = (((chunk >> exact_log2(P)) << exact_log2(cw))
                                 | last[:exact_log2(cw)])
                    landed = []
                    for p in range(P):
                        landed.append(started & (
                            (wjob[p] > self.job)
                            | ((wjob[p] == self.job)
                               & ((wpart[p] > x) | ((wpart[p] == x) & (wcounts[p] > local))))))
                    m.d.comb += self.rd_avail.eq(Array(landed)[port] if P > 1 else landed[0])
            with m.Case(ROUTER):
                m.d.comb += self.rd_avail.eq(self.router_ready)

        # -- counters --------------------------------------------------------------------------
        n_e = sum(we.as_unsigned() for we, _ in words_in)
        n_r = sum(wr_.as_unsigned() for _, wr_ in words_in)
        m.d.sync += [
            self.bytes_fetched.eq(self.bytes_fetched + n_e * wb),
            self.router_bytes.eq(self.router_bytes + n_r * wb),
        ]
        stall = self.want & ~Array(self.ready[x] for x in range(n_parts))[self.want_part]
        with m.If(stall):
            m.d.sync += self.stall_cycles.eq(self.stall_cycles + 1)
        with m.If(self.start):
            m.d.sync += [self.bytes_fetched.eq(0), self.router_bytes.eq(0),
                         self.stall_cycles.eq(0)]
        m.d.comb += [
            self.busy.eq(Cat(*any_busy).any()),
            # AXI errors are sticky in the read managers until reset.
            self.error.eq(arg_error | list_error | Cat(*axi_errors).any()),
        ]

        # -- read port -------------------------------------------------------------------------
        logcw, logR, logP = exact_log2(cw), exact_log2(R), exact_log2(P)
        w = Signal(range(self.max_part_rwords * R + 1))
        m.d.comb += w.eq(self.rd_addr << logR)
        if P > 1:
            sub = w[logcw:logcw + logP]
            local_w = Cat(w[:logcw], w[logcw + logP:])
        else:
            sub = Const(0, 1)
            local_w = w
        part_base = Array(Const(b, range(self.memory_words + 1)) for b in bases)[self.rd_part]
        r_fc1, r_fc2 = slot_bases(self.job)
        slot_off = Mux(self.rd_part == ROUTER, 0,
                       Mux(self.rd_part >= PARTS.index("fc2_b"), r_fc2, r_fc1))
        raddr = Signal(range(self.memory_words + 1))
        m.d.comb += raddr.eq(part_base + slot_off + local_w)
        sub_q = Signal(max(logP, 1))
        m.d.sync += sub_q.eq(sub)
        datas = []
        for p, mem in enumerate(mems):
            rp = mem.read_port()
            m.d.comb += rp.addr.eq(raddr >> logR)
            datas.append(rp.data)
        m.d.comb += self.rd_data.eq(Array(datas)[sub_q] if P > 1 else datas[0])
        return m
