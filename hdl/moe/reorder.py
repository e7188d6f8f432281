# SPDX-License-Identifier: BSD-2-Clause
"""Patch reordering: a counting sort of the tokens into per-expert lists, on chip.

Bit-exact with :func:`golden.qref.reorder`: the used experts in the order of
:func:`golden.qref.expert_order` (the largest and the smallest token counts interleaved), each
with its tokens in ascending token order and the score that token gave the expert; unused
experts do not appear.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from .._checks import check_int
from .topk import check_moe_shape, route_layout

__all__ = ["Reorder", "expert_entry_layout", "list_entry_layout"]


def expert_entry_layout(num_experts, k, tokens):
    """Layout of one used expert: ``expert`` id, ``offset`` of its first list entry, ``count``
    of its tokens (≥ 1), and ``last`` (the final used expert)."""
    return data.StructLayout({
        "expert": unsigned(bits_for(num_experts - 1)),
        "offset": unsigned(bits_for(max(tokens * k - 1, 1))),
        "count": unsigned(bits_for(tokens)),
        "last": unsigned(1),
    })


def list_entry_layout(tokens, score_width=16):
    """Layout of one list entry: the ``token`` index and its router ``score``."""
    return data.StructLayout({
        "token": unsigned(bits_for(max(tokens - 1, 1))),
        "score": signed(score_width),
    })


class Reorder(wiring.Component):
    """Counting sort of ``n_tokens`` routings into per-expert token lists.

    The frame's shape (``n_tokens`` ≤ ``tokens``, ``n_experts`` ≤ ``num_experts``,
    ``top_k`` ≤ ``k``, written N, E and k below) is latched at ``start``; a routing's slots past
    ``top_k`` are ignored (:class:`~hdl.moe.topk.TopK` sorts them, so the first ``top_k`` are the
    top ``top_k``). Phases, after a ``start`` pulse:

    ``COLLECT`` (N transfers on ``i``, one per cycle at most)
        The routing of token ``t`` is stored at ``t`` in the route memory, and the counter of
        each of its k experts is incremented (``num_experts`` registers).
    ``PREFIX`` (``num_experts`` cycles)
        ``base[e] = Σ_{e' < e} count[e']``; the write pointers start at ``base``.
    ``SCATTER`` (N·k + 1 cycles)
        Token by token, slot by slot, ``(t, score)`` is written to ``list[wptr[e]++]``: every
        expert's list is contiguous, in ascending token order.
    ``EMIT`` (``num_experts + 1`` cycles per used expert)
        The used experts (``count ≠ 0``) leave on ``experts`` in the order of
        :func:`golden.qref.expert_order`: with U used experts holding T entries, the largest
        remaining count while the i experts emitted so far hold ``U·Σn ≤ i·T``, else the
        smallest; ties to the lowest id. A scan of the counters, one per cycle, finds each
        (the consumer needs the next expert only when the current one is done, thousands of
        cycles later); then it is offered until taken.
    ``DONE``
        The lists stay readable through ``rd_addr``/``rd_data`` until the next ``start``.

    Every count is bounded by N (one entry per token per expert at most), and the lists fill
    exactly N·k entries, so no routing can overflow a list or stall the unit: one expert
    receiving every token, experts with no token and tied scores all take the same number of
    cycles. An expert index ≥ E (impossible from :class:`TopK` given ``n_experts`` = E) is
    dropped in both passes and sets the sticky ``error``. A shape out of range
    (N = 0 or > ``tokens``, E = 0 or > ``num_experts``, k = 0, > ``k`` or > E) sets ``error``
    at ``start`` and the unit goes straight to ``DONE`` with no expert (``n_used`` = 0).

    Parameters
    ----------
    num_experts : int
        Most experts, 1..64.
    k : int
        Most experts per token, 1..min(4, num_experts).
    tokens : int
        Most tokens per frame.
    score_width : int
        Width of a score.

    Members
    -------
    n_tokens, n_experts, top_k : In(...), init ``tokens``, ``num_experts``, ``k``
        The frame's shape, latched at ``start``.
    start : In(1)
        Pulse: forget the previous frame and collect a new one (in any phase).
    i : In(stream.Signature(route_layout(num_experts, k, score_width)))
        Routings of tokens ``0 .. N − 1`` in order. Ready in ``COLLECT`` only (a register).
    experts : Out(stream.Signature(expert_entry_layout(num_experts, k, tokens)))
        The used experts in :func:`golden.qref.expert_order`, ``last`` on the final one. The
        payload comes from registers and does not depend on ``ready``.
    rd_addr : In(range(tokens·k))
        List entry to read.
    rd_data : Out(list_entry_layout(tokens, score_width))
        The entry at ``rd_addr`` of the previous cycle (a synchronous read port).
    n_used : Out(range(E + 1))
        Number of used experts; valid from ``SCATTER`` on.
    done : Out(1)
        High in ``DONE``: every used expert has been emitted.
    busy : Out(1)
        High from ``start`` until ``DONE``.
    error : Out(1)
        Sticky until the next ``start``: an expert index ≥ E was received, or the shape was out
        of range.
    """

    def __init__(self, *, num_experts, k, tokens, score_width=16):
        check_moe_shape(num_experts, k)
        check_int("tokens", tokens)
        check_int("score_width", score_width)
        self._num_experts = num_experts
        self._k = k
        self._tokens = tokens
        self._score_width = score_width
        super().__init__({
            "n_tokens": In(range(tokens + 1), init=tokens),
            "n_experts": In(range(num_experts + 1), init=num_experts),
            "top_k": In(range(k + 1), init=k),
            "start": In(1),
            "i": In(stream.Signature(route_layout(num_experts, k, score_width))),
            "experts": Out(stream.Signature(expert_entry_layout(num_experts, k, tokens))),
            "rd_addr": In(range(tokens * k)),
            "rd_data": Out(list_entry_layout(tokens, score_width)),
            "n_used": Out(range(num_experts + 1)),
            "done": Out(1),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def num_experts(self):
        """Number of experts E."""
        return self._num_experts

    @property
    def k(self):
        """Experts per token."""
        return self._k

    @property
    def tokens(self):
        """Tokens per frame."""
        return self._tokens

    @property
    def list_depth(self):
        """Entries of the list memory, ``tokens·k``."""
        return self._tokens * self._k

    def tail_cycles(self, n_used, tokens=None, k=None):
        """Cycles from the transfer of the last routing on ``i`` to the first cycle of ``done``,
        when ``experts`` is always ready: ``num_experts + N·k + n_used·(num_experts + 1) + 2``
        for a frame of ``tokens`` = N (default: the most) and ``k`` (default: the most) (the
        routings themselves take one cycle each at most)."""
        N = self._tokens if tokens is None else tokens
        k = self._k if k is None else k
        return self._num_experts + N * k + n_used * (self._num_experts + 1) + 2

    def elaborate(self, platform):
        m = Module()
        E, k, N = self._num_experts, self._k, self._tokens
        rlayout = route_layout(E, k, self._score_width)
        elayout = list_entry_layout(N, self._score_width)
        pos_shape = unsigned(bits_for(N * k))
        cnt_shape = unsigned(bits_for(N))

        m.submodules.route_mem = route_mem = Memory(shape=rlayout, depth=N, init=[])
        m.submodules.list_mem = list_mem = Memory(shape=elayout, depth=N * k, init=[])
        route_w = route_mem.write_port()
        route_r = route_mem.read_port()
        list_w = list_mem.write_port()
        list_r = list_mem.read_port()
        m.d.comb += [
            list_r.addr.eq(self.rd_addr),
            self.rd_data.eq(list_r.data),
        ]

        count = [Signal(cnt_shape, name=f"count{e}") for e in range(E)]
        base = [Signal(pos_shape, name=f"base{e}") for e in range(E)]
        wptr = [Signal(pos_shape, name=f"wptr{e}") for e in range(E)]
        used = Signal(E)
        m.d.comb += used.eq(Cat(c != 0 for c in count))

        t = Signal(range(N + 1))
        j = Signal(range(k))
        e_ctr = Signal(range(E))
        run = Signal(pos_shape)
        primed = Signal()
        remaining = Signal(E)
        best_e = Signal(range(E))           # EMIT: the scan's choice so far
        best_n = Signal(cnt_shape)
        found = Signal()
        credit = Signal(signed(bits_for(E * N * k) + 1))    # U·Σn − i·T of the emitted

        # The frame's shape, latched at start.
        n_tok = Signal.like(self.n_tokens)
        n_exp = Signal.like(self.n_experts)
        top_k = Signal.like(self.top_k)
        bad_shape = ((self.n_tokens == 0) | (self.n_experts == 0) | (self.top_k == 0) |
                     (self.top_k > self.n_experts))
        m.d.comb += self.busy.eq(0)
        with m.If(self.start):
            m.d.sync += [c.eq(0) for c in count]
            m.d.sync += [t.eq(0), self.error.eq(bad_shape), self.n_used.eq(0),
                         n_tok.eq(self.n_tokens), n_exp.eq(self.n_experts),
                         top_k.eq(self.top_k)]

        def restart():
            """A start, in any phase, collects a new frame (or ends at once: a bad shape).
            Last in each phase, so that it overrides the phase's own transition."""
            with m.If(self.start):
                m.next = "COLLECT"
                with m.If(bad_shape):
                    m.next = "DONE"

        with m.FSM(name="phase"):
            with m.State("IDLE"):
                restart()

            with m.State("COLLECT"):
                m.d.comb += [
                    self.busy.eq(1),
                    self.i.ready.eq(~self.start),
                    route_w.addr.eq(t),
                    route_w.data.eq(self.i.payload),
                ]
                with m.If(self.i.valid & ~self.start):
                    m.d.comb += route_w.en.eq(1)
                    m.d.sync += t.eq(t + 1)
                    for e in range(E):
                        hits = [(self.i.payload.idx[s] == e) & (s < top_k) for s in range(k)]
                        m.d.sync += count[e].eq(count[e] + sum(h.as_unsigned() for h in hits))
                    for s in range(k):
                        with m.If((self.i.payload.idx[s] >= n_exp) & (s < top_k)):
                            m.d.sync += self.error.eq(1)
                    with m.If(t == n_tok - 1):
                        m.d.sync += [e_ctr.eq(0), run.eq(0), self.n_used.eq(0)]
                        m.next = "PREFIX"

                restart()

            with m.State("PREFIX"):
                m.d.comb += self.busy.eq(1)
                n_cnt = Array(count)[e_ctr]
                m.d.sync += [
                    Array(base)[e_ctr].eq(run),
                    Array(wptr)[e_ctr].eq(run),
                    run.eq(run + n_cnt),
                    e_ctr.eq(e_ctr + 1),
                    # Counted here, one expert per cycle, rather than by a popcount.
                    self.n_used.eq(self.n_used + (n_cnt != 0)),
                ]
                with m.If(e_ctr == E - 1):
                    m.d.sync += [t.eq(0), j.eq(0), primed.eq(0)]
                    m.next = "SCATTER"

                restart()

            with m.State("SCATTER"):
                m.d.comb += self.busy.eq(1)
                advance = primed & (j == top_k - 1)
                m.d.comb += route_r.addr.eq(Mux(advance, t + 1, t))
                m.d.sync += primed.eq(1)
                with m.If(primed):
                    slot_idx = Array(route_r.data.idx[s] for s in range(k))[j]
                    slot_score = Array(route_r.data.score[s] for s in range(k))[j]
                    m.d.comb += [
                        list_w.addr.eq(Array(wptr)[slot_idx]),
                        list_w.data.token.eq(t),
                        list_w.data.score.eq(slot_score),
                        list_w.en.eq(slot_idx < n_exp),
                    ]
                    with m.If(slot_idx < n_exp):
                        m.d.sync += Array(wptr)[slot_idx].eq(Array(wptr)[slot_idx] + 1)
                    m.d.sync += j.eq(Mux(j == top_k - 1, 0, j + 1))
                    with m.If(j == top_k - 1):
                        m.d.sync += t.eq(t + 1)
                        with m.If(t == n_tok - 1):
                            m.d.sync += [remaining.eq(used), e_ctr.eq(0), found.eq(0),
                                         credit.eq(0)]
                            m.next = "EMIT"

                restart()

            # EMIT: golden.qref.expert_order. Each used expert is found by a scan of the
            # counters, one per cycle (the largest remaining while the experts emitted so far
            # hold at most their share of the tokens, ``U·Σn ≤ i·T``, else the smallest; a
            # strict comparison keeps the lowest id on a tie), then offered on `experts`.
            with m.State("EMIT"):
                m.d.comb += self.busy.eq(1)
                cand = Array(count)[e_ctr]
                better = Mux(credit <= 0, cand > best_n, cand < best_n)
                with m.If(remaining.bit_select(e_ctr, 1) & (~found | better)):
                    m.d.sync += [best_e.eq(e_ctr), best_n.eq(cand), found.eq(1)]
                m.d.sync += e_ctr.eq(e_ctr + 1)
                with m.If(e_ctr == E - 1):
                    m.next = "OFFER"

                restart()

            with m.State("OFFER"):
                m.d.comb += self.busy.eq(1)
                others = Signal(E)
                m.d.comb += others.eq(remaining & ~(1 << best_e))
                m.d.comb += [
                    self.experts.valid.eq(found),
                    self.experts.payload.expert.eq(best_e),
                    self.experts.payload.offset.eq(Array(base)[best_e]),
                    self.experts.payload.count.eq(best_n),
                    self.experts.payload.last.eq(others == 0),
                ]
                with m.If(~found):
                    m.next = "DONE"
                with m.Elif(self.experts.ready):
                    m.d.sync += [remaining.eq(others), found.eq(0), e_ctr.eq(0),
                                 credit.eq(credit + best_n * self.n_used - run)]
                    m.next = "EMIT"
                    with m.If(others == 0):
                        m.next = "DONE"

                restart()

            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                restart()

        return m

