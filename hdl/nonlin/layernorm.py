# SPDX-License-Identifier: BSD-2-Clause
"""Streaming LayerNorm, bit-exact with :func:`golden.qref.layernorm`.

One pass over the row accumulates ``S1 = Σx`` and ``S2 = Σx²`` exactly; ``V' = n·S2 − S1² +
eps_int`` goes through an rsqrt seed table and one Newton step; a second read of the row, from an
internal circular row buffer, normalises each element and applies the gain and bias, which live
in a parameter memory loaded through the ``params`` stream before the rows.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics import MANTISSA_FRAC

from ..stream_util import Queue
from ._arith import msb, normalise, round_shift, round_shift_var_parts, round_up, saturate
from ._arith import shape_for_range
from ._pipe import delay, reduce_tree, reg, tree_stages, valid_chain
from .config import LayerNormConfig

__all__ = ["LayerNorm", "Rsqrt", "layernorm_param_layout", "layernorm_output_layout"]


def _count_shape(lanes):
    return unsigned(lanes.bit_length())


def layernorm_param_layout(config):
    """Payload of :attr:`LayerNorm.params`: one beat of gains and biases.

    ``gamma``, ``beta``
        ``lanes`` gains and biases in ``param_fmt``, for elements ``k·lanes …`` of a row.
    ``count``
        Valid elements of the ``last`` beat, 1..lanes (ignored on other beats).
    ``last``
        The beat ends the parameter vector; the row length n is the number of elements sent.
    ``eps``
        ``eps_int`` for this n and format (:func:`golden.qref.layernorm_stats`), at least 1;
        taken from the ``last`` beat.
    """
    pshape = signed(config.param_fmt.width)
    return data.StructLayout({
        "gamma": data.ArrayLayout(pshape, config.lanes),
        "beta": data.ArrayLayout(pshape, config.lanes),
        "count": _count_shape(config.lanes),
        "last": 1,
        "eps": unsigned(config.eps_bits),
    })


def layernorm_input_layout(config):
    """Payload of :attr:`LayerNorm.i`: ``lanes`` elements in ``in_fmt``."""
    return data.ArrayLayout(signed(config.in_fmt.width), config.lanes)


def layernorm_output_layout(config):
    """Payload of :attr:`LayerNorm.o`: ``data`` (``lanes`` outputs in ``out_fmt``, 0 beyond
    ``count``), ``count`` (valid elements: ``lanes`` but on a partial last beat), ``last``."""
    return data.StructLayout({
        "data": data.ArrayLayout(signed(config.out_fmt.width), config.lanes),
        "count": _count_shape(config.lanes),
        "last": 1,
    })


class Rsqrt(wiring.Component):
    """``1/sqrt(v)`` by a seed table and one Newton step, exactly :func:`golden.qref.rsqrt`.

    ``v = x·4**e`` with ``x`` in [1, 4) (24 fractional bits, floor); ``y0`` from
    :func:`golden.tables.rsqrt_table`; ``y1 = y0·(3 − x·y0²)/2`` with ``y0²`` and ``x·y0²``
    rounded to ``rsqrt_frac`` bits. An always-valid pipeline (no back pressure)::

        cycle 0   leading one of v                                 → q1
        cycle 1   e = msb >> 1, x = normalise(v, 2e)                → q2
        cycle 2   seed read                                         → q3: y0
        cycle 3   y0²          (20 × 20: two DSP48E2)               → q4, q5
        cycle 5   round                                             → q6
        cycle 6   x·y0²        (26 × 21: two DSP48E2)               → q7, q8
        cycle 8   round                                             → q9
        cycle 9   y0·(3 − x·y0²)  (20 × 22: two DSP48E2)            → q10, q11
        cycle 11  round                                             → q12: y1, e

    Parameters
    ----------
    config : LayerNormConfig

    Members
    -------
    v : In(unsigned)
        ``1 ≤ v ≤ config.var_max``; feed it from a register.
    y1 : Out(unsigned)
        ``1/sqrt(v) ≈ y1·2**-(rsqrt_frac + e)``, ``LATENCY`` cycles after ``v``.
    e : Out(unsigned)
        The exponent, aligned with ``y1``.
    """

    #: Cycles from ``v`` to ``y1``.
    LATENCY = 12

    def __init__(self, config):
        if not isinstance(config, LayerNormConfig):
            raise TypeError(f"config must be a LayerNormConfig, not {config!r}")
        self._config = config
        _, _, _, y1_max = config.rsqrt_bounds
        super().__init__({
            "v": In(unsigned(config.var_max.bit_length())),
            "y1": Out(unsigned(y1_max.bit_length())),
            "e": Out(unsigned(config.exp_range[1].bit_length())),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nx = cfg.numerics
        mf, rf, tb = MANTISSA_FRAC, nx.rsqrt_frac, nx.rsqrt_table_bits
        y0_max, y0sq_max, (_, xy_hi), _ = cfg.rsqrt_bounds
        e_hi = cfg.exp_range[1]
        seed = cfg.rsqrt_table

        top_q1 = reg(m, msb(self.v), "msb_q1")
        v_q1 = reg(m, self.v, "v_q1")
        e_q2 = reg(m, top_q1 >> 1, "e_q2", self.e.shape())
        # x = v >> (2e − mf) (floor) or v << (mf − 2e): bit 2e lands on bit mf, and at most one
        # bit above it is set, so x < 2**(mf + 2).
        x_q2 = reg(m, normalise(v_q1, Cat(Const(0, 1), top_q1 >> 1), 0, 2 * e_hi, mf, above=1),
                   "x_q2")
        m.submodules.seed_table = table = Memory(shape=unsigned(y0_max.bit_length()),
                                                 depth=len(seed), init=seed)
        port = table.read_port()
        # (x >> (mf − tb)) − 2**tb: x ≥ 2**mf, so the index is 0 … 3·2**tb − 1.
        m.d.comb += port.addr.eq(x_q2[mf - tb:mf + 2] - (1 << tb))
        x_q3 = reg(m, x_q2, "x_q3")
        e_q3 = reg(m, e_q2, "e_q3")
        y0 = port.data                                               # q3
        sq_q4 = reg(m, y0 * y0, "y0sq_q4")
        sq_q5 = reg(m, sq_q4, "y0sq_q5")
        y0sq_q6 = reg(m, saturate(round_shift(sq_q5, rf), unsigned(y0sq_max.bit_length())),
                      "y0sq_q6", unsigned(y0sq_max.bit_length()))   # never binds (bounds)
        x_q6 = delay(m, x_q3, 3, "x")
        xy_q7 = reg(m, x_q6 * y0sq_q6, "xy_q7")
        xy_q8 = reg(m, xy_q7, "xy_q8")
        xy_q9 = reg(m, saturate(round_shift(xy_q8, mf), unsigned(xy_hi.bit_length())), "xy_q9",
                    unsigned(xy_hi.bit_length()))                     # never binds (bounds)
        y0_q9 = delay(m, y0, 6, "y0")
        nt_q10 = reg(m, y0_q9 * ((3 << rf) - xy_q9), "newton_q10")  # 3 − x·y0² > 0 (bounds)
        nt_q11 = reg(m, nt_q10, "newton_q11")
        y1_q12 = reg(m, saturate(round_shift(nt_q11, rf + 1), self.y1.shape()), "y1_q12",
                     self.y1.shape())                                 # never binds (bounds)
        e_q12 = delay(m, e_q3, 9, "e")
        m.d.comb += [self.y1.eq(y1_q12), self.e.eq(e_q12)]
        return m


class LayerNorm(wiring.Component):
    """Streaming LayerNorm over rows of ``n ≤ max_len`` elements, ``lanes`` per cycle.

    Bit-exact with ``golden.qref.layernorm(x, γ, β, in_fmt=…, param_fmt=…, out_fmt=…, eps=…)``
    for each row, where ``eps_int`` (:func:`golden.qref.layernorm_stats`) arrives with the
    parameters.

    Use: send the gains and biases on ``params`` (``ceil(n/lanes)`` beats, ``last`` on the final
    one, which also carries ``count`` and ``eps``); this sets n. Then send rows on ``i``, each
    ``ceil(n/lanes)`` beats (lanes past n in the last beat are ignored). ``params`` is accepted
    only while no row is in flight (between layers), and rows wait while a parameter load is
    under way; the parameters stay until the next load.

    Dataflow::

        params ─► γ/β memory ────────────────────────────────────────────┐
        i ─► row buffer (x) ─────────────────────────────────────┐       │
          └► Σx, Σx² (exact) ─► V' = n·S2 − S1² + eps ─► Rsqrt ─► row stats queue
                                                                    │    │   │
        o ◄─ out queue ◄─ sat(round(x̂·γ + β)) ◄─ x̂ = round((n·x − S1)·y1 >> …) ◄─ pass 2

    * **Pass 1** (one beat per cycle): ``x²`` per lane (one DSP48E2 each), two adder trees,
      two accumulators; ``x`` into the row buffer.
    * **Row statistics** (one row at a time, pipelined): ``n·S2`` and ``S1²`` (two DSP48E2
      each), ``V'``, then :class:`Rsqrt`.
    * **Pass 2** (one beat per cycle): ``n·x − S1`` (one DSP48E2 with the subtraction in its
      post-adder), ``(n·x − S1)·y1`` (two DSP48E2), the rounding shift by
      ``rsqrt_frac + e − ln_xhat_frac``, ``x̂·γ + (β << ln_xhat_frac)`` (one DSP48E2), the
      final rounding and saturation.

    Back pressure: ``i.ready`` needs a configured n, no load under way, a free row-buffer word,
    and, on a row's first beat, fewer than ``max_rows`` rows in flight and no parameter beat
    waiting on ``params`` (a waiting load goes first; ``i.ready`` depends on
    ``params.valid`` there, otherwise on registers only). ``params.ready`` is high only between
    rows with none in flight. Pass 2 reads a word only with an output-queue credit, so the
    pipelines never stall.

    Timing: ``latency`` cycles from a row's last input beat to its first output beat (``o``
    ready, otherwise idle); one beat per cycle in and out in steady state (:meth:`row_period`).

    Parameters
    ----------
    config : LayerNormConfig

    Members
    -------
    params : In(stream.Signature(layernorm_param_layout(config)))
        Gains, biases, n and eps_int. Respects back pressure (ready only between rows).
    i : In(stream.Signature(data.ArrayLayout(signed(in_fmt.width), lanes)))
        Rows of n elements. Respects back pressure.
    o : Out(stream.Signature(layernorm_output_layout(config)))
        Normalised rows in ``out_fmt``, in input order, ``last`` on each row's final beat.
        Respects back pressure.
    """

    def __init__(self, config):
        if not isinstance(config, LayerNormConfig):
            raise TypeError(f"config must be a LayerNormConfig, not {config!r}")
        self._config = config
        super().__init__({
            "params": In(stream.Signature(layernorm_param_layout(config))),
            "i": In(stream.Signature(layernorm_input_layout(config))),
            "o": Out(stream.Signature(layernorm_output_layout(config))),
        })

    @property
    def config(self):
        """The :class:`LayerNormConfig`."""
        return self._config

    @property
    def lanes(self):
        """Elements per cycle."""
        return self._config.lanes

    @property
    def front_latency(self):
        """Registers from an input transfer to the row's sums: the element, its square, the
        adder trees, the accumulator."""
        return 2 + tree_stages(self._config.lanes) + 1

    #: Registers from the row's sums to ``V'``: two product registers and the sum.
    VAR_STAGES = 3
    #: Cycles from a pass-2 read to its beat on ``o``: read, two for ``n·x − S1``, two for the
    #: product with ``y1``, two for the rounding, two for the gain and bias, the output queue.
    PASS2_LATENCY = 10

    @property
    def latency(self):
        """Cycles from a row's last input transfer to its first output beat (``o`` ready, the
        unit otherwise idle): ``front_latency + VAR_STAGES + Rsqrt.LATENCY + 1`` (statistics
        queue) ``+ 1`` (pass-2 start) ``+ PASS2_LATENCY``."""
        return (self.front_latency + self.VAR_STAGES + Rsqrt.LATENCY + 1 + 1
                + self.PASS2_LATENCY)

    @property
    def out_queue_depth(self):
        """Output queue depth: one credit per beat in the pass-2 pipeline, plus one."""
        return self.PASS2_LATENCY + 1

    @property
    def row_overhead(self):
        """Cycles between a row's last input beat and its first pass-2 read."""
        return self.latency - self.PASS2_LATENCY

    def row_period(self, length):
        """Steady-state cycles per row for back-to-back rows of ``length`` elements:
        ``max(G, (2·G + row_overhead)/max_rows, G·(G + row_overhead)/buffer_words)`` with
        ``G = ceil(length/lanes)``."""
        cfg = self._config
        cfg.check_row_len(length)
        g = -(-length // cfg.lanes)
        return max(g, (2 * g + self.row_overhead) / cfg.max_rows,
                   g * (g + self.row_overhead) / cfg.buffer_words)

    def throughput(self, length):
        """Steady-state elements per cycle for rows of ``length`` (see :meth:`row_period`)."""
        return length / self.row_period(length)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nx = cfg.numerics
        lanes = cfg.lanes
        words = cfg.buffer_words
        gmax = cfg.max_groups
        count_shape = _count_shape(lanes)
        x_shape = signed(cfg.in_fmt.width)
        n_shape = unsigned(cfg.max_len.bit_length())
        g_shape = unsigned(gmax.bit_length())
        s1_shape = shape_for_range(*cfg.sum_range)
        s2_shape = unsigned(cfg.sumsq_max.bit_length())
        var_shape = unsigned(cfg.var_max.bit_length())
        center_shape = shape_for_range(-cfg.center_max, cfg.center_max)
        xhat_shape = shape_for_range(-cfg.xhat_max, cfg.xhat_max)
        hf = nx.ln_xhat_frac

        def advance(ptr):
            if words & (words - 1) == 0:
                return ptr + 1                                # wraps by truncation
            return Mux(ptr == words - 1, 0, ptr + 1)

        # -- parameters ----------------------------------------------------------------------------
        param_layout = data.StructLayout({
            "gamma": data.ArrayLayout(signed(cfg.param_fmt.width), lanes),
            "beta": data.ArrayLayout(signed(cfg.param_fmt.width), lanes),
        })
        m.submodules.param_memory = pmem = Memory(shape=param_layout, depth=gmax, init=[])
        pw = pmem.write_port()
        prd = pmem.read_port()
        configured = Signal(name="configured")
        loading = Signal(name="loading")
        n = Signal(n_shape, name="row_len")
        groups = Signal(g_shape, name="row_groups")
        last_count = Signal(count_shape, name="row_last_count")
        eps = Signal(unsigned(cfg.eps_bits), name="eps_int")
        p_beat = Signal(range(gmax + 1), name="param_beat")
        rows_inflight = Signal(range(cfg.max_rows + 1), name="rows_inflight")
        in_row = Signal(name="in_row")

        m.d.comb += self.params.ready.eq(~in_row & (rows_inflight == 0))
        p_accept = self.params.valid & self.params.ready
        m.d.comb += [
            pw.addr.eq(p_beat),
            pw.data.gamma.eq(self.params.payload.gamma),
            pw.data.beta.eq(self.params.payload.beta),
            pw.en.eq(p_accept & (p_beat < gmax)),        # a longer load is out of contract
        ]
        with m.If(p_accept):
            with m.If(self.params.payload.last):
                m.d.sync += [
                    loading.eq(0),
                    configured.eq(1),
                    p_beat.eq(0),
                    # n ≤ max_len by contract; the product fits n_shape then.
                    n.eq(p_beat * lanes + self.params.payload.count),
                    groups.eq(p_beat + 1),
                    last_count.eq(self.params.payload.count),
                    eps.eq(self.params.payload.eps),
                ]
            with m.Else():
                m.d.sync += [loading.eq(1), p_beat.eq(p_beat + 1)]

        # -- admission -----------------------------------------------------------------------------
        words_used = Signal(range(words + 1), name="words_used")
        accept = Signal()
        first = ~in_row
        beat = Signal(range(gmax), name="row_beat")
        is_last = beat == groups - 1
        m.d.comb += [
            # Between rows, a waiting parameter load goes first (rows resume after it).
            self.i.ready.eq(configured & ~loading & (words_used != words)
                            & (in_row | ((rows_inflight != cfg.max_rows)
                                         & ~self.params.valid))),
            accept.eq(self.i.valid & self.i.ready),
        ]
        with m.If(accept):
            m.d.sync += [in_row.eq(~is_last), beat.eq(Mux(is_last, 0, beat + 1))]

        # -- pass 1 --------------------------------------------------------------------------------
        x_q1 = [reg(m, self.i.payload[j], f"x_q1_{j}") for j in range(lanes)]
        keep_q1 = [reg(m, ~is_last | (last_count > j), f"keep_q1_{j}") for j in range(lanes)]
        tags_q1 = {"first": reg(m, first, "first_q1"), "last": reg(m, is_last, "last_q1")}
        v1 = valid_chain(m, accept, 2, "front_valid")

        # the row buffer holds x (q1).
        m.submodules.row_buffer = row_buffer = Memory(
            shape=data.ArrayLayout(x_shape, lanes), depth=words, init=[])
        wr = row_buffer.write_port()
        rd = row_buffer.read_port()
        wr_ptr = Signal(range(words), name="wr_ptr")
        m.d.comb += [wr.addr.eq(wr_ptr), wr.en.eq(v1[0])]
        for j in range(lanes):
            m.d.comb += wr.data[j].eq(x_q1[j])
        with m.If(v1[0]):
            m.d.sync += wr_ptr.eq(advance(wr_ptr))

        # q2: masked x and x² (one DSP48E2 per lane).
        xm_q2 = [reg(m, Mux(keep_q1[j], x_q1[j], 0), f"xm_q2_{j}", x_shape) for j in range(lanes)]
        sq_q2 = [reg(m, Mux(keep_q1[j], x_q1[j] * x_q1[j], 0), f"xsq_q2_{j}",
                     unsigned(2 * cfg.in_fmt.width - 1)) for j in range(lanes)]  # x² ≤ 2**(2w−2)
        tags_q2 = {k: reg(m, v, f"{k}_q2") for k, v in tags_q1.items()}
        part1, _ = reduce_tree(m, xm_q2, lambda a, b: a + b, "sum_x")
        part2, carried = reduce_tree(m, sq_q2, lambda a, b: a + b, "sum_xsq",
                                     carry=list(tags_q2.values()))
        tags_t = dict(zip(tags_q2, carried))
        valid_t = valid_chain(m, v1[1], tree_stages(lanes), "front_valid_tree")[-1]

        # the accumulators (exact); the row's sums leave in the cycle of its last beat.
        s1_acc = Signal(s1_shape, name="sum_x_acc", reset_less=True)
        s2_acc = Signal(s2_shape, name="sum_xsq_acc", reset_less=True)
        s1 = Mux(tags_t["first"], 0, s1_acc) + part1
        s2 = Mux(tags_t["first"], 0, s2_acc) + part2
        with m.If(valid_t):
            m.d.sync += [s1_acc.eq(saturate(s1, s1_shape)),      # |Σx| ≤ n·2**(w−1): exact
                         s2_acc.eq(saturate(s2, s2_shape))]
        s1_t0 = reg(m, saturate(s1, s1_shape), "s1_t0", s1_shape)
        s2_t0 = reg(m, saturate(s2, s2_shape), "s2_t0", s2_shape)
        n_t0 = reg(m, n, "n_t0")
        eps_t0 = reg(m, eps, "eps_t0")
        rvalid_t0 = valid_chain(m, valid_t & tags_t["last"], 1, "row_valid")[0]

        # -- row statistics ----------------------------------------------------------------------
        ns2_t1 = reg(m, n_t0 * s2_t0, "ns2_t1")
        s1sq_t1 = reg(m, s1_t0 * s1_t0, "s1sq_t1")
        ns2_t2 = reg(m, ns2_t1, "ns2_t2")
        s1sq_t2 = reg(m, s1sq_t1, "s1sq_t2")
        eps_t2 = delay(m, eps_t0, 2, "eps")
        # 1 ≤ V' ≤ var_max (Cauchy–Schwarz: n·S2 ≥ S1²; eps_int ≥ 1): saturate never binds.
        var_t3 = reg(m, saturate(ns2_t2 - s1sq_t2 + eps_t2, var_shape), "var_t3", var_shape)
        m.submodules.rsqrt = rsqrt = Rsqrt(cfg)
        m.d.comb += rsqrt.v.eq(var_t3)
        stat_delay = self.VAR_STAGES + Rsqrt.LATENCY
        s1_st = delay(m, s1_t0, stat_delay, "s1_stat")
        n_st = delay(m, n_t0, stat_delay, "n_stat")
        svalid = valid_chain(m, rvalid_t0, stat_delay, "stat_valid")[-1]

        stats_layout = data.StructLayout({
            "s1": s1_shape, "n": n_shape, "y1": rsqrt.y1.shape(), "e": rsqrt.e.shape(),
        })
        # Never full: it holds at most the rows in flight (max_rows).
        m.submodules.stats_queue = sq = Queue(stats_layout, cfg.max_rows, buffered=False)
        m.d.comb += [
            sq.i.valid.eq(svalid),
            sq.i.payload.s1.eq(s1_st),
            sq.i.payload.n.eq(n_st),
            sq.i.payload.y1.eq(rsqrt.y1),
            sq.i.payload.e.eq(rsqrt.e),
        ]

        # -- pass 2 control ----------------------------------------------------------------------
        oq_depth = self.out_queue_depth
        m.submodules.out_queue = oq = Queue(self.o.payload.shape(), oq_depth, buffered=False)
        wiring.connect(m, wiring.flipped(self.o), oq.o)
        ocredits = Signal(range(oq_depth + 1), init=oq_depth, name="out_credits")
        active = Signal(name="p2_active")
        g = Signal(range(gmax), name="p2_group")
        row = Signal(stats_layout, name="p2_row")
        issue = Signal(name="p2_issue")
        p2_last = Signal(name="p2_is_last")
        m.d.comb += [
            issue.eq(active & (ocredits != 0)),
            p2_last.eq(g == groups - 1),
            sq.o.ready.eq(~active | (issue & p2_last)),
        ]
        with m.If(sq.o.valid & sq.o.ready):
            m.d.sync += [active.eq(1), g.eq(0), row.eq(sq.o.payload)]
        with m.Elif(issue & p2_last):
            m.d.sync += active.eq(0)
        with m.Elif(issue):
            m.d.sync += g.eq(g + 1)
        rd_ptr = Signal(range(words), name="rd_ptr")
        m.d.comb += [rd.addr.eq(rd_ptr), prd.addr.eq(g)]
        with m.If(issue):
            m.d.sync += rd_ptr.eq(advance(rd_ptr))
        oq_pop = oq.o.valid & oq.o.ready
        m.d.sync += [
            ocredits.eq(ocredits - issue + oq_pop),
            words_used.eq(words_used + accept - issue),
            rows_inflight.eq(rows_inflight + (accept & first) - (issue & p2_last)),
        ]

        # -- pass 2 datapath ---------------------------------------------------------------------
        p2v = valid_chain(m, issue, self.PASS2_LATENCY - 1, "p2_valid")
        s1_u1 = reg(m, row.s1, "p2_s1_u1")
        n_u1 = reg(m, row.n, "p2_n_u1")
        y1_u3 = delay(m, row.y1, 3, "p2_y1")
        e_u5 = delay(m, row.e, 5, "p2_e")
        last_u9 = delay(m, p2_last, 9, "p2_last")
        count_u9 = delay(m, Mux(p2_last, last_count, lanes), 9, "p2_count")
        out = Signal(self.o.payload.shape(), name="p2_out")
        sh_lo, sh_hi = cfg.xhat_shift_range
        for j in range(lanes):
            # u1 → u2, u3: n·x − S1 (|·| ≤ (n − 1)·(max − min): saturate never binds).
            xc_u2 = reg(m, saturate(n_u1 * rd.data[j] - s1_u1, center_shape), f"p2_xc_u2_{j}",
                        center_shape)
            xc_u3 = reg(m, xc_u2, f"p2_xc_u3_{j}")
            # u3 → u4, u5: (n·x − S1)·y1.
            pr_u4 = reg(m, xc_u3 * y1_u3, f"p2_xcy1_u4_{j}")
            pr_u5 = reg(m, pr_u4, f"p2_xcy1_u5_{j}")
            # u5 → u6, u7: x̂ = round_shift(·, rsqrt_frac + e − ln_xhat_frac).
            q, guard, sticky = round_shift_var_parts(pr_u5, e_u5, sh_lo, sh_hi)
            q_u6 = reg(m, q, f"p2_floor_u6_{j}")
            guard_u6 = reg(m, guard, f"p2_guard_u6_{j}")
            sticky_u6 = reg(m, sticky, f"p2_sticky_u6_{j}")
            # |x̂| ≤ sqrt(n − 1)·2**hf (config.xhat_max): saturate never binds.
            xhat_u7 = reg(m, saturate(round_up(q_u6, guard_u6, sticky_u6), xhat_shape),
                          f"p2_xhat_u7_{j}", xhat_shape)
            gamma_u7 = delay(m, prd.data.gamma[j], 6, f"p2_gamma_{j}")
            beta_u7 = delay(m, prd.data.beta[j], 6, f"p2_beta_{j}")
            # u7 → u8, u9: x̂·γ + (β << hf) (one DSP48E2, β through its C port).
            y_u8 = reg(m, xhat_u7 * gamma_u7 + (beta_u7 << hf), f"p2_y_u8_{j}")
            y_u9 = reg(m, y_u8, f"p2_y_u9_{j}")
            value = saturate(round_shift(y_u9, cfg.out_shift), cfg.out_fmt)
            m.d.comb += out.data[j].eq(Mux(~last_u9 | (count_u9 > j), value, 0))
        m.d.comb += [
            out.last.eq(last_u9),
            out.count.eq(count_u9),
            oq.i.payload.eq(out),
            oq.i.valid.eq(p2v[-1]),
        ]
        return m
