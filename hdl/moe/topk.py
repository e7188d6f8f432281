# SPDX-License-Identifier: BSD-2-Clause
"""Streaming top-k over the router's probability rows.

Bit-exact with :func:`golden.qref.topk`: the ``k`` largest probabilities of each row, largest
first, ties to the lowest expert index.
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from .._checks import check_int

__all__ = ["TopK", "probs_layout", "route_layout", "MAX_EXPERTS", "MAX_K"]

#: Largest expert count the MoE blocks support.
MAX_EXPERTS = 64
#: Largest top-k the MoE blocks support.
MAX_K = 4


def probs_layout(lanes, score_width=16):
    """Layout of one beat of a probability row: ``lanes`` signed scores."""
    return data.ArrayLayout(signed(score_width), lanes)


def route_layout(num_experts, k, score_width=16):
    """Layout of one token's routing: ``idx`` (k expert ids) and ``score`` (k probabilities),
    largest score first."""
    return data.StructLayout({
        "idx": data.ArrayLayout(unsigned(bits_for(num_experts - 1)), k),
        "score": data.ArrayLayout(signed(score_width), k),
    })


def check_moe_shape(num_experts, k):
    """Raise unless ``1 ≤ k ≤ num_experts ≤ MAX_EXPERTS`` and ``k ≤ MAX_K``."""
    check_int("num_experts", num_experts, 1, MAX_EXPERTS)
    check_int("k", k, 1, MAX_K)
    if k > num_experts:
        raise ValueError(f"k ({k}) must not exceed the number of experts ({num_experts})")


class TopK(wiring.Component):
    """Top-k of each row of ``num_experts`` probabilities, ``lanes`` per beat.

    A row arrives as ``ceil(n / lanes)`` beats on ``i``, where ``n`` is the row length
    ``n_experts`` (at most ``num_experts``, set at run time): beat ``b`` carries the probabilities
    of experts ``b·lanes .. b·lanes + lanes − 1``; lanes past ``n − 1`` in the last beat are
    ignored. Item ``a`` comes before item ``b`` when ``a.score > b.score``, or when the scores
    are equal and ``a`` has the lower expert index (the golden tie rule).

    Each beat goes down a feed-forward pipeline, one beat a cycle, and is then merged into the
    row's running list of its ``k`` best::

        1  compare    lanes·(lanes − 1)/2 comparators: which lane of each pair comes first
        2  rank       each lane's rank in its beat (a popcount), as one-hot selects of 0..k−1
        3  select     the beat's k best, sorted, through AND-OR multiplexers
        4  merge      the row so far (k, sorted, lower indices) with the beat's k (sorted):
                      k² comparators, ranks, AND-OR multiplexers; into the list, or into ``o``
                      on the row's last beat

    Every stage is registered; when no row can take more than one beat (``num_experts ≤ lanes``)
    there is no list and stage 3 writes ``o``. The only loop is the merge's, over ``2k`` items.
    Every stage holds while ``o`` holds a routing its consumer has not taken.

    Parameters
    ----------
    num_experts : int
        Longest row E, 1..64.
    k : int
        Experts kept per row, 1..min(4, E). A consumer that wants fewer (``k' < k``) takes the
        first ``k'``: the list is sorted, so they are the row's top ``k'``.
    lanes : int
        Probabilities per beat.
    score_width : int
        Width of a (signed) probability; 16 for the ``prob`` format SQ(1,15).

    Members
    -------
    n_experts : In(range(num_experts + 1), init=num_experts)
        Row length, 1..``num_experts``; held while rows flow. A row of ``n < k`` experts fills
        only its first ``n`` slots (the others hold garbage).
    i : In(stream.Signature(probs_layout(lanes, score_width)))
        Probability beats, rows back to back, one a cycle. Ready unless ``o`` holds a routing
        that is not being taken.
    o : Out(stream.Signature(route_layout(num_experts, k, score_width)))
        One routing per row, :attr:`latency` cycles after the row's last beat is transferred
        (when ``o`` is not held up). Respects back pressure; the payload is registered.
    """

    def __init__(self, *, num_experts, k, lanes, score_width=16):
        check_moe_shape(num_experts, k)
        check_int("lanes", lanes)
        check_int("score_width", score_width)
        self._num_experts = num_experts
        self._k = k
        self._lanes = lanes
        self._score_width = score_width
        super().__init__({
            "n_experts": In(range(num_experts + 1), init=num_experts),
            "i": In(stream.Signature(probs_layout(lanes, score_width))),
            "o": Out(stream.Signature(route_layout(num_experts, k, score_width))),
        })

    @property
    def num_experts(self):
        """Row length E."""
        return self._num_experts

    @property
    def k(self):
        """Experts kept per row."""
        return self._k

    @property
    def lanes(self):
        """Probabilities per beat."""
        return self._lanes

    @property
    def score_width(self):
        """Width of one probability."""
        return self._score_width

    @property
    def beats_per_row(self):
        """Beats of the longest row, ``ceil(E / lanes)``."""
        return -(-self._num_experts // self._lanes)

    @property
    def latency(self):
        """Cycles from the transfer of a row's last beat to its routing on ``o``: 3 when every
        row is one beat (``E ≤ lanes``), 4 otherwise (the merge), whatever ``n_experts``."""
        return 3 if self.beats_per_row == 1 else 4

    @property
    def throughput(self):
        """Beats accepted per cycle while ``o`` is taken: 1 (a row per ``beats_per_row``
        cycles)."""
        return 1

    def elaborate(self, platform):
        m = Module()
        k, lanes, E = self._k, self._lanes, self._num_experts
        beats = self.beats_per_row
        idx_shape = unsigned(bits_for(E - 1))
        lane_shape = unsigned(bits_for(lanes - 1))
        score_shape = signed(self._score_width)

        # Every stage moves when o is free or being taken.
        adv = Signal()
        m.d.comb += [
            adv.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(adv),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        def before(va, sa, vb, sb):
            """Whether item a comes before item b, when a has the lower index: valid items
            first, then the higher score (equal scores: a, the lower index)."""
            return (va & (~vb | (sa >= sb))) | (~va & ~vb)

        # Beat counter.
        beat = Signal(range(beats), name="beat")
        last_beat = Signal()
        n = self.n_experts
        m.d.comb += last_beat.eq((beat + 1) * lanes >= n)
        with m.If(self.i.valid & adv):
            m.d.sync += beat.eq(Mux(last_beat, 0, beat + 1))

        # Stage 1: the beat, its lane valids and the lane-pair comparisons.
        a_valid, a_last = Signal(name="a_valid"), Signal(name="a_last")
        a_beat = Signal(range(beats), name="a_beat")
        a_lv = [Signal(name=f"a_lv{x}") for x in range(lanes)]
        a_score = [Signal(score_shape, name=f"a_score{x}") for x in range(lanes)]
        lane_valid = []
        for x in range(lanes):
            v = Signal(name=f"lane_valid{x}")
            m.d.comb += v.eq(beat * lanes + x < n)
            lane_valid.append(v)
        a_prec = {}
        with m.If(adv):
            m.d.sync += [a_valid.eq(self.i.valid), a_last.eq(last_beat), a_beat.eq(beat)]
            for x in range(lanes):
                m.d.sync += [a_lv[x].eq(lane_valid[x]), a_score[x].eq(self.i.payload[x])]
            for x in range(lanes):
                for y in range(x + 1, lanes):
                    p = a_prec[x, y] = Signal(name=f"a_prec{x}_{y}")
                    m.d.sync += p.eq(before(lane_valid[x], self.i.payload[x],
                                            lane_valid[y], self.i.payload[y]))

        # Stage 2: each lane's rank in its beat, as one-hot selects of ranks 0..k-1.
        b_valid, b_last = Signal(name="b_valid"), Signal(name="b_last")
        b_beat = Signal(range(beats), name="b_beat")
        b_lv = [Signal(name=f"b_lv{x}") for x in range(lanes)]
        b_score = [Signal(score_shape, name=f"b_score{x}") for x in range(lanes)]
        kk = min(k, lanes)                       # ranks a beat can fill
        b_sel = [[Signal(name=f"b_sel{r}_{x}") for x in range(lanes)] for r in range(kk)]
        with m.If(adv):
            m.d.sync += [b_valid.eq(a_valid), b_last.eq(a_last), b_beat.eq(a_beat)]
            for x in range(lanes):
                m.d.sync += [b_lv[x].eq(a_lv[x]), b_score[x].eq(a_score[x])]
                terms = ([a_prec[y, x] for y in range(x)]
                         + [~a_prec[x, y] for y in range(x + 1, lanes)])
                rank = Signal(range(lanes), name=f"rank{x}")
                if terms:
                    m.d.comb += rank.eq(sum(t.as_unsigned() for t in terms))
                for r in range(kk):
                    m.d.sync += b_sel[r][x].eq(rank == r)

        # Stage 3: the beat's k best, sorted (one-hot AND-OR multiplexers).
        sel_valid = [Signal(name=f"sel_valid{r}") for r in range(k)]
        sel_score = [Signal(score_shape, name=f"sel_score{r}") for r in range(k)]
        sel_idx = [Signal(idx_shape, name=f"sel_idx{r}") for r in range(k)]
        for r in range(kk):
            lane = Signal(lane_shape, name=f"sel_lane{r}")
            m.d.comb += [
                sel_valid[r].eq(_or(b_sel[r][x] & b_lv[x] for x in range(lanes))),
                sel_score[r].eq(_or(Mux(b_sel[r][x], b_score[x], 0) for x in range(lanes))),
                lane.eq(_or(Mux(b_sel[r][x], x, 0) for x in range(lanes))),
                sel_idx[r].eq(b_beat * lanes + lane),
            ]

        if beats == 1:
            with m.If(adv & b_valid):
                m.d.sync += self.o.valid.eq(1)
                for r in range(k):
                    m.d.sync += [self.o.payload.idx[r].eq(sel_idx[r]),
                                 self.o.payload.score[r].eq(sel_score[r])]
            return m

        c_valid, c_last = Signal(name="c_valid"), Signal(name="c_last")
        c_items = [(Signal(name=f"c_valid{r}"), Signal(score_shape, name=f"c_score{r}"),
                    Signal(idx_shape, name=f"c_idx{r}")) for r in range(k)]
        with m.If(adv):
            m.d.sync += [c_valid.eq(b_valid), c_last.eq(b_last)]
            for r in range(k):
                v, s, ix = c_items[r]
                m.d.sync += [v.eq(sel_valid[r]), s.eq(sel_score[r]), ix.eq(sel_idx[r])]

        # Stage 4: merge the row so far (lower indices: first on ties) with the beat's k best.
        l_items = [(Signal(name=f"top_valid{r}"), Signal(score_shape, name=f"top_score{r}"),
                    Signal(idx_shape, name=f"top_idx{r}")) for r in range(k)]
        first = {}
        for i_, (vl, sl, _) in enumerate(l_items):
            for j, (vc, sc, _) in enumerate(c_items):
                p = first[i_, j] = Signal(name=f"list_first{i_}_{j}")
                m.d.comb += p.eq(before(vl, sl, vc, sc))
        rank_shape = unsigned(bits_for(2 * k - 1))
        items, ranks = [], []
        for i_ in range(k):
            rk = Signal(rank_shape, name=f"list_rank{i_}")
            m.d.comb += rk.eq(i_ + sum((~first[i_, j]).as_unsigned() for j in range(k)))
            items.append(l_items[i_])
            ranks.append(rk)
        for j in range(k):
            rk = Signal(rank_shape, name=f"beat_rank{j}")
            m.d.comb += rk.eq(j + sum(first[i_, j].as_unsigned() for i_ in range(k)))
            items.append(c_items[j])
            ranks.append(rk)
        merged = []
        for r in range(k):
            hit = [rk == r for rk in ranks]
            merged.append((
                _or(h & v for h, (v, _, _) in zip(hit, items)),
                _or(Mux(h, s, 0) for h, (_, s, _) in zip(hit, items)),
                _or(Mux(h, ix, 0) for h, (_, _, ix) in zip(hit, items)),
            ))
        with m.If(adv & c_valid):
            with m.If(c_last):
                m.d.sync += self.o.valid.eq(1)
                for r in range(k):
                    _, s, ix = merged[r]
                    m.d.sync += [l_items[r][0].eq(0),
                                 self.o.payload.idx[r].eq(ix),
                                 self.o.payload.score[r].eq(s)]
            with m.Else():
                for r in range(k):
                    for dst, src in zip(l_items[r], merged[r]):
                        m.d.sync += dst.eq(src)
        return m


def _or(values):
    """The bitwise OR of ``values`` (at least one)."""
    values = list(values)
    out = values[0]
    for v in values[1:]:
        out = out | v
    return out
