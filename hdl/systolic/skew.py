# SPDX-License-Identifier: BSD-2-Clause
"""Per-lane delay lines: the input skew and output de-skew of the systolic array (Gemmini's
``MeshWithDelays.scala`` ``shifted``).

A systolic array needs row ``r`` of every input wavefront ``d_r`` cycles after row 0, and
delivers column ``c`` of every result ``h_c`` cycles after column 0. :class:`Skew` delays lane
``i`` by ``delays[i]`` registers; the de-skew is the same block with the complementary delays
``max(h) − h_c``.
"""

from amaranth.hdl import Cat, Module, Shape, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Skew"]


class Skew(wiring.Component):
    """Delay lane ``i`` of a vector by ``delays[i]`` clock cycles.

    With ``reset_less`` (the default, for data) the registers carry no reset, so that Vivado can
    map every delay line onto SRL16/SRL32 shift registers; use ``reset_less=False`` for lanes
    that carry valid or control bits.

    Neither provides nor respects back pressure.

    Parameters
    ----------
    shape : shape-like
        Shape of one lane.
    delays : sequence of int
        Non-negative delay of each lane, in cycles (0: a wire).
    reset_less : bool
        Registers without reset.

    Members
    -------
    i : In(ArrayLayout(shape, len(delays)))
        Input vector.
    o : Out(ArrayLayout(shape, len(delays)))
        Lane ``k`` is ``i[k]`` of ``delays[k]`` cycles ago.
    """

    def __init__(self, shape, delays, *, reset_less=True):
        delays = tuple(delays)
        if not delays:
            raise ValueError("delays must name at least one lane")
        for d in delays:
            if isinstance(d, bool) or not isinstance(d, int) or d < 0:
                raise ValueError(f"delays must be non-negative integers, not {delays!r}")
        self._shape = shape
        self._delays = delays
        self._reset_less = bool(reset_less)
        layout = data.ArrayLayout(shape, len(delays))
        super().__init__({"i": In(layout), "o": Out(layout)})

    @property
    def delays(self):
        """Delay of each lane, in cycles."""
        return self._delays

    @property
    def latency(self):
        """The longest lane delay."""
        return self.latency_of(self._delays)

    @staticmethod
    def latency_of(delays):
        """Latency of a skew with these lane delays (without building one)."""
        return max(delays)

    @property
    def registers(self):
        """Number of lane registers (``sum(delays)``)."""
        return sum(self._delays)

    def elaborate(self, platform):
        m = Module()
        # Stage-wise delay line: stage s is one register holding every lane still in flight
        # after s cycles (those with delay ≥ s). The same flip-flops as one chain per lane, but
        # one signal per stage instead of one per lane and stage.
        width = Shape.cast(self._shape).width
        lanes = list(range(len(self._delays)))
        prev = {k: Value.cast(self.i[k]) for k in lanes}
        taps = {k: prev[k] for k in lanes if self._delays[k] == 0}
        for stage in range(1, self.latency + 1):
            live = [k for k in lanes if self._delays[k] >= stage]
            reg = Signal(width * len(live), name=f"stage{stage}", reset_less=self._reset_less)
            m.d.sync += reg.eq(Cat(prev[k] for k in live))
            prev = {k: reg[n * width:(n + 1) * width] for n, k in enumerate(live)}
            for k in live:
                if self._delays[k] == stage:
                    taps[k] = prev[k]
        for k in lanes:
            m.d.comb += Value.cast(self.o[k]).eq(taps[k])
        return m
