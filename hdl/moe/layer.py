# SPDX-License-Identifier: BSD-2-Clause
"""The MoE layer engine: router, top-k, reordering, expert-weight DMA and the experts on the
compute unit, which read their tokens and add their results in place.

Bit-exact with the MoE block of :func:`golden.twin.twin_forward` (and
:func:`sim.bench.moe.moe_block_reference`): given the block's LN2 output ``u`` and its residual
``x`` in the compute unit's activation buffer, the engine leaves
``x + Σ_j s_j·expert_j(u)`` (accumulated, saturating, in the order of
:func:`golden.qref.expert_order`) in place of ``x``.
"""

import math
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from golden.config import ModelConfig

from .._checks import check_int, check_pow2
from ..axi import AXI4Signature
from ..nonlin.config import SoftmaxConfig
from ..nonlin.softmax import Softmax
from ..stream_util import Queue
from ..systolic.config import ComputeConfig
from ..systolic.unit import ComputeUnit, Error as CUError, ext_signature, w_stream_layout
from .dma import DEFAULT_RING_HALVES, ROUTER, ExpertDMA, choose_ports, ring_halves
from .geometry import Geometry, _ceil_div as _cdiv
from .layout import PARTS, ImageLayout, SystolicOrder
from .reorder import Reorder, expert_entry_layout
from .topk import TopK, check_moe_shape

__all__ = ["Status", "MoELayerConfig", "MoELayer", "SHAPE_FIELDS", "SHAPE_INPUT_LAYOUT"]

#: The fields of a MoE shape (:attr:`MoELayerConfig.shape_layout`), the model's counterparts
#: of :class:`MoELayerConfig`'s maxima.
SHAPE_FIELDS = ("tokens", "dim", "hidden", "num_experts", "k", "num_tasks", "num_layers")

#: Layout of :attr:`MoELayer.shape`: every field 16 bits, as wide as the ``MOE`` instruction's
#: widest (:mod:`hdl.isa`), so that a value above the engine's maximum reaches the engine's
#: check whole instead of wrapping to a valid-looking shape.
SHAPE_INPUT_LAYOUT = data.StructLayout({name: 16 for name in SHAPE_FIELDS})


class Status(enum.Enum, shape=unsigned(3)):
    """Outcome of a layer (``MoELayer.status``)."""
    #: The layer was computed.
    OK = 0
    #: ``task`` is not a task of the model; nothing was done.
    BAD_TASK = 1
    #: ``layer`` is not an MoE layer of the model; nothing was done.
    BAD_LAYER = 2
    #: The weight image is smaller than the layout needs, not 4 KiB aligned, or runs past the
    #: address space; nothing was fetched.
    BAD_IMAGE = 3
    #: An AXI error response (or a refused read): ``x`` is not valid.
    DMA_ERROR = 4
    #: The compute unit refused a command: ``x`` is not valid.
    CU_ERROR = 5
    #: ``shape`` has a zero field, a field above the maximum or ``k`` above ``num_experts``;
    #: nothing was done.
    BAD_SHAPE = 6


