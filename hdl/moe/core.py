# SPDX-License-Identifier: BSD-2-Clause
"""The MoE layer engine as a stand-alone core: AXI4-Lite registers, the DMA's AXI4 read ports,
and one more AXI4 port that loads ``u`` and ``x`` from DDR and stores ``x`` back.

It follows the host contract of :mod:`sim.verilator` (``ctrl``, ``m_axi_<i>``, ``status``,
``irq``), so the same layer runs on the Verilator back end (``python -m sim.bench moe
--backend verilator``) and on the Amaranth simulator.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from ..axi import AXI4LiteSignature, AXI4Signature
from ..axi_master import AXI4ReadMaster, AXI4WriteMaster
from ..csr import Access, Field, Register, RegisterBank, RegisterMap
from .layer import MoELayer, MoELayerConfig, Status

__all__ = ["Op", "MoECore", "moe_core_regmap", "STATUS_LAYOUT"]

#: Layout of :attr:`MoECore.status`.
STATUS_LAYOUT = data.StructLayout({"busy": 1, "done": 1, "error": 1})


class Op(enum.Enum, shape=2):
    """Operation started by a write of ``control.start``."""
    #: Run the MoE layer (``task``, ``layer``, ``image_base``, ``image_bytes``).
    RUN = 0
    #: Load ``u`` from ``ddr_addr`` into the activation buffer.
    LOAD_U = 1
    #: Load ``x`` from ``ddr_addr``.
    LOAD_X = 2
    #: Store ``x`` to ``ddr_addr``.
    STORE_X = 3


_COUNTERS = ("cycles", "stall_cycles", "first_stall_cycles", "router_wait_cycles",
             "route_cycles", "bytes_fetched", "router_bytes")


def moe_core_regmap():
    """The register map of :class:`MoECore` (32-bit registers)."""
    rm = RegisterMap(data_width=32, addr_width=8, prefix="MOE", name="moe_core",
                     doc="MoE layer engine, stand-alone")
    rm.add(Register("control", [
        Field("start", 1, Access.WPULSE, doc="start the operation `op`"),
        Field("op", 2, Access.RW, offset=4, enum=Op, doc="operation (see Op)"),
    ]))
    rm.add(Register("task", [Field("value", 8, Access.RW, doc="task id")]))
    rm.add(Register("layer", [Field("value", 8, Access.RW, doc="MoE layer index")]))
    rm.add(Register("image_base", [Field("value", 32, Access.RW, doc="weight image address")]))
    rm.add(Register("image_bytes", [Field("value", 32, Access.RW, doc="weight image size")]))
    rm.add(Register("ddr_addr", [Field("value", 32, Access.RW,
                                       doc="DDR address of u or x for LOAD_U/LOAD_X/STORE_X")]))
    rm.add(Register("state", [
        Field("busy", 1, Access.R, doc="an operation runs"),
        Field("done", 1, Access.R, doc="the last operation ended"),
        Field("error", 1, Access.R, doc="the last operation failed"),
        Field("status", 3, Access.R, offset=4, enum=Status, doc="layer status"),
    ]))
    for name in _COUNTERS:
        rm.add(Register(name, [Field("value", 32, Access.R, doc=f"layer counter {name}")]))
    rm.add(Register("n_used", [Field("value", 8, Access.R, doc="used experts")]))
    rm.add(Register("op_cycles", [Field("value", 32, Access.R,
                                        doc="cycles of the last operation")]))
    return rm


class MoECore(wiring.Component):
    """:class:`~hdl.moe.layer.MoELayer` with registers and a DDR load/store port.

    Activation-buffer plan: ``u`` at word 0, ``x`` at ``N·row_words``, the engine's scratch
    after it. In DDR, ``u`` and ``x`` are N rows of ``row_words`` activation-buffer words; each
    word takes :attr:`bus_words_per_word` bus words (little-endian, element ``j`` of a word at
    bits ``j·elem_bits``; unused high bits of the last bus word are zero).

    Parameters
    ----------
    config : MoELayerConfig

    Members
    -------
    ctrl : In(AXI4LiteSignature(8, 32))
        Registers (:func:`moe_core_regmap`).
    m_axi_0 … m_axi_{P−1} : Out(AXI4Signature)
        The expert-weight DMA's read ports.
    m_axi_{P} : Out(AXI4Signature)
        Loads of ``u``/``x`` and the store of ``x``.
    status : Out(STATUS_LAYOUT)
        ``busy``, ``done`` (sticky until the next start), ``error``.
    irq : Out(1)
        ``done``.
    """

    def __init__(self, config):
        if not isinstance(config, MoELayerConfig):
            raise TypeError(f"config must be a MoELayerConfig, not {config!r}")
        self._config = config
        self._layer = MoELayer(config)
        self._regmap = moe_core_regmap()
        bus = AXI4Signature(addr_width=config.addr_width, data_width=config.data_width,
                            id_width=1)
        members = {"ctrl": In(AXI4LiteSignature(addr_width=8, data_width=32))}
        for p in range(config.ports + 1):
            members[f"m_axi_{p}"] = Out(bus)
        members["status"] = Out(STATUS_LAYOUT)
        members["irq"] = Out(1)
        super().__init__(members)

    @property
    def config(self):
        """The :class:`MoELayerConfig`."""
        return self._config

    @property
    def layer(self):
        """The :class:`~hdl.moe.layer.MoELayer` (a submodule)."""
        return self._layer

    @property
    def regmap(self):
        """The :class:`~hdl.csr.RegisterMap`."""
        return self._regmap

    @property
    def bus_words_per_word(self):
        """Bus words per activation-buffer word in DDR."""
        a = self._config.compute.array
        return -(-a.buffer_lanes * a.elem_bits // self._config.data_width)

    @property
    def matrix_words(self):
        """Activation-buffer words of ``u`` (or ``x``)."""
        return self._config.tokens * self._config.row_words

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        P = cfg.ports
        dw = cfg.data_width
        BPW = self.bus_words_per_word
        NW = self.matrix_words
        m.submodules.layer = layer = self._layer
        m.submodules.regs = bank = RegisterBank(self._regmap)
        connect(m, flipped(self.ctrl), bank.bus)
        regs = bank.regs
        for p in range(P):
            connect(m, flipped(getattr(self, f"m_axi_{p}")), getattr(layer, f"bus{p}"))

        io = getattr(self, f"m_axi_{P}")
        rd = AXI4ReadMaster(addr_width=cfg.addr_width, data_width=dw, id_width=1,
                            max_burst_beats=cfg.max_burst_beats, max_outstanding=4)
        wr = AXI4WriteMaster(addr_width=cfg.addr_width, data_width=dw, id_width=1,
                             max_burst_beats=cfg.max_burst_beats, max_outstanding=4)
        m.submodules.loader = rd
        m.submodules.storer = wr
        # One manager port shared by the loader (read channels) and the storer (write channels).
        for name in ("araddr", "arlen", "arsize", "arburst", "arid", "arcache", "arprot",
                     "arvalid", "rready"):
            m.d.comb += getattr(io, name).eq(getattr(rd.bus, name))
        for name in ("arready", "rdata", "rresp", "rlast", "rid", "rvalid"):
            m.d.comb += getattr(rd.bus, name).eq(getattr(io, name))
        for name in ("awaddr", "awlen", "awsize", "awburst", "awid", "awcache", "awprot",
                     "awvalid", "wdata", "wstrb", "wlast", "wvalid", "bready"):
            m.d.comb += getattr(io, name).eq(getattr(wr.bus, name))
        for name in ("awready", "wready", "bresp", "bid", "bvalid"):
            m.d.comb += getattr(wr.bus, name).eq(getattr(io, name))

        n_tok, wd = cfg.tokens, cfg.row_words
        m.d.comb += [
            layer.task.eq(regs.task.value),
            layer.layer.eq(regs.layer.value),
            layer.image_base.eq(regs.image_base.value),
            layer.image_bytes.eq(regs.image_bytes.value),
            layer.u_base.eq(0),
            layer.x_base.eq(n_tok * wd),
            layer.scratch_base.eq(2 * n_tok * wd),
        ]
        for name in _COUNTERS:
            m.d.comb += getattr(regs, name).value.eq(getattr(layer, name))
        m.d.comb += regs.n_used.value.eq(layer.n_used)

        busy = Signal()
        done = Signal()
        error = Signal()
        op = Signal(Op)
        op_cycles = Signal(32)
        index = Signal(range(NW + 1))
        part = Signal(range(BPW + 1))
        word = Signal(BPW * dw)
        base = Signal.like(layer.ext.w_addr)
        m.d.comb += [
            self.status.busy.eq(busy),
            self.status.done.eq(done),
            self.status.error.eq(error),
            self.irq.eq(done),
            regs.state.busy.eq(busy),
            regs.state.done.eq(done),
            regs.state.error.eq(error),
            regs.state.status.eq(layer.status),
            regs.op_cycles.value.eq(op_cycles),
            rd.cmd.payload.addr.eq(regs.ddr_addr.value),
            rd.cmd.payload.beats.eq(NW * BPW),
            wr.cmd.payload.addr.eq(regs.ddr_addr.value),
            wr.cmd.payload.beats.eq(NW * BPW),
        ]
        with m.If(busy):
            m.d.sync += op_cycles.eq(op_cycles + 1)

        with m.FSM(name="op"):
            with m.State("IDLE"):
                with m.If(regs.control.start):
                    m.d.sync += [op.eq(regs.control.op), busy.eq(1), done.eq(0), error.eq(0),
                                 op_cycles.eq(0), index.eq(0), part.eq(0)]
                    with m.Switch(regs.control.op):
                        with m.Case(Op.RUN):
                            m.next = "RUN"
                        with m.Case(Op.LOAD_U):
                            m.d.sync += base.eq(0)
                            m.next = "LOAD_CMD"
                        with m.Case(Op.LOAD_X):
                            m.d.sync += base.eq(n_tok * wd)
                            m.next = "LOAD_CMD"
                        with m.Case(Op.STORE_X):
                            m.d.sync += base.eq(n_tok * wd)
                            m.next = "STORE_CMD"

            with m.State("RUN"):
                m.d.comb += layer.start.eq(1)
                m.next = "RUN_WAIT"
            with m.State("RUN_WAIT"):
                with m.If(layer.done):
                    m.d.sync += [busy.eq(0), done.eq(1),
                                 error.eq(layer.status != Status.OK)]
                    m.next = "IDLE"

            with m.State("LOAD_CMD"):
                m.d.comb += rd.cmd.valid.eq(1)
                with m.If(rd.cmd.ready):
                    m.next = "LOAD"
            with m.State("LOAD"):
                # Bus words → one activation-buffer word every BPW words → ext write.
                m.d.comb += rd.data.ready.eq(1)
                with m.If(rd.data.valid):
                    new = word if BPW == 1 else word[dw:]
                    m.d.sync += word.eq(rd.data.payload.data if BPW == 1 else
                                        (rd.data.payload.data << ((BPW - 1) * dw)) | new)
                    m.d.sync += part.eq(part + 1)
                    with m.If(part == BPW - 1):
                        m.d.sync += part.eq(0)
                        m.next = "LOAD_WRITE"
            with m.State("LOAD_WRITE"):
                m.d.comb += [layer.ext.w_addr.eq(base + index), layer.ext.w_en.eq(1),
                             layer.ext.w_data.eq(word)]
                m.d.sync += index.eq(index + 1)
                m.next = "LOAD"
                with m.If(index == NW - 1):
                    m.d.sync += [busy.eq(0), done.eq(1), error.eq(rd.error)]
                    m.next = "IDLE"

            with m.State("STORE_CMD"):
                m.d.comb += wr.cmd.valid.eq(1)
                with m.If(wr.cmd.ready):
                    m.next = "STORE_READ"
            with m.State("STORE_READ"):
                m.d.comb += layer.ext.r_addr.eq(base + index)
                m.next = "STORE_LATCH"
            with m.State("STORE_LATCH"):
                m.d.sync += [word.eq(layer.ext.r_data), part.eq(0)]
                m.next = "STORE_PUSH"
            with m.State("STORE_PUSH"):
                m.d.comb += [wr.data.valid.eq(1), wr.data.payload.eq(word[:dw])]
                with m.If(wr.data.ready):
                    m.d.sync += [word.eq(word >> dw), part.eq(part + 1)]
                    with m.If(part == BPW - 1):
                        m.d.sync += index.eq(index + 1)
                        m.next = "STORE_READ"
                        with m.If(index == NW - 1):
                            m.next = "STORE_WAIT"
            with m.State("STORE_WAIT"):
                with m.If(wr.done | wr.error):
                    m.d.sync += [busy.eq(0), done.eq(1), error.eq(wr.error)]
                    m.next = "IDLE"
        return m
