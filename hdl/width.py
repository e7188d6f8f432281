# SPDX-License-Identifier: BSD-2-Clause
"""Width adapters between the AXI data bus and the accelerator's words.

Every width here is a power of two times the other (bus words of 128 bits against weight words of
``rows × 16`` bits, bias words of ``cols × 32``, activation-buffer words of ``L × 16``), and the
low sub-word always comes first (little-endian).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ._checks import check_int

__all__ = ["Unpacker", "Packer", "words_for"]


class _Converter(wiring.Component):
    """The ports and checks that :class:`Unpacker` and :class:`Packer` share."""

    def __init__(self, in_width, out_width, max_count):
        check_int("in_width", in_width)
        check_int("out_width", out_width)
        check_int("max_count", max_count)
        big, small = max(in_width, out_width), min(in_width, out_width)
        if big % small or (big // small) & (big // small - 1):
            raise ValueError(f"widths {in_width} and {out_width} must differ by a power of two")
        self._in, self._out = in_width, out_width
        self._max = max_count
        super().__init__({
            "i": In(stream.Signature(in_width)),
            "o": Out(stream.Signature(out_width)),
            "start": In(1),
            "count": In(range(max_count + 1)),
            "busy": Out(1),
        })


def words_for(count, in_width, out_width):
    """Input words an :class:`Unpacker` consumes for ``count`` output words (Python ints)."""
    if out_width >= in_width:
        return count * (out_width // in_width)
    r = in_width // out_width
    return -(-count // r)


class Unpacker(_Converter):
    """Turn a stream of ``in_width``-bit words into exactly ``count`` ``out_width``-bit words.

    ``start`` (a pulse while idle) loads ``count``; then the unit emits ``count`` words and
    consumes exactly :func:`words_for` input words: with a narrower output, the sub-words of an
    input word come out low first and an input word is taken once its last needed sub-word is
    out (the unused sub-words of the final input word are dropped); with a wider output, each
    output word gathers ``out/in`` input words, the first in the low bits. Respects back
    pressure on both sides; one output word per cycle when the input keeps up.

    Members
    -------
    i : In(stream.Signature(in_width))
    o : Out(stream.Signature(out_width))
    start : In(1)
    count : In(range(max_count + 1))
    busy : Out(1)
        Output words remain.
    """

    def elaborate(self, platform):
        m = Module()
        rem = Signal(range(self._max + 1))
        m.d.comb += self.busy.eq(rem != 0)
        o_go = self.o.valid & self.o.ready
        if self._out <= self._in:
            r = self._in // self._out
            sub = Signal(range(max(r, 2)))
            m.d.comb += [
                self.o.valid.eq(self.i.valid & (rem != 0)),
                self.o.payload.eq(self.i.payload.word_select(sub, self._out) if r > 1
                                  else self.i.payload),
            ]
            with m.If(self.start):
                m.d.sync += [rem.eq(self.count), sub.eq(0)]
            with m.Elif(o_go):
                m.d.sync += [rem.eq(rem - 1), sub.eq(sub + 1)]
                with m.If((sub == r - 1) | (rem == 1)):
                    m.d.comb += self.i.ready.eq(1)
                    m.d.sync += sub.eq(0)
        else:
            r = self._out // self._in
            in_rem = Signal(range(self._max * r + 1))
            idx = Signal(range(r))
            buf = Signal(self._out)
            full = Signal()
            m.d.comb += [
                self.o.valid.eq(full),
                self.o.payload.eq(buf),
                self.i.ready.eq((in_rem != 0) & (~full | self.o.ready)),
            ]
            i_go = self.i.valid & self.i.ready
            with m.If(self.start):
                m.d.sync += [rem.eq(self.count), in_rem.eq(self.count * r), idx.eq(0),
                             full.eq(0)]
            with m.Else():
                with m.If(o_go):
                    m.d.sync += [full.eq(0), rem.eq(rem - 1)]
                with m.If(i_go):
                    m.d.sync += [buf.word_select(idx, self._in).eq(self.i.payload),
                                 idx.eq(Mux(idx == r - 1, 0, idx + 1)), in_rem.eq(in_rem - 1)]
                    with m.If(idx == r - 1):
                        m.d.sync += full.eq(1)
        return m


class Packer(_Converter):
    """Turn ``count`` ``in_width``-bit words into ``out_width``-bit words.

    The mirror of :class:`Unpacker`: with a wider output, ``out/in`` input words make one output
    word (the first in the low bits) and the final, partial output word is padded with zeros;
    with a narrower output, each input word gives ``in/out`` output words. ``start`` loads
    ``count`` (input words).

    Members
    -------
    i : In(stream.Signature(in_width))
    o : Out(stream.Signature(out_width))
    start : In(1)
    count : In(range(max_count + 1))
    busy : Out(1)
        Input words remain to be packed or an output word waits.
    """

    def elaborate(self, platform):
        m = Module()
        rem = Signal(range(self._max + 1))
        o_go = self.o.valid & self.o.ready
        if self._out >= self._in:
            r = self._out // self._in
            idx = Signal(range(max(r, 2)))
            buf = Signal(self._out)
            full = Signal()
            m.d.comb += [
                self.busy.eq((rem != 0) | full),
                self.o.valid.eq(full),
                self.o.payload.eq(buf),
                self.i.ready.eq((rem != 0) & ~full),
            ]
            i_go = self.i.valid & self.i.ready
            with m.If(self.start):
                m.d.sync += [rem.eq(self.count), idx.eq(0), full.eq(0)]
            with m.Else():
                with m.If(o_go):
                    m.d.sync += [full.eq(0), buf.eq(0)]
                with m.If(i_go):
                    if r > 1:
                        m.d.sync += buf.word_select(idx, self._in).eq(self.i.payload)
                    else:
                        m.d.sync += buf.eq(self.i.payload)
                    m.d.sync += [idx.eq(Mux(idx == r - 1, 0, idx + 1)), rem.eq(rem - 1)]
                    with m.If((idx == r - 1) | (rem == 1)):
                        m.d.sync += [full.eq(1), idx.eq(0)]
        else:
            r = self._in // self._out
            sub = Signal(range(max(r, 2)))
            m.d.comb += [
                self.busy.eq(rem != 0),
                self.o.valid.eq(self.i.valid & (rem != 0)),
                self.o.payload.eq(self.i.payload.word_select(sub, self._out)),
            ]
            with m.If(self.start):
                m.d.sync += [rem.eq(self.count), sub.eq(0)]
            with m.Elif(o_go):
                m.d.sync += sub.eq(sub + 1)
                with m.If(sub == r - 1):
                    m.d.comb += self.i.ready.eq(1)
                    m.d.sync += [sub.eq(0), rem.eq(rem - 1)]
        return m
