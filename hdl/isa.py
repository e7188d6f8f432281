# SPDX-License-Identifier: BSD-2-Clause
"""The accelerator's program format: one definition for the hardware decoder and the host
compiler.

The model compiler (:mod:`hdl.compiler`) writes a *program* and a *weight image* into DDR; the
accelerator (:mod:`hdl.top`) fetches the program and executes it. Every record below is an
:class:`amaranth.lib.data.StructLayout`, so that the hardware decodes exactly the bits the compiler
encodes (:func:`encode` and :func:`decode` use the same layouts). All records are little-endian
bit fields: field ``f`` of a record occupies bits ``offset(f) …`` of the record read as one
little-endian integer.

Program
-------
``PROGRAM_LEN`` bytes at ``PROGRAM_ADDR`` (a multiple of 32): one 256-bit *header*
(:data:`header_layout`) followed by 256-bit *instructions* (:data:`instr_layout`), each two bus
words of 128 bits, low word first. Execution starts with the first instruction and stops at
``END``; a program that runs out of words before ``END`` is a program error.

=============  ========================================================================
opcode         what
=============  ========================================================================
``END``        the frame is complete (every earlier STORE has been acknowledged)
``LOAD``       copy ``words`` activation-buffer words from DDR (``INPUT`` or ``WEIGHTS``
               plus ``offset``) into the activation buffer (abuf) at ``addr``
``STORE``      copy ``words`` abuf words from ``addr`` to DDR (``OUTPUT`` + ``offset``) and
               wait for the write responses
``MATMUL``     one compute-unit command (:func:`hdl.systolic.unit.command_layout`); weights
               and biases not read from abuf come from the parameter stream
``LAYERNORM``  ``rows`` rows of ``n`` elements from abuf through the LayerNorm unit back into
               abuf; gains, biases and ``eps`` come from the parameter stream
``SOFTMAX``    start ``rows`` rows of ``n`` elements through the softmax unit (runtime
               ``scale`` and input format index ``fmt``), in place or elsewhere in abuf; the
               engine runs beside the next instructions until one waits for it (every
               instruction but a MATMUL without ``WAIT_SOFTMAX``)
``MOE``        one MoE layer (:class:`hdl.moe.layer.MoELayer`): layer ``layer``, router of
               the task in the ``TASK`` register, ``u``, ``x`` and scratch in abuf; the
               model's MoE shape (``tokens``, ``dim``, ``hidden``, ``num_experts``, ``k``,
               ``num_tasks``, ``num_layers``), within the engine's maxima
=============  ========================================================================

An abuf *word* holds ``L = lcm(rows, cols)`` 16-bit elements; row ``i`` of a matrix at word
``base`` with ``stride`` words per row starts at word ``base + i·stride`` (see
:mod:`hdl.systolic.unit`). DDR copies (LOAD/STORE) move whole abuf words, ``2·L`` bytes each, as
little-endian 16-bit elements; a copy reads or writes ``ceil(2·L·words / 16)`` bus words.

Parameter stream
----------------
Dense-layer weights, biases and LayerNorm parameters are not addressed by the instructions: they
form one *parameter stream* at the start of the weight image (``pstream_bytes`` long), in the
order the program consumes them, and the accelerator reads it ahead of execution (decoupled
access). The accelerator reads it through ``S = stream_ports`` AXI ports at once
(:class:`hdl.config.AccelConfig`), one bus word from each per cycle, so it is stored as ``S``
interleaved *sub-streams*: bus word ``i`` of the stream is word ``i div S`` of sub-stream
``i mod S``, and sub-stream ``j`` occupies bytes ``j·pstream_bytes/S …`` of the stream's place
(:func:`interleave_stream` and :func:`deinterleave_stream`). ``S`` consecutive bus words form a
*stream word*; ``pstream_bytes`` is a whole number of stream words. The stream is a sequence of
*segments*, each starting on a stream word: a 128-bit segment header
(:data:`segment_layout`), zero-padded to one stream word, and its payload, padded to whole
stream words:

==========  ===================================================================================
kind        payload (``n`` items)
==========  ===================================================================================
``BIAS``    ``n`` bias words of ``cols`` biases, each a 32-bit little-endian two's complement
            integer (the 24-bit ``bias`` format sign-extended), one word per N-tile, zero past N
``WEIGHT``  ``n`` weight words of ``rows`` 16-bit weights, in the compute unit's stream order
            (:class:`hdl.moe.layout.SystolicOrder`)
``LNPARAM`` ``n`` LayerNorm elements in beats of ``lanes``: per beat ``lanes`` gains then
            ``lanes`` biases (16-bit, ``ln_param`` format); ``eps`` is the unit's ``eps_int``
==========  ===================================================================================

The payload length in bus words, ``words`` (a multiple of ``S``), is stored in the header and
checked.
"""

