# SPDX-License-Identifier: BSD-2-Clause
"""Verilog conversion: :func:`amaranth.back.verilog.convert`, with memory initialisers written
in one step.

Amaranth 0.5 writes the initial contents of every memory (``$meminit_v2``) one bit at a time,
through a net object per bit. The accelerator holds about ten million bits of memory (the
activation buffer, the expert-weight banks, the accumulators), so that loop alone took a quarter
of the ``zcu104`` elaboration time. :func:`convert` writes the same RTLIL text, the initialiser
as one binary constant formatted from the rows, and is otherwise Amaranth's ``convert``: the
Verilog is identical (``tests/test_verilog.py`` compares the two).

The faster writer replaces ``amaranth.back.rtlil.ModuleEmitter.emit_memory`` only while
:func:`convert` runs, and only if that method exists with the shape this module expects;
otherwise Amaranth's own writer runs.
"""

import contextlib
import threading

from amaranth.back import rtlil as _rtlil
from amaranth.back import verilog as _verilog
from amaranth.hdl import _nir

__all__ = ["convert", "fast_memory_init"]

_lock = threading.Lock()


def _memory_init_sigspec(cell):
    """The RTLIL constant of a memory's initialiser: row 0 in the least significant bits."""
    width, mask = cell.width, (1 << cell.width) - 1
    bits = "".join(format(row & mask, f"0{width}b") for row in reversed(cell.init))
    return f"{width * len(cell.init)}'{bits}"


def _emit_memory(self, cell_idx, cell):
    # The same cell as ModuleEmitter.emit_memory in Amaranth 0.5, with DATA built at once.
    memory_info = self.memories[cell_idx]
    data = _memory_init_sigspec(cell) if len(cell.init) and cell.width else self.sigspec()
    self.builder.cell("$meminit_v2", ports={
        "ADDR": self.sigspec(),
        "DATA": data,
        "EN": self.sigspec(_nir.Value.ones(cell.width)),
    }, parameters={
        "MEMID": memory_info.memid,
        "ABITS": 0,
        "WIDTH": cell.width,
        "WORDS": cell.depth,
        "PRIORITY": 0,
    }, src_loc=cell.src_loc)


@contextlib.contextmanager
def fast_memory_init():
    """Within this context, memory initialisers are written by :func:`_emit_memory`."""
    emitter = getattr(_rtlil, "ModuleEmitter", None)
    if emitter is None or not callable(getattr(emitter, "emit_memory", None)):
        yield
        return
    with _lock:
        original = emitter.emit_memory
        emitter.emit_memory = _emit_memory
        try:
            yield
        finally:
            emitter.emit_memory = original


def convert(elaboratable, **kwargs):
    """:func:`amaranth.back.verilog.convert` with :func:`fast_memory_init`."""
    with fast_memory_init():
        return _verilog.convert(elaboratable, **kwargs)
