# SPDX-License-Identifier: BSD-2-Clause
"""The engines of the accelerator's datapath, each driven by one kind of instruction.

:class:`SharedMoELayer`
    The MoE layer engine (:class:`hdl.moe.layer.MoELayer`) with its compute unit's command,
    weight, bias and status streams opened to the sequencer while the engine is idle, so that
    dense layers, attention and MoE layers share one compute unit and one activation buffer.
:class:`ParamStream`
    Reads the parameter stream (:mod:`hdl.isa`) ahead of execution, one interleaved sub-stream
    per AXI read manager, a bus word of each per cycle, and unpacks its segments into the weight,
    bias and LayerNorm-parameter queues.
:class:`RowEngine`
    Streams rows of the activation buffer through a row unit (LayerNorm or softmax) and writes
    the unit's rows back, sharing the buffer's one external port between reads and writes.
:class:`LoadEngine`, :class:`StoreEngine`
    DDR → activation buffer and activation buffer → DDR copies.

Every engine reports completion or an error and never waits for something an error prevents.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from . import isa
from .axi_master import AXI4ReadMaster, AXI4WriteMaster
from .moe.layer import MoELayer
from .nonlin.layernorm import layernorm_param_layout
from .nonlin.softmax import softmax_input_layout, softmax_output_layout
from .stream_util import Queue
from .systolic.unit import command_layout, status_layout, w_stream_layout
from .width import Packer, Unpacker

__all__ = ["SharedMoELayer", "ParamStream", "RowEngine", "LoadEngine", "StoreEngine",
           "ext_request_layout"]


def _log2(v):
    return (v - 1).bit_length() if v > 1 else 0


def _beats_of(words, wb, dw):
    """Bus words (of ``dw`` bits) that ``words`` buffer words of ``wb`` bits take."""
    if wb >= dw:
        return words << _log2(wb // dw)
    sh = _log2(dw // wb)
    return (words + (1 << sh) - 1) >> sh


def _pieces(m, engine, P, wb, dw):
    """The LOAD / STORE copy of ``engine`` (its ``start``, ``words``, ``addr``, ``abuf_addr``)
    cut into ``P`` contiguous pieces of ``ceil(words / P)`` words, rounded up to whole bus
    words. Returns ``go`` (the cycle after ``start``, when the pieces start) and, per piece,
    ``(count, ddr_addr, abuf_addr)``: its word count (0 for a piece past the end) and where it
    starts in DDR and in the buffer."""
    per_beat = max(dw // wb, 1)
    piece = Signal(24)
    words_q = Signal(24)
    abuf_q = Signal.like(engine.abuf_addr)
    addr_q = Signal.like(engine.addr)
    share = (engine.words + P - 1) >> _log2(P)
    with m.If(engine.start):
        m.d.sync += [
            piece.eq(((share + per_beat - 1) >> _log2(per_beat)) << _log2(per_beat)),
            words_q.eq(engine.words), abuf_q.eq(engine.abuf_addr), addr_q.eq(engine.addr),
        ]
    # The pieces start one cycle after `start` (the piece size is registered).
    go = Signal()
    m.d.sync += go.eq(engine.start)
    out = []
    for j in range(P):
        first = Signal(24, name=f"first{j}")
        count = Signal(24, name=f"count{j}")
        m.d.comb += [
            first.eq(piece * j),
            count.eq(Mux(words_q > first,
                         Mux(words_q - first > piece, piece, words_q - first), 0)),
        ]
        out.append((count, addr_q + first * (wb // 8), abuf_q + first))
    return go, out


def _round_robin(m, turn, valid, P):
    """One-hot grant of the first of ``valid``'s ``P`` bits at or after ``turn``."""
    grant = Signal(P)
    for k in range(P):
        with m.If(turn == k):
            for i in range(P):
                j = (k + i) % P
                earlier = [(k + t) % P for t in range(i)]
                m.d.comb += grant[j].eq(
                    valid[j] & ~Cat(*(valid[e] for e in earlier)).any() if earlier
                    else valid[j])
    return grant


def ext_request_layout(addr_bits, word_bits):
    """What an engine drives on the activation buffer's external port: ``r_addr`` (the read
    data comes back one cycle later), ``w_addr``, ``w_en``, ``w_data``: a read and a write in the
    same cycle. The engine's ``ext_r_ok``/``ext_w_ok`` inputs say whether the port takes the
    read/the write offered in this cycle (:func:`hdl.systolic.unit.ext_signature`); an engine
    holds an access that is not taken."""
    return data.StructLayout({"r_addr": unsigned(addr_bits), "w_addr": unsigned(addr_bits),
                              "w_en": 1, "w_data": word_bits})


