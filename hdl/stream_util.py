# SPDX-License-Identifier: BSD-2-Clause
"""Stream building blocks shared by every block in ``hdl/``."""

from amaranth.hdl import Module, Shape
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from ._checks import check_int

__all__ = ["Queue"]


class Queue(wiring.Component):
    """First-in first-out queue with typed :mod:`amaranth.lib.stream` ports.

    A thin wrapper around :class:`amaranth.lib.fifo.SyncFIFOBuffered` (``buffered=True``) or
    :class:`amaranth.lib.fifo.SyncFIFO` (``buffered=False``). Those FIFOs only take an integer
    width; this wrapper takes any shape (for example a :class:`~amaranth.lib.data.StructLayout`) and
    gives the ports that shape, so payload fields stay named on both sides.

    Parameters
    ----------
    shape : shape-like
        Payload shape.
    depth : int
        Number of entries the queue holds; a positive integer.
    buffered : bool
        If true (the default), the storage is read through a synchronous port, which maps to
        block RAM, and an entry written to an empty queue appears on ``o`` two cycles later.
        If false, the storage is read asynchronously (LUT RAM or registers) and the entry appears
        on the next cycle.

    Members
    -------
    i : In(stream.Signature(shape))
        Input. ``i.ready`` is high while the queue has space; it does not depend on ``i.valid``.
    o : Out(stream.Signature(shape))
        Output, in the order of input. Respects back pressure; ``o.valid`` and ``o.payload`` do not
        depend on ``o.ready`` in the same cycle.
    level : Out(range(depth + 1))
        Number of entries currently held (including one shown on ``o``).
    """

    def __init__(self, shape, depth, *, buffered=True):
        try:
            width = Shape.cast(shape).width
        except TypeError as e:
            raise TypeError(f"shape must be a shape-like object, not {shape!r}") from e
        check_int("depth", depth)
        if not isinstance(buffered, bool):
            raise TypeError(f"buffered must be a bool, not {buffered!r}")
        self._shape = shape
        self._width = width
        self._depth = depth
        self._buffered = buffered
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
        })

    @property
    def shape(self):
        """Payload shape."""
        return self._shape

    @property
    def depth(self):
        """Number of entries."""
        return self._depth

    @property
    def buffered(self):
        """Whether the storage is read synchronously (block RAM friendly)."""
        return self._buffered

    def elaborate(self, platform):
        m = Module()
        fifo_cls = fifo.SyncFIFOBuffered if self._buffered else fifo.SyncFIFO
        m.submodules.fifo = storage = fifo_cls(width=self._width, depth=self._depth)
        m.d.comb += [
            storage.w_data.eq(self.i.payload),
            storage.w_en.eq(self.i.valid),
            self.i.ready.eq(storage.w_rdy),
            self.o.payload.eq(storage.r_data),
            self.o.valid.eq(storage.r_rdy),
            storage.r_en.eq(self.o.ready),
            self.level.eq(storage.level),
        ]
        return m
