# SPDX-License-Identifier: BSD-2-Clause
"""Streaming GELU: ``ReLU(x) − δ(|x|)`` with δ from a table and linear interpolation.

Bit-exact with :func:`golden.qref.gelu`. Every lane is an independent, always-valid pipeline;
back pressure is handled at the edge by a credit counter and an output queue (see :class:`Gelu`).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..stream_util import Queue
from ._arith import round_shift, saturate
from ._pipe import reg, valid_chain
from .config import GeluConfig

__all__ = ["Gelu", "GeluPipeline", "gelu_table_layout"]


def gelu_table_layout(config):
    """Layout of one δ-table word: the two entries that bound an interpolation segment."""
    return data.StructLayout({"lo": unsigned(config.entry_bits),
                              "hi": unsigned(config.entry_bits)})


class GeluPipeline(wiring.Component):
    """The GELU datapath: ``lanes`` always-valid pipelines, for embedding in another pipeline
    (the compute unit's epilogue). It neither provides nor respects back pressure.

    For each element (``F = fmt.f_bits``, ``s = gelu_step_bits``, ``r = F − s``,
    ``N = gelu_range·2**s``, ``T`` = :func:`golden.tables.gelu_delta_table`)::

        a = |x|;  i = a >> r;  f = a mod 2**r;  j = min(i, N − 1)
        δ = (T[j] << r) + f·(T[j+1] − T[j])      if i < N, else 0
        y = saturate(round_shift((max(x, 0) << (gelu_frac − s)) − δ, gelu_frac − s), fmt)

    Pipeline (one register per step; ``q<k>`` in the signal names)::

        cycle 0  x → x_q1
        cycle 1  a = |x|, relu = max(x, 0)                            → q2
        cycle 2  table address j (synchronous read)                   → q3 = {T[j], T[j+1]}
        cycle 3  δ = (T[j] << r) + f·(T[j+1] − T[j])  (r × 19 bits)   → q4
        cycle 4  y = saturate(round_shift((relu << ·) − δ))           → q5 = y

    Table memory: one :class:`~amaranth.lib.memory.Memory` of ``N`` words ``{T[j], T[j+1]}``
    (512 words of 2 × 18 bits by default) per pair of lanes, with two synchronous read ports; a
    true-dual-port block RAM serves both lanes. The contents come only from
    :func:`golden.tables.gelu_delta_table`. ``f·Δ`` is a 5 × 19-bit product (one DSP48E2, or
    LUTs at the synthesiser's choice).

    Parameters
    ----------
    config : GeluConfig

    Members
    -------
    i_valid : In(1)
        ``i`` holds elements this cycle (travels with them; the datapath runs every cycle).
    i : In(data.ArrayLayout(signed(fmt.width), lanes))
        Elements in ``fmt``.
    o_valid : Out(1)
        ``i_valid``, ``LATENCY`` cycles later.
    o : Out(data.ArrayLayout(signed(fmt.width), lanes))
        GELU of the elements of ``i``, ``LATENCY`` cycles later, in ``fmt``.
    """

    #: Cycles from ``i`` to ``o`` (the registers ``q1`` … ``q5`` above).
    LATENCY = 5

    def __init__(self, config):
        if not isinstance(config, GeluConfig):
            raise TypeError(f"config must be a GeluConfig, not {config!r}")
        self._config = config
        layout = data.ArrayLayout(signed(config.fmt.width), config.lanes)
        super().__init__({
            "i_valid": In(1),
            "i": In(layout),
            "o_valid": Out(1),
            "o": Out(layout),
        })

    @property
    def config(self):
        """The :class:`GeluConfig`."""
        return self._config

    @property
    def latency(self):
        """Cycles from ``i`` to ``o``."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes = cfg.lanes
        width = cfg.fmt.width
        r = cfg.interp_bits
        n_seg = cfg.segments
        table = cfg.table
        layout = gelu_table_layout(cfg)

        valid = valid_chain(m, self.i_valid, self.LATENCY, "valid")
        m.d.comb += self.o_valid.eq(valid[-1])

        # Tables: one dual-port memory per pair of lanes.
        init = [{"lo": table[j], "hi": table[j + 1]} for j in range(n_seg)]
        ports = []
        for pair in range((lanes + 1) // 2):
            mem = Memory(shape=layout, depth=n_seg, init=init)
            m.submodules[f"delta_table_{pair}"] = mem
            for _ in range(min(2, lanes - 2 * pair)):
                ports.append(mem.read_port())

        for lane in range(lanes):
            # cycle 0 → q1: the input element.
            x_q1 = reg(m, self.i[lane], f"x_q1_{lane}")

            # cycle 1 → q2: magnitude and ReLU (exact: |min| fits the unsigned width).
            a_q2 = reg(m, Mux(x_q1 < 0, -x_q1, x_q1), f"abs_q2_{lane}", unsigned(width))
            relu_q2 = reg(m, Mux(x_q1 < 0, 0, x_q1), f"relu_q2_{lane}", unsigned(width - 1))

            # cycle 2 → q3: table read at the clamped segment index.
            seg = a_q2 >> r
            port = ports[lane]
            m.d.comb += port.addr.eq(Mux(seg < n_seg, seg, n_seg - 1))
            frac_q3 = reg(m, a_q2[:r] if r else 0, f"frac_q3_{lane}", unsigned(max(r, 1)))
            in_range_q3 = reg(m, seg < n_seg, f"in_range_q3_{lane}")
            relu_q3 = reg(m, relu_q2, f"relu_q3_{lane}")

            # cycle 3 → q4: interpolated δ with gelu_frac + r fractional bits.
            # 0 ≤ δ = (2**r − f)·T[j] + f·T[j+1] ≤ max(T) << r: saturate never binds.
            entry = port.data
            delta = (entry.lo << r) + frac_q3 * (entry.hi - entry.lo)
            delta_shape = unsigned((max(table) << r).bit_length())
            delta_q4 = reg(m, Mux(in_range_q3, saturate(delta, delta_shape), 0),
                           f"delta_q4_{lane}", delta_shape)
            relu_q4 = reg(m, relu_q3, f"relu_q4_{lane}")

            # cycle 4 → q5: round and saturate.
            y = (relu_q4 << cfg.out_shift) - delta_q4
            y_q5 = reg(m, saturate(round_shift(y, cfg.out_shift), cfg.fmt), f"y_q5_{lane}",
                       signed(width))
            m.d.comb += self.o[lane].eq(y_q5)
        return m


class Gelu(wiring.Component):
    """GELU over ``lanes`` elements per cycle, fully pipelined, with stream edges.

    A :class:`GeluPipeline` (the datapath and its δ tables) between a credit counter and an
    output queue; see :class:`GeluPipeline` for the arithmetic, which is bit-exact with
    :func:`golden.qref.gelu`.

    Back pressure: the pipeline never stalls. Each accepted beat takes a credit; a credit
    returns when a result leaves ``o``. The output queue holds ``credits = latency + 1`` beats,
    so every accepted beat finds room when it arrives, and with ``o.ready`` high one beat is
    accepted every cycle. ``i.ready`` is a register (it depends on neither ``i.valid`` nor
    ``o.ready``).

    Parameters
    ----------
    config : GeluConfig
        Format, lanes and numerics.

    Members
    -------
    i : In(stream.Signature(data.ArrayLayout(signed(fmt.width), lanes)))
        Input elements in ``fmt``. Respects back pressure.
    o : Out(stream.Signature(data.ArrayLayout(signed(fmt.width), lanes)))
        GELU of each element, in ``fmt``, in input order. Respects back pressure.
    """

    #: Cycles from a queue write to the entry on ``o`` (an unbuffered queue).
    QUEUE_LATENCY = 1

    def __init__(self, config):
        if not isinstance(config, GeluConfig):
            raise TypeError(f"config must be a GeluConfig, not {config!r}")
        self._config = config
        layout = data.ArrayLayout(signed(config.fmt.width), config.lanes)
        super().__init__({
            "i": In(stream.Signature(layout)),
            "o": Out(stream.Signature(layout)),
        })

    @property
    def config(self):
        """The :class:`GeluConfig`."""
        return self._config

    @property
    def lanes(self):
        """Elements per cycle."""
        return self._config.lanes

    @property
    def latency(self):
        """Cycles from an input transfer to its result on ``o`` (``o`` empty and ready):
        ``GeluPipeline.LATENCY + QUEUE_LATENCY``."""
        return GeluPipeline.LATENCY + self.QUEUE_LATENCY

    @property
    def credits(self):
        """Output queue depth: beats that may be accepted and not yet delivered."""
        return self.latency + 1

    @property
    def throughput(self):
        """Elements per cycle with ``i.valid`` and ``o.ready`` held high."""
        return self.lanes

    def elaborate(self, platform):
        m = Module()
        m.submodules.pipeline = pipe = GeluPipeline(self._config)
        m.submodules.out_queue = queue = Queue(self.o.payload.shape(), self.credits,
                                               buffered=False)
        wiring.connect(m, wiring.flipped(self.o), queue.o)

        credits = Signal(range(self.credits + 1), init=self.credits)
        accept = Signal()
        m.d.comb += [
            self.i.ready.eq(credits != 0),
            accept.eq(self.i.valid & self.i.ready),
            pipe.i_valid.eq(accept),
            pipe.i.eq(self.i.payload),
            queue.i.valid.eq(pipe.o_valid),
            queue.i.payload.eq(pipe.o),
        ]
        pop = queue.o.valid & queue.o.ready
        m.d.sync += credits.eq(credits - accept + pop)
        return m
