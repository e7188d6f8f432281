# SPDX-License-Identifier: BSD-2-Clause
"""Control and status registers: one definition, three products.

A :class:`RegisterMap` of :class:`Register` objects made of :class:`Field` objects is the single
source of truth for the accelerator's software interface. From it come

* the hardware, :class:`RegisterBank`: a :class:`~amaranth.lib.wiring.Component` with an
  AXI4-Lite subordinate port and one signal per field;
* a C header, :meth:`RegisterMap.c_header` (``#define <PREFIX>_<REG>_OFFSET`` and, per field,
  ``_SHIFT``, ``_WIDTH``, ``_MASK``, ``_RESET`` and enumeration values);
* a JSON description, :meth:`RegisterMap.to_json`.

The design copies the ideas of amaranth-soc's ``csr`` package and of Maia SDR's
``register.py``/``axi4_lite.py`` (typed field access, a builder that assigns addresses, a bridge
from the system bus); it depends on neither, because amaranth-soc is not on PyPI.

Conventions (all of them are visible in the JSON and the header):

* Addresses are **byte** offsets from the base of the register window; every register starts on a
  data-word boundary. A register wider than one data word (a 64-bit counter or DDR address) spans
  consecutive words, low word first, and is aligned to its own size.
* **Wide registers with hardware-driven fields are read low word first.** Reading the low word
  returns the live low bits and, in the same cycle, copies the upper words into a per-register
  shadow; reading an upper word returns the shadow. A 64-bit counter read as LO then HI is
  therefore one consistent snapshot. Wide registers written by software (addresses) have no
  shadow: each word is written on its own, and hardware sees each half as soon as it is written.
* ``wstrb`` is honoured per byte lane for RW fields and for the bits of W-pulse fields.
* The low ``log2(data_width/8)`` address bits are ignored (an unaligned access hits the word that
  contains it).
* An access to a word that no register occupies gets ``SLVERR`` (configurable per bank) with read
  data 0; such a write changes nothing. A write to a register with no writable field is accepted
  with ``OKAY`` and ignored, so that generic "dump and restore" software does not fault.
  ``DECERR`` is left to interconnects (no subordinate at the address), as AMBA intends.
"""

import dataclasses
import enum as py_enum
import json
import keyword
import re

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ._checks import check_int
from .axi import AXI4LiteSignature, Resp

__all__ = ["Access", "Field", "Register", "RegisterMap", "RegisterPortSignature",
           "AXI4LiteTarget", "RegisterBank"]


class Access(py_enum.Enum):
    """Who writes a field, seen from software.

    ``R``
        Read-only; hardware drives the value (a :class:`RegisterBank` input).
    ``RW``
        Read-write; software writes a stored value that hardware reads (a bank output).
    ``WPULSE``
        Write-1-to-pulse: each bit written as 1 produces a one-cycle strobe on the bank output in
        the cycle after the write; the field reads as 0.
    ``CONST``
        Read-only constant (identification, configuration read-back); no hardware signal. The
        value is the field's ``reset``.
    """
    R = "r"
    RW = "rw"
    WPULSE = "wpulse"
    CONST = "const"


_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Attributes of amaranth.lib.wiring interface objects that a member name must not shadow.
_RESERVED = {"signature"}


def _check_name(what, name):
    if not isinstance(name, str) or not _NAME_RE.match(name) or keyword.iskeyword(name) \
            or name in _RESERVED or name.endswith("_"):
        raise ValueError(f"{what} name must be a lowercase identifier (a-z, 0-9, _; starting "
                         f"with a letter; not a Python keyword), not {name!r}")


