# SPDX-License-Identifier: BSD-2-Clause
"""The accelerator's register map: the one definition behind the hardware registers, the C header
(``m3vit_regs.h``) and the JSON description (``m3vit_regs.json``).

Layout (byte offsets; every register is described field by field in the generated files):

=========  ==============================================================================
``0x000``  ``id``, ``version``, ``ctrl``, ``status``, ``irq_enable``, ``task``, ``scratch``,
           ``program_len``
``0x020``  64-bit DDR addresses: ``weights_addr``, ``program_addr``, ``input_addr``,
           ``output_addr`` (low word first)
``0x040``  configuration read-back (constants): ``hw_array``, ``hw_model``, ``hw_model2``,
           ``hw_axi``, ``hw_clock_khz``
``0x100``  64-bit counters, one per entry of ``counters`` (read the low word first)
=========  ==============================================================================

Software protocol (what :mod:`hdl.top` implements behind these registers):

1. Write ``task``, the four addresses and ``program_len``; optionally ``irq_enable``.
2. Write ``ctrl.start`` = 1. ``status.busy`` rises; ``status.done``/``status.error`` clear.
3. Wait for ``status.done`` (or the interrupt, if enabled). If ``status.error`` is set,
   ``status.error_code`` is an :class:`ErrorCode`.
4. ``ctrl.irq_clear`` drops the interrupt; ``ctrl.soft_reset`` aborts a task and returns the
   datapath to idle (registers keep their values); ``ctrl.counters_clear`` zeroes the counters.
"""

from amaranth.lib import enum

from ._checks import check_int
from .csr import Field, Register, RegisterMap

__all__ = ["ACCEL_ID", "REGMAP_VERSION", "ErrorCode", "ERROR_CODE_DOCS", "DEFAULT_COUNTERS",
           "accelerator_regmap"]

#: Value of the ``id`` register: ASCII "M3VT".
ACCEL_ID = 0x4D335654

#: Version of this register map (major, minor, patch); the major number changes when an offset
#: or field changes meaning.
REGMAP_VERSION = (1, 0, 0)


class ErrorCode(enum.Enum, shape=8):
    """Value of ``status.error_code`` when ``status.error`` is set (see :data:`ERROR_CODE_DOCS`).
    """
    NONE = 0
    TASK_OUT_OF_RANGE = 1
    MISALIGNED_ADDRESS = 2
    OVERLAPPING_REGIONS = 3
    START_WHILE_BUSY = 4
    PROGRAM_ERROR = 5
    AXI_ERROR = 6


#: Meaning of every :class:`ErrorCode`; exported to the JSON and the C header.
ERROR_CODE_DOCS = {
    ErrorCode.NONE: "No error.",
    ErrorCode.TASK_OUT_OF_RANGE: "TASK is not below hw_model.num_tasks.",
    ErrorCode.MISALIGNED_ADDRESS: "A DDR address or PROGRAM_LEN is not a multiple of the AXI "
                                  "beat size, or does not fit the AXI address width.",
    ErrorCode.OVERLAPPING_REGIONS: "The output region overlaps the weights, program or input.",
    ErrorCode.START_WHILE_BUSY: "CTRL.start was written while STATUS.busy was set; the running "
                                "task continues and the start is dropped.",
    ErrorCode.PROGRAM_ERROR: "The model program holds an unknown opcode or an operand out of "
                             "range, or ends before its END instruction.",
    ErrorCode.AXI_ERROR: "A DDR read or write got SLVERR or DECERR.",
}

#: Default 64-bit counters as ``(name, doc)``; all are read-only and driven by hardware.
DEFAULT_COUNTERS = (
    ("cycles", "Clock cycles with STATUS.busy set since the last counters_clear."),
    ("stall_weights", "Cycles the array waited for expert weights (weight DMA behind)."),
    ("stall_ddr_read", "Cycles a DDR read (activations, program) held up the datapath."),
    ("stall_ddr_write", "Cycles a DDR write (results) held up the datapath."),
    ("stall_softmax", "Cycles the sequencer waited for the softmax engine (time not hidden)."),
    ("stall_layernorm", "Cycles the array waited for the layer-norm unit."),
    ("ddr_read_bytes", "Bytes read from DDR over all AXI masters."),
    ("ddr_write_bytes", "Bytes written to DDR over all AXI masters."),
)

_ADDRESSES = (
    ("weights_addr", "DDR byte address of the weight image."),
    ("program_addr", "DDR byte address of the model program (descriptor list) the sequencer "
                     "executes."),
    ("input_addr", "DDR byte address of the input (image patches or tokens)."),
    ("output_addr", "DDR byte address of the output."),
)


