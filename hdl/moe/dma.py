# SPDX-License-Identifier: BSD-2-Clause
"""The expert-weight DMA scheduler: AXI4 reads of each used expert's weights into a ring
buffer, prefetching the next experts while one computes.

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


__all__ = ["ExpertDMA", "ROUTER", "DEFAULT_RING_HALVES", "choose_ports", "geometry_layout",
           "geometry_of", "ring_halves"]

#: Part number of the router region in :class:`ExpertDMA`'s read port (expert parts are
#: numbered 0..3 in :data:`hdl.moe.layout.PARTS` order).
ROUTER = len(PARTS)

#: The default ring of :class:`ExpertDMA`, in half experts of its layout: two whole experts.
DEFAULT_RING_HALVES = 4

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


def _ring_part_words(words, ports, chunk_words, read_words):
    """Words a part of ``words`` bus words takes in each port's ring: its chunks per port (of
    ``chunk_words``), or with one port its words rounded up to a whole read."""
    if ports == 1:
        n = words
    else:
        n = -(-(-(-words // chunk_words)) // ports) * chunk_words
    return -(-n // read_words) * read_words


def ring_halves(layout, *, ports, chunk_words, read_words):
    """Words of an expert of ``layout`` in each port's ring of :class:`ExpertDMA`: its fc1 half
    (the fc1 parts) and its fc2 half."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    return tuple(sum(_ring_part_words(layout.part_words(x), ports, chunk_words, read_words)
                     for x in PARTS if x.startswith(h)) for h in ("fc1", "fc2"))


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
    ``ring_words`` words in each port's memory, and the jobs follow one another in it: each
    part takes ``ceil(chunks / P)`` chunks of every port's ring (its words rounded up to
    ``read_words`` with one port), a job the sum of its four parts (its *fc1 half*, then its
    *fc2 half*), all of the run-time geometry. A chunk is fetched once its expert is known and
    its place in the ring is free: the consumer has released everything up to ``ring_words``
    words before the chunk's end (the fc1 half of a job with ``release_fc1``, the whole job
    with ``release``). So the fetch runs as far ahead as the ring allows, whatever the experts'
    size: the experts of a small model many at once, those of a large one (an expert larger
    than the ring) a half at a time while the consumer works through the other half. The ring
    must hold the largest half of ``layout`` (the consumer releases a half only once it has
    read all of it).

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
    holding the ring and, after it, the router. The read port (``rd_*``) returns
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
        The largest image's geometry: it sizes the router buffer and the smallest ring allowed
        (its larger half expert), and is the default ``geometry``.
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
    ring_words : int or None
        Bus words of the ring in each port's memory, a multiple of ``read_words`` of at least
        :attr:`half_words` (the largest half expert). ``None``: :data:`DEFAULT_RING_HALVES`
        times ``half_words`` (two of ``layout``'s experts).

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
        The job (index into the used-expert order) the consumer works on: the oldest one it has
        not released (reads address that job's place in the ring).
    ready : Out(4)
        Bit ``p``: part ``p`` of job ``job`` is complete in the ring.
    release_fc1 : In(1)
        Pulse: the consumer is done with the fc1 parts of job ``job`` (frees their words). A
        consumer that never pulses it needs a ring that holds a whole expert.
    release : In(1)
        Pulse: the consumer is done with job ``job`` (frees its words, fc1 parts included).
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
                 read_words=1, chunk_words=None, ring_words=None):
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
        self._layout = layout
        self._ports = ports
        self._addr_width = addr_width
        self._max_burst_beats = max_burst_beats
        self._max_outstanding = max_outstanding
        self._read_words = read_words
        self._chunk_words = chunk_words
        if ring_words is None:
            ring_words = DEFAULT_RING_HALVES * self.half_words
        check_int("ring_words", ring_words)
        if ring_words < self.half_words or ring_words % read_words:
            raise ValueError(f"ring_words ({ring_words}) must be a multiple of read_words "
                             f"({read_words}) of at least {self.half_words}, the largest half "
                             f"expert's words in each port's memory")
        self._ring_words = ring_words
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
    def ring_words(self):
        """Bus words of the ring in each port's memory."""
        return self._ring_words

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
        return _ring_part_words(self._part_words(part), self._ports, self._chunk_words,
                                self._read_words)

    @staticmethod
    def _half(part):
        """The half of an expert a part belongs to: 0 (fc1 parts) or 1 (fc2 parts)."""
        return 0 if PARTS[part].startswith("fc1") else 1

    @property
    def halves_words(self):
        """Words of ``layout``'s fc1 half expert and of its fc2 half in each port's ring."""
        return ring_halves(self._layout, ports=self._ports, chunk_words=self._chunk_words,
                           read_words=self._read_words)

    @property
    def half_words(self):
        """Words of ``layout``'s larger half expert in each port's ring."""
        return max(self.halves_words)

    @property
    def job_words(self):
        """Words of one of ``layout``'s experts in each port's ring."""
        return sum(self.halves_words)

    @property
    def memory_words(self):
        """Words (bus words) of each port's memory: the ring, then the router."""
        return self._ring_words + self._local_words(ROUTER)

    @property
    def max_part_rwords(self):
        """Reads (of ``read_words``) that cover the largest part."""
        return max(-(-self._part_words(p) // self._read_words) for p in range(len(PARTS) + 1))

    @property
    def buffer_bytes(self):
        """On-chip buffer bytes (all ports): the ring and the router."""
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
        logcw, logR, logP = exact_log2(cw), exact_log2(R), exact_log2(P)

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

        # Run-time chunks of each part and the length of its last chunk, of the latched
        # geometry and (for the write side's first part at start) of the input.
        chunks, tails, in_chunking = [], [], []
        for x in range(n_parts + 1):
            c_, t_ = self._chunking(geo.part_words[x])
            chunks.append(Signal(range(-(-max_words[x] // cw) + 1), name=f"chunks{x}"))
            tails.append(Signal(range(cw + 1), name=f"tail{x}"))
            m.d.comb += [chunks[x].eq(c_), tails[x].eq(t_)]
            in_chunking.append(self._chunking(gi.part_words[x]))

        # The ring (same places in every port's memory): each part of a job takes `res` words
        # (its chunks per port, or its words rounded up to a read with one port), at `off` in
        # the job; a job takes J words, its fc1 half H1. Positions are counted from the layer's
        # start (`abs`, never wrapping) for the free-space check, and kept modulo C for the
        # memory addresses.
        C = self._ring_words
        JMAX = self.job_words
        res = []
        for x in range(n_parts):
            r_ = Signal(range(self._local_words(x) + 1), name=f"res{x}")
            if P == 1:
                m.d.comb += r_.eq(((geo.part_words[x] + (R - 1)) >> logR) << logR)
            else:
                m.d.comb += r_.eq(((chunks[x] + (P - 1)) >> logP) << logcw)
            res.append(r_)
        off = [Signal(range(JMAX + 1), name=f"off{x}") for x in range(n_parts)]
        m.d.comb += [off[0].eq(0), off[1].eq(res[0]), off[2].eq(res[0] + res[1]),
                     off[3].eq(off[2] + res[2])]
        H1 = off[2]
        J = Signal(range(JMAX + 1))
        m.d.comb += J.eq(off[3] + res[3])

        def mod_ring(value, limit):
            """``value mod C`` of a value below ``limit`` ≤ 3·C (two conditional
            subtractions)."""
            assert limit <= 3 * C
            v1 = Mux(value >= C, value - C, value)
            return Mux(v1 >= C, v1 - C, v1) if limit > 2 * C else v1

        J_mod = Signal(range(C))               # J mod C (J ≤ 2·C: the ring holds a half)
        m.d.comb += J_mod.eq(mod_ring(J, 2 * C + 1))
        abs_t = range(E * JMAX + C + 1)
        free_end = Signal(abs_t)               # the fetch may fill the ring up to here
        job0 = Signal(abs_t)                   # where job `released` starts
        rbase = Signal(range(C))               # its place in the ring
        with m.If(self.release):
            m.d.sync += [job0.eq(job0 + J), rbase.eq(mod_ring(rbase + J_mod, 2 * C))]
        with m.If(self.start):
            m.d.sync += [job0.eq(0), rbase.eq(0)]
        # The fc1 half of job `released` is free once released (on its own; a release frees
        # the whole job).
        m.d.comb += free_end.eq(job0 + Mux(released1 > released, H1, 0) + C)

        # -- ports -----------------------------------------------------------------------------
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
            cpos = Signal(abs_t, name=f"cpos{p}")       # where job cjob starts in the ring
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

            def restart(first_state=first_state, cjob=cjob, cchunk=cchunk, cpos=cpos):
                # A start abandons whatever the port was doing (it is refused with an error
                # while reads are outstanding, which would land in the new layer's buffers).
                with m.If(self.start):
                    m.d.sync += [cjob.eq(0), cchunk.eq(0), cpos.eq(0)]
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
                                        return [cjob.eq(cjob + 1), cpos.eq(cpos + J)]
                                    # The chunk's end in the ring.
                                    end = cpos + off[x] + (res[x] if P == 1
                                                           else (cchunk + 1) << logcw)
                                    free = end <= free_end
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
            wbase = Signal(range(C), name=f"wbase{p}")     # job wj's place in the ring
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
                m.d.sync += [wj.eq(0), wcount.eq(0), wbase.eq(0),
                             wr.eq(in_has[ROUTER] if may_router else 0),
                             rd.eq(~in_has[ROUTER] if may_router else 1),
                             wp.eq(first_part(in_has))]

            got = data_s.valid & started
            local = Signal(range(self.memory_words + 1), name=f"local{p}")
            with m.If(wr):
                m.d.comb += local.eq(C + wcount)
                with m.If(got):
                    m.d.comb += word_r.eq(1)
                    m.d.sync += wcount.eq(wcount + 1)
                    with m.If(wcount == pwords[ROUTER] - 1):
                        m.d.sync += [wcount.eq(0), wr.eq(0), rd.eq(1)]
            with m.Else():
                with m.Switch(wp):
                    for i, x in enumerate(my_parts):
                        with m.Case(x):
                            m.d.comb += local.eq(mod_ring(wbase + off[x] + wcount, 3 * C))
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
                                    with m.If(wrap):
                                        m.d.sync += wbase.eq(mod_ring(wbase + J_mod, 2 * C))
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
        w = Signal(range(self.max_part_rwords * R + 1))
        m.d.comb += w.eq(self.rd_addr << logR)
        if P > 1:
            sub = w[logcw:logcw + logP]
            local_w = Cat(w[:logcw], w[logcw + logP:])
        else:
            sub = Const(0, 1)
            local_w = w
        raddr = Signal(range(self.memory_words + 1))
        with m.If(self.rd_part == ROUTER):
            m.d.comb += raddr.eq(C + local_w)
        with m.Else():
            part_off = Array(off)[self.rd_part[:2]]
            m.d.comb += raddr.eq(mod_ring(rbase + part_off + local_w, 3 * C))
        sub_q = Signal(max(logP, 1))
        m.d.sync += sub_q.eq(sub)
        datas = []
        for p, mem in enumerate(mems):
            rp = mem.read_port()
            m.d.comb += rp.addr.eq(raddr >> logR)
            datas.append(rp.data)
        m.d.comb += self.rd_data.eq(Array(datas)[sub_q] if P > 1 else datas[0])
        return m
