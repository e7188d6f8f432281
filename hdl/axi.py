# SPDX-License-Identifier: BSD-2-Clause
"""AXI4 and AXI4-Lite interface signatures.

Both signatures are *flat*: every AXI wire is one member named exactly as in the AMBA AXI
specification (``araddr``, ``arlen``, ``rdata``, ``bresp``, ...). A Verilog wrapper can then name
its ports ``m_axi_<member>`` (or ``s_axil_<member>``) with a plain loop, which is what Vivado's
interface inference expects.

Both signatures are written from the **manager's** (master's) point of view: the address and write
data channels are ``Out``, the read data and write response channels are ``In``. A subordinate
(slave) port is ``In(AXI4Signature(...))``, or equivalently ``Out(AXI4Signature(...).flip())``.

Only the wires this project needs are present. ``AxLOCK``, ``AxQOS``, ``AxREGION`` and the user
wires are left out; Vivado ties missing optional inputs of an interconnect to their defaults.
"""

from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from ._checks import check_int

__all__ = ["Burst", "Resp", "AXI4Signature", "AXI4LiteSignature"]


class Burst(enum.Enum, shape=2):
    """Burst type (``AxBURST``)."""
    FIXED = 0
    INCR = 1
    WRAP = 2


class Resp(enum.Enum, shape=2):
    """Response (``RRESP``/``BRESP``)."""
    OKAY = 0
    EXOKAY = 1
    SLVERR = 2
    DECERR = 3


