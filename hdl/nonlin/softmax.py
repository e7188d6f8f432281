# SPDX-License-Identifier: BSD-2-Clause
"""Streaming single-pass softmax, bit-exact with :func:`golden.qref.softmax`.

One pass over the row computes the base-2 logits, the running maximum and the running sum of
exponentials (rescaled once per group of ``lanes`` elements); the reciprocal of the sum comes
from a table and one Newton step; a second read of the row, from an internal circular row
buffer, produces the probabilities. The same unit serves the attention softmax (scores, scale
``head_dim**-0.5``) and the router softmax (logits over E experts, scale 1): the scale constant
and the input format are runtime fields of the input.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.numerics import MANTISSA_FRAC

from ..stream_util import Queue
from ._arith import (clamp, msb, normalise, round_shift, round_shift_var_parts, round_up,
                     saturate)
from ._pipe import delay, reduce_tree, reg, tree_stages, valid_chain
from .config import SoftmaxConfig

__all__ = ["Softmax", "Exp2Neg", "Reciprocal", "softmax_input_layout",
           "softmax_output_layout"]


def _count_shape(lanes):
    return unsigned(lanes.bit_length())


def softmax_input_layout(config):
    """Payload of :attr:`Softmax.i`.

    ``data``
        ``lanes`` elements in the selected input format (sign-extended to the widest one).
    ``count``
        Valid elements of a ``last`` beat, 1..lanes (ignored on other beats, which are full).
    ``last``
        The beat ends the row.
    ``scale``
        ``c = golden.qref.softmax_scale_int(scale)``; the same on every beat of a row.
    ``fmt``
        Index of the input format in ``config.in_formats``; the same on every beat of a row.

    Rows are 1..``max_len`` elements; a longer row is outside the contract.
    """
    return data.StructLayout({
        "data": data.ArrayLayout(signed(config.in_width), config.lanes),
        "count": _count_shape(config.lanes),
        "last": 1,
        "scale": unsigned(config.scale_bits),
        "fmt": range(len(config.in_formats)),
    })


def softmax_output_layout(config):
    """Payload of :attr:`Softmax.o`.

    ``data``
        ``lanes`` probabilities in ``numerics.prob``; lanes beyond ``count`` are 0.
    ``count``
        Valid elements of the beat: ``lanes``, except on the ``last`` beat of a partial row.
    ``last``
        The beat ends the row.
    """
    return data.StructLayout({
        "data": data.ArrayLayout(signed(config.numerics.prob.width), config.lanes),
        "count": _count_shape(config.lanes),
        "last": 1,
    })


class Exp2Neg(wiring.Component):
    """``count`` parallel ``2**-d`` evaluations, exactly :func:`golden.qref.exp2_neg`.

    ``d`` must already be saturated to ``config.d_sat`` (where ``2**-d`` is 0), so the integer
    part ``k = d >> logit_frac`` is at most ``exp_frac + 1``, the twin's cap. An always-valid
    pipeline: it neither provides nor respects back pressure; feed ``d`` from registers.

    Pipeline::

        cycle 0  table reads at u >> lo_bits (hi) and u mod 2**lo_bits (lo); k → q1
        cycle 1  prod = hi·lo = (hi << exp_frac) − hi·(2**exp_frac − lo)         → q2
        cycle 2  floor, guard and sticky of prod >> (exp_frac + k)              → q3
        cycle 3  round half to even                                              → e (q4)

    The low table is stored as its complement ``2**exp_frac − lo`` (at most 10 bits for the
    default numerics), so ``hi·lo`` is a 19 × 10 product (one DSP48E2, the subtraction in its
    post-adder) instead of 19 × 19 (two). Both memories are initialised from
    :func:`golden.tables.exp2_hi_table` / :func:`golden.tables.exp2_lo_table`; each memory has
    two synchronous read ports and serves two evaluations.

    Parameters
    ----------
    config : SoftmaxConfig
    count : int
        Parallel evaluations.

    Members
    -------
    d : In(data.ArrayLayout(unsigned(d_bits), count))
        Arguments, ``0 ≤ d ≤ d_sat``, with ``softmax_logit_frac`` fractional bits.
    e : Out(data.ArrayLayout(unsigned(exp_frac + 1), count))
        ``2**-d`` in UQ(1, exp_frac), ``LATENCY`` cycles after ``d``.
    """

    #: Cycles from ``d`` to ``e``.
    LATENCY = 4

    def __init__(self, config, count):
        if not isinstance(config, SoftmaxConfig):
            raise TypeError(f"config must be a SoftmaxConfig, not {config!r}")
        self._config = config
        self._count = count
        super().__init__({
            "d": In(data.ArrayLayout(unsigned(config.d_sat.bit_length()), count)),
            "e": Out(data.ArrayLayout(unsigned(config.exp_bits), count)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nx = cfg.numerics
        lf, tb, ef = nx.softmax_logit_frac, nx.exp_table_bits, nx.exp_frac
        lo_bits = lf - tb
        hi_t = cfg.hi_table
        lo_c = [(1 << ef) - v for v in cfg.lo_table]
        prod_max = max(hi_t) * max(cfg.lo_table)
        hi_ports, lo_ports = [], []
        for pair in range((self._count + 1) // 2):
            n_ports = min(2, self._count - 2 * pair)
            hi_mem = Memory(shape=unsigned(max(hi_t).bit_length()), depth=len(hi_t), init=hi_t)
            m.submodules[f"hi_table_{pair}"] = hi_mem
            hi_ports += [hi_mem.read_port() for _ in range(n_ports)]
            if lo_bits:
                lo_mem = Memory(shape=unsigned(max(max(lo_c).bit_length(), 1)), depth=len(lo_c),
                                init=lo_c)
                m.submodules[f"lo_table_{pair}"] = lo_mem
                lo_ports += [lo_mem.read_port() for _ in range(n_ports)]
        for j in range(self._count):
            d = self.d[j]
            m.d.comb += hi_ports[j].addr.eq(d[lo_bits:lf])
            k_q1 = reg(m, d >> lf, f"k_q1_{j}", unsigned((ef + 1).bit_length()))  # d ≤ d_sat
            hi = hi_ports[j].data
            if lo_bits:
                m.d.comb += lo_ports[j].addr.eq(d[:lo_bits])
                prod = (hi << ef) - hi * lo_ports[j].data
            else:
                prod = hi << ef
            # 0 ≤ hi·lo ≤ prod_max: saturate never binds.
            prod_q2 = reg(m, saturate(prod, unsigned(prod_max.bit_length())), f"prod_q2_{j}",
                          unsigned(prod_max.bit_length()))
            k_q2 = reg(m, k_q1, f"k_q2_{j}")
            q, guard, sticky = round_shift_var_parts(prod_q2, k_q2, ef, 2 * ef + 1)
            q_q3 = reg(m, q, f"floor_q3_{j}")
            guard_q3 = reg(m, guard, f"guard_q3_{j}")
            sticky_q3 = reg(m, sticky, f"sticky_q3_{j}")
            # hi·lo ≤ 2**(2·exp_frac), so e ≤ 2**exp_frac: saturate never binds.
            e_q4 = reg(m, saturate(round_up(q_q3, guard_q3, sticky_q3), unsigned(cfg.exp_bits)),
                       f"e_q4_{j}", unsigned(cfg.exp_bits))
            m.d.comb += self.e[j].eq(e_q4)
        return m


class Reciprocal(wiring.Component):
    """``1/v`` by a seed table and one Newton step, exactly :func:`golden.qref.reciprocal`.

    For ``v`` with its leading one at ``b`` (``config.sum_msb_range``)::

        x  = v normalised to [1, 2) with MANTISSA_FRAC (24) fractional bits (floor)
        y0 = recip_table[x[16:24]]                                 (UQ(1, recip_frac))
        y1 = round(y0 · round(2 − x·y0, recip_frac), recip_frac)

    An always-valid pipeline (no back pressure); feed ``v`` from a register::

        cycle 0  b = msb(v)                                         → q1
        cycle 1  x = normalise(v, b)                                → q2
        cycle 2  seed read                                          → q3: y0
        cycle 3  x·y0   (25 × 20 bits: two DSP48E2)                 → q4, q5
        cycle 5  t = round(2 − x·y0)                                → q6
        cycle 6  y0·t   (20 × 21 bits: two DSP48E2)                 → q7, q8
        cycle 8  y1 = round(y0·t)                                   → q9

    Parameters
    ----------
    config : SoftmaxConfig

    Members
    -------
    v : In(unsigned(acc bits))
        The positive sum, ``2**exp_frac ≤ v ≤ config.acc_max``.
    y1 : Out(unsigned(y1 bits))
        Reciprocal mantissa, ``LATENCY`` cycles after ``v``.
    b : Out(unsigned)
        Leading-one index of ``v`` (``1/v ≈ y1·2**-(recip_frac + b)``), aligned with ``y1``.
    """

    #: Cycles from ``v`` to ``y1`` and ``b``.
    LATENCY = 9

    def __init__(self, config):
        if not isinstance(config, SoftmaxConfig):
            raise TypeError(f"config must be a SoftmaxConfig, not {config!r}")
        self._config = config
        _, _, y1_max = config.recip_bounds
        super().__init__({
            "v": In(unsigned(config.acc_max.bit_length())),
            "y1": Out(unsigned(y1_max.bit_length())),
            "b": Out(unsigned(config.sum_msb_range[1].bit_length())),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nx = cfg.numerics
        mf, rf, tb = MANTISSA_FRAC, nx.recip_frac, nx.recip_table_bits
        b_lo, b_hi = cfg.sum_msb_range
        y0_max, tm_max, _ = cfg.recip_bounds
        seed = cfg.recip_table

        b_q1 = reg(m, msb(self.v), "b_q1", self.b.shape())
        v_q1 = reg(m, self.v, "v_q1")
        x_q2 = reg(m, normalise(v_q1, b_q1 - b_lo, b_lo, b_hi, mf), "x_q2")
        b_q2 = reg(m, b_q1, "b_q2")

        m.submodules.seed_table = table = Memory(shape=unsigned(y0_max.bit_length()),
                                                 depth=len(seed), init=seed)
        port = table.read_port()
        m.d.comb += port.addr.eq(x_q2[mf - tb:mf])          # (x >> (mf − tb)) − 2**tb
        x_q3 = reg(m, x_q2, "x_q3")
        y0 = port.data                                       # q3
        p1_q4 = reg(m, x_q3 * y0, "xy0_q4")
        p1_q5 = reg(m, p1_q4, "xy0_q5")
        y0_q6 = delay(m, y0, 3, "y0")
        # 0 < 2 − x·y0 ≤ tm_max after rounding: saturate never binds.
        tm_q6 = reg(m, saturate(round_shift((2 << (mf + rf)) - p1_q5, mf),
                                unsigned(tm_max.bit_length())),
                    "two_minus_q6", unsigned(tm_max.bit_length()))
        p2_q7 = reg(m, y0_q6 * tm_q6, "y0t_q7")
        p2_q8 = reg(m, p2_q7, "y0t_q8")
        y1_q9 = reg(m, saturate(round_shift(p2_q8, rf), self.y1.shape()), "y1_q9",
                    self.y1.shape())
        b_q9 = delay(m, b_q2, 7, "b")
        m.d.comb += [self.y1.eq(y1_q9), self.b.eq(b_q9)]
        return m


class Softmax(wiring.Component):
    """Streaming softmax over rows of 1..``max_len`` elements, ``lanes`` elements per cycle.

    Bit-exact with ``golden.qref.softmax(s, fmt, scale, numerics)`` for each row (with
    ``lanes = numerics.softmax_lanes``, the twin's grouping).

    Dataflow::

                       ┌──────────── circular row buffer (t, buffer_words × lanes) ───────────┐
                       │ write                                                           read │
        i ─► t = round(s·c) ─► group max ─► running max m ─► 2**-(m−t), 2**-(m'−m) ─► Σ ─► group
             (DSP, 1/lane)                      (loop: 1 cycle)   (Exp2Neg, lanes+1)     queues
                                                                                   (even, odd rows)
        o ◄─ out queue ◄─ p = sat(round(e·y1 >> …)) ◄─ 2**-(m−t) ◄─ pass 2 ◄─ row stats ◄─ 1/acc
                              (2 DSP/lane)             (Exp2Neg)    control   queue    (Reciprocal)
                                                                                          ▲
                             two running sums: acc = round(acc·E) + S, totals in row order┘

    * **Pass 1** (one beat per cycle): ``t = round_shift(s·c, fmt.f + scale_frac − logit_frac)``
      for the beat's format; the masked group maximum; the running maximum
      ``m' = max(m, group max)`` (a one-cycle compare loop); the group's exponentials
      ``2**-(m'−t)`` and the rescale factor ``E = 2**-(m'−m)``; their exact sum ``S``. ``t`` is
      written to the row buffer.
    * **Running sum**: ``acc = round_shift(acc·E, exp_frac) + S`` once per group, as the twin,
      in two contexts that take the rows in turn (even rows, odd rows; each with its own group
      queue and multiplier), so one row's rescale products overlap the next row's groups. When
      the maximum did not rise, ``E`` is exactly one and the step is an addition (one group per
      cycle). When it rose, the product (29 × 19 bits, two DSP48E2, pipelined) takes
      ``acc_loop`` cycles; groups that follow and keep the maximum are summed aside meanwhile
      (the row's last group too), and only a second rise within ``acc_loop`` groups waits. A
      row's last group, when no product is in flight, goes through the multiplier (with ``E = 1``
      if the maximum held). The row totals are taken from the contexts in turn, in row order.
    * **Reciprocal** of the final sum (:class:`Reciprocal`), then the row's ``(m, y1, b)`` wait in
      the row-statistics queue.
    * **Pass 2** (one beat per cycle): re-read ``t``, ``e = 2**-(m−t)``, and
      ``p = saturate(round_shift(e·y1, recip_frac + b − prob.f), prob)``.

    Rows overlap: pass 1 of later rows proceeds while earlier rows are read out, limited by the
    row buffer (``buffer_words``, a circular buffer: the ping-pong generalised to any row length)
    and by ``max_rows`` rows in flight.

    Back pressure: ``i.ready`` is high when the row's group queue has a credit for the beat, the
    row buffer has a free word, and (on a row's first beat) fewer than ``max_rows`` rows are in
    flight; it depends only on registers. Pass 2 issues a read only with an output-queue credit,
    so the pipelines themselves never stall.

    Timing (cycles, ``o`` ready, no other row in flight):

    * ``latency``: from the transfer of a row's last beat to its first output beat, when no
      rescale product is in flight (always true for one-group rows and rows whose maximum does
      not rise in their last ``acc_loop`` groups).
    * A group that raises the maximum delays the next group of its row that raises it again by
      up to ``acc_loop − 1`` cycles; the row's group queue (``group_queue_depth``) absorbs it
      while the other context takes the next row, so the input stalls only when rises come
      faster than one per ``acc_loop`` groups for long. (A row that ends while a product is in
      flight leaves when it completes, earlier than ``latency``.)
    * Throughput: ``lanes`` elements per cycle in steady state (:meth:`row_period`) while the
      maximum rises in fewer than about half of the groups; ``2·lanes/acc_loop`` for rows whose
      maximum rises in every group (an increasing ramp), the worst case. Random Gaussian rows
      and the attention rows of m3vit-tiny run at the steady-state rate
      (``python -m sim.bench softmax``).

    DSP48E2 use (27 × 18 signed multiplier): ``s·c`` 16 × 18u, one per lane; ``hi·(1 − lo)``
    19 × 10, one per exponential (2·lanes + 1); ``e·y1`` 19 × 21, two per lane; the rescale
    product ``acc·E`` 29 × 19, two per context; the reciprocal's two products 25 × 20 and
    20 × 21, two each.

    Parameters
    ----------
    config : SoftmaxConfig

    Members
    -------
    i : In(stream.Signature(softmax_input_layout(config)))
        Rows of scores or logits; see :func:`softmax_input_layout`. Respects back pressure.
    o : Out(stream.Signature(softmax_output_layout(config)))
        Probabilities, row by row in input order, in beats aligned with the input beats.
        Respects back pressure.
    """

    #: Registers from popping a group to the row total: operands, two product registers (the
    #: DSP48E2's MREG and PREG), the total.
    ACC_PIPE = 4

    def __init__(self, config):
        if not isinstance(config, SoftmaxConfig):
            raise TypeError(f"config must be a SoftmaxConfig, not {config!r}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(softmax_input_layout(config))),
            "o": Out(stream.Signature(softmax_output_layout(config))),
        })

    @property
    def config(self):
        """The :class:`SoftmaxConfig`."""
        return self._config

    @property
    def lanes(self):
        """Elements per cycle."""
        return self._config.lanes

    @property
    def front_latency(self):
        """Registers from an input transfer to the group-queue write: product, rounding, the
        group-maximum tree, running maximum, differences, exponentials, group-sum tree."""
        lanes = self._config.lanes
        return 3 + tree_stages(lanes) + 2 + Exp2Neg.LATENCY + tree_stages(lanes)

    @property
    def pass2_latency(self):
        """Cycles from a pass-2 read to its beat on ``o``: read, difference, exponentials,
        two product registers, rounding, then the output queue."""
        return 2 + Exp2Neg.LATENCY + 3 + 1

    @property
    def group_queue_depth(self):
        """Depth of each of the two queues between pass 1 and the running sums: every beat in
        the pass-1 pipeline holds a credit, plus room to absorb rescale stalls."""
        return self.front_latency + 2 + 2 * self.ACC_PIPE

    @property
    def out_queue_depth(self):
        """Depth of the output queue: one credit per beat in the pass-2 pipeline, plus one."""
        return self.pass2_latency + 1

    @property
    def acc_loop(self):
        """Cycles from one rescale product of a row to the next one that depends on it: the
        product completes ``ACC_PIPE − 1`` cycles after its launch and updates ``acc``."""
        return self.ACC_PIPE

    @property
    def latency(self):
        """Cycles from the transfer of a row's last beat to its first output beat (no rescale
        product in flight, ``o`` ready, the unit otherwise idle):
        ``front_latency + 1`` (group queue) ``+ ACC_PIPE + Reciprocal.LATENCY + 1``
        (statistics queue) ``+ 1`` (pass-2 start) ``+ pass2_latency``."""
        return (self.front_latency + 1 + self.ACC_PIPE + Reciprocal.LATENCY + 1 + 1
                + self.pass2_latency)

    @property
    def row_overhead(self):
        """Cycles a row holds its resources beyond its own beats: from the last input beat to
        the last pass-2 read is ``row_overhead + groups − 1``."""
        return self.latency - self.pass2_latency

    def row_period(self, length):
        """Steady-state cycles per row for back-to-back rows of ``length`` elements, with no
        rescale stalls: ``max(G, (2·G + row_overhead)/max_rows, G·(G + row_overhead)/buffer)``
        with ``G = ceil(length/lanes)`` — one beat per cycle, unless the rows in flight or the
        row buffer run out."""
        cfg = self._config
        cfg.check_row_len(length)
        g = -(-length // cfg.lanes)
        life = 2 * g + self.row_overhead
        return max(g, life / cfg.max_rows, g * (g + self.row_overhead) / cfg.buffer_words)

    def throughput(self, length):
        """Steady-state elements per cycle for rows of ``length`` (see :meth:`row_period`)."""
        return length / self.row_period(length)

    def _running_sum(self, m, gq, out, px):
        """One running-sum context: pops groups from ``gq`` and pushes each row's total and its
        ``m``, ``groups``, ``count`` into ``out`` (never full) when the row ends.

        acc = round(acc·E) + S per group. ``busy``: a rescale product of the current row is in
        flight; groups that keep the maximum are summed aside in ``pend`` meanwhile. If the
        row's last group keeps the maximum too, it is folded into ``pend`` (``fin_pending``)
        and the row's total leaves when the product completes, while the context's next row's
        groups that need no product go on into ``acc``.
        """
        cfg = self._config
        ef = cfg.numerics.exp_frac
        acc_shape = unsigned(cfg.acc_max.bit_length())
        exp_shape = unsigned(cfg.exp_bits)
        t_shape = signed(cfg.logit_bits)
        head = gq.o.payload
        pop = gq.o.valid & gq.o.ready
        busy = Signal(name=f"{px}busy")
        fin_pending = Signal(name=f"{px}fin_pending")
        acc = Signal(acc_shape, name=f"{px}acc", reset_less=True)
        pend = Signal(acc_shape, name=f"{px}pending", reset_less=True)
        fin_tags = {
            "m": Signal(t_shape, name=f"{px}fin_m", reset_less=True),
            "groups": Signal.like(head.groups, name=f"{px}fin_groups", reset_less=True),
            "count": Signal.like(head.count, name=f"{px}fin_count", reset_less=True),
        }
        m.d.comb += gq.o.ready.eq(~busy | (head.unity & (~fin_pending | ~head.last)))
        base = Mux(head.first, 0, acc)
        launch = Signal(name=f"{px}launch")
        m.d.comb += launch.eq(pop & ~busy & (head.last | ~head.unity))
        mul_a = reg(m, base, f"{px}mul_acc_q1", acc_shape)
        mul_e = reg(m, Mux(head.unity, cfg.exp_one, head.E), f"{px}mul_e_q1", exp_shape)
        mul_tags = {
            "final": reg(m, head.last, f"{px}mul_final_q1"),
            "s": reg(m, head.S, f"{px}mul_s_q1"),
            "m": reg(m, head.m, f"{px}mul_m_q1"),
            "groups": reg(m, head.groups, f"{px}mul_groups_q1"),
            "count": reg(m, head.count, f"{px}mul_count_q1"),
        }
        mv = valid_chain(m, launch, self.ACC_PIPE - 1, f"{px}mul_valid")
        # acc·E: 29 × 19 bits, two DSP48E2, two product registers.
        prod_q2 = reg(m, mul_a * mul_e, f"{px}mul_prod_q2")
        prod_q3 = reg(m, prod_q2, f"{px}mul_prod_q3")
        mul_tags3 = {k: delay(m, v, self.ACC_PIPE - 2, f"{px}mul_{k}")
                     for k, v in mul_tags.items()}
        completes = mv[-1]
        done = completes & ~mul_tags3["final"]          # a mid-row product (busy is high)
        emit_now = fin_pending | (pop & head.last)      # with ``done``: the row ends here
        addend = Mux(mul_tags3["final"], mul_tags3["s"],
                     pend + Mux(pop & ~fin_pending, head.S, 0))
        # round(acc·E) + the sums of its groups ≤ acc_max: saturate never binds.
        total = saturate(round_shift(prod_q3, ef) + addend, acc_shape)

        with m.If(pop):
            with m.If(~busy):
                with m.If(head.last | ~head.unity):
                    with m.If(~head.last):
                        m.d.sync += [busy.eq(1), pend.eq(head.S)]
                with m.Else():
                    m.d.sync += acc.eq(saturate(base + head.S, acc_shape))   # ≤ acc_max
            with m.Elif(~fin_pending):
                m.d.sync += pend.eq(saturate(pend + head.S, acc_shape))
                with m.If(head.last):
                    m.d.sync += fin_pending.eq(1)
                    m.d.sync += [fin_tags[k].eq(head[k]) for k in fin_tags]
            with m.Else():
                m.d.sync += acc.eq(saturate(base + head.S, acc_shape))       # next row
        with m.If(done):
            m.d.sync += [busy.eq(0), fin_pending.eq(0)]
            with m.If(~emit_now):
                m.d.sync += acc.eq(total)

        # Totals leave in launch order (one product completes per cycle at most).
        emit = Signal(name=f"{px}emit")
        m.d.comb += emit.eq(completes & (mul_tags3["final"] | emit_now))
        from_fin = ~mul_tags3["final"] & fin_pending
        from_head = ~mul_tags3["final"] & ~fin_pending
        m.d.comb += [out.valid.eq(emit), out.payload.v.eq(total)]
        for k in ("m", "groups", "count"):
            m.d.comb += out.payload[k].eq(Mux(from_fin, fin_tags[k],
                                              Mux(from_head, head[k], mul_tags3[k])))

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        nx = cfg.numerics
        lanes = cfg.lanes
        words = cfg.buffer_words
        t_shape = signed(cfg.logit_bits)
        t_lo = -(1 << (cfg.logit_bits - 1))
        acc_shape = unsigned(cfg.acc_max.bit_length())
        sum_shape = unsigned(cfg.group_sum_max.bit_length())
        exp_shape = unsigned(cfg.exp_bits)
        count_shape = _count_shape(lanes)
        b_lo, b_hi = cfg.sum_msb_range

        # -- the row buffer: a circular buffer of base-2 logits --------------------------------
        m.submodules.row_buffer = row_buffer = Memory(
            shape=data.ArrayLayout(t_shape, lanes), depth=words, init=[])
        wr = row_buffer.write_port()
        rd = row_buffer.read_port()

        def advance(ptr):
            if words & (words - 1) == 0:
                return ptr + 1                                # wraps by truncation
            return Mux(ptr == words - 1, 0, ptr + 1)

        # -- admission: credits for the group queue, free buffer words, rows in flight -------
        # Rows alternate between two running-sum contexts (``odd``: the row's parity), each with
        # its own group queue and credits.
        gq_depth = self.group_queue_depth
        gcredits = [Signal(range(gq_depth + 1), init=gq_depth, name=f"gcredits{k}")
                    for k in range(2)]
        gq_pops = [Signal(name=f"gq_pop{k}") for k in range(2)]
        words_used = Signal(range(words + 1))
        rows_inflight = Signal(range(cfg.max_rows + 1))
        in_row = Signal()
        odd = Signal(name="row_odd")
        accept = Signal()
        first = ~in_row
        m.d.comb += [
            self.i.ready.eq((Mux(odd, gcredits[1], gcredits[0]) != 0) & (words_used != words)
                            & (in_row | (rows_inflight != cfg.max_rows))),
            accept.eq(self.i.valid & self.i.ready),
        ]
        for k in range(2):
            m.d.sync += gcredits[k].eq(gcredits[k] - (accept & (odd == k)) + gq_pops[k])
        with m.If(accept):
            m.d.sync += in_row.eq(~self.i.payload.last)
            with m.If(self.i.payload.last):
                m.d.sync += odd.eq(~odd)
        grp = Signal(range(cfg.max_groups + 1))
        gnum = Mux(first, 1, grp + 1)
        with m.If(accept):
            m.d.sync += grp.eq(gnum)

        # -- pass 1, cycle 0 → q1: register the beat ------------------------------------------
        p = self.i.payload
        s_q1 = [reg(m, p.data[j], f"s_q1_{j}") for j in range(lanes)]
        c_q1 = reg(m, p.scale, "scale_q1")
        fmt_q1 = reg(m, p.fmt, "fmt_q1")
        tags_q1 = {
            "last": reg(m, p.last, "last_q1"),
            "count": reg(m, p.count, "count_q1"),
            "first": reg(m, first, "first_q1"),
            "odd": reg(m, odd, "odd_q1"),
            "groups": reg(m, gnum, "groups_q1", unsigned(cfg.max_groups.bit_length())),
        }
        v1 = valid_chain(m, accept, 3, "front_valid")

        # cycle 1 → q2: s·c (one DSP48E2 per lane: c on the 27-bit port, s on the 18-bit one).
        prod_q2 = [reg(m, s_q1[j] * c_q1, f"sc_q2_{j}") for j in range(lanes)]
        fmt_q2 = reg(m, fmt_q1, "fmt_q2")
        tags_q2 = {k: reg(m, v, f"{k}_q2") for k, v in tags_q1.items()}

        # cycle 2 → q3: t = round_shift(s·c, shift of the selected format), saturate never binds
        # (config.logit_range covers every format at the largest scale); the lane mask.
        t_q3 = []
        for j in range(lanes):
            cands = [saturate(round_shift(prod_q2[j], sh), t_shape)
                     for sh in cfg.in_format_shifts]
            t = cands[0]
            for k in range(1, len(cands)):
                t = Mux(fmt_q2 == k, cands[k], t)
            t_q3.append(reg(m, t, f"t_q3_{j}", t_shape))
        mask_q3 = [reg(m, ~tags_q2["last"] | (tags_q2["count"] > j), f"mask_q3_{j}")
                   for j in range(lanes)]
        tags_q3 = {k: reg(m, v, f"{k}_q3") for k, v in tags_q2.items()}
        valid_q3 = v1[2]

        # cycle 3: write t into the row buffer.
        wr_ptr = Signal(range(words), name="wr_ptr")
        m.d.comb += [wr.addr.eq(wr_ptr), wr.en.eq(valid_q3)]
        for j in range(lanes):
            m.d.comb += wr.data[j].eq(t_q3[j])
        with m.If(valid_q3):
            m.d.sync += wr_ptr.eq(advance(wr_ptr))

        # cycles 3..: the masked group maximum (lane 0 is always valid).
        masked = [Mux(mask_q3[j], t_q3[j], t_lo) for j in range(lanes)]
        carry_keys = list(tags_q3)
        cm, carried = reduce_tree(
            m, masked, lambda a, b: Mux(a > b, a, b), "group_max",
            carry=[tags_q3[k] for k in carry_keys] + t_q3 + mask_q3)
        tags_m = dict(zip(carry_keys, carried[:len(carry_keys)]))
        t_m = carried[len(carry_keys):len(carry_keys) + lanes]
        mask_m = carried[len(carry_keys) + lanes:]
        valid_m = valid_chain(m, valid_q3, tree_stages(lanes), "front_valid_max")[-1]

        # running maximum: the loop is one compare and one multiplexer.
        m_state = Signal(t_shape, name="running_max", reset_less=True)
        rises = cm > m_state
        m_new = Mux(tags_m["first"] | rises, cm, m_state)
        with m.If(valid_m):
            m.d.sync += m_state.eq(m_new)
        m_new_q = reg(m, m_new, "m_new_q", t_shape)
        m_old_q = reg(m, m_state, "m_old_q", t_shape)
        unity_q = reg(m, tags_m["first"] | ~rises, "unity_q")
        tags_r = {k: reg(m, v, f"{k}_qr") for k, v in tags_m.items()}
        t_r = [reg(m, t_m[j], f"t_qr_{j}") for j in range(lanes)]
        mask_r = [reg(m, mask_m[j], f"mask_qr_{j}") for j in range(lanes)]
        valid_r = valid_chain(m, valid_m, 1, "front_valid_rmax")[0]

        # differences → exponential inputs (registers), saturated at d_sat (where 2**-d = 0).
        m.submodules.exp_pass1 = exp1 = Exp2Neg(cfg, lanes + 1)
        for j in range(lanes):
            d = Mux(mask_r[j], clamp(m_new_q - t_r[j], 0, cfg.d_sat), cfg.d_sat)
            m.d.sync += exp1.d[j].eq(d)
        m.d.sync += exp1.d[lanes].eq(Mux(tags_r["first"], 0,
                                         clamp(m_new_q - m_old_q, 0, cfg.d_sat)))
        tags_d = {k: reg(m, v, f"{k}_qd") for k, v in tags_r.items()}
        tags_d["m"] = reg(m, m_new_q, "m_qd")
        tags_d["unity"] = reg(m, unity_q, "unity_qd")
        valid_d = valid_chain(m, valid_r, 1, "front_valid_d")[0]
        tags_e = {k: delay(m, v, Exp2Neg.LATENCY, f"{k}_exp") for k, v in tags_d.items()}
        valid_e = valid_chain(m, valid_d, Exp2Neg.LATENCY, "front_valid_exp")[-1]

        # the group sum (exact).
        e1 = [exp1.e[j] for j in range(lanes)]
        s_sum, carried = reduce_tree(m, e1, lambda a, b: a + b, "group_sum",
                                     carry=[exp1.e[lanes]] + [tags_e[k] for k in tags_e])
        big_e = carried[0]
        tags_s = dict(zip(tags_e, carried[1:]))
        valid_s = valid_chain(m, valid_e, tree_stages(lanes), "front_valid_sum")[-1]

        # -- group queue ------------------------------------------------------------------------
        group_layout = data.StructLayout({
            "E": exp_shape, "unity": 1, "S": sum_shape, "first": 1, "last": 1, "m": t_shape,
            "groups": unsigned(cfg.max_groups.bit_length()), "count": count_shape,
        })
        total_layout = data.StructLayout({
            "v": acc_shape, "m": t_shape, "groups": unsigned(cfg.max_groups.bit_length()),
            "count": count_shape,
        })
        totals = []
        for k in range(2):
            gq = Queue(group_layout, gq_depth, buffered=False)
            m.submodules[f"group_queue{k}"] = gq
            m.d.comb += [
                gq.i.valid.eq(valid_s & (tags_s["odd"] == k)),
                gq.i.payload.E.eq(big_e),
                gq.i.payload.unity.eq(tags_s["unity"]),
                gq.i.payload.S.eq(s_sum),                 # Σ of lanes values ≤ 2**ef: exact
                gq.i.payload.first.eq(tags_s["first"]),
                gq.i.payload.last.eq(tags_s["last"]),
                gq.i.payload.m.eq(tags_s["m"]),
                gq.i.payload.groups.eq(tags_s["groups"]),
                gq.i.payload.count.eq(tags_s["count"]),
                gq_pops[k].eq(gq.o.valid & gq.o.ready),
            ]
            # Never full: a context holds at most the rows in flight.
            tq = Queue(total_layout, cfg.max_rows, buffered=False)
            m.submodules[f"total_queue{k}"] = tq
            self._running_sum(m, gq, tq.i, f"acc{k}_")
            totals.append(tq.o)

        # The row totals, in row order: the contexts take turns.
        turn = Signal(name="acc_turn")
        m.d.comb += [totals[0].ready.eq(~turn), totals[1].ready.eq(turn)]
        final_valid = Mux(turn, totals[1].valid, totals[0].valid)
        head_total = data.View(total_layout, Mux(turn, totals[1].payload.as_value(),
                                                 totals[0].payload.as_value()))
        with m.If(final_valid):
            m.d.sync += turn.eq(~turn)
        val_q4 = head_total.v
        row_tags = {k: head_total[k] for k in ("m", "groups", "count")}

        # -- reciprocal of the row's sum -------------------------------------------------------
        m.submodules.reciprocal = recip = Reciprocal(cfg)
        m.d.comb += recip.v.eq(val_q4)
        rtags = {k: delay(m, v, Reciprocal.LATENCY, f"recip_{k}") for k, v in row_tags.items()}
        rvalid = valid_chain(m, final_valid, Reciprocal.LATENCY, "recip_valid")[-1]

        stats_layout = data.StructLayout({
            "m": t_shape, "y1": recip.y1.shape(), "b": unsigned((b_hi - b_lo).bit_length()),
            "groups": unsigned(cfg.max_groups.bit_length()), "count": count_shape,
        })
        # Never full: it holds at most the rows in flight, which admission limits to max_rows.
        m.submodules.stats_queue = sq = Queue(stats_layout, cfg.max_rows, buffered=False)
        m.d.comb += [
            sq.i.valid.eq(rvalid),
            sq.i.payload.m.eq(rtags["m"]),
            sq.i.payload.y1.eq(recip.y1),
            sq.i.payload.b.eq(recip.b - b_lo),       # b_lo ≤ b ≤ b_hi
            sq.i.payload.groups.eq(rtags["groups"]),
            sq.i.payload.count.eq(rtags["count"]),
        ]

        # -- pass 2 control ---------------------------------------------------------------------
        oq_depth = self.out_queue_depth
        m.submodules.out_queue = oq = Queue(self.o.payload.shape(), oq_depth, buffered=False)
        wiring.connect(m, wiring.flipped(self.o), oq.o)
        ocredits = Signal(range(oq_depth + 1), init=oq_depth)
        active = Signal(name="p2_active")
        g = Signal(range(cfg.max_groups), name="p2_group")
        row = Signal(stats_layout, name="p2_row")
        issue = Signal(name="p2_issue")
        is_last = Signal(name="p2_is_last")
        m.d.comb += [
            issue.eq(active & (ocredits != 0)),
            is_last.eq(g == row.groups - 1),
            sq.o.ready.eq(~active | (issue & is_last)),
        ]
        with m.If(sq.o.valid & sq.o.ready):
            m.d.sync += [active.eq(1), g.eq(0), row.eq(sq.o.payload)]
        with m.Elif(issue & is_last):
            m.d.sync += active.eq(0)
        with m.Elif(issue):
            m.d.sync += g.eq(g + 1)
        rd_ptr = Signal(range(words), name="rd_ptr")
        m.d.comb += rd.addr.eq(rd_ptr)
        with m.If(issue):
            m.d.sync += rd_ptr.eq(advance(rd_ptr))
        oq_pop = oq.o.valid & oq.o.ready
        m.d.sync += [
            ocredits.eq(ocredits - issue + oq_pop),
            words_used.eq(words_used + accept - issue),
            rows_inflight.eq(rows_inflight + (accept & first) - (issue & is_last)),
        ]

        # -- pass 2 datapath ---------------------------------------------------------------------
        # q1: the row buffer word and the row's statistics.
        p2v = valid_chain(m, issue, 9, "p2_valid")
        m_p1 = reg(m, row.m, "p2_m_q1")
        y1_p1 = reg(m, row.y1, "p2_y1_q1")
        b_p1 = reg(m, row.b, "p2_b_q1")
        last_p1 = reg(m, is_last, "p2_last_q1")
        count_p1 = reg(m, row.count, "p2_count_q1")
        # q2: differences (garbage lanes of a partial beat are clamped, then masked below).
        m.submodules.exp_pass2 = exp2 = Exp2Neg(cfg, lanes)
        for j in range(lanes):
            m.d.sync += exp2.d[j].eq(clamp(m_p1 - rd.data[j], 0, cfg.d_sat))
        # q6: e; q7, q8: e·y1 (19 × 21 bits: two DSP48E2 per lane).
        y1_p6 = delay(m, y1_p1, 1 + Exp2Neg.LATENCY, "p2_y1")
        b_p8 = delay(m, b_p1, 3 + Exp2Neg.LATENCY, "p2_b")
        last_p9 = delay(m, last_p1, 4 + Exp2Neg.LATENCY, "p2_last")
        count_p9 = delay(m, count_p1, 4 + Exp2Neg.LATENCY, "p2_count")
        pf_lo, pf_hi = cfg.prob_shift_range
        out = Signal(self.o.payload.shape(), name="p2_out")
        for j in range(lanes):
            pr_q7 = reg(m, exp2.e[j] * y1_p6, f"p2_ey1_q7_{j}")
            pr_q8 = reg(m, pr_q7, f"p2_ey1_q8_{j}")
            q, guard, sticky = round_shift_var_parts(pr_q8, b_p8, pf_lo, pf_hi)
            q_q9 = reg(m, q, f"p2_floor_q9_{j}")
            guard_q9 = reg(m, guard, f"p2_guard_q9_{j}")
            sticky_q9 = reg(m, sticky, f"p2_sticky_q9_{j}")
            prob = saturate(round_up(q_q9, guard_q9, sticky_q9), nx.prob)
            keep = ~last_p9 | (count_p9 > j)
            m.d.comb += out.data[j].eq(Mux(keep, prob, 0))
        m.d.comb += [
            out.last.eq(last_p9),
            out.count.eq(Mux(last_p9, count_p9, lanes)),
            oq.i.payload.eq(out),
            oq.i.valid.eq(p2v[-1]),
        ]
        return m
