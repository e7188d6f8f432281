# SPDX-License-Identifier: BSD-2-Clause
"""Streaming top-k over the router's probability rows.

Bit-exact with :func:`golden.qref.topk`: the ``k`` largest probabilities of each row, largest
first, ties to the lowest expert index.
"""

from amaranth.hdl import Const, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

__all__ = ["TopK", "probs_layout", "route_layout", "MAX_EXPERTS", "MAX_K"]

#: Largest expert count the MoE blocks support.
MAX_EXPERTS = 64
#: Largest top-k the MoE blocks support.
MAX_K = 4


def _positive_int(name, value, hi=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive integer, not {value!r}")
    if value <= 0 or (hi is not None and value > hi):
        rng = "a positive integer" if hi is None else f"an integer in the range 1..{hi}"
        raise ValueError(f"{name} must be {rng}, not {value!r}")


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
    _positive_int("num_experts", num_experts, MAX_EXPERTS)
    _positive_int("k", k, MAX_K)
    if k > num_experts:
        raise ValueError(f"k ({k}) must not exceed the number of experts ({num_experts})")


class TopK(wiring.Component):
    """Top-k of each row of ``num_experts`` probabilities, ``lanes`` per beat.

    A row arrives as ``ceil(E / lanes)`` beats on ``i``: beat ``b`` carries the probabilities of
    experts ``b·lanes .. b·lanes + lanes − 1``; lanes past ``E − 1`` in the last beat are
    ignored. The unit keeps a sorted list of the ``k`` best (score, index) pairs and merges each
    beat into it in one cycle::

        items = list[0..k−1] ++ beat[0..lanes−1]      (list first: lower indices)
        rank(i) = #{j : j before i}                  (a total order, see below)
        list'[r] = the item of rank r, r < k

    ``a`` comes before ``b`` when ``a.score > b.score``, or when the scores are equal and ``a``
    has the lower expert index (the golden tie rule); items of the list always have lower indices
    than items of the beat, and lane ``l`` a lower index than lane ``l + 1``. Ranks use
    ``(k + lanes)²/2`` comparators; the merge is combinational into the list registers.

    Parameters
    ----------
    num_experts : int
        Row length E, 1..64.
    k : int
        Experts kept per row, 1..min(4, E).
    lanes : int
        Probabilities per beat.
    score_width : int
        Width of a (signed) probability; 16 for the ``prob`` format SQ(1,15).

    Members
    -------
    i : In(stream.Signature(probs_layout(lanes, score_width)))
        Probability beats, rows back to back. Ready except on the last beat of a row while the
        previous row's result still waits on ``o``.
    o : Out(stream.Signature(route_layout(num_experts, k, score_width)))
        One routing per row, :attr:`latency` cycles after the row's last beat is transferred.
        Respects back pressure; the payload is registered.
    """

    def __init__(self, *, num_experts, k, lanes, score_width=16):
        check_moe_shape(num_experts, k)
        _positive_int("lanes", lanes)
        _positive_int("score_width", score_width)
        self._num_experts = num_experts
        self._k = k
        self._lanes = lanes
        self._score_width = score_width
        super().__init__({
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
        """Beats of one row, ``ceil(E / lanes)``."""
        return -(-self._num_experts // self._lanes)

    @property
    def latency(self):
        """Cycles from the transfer of a row's last beat to its routing on ``o``."""
        return 1

    def elaborate(self, platform):
        m = Module()
        k, lanes, E = self._k, self._lanes, self._num_experts
        beats = self.beats_per_row
        idx_shape = unsigned(bits_for(E - 1))
        score_shape = signed(self._score_width)

        beat = Signal(range(beats), name="beat")
        last_beat = Signal()
        m.d.comb += last_beat.eq(beat == beats - 1)

        top_valid = [Signal(name=f"top_valid{r}") for r in range(k)]
        top_score = [Signal(score_shape, name=f"top_score{r}") for r in range(k)]
        top_idx = [Signal(idx_shape, name=f"top_idx{r}") for r in range(k)]

        # Items: the list (k entries), then the beat's lanes.
        tail = E - (beats - 1) * lanes           # valid lanes of the last beat
        items = []
        for r in range(k):
            items.append((top_valid[r], top_score[r], top_idx[r]))
        for lane in range(lanes):
            v = Signal(name=f"lane_valid{lane}")
            if lane < tail:
                m.d.comb += v.eq(1)
            else:
                m.d.comb += v.eq(~last_beat)
            ix = Signal(idx_shape, name=f"lane_idx{lane}")
            m.d.comb += ix.eq(beat * lanes + lane)
            items.append((v, self.i.payload[lane], ix))
        n = len(items)

        def before(a, b):
            """Whether item a (lower index than item b) comes before item b."""
            va, sa, _ = items[a]
            vb, sb, _ = items[b]
            if a < k and b < k:
                return Const(1, 1)      # the list is sorted, valid entries first
            return (va & (~vb | (sa >= sb))) | (~va & ~vb)

        prec = {}
        for a in range(n):
            for b in range(a + 1, n):
                s = Signal(name=f"before_{a}_{b}")
                m.d.comb += s.eq(before(a, b))
                prec[a, b] = s

        rank_bits = bits_for(n - 1)
        ranks = []
        for i in range(n):
            terms = [prec[j, i] for j in range(i)] + [~prec[i, j] for j in range(i + 1, n)]
            rk = Signal(rank_bits, name=f"rank{i}")
            if terms:
                m.d.comb += rk.eq(sum(t.as_unsigned() for t in terms))
            ranks.append(rk)

        new_valid = [Signal(name=f"new_valid{r}") for r in range(k)]
        new_score = [Signal(score_shape, name=f"new_score{r}") for r in range(k)]
        new_idx = [Signal(idx_shape, name=f"new_idx{r}") for r in range(k)]
        for r in range(k):
            for i, (v, s, ix) in enumerate(items):
                # Ranks form a permutation, so exactly one item matches each slot.
                with m.If(ranks[i] == r):
                    m.d.comb += [new_valid[r].eq(v), new_score[r].eq(s), new_idx[r].eq(ix)]

        accept = Signal()
        m.d.comb += [
            self.i.ready.eq(~last_beat | ~self.o.valid | self.o.ready),
            accept.eq(self.i.valid & self.i.ready),
        ]
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(accept):
            m.d.sync += beat.eq(0 if beats == 1 else beat + 1)
            with m.If(last_beat):
                m.d.sync += [
                    beat.eq(0),
                    self.o.valid.eq(1),
                ]
                for r in range(k):
                    m.d.sync += [
                        top_valid[r].eq(0),
                        self.o.payload.idx[r].eq(new_idx[r]),
                        self.o.payload.score[r].eq(new_score[r]),
                    ]
            with m.Else():
                for r in range(k):
                    m.d.sync += [
                        top_valid[r].eq(new_valid[r]),
                        top_score[r].eq(new_score[r]),
                        top_idx[r].eq(new_idx[r]),
                    ]
        return m
