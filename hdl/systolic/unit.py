# SPDX-License-Identifier: BSD-2-Clause
"""The unified compute unit: ``Y = X·Wᵀ + b``, requantised, with the epilogue, for every matrix
product of the model, on one weight-stationary systolic array.

Bit-exact with :func:`golden.qref.linear`. Structure::

               cmd ──▶ ┌──────────────── tile sequencer ─────────────────┐ ──▶ done
                       │ loader: W words of tile j+1   compute: X rows   │
      w ──▶ weight ──▶ │   (stream, or abuf for K / Vᵀ)   of tile j      │
            queue      └───────┬───────────────────────────┬─────────────┘
                               ▼                           ▼
                ┌────────── abuf (activation buffer) ──────────┐
                │ read: X rows    read: W words or old Y rows  │◀── write: Y rows ──┐
                └──────────────────────────────────────────────┘                   │
                          │              │                                          │
                          ▼              ▼                                          │
                       SystolicArray (rows × cols) ──▶ accumulate over K tiles      │
                                                       (acc memory, + bias)         │
         b ──▶ bias memory ─────────────────────────────────┘      │                │
         s ──▶ row-scale memory ──▶ epilogue: requantise ─▶ GELU ─▶ ×scale ─▶ +old Y┘

Tiling and the schedule
-----------------------
A product is cut into ``KT = ceil(K/rows)`` K-tiles and ``NT = ceil(N/cols)`` N-tiles; the
sequencer runs ``J = KT·NT`` *passes*, N-tile outer, K-tile inner. A pass loads one weight tile
into the PEs' shadow registers and streams all ``M`` X rows through the array; the first row
swaps the tile in. The loader fetches the next pass's ``Lw`` words (``Lw = cols`` for a column
load, ``rows`` for a row load) while the current pass computes, so a pass takes
``P = max(M, Lw)`` cycles and passes follow back to back. With ``array.load_words = 2`` the
words of the ``w`` stream come and load in pairs (:mod:`hdl.systolic.array`), ``Lw = cols/2``:
an expert's passes of fewer than ``cols`` tokens take half the cycles.

The array's ``cols`` partial sums per row go to the accumulator memory (``max_m`` words of
``cols × acc_bits``): the first K-tile writes ``psum + (bias << b_shift)``, later ones add the
stored sum, and the last one sends ``psum + stored`` on to the epilogue instead of writing it
back. So the accumulator needs only one bank: results of one N-tile never wait.

Cycle formula
-------------
From the cycle a command is accepted on ``cmd`` to the cycle ``done.valid`` rises, with every
stream ready when the unit wants it::

    cycles(M, K, N) = PRE + max(Lw, NT·bias, M·row_scale) + (J − 1)·P + M + POST
    P    = max(M, Lw)          Lw = rows if w_transposed, cols if W comes from abuf,
                               cols / load_words if from the w stream (pairs, see above)
    J    = ceil(K/rows)·ceil(N/cols)
    PRE  = 2                   (accept, decode)
    POST = 2 (buffer read, operand select) + array latency + 2 (accumulate)
           + epilogue latency  (5, plus the GELU unit's latency when the unit has one)

The last X row is issued at ``PRE + max(…) + (J − 1)·P + M − 1``, written ``POST`` cycles later,
and ``done.valid`` rises the cycle after. For the 16 × 16 unit the array latency is 35
(``d₁₅ + 1 + 3 + h₁₅ + 1``) and ``POST`` is 44 without GELU, 49 with it.

:meth:`ComputeUnit.cycles` evaluates it; the tests compare it with the simulation. The useful
work is ``M·K·N`` MACs, ``M·K·N/(rows·cols)`` cycles of the whole array; the rest is lost at the
tile edges (``J·M·rows·cols − M·K·N`` PE-cycles), to weight loading when ``M < Lw``
(``J·(Lw − M)`` cycles), and to fill and drain (the constant terms).

Operands and the activation buffer
----------------------------------
``abuf`` holds token matrices row by row, ``L = lcm(rows, cols)`` elements per word (16 for a
16 × 16 array). It has one write port (output rows; the external port's writes in the cycles,
or the banks, the output rows leave free) and two synchronous read ports: X rows, and either W
words (attention) or the old output rows (accumulation) — no product needs both, so the buffer
maps onto two block-RAM/URAM copies; the external port reads on the second one in the cycles a
command leaves it free (on the first while the unit is idle). So the sequencer's softmax runs
beside a product (:mod:`hdl.datapath`), and the product keeps its exact cycle count.
Element ``(i, j)`` of a matrix at word address ``base`` with ``stride`` words per row is lane ``j mod L`` of word ``base + i·stride + j div L``. An X read takes an aligned group of
``rows`` lanes, an output write an aligned group of ``cols`` lanes (lane write enables), so the
output of one product is directly the X (or W) operand of the next one.

Row maps (the MoE experts): with ``gather``, X row ``m`` is the row at word ``x_base + r[m]``
instead of ``x_base + m·x_stride``; with ``scatter``, output row ``m`` (and the old row it
accumulates into) is the row at ``y_base + r[m]``. The ``M`` word offsets ``r[m]`` come on the
``r`` stream from the start of the command; a row of the first pass issues once its offset is
in (one a cycle keeps ahead of the rows, which wait for the first tile), so they cost no
cycle. An expert's tokens are thus read straight from the token matrix and its results added
straight into the residual, in place, without copying them to and from a scratch area.

W comes from the ``w`` stream (weights, fed by the DMA) or from ``abuf`` (attention: keys and
values are activations). A matrix stored ``(N, K)`` — weights, the keys K of Q·Kᵀ — is loaded by
PE *columns*; a matrix stored ``(K, N)`` — the values V of A·V, where ``W = Vᵀ`` — by PE *rows*
(``w_transposed``). The transposition costs nothing: it is the direction the load packets travel
in the array (see :mod:`hdl.systolic.array`). X is never transposed.

Epilogue (the order of :func:`golden.qref.linear`)
-------------------------------------------------
1. requantise: ``y = saturate(round_shift(acc, q_shift), out)`` (round half to even; runtime
   ``q_shift = x.f + w.f − out.f`` and output width),
2. GELU (``numerics.hidden`` format) when asked for,
3. row scale: ``y = saturate(round_shift(y·s[m], prob.f), out)`` (the router score of an expert),
4. accumulate: ``y = saturate(old + y, out)`` with ``old`` read from the output location (the
   residual add and the sum over a token's experts),

then the row is written. The epilogue runs at the array's output rate (``cols`` elements per
cycle) with a fixed latency; each optional step is bypassed by a multiplexer, not skipped. Its
multipliers (row scale) are built from LUTs (shift-and-add), so that every DSP48E2 of the unit
is a PE.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.fixed import QFormat

from .._checks import check_int
from ..stream_util import Queue
from .array import SystolicArray
from .config import ComputeConfig

__all__ = ["Error", "command_layout", "status_layout", "w_stream_layout", "ext_signature",
           "ComputeUnit"]


class Error(enum.Enum, shape=unsigned(3)):
    """Status of a command (``done.payload.error``)."""
    #: The product was computed.
    OK = 0
    #: M, K or N is zero.
    ZERO_SIZE = 1
    #: M, K or N is above the configured maximum.
    TOO_LARGE = 2
    #: ``q_shift``, ``b_shift`` or ``out_bits`` out of range, or GELU with a non-hidden format.
    BAD_FORMAT = 3
    #: GELU asked for, but the unit has no GELU.
    NO_GELU = 4
    #: ``w_transposed`` with weights from the stream (only abuf operands may be transposed), or
    #: W from abuf together with ``accumulate`` (they share a read port).
    BAD_SOURCE = 5


def command_layout(config):
    """Layout of one command on ``cmd``.

    Fields: ``m``, ``k``, ``n`` (sizes); ``x_base``/``x_stride``, ``w_base``/``w_stride``,
    ``y_base``/``y_stride`` (abuf word address of row 0 and words per row of X, of W — when
    ``w_from_abuf`` — and of the output); ``w_from_abuf`` (W from abuf instead of the ``w``
    stream); ``w_transposed`` (W is stored ``(K, N)`` in abuf, e.g. ``Vᵀ``); ``gather``,
    ``scatter`` (X rows, output rows at the row offsets of the ``r`` stream); ``bias``, ``gelu``,
    ``row_scale``, ``accumulate`` (epilogue steps); ``q_shift = x.f + w.f − out.f``, ``b_shift
    = x.f + w.f − bias.f`` (the accumulator has ``x.f + w.f`` fractional bits); ``out_bits``
    (width of the signed output format).
    """
    cfg = config
    addr = unsigned(cfg.addr_bits)
    dim = unsigned(cfg.dim_bits)
    shift = unsigned(max(cfg.array.acc_bits, 1).bit_length())
    return data.StructLayout({
        "m": dim, "k": dim, "n": dim,
        "x_base": addr, "x_stride": addr,
        "w_base": addr, "w_stride": addr,
        "y_base": addr, "y_stride": addr,
        "w_from_abuf": 1, "w_transposed": 1, "gather": 1, "scatter": 1,
        "bias": 1, "gelu": 1, "row_scale": 1, "accumulate": 1,
        "q_shift": shift, "b_shift": shift,
        "out_bits": unsigned(cfg.array.elem_bits.bit_length() + 1),
    })


def w_stream_layout(config):
    """Payload of the ``w`` stream: ``array.load_words`` weight words of ``rows`` weights (word
    ``c`` in the low lanes, ``c + 1`` above it when ``load_words = 2``)."""
    a = config.array
    return data.ArrayLayout(signed(a.w_bits), a.rows * a.load_words)


def status_layout(config):
    """Layout of ``done``: the command's :class:`Error` code."""
    return data.StructLayout({"error": Error})


