# SPDX-License-Identifier: BSD-2-Clause
"""The accelerator's datapath: the program sequencer and everything it drives.

::

        program (DDR) ──▶ reader ──▶ 256-bit items ──▶ instruction queue ──▶ sequencer
                                                                              │
        ┌──────────────────────────┬───────────────┬──────────────┬──────────┼───────┐
        ▼                          ▼               ▼              ▼          ▼       ▼
     LOAD/STORE engines     LayerNorm engine  softmax engine   MATMUL      MOE     END
        │   ▲                 │ LayerNorm       │ (the MoE       │          │
        │   │                 │                 │  engine's unit)│          │
        ▼   │ ext port        ▼                 ▼                ▼          ▼
    ┌──────── SharedMoELayer: MoE engine + ComputeUnit + abuf + Softmax ───────────┐
    └──────────────────────────────────────────────────────────────────────────────┘
            ▲ w, b (weights, biases)          ▲ LayerNorm parameters
            └──── ParamStream (DDR, read ahead, a bus word per stream port per cycle) ──┘

The sequencer executes one instruction at a time (:mod:`hdl.isa`), except that a SOFTMAX only
starts the softmax engine: the rows go through the softmax unit while the next instructions
run, and every later instruction but a MATMUL without ``WAIT_SOFTMAX`` waits until the engine is
done. So the softmax of one attention head runs beside the products of another, taking the
cycles the compute unit leaves the activation buffer's second read port and its write port
(the compute unit has priority). The parameter stream is read ahead independently, so weights
of the next product arrive while the current one computes. The activation buffer's external
port belongs to the engine of the current instruction (the softmax engine's while it runs).

Errors stop the sequencer with an :class:`hdl.regmap.ErrorCode` (``failed``/``code``); ``END``
raises ``finished``. Both stay until the datapath is reset (:class:`hdl.top.Accelerator` resets
it after every frame, once its AXI ports are quiet). ``halt`` stops the sequencer and the
parameter reads at once (an abort).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from . import isa
from .axi import AXI4Signature
from .axi_master import AXI4ReadMaster
from .axi_port import AXIPortMux
from .engines import LoadEngine, ParamStream, RowEngine, SharedMoELayer, StoreEngine
from .isa import Base, Opcode
from .moe.layer import SHAPE_FIELDS, Status as MoEStatus
from .nonlin.layernorm import LayerNorm
from .regmap import ErrorCode
from .stream_util import Queue
from .systolic.unit import Error as CUError
from .width import Unpacker

__all__ = ["event_layout", "Datapath"]


def event_layout():
    """One-cycle events and levels the datapath reports for the counters."""
    return data.StructLayout({
        "compute_busy": 1,       # the compute unit runs a command
        "moe": 1,                # a MOE instruction is executing
        "stall_weights": 1,      # a MATMUL waits for weights from DDR
        "stall_ddr_read": 1,     # a LOAD waits for DDR data
        "stall_ddr_write": 1,    # a STORE waits for the DDR writes
        "stall_softmax": 1,      # an instruction waits for the softmax engine
        "stall_layernorm": 1,    # a LAYERNORM instruction is executing
        "stall_program": 1,      # the sequencer waits for the next instruction
        "instruction": 1,        # an instruction is dispatched
    })


def _log2(v):
    return (v - 1).bit_length() if v > 1 else 0


class Datapath(wiring.Component):
    """Everything behind the registers: sequencer, engines, compute unit, MoE engine, AXI
    managers (see the module docstring).

    Parameters
    ----------
    config : hdl.config.AccelConfig

    Members
    -------
    go : In(1)
        Pulse (while idle): run the frame described by the inputs below.
    halt : In(1)
        Stop executing (abort); the datapath is reset afterwards.
    task : In(8)
    weights_addr, program_addr, input_addr, output_addr : In(axi_addr_width)
    program_len : In(32)
    finished : Out(1)
        The frame reached END (every STORE is acknowledged).
    failed : Out(1)
        The frame stopped on an error; ``code`` says which.
    code : Out(8)
        An :class:`~hdl.regmap.ErrorCode`.
    events : Out(event_layout())
    moe_stall : Out(32)
        The MoE engine's weight-stall cycles of the MOE instruction that ends in this cycle
        (0 otherwise).
    port<p> : Out(AXI4Signature(axi_addr_width, axi_data_width, axi_id_width))
        The AXI4 ports.
    """

    def __init__(self, config):
        from .config import AccelConfig
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config
        c = config
        aw, dw = c.axi_addr_width, c.axi_data_width
        cc = c.compute
        # One softmax unit for the attention rows and the router's: the MoE engine's.
        self.moe = SharedMoELayer(c.moe, softmax=c.softmax)
        self.layernorm = LayerNorm(c.layernorm)
        self.params = ParamStream(compute=cc, ln_config=c.layernorm,
                                  n_ports=len(c.param_ports), addr_width=aw, data_width=dw,
                                  max_burst_beats=c.max_burst_beats,
                                  max_outstanding=c.max_outstanding,
                                  w_depth=max(c.weight_fifo_words // cc.array.load_words, 2))
        L = c.lanes
        self.load = LoadEngine(lanes=L, addr_bits=cc.addr_bits, addr_width=aw, data_width=dw,
                               ports=c.load_ports,
                               max_burst_beats=c.max_burst_beats,
                               max_outstanding=c.max_outstanding)
        self.store = StoreEngine(lanes=L, addr_bits=cc.addr_bits, addr_width=aw,
                                 data_width=dw, ports=c.store_ports,
                                 max_burst_beats=c.max_burst_beats)
        self.prog_reader = AXI4ReadMaster(addr_width=aw, data_width=dw, id_width=1,
                                          max_burst_beats=c.max_burst_beats, max_outstanding=2)
        lc, sc = c.layernorm, c.softmax
        self.ln_engine = RowEngine(lanes_buffer=L, lanes_unit=lc.lanes, addr_bits=cc.addr_bits,
                                   max_len=lc.max_len, in_width=lc.in_fmt.width,
                                   out_width=lc.out_fmt.width, max_rows=cc.max_m)
        self.sm_engine = RowEngine(lanes_buffer=L, lanes_unit=sc.lanes, addr_bits=cc.addr_bits,
                                   max_len=sc.max_len, in_width=sc.in_width,
                                   out_width=c.numerics.prob.width, max_rows=cc.max_m)
        port_sig = AXI4Signature(addr_width=aw, data_width=dw, id_width=c.axi_id_width)
        members = {
            "go": In(1), "halt": In(1),
            "task": In(8),
            "weights_addr": In(aw), "program_addr": In(aw),
            "input_addr": In(aw), "output_addr": In(aw),
            "program_len": In(32),
            "finished": Out(1), "failed": Out(1), "code": Out(8),
            "events": Out(event_layout()),
            "moe_stall": Out(32),
        }
        for p in range(c.axi_ports):
            members[f"port{p}"] = Out(port_sig)
        super().__init__(members)

    @property
    def config(self):
        """The :class:`~hdl.config.AccelConfig`."""
        return self._config

    @property
    def compute_unit(self):
        """The :class:`~hdl.systolic.unit.ComputeUnit`."""
        return self.moe.compute_unit

    @property
    def ports(self):
        """The AXI4 ports, port 0 first."""
        return [getattr(self, f"port{p}") for p in range(self._config.axi_ports)]

    # -- ports --------------------------------------------------------------------------------

    def _ports(self, m):
        c = self._config
        aw, dw = c.axi_addr_width, c.axi_data_width
        readers = {p: [] for p in range(c.axi_ports)}
        readers[0].append(self.prog_reader.bus)
        for j in range(c.load_ports):
            readers[j].append(getattr(self.load, f"bus{j}"))
        for j in range(c.moe_ports):
            readers[j].append(getattr(self.moe, f"bus{j}"))
        for j, p in enumerate(c.param_ports):
            readers[p].append(getattr(self.params, f"bus{j}"))
        for p in range(c.axi_ports):
            mux = AXIPortMux(len(readers[p]), write=(p < c.store_ports), addr_width=aw,
                             data_width=dw, inner_id_width=1, id_width=c.axi_id_width)
            m.submodules[f"port{p}_mux"] = mux
            for i, bus in enumerate(readers[p]):
                connect(m, bus, getattr(mux, f"r{i}"))
            if p < c.store_ports:
                connect(m, getattr(self.store, f"bus{p}"), mux.w)
            connect(m, flipped(getattr(self, f"port{p}")), mux.bus)

    # -- hardware -----------------------------------------------------------------------------

    def elaborate(self, platform):
        m = Module()
        c = self._config
        cc = c.compute
        a = cc.array
        dw = c.axi_data_width
        lsb = _log2(dw // 8)
        m.submodules.moe = moe = self.moe
        m.submodules.layernorm = ln = self.layernorm
        sm_i, sm_o = self.moe.sm_i, self.moe.sm_o      # the MoE engine's softmax unit
        m.submodules.params = ps = self.params
        m.submodules.load = ld = self.load
        m.submodules.store = st = self.store
        m.submodules.prog_reader = pr = self.prog_reader
        m.submodules.ln_engine = lne = self.ln_engine
        m.submodules.sm_engine = sme = self.sm_engine
        cu = moe.compute_unit
        self._ports(m)

        # -- program: 256-bit items into the instruction queue ---------------------------------
        m.submodules.prog_unpack = pu = Unpacker(dw, isa.INSTR_BITS, (1 << 27) - 1)
        m.submodules.instructions = iq = Queue(isa.INSTR_BITS, 4, buffered=False)
        m.d.comb += [pu.i.valid.eq(pr.data.valid), pu.i.payload.eq(pr.data.payload.data),
                     pr.data.ready.eq(pu.i.ready)]
        connect(m, pu.o, iq.i)
        prog_cmd = Signal()
        m.d.comb += pr.cmd.valid.eq(prog_cmd)
        with m.If(pr.cmd.ready):
            m.d.sync += prog_cmd.eq(0)

        # -- frame registers ------------------------------------------------------------------
        task = Signal(8)
        waddr = Signal.like(self.weights_addr)
        paddr = Signal.like(self.program_addr)
        iaddr = Signal.like(self.input_addr)
        oaddr = Signal.like(self.output_addr)
        plen = Signal(32)
        m.d.comb += [pr.cmd.payload.addr.eq(paddr), pr.cmd.payload.beats.eq(plen >> lsb)]
        hdr = Signal(isa.header_layout)
        ins = Signal(isa.instr_layout)
        code = Signal(8)

        axi_error = Signal()
        m.d.comb += axi_error.eq(pr.error | ld.error | st.error | ps.axi_error)

        # -- the abuf port ----------------------------------------------------------------------
        SEL_NONE, SEL_LOAD, SEL_STORE, SEL_LN, SEL_SM = range(5)
        ext_sel = Signal(range(5))
        reqs = {SEL_LOAD: ld.ext, SEL_STORE: st.ext, SEL_LN: lne.ext, SEL_SM: sme.ext}
        with m.Switch(ext_sel):
            for k, req in reqs.items():
                with m.Case(k):
                    m.d.comb += [moe.ext.r_addr.eq(req.r_addr), moe.ext.w_addr.eq(req.w_addr),
                                 moe.ext.w_en.eq(req.w_en), moe.ext.w_data.eq(req.w_data)]
        rdata = moe.ext.r_data.as_value()
        m.d.comb += [st.ext_rdata.eq(rdata), lne.ext_rdata.eq(rdata), sme.ext_rdata.eq(rdata)]
        # Whether the port takes the selected engine's read and write in this cycle (always
        # while the compute unit is idle; the softmax engine runs beside products).
        m.d.comb += [
            ld.ext_w_ok.eq(moe.ext.w_ok & (ext_sel == SEL_LOAD)),
            lne.ext_r_ok.eq(moe.ext.r_ok & (ext_sel == SEL_LN)),
            lne.ext_w_ok.eq(moe.ext.w_ok & (ext_sel == SEL_LN)),
            sme.ext_r_ok.eq(moe.ext.r_ok & (ext_sel == SEL_SM)),
            sme.ext_w_ok.eq(moe.ext.w_ok & (ext_sel == SEL_SM)),
        ]

        # -- LayerNorm and softmax units ------------------------------------------------------
        ln_param_en = Signal()
        m.d.comb += [
            ln.params.payload.eq(ps.ln.payload),
            ln.params.valid.eq(ps.ln.valid & ln_param_en),
            ps.ln.ready.eq(ln.params.ready & ln_param_en),
        ]
        with m.If(ln.params.valid & ln.params.ready & ps.ln.payload.last):
            m.d.sync += ln_param_en.eq(0)
        m.d.comb += [
            ln.i.valid.eq(lne.ui.valid), lne.ui.ready.eq(ln.i.ready),
            ln.i.payload.eq(lne.ui.payload.data),
            lne.uo.valid.eq(ln.o.valid), ln.o.ready.eq(lne.uo.ready),
            lne.uo.payload.data.eq(ln.o.payload.data),
            lne.uo.payload.count.eq(ln.o.payload.count),
            lne.uo.payload.last.eq(ln.o.payload.last),
        ]
        rows_f = ins.args.rows
        # The softmax's scale and input format, held while its engine runs (the sequencer
        # decodes the next instructions meanwhile).
        sm_scale = Signal.like(rows_f.scale)
        sm_fmt = Signal.like(rows_f.fmt)
        with m.If(sme.start):
            m.d.sync += [sm_scale.eq(rows_f.scale), sm_fmt.eq(rows_f.fmt)]
        m.d.comb += [
            sm_i.valid.eq(sme.ui.valid), sme.ui.ready.eq(sm_i.ready),
            sm_i.payload.data.eq(sme.ui.payload.data),
            sm_i.payload.count.eq(sme.ui.payload.count),
            sm_i.payload.last.eq(sme.ui.payload.last),
            sm_i.payload.scale.eq(sm_scale),
            sm_i.payload.fmt.eq(sm_fmt),
            sme.uo.valid.eq(sm_o.valid), sm_o.ready.eq(sme.uo.ready),
            sme.uo.payload.data.eq(sm_o.payload.data),
            sme.uo.payload.count.eq(sm_o.payload.count),
            sme.uo.payload.last.eq(sm_o.payload.last),
        ]
        for eng in (lne, sme):
            m.d.comb += [
                eng.rows.eq(rows_f.rows), eng.n.eq(rows_f.n),
                eng.in_base.eq(rows_f.in_base), eng.in_stride.eq(rows_f.in_stride),
                eng.out_base.eq(rows_f.out_base), eng.out_stride.eq(rows_f.out_stride),
            ]

        # -- parameter stream → compute unit ----------------------------------------------------
        # Only while a MATMUL that takes them executes, and only as many as it takes: the
        # compute unit's own weight and bias queues are shared with the MoE engine, so the
        # weights and biases read ahead for the next dense product must wait in the parameter
        # stream's queue, not in the unit's (where an MOE would take them).
        mm_active = Signal()
        # Weight transfers (load_words weight words each) and bias words of the MATMUL (from
        # the stream), and those delivered.
        w_expected = Signal(32)
        w_delivered = Signal(32)
        b_expected = Signal(range(cc.max_nt + 1))
        b_delivered = Signal(range(cc.max_nt + 1))
        mm_stream_w = mm_active & ~ins.args.matmul.flags[0] & (w_delivered < w_expected)
        mm_stream_b = mm_active & ins.args.matmul.flags[2] & (b_delivered < b_expected)
        m.d.comb += [
            moe.cu_w.valid.eq(ps.w.valid & mm_stream_w), moe.cu_w.payload.eq(ps.w.payload),
            ps.w.ready.eq(moe.cu_w.ready & mm_stream_w),
            moe.cu_b.valid.eq(ps.b.valid & mm_stream_b), moe.cu_b.payload.eq(ps.b.payload),
            ps.b.ready.eq(moe.cu_b.ready & mm_stream_b),
        ]

        # -- LOAD / STORE arguments -----------------------------------------------------------
        xfer = ins.args.transfer
        ddr_addr = Signal.like(self.weights_addr)
        for eng in (ld, st):
            m.d.comb += [eng.addr.eq(ddr_addr), eng.abuf_addr.eq(xfer.addr),
                         eng.words.eq(xfer.words)]

        # -- MATMUL ---------------------------------------------------------------------------
        mm = ins.args.matmul
        cmd = moe.cu_cmd.payload
        flags = mm.flags
        m.d.comb += [
            cmd.m.eq(mm.m), cmd.k.eq(mm.k), cmd.n.eq(mm.n),
            cmd.x_base.eq(mm.x_base), cmd.x_stride.eq(mm.x_stride),
            cmd.w_base.eq(mm.w_base), cmd.w_stride.eq(mm.w_stride),
            cmd.y_base.eq(mm.y_base), cmd.y_stride.eq(mm.y_stride),
            cmd.w_from_abuf.eq(flags[0]), cmd.w_transposed.eq(flags[1]),
            cmd.bias.eq(flags[2]), cmd.gelu.eq(flags[3]), cmd.row_scale.eq(flags[4]),
            cmd.accumulate.eq(flags[5]),
            cmd.q_shift.eq(mm.q_shift), cmd.b_shift.eq(mm.b_shift),
            cmd.out_bits.eq(mm.out_bits),
        ]
        ab = cc.addr_bits
        db = cc.dim_bits
        shift_w = len(cmd.q_shift)
        mm_bad = Signal()
        m.d.comb += mm_bad.eq(
            Cat(*(getattr(mm, f)[db:] for f in ("m", "k", "n"))).any()
            | Cat(*(getattr(mm, f)[ab:] for f in ("x_base", "x_stride", "w_base", "w_stride",
                                                 "y_base", "y_stride"))).any()
            | mm.q_shift[shift_w:].any() | mm.b_shift[shift_w:].any()
            | mm.out_bits[len(cmd.out_bits):].any()
            | flags[4] | flags[7:].any())
        nt = (mm.n + a.cols - 1) >> _log2(a.cols)
        kt = (mm.k + a.rows - 1) >> _log2(a.rows)
        with m.If(moe.cu_w.valid & moe.cu_w.ready & mm_stream_w):
            m.d.sync += w_delivered.eq(w_delivered + 1)
        with m.If(moe.cu_b.valid & moe.cu_b.ready & mm_stream_b):
            m.d.sync += b_delivered.eq(b_delivered + 1)

        # -- MOE ------------------------------------------------------------------------------
        mo = ins.args.moe
        moe_offset = Signal(32)
        moe_bytes = Signal(32)
        m.d.comb += [
            moe.task.eq(task), moe.layer.eq(mo.layer),
            moe.image_base.eq(waddr + moe_offset), moe.image_bytes.eq(moe_bytes),
            moe.u_base.eq(mo.u_base), moe.x_base.eq(mo.x_base),
            moe.scratch_base.eq(mo.scratch_base),
        ]
        # The model's MoE shape, whole: the engine refuses a field above its maximum, a zero
        # field and k above the experts (BAD_SHAPE, a program error below).
        for f in SHAPE_FIELDS:
            m.d.comb += getattr(moe.shape, f).eq(getattr(mo, f))

        # -- the sequencer --------------------------------------------------------------------
        ev = self.events
        watchdog = Signal(range(c.watchdog_cycles + 2))
        depth = cc.abuf_depth
        lc, sc = c.layernorm, c.softmax
        m.d.comb += ev.compute_busy.eq(cu.busy)

        def fail(value):
            return [code.eq(value.value)]

        def guard():
            # Every running state: count the watchdog; AXI errors, a bad parameter stream and
            # the watchdog end the frame; halt stops it. (Last, so that these win.)
            with m.If(axi_error):
                m.d.sync += fail(ErrorCode.AXI_ERROR)
                m.next = "FAILED"
            with m.Elif(ps.error):
                m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                m.next = "FAILED"
            with m.Elif(watchdog == c.watchdog_cycles):
                m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                m.next = "FAILED"
            with m.If(self.halt):
                m.next = "HALTED"

        with m.FSM(name="seq") as fsm:
            with m.State("IDLE"):
                with m.If(self.go):
                    m.d.sync += [
                        task.eq(self.task), waddr.eq(self.weights_addr),
                        paddr.eq(self.program_addr), iaddr.eq(self.input_addr),
                        oaddr.eq(self.output_addr), plen.eq(self.program_len),
                        prog_cmd.eq(1),
                    ]
                    m.d.comb += [pu.start.eq(1), pu.count.eq(self.program_len >> 5)]
                    m.next = "HEADER"

            with m.State("HEADER"):
                m.d.comb += iq.o.ready.eq(1)
                with m.If(iq.o.valid):
                    m.d.sync += hdr.eq(iq.o.payload)
                    m.next = "CHECK"
                guard()

            with m.State("CHECK"):
                o_hi = oaddr + hdr.output_bytes

                def overlaps(lo, size):
                    return (lo < o_hi) & (oaddr < lo + size) & (hdr.output_bytes != 0)

                with m.If((hdr.magic != isa.MAGIC) | (hdr.version != isa.VERSION)
                          | hdr.pstream_bytes[:lsb + _log2(c.stream_ports)].any()):
                    m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                    m.next = "FAILED"
                with m.Elif(task >= hdr.num_tasks):
                    m.d.sync += fail(ErrorCode.TASK_OUT_OF_RANGE)
                    m.next = "FAILED"
                with m.Elif(overlaps(waddr, hdr.weights_bytes) | overlaps(paddr, plen)
                            | overlaps(iaddr, hdr.input_bytes)):
                    m.d.sync += fail(ErrorCode.OVERLAPPING_REGIONS)
                    m.next = "FAILED"
                with m.Else():
                    m.d.comb += [ps.go.eq(1), ps.base.eq(waddr), ps.nbytes.eq(hdr.pstream_bytes)]
                    m.d.sync += [moe_offset.eq(hdr.moe_offset), moe_bytes.eq(hdr.moe_bytes)]
                    m.next = "FETCH"
                guard()

            with m.State("FETCH"):
                m.d.comb += iq.o.ready.eq(1)
                with m.If(iq.o.valid):
                    m.d.sync += ins.eq(iq.o.payload)
                    m.d.comb += ev.instruction.eq(1)
                    m.next = "DECODE"
                with m.Elif(~pu.busy & ~prog_cmd):
                    m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                    m.next = "FAILED"
                with m.Else():
                    m.d.comb += ev.stall_program.eq(1)
                guard()

            with m.State("DECODE"):
                # The softmax engine runs on while the sequencer goes on (SOFTMAX only starts
                # it); every instruction but a MATMUL without WAIT_SOFTMAX waits for it here.
                sm_wait = sme.busy & ((ins.opcode != Opcode.MATMUL) | flags[6])
                with m.If(sm_wait):
                    m.d.comb += ev.stall_softmax.eq(1)
                with m.Else():
                    with m.Switch(ins.opcode):
                        with m.Case(Opcode.END):
                            m.next = "FINISHED"
                        with m.Case(Opcode.LOAD, Opcode.STORE):
                            is_load = ins.opcode == Opcode.LOAD
                            # A LOAD reads any region (OUTPUT: what the program spilled
                            # there; a STORE's data is in DDR once it ends), a STORE writes
                            # only the output region.
                            ok_base = Mux(is_load, xfer.base <= Base.OUTPUT,
                                          xfer.base == Base.OUTPUT)
                            base = Mux(xfer.base == Base.INPUT, iaddr,
                                       Mux(xfer.base == Base.WEIGHTS, waddr, oaddr))
                            m.d.sync += ddr_addr.eq(base + xfer.offset)
                            with m.If(~ok_base | (xfer.addr + xfer.words > depth)):
                                m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                                m.next = "FAILED"
                            with m.Elif(is_load):
                                m.next = "LOAD"
                            with m.Else():
                                m.next = "STORE"
                        with m.Case(Opcode.MATMUL):
                            m.d.sync += [w_expected.eq(nt * kt * (a.cols // a.load_words)),
                                         w_delivered.eq(0), b_expected.eq(nt),
                                         b_delivered.eq(0)]
                            with m.If(mm_bad):
                                m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                                m.next = "FAILED"
                            with m.Else():
                                m.next = "MM_ISSUE"
                        with m.Case(Opcode.LAYERNORM, Opcode.SOFTMAX):
                            is_ln = ins.opcode == Opcode.LAYERNORM
                            bad_rows = ((rows_f.n == 0) | (rows_f.rows == 0)
                                        | (rows_f.rows > cc.max_m)
                                        | Cat(*(getattr(rows_f, f)[ab:] for f in
                                                ("in_base", "in_stride", "out_base",
                                                 "out_stride"))).any())
                            bad_ln = rows_f.n > lc.max_len
                            bad_sm = ((rows_f.n > sc.max_len) | (rows_f.fmt >= len(sc.in_formats))
                                      | (rows_f.scale > sc.scale_max))
                            with m.If(bad_rows | Mux(is_ln, bad_ln, bad_sm)):
                                m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                                m.next = "FAILED"
                            with m.Elif(is_ln):
                                m.d.sync += [ln_param_en.eq(1), ext_sel.eq(SEL_LN)]
                                m.next = "LN_PARAMS"
                            with m.Else():
                                m.d.sync += ext_sel.eq(SEL_SM)
                                m.d.comb += sme.start.eq(1)
                                m.next = "FETCH"
                        with m.Case(Opcode.MOE):
                            with m.If(cu.busy):
                                m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                                m.next = "FAILED"
                            with m.Else():
                                m.d.sync += ext_sel.eq(SEL_NONE)
                                m.d.comb += moe.start.eq(1)
                                m.next = "MOE_START"
                        with m.Default():
                            m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                            m.next = "FAILED"
                guard()

            with m.State("LOAD"):
                m.d.sync += ext_sel.eq(SEL_LOAD)
                m.d.comb += ld.start.eq(1)
                m.next = "LOAD_WAIT"
                guard()
            with m.State("LOAD_WAIT"):
                m.d.comb += ev.stall_ddr_read.eq(ld.waiting)
                with m.If(~ld.busy):
                    m.next = "FETCH"
                guard()
            with m.State("STORE"):
                m.d.sync += ext_sel.eq(SEL_STORE)
                m.d.comb += st.start.eq(1)
                m.next = "STORE_WAIT"
                guard()
            with m.State("STORE_WAIT"):
                m.d.comb += ev.stall_ddr_write.eq(st.waiting)
                with m.If(~st.busy):
                    m.next = "FETCH"
                guard()

            with m.State("MM_ISSUE"):
                m.d.comb += [moe.cu_cmd.valid.eq(1), mm_active.eq(1)]
                with m.If(moe.cu_cmd.ready):
                    m.next = "MM_WAIT"
                guard()
            with m.State("MM_WAIT"):
                m.d.comb += [
                    mm_active.eq(1),
                    moe.cu_done.ready.eq(1),
                    ev.stall_weights.eq(~flags[0] & (w_delivered < w_expected)
                                        & (cu.w_queue.level == 0) & ~moe.cu_w.valid),
                ]
                with m.If(moe.cu_done.valid):
                    with m.If(moe.cu_done.payload.error != CUError.OK):
                        m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                        m.next = "FAILED"
                    with m.Else():
                        m.next = "FETCH"
                guard()

            with m.State("LN_PARAMS"):
                # The rows start only once the unit holds this LayerNorm's parameters.
                m.d.comb += ev.stall_layernorm.eq(1)
                with m.If(~ln_param_en):
                    m.d.comb += lne.start.eq(1)
                    m.next = "LAYERNORM"
                guard()
            with m.State("LAYERNORM"):
                m.d.comb += ev.stall_layernorm.eq(1)
                with m.If(ps.error):
                    m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                    m.next = "FAILED"
                with m.Elif(~lne.busy):
                    m.d.sync += ext_sel.eq(SEL_NONE)
                    m.next = "FETCH"
                guard()

            with m.State("MOE_START"):
                m.d.comb += ev.moe.eq(1)
                m.next = "MOE_WAIT"
                guard()
            with m.State("MOE_WAIT"):
                m.d.comb += ev.moe.eq(1)
                with m.If(moe.done):
                    m.d.comb += self.moe_stall.eq(moe.stall_cycles)
                    with m.If(moe.status == MoEStatus.OK):
                        m.next = "FETCH"
                    with m.Elif(moe.status == MoEStatus.DMA_ERROR):
                        m.d.sync += fail(ErrorCode.AXI_ERROR)
                        m.next = "FAILED"
                    with m.Else():
                        m.d.sync += fail(ErrorCode.PROGRAM_ERROR)
                        m.next = "FAILED"
                guard()

            with m.State("FINISHED"):
                m.d.comb += self.finished.eq(1)
                with m.If(self.halt):
                    m.next = "HALTED"
            with m.State("FAILED"):
                m.d.comb += self.failed.eq(1)
                with m.If(self.halt):
                    m.next = "HALTED"
            with m.State("HALTED"):
                pass


        # For simulation monitors: the sequencer state (and its names) and the error code.
        self.debug = {"state": fsm.state, "states": dict(fsm.decoding), "code": code,
                      "ins": ins}
        running = ~fsm.ongoing("IDLE") & ~fsm.ongoing("FINISHED") & ~fsm.ongoing("FAILED") \
            & ~fsm.ongoing("HALTED")
        with m.If(ev.instruction | self.go):
            m.d.sync += watchdog.eq(0)
        with m.Elif(running):
            m.d.sync += watchdog.eq(watchdog + 1)
        m.d.comb += [self.code.eq(code), ps.halt.eq(~running)]
        return m