class AXI4Signature(wiring.Signature):
    """AXI4 (full) manager signature, flat, with AMBA member names.

    Parameters
    ----------
    addr_width : int
        Byte address width, 12..64. At least 12 so that the 4 KiB page rule is meaningful.
    data_width : int
        Data bus width in bits: one of 32, 64, 128, 256, 512, 1024.
    id_width : int
        Transaction ID width, 1..32.

    Members
    -------
    awaddr, awlen, awsize, awburst, awid, awcache, awprot, awvalid : Out
        Write address channel. ``awlen`` is 8 bits (beats − 1), ``awsize`` 3 bits (log2 bytes per
        beat), ``awburst`` 2 bits (:class:`Burst`), ``awcache`` 4 bits, ``awprot`` 3 bits.
    awready : In(1)
        Write address channel ready.
    wdata, wstrb, wlast, wvalid : Out
        Write data channel; ``wstrb`` has one bit per data byte.
    wready : In(1)
        Write data channel ready.
    bresp, bid, bvalid : In
        Write response channel; ``bresp`` is a :class:`Resp`.
    bready : Out(1)
        Write response channel ready.
    araddr, arlen, arsize, arburst, arid, arcache, arprot, arvalid : Out
        Read address channel, laid out as the write address channel.
    arready : In(1)
        Read address channel ready.
    rdata, rresp, rlast, rid, rvalid : In
        Read data channel.
    rready : Out(1)
        Read data channel ready.

    Every channel follows the AXI handshake: a transfer happens on each cycle where ``xvalid`` and
    ``xready`` are both high; once ``xvalid`` is high, it and the payload are held until the
    transfer; a source never waits for ``xready`` before raising ``xvalid``.
    """

    DATA_WIDTHS = (32, 64, 128, 256, 512, 1024)

    def __init__(self, *, addr_width, data_width, id_width):
        check_int("addr_width", addr_width, 12, 64)
        if isinstance(data_width, bool) or not isinstance(data_width, int):
            raise TypeError(f"data_width must be an integer, not {data_width!r}")
        if data_width not in self.DATA_WIDTHS:
            raise ValueError(f"data_width must be one of {', '.join(map(str, self.DATA_WIDTHS))}, "
                             f"not {data_width!r}")
        check_int("id_width", id_width, 1, 32)
        self._addr_width = addr_width
        self._data_width = data_width
        self._id_width = id_width

        members = {}
        for ch in ("aw", "ar"):
            members.update({
                f"{ch}addr":  Out(addr_width),
                f"{ch}len":   Out(8),
                f"{ch}size":  Out(3),
                f"{ch}burst": Out(2),
                f"{ch}id":    Out(id_width),
                f"{ch}cache": Out(4),
                f"{ch}prot":  Out(3),
                f"{ch}valid": Out(1),
                f"{ch}ready": In(1),
            })
        members.update({
            "wdata":  Out(data_width),
            "wstrb":  Out(data_width // 8),
            "wlast":  Out(1),
            "wvalid": Out(1),
            "wready": In(1),
            "bresp":  In(2),
            "bid":    In(id_width),
            "bvalid": In(1),
            "bready": Out(1),
            "rdata":  In(data_width),
            "rresp":  In(2),
            "rlast":  In(1),
            "rid":    In(id_width),
            "rvalid": In(1),
            "rready": Out(1),
        })
        super().__init__(members)

    @property
    def addr_width(self):
        """Byte address width."""
        return self._addr_width

    @property
    def data_width(self):
        """Data bus width in bits."""
        return self._data_width

    @property
    def id_width(self):
        """Transaction ID width."""
        return self._id_width

    @property
    def bytes_per_beat(self):
        """Number of bytes in one data beat (``data_width // 8``)."""
        return self._data_width // 8

    @property
    def size(self):
        """Value of ``AxSIZE`` for full-width beats (log2 of :attr:`bytes_per_beat`)."""
        return exact_log2(self.bytes_per_beat)

    def __eq__(self, other):
        return (type(other) is type(self) and
                other.addr_width == self.addr_width and
                other.data_width == self.data_width and
                other.id_width == self.id_width)

    def __repr__(self):
        return (f"AXI4Signature(addr_width={self.addr_width}, data_width={self.data_width}, "
                f"id_width={self.id_width})")


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite manager signature, flat, with AMBA member names.

    Parameters
    ----------
    addr_width : int
        Byte address width, 1..64.
    data_width : int
        Data bus width in bits: 32 or 64.

    Members
    -------
    awaddr, awprot, awvalid : Out
        Write address channel (``awprot`` is 3 bits).
    awready : In(1)
        Write address channel ready.
    wdata, wstrb, wvalid : Out
        Write data channel; ``wstrb`` has one bit per data byte.
    wready : In(1)
        Write data channel ready.
    bresp, bvalid : In
        Write response channel; ``bresp`` is a :class:`Resp`.
    bready : Out(1)
        Write response channel ready.
    araddr, arprot, arvalid : Out
        Read address channel.
    arready : In(1)
        Read address channel ready.
    rdata, rresp, rvalid : In
        Read data channel.
    rready : Out(1)
        Read data channel ready.

    Every channel follows the AXI valid/ready handshake (see :class:`AXI4Signature`).
    """

    DATA_WIDTHS = (32, 64)

    def __init__(self, *, addr_width, data_width):
        check_int("addr_width", addr_width, 1, 64)
        if isinstance(data_width, bool) or not isinstance(data_width, int):
            raise TypeError(f"data_width must be an integer, not {data_width!r}")
        if data_width not in self.DATA_WIDTHS:
            raise ValueError(f"data_width must be 32 or 64, not {data_width!r}")
        self._addr_width = addr_width
        self._data_width = data_width
        super().__init__({
            "awaddr":  Out(addr_width),
            "awprot":  Out(3),
            "awvalid": Out(1),
            "awready": In(1),
            "wdata":   Out(data_width),
            "wstrb":   Out(data_width // 8),
            "wvalid":  Out(1),
            "wready":  In(1),
            "bresp":   In(2),
            "bvalid":  In(1),
            "bready":  Out(1),
            "araddr":  Out(addr_width),
            "arprot":  Out(3),
            "arvalid": Out(1),
            "arready": In(1),
            "rdata":   In(data_width),
            "rresp":   In(2),
            "rvalid":  In(1),
            "rready":  Out(1),
        })

    @property
    def addr_width(self):
        """Byte address width."""
        return self._addr_width

    @property
    def data_width(self):
        """Data bus width in bits."""
        return self._data_width

    def __eq__(self, other):
        return (type(other) is type(self) and
                other.addr_width == self.addr_width and
                other.data_width == self.data_width)

    def __repr__(self):
        return f"AXI4LiteSignature(addr_width={self.addr_width}, data_width={self.data_width})"