class SharedMoELayer(MoELayer):
    """:class:`~hdl.moe.layer.MoELayer` whose compute unit also serves the sequencer.

    The MoE engine owns the compute unit (:attr:`compute_unit`) and its activation buffer. While
    the engine is idle (``busy`` low), the streams below reach the compute unit; while it runs,
    they are held off (``ready``/``valid`` low) and the engine drives the unit itself. The
    activation buffer's ``ext`` port is the engine's own (open while it is idle).

    The unit's weight queue is shared too: when the engine starts, it must hold no weights of
    another product (the sequencer feeds ``cu_w`` only while a MATMUL that takes them runs).

    Attributes (interfaces outside the component's signature, driven as plain signals)
    ----------------------------------------------------------------------------------
    cu_cmd : stream of ``command_layout``
        Commands. A command is registered here first (one cycle), then offered to the unit.
    cu_w, cu_b : streams
        Weight and bias words (the unit's ``w`` and ``b``).
    cu_done : stream of ``status_layout``
        The unit's command status.
    cu_busy : Signal
        The unit is running a command, has a status waiting, or a command is registered here.
    sm_i, sm_o : streams of ``softmax_input_layout`` / ``softmax_output_layout``
        The softmax unit's input and output (:attr:`softmax`, built from ``softmax``, the
        accelerator's attention softmax configuration): the router's rows and the attention
        rows go through one unit.
    """

    def __init__(self, config, *, softmax=None):
        super().__init__(config, softmax=softmax)
        sc = self.softmax.config
        self.sm_i = stream.Signature(softmax_input_layout(sc)).flip().create(path=("sm_i",))
        self.sm_o = stream.Signature(softmax_output_layout(sc)).create(path=("sm_o",))
        cc = self.compute_unit.config
        a, nx = cc.array, cc.numerics
        # Sinks seen from here (flipped), so that a source connects to them with `connect`.
        self.cu_cmd = stream.Signature(command_layout(cc)).flip().create(path=("cu_cmd",))
        self.cu_w = stream.Signature(w_stream_layout(cc)).flip().create(path=("cu_w",))
        self.cu_b = stream.Signature(data.ArrayLayout(signed(nx.bias.width), a.cols)).flip() \
            .create(path=("cu_b",))
        self.cu_done = stream.Signature(status_layout(cc)).create(path=("cu_done",))
        self.cu_busy = Signal(name="cu_busy")
        self.cu_running = Signal(name="cu_running")

    def elaborate(self, platform):
        m = super().elaborate(platform)
        cu = self.compute_unit
        idle = ~self.busy
        pend = Signal(name="cu_cmd_pending")
        m.d.comb += self.cu_cmd.ready.eq(idle & ~pend & ~cu.busy)
        with m.If(self.cu_cmd.valid & self.cu_cmd.ready):
            m.d.sync += [cu.cmd.payload.eq(self.cu_cmd.payload), pend.eq(1)]
        with m.If(pend):
            m.d.comb += cu.cmd.valid.eq(1)
            with m.If(cu.cmd.ready):
                m.d.sync += pend.eq(0)
        with m.If(idle):
            m.d.comb += [
                cu.w.valid.eq(self.cu_w.valid),
                cu.w.payload.eq(self.cu_w.payload),
                cu.b.valid.eq(self.cu_b.valid),
                cu.b.payload.eq(self.cu_b.payload),
                cu.done.ready.eq(self.cu_done.ready),
            ]
        m.d.comb += [
            self.cu_w.ready.eq(idle & cu.w.ready),
            self.cu_b.ready.eq(idle & cu.b.ready),
            self.cu_done.valid.eq(idle & cu.done.valid),
            self.cu_done.payload.eq(cu.done.payload),
            self.cu_busy.eq(cu.busy | pend),
            self.cu_running.eq(cu.busy & ~cu.cmd.ready & ~cu.done.valid),
        ]
        # The softmax unit: the sequencer's while the engine is idle (the engine has drained it:
        # its last router row left the unit before the routing ended).
        sm, topk = self.softmax, self.topk
        with m.If(idle):
            m.d.comb += [
                sm.i.valid.eq(self.sm_i.valid),
                sm.i.payload.eq(self.sm_i.payload),
                sm.o.ready.eq(self.sm_o.ready),
                topk.i.valid.eq(0),
            ]
        m.d.comb += [
            self.sm_i.ready.eq(idle & sm.i.ready),
            self.sm_o.valid.eq(idle & sm.o.valid),
            self.sm_o.payload.eq(sm.o.payload),
        ]
        return m