@dataclasses.dataclass(frozen=True)
class Field:
    """A bit field of a register.

    Parameters
    ----------
    name : str
        Lowercase identifier, unique in its register. The hardware signal is
        ``bank.regs.<register>.<name>``; the C name is ``<PREFIX>_<REGISTER>_<NAME>``.
    width : int
        Width in bits, 1..64.
    access : Access or str
        One of :class:`Access` (or its value: ``"r"``, ``"rw"``, ``"wpulse"``, ``"const"``).
    reset : int
        Value after reset (``RW``), or the constant value (``CONST``). Must be 0 for ``R`` and
        ``WPULSE`` fields.
    doc : str
        One-line description, copied into the JSON and the header.
    offset : int or None
        Bit offset in the register. ``None`` places the field just above the previous one.
    enum : enum.Enum subclass or None
        Names for the field's values (for instance an error code). Exported to JSON and C.
    enum_docs : mapping or None
        Description of each enum member (keyed by member or by member name).
    """
    name: str
    width: int
    access: Access
    reset: int = 0
    doc: str = ""
    offset: int = None
    enum: type = None
    enum_docs: dict = None

    def __post_init__(self):
        _check_name("Field", self.name)
        check_int(f"Field {self.name!r} width", self.width, 1, 64)
        try:
            access = Access(self.access)
        except ValueError:
            raise ValueError(f"Field {self.name!r} access must be one of "
                             f"{', '.join(repr(a.value) for a in Access)}, "
                             f"not {self.access!r}") from None
        object.__setattr__(self, "access", access)
        check_int(f"Field {self.name!r} reset", self.reset, 0, (1 << self.width) - 1)
        if access in (Access.R, Access.WPULSE) and self.reset != 0:
            raise ValueError(f"Field {self.name!r}: a {access.name} field has no reset value; "
                             f"reset must be 0, not {self.reset!r}")
        if self.offset is not None:
            check_int(f"Field {self.name!r} offset", self.offset, 0, 63)
        if not isinstance(self.doc, str):
            raise TypeError(f"Field {self.name!r} doc must be a string, not {self.doc!r}")
        if self.enum is not None:
            if not (isinstance(self.enum, type) and issubclass(self.enum, py_enum.Enum)):
                raise TypeError(f"Field {self.name!r} enum must be an Enum class, "
                                f"not {self.enum!r}")
            for member in self.enum:
                if isinstance(member.value, bool) or not isinstance(member.value, int) \
                        or not 0 <= member.value < (1 << self.width):
                    raise ValueError(f"Field {self.name!r}: enum member {member.name} = "
                                     f"{member.value!r} does not fit in {self.width} bits")
            docs = {}
            for key, text in (self.enum_docs or {}).items():
                docs[key.name if isinstance(key, py_enum.Enum) else str(key)] = str(text)
            unknown = set(docs) - {member.name for member in self.enum}
            if unknown:
                raise ValueError(f"Field {self.name!r}: enum_docs names unknown members "
                                 f"{sorted(unknown)}")
            object.__setattr__(self, "enum_docs", docs)
        elif self.enum_docs:
            raise ValueError(f"Field {self.name!r}: enum_docs given without enum")

    @property
    def mask(self):
        """Mask of the field's bits in its register (``((1 << width) - 1) << offset``)."""
        return ((1 << self.width) - 1) << self.offset

    @property
    def readable(self):
        """Whether reading returns the field's value (``WPULSE`` fields read as 0)."""
        return self.access is not Access.WPULSE

    @property
    def writable(self):
        """Whether software writes change anything (``RW`` and ``WPULSE``)."""
        return self.access in (Access.RW, Access.WPULSE)