import enum as py_enum

import numpy as np
from amaranth.lib import data

from ._checks import check_int

__all__ = ["MAGIC", "VERSION", "SEGMENT_MAGIC", "INSTR_BITS", "INSTR_BYTES", "HEADER_BYTES",
           "Opcode", "Base", "Segment", "MatmulFlags", "header_layout", "instr_layout",
           "segment_layout", "encode", "decode", "encode_header", "decode_header",
           "encode_segment_header", "decode_segment_header", "interleave_stream",
           "deinterleave_stream", "disassemble"]

#: ``magic`` of the program header: ASCII "M3VP", little-endian.
MAGIC = int.from_bytes(b"M3VP", "little")
#: Version of this format (2: the parameter stream is stored as interleaved sub-streams;
#: 3: MOE carries the model's MoE shape).
VERSION = 3
#: ``magic`` byte of every parameter-stream segment header.
SEGMENT_MAGIC = 0xA5
#: Bits of an instruction (and of the header).
INSTR_BITS = 256
#: Bytes of an instruction.
INSTR_BYTES = INSTR_BITS // 8
#: Bytes of the program header.
HEADER_BYTES = INSTR_BYTES


class Opcode(py_enum.IntEnum):
    """Instruction opcodes (``opcode`` field)."""
    END = 0
    LOAD = 1
    STORE = 2
    MATMUL = 3
    LAYERNORM = 4
    SOFTMAX = 5
    MOE = 6


class Base(py_enum.IntEnum):
    """The DDR base register a LOAD or STORE is relative to (``base`` field)."""
    INPUT = 0
    WEIGHTS = 1
    OUTPUT = 2


class Segment(py_enum.IntEnum):
    """Kinds of parameter-stream segment (``kind`` field)."""
    BIAS = 1
    WEIGHT = 2
    LNPARAM = 3


class MatmulFlags(py_enum.IntFlag):
    """``flags`` of a MATMUL (the compute unit's command bits)."""
    W_FROM_ABUF = 1
    W_TRANSPOSED = 2
    BIAS = 4
    GELU = 8
    ROW_SCALE = 16
    ACCUMULATE = 32
    #: Wait until the softmax engine is idle before the product starts (it reads the
    #: probabilities a SOFTMAX writes; without it the product runs beside the softmax).
    WAIT_SOFTMAX = 64


#: The program header (the first 256 bits of the program).
header_layout = data.StructLayout({
    "magic": 32,
    "version": 8,
    "num_tasks": 8,            # valid TASK ids are below it
    "input_bytes": 32,         # bytes read from INPUT_ADDR
    "output_bytes": 32,        # bytes written at OUTPUT_ADDR
    "weights_bytes": 40,       # bytes of the weight image at WEIGHTS_ADDR
    "pstream_bytes": 32,       # bytes of the parameter stream (at WEIGHTS_ADDR + 0)
    "moe_offset": 32,          # offset of the MoE image (hdl.moe.layout) in the weight image
    "moe_bytes": 32,           # its size
    "reserved": 8,
})

_transfer = data.StructLayout({
    "base": 8,                 # Base
    "offset": 40,              # byte offset from the base register
    "addr": 16,                # abuf word address
    "words": 24,               # abuf words
})