@dataclass(frozen=True)
class MoELayerConfig:
    """Configuration of :class:`MoELayer`: the largest MoE shape it runs, and its interfaces.

    The engine is built for the shape below; any model whose MoE shape lies within it (every
    field at most this one's) runs on the same hardware, told its shape at run time
    (:attr:`MoELayer.shape`, from the ``MOE`` instruction). The buffers are sized for the
    largest shape; smaller ones use part of them.

    Parameters
    ----------
    num_experts : int
        Most experts E, 1..64.
    k : int
        Most experts per token, 1..min(4, E).
    tokens : int
        Most tokens per frame N (at most ``compute.max_m``).
    dim : int
        Largest embedding dimension D.
    hidden : int
        Largest expert hidden width Hd.
    num_tasks : int
        Most tasks (routers per layer).
    num_layers : int
        Most MoE layers in the weight image.
    compute : ComputeConfig
        The compute unit (``rows`` and ``cols`` powers of two; with GELU).
    data_width : int
        AXI data width (128 for the ZCU104's HP ports).
    ports : int or None
        AXI read ports of the DMA, 1, 2 or 4; ``None`` lets :func:`choose_ports` decide from the
        compute unit's weight consumption (``rows`` weights per cycle) and ``port_bytes``.
    port_bytes : float
        Bandwidth of one port in bytes per cycle, for the choice of ``ports``.
    addr_width : int
        AXI address width.
    max_burst_beats : int
        Longest AXI burst (16 on the ZCU104 HP ports).
    max_outstanding : int
        Bursts in flight per port.
    weight_buffer_bytes : int or None
        Bytes of the DMA's expert-weight ring (:class:`~hdl.moe.dma.ExpertDMA`, all ports
        together; :attr:`ring_words` in each port's memory): at least the largest half expert
        (its fc1 or its fc2 parts) of the configuration's shape. The fetch runs as far ahead
        of the experts' products as the ring holds. ``None``: two whole experts of the
        configuration's shape.
    """

    num_experts: int
    k: int
    tokens: int
    dim: int
    hidden: int
    num_tasks: int
    num_layers: int
    compute: ComputeConfig
    data_width: int = 128
    ports: int = None
    port_bytes: float = 16.0
    addr_width: int = 32
    max_burst_beats: int = 16
    max_outstanding: int = 8
    weight_buffer_bytes: int = None

    def __post_init__(self):
        check_moe_shape(self.num_experts, self.k)
        for name in ("tokens", "dim", "hidden", "num_tasks", "num_layers"):
            check_int(name, getattr(self, name))
        if not isinstance(self.compute, ComputeConfig):
            raise TypeError(f"compute must be a ComputeConfig, not {self.compute!r}")
        a = self.compute.array
        check_pow2("compute.array.rows", a.rows)
        check_pow2("compute.array.cols", a.cols)
        if not self.compute.gelu:
            raise ValueError("the compute unit must have the GELU (ComputeConfig(gelu=True))")
        c = self.compute
        for what, v, hi in (("tokens", self.tokens, c.max_m), ("dim", self.dim, c.max_k),
                            ("dim", self.dim, c.max_n), ("hidden", self.hidden, c.max_k),
                            ("hidden", self.hidden, c.max_n),
                            ("num_experts", self.num_experts, c.max_n)):
            if v > hi:
                raise ValueError(f"{what} ({v}) exceeds the compute unit's limits "
                                 f"(max_m {c.max_m}, max_k {c.max_k}, max_n {c.max_n})")
        if isinstance(self.port_bytes, bool) or not isinstance(self.port_bytes, (int, float)) \
                or not self.port_bytes > 0:
            raise ValueError(f"port_bytes must be a positive number, not {self.port_bytes!r}")
        if self.ports is None:
            object.__setattr__(self, "ports", choose_ports(self.weight_bytes_per_cycle,
                                                           self.port_bytes))
        check_pow2("ports", self.ports)
        if self.ports > 4:
            raise ValueError(f"ports must be 1, 2 or 4, not {self.ports!r}")
        # Validates data_width and everything else of the image.
        self.layout
        if self.weight_buffer_bytes is not None:
            check_int("weight_buffer_bytes", self.weight_buffer_bytes)
            half = max(self.halves_words)
            if self.ring_words < half:
                raise ValueError(f"weight_buffer_bytes ({self.weight_buffer_bytes}) must hold "
                                 f"the largest half expert: {half} bus words in each of the "
                                 f"{self.ports} ports' rings, "
                                 f"{half * self.ports * self.data_width // 8} bytes")
        lanes, L = self.numerics.softmax_lanes, a.buffer_lanes
        if L % lanes and lanes % L:
            raise ValueError(f"the activation buffer's {L} lanes and the softmax's {lanes} "
                             f"lanes must divide one another")

    @classmethod
    def for_model(cls, cfg, compute, *, tokens=None, **kwargs):
        """The configuration for the MoE blocks of a :class:`golden.config.ModelConfig`
        (``tokens``: tokens per pass, when the layer runs on tiles of the token matrix;
        default all)."""
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, not {cfg!r}")
        tokens = cfg.tokens if tokens is None else tokens
        return cls(num_experts=cfg.num_experts, k=cfg.top_k, tokens=tokens, dim=cfg.dim,
                   hidden=cfg.expert_hidden, num_tasks=cfg.num_tasks,
                   num_layers=len(cfg.moe_blocks), compute=compute, **kwargs)

    @property
    def numerics(self):
        """The :class:`golden.numerics.Numerics` of the compute unit."""
        return self.compute.numerics

    @property
    def shape_layout(self):
        """Layout of a run-time MoE shape (:data:`SHAPE_FIELDS`), each field as wide as this
        configuration's maximum."""
        return data.StructLayout({name: range(getattr(self, name) + 1)
                                  for name in SHAPE_FIELDS})

    @property
    def max_shape(self):
        """This configuration's own shape, as a dict for :attr:`shape_layout`."""
        return {name: getattr(self, name) for name in SHAPE_FIELDS}

    @staticmethod
    def shape_of(cfg, tokens=None):
        """The MoE shape of a :class:`golden.config.ModelConfig`, as a dict (``tokens``: the
        tokens of one pass, when the layer runs on tiles; default all)."""
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"cfg must be a ModelConfig, not {cfg!r}")
        return {"tokens": cfg.tokens if tokens is None else tokens, "dim": cfg.dim,
                "hidden": cfg.expert_hidden,
                "num_experts": cfg.num_experts, "k": cfg.top_k, "num_tasks": cfg.num_tasks,
                "num_layers": len(cfg.moe_blocks)}

    def check_model(self, cfg, tokens=None):
        """Raise ``ValueError`` unless the MoE shape of ``cfg`` (a
        :class:`golden.config.ModelConfig`; ``tokens`` per pass as in :meth:`shape_of`) lies
        within this configuration; return the shape."""
        shape = self.shape_of(cfg, tokens)
        over = [f"{name} {v} > {getattr(self, name)}" for name, v in shape.items()
                if v > getattr(self, name)]
        if over:
            raise ValueError(f"the MoE blocks of {cfg.name} do not fit this MoE engine: "
                             f"{', '.join(over)}")
        return shape

    @property
    def order(self):
        """The compute unit's weight stream order."""
        return SystolicOrder(self.compute.array.rows, self.compute.array.cols)

    @property
    def layout(self):
        """The :class:`~hdl.moe.layout.ImageLayout` of the weight image (expert weights in the
        numerics' ``expert_weight_bits``)."""
        return ImageLayout(num_layers=self.num_layers, num_experts=self.num_experts,
                           num_tasks=self.num_tasks, dim=self.dim, hidden=self.hidden,
                           data_width=self.data_width, order=self.order,
                           expert_weight_bits=self.numerics.expert_weight_bits)

    @property
    def weight_bytes_per_cycle(self):
        """Image bytes of expert weights the compute unit consumes per cycle at most:
        ``load_words`` words of ``rows`` weights per cycle (a tile of ``cols`` words per pass of
        ``max(M, cols / load_words)``), ``expert_weight_bits`` each in the image."""
        a = self.compute.array
        return a.rows * self.numerics.expert_weight_bits * a.load_words / 8

    # -- activation-buffer plan ------------------------------------------------------------

    def words_per_row(self, elements):
        """abuf words of one row of ``elements``."""
        return -(-elements // self.compute.array.buffer_lanes)

    @property
    def row_words(self):
        """abuf words of one token row of ``u`` or ``x`` (D elements)."""
        return self.words_per_row(self.dim)

    @property
    def hidden_words(self):
        """abuf words of one hidden row (Hd elements)."""
        return self.words_per_row(self.hidden)

    @property
    def logit_words(self):
        """abuf words of one row of router logits (E elements)."""
        return self.words_per_row(self.num_experts)

    @property
    def logits_offset(self):
        """Offset of the router logits (N rows of E) in the scratch area."""
        return 0

    @property
    def hidden_offset(self):
        """Offset of the hidden rows of the expert being computed in the scratch area."""
        return self.tokens * self.logit_words

    @property
    def scratch_words(self):
        """Words of abuf scratch the engine needs (besides ``u`` and ``x``)."""
        return self.hidden_offset + self.tokens * self.hidden_words

    @property
    def halves_words(self):
        """Bus words of an expert's fc1 half and of its fc2 half in each port's ring of the
        DMA."""
        return ring_halves(self.layout, ports=self.ports, chunk_words=self.max_burst_beats,
                           read_words=self.read_words)

    @property
    def ring_words(self):
        """Bus words of the DMA's ring in each port's memory: ``weight_buffer_bytes`` over the
        ports' bus words, rounded down to a whole read (default: two experts, four times the
        larger half)."""
        if self.weight_buffer_bytes is None:
            return DEFAULT_RING_HALVES * max(self.halves_words)
        words = self.weight_buffer_bytes // (self.ports * self.data_width // 8)
        return words - words % self.read_words

    def dma(self):
        """A new :class:`~hdl.moe.dma.ExpertDMA` of this configuration."""
        return ExpertDMA(self.layout, ports=self.ports, addr_width=self.addr_width,
                         max_burst_beats=self.max_burst_beats,
                         max_outstanding=self.max_outstanding, read_words=self.read_words,
                         ring_words=self.ring_words)

    @property
    def read_words(self):
        """Bus words per read of the DMA buffers: one read gives a whole bias word of ``cols``
        32-bit biases and a whole number of the compute unit's ``w`` words (``load_words``
        weight words of ``rows`` weights)."""
        a = self.compute.array
        bits = max(a.cols * 32, a.rows * self.numerics.weight.width * a.load_words,
                   self.data_width)
        return bits // self.data_width

    # -- cycle model --------------------------------------------------------------------------


class _Feeder(wiring.Component):
    """Stream one or two parts of the DMA buffers into the compute unit's ``b`` and ``w``.

    The parts' sizes follow the run-time shape (``dim``, ``hidden``, ``num_experts``, held while
    the engine runs). ``go`` with ``mode`` starts: ``ROUTER`` (the router part to ``w``),
    ``FC1`` (``fc1_b`` to ``b``, then ``fc1_w`` to ``w``) or ``FC2`` (``fc2_b``, ``fc2_w``), of
    job ``job``. Each read
    is issued once the DMA reports its words in the buffer (``rd_avail``), so a part is fed while
    it is still arriving (``want``/``want_part`` say what is awaited); reads go through a small
    queue with credits, so ``b``/``w`` back pressure never loses data. After a DMA error the
    parts are read without waiting (the data is garbage), so that the compute unit's command
    completes and the engine can report the error instead of hanging. ``abort`` stops the feed
    and drops what is queued (after a command the compute unit refused).

    Expert weights stored in fewer bits than the ``weight`` format (the image's
    ``expert_weight_bits`` b, :mod:`hdl.moe.layout`) are a bit string of ``T = rows ·
    load_words · b`` bits per ``w`` transfer, read ``S`` bits at a time (the DMA's read width):
    a gearbox holds up to ``T + S − U`` bits (``U = gcd(T, S)``), takes a read whenever what
    it holds after this cycle's transfer is less than ``T``, and gives a transfer whenever it
    holds ``T`` bits, so it keeps up with one transfer a cycle (``S ≥ T``). Each weight becomes
    ``b`` bits shifted up to the ``weight`` format (its low bits zero, as the twin has them).
    """

    ROUTER, FC1, FC2 = 0, 1, 2
    QUEUE = 4

    def __init__(self, cfg):
        self._cfg = cfg
        a = cfg.compute.array
        nx = cfg.numerics
        dma_rd = cfg.read_words * cfg.data_width
        self._lay = cfg.layout
        super().__init__({
            "dim": In(range(cfg.dim + 1)),
            "hidden": In(range(cfg.hidden + 1)),
            "num_experts": In(range(cfg.num_experts + 1)),
            "go": In(1),
            "abort": In(1),
            "mode": In(2),
            "job": In(range(cfg.num_experts)),
            "busy": Out(1),
            "waiting": Out(1),
            "rd_part": Out(range(len(PARTS) + 1)),
            "rd_addr": Out(range(max(self._max_reads(), 2))),
            "rd_data": In(dma_rd),
            "rd_avail": In(1),
            "error": In(1),
            "want": Out(1),
            "want_part": Out(range(len(PARTS))),
            "w": Out(stream.Signature(w_stream_layout(cfg.compute))),
            "b": Out(stream.Signature(data.ArrayLayout(signed(nx.bias.width), a.cols))),
        })

    def _segments(self, d=None, h=None, E=None):
        """Per mode: list of (part, target 'b'/'w', output words) for a shape (``int`` values
        or signals; default: the largest)."""
        cfg = self._cfg
        a = cfg.compute.array
        d = cfg.dim if d is None else d
        h = cfg.hidden if h is None else h
        E = cfg.num_experts if E is None else E

        def nw(n, k):
            # w transfers of an (n, k) matrix: cols weight words per tile, load_words a transfer.
            return _cdiv(n, a.cols) * _cdiv(k, a.rows) * (a.cols // a.load_words)

        return {
            self.ROUTER: [(ROUTER, "w", nw(E, d))],
            self.FC1: [(PARTS.index("fc1_b"), "b", _cdiv(h, a.cols)),
                       (PARTS.index("fc1_w"), "w", nw(h, d))],
            self.FC2: [(PARTS.index("fc2_b"), "b", _cdiv(d, a.cols)),
                       (PARTS.index("fc2_w"), "w", nw(d, h))],
        }

    def _bits(self, target):
        a = self._cfg.compute.array
        return (a.cols * 32 if target == "b"
                else a.rows * self._cfg.numerics.weight.width * a.load_words)

    @property
    def packed(self):
        """Whether the expert weights are stored in fewer bits than the ``weight`` format
        (then they go through the gearbox)."""
        return self._lay.expert_weight_bits < self._cfg.numerics.weight.width

    def _gear(self):
        """``(U, t, s)``: the gearbox's unit of bits, a transfer and a read in units."""
        a = self._cfg.compute.array
        T = a.rows * a.load_words * self._lay.expert_weight_bits
        S = self._cfg.read_words * self._cfg.data_width
        U = math.gcd(T, S)
        return U, T // U, S // U

    def _reads(self, target, n_out):
        per = self._cfg.read_words * self._cfg.data_width // self._bits(target)
        return -(-n_out // per), per

    def _max_reads(self):
        return max(self._reads(t, n)[0] for segs in self._segments().values()
                   for _, t, n in segs)

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        a = cfg.compute.array
        S = cfg.read_words * cfg.data_width
        segs = self._segments()
        rt_segs = self._segments(self.dim, self.hidden, self.num_experts)
        max_sub = max(self._reads(t, n)[1] for s in segs.values() for _, t, n in s)
        max_out = max(n for sl in segs.values() for _, _, n in sl)
        raw_layout = data.StructLayout({
            "data": unsigned(S), "to_b": 1, "subs": range(max_sub + 1),
            # A read of packed expert weights (the gearbox's), the first of its part, and the
            # part's transfers.
            "packed": 1, "first": 1, "n_out": range(max_out + 1)})
        m.submodules.queue = q = Queue(raw_layout, self.QUEUE, buffered=False)
        U, gt, gs = self._gear()

        mode = Signal(2)
        seg = Signal(2)              # segment of the mode (0 or 1)
        addr = Signal.like(self.rd_addr)
        issued_q = Signal()          # a read was issued last cycle: its data is on rd_data
        meta_q = Signal(raw_layout)  # its metadata
        active = Signal()
        m.d.comb += self.busy.eq(active | q.o.valid | issued_q)

        # The segment being read: part, target, number of reads, outputs per read, tail.
        part = Signal(range(len(PARTS) + 1))
        to_b = Signal()
        packed = Signal()
        n_reads = Signal(range(self._max_reads() + 1))
        n_outs = Signal(range(max_out + 1))
        per = Signal(range(max_sub + 1))
        tail = Signal(range(max_sub + 1))
        n_segs = Signal(2)
        with m.Switch(mode):
            for md, sl in rt_segs.items():
                with m.Case(md):
                    m.d.comb += n_segs.eq(len(sl))
                    with m.Switch(seg):
                        for i, (pt, tgt, n_out) in enumerate(sl):
                            # Reads of `pr` outputs each (a power of two), the last `tail`;
                            # packed expert weights: as many reads as their bits take.
                            pr = self._reads(tgt, 1)[1]
                            pk = self.packed and tgt == "w" and pt != ROUTER
                            with m.Case(i):
                                m.d.comb += [part.eq(pt), to_b.eq(tgt == "b"), packed.eq(pk),
                                             n_outs.eq(n_out), per.eq(pr),
                                             tail.eq(((n_out - 1) & (pr - 1)) + 1)]
                                m.d.comb += n_reads.eq(_cdiv(n_out * gt, gs) if pk
                                                       else _cdiv(n_out, pr))
        # A read may be issued once its words are in the buffer: a part is fed while it is
        # still arriving (rd_avail is the router's readiness for the router).
        part_ready = self.rd_avail
        credit = q.level + issued_q < self.QUEUE - 1
        issue = Signal()
        m.d.comb += [
            issue.eq(active & (part_ready | self.error) & credit),
            self.rd_part.eq(part),
            self.rd_addr.eq(addr),
            self.want.eq(active & ~part_ready & (part != ROUTER) & ~self.error),
            self.want_part.eq(part[:2]),
            self.waiting.eq(active & ~part_ready & ~self.error),
        ]
        with m.If(self.abort):
            m.d.sync += active.eq(0)
        with m.Elif(self.go):
            m.d.sync += [mode.eq(self.mode), seg.eq(0), addr.eq(0), active.eq(1)]
        with m.Elif(issue):
            m.d.sync += addr.eq(addr + 1)
            with m.If(addr == n_reads - 1):
                m.d.sync += [addr.eq(0), seg.eq(seg + 1)]
                with m.If(seg == n_segs - 1):
                    m.d.sync += active.eq(0)
        m.d.sync += [
            issued_q.eq(issue),
            meta_q.to_b.eq(to_b),
            meta_q.subs.eq(Mux(addr == n_reads - 1, tail, per)),
            meta_q.packed.eq(packed),
            meta_q.first.eq(addr == 0),
            meta_q.n_out.eq(n_outs),
        ]
        m.d.comb += [
            q.i.valid.eq(issued_q),
            q.i.payload.data.eq(self.rd_data),
            q.i.payload.to_b.eq(meta_q.to_b),
            q.i.payload.subs.eq(meta_q.subs),
            q.i.payload.packed.eq(meta_q.packed),
            q.i.payload.first.eq(meta_q.first),
            q.i.payload.n_out.eq(meta_q.n_out),
        ]

        # Unpack: output word `sub` of the head raw word, to b or w.
        sub = Signal(range(max_sub + 1))
        head = q.o.payload
        wb_bits, bb_bits = self._bits("w"), self._bits("b")
        w_words = [head.data[i * wb_bits:(i + 1) * wb_bits] for i in range(S // wb_bits)]
        b_words = [head.data[i * bb_bits:(i + 1) * bb_bits] for i in range(S // bb_bits)]
        w_word = Array(w_words)[sub] if len(w_words) > 1 else w_words[0]
        b_word = Array(b_words)[sub] if len(b_words) > 1 else b_words[0]

        # The gearbox (packed expert weights): `level` units of `acc` hold the part's next
        # bits, `left` transfers of the part are still to be given.
        acc = Signal((gt - 1 + gs) * U)
        level = Signal(range(gt + gs))
        left = Signal(range(max_out + 1))
        g_valid = (left != 0) & (level >= gt)
        pop = Signal()
        last_pop = Signal()
        base = Signal(range(gt + gs))     # units kept after this cycle's transfer
        accept = Signal()
        m.d.comb += [
            pop.eq(g_valid & self.w.ready & ~self.abort),
            last_pop.eq(pop & (left == 1)),
            # The last transfer of a part drops the rest (the padding of its last read).
            base.eq(Mux(last_pop, 0, level - Mux(pop, gt, 0))),
            accept.eq(q.o.valid & head.packed & (base < gt) & ~self.abort),
        ]
        bits = self._lay.expert_weight_bits
        shift = cfg.numerics.weight.width - bits
        n_lanes = a.rows * a.load_words
        gear_word = Cat(*(Cat(Const(0, shift), acc[j * bits:(j + 1) * bits])
                          for j in range(n_lanes))) if self.packed else 0

        m.d.comb += [
            self.w.valid.eq(Mux(left != 0, g_valid,
                                q.o.valid & ~head.to_b & ~head.packed) & ~self.abort),
            self.b.valid.eq(q.o.valid & head.to_b & ~self.abort),
            self.w.payload.eq(Mux(left != 0, gear_word, w_word)),
        ]
        bw = cfg.numerics.bias.width
        for j in range(a.cols):
            m.d.comb += self.b.payload[j].eq(b_word[32 * j:32 * j + bw])
        taken = ((self.w.valid & self.w.ready & (left == 0))
                 | (self.b.valid & self.b.ready))
        with m.If(self.abort):
            # Drop whatever is queued.
            m.d.sync += [sub.eq(0), left.eq(0), level.eq(0)]
            m.d.comb += q.o.ready.eq(1)
        with m.Elif(accept):
            m.d.comb += q.o.ready.eq(1)
        with m.Elif(taken):
            m.d.sync += sub.eq(sub + 1)
            with m.If(sub == head.subs - 1):
                m.d.sync += sub.eq(0)
                m.d.comb += q.o.ready.eq(1)

        if self.packed:
            shifted = Mux(pop, acc >> (gt * U), acc)
            with m.If(~self.abort):
                m.d.sync += level.eq(base + Mux(accept, gs, 0))
                with m.If(accept & head.first):
                    m.d.sync += left.eq(head.n_out)
                with m.Elif(pop):
                    m.d.sync += left.eq(left - 1)
                with m.If(accept):
                    with m.Switch(base):
                        for b in range(gt):
                            with m.Case(b):
                                m.d.sync += acc.eq(Cat(shifted[:b * U], head.data))
                with m.Else():
                    m.d.sync += acc.eq(shifted)
        return m


class MoELayer(wiring.Component):
    """One MoE layer: routing, reordering, expert weights from DDR, the experts in place.

    Everything happens on chip except the weight fetch. ``u`` (the block's LN2 output, N × D in
    ``ln_out``) and ``x`` (the residual, N × D in ``act``) are token matrices in the compute
    unit's activation buffer (abuf) at word addresses ``u_base`` and ``x_base`` (one row every
    ``ceil(D / L)`` words, ``L`` the buffer's lanes); the result replaces ``x``. The engine uses
    ``N·(ceil(E / L) + ceil(Hd / L))`` words of abuf at ``scratch_base`` (at most
    :attr:`MoELayerConfig.scratch_words`): the router logits, then the hidden rows. N, D, E, Hd:
    the layer's shape.

    The engine is built for the largest shape (:class:`MoELayerConfig`); ``shape`` says the
    layer's, within it (the ``MOE`` instruction's fields). Schedule, after ``start``::

        SETUP    the weight image's geometry from the shape (Geometry, 6 cycles), then the
                 task, layer and image are checked against it
        ROUTER   DMA: the task's router (E × D) → router buffer      (task switch: just this)
        LOGITS   compute unit: logits = u·Wgᵀ (N × E, logit format) → abuf scratch
        ROUTE    abuf → Softmax (scale 1) → TopK → Reorder (counting sort, on chip)
        for each used expert j = 0, 1, … (qref.expert_order: the largest and the smallest
                 token counts interleaved; unused experts skipped):
          DMA    job j's fc1 half, then its fc2 half, into the ring after job j − 1's, as
                 far ahead as the released halves leave room (weight_buffer_bytes; prefetch)
          FC1    compute unit: H = GELU(u[tokens of j]·W1ᵀ + b1)  (X rows gathered from u,
                 hidden format, contiguous in the scratch area); release its fc1 parts
          FC2    compute unit: x[tokens of j] = saturate(x[tokens] + s ⊙ (H·W2ᵀ + b2))
                 (row scale = router scores; output rows scattered into x, accumulated)
                 release its fc2 parts

    The compute unit takes the tokens' row offsets (token · row words) on its ``r`` stream and
    their scores on ``s``, both read from the reorder lists: no token row is copied.

    The DMA fetches the next experts while expert j computes, each used expert's weights exactly
    once, into the ring. FC1 and FC2 read their weights as they
    arrive (each read waits only for its own words, ``ExpertDMA.rd_avail``), so the first
    expert's products start with its first weights, not after its whole fetch. No phase waits
    on a count that a routing could make wrong: one expert receiving every token, experts with no
    token and tied scores only change how many rows and experts the loops run.

    Errors: a bad shape (``BAD_SHAPE``, at once), a task or layer out of range, or a weight image
    smaller than the shape's layout (or misaligned) end the layer with ``status`` ``BAD_*`` and
    nothing fetched. An AXI error lets the current compute command finish on garbage weights,
    then ends the layer with ``DMA_ERROR`` (the AXI managers' error flags are sticky until
    reset, so later layers report it too until the engine is reset); a command the compute unit
    refuses ends it with ``CU_ERROR``. The engine never waits for something an error prevents.

    Parameters
    ----------
    config : MoELayerConfig
    softmax : SoftmaxConfig or None
        The router's softmax unit. Default: one for the router alone (rows of E router
        logits). A larger unit (longer rows, more input formats, as the accelerator's attention
        softmax) can be given so that one unit serves both (:class:`hdl.engines.SharedMoELayer`);
        it must have the engine's numerics, rows of at least E elements and the logit format.

    Members
    -------
    shape : In(SHAPE_INPUT_LAYOUT), init ``config.max_shape``
        The layer's MoE shape (:data:`SHAPE_FIELDS`: tokens N, ``dim`` D, ``hidden`` Hd,
        ``num_experts`` E, ``k``, ``num_tasks``, ``num_layers``), each at most the
        configuration's, none zero, ``k ≤ num_experts`` (else ``BAD_SHAPE``); latched at
        ``start``.
    start : In(1)
        Pulse: run one layer with the arguments below (ignored while ``busy``).
    task, layer : In(8)
        Task id (selects the router) and MoE layer index.
    image_base : In(addr_width)
        Byte address of the weight image (4 KiB aligned).
    image_bytes : In(addr_width + 1)
        Size of the image.
    u_base, x_base, scratch_base : In(abuf address)
        abuf word addresses of ``u``, ``x`` and the scratch area.
    ext : In(ext_signature(config.compute))
        The compute unit's abuf port for the host while the engine is idle (load ``u``, ``x``,
        read the result; ``r_ok`` and ``w_ok`` are low while it runs).
    busy : Out(1)
        A layer is running.
    done : Out(1)
        High from the end of a layer until the next ``start``.
    status : Out(Status)
        Outcome of the last layer (valid with ``done``).
    cycles : Out(32)
        Cycles from ``start`` to ``done``.
    stall_cycles, first_stall_cycles : Out(32)
        Cycles the compute unit's feed waited for expert weights (all jobs; job 0 only).
    router_wait_cycles : Out(32)
        Cycles the logits product waited for the router weights.
    route_cycles : Out(32)
        Cycles from ``start`` to the first used expert (routing and reordering).
    bytes_fetched, router_bytes : Out(32)
        Expert and router weight bytes fetched.
    n_used : Out(range(E + 1))
        Used experts.
    bus0 … : Out(AXI4Signature)
        The DMA's AXI4 read ports.
    """

    def __init__(self, config, *, softmax=None):
        if not isinstance(config, MoELayerConfig):
            raise TypeError(f"config must be a MoELayerConfig, not {config!r}")
        self._config = config
        cfg = config
        c = cfg.compute
        nx = cfg.numerics
        if softmax is None:
            softmax = SoftmaxConfig(nx, max_len=cfg.num_experts, in_formats=(nx.logit,))
        if not isinstance(softmax, SoftmaxConfig):
            raise TypeError(f"softmax must be a SoftmaxConfig, not {softmax!r}")
        if softmax.numerics != nx:
            raise ValueError("the softmax unit's numerics must be the compute unit's")
        if softmax.max_len < cfg.num_experts:
            raise ValueError(f"the softmax unit's rows (max_len {softmax.max_len}) must hold the "
                             f"{cfg.num_experts} router logits of a token")
        if nx.logit not in softmax.in_formats:
            raise ValueError(f"the softmax unit must take the logit format {nx.logit}")
        #: The router rows' softmax scale constant: 1/ln 2, so that the base-2 logits are the
        #: natural ones (scale 1).
        self._router_scale = int(round(1.0 / math.log(2.0) * (1 << nx.softmax_scale_frac)))
        if self._router_scale >= 1 << softmax.scale_bits:
            raise ValueError(f"the softmax unit's scale_bits ({softmax.scale_bits}) cannot hold "
                             f"the router's scale 1/ln 2")
        #: The router rows' input format index of the softmax unit.
        self._logit_fmt = softmax.in_formats.index(nx.logit)
        self._cu = ComputeUnit(c)
        self._softmax = Softmax(softmax)
        self._topk = TopK(num_experts=cfg.num_experts, k=cfg.k, lanes=nx.softmax_lanes,
                          score_width=nx.prob.width)
        self._reorder = Reorder(num_experts=cfg.num_experts, k=cfg.k, tokens=cfg.tokens,
                                score_width=nx.prob.width)
        self._dma = cfg.dma()
        self._feeder = _Feeder(cfg)
        self._geometry = Geometry(cfg.layout)
        aw = cfg.addr_width
        abuf_addr = unsigned(c.addr_bits)
        bus_sig = AXI4Signature(addr_width=aw, data_width=cfg.data_width, id_width=1)
        members = {
            "shape": In(SHAPE_INPUT_LAYOUT, init=cfg.max_shape),
            "start": In(1),
            "task": In(8),
            "layer": In(8),
            "image_base": In(aw),
            "image_bytes": In(aw + 1),
            "u_base": In(abuf_addr),
            "x_base": In(abuf_addr),
            "scratch_base": In(abuf_addr),
            "ext": In(ext_signature(c)),
            "busy": Out(1),
            "done": Out(1),
            "status": Out(Status),
            "cycles": Out(32),
            "stall_cycles": Out(32),
            "first_stall_cycles": Out(32),
            "router_wait_cycles": Out(32),
            "route_cycles": Out(32),
            "bytes_fetched": Out(32),
            "router_bytes": Out(32),
            "n_used": Out(range(cfg.num_experts + 1)),
        }
        for p in range(cfg.ports):
            members[f"bus{p}"] = Out(bus_sig)
        super().__init__(members)

    @property
    def config(self):
        """The :class:`MoELayerConfig`."""
        return self._config

    @property
    def compute_unit(self):
        """The :class:`~hdl.systolic.unit.ComputeUnit` (a submodule)."""
        return self._cu

    @property
    def dma(self):
        """The :class:`~hdl.moe.dma.ExpertDMA` (a submodule)."""
        return self._dma

    @property
    def softmax(self):
        """The router's :class:`~hdl.nonlin.softmax.Softmax` (a submodule)."""
        return self._softmax

    @property
    def topk(self):
        """The router's :class:`~hdl.moe.topk.TopK` (a submodule, fed by :attr:`softmax`)."""
        return self._topk

    @property
    def buses(self):
        """The AXI4 read ports, port 0 first."""
        return [getattr(self, f"bus{p}") for p in range(self._config.ports)]

    # -- cycle model ------------------------------------------------------------------------

    def _cmd_cycles(self, m, k, n, **kw):
        return self._cu.cycles(m, k, n, **kw)

    def compute_bound_cycles(self, counts):
        """Cycles the compute unit needs for a layer whose used experts get ``counts`` tokens:
        the logits product plus, per used expert, fc1 and fc2 (the compute unit's own cycle
        formula, :meth:`ComputeUnit.cycles`)."""
        cfg = self._config
        total = self._cmd_cycles(cfg.tokens, cfg.dim, cfg.num_experts)
        for n in counts:
            total += self.fc_cycles(n)
        return total

    def fc_cycles(self, n_tok):
        """Compute-unit cycles of one expert with ``n_tok`` tokens: fc1 (its X rows gathered
        from ``u``) and fc2 (its rows scaled and added into ``x`` where they belong)."""
        cfg = self._config
        return self._cmd_cycles(n_tok, cfg.dim, cfg.hidden, bias=True) + self.fc2_cycles(n_tok)

    def fc2_cycles(self, n_tok):
        """Compute-unit cycles of an expert's fc2 with ``n_tok`` tokens."""
        cfg = self._config
        return self._cmd_cycles(n_tok, cfg.hidden, cfg.dim, bias=True, row_scale=True)

    @property
    def setup_cycles(self):
        """Cycles from ``start`` to the DMA's start: the image geometry of the shape
        (:class:`~hdl.moe.geometry.Geometry`'s latency) and the argument checks."""
        return self._geometry.latency + 1

    def expert_cycles(self, n_tok):
        """Engine cycles of one expert with ``n_tok`` tokens when weights never stall: fc1 and
        fc2 with the command hand-overs."""
        return self.fc_cycles(n_tok) + 5

    # -- hardware ---------------------------------------------------------------------------

    def _commands(self):
        """Constant fields of the three commands (from the compute unit's command builder)."""
        cfg = self._config
        nx = cfg.numerics
        cu = self._cu
        E, d, h = cfg.num_experts, cfg.dim, cfg.hidden
        logits = cu.command(1, d, E, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.logit,
                            x_base=0, y_base=0)
        fc1 = cu.command(1, d, h, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.hidden,
                         x_base=0, y_base=0, gather=True, bias=True, gelu=True)
        fc2 = cu.command(1, h, d, x_fmt=nx.hidden, w_fmt=nx.weight, out_fmt=nx.act,
                         x_base=0, y_base=0, scatter=True, bias=True, row_scale=True,
                         accumulate=True)
        return logits, fc1, fc2

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nx = cfg.numerics
        c = cfg.compute
        a = c.array
        Emax, Kmax, Nmax = cfg.num_experts, cfg.k, cfg.tokens
        L = a.buffer_lanes
        B = nx.softmax_lanes

        # The layer's shape, latched at start (the maxima until then), and what follows from it.
        shp = Signal(cfg.shape_layout, init=cfg.max_shape)
        E, K, N = shp.num_experts, shp.k, shp.tokens
        Wd = Signal(range(cfg.row_words + 1))          # abuf words of a token row (D)
        Hw = Signal(range(cfg.hidden_words + 1))       # … of a hidden row (Hd)
        We = Signal(range(cfg.logit_words + 1))        # … of a row of router logits (E)
        m.d.comb += [Wd.eq(_cdiv(shp.dim, L)), Hw.eq(_cdiv(shp.hidden, L)),
                     We.eq(_cdiv(E, L))]

        m.submodules.geometry = geom = self._geometry
        for name in ("num_layers", "num_tasks", "num_experts", "dim", "hidden"):
            m.d.comb += getattr(geom.shape, name).eq(getattr(shp, name))

        m.submodules.cu = cu = self._cu
        m.submodules.softmax = sm = self._softmax
        m.submodules.topk = topk = self._topk
        m.submodules.reorder = ro = self._reorder
        m.submodules.dma = dma = self._dma
        m.submodules.feeder = fd = self._feeder

        for p in range(cfg.ports):
            connect(m, flipped(getattr(self, f"bus{p}")), getattr(dma, f"bus{p}"))
        m.d.comb += [
            dma.geometry.eq(geom.geometry),
            fd.dim.eq(shp.dim), fd.hidden.eq(shp.hidden), fd.num_experts.eq(E),
            topk.n_experts.eq(E),
            ro.n_tokens.eq(N), ro.n_experts.eq(E), ro.top_k.eq(K),
        ]

        # Feeder ↔ DMA and compute unit.
        connect(m, fd.w, cu.w)
        connect(m, fd.b, cu.b)
        m.d.comb += [
            dma.rd_part.eq(fd.rd_part),
            dma.rd_addr.eq(fd.rd_addr),
            fd.rd_data.eq(dma.rd_data),
            fd.rd_avail.eq(dma.rd_avail),
            fd.error.eq(dma.error),
            dma.want.eq(fd.want),
            dma.want_part.eq(fd.want_part),
        ]

        # Softmax → TopK → Reorder.
        m.d.comb += [
            topk.i.valid.eq(sm.o.valid),
            topk.i.payload.eq(sm.o.payload.data),
            sm.o.ready.eq(topk.i.ready),
        ]
        connect(m, topk.o, ro.i)

        # Reorder's used experts go to the DMA (which stores the list) and to the sequencer's
        # queue; both take them at once.
        m.submodules.experts_q = eq = Queue(expert_entry_layout(Emax, Kmax, Nmax), Emax,
                                            buffered=False)
        m.d.comb += [
            eq.i.payload.eq(ro.experts.payload),
            eq.i.valid.eq(ro.experts.valid),
            ro.experts.ready.eq(eq.i.ready),
            dma.experts.valid.eq(ro.experts.valid & eq.i.ready),
            dma.experts.payload.eq(ro.experts.payload.expert),
        ]

        # -- arguments ------------------------------------------------------------------------
        task_q = Signal(8)
        layer_q = Signal(8)
        ibase = Signal.like(self.image_base)
        ibytes = Signal.like(self.image_bytes)
        ubase = Signal.like(self.u_base)
        xbase = Signal.like(self.x_base)
        sbase = Signal.like(self.scratch_base)
        hbase = Signal.like(self.scratch_base)       # the hidden rows: sbase + N·We
        ins = self.shape
        bad_shape = (Cat(*(getattr(ins, name) == 0 for name in SHAPE_FIELDS)).any() |
                     Cat(*(getattr(ins, name) > getattr(cfg, name)
                           for name in SHAPE_FIELDS)).any() |
                     (ins.k > ins.num_experts))
        total = geom.geometry.total_bytes
        bad_task = task_q >= shp.num_tasks
        bad_layer = layer_q >= shp.num_layers
        bad_image = ((ibytes < total) | (ibase[:12] != 0) |
                     (ibase + total > (1 << cfg.addr_width)))
        m.d.comb += [
            dma.image_base.eq(ibase),
            dma.image_bytes.eq(ibytes),
            dma.layer.eq(layer_q),
            dma.task.eq(task_q),
        ]

        # -- the compute unit's command and ext port --------------------------------------------
        cmd_logits, cmd_fc1, cmd_fc2 = self._commands()
        cmd_valid = Signal()
        cmd = cu.cmd.payload
        m.d.comb += cu.cmd.valid.eq(cmd_valid)
        with m.If(cu.cmd.ready & cmd_valid):
            m.d.sync += cmd_valid.eq(0)

        def issue(const, m_rows, x_addr, y_addr, **shape):
            """Statements that offer one command (held until the compute unit takes it):
            ``const``'s fields, with the rows, addresses and ``shape`` (K, N and the strides of
            the layer's shape) given at run time."""
            stmts = [cmd_valid.eq(1)]
            runtime = dict(m=m_rows, x_base=x_addr, y_base=y_addr, **shape)
            for name, value in const.items():
                stmts.append(getattr(cmd, name).eq(runtime.get(name, value)))
            return stmts

        ext_raddr = Signal.like(cu.ext.r_addr)
        running = Signal()
        # While a layer runs the engine reads the logits on the port and never writes.
        with m.If(running):
            m.d.comb += cu.ext.r_addr.eq(ext_raddr)
        with m.Else():
            m.d.comb += [cu.ext.r_addr.eq(self.ext.r_addr), cu.ext.w_addr.eq(self.ext.w_addr),
                         cu.ext.w_en.eq(self.ext.w_en), cu.ext.w_data.eq(self.ext.w_data)]
        m.d.comb += [self.ext.r_data.eq(cu.ext.r_data),
                     self.ext.r_ok.eq(~running & cu.ext.r_ok),
                     self.ext.w_ok.eq(~running & cu.ext.w_ok)]
        r_data = cu.ext.r_data

        # -- counters -------------------------------------------------------------------------
        job = Signal(range(Emax + 1))
        m.d.comb += [
            dma.job.eq(job),
            fd.job.eq(job),
            self.busy.eq(running),
            self.stall_cycles.eq(dma.stall_cycles),
            self.bytes_fetched.eq(dma.bytes_fetched),
            self.router_bytes.eq(dma.router_bytes),
        ]
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(fd.want & (job == 0)):
                m.d.sync += self.first_stall_cycles.eq(self.first_stall_cycles + 1)
            with m.If(fd.waiting & (fd.rd_part == ROUTER)):
                m.d.sync += self.router_wait_cycles.eq(self.router_wait_cycles + 1)

        # -- readout of the logits: abuf words → softmax beats --------------------------------
        rq_layout = data.StructLayout({"data": data.ArrayLayout(signed(a.elem_bits), L),
                                       "last": 1})
        m.submodules.logit_q = lq = Queue(rq_layout, 4, buffered=False)
        rd_issue = Signal()
        rd_issue_q = Signal()
        rd_last_q = Signal()
        m.d.sync += rd_issue_q.eq(rd_issue)
        m.d.comb += [
            lq.i.valid.eq(rd_issue_q),
            lq.i.payload.data.eq(r_data),
            lq.i.payload.last.eq(rd_last_q),
        ]
        sp = sm.i.payload
        m.d.comb += [sp.scale.eq(self._router_scale), sp.fmt.eq(self._logit_fmt)]
        beat = Signal(range(-(-Emax // B) + 1))
        last_beat = (beat + 1) * B >= E
        m.d.comb += [sp.last.eq(last_beat), sp.count.eq(Mux(last_beat, E - beat * B, B))]
        with m.If(sm.i.valid & sm.i.ready):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))
        iw = sm.config.in_width
        if L >= B:
            # One abuf word holds L/B beats.
            per = L // B
            s = Signal(range(per + 1))
            for j in range(B):
                lane = Array(lq.o.payload.data[si * B + j] for si in range(per))[s] \
                    if per > 1 else lq.o.payload.data[j]
                m.d.comb += sp.data[j].eq(lane[:iw].as_signed())
            m.d.comb += sm.i.valid.eq(lq.o.valid)
            with m.If(sm.i.valid & sm.i.ready):
                m.d.sync += s.eq(s + 1)
                with m.If((s == per - 1) | last_beat):
                    m.d.sync += s.eq(0)
                    m.d.comb += lq.o.ready.eq(1)
        else:
            # A beat gathers B/L abuf words (fewer at the end of a row).
            per = B // L
            acc = Signal(data.ArrayLayout(signed(iw), B))
            pos = Signal(range(per + 1))
            full = Signal()
            m.d.comb += [sm.i.valid.eq(full), sp.data.eq(acc)]
            with m.If(sm.i.valid & sm.i.ready):
                m.d.sync += full.eq(0)
            m.d.comb += lq.o.ready.eq(~full)
            with m.If(lq.o.valid & ~full):
                for pi in range(per):
                    with m.If(pos == pi):
                        for j in range(L):
                            m.d.sync += acc[pi * L + j].eq(lq.o.payload.data[j][:iw].as_signed())
                m.d.sync += pos.eq(pos + 1)
                with m.If((pos == per - 1) | lq.o.payload.last):
                    m.d.sync += [pos.eq(0), full.eq(1)]

        # -- the sequencer --------------------------------------------------------------------
        cur = Signal(expert_entry_layout(Emax, Kmax, Nmax))
        r_row = Signal(range(Nmax + 1))    # readout: row and word being read
        r_word = Signal(range(cfg.logit_words + 1))
        setup = Signal(range(geom.latency + 1))
        rd_base = Signal.like(ext_raddr)
        err_status = Signal(Status)
        m.d.comb += eq.o.ready.eq(0)

        # Entry feed: the current expert's list entries (port: entry offset + index) → the
        # compute unit's row offsets (cu.r, token · Wd, for fc1's gather and fc2's scatter) and
        # row scales (cu.s, fc2 only), with credits.
        m.submodules.row_q = rq = Queue(unsigned(c.addr_bits), 4, buffered=False)
        m.submodules.score_q = sq = Queue(signed(nx.prob.width), 4, buffered=False)
        flush = Signal()         # ERROR: drop queued offsets, scores and weights
        m.d.comb += [
            cu.r.payload.eq(rq.o.payload),
            cu.r.valid.eq(rq.o.valid & ~flush),
            rq.o.ready.eq(cu.r.ready | flush),
            cu.s.payload.eq(sq.o.payload),
            cu.s.valid.eq(sq.o.valid & ~flush),
            sq.o.ready.eq(cu.s.ready | flush),
            fd.abort.eq(flush),
        ]
        f_go = Signal()
        f_go_scores = Signal()
        f_scores = Signal()
        f_active = Signal()
        f_idx = Signal(range(Nmax + 1))
        f_issue = Signal()
        f_issue_q = Signal()
        m.d.sync += f_issue_q.eq(f_issue)
        m.d.comb += [
            ro.rd_addr.eq(cur.offset + f_idx),
            rq.i.valid.eq(f_issue_q),
            rq.i.payload.eq(ro.rd_data.token * Wd),
            sq.i.valid.eq(f_issue_q & f_scores),
            sq.i.payload.eq(ro.rd_data.score),
            f_issue.eq(f_active & (rq.level + f_issue_q < 3) & (sq.level + f_issue_q < 3)),
        ]
        with m.If(f_go):
            m.d.sync += [f_active.eq(1), f_idx.eq(0), f_scores.eq(f_go_scores)]
        with m.Elif(f_issue):
            m.d.sync += f_idx.eq(f_idx + 1)
            with m.If(f_idx == cur.count - 1):
                m.d.sync += f_active.eq(0)
        with m.If(flush):
            m.d.sync += f_active.eq(0)

        def cu_done_check(next_state):
            """Wait for the command's status; a refused command is an error."""
            m.d.comb += cu.done.ready.eq(1)
            with m.If(cu.done.valid):
                with m.If(cu.done.payload.error != CUError.OK):
                    m.d.sync += err_status.eq(Status.CU_ERROR)
                    m.next = "ERROR"
                with m.Elif(dma.error):
                    m.d.sync += err_status.eq(Status.DMA_ERROR)
                    m.next = "ERROR"
                with m.Else():
                    m.next = next_state

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        task_q.eq(self.task), layer_q.eq(self.layer),
                        ibase.eq(self.image_base), ibytes.eq(self.image_bytes),
                        ubase.eq(self.u_base), xbase.eq(self.x_base),
                        sbase.eq(self.scratch_base),
                        self.cycles.eq(0), self.first_stall_cycles.eq(0),
                        self.router_wait_cycles.eq(0), self.route_cycles.eq(0),
                        self.done.eq(0), job.eq(0), setup.eq(0),
                    ]
                    with m.If(bad_shape):
                        m.d.sync += [self.status.eq(Status.BAD_SHAPE), self.done.eq(1)]
                    with m.Else():
                        m.d.sync += running.eq(1)
                        m.d.sync += [getattr(shp, name).eq(getattr(self.shape, name))
                                     for name in SHAPE_FIELDS]
                        m.next = "SETUP"

            with m.State("SETUP"):
                # The image geometry of the shape (Geometry's pipeline), then the arguments
                # are checked against it.
                m.d.sync += [setup.eq(setup + 1), hbase.eq(sbase + N * We)]
                with m.If(setup == geom.latency - 1):
                    m.next = "CHECK"

            with m.State("CHECK"):
                with m.If(bad_task | bad_layer | bad_image):
                    m.d.sync += [self.done.eq(1), running.eq(0)]
                    m.next = "IDLE"
                    with m.If(bad_task):
                        m.d.sync += self.status.eq(Status.BAD_TASK)
                    with m.Elif(bad_layer):
                        m.d.sync += self.status.eq(Status.BAD_LAYER)
                    with m.Else():
                        m.d.sync += self.status.eq(Status.BAD_IMAGE)
                with m.Else():
                    m.d.comb += [dma.start.eq(1), ro.start.eq(1)]
                    m.next = "LOGITS"

            with m.State("LOGITS"):
                # One product over all N tokens; the router weights stream from the DMA.
                m.d.sync += issue(cmd_logits, N, ubase, sbase + cfg.logits_offset, k=shp.dim,
                                  n=E, x_stride=Wd, y_stride=We)
                m.d.comb += [fd.go.eq(1), fd.mode.eq(_Feeder.ROUTER)]
                m.next = "LOGITS_RUN"

            with m.State("LOGITS_RUN"):
                cu_done_check("READOUT")
                m.d.sync += [r_row.eq(0), r_word.eq(0),
                             rd_base.eq(sbase + cfg.logits_offset)]

            with m.State("READOUT"):
                # Read the N × We logit words into the softmax, with credits.
                m.d.comb += [
                    rd_issue.eq(lq.level + rd_issue_q < 3),
                    ext_raddr.eq(rd_base + r_word),
                ]
                with m.If(rd_issue):
                    m.d.sync += [r_word.eq(r_word + 1), rd_last_q.eq(r_word == We - 1)]
                    with m.If(r_word == We - 1):
                        m.d.sync += [r_word.eq(0), r_row.eq(r_row + 1),
                                     rd_base.eq(rd_base + We)]
                        with m.If(r_row == N - 1):
                            m.next = "EXPERT"

            with m.State("EXPERT"):
                # The next used expert (Reorder emits them after the last token is routed).
                m.d.comb += eq.o.ready.eq(1)
                with m.If(eq.o.valid):
                    m.d.sync += cur.eq(eq.o.payload)
                    with m.If(job == 0):
                        m.d.sync += self.route_cycles.eq(self.cycles)
                    m.next = "FC1"

            with m.State("FC1"):
                # X rows gathered from u at the tokens' offsets; H contiguous in the scratch.
                m.d.sync += issue(cmd_fc1, cur.count, ubase, hbase, k=shp.dim, n=shp.hidden,
                                  x_stride=Wd, y_stride=Hw)
                m.d.comb += [fd.go.eq(1), fd.mode.eq(_Feeder.FC1), f_go.eq(1)]
                m.next = "FC1_RUN"

            with m.State("FC1_RUN"):
                cu_done_check("FC2")

            with m.State("FC2"):
                # Output rows scaled by the scores and added into x at the tokens' offsets.
                # FC1 is done with its weights: the DMA may refill their words.
                m.d.sync += issue(cmd_fc2, cur.count, hbase, xbase, k=shp.hidden, n=shp.dim,
                                  x_stride=Hw, y_stride=Wd)
                m.d.comb += [fd.go.eq(1), fd.mode.eq(_Feeder.FC2), f_go.eq(1),
                             f_go_scores.eq(1), dma.release_fc1.eq(1)]
                m.next = "FC2_RUN"

            with m.State("FC2_RUN"):
                cu_done_check("RELEASE")

            with m.State("RELEASE"):
                # The job's weights are consumed: the DMA may refill its fc2 words.
                m.d.comb += dma.release.eq(1)
                m.d.sync += job.eq(job + 1)
                m.next = "EXPERT"
                with m.If(cur.last):
                    m.next = "FINISH"

            with m.State("FINISH"):
                with m.If(~dma.busy & ~fd.busy):
                    with m.If(dma.error):
                        m.d.sync += self.status.eq(Status.DMA_ERROR)
                    with m.Else():
                        m.d.sync += self.status.eq(Status.OK)
                    m.d.sync += [self.done.eq(1), running.eq(0), self.n_used.eq(ro.n_used)]
                    m.next = "IDLE"

            with m.State("ERROR"):
                # Let the DMA drain its outstanding reads and drop queued operands, then report.
                # (After CU_ERROR the compute unit's weight queue may hold words of the refused
                # command: reset the unit before it is used again.)
                m.d.comb += flush.eq(1)
                with m.If(~dma.busy & ~fd.busy & ~cu.busy & ~sq.o.valid & ~rq.o.valid):
                    m.d.sync += [self.status.eq(err_status), self.done.eq(1), running.eq(0),
                                 self.n_used.eq(ro.n_used)]
                    m.next = "IDLE"
        return m