class Register:
    """A register: a name, a width and a list of fields.

    Parameters
    ----------
    name : str
        Lowercase identifier, unique in the map (the C name is its uppercase form).
    fields : iterable of Field
        Fields, placed in order; a field without ``offset`` goes just above the previous one.
    doc : str
        Description.
    width : int
        Width in bits, at most 64 (so that C can hold every mask): one data word (32) by
        default, or two (64, for counters and DDR addresses).
    """

    def __init__(self, name, fields, doc="", *, width=32):
        _check_name("Register", name)
        check_int(f"Register {name!r} width", width, 8, 64)
        if not isinstance(doc, str):
            raise TypeError(f"Register {name!r} doc must be a string, not {doc!r}")
        placed = []
        used = 0
        names = set()
        next_bit = 0
        for field in fields:
            if not isinstance(field, Field):
                raise TypeError(f"Register {name!r}: fields must be Field objects, "
                                f"not {field!r}")
            if field.name in names:
                raise ValueError(f"Register {name!r}: duplicate field {field.name!r}")
            names.add(field.name)
            if field.offset is None:
                field = dataclasses.replace(field, offset=next_bit)
            if field.offset + field.width > width:
                raise ValueError(f"Register {name!r}: field {field.name!r} (bits "
                                 f"{field.offset + field.width - 1}..{field.offset}) does not fit "
                                 f"in {width} bits")
            if used & field.mask:
                raise ValueError(f"Register {name!r}: field {field.name!r} overlaps another "
                                 f"field")
            used |= field.mask
            next_bit = field.offset + field.width
            placed.append(field)
        if not placed:
            raise ValueError(f"Register {name!r} has no fields")
        self._name = name
        self._fields = tuple(placed)
        self._doc = doc
        self._width = width

    @property
    def name(self):
        """Register name (lowercase)."""
        return self._name

    @property
    def fields(self):
        """Fields, with their bit offsets resolved."""
        return self._fields

    @property
    def doc(self):
        """Description."""
        return self._doc

    @property
    def width(self):
        """Width in bits."""
        return self._width

    @property
    def reset(self):
        """Value after reset, as read by software (R fields read as 0 here)."""
        value = 0
        for field in self._fields:
            if field.access in (Access.RW, Access.CONST):
                value |= field.reset << field.offset
        return value

    @property
    def hardware_driven(self):
        """Whether any field is driven by hardware (such a wide register has a read shadow)."""
        return any(field.access is Access.R for field in self._fields)

    def field(self, name):
        """Return the field called ``name``."""
        for field in self._fields:
            if field.name == name:
                return field
        raise KeyError(f"Register {self._name!r} has no field {name!r}")

    def __repr__(self):
        return f"Register({self._name!r}, width={self._width}, fields={len(self._fields)})"