def ext_signature(config):
    """Signature of the activation buffer's external port, from the initiator's side.

    A read and a write in every cycle: ``r_data`` is the word at the ``r_addr`` of the previous
    cycle (a synchronous read) when ``r_ok`` was high in that cycle; ``w_en`` writes ``w_data``
    (a whole word) at ``w_addr`` when ``w_ok`` is high in the same cycle. While the unit is idle
    both are always high (and a read of the word written in the same cycle returns the old
    word). While a command runs the port takes the cycles the command leaves free: a read when
    the second read port is not reading W words or old output rows (``r_ok``), a write when no
    output row is written to the same buffer bank (``w_ok``); the initiator holds an access
    that is not taken.
    """
    word = data.ArrayLayout(signed(config.array.elem_bits), config.array.buffer_lanes)
    return wiring.Signature({
        "r_addr": Out(unsigned(config.addr_bits)),
        "w_addr": Out(unsigned(config.addr_bits)),
        "w_en": Out(1),
        "w_data": Out(word),
        "r_data": In(word),
        "r_ok": In(1),
        "w_ok": In(1),
    })


def _mul_const(value, const):
    """``value · const`` for a non-negative constant, as shift-and-add (no multiplier)."""
    total = Const(0, 1)
    for i in range(const.bit_length()):
        if (const >> i) & 1:
            total = total + (value << i)
    return total


def _soft_mul(a, b):
    """Signed ``a · b`` as a sum of partial products, so that synthesis builds it from LUTs and
    carry chains instead of a DSP48E2."""
    wb = b.shape().width
    total = Const(0, signed(2))
    for i in range(wb):
        term = Mux(b[i], a << i, 0)
        total = total - term if (i == wb - 1 and b.shape().signed) else total + term
    return total


def _clamp(v, lo, hi):
    return Mux(v > hi, hi, Mux(v < lo, lo, v))


class _PortSignals:
    """The signals of one activation-buffer port (``addr``, ``data``, and ``en`` for the write
    port), which :meth:`ComputeUnit._elaborate_abuf` spreads over the banks."""

    def __init__(self, *, addr, data, en=None):
        self.addr = Signal(unsigned(addr))
        self.data = Signal(data)
        if en is not None:
            self.en = Signal(en)