class ParamStream(wiring.Component):
    """Read the parameter stream ahead of execution and unpack it into three queues.

    The stream is stored as ``len(ports)`` = P interleaved sub-streams (:mod:`hdl.isa`): bus
    word ``i`` of the stream is word ``i div P`` of sub-stream ``i mod P``, and sub-stream ``j``
    lies at ``base + j·nbytes/P``. ``go`` starts reading ``nbytes`` (a multiple of ``P`` bus
    words) at ``base``: read manager ``j`` reads sub-stream ``j`` as one command, and the
    unpacker takes one word of every sub-stream per cycle, a *stream word* of ``P`` bus words
    (the lowest bits from sub-stream 0). Reads run ahead as far as the queues and the managers'
    buffers allow.

    Segments (:data:`hdl.isa.segment_layout`) start on stream words: the header is the low 128
    bits of one, the payload fills whole ones. They are unpacked: BIAS items into ``b``
    (``cols`` biases), WEIGHT items into ``w`` (``rows`` weights; with ``array.load_words =
    2`` two items per ``w`` word, so a segment's ``n`` must be even), LNPARAM beats into ``ln``
    (the LayerNorm unit's parameter beats, ``count``/``last``/``eps`` filled in). A header with
    a bad magic byte, an unknown kind, ``n = 0`` or a ``words`` field that does not match ``n``
    stops the unpacking and raises ``error``; an AXI error of a manager raises ``axi_error``.

    ``halt`` stops issuing read commands (reads in flight complete).

    Members
    -------
    go, halt : In(1)
    base : In(addr_width)
    nbytes : In(32)
    bus<j> : Out(AXI4Signature) for each manager
    w, b, ln : Out(stream.Signature(...))
    error : Out(1)
        A malformed segment header (sticky until reset).
    axi_error : Out(1)
        An AXI error of a read manager (sticky until reset).
    """

    def __init__(self, *, compute, ln_config, n_ports, addr_width, data_width,
                 max_burst_beats=16, max_outstanding=8, w_depth=64):
        if n_ports not in (1, 2, 4):
            raise ValueError(f"n_ports must be 1, 2 or 4, not {n_ports!r}")
        self._cc = compute
        self._ln = ln_config
        self._n = n_ports
        self._aw = addr_width
        self._dw = data_width
        sw = self.word_bits
        for kind, bits in self.kinds.items():
            if bits % sw and sw % bits:
                raise ValueError(f"{kind.name} items ({bits} bits) and the {sw}-bit stream word "
                                 f"must divide one another")
        self._masters = [AXI4ReadMaster(addr_width=addr_width, data_width=data_width,
                                        id_width=1, max_burst_beats=max_burst_beats,
                                        max_outstanding=max_outstanding)
                         for _ in range(n_ports)]
        self._w_depth = w_depth
        a, nx = compute.array, compute.numerics
        self._w_layout = w_stream_layout(compute)
        self._b_layout = data.ArrayLayout(signed(nx.bias.width), a.cols)
        members = {
            "go": In(1), "halt": In(1),
            "base": In(addr_width), "nbytes": In(32),
            "w": Out(stream.Signature(self._w_layout)),
            "b": Out(stream.Signature(self._b_layout)),
            "ln": Out(stream.Signature(layernorm_param_layout(ln_config))),
            "error": Out(1),
            "axi_error": Out(1),
        }
        for j in range(n_ports):
            members[f"bus{j}"] = Out(self._masters[j].bus.signature)
        super().__init__(members)

    @property
    def kinds(self):
        """Bits per item of each segment kind."""
        a = self._cc.array
        return {isa.Segment.BIAS: a.cols * 32, isa.Segment.WEIGHT: a.rows * 16 * a.load_words,
                isa.Segment.LNPARAM: self._ln.lanes * 32}

    @property
    def word_bits(self):
        """Bits of a stream word: one bus word of each sub-stream."""
        return self._n * self._dw

    @property
    def throughput(self):
        """Stream bytes per cycle at most (one bus word per manager)."""
        return self.word_bits // 8

    def elaborate(self, platform):
        m = Module()
        dw, P = self._dw, self._n
        sw = self.word_bits
        lsb = _log2(dw // 8)
        for j, mst in enumerate(self._masters):
            m.submodules[f"reader{j}"] = mst
            connect(m, flipped(getattr(self, f"bus{j}")), mst.bus)

        # -- read commands: one per sub-stream -------------------------------------------------
        sub_bytes = self.nbytes >> _log2(P)
        pending = Signal(P)
        base = Signal(self._aw)
        size = Signal(32)
        with m.If(self.go):
            m.d.sync += [base.eq(self.base), size.eq(sub_bytes),
                         pending.eq(Mux(sub_bytes >> lsb != 0, (1 << P) - 1, 0))]
        for j, mst in enumerate(self._masters):
            m.d.comb += [
                mst.cmd.payload.addr.eq(base + size * j),
                mst.cmd.payload.beats.eq(size >> lsb),
                mst.cmd.valid.eq(pending[j] & ~self.halt & ~self.go),
            ]
            with m.If(mst.cmd.valid & mst.cmd.ready):
                m.d.sync += pending[j].eq(0)

        # -- merge: one bus word of each sub-stream per cycle ------------------------------------
        word = stream.Signature(sw).create(path=("pstream_word",))
        datas = [mst.data for mst in self._masters]
        m.d.comb += [
            word.valid.eq(Cat(*(d.valid for d in datas)).all()),
            word.payload.eq(Cat(*(d.payload.data for d in datas))),
        ]
        for d in datas:
            m.d.comb += d.ready.eq(word.ready & word.valid)

        # -- segments -------------------------------------------------------------------------
        widths = self.kinds
        a = self._cc.array
        max_items = (1 << 24) - 1
        unp = {}
        for kind, bits in widths.items():
            u = Unpacker(sw, bits, max_items)
            m.submodules[f"unpack_{kind.name.lower()}"] = u
            unp[kind] = u
        hdr = data.View(isa.segment_layout, word.payload[:128])
        kind = Signal(8)
        n_items = Signal(24)
        eps = Signal(32)
        err = Signal()
        m.d.comb += [self.error.eq(err),
                     self.axi_error.eq(Cat(*(mst.error for mst in self._masters)).any())]

        def expected_words(bits, n):
            # Bus words of a payload of n items: whole stream words of P bus words.
            if bits >= sw:
                return n << _log2(bits // dw)
            sh = _log2(sw // bits)
            return ((n + (1 << sh) - 1) >> sh) << _log2(P)

        with m.FSM(name="segment"):
            with m.State("HEADER"):
                m.d.comb += word.ready.eq(~err)
                with m.If(word.valid & ~err):
                    good = Signal()
                    counts = {}
                    whole = {}               # n is a whole number of items
                    for k in widths:
                        counts[k] = hdr.n
                        whole[k] = Const(1)
                        if k == isa.Segment.LNPARAM:
                            sh = _log2(self._ln.lanes)
                            counts[k] = (hdr.n + (1 << sh) - 1) >> sh
                        if k == isa.Segment.WEIGHT and a.load_words == 2:
                            counts[k] = hdr.n >> 1          # pairs of weight words
                            whole[k] = ~hdr.n[0]
                    with m.Switch(hdr.kind):
                        for k, bits in widths.items():
                            with m.Case(int(k)):
                                m.d.comb += good.eq(
                                    (hdr.words == expected_words(bits, counts[k]))
                                    & (hdr.n != 0) & whole[k])
                    with m.If((hdr.magic == isa.SEGMENT_MAGIC) & good):
                        m.d.sync += [kind.eq(hdr.kind), n_items.eq(hdr.n), eps.eq(hdr.eps)]
                        for k, u in unp.items():
                            m.d.comb += [u.start.eq(hdr.kind == int(k)), u.count.eq(counts[k])]
                        m.next = "PAYLOAD"
                    with m.Else():
                        m.d.sync += err.eq(1)
            with m.State("PAYLOAD"):
                busy = Signal()
                for k, u in unp.items():
                    sel = kind == int(k)
                    m.d.comb += u.i.payload.eq(word.payload)
                    with m.If(sel):
                        m.d.comb += [u.i.valid.eq(word.valid), word.ready.eq(u.i.ready),
                                     busy.eq(u.busy)]
                with m.If(~busy):
                    m.next = "HEADER"

        # -- queues ---------------------------------------------------------------------------
        m.submodules.w_queue = wq = Queue(self._w_layout, self._w_depth)
        m.submodules.b_queue = bq = Queue(self._b_layout, max(self._cc.max_nt, 2),
                                          buffered=False)
        lnl = layernorm_param_layout(self._ln)
        m.submodules.ln_queue = lq = Queue(lnl, max(self._ln.max_groups, 2), buffered=False)
        u = unp[isa.Segment.WEIGHT]
        m.d.comb += [wq.i.valid.eq(u.o.valid), u.o.ready.eq(wq.i.ready),
                     wq.i.payload.eq(u.o.payload)]
        u = unp[isa.Segment.BIAS]
        m.d.comb += [bq.i.valid.eq(u.o.valid), u.o.ready.eq(bq.i.ready)]
        bw = self._cc.numerics.bias.width
        for j in range(a.cols):
            m.d.comb += bq.i.payload[j].eq(u.o.payload[32 * j:32 * j + bw].as_signed())
        u = unp[isa.Segment.LNPARAM]
        lanes = self._ln.lanes
        pw = self._ln.param_fmt.width
        beat = Signal(24)
        n_beats = Signal(24)
        sh = _log2(lanes)
        m.d.comb += n_beats.eq((n_items + lanes - 1) >> sh)
        last = beat == n_beats - 1
        m.d.comb += [lq.i.valid.eq(u.o.valid), u.o.ready.eq(lq.i.ready)]
        for j in range(lanes):
            m.d.comb += [
                lq.i.payload.gamma[j].eq(u.o.payload[16 * j:16 * j + pw].as_signed()),
                lq.i.payload.beta[j].eq(u.o.payload[16 * (lanes + j):16 * (lanes + j) + pw]
                                        .as_signed()),
            ]
        m.d.comb += [
            lq.i.payload.last.eq(last),
            lq.i.payload.count.eq(Mux(last, n_items - (beat << sh), lanes)),
            lq.i.payload.eps.eq(eps),
        ]
        with m.If(unp[isa.Segment.LNPARAM].start):
            m.d.sync += beat.eq(0)
        with m.Elif(lq.i.valid & lq.i.ready):
            m.d.sync += beat.eq(beat + 1)
        connect(m, wq.o, flipped(self.w))
        connect(m, bq.o, flipped(self.b))
        connect(m, lq.o, flipped(self.ln))
        return m


def row_beat_layout(width, lanes):
    """A beat of a row unit: ``data`` (``lanes`` elements), ``count``, ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(width), lanes),
        "count": unsigned(lanes.bit_length()),
        "last": 1,
    })


class RowEngine(wiring.Component):
    """Stream ``rows`` rows of ``n`` elements from the activation buffer through a row unit and
    write the unit's output rows back.

    Input row ``r`` is at word ``in_base + r·in_stride`` (``ceil(n/L)`` words), output row ``r``
    at ``out_base + r·out_stride``. The input side reads words (one per cycle at most, with a
    small queue and credits), cuts or gathers them into beats of the unit's ``lanes`` with
    ``count`` and ``last``; the output side packs the unit's beats into words and writes them,
    only the ``ceil(n/L)`` words of each row (a partial last word has zeros past ``n``). A read
    and a write go to the external port in the same cycle, so a row costs ``max(words, beats)``
    cycles while the port takes every access. Output rows may overwrite input rows in place (a
    row is written only after it was read).

    Members
    -------
    start : In(1)
        Pulse while idle, with the arguments below.
    rows, n, in_base, in_stride, out_base, out_stride : In
    busy : Out(1)
    ext : Out(ext_request_layout)
        The port request; ``ext_rdata`` is the word at the previous cycle's ``ext.r_addr``.
    ext_rdata : In(L·16)
    ext_r_ok, ext_w_ok : In(1), high by default
        The port takes this cycle's read/write (else the engine holds it): the softmax engine
        runs beside a product in the cycles the compute unit leaves free.
    ui : Out(stream.Signature(row_beat_layout(in_width, lanes)))
    uo : In(stream.Signature(row_beat_layout(out_width, lanes)))
        The unit's output beats, as many as went in, with their ``count`` and ``last``; lanes
        past ``count`` must be zero (they are written as the padding of a partial last word),
        as the LayerNorm and softmax units guarantee.
    """

    WORD_QUEUE = 4

    def __init__(self, *, lanes_buffer, lanes_unit, addr_bits, max_len, in_width=16,
                 out_width=16, max_rows=1 << 16):
        self._L = lanes_buffer
        self._lanes = lanes_unit
        self._addr_bits = addr_bits
        self._max_len = max_len
        self._in_w = in_width
        self._out_w = out_width
        word_bits = lanes_buffer * 16
        self._word_bits = word_bits
        super().__init__({
            "start": In(1),
            "rows": In(range(max_rows + 1)),
            "n": In(range(max_len + 1)),
            "in_base": In(addr_bits), "in_stride": In(addr_bits),
            "out_base": In(addr_bits), "out_stride": In(addr_bits),
            "busy": Out(1),
            "ext": Out(ext_request_layout(addr_bits, word_bits)),
            "ext_rdata": In(word_bits),
            "ext_r_ok": In(1, init=1), "ext_w_ok": In(1, init=1),
            "ui": Out(stream.Signature(row_beat_layout(in_width, lanes_unit))),
            "uo": In(stream.Signature(row_beat_layout(out_width, lanes_unit))),
        })

    def elaborate(self, platform):
        m = Module()
        L, lanes = self._L, self._lanes
        ab = self._addr_bits
        max_words = -(-self._max_len // L)
        rows = Signal.like(self.rows)
        n = Signal.like(self.n)
        n_words = Signal(range(max_words + 1))
        n_beats = Signal(range(-(-self._max_len // lanes) + 1))
        in_stride = Signal(ab)
        out_stride = Signal(ab)
        with m.If(self.start):
            m.d.sync += [
                rows.eq(self.rows), n.eq(self.n),
                n_words.eq((self.n + L - 1) >> _log2(L)),
                n_beats.eq((self.n + lanes - 1) >> _log2(lanes)),
                in_stride.eq(self.in_stride), out_stride.eq(self.out_stride),
            ]

        # -- reads ----------------------------------------------------------------------------
        word_l = data.StructLayout({"data": self._word_bits, "row_last": 1})
        m.submodules.words = wq = Queue(word_l, self.WORD_QUEUE, buffered=False)
        r_row = Signal.like(self.rows)
        r_word = Signal(range(max_words + 1))
        r_addr = Signal(ab)          # word 0 of the row being read
        r_done = Signal(init=1)
        issued = Signal()
        issued_last = Signal()
        write_req = Signal()
        read = Signal()
        m.d.comb += read.eq(~r_done & ~self.start & (wq.level + issued < self.WORD_QUEUE)
                            & self.ext_r_ok)
        m.d.sync += [issued.eq(read), issued_last.eq(read & (r_word == n_words - 1))]
        m.d.comb += [wq.i.valid.eq(issued), wq.i.payload.data.eq(self.ext_rdata),
                     wq.i.payload.row_last.eq(issued_last)]
        with m.If(self.start):
            m.d.sync += [r_row.eq(0), r_word.eq(0), r_addr.eq(self.in_base),
                         r_done.eq(self.rows == 0)]
        with m.Elif(read):
            m.d.sync += r_word.eq(r_word + 1)
            with m.If(r_word == n_words - 1):
                m.d.sync += [r_word.eq(0), r_row.eq(r_row + 1), r_addr.eq(r_addr + in_stride)]
                with m.If(r_row == rows - 1):
                    m.d.sync += r_done.eq(1)

        # -- words → beats --------------------------------------------------------------------
        ui = self.ui
        bi = Signal.like(n_beats)             # beat within the row
        bi_last = bi == n_beats - 1
        count = Mux(bi_last, n - (bi << _log2(lanes)), lanes)
        m.d.comb += [ui.payload.last.eq(bi_last), ui.payload.count.eq(count)]
        ui_go = ui.valid & ui.ready
        with m.If(self.start):
            m.d.sync += bi.eq(0)
        with m.Elif(ui_go):
            m.d.sync += bi.eq(Mux(bi_last, 0, bi + 1))
        if L >= lanes:
            q = L // lanes
            sub = Signal(range(max(q, 2)))
            word = wq.o.payload.data
            for j in range(lanes):
                if q > 1:
                    lane = Array(word.word_select(s * lanes + j, 16) for s in range(q))[sub]
                else:
                    lane = word.word_select(j, 16)
                m.d.comb += ui.payload.data[j].eq(lane[:self._in_w].as_signed())
            m.d.comb += ui.valid.eq(wq.o.valid)
            with m.If(self.start):
                m.d.sync += sub.eq(0)
            with m.Elif(ui_go):
                m.d.sync += sub.eq(sub + 1)
                with m.If((sub == q - 1) | bi_last):
                    m.d.comb += wq.o.ready.eq(1)
                    m.d.sync += sub.eq(0)
        else:
            q = lanes // L
            idx = Signal(range(q))
            buf = Signal(lanes * 16)
            full = Signal()
            m.d.comb += ui.valid.eq(full)
            for j in range(lanes):
                m.d.comb += ui.payload.data[j].eq(buf.word_select(j, 16)[:self._in_w]
                                                  .as_signed())
            m.d.comb += wq.o.ready.eq(~full | ui.ready)
            with m.If(self.start):
                m.d.sync += [idx.eq(0), full.eq(0)]
            with m.Else():
                with m.If(ui_go):
                    m.d.sync += full.eq(0)
                with m.If(wq.o.valid & wq.o.ready):
                    m.d.sync += [buf.word_select(idx, L * 16).eq(wq.o.payload.data),
                                 idx.eq(idx + 1)]
                    with m.If((idx == q - 1) | wq.o.payload.row_last):
                        m.d.sync += [full.eq(1), idx.eq(0)]
                    with m.If(idx == 0):
                        # A new beat: lanes not filled by this row stay zero.
                        m.d.sync += buf.eq(wq.o.payload.data)

        # -- beats → words, writes ------------------------------------------------------------
        out_l = data.StructLayout({"data": self._word_bits, "addr": ab, "row_last": 1})
        m.submodules.out_words = oq = Queue(out_l, 2, buffered=False)
        uo = self.uo
        o_word = Signal(range(max_words + 1))
        o_addr = Signal(ab)
        o_row = Signal.like(self.rows)
        w_done = Signal(init=1)
        acc = Signal(self._word_bits)
        push = Signal()
        push_data = Signal(self._word_bits)
        push_row_last = Signal()
        m.d.comb += [oq.i.valid.eq(push), oq.i.payload.data.eq(push_data),
                     oq.i.payload.addr.eq(o_addr + o_word),
                     oq.i.payload.row_last.eq(push_row_last)]
        with m.If(push):
            m.d.sync += o_word.eq(o_word + 1)
            with m.If(push_row_last):
                m.d.sync += [o_word.eq(0), o_addr.eq(o_addr + out_stride)]
        with m.If(self.start):
            m.d.sync += [o_word.eq(0), o_addr.eq(self.out_base), acc.eq(0)]
        if self._out_w == 16:
            beat_bits = Cat(*(uo.payload.data[j] for j in range(lanes)))
        else:
            beat_bits = Cat(*(Cat(uo.payload.data[j],
                                  uo.payload.data[j][-1].replicate(16 - self._out_w))
                              for j in range(lanes)))
        if L >= lanes:
            q = L // lanes
            sub = Signal(range(max(q, 2)))
            merged = Signal(self._word_bits)
            if q > 1:
                m.d.comb += merged.eq(acc)
                with m.Switch(sub):
                    for s in range(q):
                        with m.Case(s):
                            m.d.comb += merged.word_select(s, lanes * 16).eq(beat_bits)
            else:
                m.d.comb += merged.eq(beat_bits)
            m.d.comb += [
                push.eq(uo.valid & uo.ready & ((sub == q - 1) | uo.payload.last)),
                push_data.eq(merged),
                push_row_last.eq(uo.payload.last),
                uo.ready.eq(oq.i.ready),
            ]
            with m.If(self.start):
                m.d.sync += sub.eq(0)
            with m.Elif(uo.valid & uo.ready):
                m.d.sync += [sub.eq(sub + 1), acc.eq(merged)]
                with m.If(push):
                    m.d.sync += [sub.eq(0), acc.eq(0)]
        else:
            q = lanes // L
            sub = Signal(range(q))
            last_word = o_word == n_words - 1
            m.d.comb += [
                push.eq(uo.valid & oq.i.ready),
                push_data.eq(beat_bits.word_select(sub, L * 16)),
                push_row_last.eq(last_word),
                uo.ready.eq(oq.i.ready & ((sub == q - 1) | last_word)),
            ]
            with m.If(self.start):
                m.d.sync += sub.eq(0)
            with m.Elif(push):
                m.d.sync += sub.eq(sub + 1)
                with m.If(uo.ready):
                    m.d.sync += sub.eq(0)

        # -- the port ---------------------------------------------------------------------
        m.d.comb += [
            write_req.eq(oq.o.valid),
            oq.o.ready.eq(self.ext_w_ok),
            self.ext.r_addr.eq(r_addr + r_word),
            self.ext.w_addr.eq(oq.o.payload.addr),
            self.ext.w_en.eq(write_req),
            self.ext.w_data.eq(oq.o.payload.data),
        ]
        with m.If(self.start):
            m.d.sync += [o_row.eq(0), w_done.eq(self.rows == 0)]
        with m.Elif(oq.o.valid & oq.o.ready & oq.o.payload.row_last):
            m.d.sync += o_row.eq(o_row + 1)
            with m.If(o_row == rows - 1):
                m.d.sync += w_done.eq(1)
        m.d.comb += self.busy.eq(~w_done | ~r_done)
        return m


class LoadEngine(wiring.Component):
    """Copy ``words`` activation-buffer words from DDR at ``addr`` into the buffer at
    ``abuf_addr``, through ``ports`` AXI read managers at once.

    The copy is cut into ``ports`` contiguous pieces of ``ceil(words / ports)`` words (rounded up
    to whole bus words), one read command per manager; each manager's bus words are packed into
    buffer words, and the pieces' words are written one per cycle as they arrive (round robin
    between the pieces that have one). With ``L·16``-bit buffer words ``ports`` times the bus
    width apart, the copy then runs at one buffer word per cycle instead of one bus word.
    ``busy`` falls after the last write.

    Members
    -------
    start : In(1)
    addr : In(addr_width)
    abuf_addr : In(addr_bits)
    words : In(24)
    busy : Out(1)
    waiting : Out(1)
        Busy and no data to write in this cycle (DDR read latency or bandwidth).
    ext : Out(ext_request_layout)
    ext_w_ok : In(1), high by default
        The port takes this cycle's write.
    bus<j> : Out(AXI4Signature), for each of the ``ports`` managers
    error : Out(1)
        AXI error (sticky until reset).
    """

    def __init__(self, *, lanes, addr_bits, addr_width, data_width, ports=1,
                 max_burst_beats=16, max_outstanding=8):
        if ports not in (1, 2, 4):
            raise ValueError(f"ports must be 1, 2 or 4, not {ports!r}")
        self._L = lanes
        self._ab = addr_bits
        self._dw = data_width
        self._ports = ports
        self._masters = [AXI4ReadMaster(addr_width=addr_width, data_width=data_width,
                                        id_width=1, max_burst_beats=max_burst_beats,
                                        max_outstanding=max_outstanding)
                         for _ in range(ports)]
        members = {
            "start": In(1),
            "addr": In(addr_width),
            "abuf_addr": In(addr_bits),
            "words": In(24),
            "busy": Out(1),
            "waiting": Out(1),
            "ext": Out(ext_request_layout(addr_bits, lanes * 16)),
            "ext_w_ok": In(1, init=1),
            "error": Out(1),
        }
        for j in range(ports):
            members[f"bus{j}"] = Out(self._masters[j].bus.signature)
        super().__init__(members)

    @property
    def ports(self):
        """AXI read managers the copy is spread over."""
        return self._ports

    def elaborate(self, platform):
        m = Module()
        wb = self._L * 16
        dw = self._dw
        P = self._ports
        go, pieces = _pieces(m, self, P, wb, dw)

        ups, waddrs, pending = [], [], []
        for j, rd in enumerate(self._masters):
            m.submodules[f"reader{j}"] = rd
            connect(m, flipped(getattr(self, f"bus{j}")), rd.bus)
            up = Unpacker(dw, wb, (1 << 24) - 1)
            m.submodules[f"unpack{j}"] = up
            m.d.comb += [up.i.valid.eq(rd.data.valid), up.i.payload.eq(rd.data.payload.data),
                         rd.data.ready.eq(up.i.ready)]
            count, ddr_addr, abuf_addr = pieces[j]
            cmd_pending = Signal(name=f"cmd_pending{j}")
            waddr = Signal(self._ab, name=f"waddr{j}")
            m.d.comb += [
                rd.cmd.payload.addr.eq(ddr_addr),
                rd.cmd.payload.beats.eq(_beats_of(count, wb, dw)),
                rd.cmd.valid.eq(cmd_pending),
                up.start.eq(go), up.count.eq(count),
            ]
            with m.If(rd.cmd.ready):
                m.d.sync += cmd_pending.eq(0)
            with m.If(go):
                m.d.sync += [cmd_pending.eq(count != 0), waddr.eq(abuf_addr)]
            ups.append(up)
            waddrs.append(waddr)
            pending.append(cmd_pending)

        # One buffer write per cycle: round robin between the pieces with a word ready.
        turn = Signal(range(max(P, 2)))
        valids = Cat(*(up.o.valid for up in ups))
        grant = _round_robin(m, turn, valids, P)
        # The granted piece's word (grant is one-hot; plain muxes keep the port's fields
        # continuous assignments).
        w_addr, w_data = waddrs[0], ups[0].o.payload
        for j in range(1, P):
            w_addr = Mux(grant[j], waddrs[j], w_addr)
            w_data = Mux(grant[j], ups[j].o.payload, w_data)
        m.d.comb += [self.ext.w_addr.eq(w_addr), self.ext.w_data.eq(w_data)]
        # The granted word is offered; it is taken when the port takes the write (the offer
        # does not depend on ext_w_ok, which may depend on the address).
        take = Signal(P)
        m.d.comb += take.eq(Mux(self.ext_w_ok, grant, 0))
        for j, up in enumerate(ups):
            m.d.comb += up.o.ready.eq(take[j])
            with m.If(take[j]):
                m.d.sync += [waddrs[j].eq(waddrs[j] + 1), turn.eq((j + 1) % P)]
        m.d.comb += [
            self.ext.w_en.eq(grant.any()),
            self.busy.eq(Cat(*(up.busy for up in ups)).any() | Cat(*pending).any()
                         | self.start | go),
            self.waiting.eq(self.busy & ~grant.any()),
            self.error.eq(Cat(*(rd.error for rd in self._masters)).any()),
        ]
        return m


class StoreEngine(wiring.Component):
    """Copy ``words`` activation-buffer words from ``abuf_addr`` to DDR at ``addr``, through
    ``ports`` AXI write managers at once.

    The copy is cut into ``ports`` contiguous pieces of ``ceil(words / ports)`` words (rounded up
    to whole bus words), one write command per manager. The buffer is read one word per cycle
    (with credits), round robin between the pieces with room in their queue; each piece's words
    are packed into bus words (a partial last bus word is zero padded) and written by its
    manager, so the managers write concurrently. ``busy`` falls when the write response of the
    last burst of every piece has arrived (the data is in DDR).

    Members
    -------
    start : In(1)
    addr : In(addr_width)
    abuf_addr : In(addr_bits)
    words : In(24)
    busy : Out(1)
    waiting : Out(1)
        Busy, and no buffer word read in this cycle (every word has been read, or the writers
        are not taking data).
    ext : Out(ext_request_layout)
    ext_rdata : In(L·16)
        The port's reads are always taken: a STORE runs while the compute unit is idle.
    bus<j> : Out(AXI4Signature), for each of the ``ports`` managers
    error : Out(1)
    """

    QUEUE = 4

    def __init__(self, *, lanes, addr_bits, addr_width, data_width, ports=1, max_burst_beats=16,
                 max_outstanding=4):
        if ports not in (1, 2, 4):
            raise ValueError(f"ports must be 1, 2 or 4, not {ports!r}")
        self._L = lanes
        self._ab = addr_bits
        self._dw = data_width
        self._ports = ports
        self._masters = [AXI4WriteMaster(addr_width=addr_width, data_width=data_width,
                                         id_width=1, max_burst_beats=max_burst_beats,
                                         max_outstanding=max_outstanding)
                         for _ in range(ports)]
        members = {
            "start": In(1),
            "addr": In(addr_width),
            "abuf_addr": In(addr_bits),
            "words": In(24),
            "busy": Out(1),
            "waiting": Out(1),
            "ext": Out(ext_request_layout(addr_bits, lanes * 16)),
            "ext_rdata": In(lanes * 16),
            "error": Out(1),
        }
        for j in range(ports):
            members[f"bus{j}"] = Out(self._masters[j].bus.signature)
        super().__init__(members)

    @property
    def ports(self):
        """AXI write managers the copy is spread over."""
        return self._ports

    def elaborate(self, platform):
        m = Module()
        wb = self._L * 16
        dw = self._dw
        P = self._ports
        go, pieces = _pieces(m, self, P, wb, dw)

        lefts, raddrs, actives, room = [], [], [], []
        issued = Signal(P)          # the piece whose word was read last cycle (one-hot)
        for j, wr in enumerate(self._masters):
            m.submodules[f"writer{j}"] = wr
            connect(m, flipped(getattr(self, f"bus{j}")), wr.bus)
            pk = Packer(wb, dw, (1 << 24) - 1)
            q = Queue(wb, self.QUEUE, buffered=False)
            m.submodules[f"pack{j}"] = pk
            m.submodules[f"words_q{j}"] = q
            count, ddr_addr, abuf_addr = pieces[j]
            cmd_pending = Signal(name=f"cmd_pending{j}")
            active = Signal(name=f"active{j}")
            left = Signal(24, name=f"left{j}")
            raddr = Signal(self._ab, name=f"raddr{j}")
            m.d.comb += [
                wr.cmd.payload.addr.eq(ddr_addr),
                wr.cmd.payload.beats.eq(_beats_of(count, wb, dw)),
                wr.cmd.valid.eq(cmd_pending),
                q.i.valid.eq(issued[j]), q.i.payload.eq(self.ext_rdata),
                pk.start.eq(go), pk.count.eq(count),
            ]
            connect(m, q.o, pk.i)
            connect(m, pk.o, wr.data)
            with m.If(wr.cmd.ready):
                m.d.sync += cmd_pending.eq(0)
            with m.If(go):
                m.d.sync += [cmd_pending.eq(count != 0), active.eq(count != 0),
                             left.eq(count), raddr.eq(abuf_addr)]
            with m.Elif(wr.done | wr.error):
                m.d.sync += active.eq(0)
            lefts.append(left)
            raddrs.append(raddr)
            actives.append(active)
            room.append((left != 0) & (q.level + issued[j] < self.QUEUE))

        # One buffer read per cycle: round robin between the pieces with words left and room.
        turn = Signal(range(max(P, 2)))
        elig = Signal(P)
        m.d.comb += elig.eq(Mux(self.start | go, 0, Cat(*room)))
        grant = _round_robin(m, turn, elig, P)
        r_addr = raddrs[0]
        for j in range(1, P):
            r_addr = Mux(grant[j], raddrs[j], r_addr)
        m.d.comb += [self.ext.r_addr.eq(r_addr), self.ext.w_en.eq(0)]
        m.d.sync += issued.eq(grant)
        for j in range(P):
            with m.If(grant[j]):
                m.d.sync += [raddrs[j].eq(raddrs[j] + 1), lefts[j].eq(lefts[j] - 1),
                             turn.eq((j + 1) % P)]
        m.d.comb += [
            self.busy.eq(Cat(*actives).any() | self.start | go),
            self.waiting.eq(self.busy & ~grant.any()),
            self.error.eq(Cat(*(wr.error for wr in self._masters)).any()),
        ]
        return m