class RegisterMap:
    """An ordered set of registers with byte addresses.

    Parameters
    ----------
    data_width : int
        Bus data width: 32 (AXI4-Lite as used here) or 64.
    addr_width : int
        Byte address width of the register window; the map must fit in ``2**addr_width`` bytes.
    prefix : str
        Prefix of every C name (``M3VIT`` gives ``M3VIT_CTRL_OFFSET``).
    name : str
        Name of the block, for the JSON and the header comment.
    doc : str
        Description of the block.
    """

    def __init__(self, *, data_width=32, addr_width=12, prefix="M3VIT", name="m3vit", doc=""):
        if data_width not in (32, 64):
            raise ValueError(f"data_width must be 32 or 64, not {data_width!r}")
        check_int("addr_width", addr_width, exact_log2(data_width // 8) + 1, 32)
        if not isinstance(prefix, str) or not re.match(r"^[A-Z][A-Z0-9_]*$", prefix):
            raise ValueError(f"prefix must be an uppercase C identifier, not {prefix!r}")
        self._data_width = data_width
        self._addr_width = addr_width
        self._prefix = prefix
        self._name = name
        self._doc = doc
        self._regs = {}        # name -> (offset, Register)
        self._next = 0

    @property
    def data_width(self):
        """Bus data width in bits."""
        return self._data_width

    @property
    def word_bytes(self):
        """Bytes per data word."""
        return self._data_width // 8

    @property
    def addr_width(self):
        """Byte address width of the register window."""
        return self._addr_width

    @property
    def prefix(self):
        """Prefix of C names."""
        return self._prefix

    @property
    def name(self):
        """Block name."""
        return self._name

    @property
    def size(self):
        """Bytes from the base to the end of the last register."""
        return max((off + reg.width // 8 for off, reg in self._regs.values()), default=0)

    def add(self, reg, *, offset=None):
        """Add ``reg`` at byte ``offset`` (default: the next free address, aligned to its size).

        Returns ``reg``.
        """
        if not isinstance(reg, Register):
            raise TypeError(f"reg must be a Register, not {reg!r}")
        if reg.width % self._data_width:
            raise ValueError(f"Register {reg.name!r}: width {reg.width} is not a multiple of the "
                             f"data width {self._data_width}")
        if reg.name in self._regs:
            raise ValueError(f"Register {reg.name!r} is already in the map")
        nbytes = reg.width // 8
        align = nbytes if (nbytes & (nbytes - 1)) == 0 else self.word_bytes
        if offset is None:
            offset = -(-self._next // align) * align
        else:
            check_int(f"Register {reg.name!r} offset", offset, 0)
            if offset % align:
                raise ValueError(f"Register {reg.name!r}: offset {offset:#x} is not aligned to "
                                 f"{align} bytes")
        end = offset + nbytes
        if end > (1 << self._addr_width):
            raise ValueError(f"Register {reg.name!r} at {offset:#x} does not fit in the "
                             f"{1 << self._addr_width}-byte window (addr_width="
                             f"{self._addr_width})")
        for other_off, other in self._regs.values():
            if offset < other_off + other.width // 8 and other_off < end:
                raise ValueError(f"Register {reg.name!r} at {offset:#x} overlaps register "
                                 f"{other.name!r} at {other_off:#x}")
        self._regs[reg.name] = (offset, reg)
        self._next = max(self._next, end)
        return reg

    def address_of(self, name):
        """Byte offset of register ``name`` (of its low word, for a wide register)."""
        try:
            return self._regs[name][0]
        except KeyError:
            raise KeyError(f"no register {name!r} in the map") from None

    def __getitem__(self, name):
        try:
            return self._regs[name][1]
        except KeyError:
            raise KeyError(f"no register {name!r} in the map") from None

    def __contains__(self, name):
        return name in self._regs

    def __iter__(self):
        """Registers in address order."""
        for _, reg in sorted(self._regs.values(), key=lambda item: item[0]):
            yield reg

    def __len__(self):
        return len(self._regs)

    def words(self):
        """Every occupied data word: a list of ``(byte_offset, register, word_index)``."""
        out = []
        for reg in self:
            base = self.address_of(reg.name)
            for k in range(reg.width // self._data_width):
                out.append((base + k * self.word_bytes, reg, k))
        return out

    # -- exports -------------------------------------------------------------------------------

    def word_names(self, reg):
        """C-style names of the words of ``reg``: ``[NAME]`` or ``[NAME_LO, NAME_HI]`` etc."""
        n = reg.width // self._data_width
        upper = reg.name.upper()
        if n == 1:
            return [upper]
        if n == 2:
            return [f"{upper}_LO", f"{upper}_HI"]
        return [f"{upper}_W{k}" for k in range(n)]

    def to_dict(self):
        """Describe the map as plain data (what :meth:`to_json` writes)."""
        regs = []
        for reg in self:
            base = self.address_of(reg.name)
            fields = []
            for f in reg.fields:
                entry = {"name": f.name, "offset": f.offset, "width": f.width,
                         "access": f.access.value, "reset": f.reset, "mask": f.mask,
                         "doc": f.doc}
                if f.enum is not None:
                    entry["enum"] = [{"name": member.name, "value": member.value,
                                      "doc": f.enum_docs.get(member.name, "")}
                                     for member in f.enum]
                fields.append(entry)
            regs.append({
                "name": reg.name,
                "offset": base,
                "width": reg.width,
                "doc": reg.doc,
                "reset": reg.reset,
                "read_shadow": reg.width > self._data_width and reg.hardware_driven,
                "words": [{"name": wname, "offset": base + k * self.word_bytes}
                          for k, wname in enumerate(self.word_names(reg))],
                "fields": fields,
            })
        return {
            "name": self._name,
            "doc": self._doc,
            "prefix": self._prefix,
            "data_width": self._data_width,
            "addr_width": self._addr_width,
            "size": self.size,
            "conventions": {
                "addressing": "byte offsets from the window base; registers are word aligned",
                "wide_registers": "low word first; reading the low word of a register with "
                                  "read_shadow latches its upper words for the following reads",
                "unmapped": "SLVERR with read data 0; writes ignored",
                "read_only_write": "OKAY, ignored",
                "wpulse": "writing 1 to a bit gives a one-cycle strobe; reads as 0",
            },
            "registers": regs,
        }

    def to_json(self, indent=2):
        """Return the JSON description of the map."""
        return json.dumps(self.to_dict(), indent=indent) + "\n"

    def c_header(self, *, guard=None, source="hdl/csr.py"):
        """Return a C header with the offset of every register and word, and field constants.

        For every register ``REG``: ``<P>_REG_OFFSET`` (and ``<P>_REG_LO_OFFSET``/``_HI_OFFSET``
        for a 64-bit register). For every field ``FLD``: ``<P>_REG_FLD_SHIFT``, ``_WIDTH``,
        ``_MASK`` (in register position) and ``_RESET``; for enumerated fields, one
        ``<P>_REG_FLD_<MEMBER>`` per member.
        """
        p = self._prefix
        guard = guard or f"{p}_REGS_H"
        lines = [
            "/* SPDX-License-Identifier: BSD-2-Clause */",
            f"/* {self._name} register map. Generated by {source}; do not edit. */",
            "/*",
            " * Offsets are in bytes from the base of the register window. A 64-bit register is",
            " * two 32-bit words, low word first; for counters read _LO first: that read latches",
            " * the high word, so _LO then _HI is one consistent value. Unmapped words answer",
            " * SLVERR. Writing 1 to a W-pulse bit triggers it; such bits read as 0.",
            " */",
            f"#ifndef {guard}",
            f"#define {guard}",
            "",
            f"#define {p}_REGS_DATA_WIDTH {self._data_width}",
            f"#define {p}_REGS_ADDR_WIDTH {self._addr_width}",
            f"#define {p}_REGS_SIZE 0x{self.size:x}u",
        ]

        def lit(value, width):
            if width > 32:
                return f"0x{value:x}ull"
            return f"0x{value:x}u"

        for reg in self:
            base = self.address_of(reg.name)
            upper = f"{p}_{reg.name.upper()}"
            lines.append("")
            kind = f"{reg.width}-bit"
            if reg.width > self._data_width and reg.hardware_driven:
                kind += ", read the low word first"
            lines.append(f"/* {reg.name.upper()} ({kind}): {_c_comment(reg.doc)} */")
            lines.append(f"#define {upper}_OFFSET 0x{base:03x}u")
            if reg.width > self._data_width:
                for k, wname in enumerate(self.word_names(reg)):
                    lines.append(f"#define {p}_{wname}_OFFSET "
                                 f"0x{base + k * self.word_bytes:03x}u")
            lines.append(f"#define {upper}_RESET {lit(reg.reset, reg.width)}")
            for f in reg.fields:
                fu = f"{upper}_{f.name.upper()}"
                doc = f" /* {f.access.value}: {_c_comment(f.doc)} */" if f.doc else ""
                lines.append(f"#define {fu}_SHIFT {f.offset}{doc}")
                lines.append(f"#define {fu}_WIDTH {f.width}")
                lines.append(f"#define {fu}_MASK {lit(f.mask, reg.width)}")
                lines.append(f"#define {fu}_RESET {lit(f.reset, reg.width)}")
                if f.enum is not None:
                    for member in f.enum:
                        mdoc = f.enum_docs.get(member.name, "")
                        mdoc = f" /* {_c_comment(mdoc)} */" if mdoc else ""
                        lines.append(f"#define {fu}_{member.name.upper()} {member.value}u{mdoc}")
        lines += ["", f"#endif /* {guard} */", ""]
        return "\n".join(lines)


def _c_comment(text):
    return " ".join(text.replace("*/", "* /").replace("/*", "/ *").split())


# -- hardware ----------------------------------------------------------------------------------

class RegisterPortSignature(wiring.Signature):
    """A simple word-addressed register port, seen from the bus side (the AXI4-Lite target).

    Parameters
    ----------
    addr_width : int
        Word address width.
    data_width : int
        Data width in bits.

    Members
    -------
    r_addr : Out(addr_width)
        Word address of the read; valid while ``r_stb`` is high.
    r_stb : Out(1)
        One cycle per read. ``r_data`` and ``r_err`` are sampled at the end of this cycle, and a
        read side effect (the shadow latch of a wide register) happens at the same clock edge.
    r_data : In(data_width)
        Read data, a combinational function of ``r_addr``.
    r_err : In(1)
        High when ``r_addr`` is not mapped.
    w_addr, w_data, w_strb : Out
        Word address, data and byte strobes of the write; valid while ``w_stb`` is high.
    w_stb : Out(1)
        One cycle per write; the register file updates at the end of the cycle.
    w_err : In(1)
        High when ``w_addr`` is not mapped (sampled at the end of the ``w_stb`` cycle).
    """

    def __init__(self, *, addr_width, data_width):
        check_int("addr_width", addr_width, 1, 64)
        check_int("data_width", data_width, 8, 1024)
        self._addr_width = addr_width
        self._data_width = data_width
        super().__init__({
            "r_addr": Out(addr_width),
            "r_stb":  Out(1),
            "r_data": In(data_width),
            "r_err":  In(1),
            "w_addr": Out(addr_width),
            "w_stb":  Out(1),
            "w_data": Out(data_width),
            "w_strb": Out(data_width // 8),
            "w_err":  In(1),
        })

    @property
    def addr_width(self):
        """Word address width."""
        return self._addr_width

    @property
    def data_width(self):
        """Data width in bits."""
        return self._data_width

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_width == self.addr_width and
                other.data_width == self.data_width)

    def __repr__(self):
        return (f"RegisterPortSignature(addr_width={self.addr_width}, "
                f"data_width={self.data_width})")


class AXI4LiteTarget(wiring.Component):
    """AXI4-Lite subordinate that turns bus transactions into :class:`RegisterPortSignature`
    reads and writes.

    One write and one read are handled at a time; reads and writes proceed independently.

    * **Write.** AW and W are accepted independently, in either order or together
      (``awready``/``wready`` are high whenever the respective holding register is empty). When
      both are held and no write response is pending, the write is performed (``w_stb``) and
      ``bvalid`` rises in the next cycle. ``bvalid``/``bresp`` are held until ``bready``. Earliest
      response: B two cycles after AW and W arrive together.
    * **Read.** AR is accepted when no read is held or pending (``arready``); the read is
      performed in the next cycle (``r_stb``) and ``rvalid`` rises in the cycle after.
      ``rvalid``/``rdata``/``rresp`` are held until ``rready``.
    * ``bresp``/``rresp`` are ``OKAY``, or ``unmapped_resp`` when the port reports an error.
    * ``awprot``/``arprot`` are ignored. The low ``log2(data_width/8)`` address bits are ignored.

    No ``valid`` depends on a ``ready`` (all of them come from registers), and every ``ready``
    depends on internal state only.

    Parameters
    ----------
    addr_width : int
        Byte address width of the bus.
    data_width : int
        32 or 64.
    unmapped_resp : Resp
        Response to an access that the port flags (``SLVERR`` by default).

    Members
    -------
    bus : In(AXI4LiteSignature(addr_width, data_width))
        The AXI4-Lite subordinate port.
    port : Out(RegisterPortSignature(addr_width - log2(data_width/8), data_width))
        Register-side port.
    """

    def __init__(self, *, addr_width, data_width=32, unmapped_resp=Resp.SLVERR):
        self._bus_sig = AXI4LiteSignature(addr_width=addr_width, data_width=data_width)
        self._lsb = exact_log2(data_width // 8)
        if addr_width <= self._lsb:
            raise ValueError(f"addr_width must exceed {self._lsb} for a {data_width}-bit bus, "
                             f"not {addr_width!r}")
        self._unmapped_resp = Resp(unmapped_resp)
        super().__init__({
            "bus": In(self._bus_sig),
            "port": Out(RegisterPortSignature(addr_width=addr_width - self._lsb,
                                              data_width=data_width)),
        })

    def elaborate(self, platform):
        m = Module()
        bus, port = self.bus, self.port
        err = Const(self._unmapped_resp.value, 2)
        ok = Const(Resp.OKAY.value, 2)

        # -- write path --
        aw_full = Signal(name="aw_full")
        aw_addr = Signal(len(port.w_addr), name="aw_addr")
        w_full = Signal(name="w_full")
        w_data = Signal(len(port.w_data), name="w_data_q")
        w_strb = Signal(len(port.w_strb), name="w_strb_q")
        b_valid = Signal(name="b_valid")
        b_resp = Signal(2, name="b_resp")

        m.d.comb += [
            bus.awready.eq(~aw_full),
            bus.wready.eq(~w_full),
            bus.bvalid.eq(b_valid),
            bus.bresp.eq(b_resp),
            port.w_addr.eq(aw_addr),
            port.w_data.eq(w_data),
            port.w_strb.eq(w_strb),
        ]
        with m.If(bus.awvalid & ~aw_full):
            m.d.sync += [aw_full.eq(1), aw_addr.eq(bus.awaddr[self._lsb:])]
        with m.If(bus.wvalid & ~w_full):
            m.d.sync += [w_full.eq(1), w_data.eq(bus.wdata), w_strb.eq(bus.wstrb)]
        with m.If(aw_full & w_full & ~b_valid):
            m.d.comb += port.w_stb.eq(1)
            m.d.sync += [
                aw_full.eq(0),
                w_full.eq(0),
                b_valid.eq(1),
                b_resp.eq(Mux(port.w_err, err, ok)),
            ]
        with m.If(b_valid & bus.bready):
            m.d.sync += b_valid.eq(0)

        # -- read path --
        ar_full = Signal(name="ar_full")
        ar_addr = Signal(len(port.r_addr), name="ar_addr")
        r_valid = Signal(name="r_valid")
        r_data = Signal(len(bus.rdata), name="r_data_q")
        r_resp = Signal(2, name="r_resp")

        m.d.comb += [
            bus.arready.eq(~ar_full & ~r_valid),
            bus.rvalid.eq(r_valid),
            bus.rdata.eq(r_data),
            bus.rresp.eq(r_resp),
            port.r_addr.eq(ar_addr),
        ]
        with m.If(bus.arvalid & ~ar_full & ~r_valid):
            m.d.sync += [ar_full.eq(1), ar_addr.eq(bus.araddr[self._lsb:])]
        with m.If(ar_full):
            m.d.comb += port.r_stb.eq(1)
            m.d.sync += [
                ar_full.eq(0),
                r_valid.eq(1),
                r_data.eq(Mux(port.r_err, 0, port.r_data)),
                r_resp.eq(Mux(port.r_err, err, ok)),
            ]
        with m.If(r_valid & bus.rready):
            m.d.sync += r_valid.eq(0)
        return m


class RegisterBank(wiring.Component):
    """The registers of a :class:`RegisterMap`, behind an AXI4-Lite subordinate port.

    Each field of each register becomes a signal ``regs.<register>.<field>``:

    * ``R`` fields are inputs (hardware drives them; reads return their current value);
    * ``RW`` fields are outputs, registered, initialised to the field's ``reset``;
    * ``WPULSE`` fields are outputs, registered, high for exactly one cycle (the cycle after the
      write) in every bit that a write set to 1;
    * ``CONST`` fields have no signal.

    Registers without an ``R``, ``RW`` or ``WPULSE`` field have no member under ``regs``.

    Timing: a write takes effect (RW value changes, pulse rises) at the clock edge that ends the
    write's ``w_stb`` cycle; see :class:`AXI4LiteTarget` for the bus-side latency. A read returns
    the value of an ``R`` field sampled one cycle after the AR handshake.

    Parameters
    ----------
    regmap : RegisterMap
        The map; it must not change after the bank is built.
    unmapped_resp : Resp
        Response to accesses of unmapped words (``SLVERR`` by default).

    Members
    -------
    bus : In(AXI4LiteSignature(regmap.addr_width, regmap.data_width))
        The AXI4-Lite subordinate port.
    regs : Out(Signature({register: Out(Signature({field: In(w) or Out(w)}))}))
        One sub-interface per register with hardware-visible fields, as above.
    """

    def __init__(self, regmap, *, unmapped_resp=Resp.SLVERR):
        if not isinstance(regmap, RegisterMap):
            raise TypeError(f"regmap must be a RegisterMap, not {regmap!r}")
        if len(regmap) == 0:
            raise ValueError("regmap has no registers")
        self._regmap = regmap
        self._unmapped_resp = Resp(unmapped_resp)
        reg_members = {}
        for reg in regmap:
            members = {}
            for f in reg.fields:
                if f.access is Access.R:
                    members[f.name] = In(f.width)
                elif f.access is Access.RW:
                    members[f.name] = Out(f.width, init=f.reset)
                elif f.access is Access.WPULSE:
                    members[f.name] = Out(f.width)
            if members:
                reg_members[reg.name] = Out(wiring.Signature(members))
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=regmap.addr_width,
                                        data_width=regmap.data_width)),
            "regs": Out(wiring.Signature(reg_members)),
        })

    @property
    def regmap(self):
        """The register map."""
        return self._regmap

    def elaborate(self, platform):
        m = Module()
        regmap = self._regmap
        dw = regmap.data_width
        m.submodules.target = target = AXI4LiteTarget(
            addr_width=regmap.addr_width, data_width=dw, unmapped_resp=self._unmapped_resp)
        wiring.connect(m, wiring.flipped(self.bus), target.bus)
        port = target.port

        # The value of each register as software reads it (W-pulse bits read as 0).
        values = {}
        shadows = {}
        for reg in regmap:
            sigs = getattr(self.regs, reg.name, None)
            pieces = []
            bit = 0
            for f in sorted(reg.fields, key=lambda f: f.offset):
                if f.offset > bit:
                    pieces.append(Const(0, f.offset - bit))
                if f.access is Access.CONST:
                    pieces.append(Const(f.reset, f.width))
                elif f.access is Access.WPULSE:
                    pieces.append(Const(0, f.width))
                else:
                    pieces.append(getattr(sigs, f.name))
                bit = f.offset + f.width
            if bit < reg.width:
                pieces.append(Const(0, reg.width - bit))
            values[reg.name] = Cat(*pieces)
            if reg.width > dw and reg.hardware_driven:
                shadows[reg.name] = Signal(reg.width - dw, name=f"{reg.name}_shadow")

        # W-pulse outputs are low unless written in the previous cycle.
        for reg in regmap:
            sigs = getattr(self.regs, reg.name, None)
            for f in reg.fields:
                if f.access is Access.WPULSE:
                    m.d.sync += getattr(sigs, f.name).eq(0)

        byte_mask = Cat(*(port.w_strb[i].replicate(8) for i in range(dw // 8)))
        words = regmap.words()
        lsb = exact_log2(regmap.word_bytes)

        # -- reads: a combinational decode of r_addr, sampled by the target in the r_stb cycle --
        with m.Switch(port.r_addr):
            for offset, reg, k in words:
                with m.Case(offset >> lsb):
                    if reg.name in shadows:
                        if k == 0:
                            m.d.comb += port.r_data.eq(values[reg.name][:dw])
                            with m.If(port.r_stb):
                                m.d.sync += shadows[reg.name].eq(values[reg.name][dw:])
                        else:
                            m.d.comb += port.r_data.eq(shadows[reg.name][(k - 1) * dw:k * dw])
                    else:
                        m.d.comb += port.r_data.eq(values[reg.name][k * dw:(k + 1) * dw])
            with m.Default():
                m.d.comb += port.r_err.eq(1)

        # -- writes: byte lanes honoured; a write to a read-only word is accepted and ignored --
        with m.Switch(port.w_addr):
            for offset, reg, k in words:
                with m.Case(offset >> lsb):
                    sigs = getattr(self.regs, reg.name, None)
                    lo_word, hi_word = k * dw, (k + 1) * dw
                    for f in reg.fields:
                        if not f.writable:
                            continue
                        lo = max(f.offset, lo_word)
                        hi = min(f.offset + f.width, hi_word)
                        if lo >= hi:
                            continue
                        target_bits = getattr(sigs, f.name)[lo - f.offset:hi - f.offset]
                        data = port.w_data[lo - lo_word:hi - lo_word]
                        mask = byte_mask[lo - lo_word:hi - lo_word]
                        with m.If(port.w_stb):
                            if f.access is Access.RW:
                                m.d.sync += target_bits.eq((target_bits & ~mask) | (data & mask))
                            else:
                                m.d.sync += target_bits.eq(data & mask)
            with m.Default():
                m.d.comb += port.w_err.eq(1)
        return m