def _const(name, width, value, doc, offset=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if not 0 <= value < (1 << width):
        raise ValueError(f"{name} must be an integer in the range 0..{(1 << width) - 1} "
                         f"(it is read back in a {width}-bit field), not {value!r}")
    return Field(name, width, "const", reset=value, doc=doc, offset=offset)


def _counter_list(counters):
    out = []
    for entry in counters:
        if isinstance(entry, str):
            name, doc = entry, ""
        else:
            try:
                name, doc = entry
            except (TypeError, ValueError):
                raise TypeError(f"each counter must be a name or a (name, doc) pair, "
                                f"not {entry!r}") from None
        out.append((name, doc))
    return out


def accelerator_regmap(*, axi_ports, counters=DEFAULT_COUNTERS, array_rows=0, array_cols=0,
                       max_tokens=0, embed_dim=0, num_experts=0, top_k=0, num_tasks=0,
                       axi_data_width=128, clock_khz=0, addr_width=12, prefix="M3VIT"):
    """Build the accelerator's :class:`~hdl.csr.RegisterMap`.

    The configuration arguments are read back by software as constants (0 means "not
    reported"); they do not change the layout, except ``counters``.

    Parameters
    ----------
    axi_ports : int
        Number of AXI4 masters (1..15).
    counters : iterable of str or (str, str)
        64-bit read-only counters, as names or ``(name, doc)`` pairs, in address order from
        ``0x100``. Default :data:`DEFAULT_COUNTERS`.
    array_rows, array_cols : int
        Systolic array size (16-bit fields).
    max_tokens, embed_dim : int
        Largest token count and embedding width the hardware supports (16-bit fields).
    num_experts, top_k, num_tasks : int
        The MoE engine's maxima: experts per MoE layer, experts chosen per token, tasks (8-bit
        fields; a model's own, within them, come with its program).
    axi_data_width : int
        Data width of the AXI masters in bits (read back in bytes, 8-bit field).
    clock_khz : int
        Nominal clock frequency in kHz (32-bit), so that software can turn cycles into time.
    addr_width : int
        Byte address width of the AXI4-Lite window (12: 4 KiB).
    prefix : str
        Prefix of the C names.

    Returns
    -------
    RegisterMap
    """
    check_int("axi_ports", axi_ports, 1, 15)
    if axi_data_width not in (32, 64, 128, 256, 512, 1024):
        raise ValueError(f"axi_data_width must be one of 32, 64, 128, 256, 512, 1024, "
                         f"not {axi_data_width!r}")
    counters = _counter_list(counters)

    rm = RegisterMap(data_width=32, addr_width=addr_width, prefix=prefix, name="m3vit",
                     doc="M3ViT mixture-of-experts ViT accelerator control registers")

    rm.add(Register("id", [_const("value", 32, ACCEL_ID, "ASCII 'M3VT'.")],
                    "Identification constant."), offset=0x000)
    major, minor, patch = REGMAP_VERSION
    rm.add(Register("version", [
        _const("patch", 8, patch, "Patch version."),
        _const("minor", 8, minor, "Minor version: registers added."),
        _const("major", 8, major, "Major version: layout or meaning changed."),
    ], "Register map version."))
    rm.add(Register("ctrl", [
        Field("start", 1, "wpulse", doc="Start the task set up in TASK and the address "
                                        "registers."),
        Field("soft_reset", 1, "wpulse", doc="Abort any task and return the datapath to idle; "
                                             "registers keep their values."),
        Field("irq_clear", 1, "wpulse", doc="Clear the pending interrupt."),
        Field("counters_clear", 1, "wpulse", doc="Zero every counter."),
    ], "Control strobes (write 1 to trigger; read as 0)."))
    rm.add(Register("status", [
        Field("busy", 1, "r", doc="A task is running."),
        Field("done", 1, "r", doc="The last task finished (cleared by start)."),
        Field("error", 1, "r", doc="The last task stopped on an error (cleared by start)."),
        Field("irq", 1, "r", doc="The interrupt is pending."),
        Field("error_code", 8, "r", offset=8, enum=ErrorCode, enum_docs=ERROR_CODE_DOCS,
              doc="Why the last task stopped (ErrorCode), valid when error is set."),
    ], "Accelerator status."))
    rm.add(Register("irq_enable", [
        Field("done", 1, "rw", doc="Interrupt when a task finishes."),
        Field("error", 1, "rw", doc="Interrupt when a task stops on an error."),
    ], "Interrupt enables."))
    rm.add(Register("task", [
        Field("id", 8, "rw", doc="Task to run (selects the task head and expert gating)."),
    ], "Task selection."))
    rm.add(Register("scratch", [
        Field("value", 32, "rw", doc="Free for software; tests bus access."),
    ], "Scratch register."))
    rm.add(Register("program_len", [
        Field("bytes", 32, "rw", doc="Length of the model program in bytes."),
    ], "Model program length."))

    addr_base = 0x020
    for i, (name, doc) in enumerate(_ADDRESSES):
        rm.add(Register(name, [Field("value", 64, "rw", doc=doc)], doc, width=64),
               offset=addr_base + 8 * i)

    rm.add(Register("hw_array", [
        _const("rows", 16, array_rows, "Systolic array rows."),
        _const("cols", 16, array_cols, "Systolic array columns."),
    ], "Configuration read-back: array size."), offset=0x040)
    rm.add(Register("hw_model", [
        _const("max_tokens", 16, max_tokens, "Largest token count per image."),
        _const("num_experts", 8, num_experts, "Most experts per MoE layer."),
        _const("top_k", 4, top_k, "Most experts chosen per token."),
    ], "Configuration read-back: model limits."))
    rm.add(Register("hw_model2", [
        _const("embed_dim", 16, embed_dim, "Largest embedding width."),
        _const("num_tasks", 8, num_tasks, "Most tasks (valid TASK ids are below it and below "
                                          "the program header's)."),
    ], "Configuration read-back: model limits (continued)."))
    rm.add(Register("hw_axi", [
        _const("ports", 4, axi_ports, "Number of AXI4 masters."),
        _const("data_bytes", 8, axi_data_width // 8, "AXI4 master data width in bytes.",
               offset=8),
    ], "Configuration read-back: memory interface."))
    rm.add(Register("hw_clock_khz", [
        _const("value", 32, clock_khz, "Nominal clock in kHz (0: not reported)."),
    ], "Configuration read-back: clock."))

    names = set()
    for i, (name, doc) in enumerate(counters):
        if name in names:
            raise ValueError(f"duplicate counter {name!r}")
        names.add(name)
        if name in rm:
            raise ValueError(f"counter {name!r} clashes with register {name!r}")
        rm.add(Register(name, [Field("value", 64, "r", doc=doc)], doc or f"Counter {name}.",
                        width=64), offset=0x100 + 8 * i if i == 0 else None)
    return rm