class ComputeUnit(wiring.Component):
    """Compute ``Y = X·Wᵀ + b`` (requantised, with the epilogue) for ``M × K × N`` up to the
    configured maxima.

    Parameters
    ----------
    config : ComputeConfig

    Members
    -------
    cmd : In(stream.Signature(command_layout(config)))
        Commands. Ready while the unit is idle (no command running and no status waiting on
        ``done``).
    done : Out(stream.Signature(status_layout(config)))
        One status per command, after its last output row is written. Respects back pressure:
        the next command is accepted only after this transfer.
    w : In(stream.Signature(ArrayLayout(signed(w_bits), rows · load_words)))
        Weight words for commands without ``w_from_abuf``: for each N-tile (outer) and K-tile
        (inner) ``cols`` words, word ``c`` = ``W[n0 + c, k0 : k0 + rows]`` (lanes beyond K or
        N are don't-care). With ``array.load_words = 2`` each transfer carries two words, ``c``
        in lanes ``0 … rows−1`` and ``c + 1`` in lanes ``rows … 2·rows−1``: ``cols/2``
        transfers per tile, which the array loads in as many cycles. The unit queues up to
        ``w_queue_tiles`` tiles ahead; respects back pressure (bubbles only delay the product).
    b : In(stream.Signature(ArrayLayout(signed(bias.width), cols)))
        Biases (``numerics.bias``) for commands with ``bias``: one word per N-tile,
        ``b[n0 : n0 + cols]``. Taken at the start of the command.
    s : In(stream.Signature(signed(prob.width)))
        Row scales (``numerics.prob``) for commands with ``row_scale``: ``M`` values, one per
        output row. Taken at the start of the command.
    r : In(stream.Signature(unsigned(addr_bits)))
        Row offsets for commands with ``gather`` or ``scatter``: ``M`` abuf word offsets, one
        per X/output row (from ``x_base`` and ``y_base``). Taken from the start of the command;
        a row of the first pass waits for its offset.
    ext : In(ext_signature(config))
        Access to the activation buffer: every cycle while the unit is idle, the cycles a
        command leaves its second read port and its write port free while one runs (``r_ok``,
        ``w_ok``), never while a finished command's status waits (``busy`` without running).
    busy : Out(1)
        A command is running or its status has not been taken.
    """

    #: Cycles from the ``cmd`` transfer to the first issue (accept, decode).
    PRE_CYCLES = 2
    #: Cycles from issuing an abuf read to the array input (read, select/mask register).
    READ_CYCLES = 2
    #: Cycles from the array output to the epilogue input (read accumulator, add).
    ACC_CYCLES = 2
    #: Epilogue stages besides the GELU: requantise (2), row scale (2), accumulate/write (1).
    EPI_CYCLES = 5
    #: Cycles from the last write to ``done.valid``.
    DONE_CYCLES = 1

    def __init__(self, config):
        if not isinstance(config, ComputeConfig):
            raise TypeError(f"config must be a ComputeConfig, not {config!r}")
        self._config = config
        acfg = config.array
        nx = config.numerics
        if config.gelu and nx.hidden.width > acfg.elem_bits:
            raise ValueError("the hidden format is wider than the activation buffer")
        self._word = data.ArrayLayout(signed(acfg.elem_bits), acfg.buffer_lanes)
        # Children are built on first use (the simulation driver reaches the buffer and the
        # array's streams before elaboration), so that a unit used only for its command builder
        # and cycle formula creates no hardware.
        self._parts = {}
        super().__init__({
            "cmd": In(stream.Signature(command_layout(config))),
            "done": Out(stream.Signature(status_layout(config))),
            "w": In(stream.Signature(w_stream_layout(config))),
            "b": In(stream.Signature(data.ArrayLayout(signed(nx.bias.width), acfg.cols))),
            "s": In(stream.Signature(signed(nx.prob.width))),
            "r": In(stream.Signature(unsigned(config.addr_bits))),
            "ext": In(ext_signature(config)),
            "busy": Out(1),
        })

    def _tag_layout(self):
        cfg = self._config
        acfg = cfg.array
        return data.StructLayout({
            "m": range(cfg.max_m),
            "nt": range(cfg.max_nt),
            "y_addr": unsigned(cfg.addr_bits),
            "ngroup": range(acfg.buffer_lanes // acfg.cols),
            "nvalid": range(acfg.cols + 1),
            "first_k": 1,
            "last_k": 1,
            "end": 1,
        })

    # -- properties -------------------------------------------------------------------------

    @property
    def config(self):
        """The :class:`ComputeConfig`."""
        return self._config

    def _part(self, name, build):
        if name not in self._parts:
            self._parts[name] = build()
        return self._parts[name]

    @property
    def array(self):
        """The :class:`~hdl.systolic.array.SystolicArray` (a submodule)."""
        return self._part("array", lambda: SystolicArray(
            self._config.array, tag_shape=self._tag_layout(), backpressure=False))

    @property
    def gelu(self):
        """The GELU unit (:class:`hdl.nonlin.gelu.Gelu`), or ``None``."""
        if not self._config.gelu:
            return None

        def build():
            from ..nonlin.config import GeluConfig
            from ..nonlin.gelu import Gelu
            nx = self._config.numerics
            return Gelu(GeluConfig(nx, nx.hidden, self._config.array.cols))
        return self._part("gelu", build)

    @property
    def abuf_banks(self):
        """The activation buffer's banks: :class:`~amaranth.lib.memory.Memory` objects of at
        most ``abuf_bank_depth`` words of ``buffer_lanes`` elements; word ``a`` is word
        ``a mod abuf_bank_depth`` of bank ``a div abuf_bank_depth``."""
        cfg = self._config

        def build():
            step = cfg.abuf_bank_depth
            return tuple(Memory(shape=self._word, depth=min(step, cfg.abuf_depth - base),
                                init=[])
                         for base in range(0, cfg.abuf_depth, step))
        return self._part("abuf", build)

    def abuf_word(self, addr):
        """The memory element holding activation-buffer word ``addr`` (for ``ctx.get``/``ctx.set``
        in simulation)."""
        if not 0 <= addr < self._config.abuf_depth:
            raise ValueError(f"abuf address {addr} is outside 0..{self._config.abuf_depth - 1}")
        step = self._config.abuf_bank_depth
        return self.abuf_banks[addr // step].data[addr % step]

    @property
    def acc_mem(self):
        """The accumulator memory: ``max_m`` words of ``cols`` × ``acc_bits``."""
        a = self._config.array
        return self._part("acc_mem", lambda: Memory(
            shape=data.ArrayLayout(signed(a.acc_bits), a.cols), depth=self._config.max_m,
            init=[]))

    @property
    def bias_mem(self):
        """The bias memory: ``max_nt`` words of ``cols`` aligned biases (``acc_bits``)."""
        a = self._config.array
        return self._part("bias_mem", lambda: Memory(
            shape=data.ArrayLayout(signed(a.acc_bits), a.cols), depth=self._config.max_nt,
            init=[]))

    @property
    def scale_mem(self):
        """The row-scale memory: ``max_m`` values in ``numerics.prob``."""
        return self._part("scale_mem", lambda: Memory(
            shape=signed(self._config.numerics.prob.width), depth=self._config.max_m, init=[]))

    @property
    def row_mem(self):
        """The row-offset memory of ``gather``/``scatter``: ``max_m`` abuf word offsets."""
        return self._part("row_mem", lambda: Memory(
            shape=unsigned(self._config.addr_bits), depth=self._config.max_m, init=[]))

    @property
    def w_queue(self):
        """The weight queue (``w_queue_tiles`` tiles of ``cols / load_words`` transfers)."""
        a = self._config.array
        return self._part("w_queue", lambda: Queue(
            w_stream_layout(self._config), self._config.w_queue_tiles * a.cols // a.load_words,
            buffered=False))

    @property
    def gelu_latency(self):
        """Latency of the GELU stage (0 without GELU): :attr:`hdl.nonlin.gelu.Gelu.latency`."""
        if not self._config.gelu:
            return 0
        from ..nonlin.gelu import Gelu
        try:
            # Gelu.latency depends only on class constants: evaluate it without building a
            # unit (elaborate() checks the instance agrees).
            return int(Gelu.latency.fget(Gelu))
        except (AttributeError, TypeError):
            return self.gelu.latency

    @property
    def epilogue_latency(self):
        """Cycles from the epilogue input to the output write: requantise, GELU (if present),
        row scale, accumulate."""
        return self.EPI_CYCLES + self.gelu_latency

    @property
    def latency(self):
        """Cycles from issuing an X row to its output write: buffer read and operand select,
        the array, accumulation, the epilogue."""
        return (self.READ_CYCLES + SystolicArray.latency_of(self._config.array)
                + self.ACC_CYCLES + self.epilogue_latency)

    @property
    def fill_drain_cycles(self):
        """The constant part of :meth:`cycles`: accept and decode, then the pipeline drain
        after the last X row is issued, then ``done``."""
        return self.PRE_CYCLES + self.latency - 1 + self.DONE_CYCLES

    @property
    def throughput(self):
        """MACs per cycle when the array is busy (``rows · cols``)."""
        return self._config.array.n_pes

    # -- the cycle formula ------------------------------------------------------------------

    def tiles(self, m, k, n, *, w_transposed=False, w_from_abuf=False):
        """``(KT, NT, Lw, P)``: K-tiles, N-tiles, load words per weight tile, cycles per pass.

        ``Lw`` is ``rows`` for a row load (``w_transposed``), ``cols`` for a column load from
        the activation buffer, ``cols / load_words`` for a column load from the ``w`` stream.
        """
        a = self._config.array
        self._config.check_shape(m, k, n)
        kt, nt = -(-k // a.rows), -(-n // a.cols)
        if w_transposed:
            lw = a.rows
        elif w_from_abuf:
            lw = a.cols
        else:
            lw = a.cols // a.load_words
        return kt, nt, lw, max(m, lw)

    def cycles(self, m, k, n, *, w_transposed=False, w_from_abuf=False, bias=False,
               row_scale=False):
        """Cycles from the ``cmd`` transfer to ``done.valid`` with every stream ready.

        ``PRE + max(Lw, NT·bias, M·row_scale) + (J − 1)·max(M, Lw) + M − 1 + latency + 1``; see
        the module docstring (the row offsets of ``gather``/``scatter`` add nothing). Raises
        ``ValueError`` for shapes the unit refuses.
        """
        kt, nt, lw, p = self.tiles(m, k, n, w_transposed=w_transposed, w_from_abuf=w_from_abuf)
        pre = max(lw, nt if bias else 0, m if row_scale else 0)
        return self.PRE_CYCLES + pre + (kt * nt - 1) * p + m - 1 + self.latency + self.DONE_CYCLES

    def ideal_cycles(self, m, k, n):
        """``M·K·N / (rows·cols)``: cycles if every PE did a useful MAC every cycle."""
        return m * k * n / self._config.array.n_pes

    def loss_breakdown(self, m, k, n, *, w_transposed=False, w_from_abuf=False, bias=False,
                       row_scale=False):
        """Where :meth:`cycles` goes, in cycles of the whole array.

        Returns a dict: ``ideal`` (useful MACs / PEs), ``tile_edges`` (PEs idle because K or N
        is not a multiple of the array), ``weight_load`` (passes waiting for their ``Lw``
        weight words when ``M < Lw``), ``preload`` (the first tile, biases and scales before
        the first pass), ``fill_drain`` (decode, pipeline latency and ``done``). They sum to
        :meth:`cycles`.
        """
        kt, nt, lw, p = self.tiles(m, k, n, w_transposed=w_transposed, w_from_abuf=w_from_abuf)
        j = kt * nt
        ideal = self.ideal_cycles(m, k, n)
        pre = max(lw, nt if bias else 0, m if row_scale else 0)
        return {
            "ideal": ideal,
            "tile_edges": j * m - ideal,
            "weight_load": (j - 1) * (p - m),
            "preload": pre,
            "fill_drain": self.fill_drain_cycles,
        }

    # -- the command builder ------------------------------------------------------------------

    def words_per_row(self, cols):
        """abuf words one matrix row of ``cols`` elements takes."""
        return -(-cols // self._config.array.buffer_lanes)

    def command(self, m, k, n, *, x_fmt, w_fmt, out_fmt, x_base, y_base, x_stride=None,
                y_stride=None, w_from_abuf=False, w_base=0, w_stride=None, w_transposed=False,
                gather=False, scatter=False, bias=False, gelu=False, row_scale=False,
                accumulate=False):
        """Build a ``cmd`` payload (a dict for ``ctx.set``), refusing what the unit cannot do.

        Shapes, formats and abuf regions are checked here with ``ValueError``/``TypeError``; the
        hardware checks sizes and formats again and answers a bad command with an error status.
        Strides default to the rows' word counts (X: ``K`` elements, W: ``K`` or, transposed,
        ``N``; output: ``N``). With ``gather`` (``scatter``) the X (output) rows lie at the
        offsets of the ``r`` stream: only the first row at ``x_base`` (``y_base``) is checked
        here, the offsets are the caller's to keep inside the buffer.
        """
        cfg = self._config
        acfg = cfg.array
        nx = cfg.numerics
        cfg.check_shape(m, k, n)
        for name, fmt in (("x_fmt", x_fmt), ("w_fmt", w_fmt), ("out_fmt", out_fmt)):
            if not isinstance(fmt, QFormat):
                raise TypeError(f"{name} must be a QFormat, not {fmt!r}")
            if not fmt.signed:
                raise ValueError(f"{name} {fmt} must be signed")
        if x_fmt.width > acfg.a_bits:
            raise ValueError(f"x_fmt {x_fmt} is wider than the array's X operand "
                             f"({acfg.a_bits} bits)")
        if w_fmt.width > acfg.w_bits:
            raise ValueError(f"w_fmt {w_fmt} is wider than the array's W operand "
                             f"({acfg.w_bits} bits)")
        if out_fmt.width > acfg.elem_bits:
            raise ValueError(f"out_fmt {out_fmt} is wider than an abuf element "
                             f"({acfg.elem_bits} bits)")
        acc_frac = x_fmt.f_bits + w_fmt.f_bits
        q_shift = acc_frac - out_fmt.f_bits
        if not 0 <= q_shift < acfg.acc_bits:
            raise ValueError(f"requantisation shift x.f + w.f − out.f = {q_shift} is outside "
                             f"0..{acfg.acc_bits - 1}")
        b_shift = acc_frac - nx.bias.f_bits
        if bias and not (0 <= b_shift and nx.bias.width + b_shift <= acfg.acc_bits):
            raise ValueError(f"bias alignment shift x.f + w.f − bias.f = {b_shift} is outside "
                             f"0..{acfg.acc_bits - nx.bias.width}")
        if gelu:
            if not cfg.gelu:
                raise ValueError("this compute unit has no GELU (ComputeConfig(gelu=False))")
            if out_fmt != nx.hidden:
                raise ValueError(f"GELU works in the hidden format {nx.hidden}, not {out_fmt}")
        if w_transposed and not w_from_abuf:
            raise ValueError("w_transposed needs W in the activation buffer (w_from_abuf)")
        if w_from_abuf and accumulate:
            raise ValueError("W from the activation buffer and accumulate share a buffer read "
                             "port; accumulate into the output of an attention product is not "
                             "supported")
        x_stride = self.words_per_row(k) if x_stride is None else x_stride
        y_stride = self.words_per_row(n) if y_stride is None else y_stride
        if w_stride is None:
            w_stride = self.words_per_row(n if w_transposed else k)
        regions = [("X", x_base, x_stride, 1 if gather else m, k),
                   ("output", y_base, y_stride, 1 if scatter else m, n)]
        if w_from_abuf:
            regions.append(("W", w_base, w_stride, k if w_transposed else n,
                            n if w_transposed else k))
        for name, base, stride, rows, cols in regions:
            check_int(f"{name} base", base, 0)
            check_int(f"{name} stride", stride, 0)
            if stride < self.words_per_row(cols) and rows > 1:
                raise ValueError(f"{name} stride {stride} is shorter than a row "
                                 f"({self.words_per_row(cols)} words)")
            last = base + (rows - 1) * stride + self.words_per_row(cols) - 1
            if last >= cfg.abuf_depth:
                raise ValueError(f"{name} region ends at word {last}, beyond abuf_depth "
                                 f"{cfg.abuf_depth}")
        return {
            "m": m, "k": k, "n": n,
            "x_base": x_base, "x_stride": x_stride,
            "w_base": w_base, "w_stride": w_stride,
            "y_base": y_base, "y_stride": y_stride,
            "w_from_abuf": int(bool(w_from_abuf)), "w_transposed": int(bool(w_transposed)),
            "gather": int(bool(gather)), "scatter": int(bool(scatter)),
            "bias": int(bool(bias)), "gelu": int(bool(gelu)),
            "row_scale": int(bool(row_scale)), "accumulate": int(bool(accumulate)),
            "q_shift": q_shift, "b_shift": max(b_shift, 0), "out_bits": out_fmt.width,
        }

    # -- hardware -----------------------------------------------------------------------------

    def _bank_shift(self):
        """An abuf address shifted right by this is its bank (0 with a single bank)."""
        cfg = self._config
        if len(self.abuf_banks) == 1:
            return cfg.addr_bits
        return max(cfg.abuf_bank_depth - 1, 1).bit_length()

    def _elaborate_abuf(self, m, wr, ext_wr, x_rd, wy_rd):
        """The banked activation buffer.

        Each bank has one write port (lane enables): the unit's write ``wr`` when it selects
        the bank, else the external write ``ext_wr`` when that selects it, so the two proceed
        in the same cycle in different banks. Each bank has two synchronous read ports at the
        address's low bits; the bank index of each read is registered with it and selects the
        bank's data in the next cycle. The second read port is transparent for writes (an
        accumulation reads the row written just before).
        """
        banks = self.abuf_banks
        lo = self._bank_shift()
        bm = Module()
        m.submodules.abuf = bm
        x_sel = Signal(range(len(banks)))
        wy_sel = Signal(range(len(banks)))
        if len(banks) > 1:
            bm.d.sync += [x_sel.eq(x_rd.addr >> lo), wy_sel.eq(wy_rd.addr >> lo)]
        x_data, wy_data = [], []
        for b, mem in enumerate(banks):
            bm.submodules[f"bank{b}"] = mem
            wp = mem.write_port(granularity=1)
            xp = mem.read_port()
            yp = mem.read_port(transparent_for=(wp,))
            hit = (wr.addr >> lo) == b if len(banks) > 1 else 1
            ext_hit = (ext_wr.addr >> lo) == b if len(banks) > 1 else 1
            own = hit & wr.en.any()
            bm.d.comb += [
                wp.addr.eq(Mux(own, wr.addr[:lo], ext_wr.addr[:lo])),
                wp.data.eq(Mux(own, wr.data.as_value(), ext_wr.data.as_value())),
                wp.en.eq(Mux(own, wr.en, Mux(ext_hit, ext_wr.en, 0))),
                xp.addr.eq(x_rd.addr[:lo]),
                yp.addr.eq(wy_rd.addr[:lo]),
            ]
            x_data.append(xp.data)
            wy_data.append(yp.data)
        x_out, wy_out = x_data[0].as_value(), wy_data[0].as_value()
        for b in range(1, len(banks)):
            x_out = Mux(x_sel == b, x_data[b].as_value(), x_out)
            wy_out = Mux(wy_sel == b, wy_data[b].as_value(), wy_out)
        bm.d.comb += [x_rd.data.eq(x_out), wy_rd.data.eq(wy_out)]

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        acfg = cfg.array
        nx = cfg.numerics
        R, C, L = acfg.rows, acfg.cols, acfg.buffer_lanes
        GK, GN = L // R, L // C              # aligned groups per abuf word
        acc_w = acfg.acc_bits
        elem = acfg.elem_bits
        tag_layout = self._tag_layout()

        m.submodules.array = array = self.array
        # The activation buffer: one write port (output rows, or ext in the other cycles) and
        # two read ports (X rows, or ext while idle; W words or old output rows, or ext in the
        # cycles a command leaves it free), over its banks.
        y_wr = _PortSignals(addr=cfg.addr_bits, data=self._word, en=L)
        ext_wr = _PortSignals(addr=cfg.addr_bits, data=self._word, en=L)
        x_rd = _PortSignals(addr=cfg.addr_bits, data=self._word)
        wy_rd = _PortSignals(addr=cfg.addr_bits, data=self._word)
        self._elaborate_abuf(m, y_wr, ext_wr, x_rd, wy_rd)
        w_rd = old_rd = wy_rd
        m.submodules.acc_mem = acc_mem = self.acc_mem
        m.submodules.bias_mem = bias_mem = self.bias_mem
        m.submodules.scale_mem = scale_mem = self.scale_mem
        m.submodules.row_mem = row_mem = self.row_mem
        m.submodules.w_queue = wq = self.w_queue
        wiring.connect(m, wiring.flipped(self.w), wq.i)

        acc_wr = acc_mem.write_port()
        acc_rd = acc_mem.read_port(transparent_for=(acc_wr,))
        bias_wr = bias_mem.write_port()
        bias_rd = bias_mem.read_port()
        scale_wr = scale_mem.write_port()
        scale_rd = scale_mem.read_port()
        row_wr = row_mem.write_port()
        row_rd = row_mem.read_port(transparent_for=(row_wr,))

        # -- command register and decode ------------------------------------------------------
        c = Signal(command_layout(cfg))
        err = Signal(Error)
        tile_words = Signal(range(max(R, C) + 1))
        sat_hi = Signal(signed(elem + 1))
        sat_lo = Signal(signed(elem + 1))
        q_mask = Signal(unsigned(acc_w))
        w_stride_r = Signal(unsigned(cfg.addr_bits + R.bit_length()))
        w_stride_c = Signal(unsigned(cfg.addr_bits + C.bit_length()))
        running = Signal()
        done_valid = Signal()
        finished = Signal()       # the last output row is being written this cycle

        m.d.comb += [
            self.done.valid.eq(done_valid),
            self.done.payload.error.eq(err),
        ]
        no_gelu = c.gelu if not cfg.gelu else Const(0)
        bad_source = (c.w_transposed & ~c.w_from_abuf) | (c.w_from_abuf & c.accumulate)
        with m.FSM(name="seq") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += c.eq(self.cmd.payload)
                    m.next = "DECODE"
            with m.State("DECODE"):
                shape_err = Signal()
                zero = (c.m == 0) | (c.k == 0) | (c.n == 0)
                large = (c.m > cfg.max_m) | (c.k > cfg.max_k) | (c.n > cfg.max_n)
                fmt_bad = ((c.out_bits < 2) | (c.out_bits > elem)
                           | (c.q_shift > acc_w - 1)
                           | (c.bias & (c.b_shift > acc_w - nx.bias.width))
                           | (c.gelu & (c.out_bits != nx.hidden.width)))
                with m.If(zero):
                    m.d.sync += err.eq(Error.ZERO_SIZE)
                with m.Elif(large):
                    m.d.sync += err.eq(Error.TOO_LARGE)
                with m.Elif(fmt_bad):
                    m.d.sync += err.eq(Error.BAD_FORMAT)
                with m.Elif(no_gelu):
                    m.d.sync += err.eq(Error.NO_GELU)
                with m.Elif(bad_source):
                    m.d.sync += err.eq(Error.BAD_SOURCE)
                with m.Else():
                    m.d.sync += err.eq(Error.OK)
                m.d.comb += shape_err.eq(zero | large | fmt_bad
                                         | no_gelu
                                         | bad_source)
                one = Const(1, signed(elem + 1))
                # (The shift amounts must be unsigned; 0 − 1 only occurs for refused commands.)
                out_bits_m1 = (c.out_bits - 1).as_unsigned()[:len(c.out_bits)]
                q_shift_m1 = (c.q_shift - 1).as_unsigned()[:len(c.q_shift)]
                m.d.sync += [
                    tile_words.eq(Mux(c.w_transposed, R,
                                      Mux(c.w_from_abuf, C, C // acfg.load_words))),
                    sat_hi.eq((one << out_bits_m1) - 1),
                    sat_lo.eq(-(one << out_bits_m1)),
                    q_mask.eq(Mux(c.q_shift == 0, 0,
                                  (Const(1, unsigned(acc_w + 1)) << q_shift_m1) - 1)),
                    w_stride_r.eq(_mul_const(c.w_stride, R)),
                    w_stride_c.eq(_mul_const(c.w_stride, C)),
                ]
                with m.If(shape_err):
                    m.d.sync += done_valid.eq(1)
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += running.eq(1)
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(finished):
                    m.d.sync += [running.eq(0), done_valid.eq(1)]
                    m.next = "DONE"
            with m.State("DONE"):
                with m.If(self.done.ready):
                    m.d.sync += done_valid.eq(0)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        start = Signal()          # a command is accepted: initialise the sequencer
        m.d.comb += start.eq(self.cmd.valid & self.cmd.ready)   # (re)initialise on accept

        # Tile positions: K offset with its (word, group) in abuf, and the same for N.
        # With one group per word (GK or GN = 1) the group is the constant 0, not a zero-width
        # signal (which would become a `[-1:0]` port in the Verilog).
        def tile_pos(prefix):
            return {
                "k0": Signal(range(cfg.max_k + R), name=f"{prefix}_k0"),
                "kword": Signal(unsigned(cfg.addr_bits), name=f"{prefix}_kword"),
                "kgroup": (Signal(range(GK), name=f"{prefix}_kgroup") if GK > 1
                           else Const(0, 1)),
                "n0": Signal(range(cfg.max_n + C), name=f"{prefix}_n0"),
                "nword": Signal(unsigned(cfg.addr_bits), name=f"{prefix}_nword"),
                "ngroup": (Signal(range(GN), name=f"{prefix}_ngroup") if GN > 1
                           else Const(0, 1)),
            }

        def reset_pos(p):
            stmts = [p["k0"].eq(0), p["kword"].eq(0), p["n0"].eq(0), p["nword"].eq(0)]
            stmts += [p[g].eq(0) for g, n in (("kgroup", GK), ("ngroup", GN)) if n > 1]
            return stmts

        def next_k(p):
            stmts = [p["k0"].eq(p["k0"] + R)]
            if GK == 1:
                stmts.append(p["kword"].eq(p["kword"] + 1))
            else:
                stmts += [p["kgroup"].eq(Mux(p["kgroup"] == GK - 1, 0, p["kgroup"] + 1)),
                          p["kword"].eq(p["kword"] + (p["kgroup"] == GK - 1))]
            return stmts

        def next_n(p):
            stmts = [p["n0"].eq(p["n0"] + C), p["k0"].eq(0), p["kword"].eq(0)]
            if GK > 1:
                stmts.append(p["kgroup"].eq(0))
            if GN == 1:
                stmts.append(p["nword"].eq(p["nword"] + 1))
            else:
                stmts += [p["ngroup"].eq(Mux(p["ngroup"] == GN - 1, 0, p["ngroup"] + 1)),
                          p["nword"].eq(p["nword"] + (p["ngroup"] == GN - 1))]
            return stmts

        def k_word_after(p):
            """abuf word offset of the next K-tile."""
            if GK == 1:
                return p["kword"] + 1
            return p["kword"] + (p["kgroup"] == GK - 1)

        def n_word_after(p):
            if GN == 1:
                return p["nword"] + 1
            return p["nword"] + (p["ngroup"] == GN - 1)

        def group_select(port_data, group, n_groups, width, lane):
            val = port_data[lane]
            for g in range(1, n_groups):
                val = Mux(group == g, port_data[g * width + lane], val)
            return val

        J_MAX = cfg.max_kt * cfg.max_nt

        # -- side loaders: biases, row scales and row offsets ---------------------------------
        b_idx = Signal(range(cfg.max_nt + 1))
        b_n0 = Signal(range(cfg.max_n + C))
        b_done = Signal()
        s_idx = Signal(range(cfg.max_m + 1))
        s_done = Signal()
        r_idx = Signal(range(cfg.max_m + 1))
        r_done = Signal()
        row_map = c.gather | c.scatter
        side_ready = Signal()
        m.d.comb += [
            self.b.ready.eq(running & c.bias & ~b_done),
            self.s.ready.eq(running & c.row_scale & ~s_done),
            self.r.ready.eq(running & row_map & ~r_done),
            side_ready.eq((~c.bias | b_done) & (~c.row_scale | s_done)),
            row_wr.addr.eq(r_idx),
            row_wr.data.eq(self.r.payload),
            row_wr.en.eq(self.r.valid & self.r.ready),
            bias_wr.addr.eq(b_idx),
            bias_wr.en.eq(self.b.valid & self.b.ready),
            scale_wr.addr.eq(s_idx),
            scale_wr.data.eq(self.s.payload),
            scale_wr.en.eq(self.s.valid & self.s.ready),
        ]
        for j in range(C):
            m.d.comb += bias_wr.data[j].eq(self.b.payload[j] << c.b_shift)
        with m.If(start):
            m.d.sync += [b_idx.eq(0), b_n0.eq(0), b_done.eq(0), s_idx.eq(0), s_done.eq(0),
                         r_idx.eq(0), r_done.eq(0)]
        with m.If(self.b.valid & self.b.ready):
            m.d.sync += [b_idx.eq(b_idx + 1), b_n0.eq(b_n0 + C)]
            with m.If(b_n0 + C >= c.n):
                m.d.sync += b_done.eq(1)
        with m.If(self.s.valid & self.s.ready):
            m.d.sync += s_idx.eq(s_idx + 1)
            with m.If(s_idx == c.m - 1):
                m.d.sync += s_done.eq(1)
        with m.If(self.r.valid & self.r.ready):
            m.d.sync += r_idx.eq(r_idx + 1)
            with m.If(r_idx == c.m - 1):
                m.d.sync += r_done.eq(1)

        # -- the compute side: X rows ----------------------------------------------------------
        cp = tile_pos("c")
        c_pass = Signal(range(J_MAX + 1))
        c_m = Signal(range(cfg.max_m))
        c_nt = Signal(range(cfg.max_nt))
        c_done = Signal()
        x_addr = Signal(unsigned(cfg.addr_bits))
        y_addr = Signal(unsigned(cfg.addr_bits))
        x_row0 = Signal(unsigned(cfg.addr_bits))    # row 0 of the tile's X and output words
        y_row0 = Signal(unsigned(cfg.addr_bits))
        l_pass = Signal(range(J_MAX + 1))
        c_issue = Signal()
        c_last_k = Signal()
        c_last_n = Signal()
        c_last_row = Signal()
        row_ok = Signal()         # the row's offset is in (row maps: the first pass may wait)
        m.d.comb += [
            row_ok.eq(~row_map | r_done | (r_idx > c_m)),
            c_last_k.eq(cp["k0"] + R >= c.k),
            c_last_n.eq(cp["n0"] + C >= c.n),
            c_last_row.eq(c_m == c.m - 1),
            c_issue.eq(running & ~c_done & row_ok
                       & ((c_m != 0) | ((l_pass > c_pass) & side_ready))),
        ]
        with m.If(start):
            m.d.sync += reset_pos(cp) + [c_pass.eq(0), c_m.eq(0), c_nt.eq(0), c_done.eq(0),
                                        x_addr.eq(self.cmd.payload.x_base),
                                        y_addr.eq(self.cmd.payload.y_base),
                                        x_row0.eq(self.cmd.payload.x_base),
                                        y_row0.eq(self.cmd.payload.y_base)]
        with m.Elif(c_issue):
            m.d.sync += [x_addr.eq(x_addr + c.x_stride), y_addr.eq(y_addr + c.y_stride),
                         c_m.eq(c_m + 1)]
            with m.If(c_last_row):
                m.d.sync += [c_m.eq(0), c_pass.eq(c_pass + 1)]
                with m.If(~c_last_k):
                    m.d.sync += next_k(cp) + [
                        x_addr.eq(c.x_base + k_word_after(cp)),
                        y_addr.eq(c.y_base + cp["nword"]),
                        x_row0.eq(c.x_base + k_word_after(cp)),
                    ]
                with m.Elif(~c_last_n):
                    m.d.sync += next_n(cp) + [
                        c_nt.eq(c_nt + 1),
                        x_addr.eq(c.x_base),
                        y_addr.eq(c.y_base + n_word_after(cp)),
                        x_row0.eq(c.x_base),
                        y_row0.eq(c.y_base + n_word_after(cp)),
                    ]
                with m.Else():
                    m.d.sync += c_done.eq(1)
        c_started = Signal(range(J_MAX + 2))
        m.d.comb += c_started.eq(c_pass + ((c_m != 0) | c_issue))
        # Row maps: the offset of the row being issued is read a cycle ahead (the address of
        # the row after the issue), so it is on row_rd.data when the row issues.
        m.d.comb += row_rd.addr.eq(Mux(c_issue, Mux(c_last_row, 0, c_m + 1), c_m))
        x_issue_addr = Mux(c.gather, x_row0 + row_rd.data, x_addr)
        y_issue_addr = Mux(c.scatter, y_row0 + row_rd.data, y_addr)

        # X pipeline: issue (abuf address) → x1 (word read) → x2 (group, mask) → array.x.
        # Each stage is its own module (pysim evaluates a module's combinational logic as one
        # process) and its data registers load only with a valid row (a clock enable).
        xm = Module()
        m.submodules.x_pipe = xm
        x1_valid = Signal()
        x1 = Signal(data.StructLayout({"kgroup": range(GK), "kvalid": range(R + 1),
                                       "first": 1, "tag": tag_layout}), reset_less=True)
        kvalid = Mux(c.k - cp["k0"] >= R, R, c.k - cp["k0"])
        nvalid = Mux(c.n - cp["n0"] >= C, C, c.n - cp["n0"])
        xm.d.sync += x1_valid.eq(c_issue)
        with xm.If(c_issue):
            xm.d.sync += [
                x1.kgroup.eq(cp["kgroup"]),
                x1.kvalid.eq(kvalid),
                x1.first.eq(c_m == 0),
                x1.tag.m.eq(c_m),
                x1.tag.nt.eq(c_nt),
                x1.tag.y_addr.eq(y_issue_addr),
                x1.tag.ngroup.eq(cp["ngroup"]),
                x1.tag.nvalid.eq(nvalid),
                x1.tag.first_k.eq(cp["k0"] == 0),
                x1.tag.last_k.eq(c_last_k),
                x1.tag.end.eq(c_last_row & c_last_k & c_last_n),
            ]
        xm.d.sync += array.x.valid.eq(x1_valid)
        x2 = array.x.payload
        with xm.If(x1_valid):
            xm.d.sync += [x2.first.eq(x1.first), x2.tag.eq(x1.tag)]
            for r in range(R):
                val = group_select(x_rd.data, x1.kgroup, GK, R, r)
                # Lanes beyond K hold other data (the next matrix, padding): force them to zero
                # so that whatever the weights there are, they add nothing.
                xm.d.sync += x2.data[r].eq(Mux(r < x1.kvalid, val, 0))

        # -- the loader side: W words ----------------------------------------------------------
        lp = tile_pos("l")
        l_word = Signal(range(max(R, C)))
        l_done = Signal()
        l_addr = Signal(unsigned(cfg.addr_bits))
        l_base = Signal(unsigned(cfg.addr_bits))     # W row 0 of the tile's n0 (or k0) range
        l_issue = Signal()
        l_last_k = Signal()
        l_last_n = Signal()
        l_last_word = Signal()
        m.d.comb += [
            l_last_k.eq(lp["k0"] + R >= c.k),
            l_last_n.eq(lp["n0"] + C >= c.n),
            l_last_word.eq(l_word == tile_words - 1),
            l_issue.eq(running & ~l_done & (l_pass <= c_started)
                       & (c.w_from_abuf | wq.o.valid)),
            wq.o.ready.eq(l_issue & ~c.w_from_abuf),
        ]
        with m.If(start):
            m.d.sync += reset_pos(lp) + [l_pass.eq(0), l_word.eq(0), l_done.eq(0),
                                        l_addr.eq(self.cmd.payload.w_base),
                                        l_base.eq(self.cmd.payload.w_base)]
        with m.Elif(l_issue):
            m.d.sync += [l_word.eq(l_word + 1), l_addr.eq(l_addr + c.w_stride)]
            with m.If(l_last_word):
                m.d.sync += [l_word.eq(0), l_pass.eq(l_pass + 1)]
                with m.If(~l_last_k):
                    m.d.sync += next_k(lp)
                    # Column load (W stored (N, K)): same W rows, next word of each row.
                    # Row load (W stored (K, N)): the next rows·stride words, same column word.
                    with m.If(c.w_transposed):
                        m.d.sync += [l_base.eq(l_base + w_stride_r),
                                     l_addr.eq(l_base + w_stride_r + lp["nword"])]
                    with m.Else():
                        m.d.sync += l_addr.eq(l_base + k_word_after(lp))
                with m.Elif(~l_last_n):
                    m.d.sync += next_n(lp)
                    with m.If(c.w_transposed):
                        m.d.sync += [l_base.eq(c.w_base),
                                     l_addr.eq(c.w_base + n_word_after(lp))]
                    with m.Else():
                        m.d.sync += [l_base.eq(l_base + w_stride_c),
                                     l_addr.eq(l_base + w_stride_c)]
                with m.Else():
                    m.d.sync += l_done.eq(1)

        # W pipeline: issue → w1 (abuf word or queue word) → w2 (group select) → array.w
        wm = Module()
        m.submodules.w_pipe = wm
        w1_valid = Signal()
        w1 = Signal(data.StructLayout({
            "abuf": 1, "row": 1, "kgroup": range(GK), "ngroup": range(GN),
            "q": data.ArrayLayout(signed(acfg.w_bits), R * acfg.load_words)}), reset_less=True)
        wm.d.sync += w1_valid.eq(l_issue)
        with wm.If(l_issue):
            wm.d.sync += [
                w1.abuf.eq(c.w_from_abuf),
                w1.row.eq(c.w_transposed),
                w1.kgroup.eq(lp["kgroup"]),
                w1.ngroup.eq(lp["ngroup"]),
                w1.q.eq(wq.o.payload),
            ]
        wm.d.sync += array.w.valid.eq(w1_valid)
        w2 = array.w.payload
        with wm.If(w1_valid):
            wm.d.sync += w2.row.eq(w1.row)
            for i in range(acfg.w_lanes):
                col_val = group_select(w_rd.data, w1.kgroup, GK, R, i) if i < R else 0
                row_val = group_select(w_rd.data, w1.ngroup, GN, C, i) if i < C else 0
                q_val = w1.q[i] if i < R else 0
                wm.d.sync += w2.data[i].eq(Mux(w1.abuf, Mux(w1.row, row_val, col_val), q_val))
            if acfg.load_words == 2:
                # Stream words come in pairs (the second word's lanes from w_lanes on), abuf
                # words one at a time.
                wm.d.sync += w2.pair.eq(~w1.abuf)
                for i in range(R):
                    wm.d.sync += w2.data[acfg.w_lanes + i].eq(w1.q[R + i])

        # -- accumulation over K tiles ------------------------------------------------------
        am = Module()
        m.submodules.accumulate = am
        o = array.o
        am.d.comb += [
            acc_rd.addr.eq(o.payload.tag.m),
            bias_rd.addr.eq(o.payload.tag.nt),
            scale_rd.addr.eq(o.payload.tag.m),
        ]
        a1_valid = Signal()
        a1 = Signal(o.payload.shape(), reset_less=True)
        am.d.sync += a1_valid.eq(o.valid)
        with am.If(o.valid):
            am.d.sync += a1.eq(o.payload)
        am.d.comb += [
            acc_wr.addr.eq(a1.tag.m),
            acc_wr.en.eq(a1_valid & ~a1.tag.last_k),
        ]
        for j in range(C):
            base = Mux(a1.tag.first_k, Mux(c.bias, bias_rd.data[j], 0), acc_rd.data[j])
            # Exact: |Σ| < 2**(acc−1) (golden.numerics sizes acc_bits for 2**16 products).
            am.d.comb += acc_wr.data[j].eq(a1.data[j] + base)
        e0_valid = Signal()
        e0 = Signal(data.StructLayout({
            "v": data.ArrayLayout(signed(acc_w), C), "tag": tag_layout,
            "scale": signed(nx.prob.width)}), reset_less=True)
        am.d.sync += e0_valid.eq(a1_valid & a1.tag.last_k)
        with am.If(a1_valid & a1.tag.last_k):
            am.d.sync += [e0.v.eq(acc_wr.data), e0.tag.eq(a1.tag), e0.scale.eq(scale_rd.data)]

        # -- epilogue --------------------------------------------------------------------------
        # Every stage register loads only with a valid row (clock enable). Cycle by cycle:
        #   q1  guard/sticky right shift by the runtime q_shift
        #   q2  round half to even, saturate to the output format
        #   G   GELU (latency of the GELU unit) or a delay line of the same length
        #   s1  y · s (shift-and-add multiplier)
        #   s2  round half to even by prob.f, saturate; or y when there is no row scale
        #   f   + old output, saturate; or y; the abuf write
        em = Module()
        m.submodules.epilogue = em
        # Q1: r = (v << 1) >> q keeps the half bit as r[0] (round half to even, like
        # golden.fixed.round_shift); the sticky bit ORs the bits below it.
        q1_valid = Signal()
        q1 = Signal(data.StructLayout({
            "r": data.ArrayLayout(signed(acc_w + 1), C), "sticky": C, "tag": tag_layout,
            "scale": signed(nx.prob.width)}), reset_less=True)
        em.d.sync += q1_valid.eq(e0_valid)
        with em.If(e0_valid):
            em.d.sync += [q1.tag.eq(e0.tag), q1.scale.eq(e0.scale)]
            for j in range(C):
                v = e0.v[j]
                em.d.sync += [
                    q1.r[j].eq((v << 1) >> c.q_shift),
                    q1.sticky[j].eq((v.as_unsigned() & q_mask) != 0),
                ]
        # Q2: add the rounding increment, saturate to the output format.
        q2_valid = Signal()
        q2 = Signal(data.StructLayout({
            "y": data.ArrayLayout(signed(elem), C), "tag": tag_layout,
            "scale": signed(nx.prob.width)}), reset_less=True)
        em.d.sync += q2_valid.eq(q1_valid)
        with em.If(q1_valid):
            em.d.sync += [q2.tag.eq(q1.tag), q2.scale.eq(q1.scale)]
            for j in range(C):
                r = q1.r[j]
                q = r >> 1
                up = r[0] & (q1.sticky[j] | q[0])
                em.d.sync += q2.y[j].eq(_clamp(q + up, sat_lo, sat_hi))

        # G: GELU, or a delay line of the same length (the pipeline latency is fixed).
        g_layout = q2.shape()
        if cfg.gelu:
            m.submodules.gelu = gelu = self.gelu
            if gelu.latency != self.gelu_latency:
                raise ValueError(f"the GELU unit's latency ({gelu.latency}) differs from the "
                                 f"one the cycle formula assumes ({self.gelu_latency})")
            hw = nx.hidden.width
            em.d.comb += [gelu.i.valid.eq(q2_valid), gelu.o.ready.eq(1)]
            for j in range(C):
                em.d.comb += gelu.i.payload[j].eq(q2.y[j][:hw].as_signed())
            g_valid, g = q2_valid, q2
            for k in range(gelu.latency):
                nv = Signal(name=f"gbyp_valid_q{k + 1}")
                ng = Signal(g_layout, name=f"gbyp_q{k + 1}", reset_less=True)
                em.d.sync += nv.eq(g_valid)
                with em.If(g_valid):
                    em.d.sync += ng.eq(g)
                g_valid, g = nv, ng
            g_y = [Mux(c.gelu, gelu.o.payload[j], g.y[j]) for j in range(C)]
        else:
            g_valid, g = q2_valid, q2
            g_y = [g.y[j] for j in range(C)]

        # S1: y · s (LUT multiplier). S2: round half to even by prob.f, saturate; or bypass.
        s1_valid = Signal()
        s1 = Signal(data.StructLayout({
            "y": data.ArrayLayout(signed(elem), C),
            "p": data.ArrayLayout(signed(elem + nx.prob.width), C),
            "tag": tag_layout}), reset_less=True)
        em.d.sync += s1_valid.eq(g_valid)
        with em.If(g_valid):
            em.d.sync += s1.tag.eq(g.tag)
            for j in range(C):
                em.d.sync += s1.y[j].eq(g_y[j])
            with em.If(c.row_scale):
                for j in range(C):
                    em.d.sync += s1.p[j].eq(_soft_mul(g_y[j], g.scale))
        s2_valid = Signal()
        s2 = Signal(data.StructLayout({"y": data.ArrayLayout(signed(elem), C),
                                       "tag": tag_layout}), reset_less=True)
        em.d.sync += s2_valid.eq(s1_valid)
        pf = nx.prob.f_bits
        with em.If(s1_valid):
            em.d.sync += s2.tag.eq(s1.tag)
            for j in range(C):
                p = s1.p[j]
                if pf > 0:
                    q = p >> pf
                    rem = p.as_unsigned()[:pf]
                    half = 1 << (pf - 1)
                    scaled = q + ((rem > half) | ((rem == half) & q[0]))
                else:
                    scaled = p
                em.d.sync += s2.y[j].eq(Mux(c.row_scale, _clamp(scaled, sat_lo, sat_hi),
                                            s1.y[j]))
        # The old output of this row, for accumulation: read while the row is in S2.
        # The second read port is the unit's in a cycle that issues a W word (the word is taken
        # from it in the next cycle, w1) or that has a row to accumulate in S1; the external
        # port reads on it in the other cycles of a command (on the X port while idle).
        wy_used = Signal()
        ext_r_on_wy = Signal()
        em.d.comb += [
            wy_used.eq(running & Mux(c.w_from_abuf, l_issue, s1_valid & c.accumulate)),
            wy_rd.addr.eq(Mux(wy_used, Mux(c.w_from_abuf, l_addr, s1.tag.y_addr),
                              self.ext.r_addr)),
        ]
        em.d.sync += ext_r_on_wy.eq(running)

        # F: accumulate into the old output, saturate; the row as an abuf write (lanes of its
        # N-group that lie below N).
        f_valid = Signal()
        f = Signal(data.StructLayout({"data": self._word, "en": L, "addr": cfg.addr_bits,
                                      "end": 1}), reset_less=True)
        em.d.sync += f_valid.eq(s2_valid)
        with em.If(s2_valid):
            em.d.sync += [f.addr.eq(s2.tag.y_addr), f.end.eq(s2.tag.end)]
            for j in range(C):
                old = group_select(old_rd.data, s2.tag.ngroup, GN, C, j)
                y = Mux(c.accumulate, _clamp(old + s2.y[j], sat_lo, sat_hi), s2.y[j])
                for g_idx in range(GN):
                    lane = g_idx * C + j
                    em.d.sync += [
                        f.data[lane].eq(y),
                        f.en[lane].eq((s2.tag.ngroup == g_idx) & (j < s2.tag.nvalid)),
                    ]
        em.d.comb += finished.eq(f_valid & f.end)

        # abuf writes: the output rows; the external port's in the other cycles, or in the
        # same cycle to another bank (never while a finished command's status waits).
        lo = self._bank_shift()
        same_bank = (f.addr >> lo) == (self.ext.w_addr >> lo)
        ext_w_ok = Mux(running, ~(f_valid & same_bank), ~self.busy)
        em.d.comb += [
            y_wr.addr.eq(f.addr),
            y_wr.data.eq(f.data),
            y_wr.en.eq(Mux(running & f_valid, f.en, 0)),
            ext_wr.addr.eq(self.ext.w_addr),
            ext_wr.data.eq(self.ext.w_data),
            ext_wr.en.eq(Mux(self.ext.w_en & ext_w_ok, (1 << L) - 1, 0)),
        ]
        m.d.comb += [
            x_rd.addr.eq(Mux(running, x_issue_addr, self.ext.r_addr)),
            self.ext.r_data.eq(Mux(ext_r_on_wy, wy_rd.data, x_rd.data)),
            self.ext.r_ok.eq(~wy_used),
            self.ext.w_ok.eq(ext_w_ok),
        ]
        return m
