# SPDX-License-Identifier: BSD-2-Clause
"""hdl/verilog.py writes the same Verilog as Amaranth's own converter."""

from amaranth.back import verilog as amaranth_verilog
from amaranth.hdl import Module, Signal, signed
from amaranth.lib.memory import Memory
from hypothesis import given, settings
from hypothesis import strategies as st

from hdl import verilog


def _design(width, depth, init, signed_rows):
    m = Module()
    shape = signed(width) if signed_rows else width
    m.submodules.mem = mem = Memory(shape=shape, depth=depth, init=init)
    m.submodules.empty = empty = Memory(shape=width, depth=depth, init=[])
    addr = Signal(range(depth))
    out = Signal(2 * width)
    rd, rd2 = mem.read_port(), empty.read_port()
    wr = empty.write_port()
    m.d.comb += [rd.addr.eq(addr), rd2.addr.eq(addr), wr.addr.eq(addr), wr.data.eq(addr),
                 wr.en.eq(1), out.eq(rd.data + rd2.data)]
    m.d.sync += addr.eq(addr + 1)
    return m, [addr, out]


@settings(max_examples=8, deadline=None)
@given(data=st.data(), width=st.integers(1, 19), depth=st.integers(1, 9),
       signed_rows=st.booleans())
def test_same_verilog_as_amaranth(data, width, depth, signed_rows):
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed_rows else (0, (1 << width) - 1)
    init = data.draw(st.lists(st.integers(lo, hi), max_size=depth))
    m, ports = _design(width, depth, init, signed_rows)
    ours = verilog.convert(m, name="top", ports=ports, emit_src=False)
    m, ports = _design(width, depth, init, signed_rows)
    theirs = amaranth_verilog.convert(m, name="top", ports=ports, emit_src=False)
    assert ours == theirs


def test_the_patch_is_removed_afterwards():
    from amaranth.back import rtlil
    before = rtlil.ModuleEmitter.emit_memory
    with verilog.fast_memory_init():
        assert rtlil.ModuleEmitter.emit_memory is not before
    assert rtlil.ModuleEmitter.emit_memory is before