_rows = data.StructLayout({
    "rows": 16,
    "n": 16,                   # elements per row
    "in_base": 16, "in_stride": 16,
    "out_base": 16, "out_stride": 16,
    "scale": 32,               # SOFTMAX: golden.qref.softmax_scale_int(scale)
    "fmt": 8,                  # SOFTMAX: index of the input format in SoftmaxConfig.in_formats
})

_matmul = data.StructLayout({
    "m": 16, "k": 16, "n": 16,
    "x_base": 16, "x_stride": 16,
    "w_base": 16, "w_stride": 16,
    "y_base": 16, "y_stride": 16,
    "flags": 8,                # MatmulFlags
    "q_shift": 8, "b_shift": 8, "out_bits": 8,
})

_moe = data.StructLayout({
    "layer": 8,
    "u_base": 16, "x_base": 16, "scratch_base": 16,
    # The model's MoE shape (hdl.moe.layer.SHAPE_FIELDS), checked against the engine's maxima.
    "tokens": 16, "dim": 16, "hidden": 16, "num_experts": 8, "k": 8, "num_tasks": 8,
    "num_layers": 8,
})

#: One instruction: ``opcode`` and the operands of that opcode.
instr_layout = data.StructLayout({
    "opcode": 8,
    "args": data.UnionLayout({
        "transfer": _transfer,     # LOAD, STORE
        "rows": _rows,             # LAYERNORM, SOFTMAX
        "matmul": _matmul,
        "moe": _moe,
        "raw": INSTR_BITS - 8,
    }),
})

#: The header of a parameter-stream segment (one 128-bit bus word).
segment_layout = data.StructLayout({
    "magic": 8,                # SEGMENT_MAGIC
    "kind": 8,                 # Segment
    "n": 24,                   # items (bias words, weight words, LayerNorm elements)
    "words": 32,               # payload bus words that follow
    "eps": 32,                 # LNPARAM: eps_int
    "reserved": 24,
})

assert header_layout.size == INSTR_BITS
assert instr_layout.size == INSTR_BITS
assert segment_layout.size == 128

_ARGS = {Opcode.LOAD: "transfer", Opcode.STORE: "transfer", Opcode.MATMUL: "matmul",
         Opcode.LAYERNORM: "rows", Opcode.SOFTMAX: "rows", Opcode.MOE: "moe"}

_FIELD_LAYOUTS = {"transfer": _transfer, "rows": _rows, "matmul": _matmul, "moe": _moe}


def _width(shape):
    from amaranth.hdl import Shape
    return Shape.cast(shape).width


def _fields_of(layout, values, what):
    out = {}
    for name, value in values.items():
        if name not in layout.members:
            raise ValueError(f"{what} has no field {name!r}; fields: "
                             f"{', '.join(layout.members)}")
        width = _width(layout.members[name])
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{what} field {name!r} must be an integer, not {value!r}")
        value = int(value)
        if not 0 <= value < (1 << width):
            raise ValueError(f"{what} field {name!r} = {value} does not fit in {width} bits")
        out[name] = value
    return out


def encode(opcode, **fields):
    """Encode one instruction; return its 32 bytes.

    ``fields`` are the operands of ``opcode`` (see the layouts above); missing ones are 0.
    """
    opcode = Opcode(opcode)
    args = {}
    if opcode in _ARGS:
        view = _ARGS[opcode]
        args = {view: _fields_of(_FIELD_LAYOUTS[view], fields, opcode.name)}
    elif fields:
        raise ValueError(f"{opcode.name} takes no operands")
    bits = instr_layout.const({"opcode": int(opcode), "args": args}).as_value().value
    return bits.to_bytes(INSTR_BYTES, "little")


def decode(raw):
    """Decode 32 bytes into ``(Opcode or int, dict of operands)``.

    An unknown opcode is returned as an ``int`` with the raw operand bits.
    """
    if len(raw) != INSTR_BYTES:
        raise ValueError(f"an instruction is {INSTR_BYTES} bytes, not {len(raw)}")
    c = instr_layout.from_bits(int.from_bytes(bytes(raw), "little"))
    try:
        opcode = Opcode(c.opcode)
    except ValueError:
        return int(c.opcode), {"raw": int(c.args.raw)}
    if opcode not in _ARGS:
        return opcode, {}
    view = _ARGS[opcode]
    sub = getattr(c.args, view)
    return opcode, {name: int(getattr(sub, name)) for name in _FIELD_LAYOUTS[view].members}


def encode_header(**fields):
    """Encode the program header; ``magic`` and ``version`` default to :data:`MAGIC` and
    :data:`VERSION`. Returns 32 bytes."""
    fields.setdefault("magic", MAGIC)
    fields.setdefault("version", VERSION)
    values = _fields_of(header_layout, fields, "header")
    return header_layout.const(values).as_value().value.to_bytes(HEADER_BYTES, "little")


def decode_header(raw):
    """Decode the 32-byte program header into a dict."""
    c = header_layout.from_bits(int.from_bytes(bytes(raw[:HEADER_BYTES]), "little"))
    return {name: int(getattr(c, name)) for name in header_layout.members}


def encode_segment_header(kind, n, words, eps=0):
    """Encode a parameter-stream segment header; returns 16 bytes."""
    values = _fields_of(segment_layout, {"magic": SEGMENT_MAGIC, "kind": int(Segment(kind)),
                                         "n": n, "words": words, "eps": eps}, "segment")
    return segment_layout.const(values).as_value().value.to_bytes(16, "little")


def decode_segment_header(raw):
    """Decode a 16-byte segment header into a dict (``kind`` as :class:`Segment` if known)."""
    c = segment_layout.from_bits(int.from_bytes(bytes(raw[:16]), "little"))
    out = {name: int(getattr(c, name)) for name in segment_layout.members}
    try:
        out["kind"] = Segment(out["kind"])
    except ValueError:
        pass
    return out


def _check_stream(raw, ways, beat_bytes):
    check_int("ways", ways)
    check_int("beat_bytes", beat_bytes)
    raw = bytes(raw)
    if len(raw) % (ways * beat_bytes):
        raise ValueError(f"a stream of {len(raw)} bytes is not a whole number of "
                         f"{ways} × {beat_bytes}-byte stream words")
    return np.frombuffer(raw, dtype=np.uint8)


def interleave_stream(raw, ways, beat_bytes):
    """The parameter stream ``raw`` (bytes, in stream order) as stored in DDR: ``ways``
    sub-streams one after the other, bus word ``i`` of the stream in sub-stream ``i mod ways``.
    ``len(raw)`` must be a multiple of ``ways·beat_bytes``."""
    a = _check_stream(raw, ways, beat_bytes)
    return a.reshape(-1, ways, beat_bytes).transpose(1, 0, 2).tobytes()


def deinterleave_stream(raw, ways, beat_bytes):
    """The inverse of :func:`interleave_stream`: the stream in order from its DDR image."""
    a = _check_stream(raw, ways, beat_bytes)
    return a.reshape(ways, -1, beat_bytes).transpose(1, 0, 2).tobytes()


def disassemble(program):
    """Return the program (bytes) as a list of lines, the header first."""
    program = bytes(program)
    lines = [f"header {decode_header(program)}"]
    for i in range(HEADER_BYTES, len(program) - INSTR_BYTES + 1, INSTR_BYTES):
        op, args = decode(program[i:i + INSTR_BYTES])
        name = op.name if isinstance(op, Opcode) else f"opcode {op}"
        if isinstance(op, Opcode) and op is Opcode.MATMUL:
            args = dict(args, flags=str(MatmulFlags(args["flags"])))
        lines.append(f"{(i - HEADER_BYTES) // INSTR_BYTES:4d}: {name} "
                     + " ".join(f"{k}={v}" for k, v in args.items()))
    return lines
