# SPDX-License-Identifier: BSD-2-Clause
"""The accelerator: control and status registers, the datapath, and the AXI4 masters to DDR.

One :class:`Accelerator` runs a whole M³ViT backbone frame: the host writes the weight image,
the program (both from :mod:`hdl.compiler`) and the input into DDR, sets the registers of
:mod:`hdl.regmap` and writes ``ctrl.start``; the accelerator fetches and executes the program
(:class:`hdl.datapath.Datapath`) and writes the output tokens back to DDR.

Control (outside the datapath, never reset by it)
-------------------------------------------------
``ctrl.start`` while idle checks the registers first; a bad value ends the task at once with
``status.done``, ``status.error`` and the code:

* ``MISALIGNED_ADDRESS``: an address not a multiple of the AXI beat (16 bytes), the weight image
  not 4 KiB aligned, an address beyond the AXI address width, or ``program_len`` not a multiple
  of the beat;
* ``TASK_OUT_OF_RANGE``: ``task`` not below the hardware's task count (``hw_model2.num_tasks``);
* ``PROGRAM_ERROR``: ``program_len`` not a header plus whole instructions.

Otherwise ``status.busy`` rises and the datapath runs. It checks the program header (a bad
header is a ``PROGRAM_ERROR``), the task against the program's task count
(``TASK_OUT_OF_RANGE``) and that the output region overlaps none of the weights, the program and
the input (``OVERLAPPING_REGIONS``), then executes the program; unknown opcodes, operands out of
range, a program without ``END``, refused compute-unit commands and an instruction running
longer than ``watchdog_cycles`` are ``PROGRAM_ERROR``; AXI error responses are ``AXI_ERROR``.

Every task ends the same way, successful or not: the datapath stops issuing, the accelerator
waits until every AXI port is *quiet* (no burst in flight, nothing offered:
:class:`hdl.axi_port.AXIPortMonitor`), then resets the whole datapath for one cycle, so the next
task starts from a clean state and the AXI protocol is never broken. Then ``busy`` falls and
``done`` (and ``error``) rise; the interrupt follows ``irq_enable``.

``ctrl.start`` while busy sets ``status.error`` with ``START_WHILE_BUSY`` at once; the running
task continues. ``ctrl.soft_reset`` aborts a running task the same way (stop, wait for quiet
ports, reset the datapath) and clears ``done``, ``error`` and the interrupt; registers keep their
values. If the ports do not become quiet within ``watchdog_cycles`` (a DDR that never answers),
the datapath is reset anyway.

Counters (:data:`hdl.config.COUNTERS`) count while their condition holds; ``ctrl.counters_clear``
zeroes them.
"""

from amaranth.hdl import Cat, Module, ResetInserter, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from .axi import AXI4LiteSignature, AXI4Signature
from .axi_port import AXIPortMonitor
from .config import AccelConfig
from .csr import RegisterBank
from .datapath import Datapath
from .regmap import ErrorCode

__all__ = ["status_layout", "Accelerator"]


def status_layout():
    """Layout of :attr:`Accelerator.status`."""
    return data.StructLayout({"busy": 1, "done": 1, "error": 1})


class Accelerator(wiring.Component):
    """The M³ViT accelerator (see the module docstring).

    Parameters
    ----------
    config : AccelConfig

    Members
    -------
    ctrl : In(AXI4LiteSignature(addr_width=config.ctrl_addr_width, data_width=32))
        The register port (:attr:`AccelConfig.regmap`).
    m_axi_<p> : Out(AXI4Signature(axi_addr_width, axi_data_width, axi_id_width))
        AXI4 masters to DDR, ``p = 0 … axi_ports − 1``.
    irq : Out(1)
        Level interrupt (``status.irq``).
    status : Out(status_layout())
        ``busy``, ``done`` and ``error`` as in the status register (for LEDs).
    """

    def __init__(self, config):
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {config!r}")
        self._config = config
        self._datapath = Datapath(config)
        sig = AXI4Signature(addr_width=config.axi_addr_width, data_width=config.axi_data_width,
                            id_width=config.axi_id_width)
        members = {"ctrl": In(AXI4LiteSignature(addr_width=config.ctrl_addr_width,
                                                 data_width=32))}
        for p in range(config.axi_ports):
            members[f"m_axi_{p}"] = Out(sig)
        members["irq"] = Out(1)
        members["status"] = Out(status_layout())
        super().__init__(members)

    @property
    def config(self):
        """The :class:`AccelConfig`."""
        return self._config

    @property
    def datapath(self):
        """The :class:`~hdl.datapath.Datapath` (a submodule)."""
        return self._datapath

    @property
    def regmap(self):
        """The register map."""
        return self._config.regmap

    def elaborate(self, platform):
        m = Module()
        c = self._config
        regmap = c.regmap
        m.submodules.bank = bank = RegisterBank(regmap)
        connect(m, flipped(self.ctrl), bank.bus)
        regs = bank.regs
        dp = self._datapath
        dp_rst = Signal()
        m.submodules.datapath = ResetInserter({"sync": dp_rst})(dp)

        sig = AXI4Signature(addr_width=c.axi_addr_width, data_width=c.axi_data_width,
                            id_width=c.axi_id_width)
        monitors = []
        for p in range(c.axi_ports):
            mon = AXIPortMonitor(sig)
            m.submodules[f"monitor{p}"] = mon
            connect(m, getattr(dp, f"port{p}"), mon.inner)
            connect(m, flipped(getattr(self, f"m_axi_{p}")), mon.bus)
            monitors.append(mon)
        quiet = Cat(*(mon.quiet for mon in monitors)).all()

        # -- register checks at start -----------------------------------------------------
        aw = c.axi_addr_width
        lsb = (c.beat_bytes - 1).bit_length()
        addrs = [regs.weights_addr.value, regs.program_addr.value, regs.input_addr.value,
                 regs.output_addr.value]
        plen = regs.program_len.bytes
        misaligned = (Cat(*(a[:lsb] for a in addrs)).any()
                      | Cat(*(a[aw:] for a in addrs)).any()
                      | regs.weights_addr.value[:12].any()
                      | plen[:lsb].any())
        bad_task = regs.task.id >= c.model.num_tasks
        bad_len = (plen < 64) | plen[:5].any()
        m.d.comb += [
            dp.task.eq(regs.task.id),
            dp.weights_addr.eq(addrs[0][:aw]), dp.program_addr.eq(addrs[1][:aw]),
            dp.input_addr.eq(addrs[2][:aw]), dp.output_addr.eq(addrs[3][:aw]),
            dp.program_len.eq(plen),
        ]

        # -- control --------------------------------------------------------------------------
        busy = Signal()
        done = Signal()
        error = Signal()
        irq = Signal()
        code = Signal(8)
        outcome = Signal(2)          # 0: aborted, 1: finished, 2: failed
        outcome_code = Signal(8)
        drain = Signal(range(c.watchdog_cycles + 2))
        start = regs.ctrl.start
        soft = regs.ctrl.soft_reset

        def finish(with_error, value=None):
            stmts = [busy.eq(0), done.eq(1), error.eq(with_error)]
            if value is not None:
                stmts.append(code.eq(value))
            return stmts

        with m.FSM(name="control"):
            with m.State("IDLE"):
                with m.If(soft):
                    m.d.comb += dp_rst.eq(1)
                    m.d.sync += [done.eq(0), error.eq(0), irq.eq(0), code.eq(0)]
                with m.Elif(start):
                    with m.If(misaligned):
                        m.d.sync += finish(1, ErrorCode.MISALIGNED_ADDRESS.value)
                        with m.If(regs.irq_enable.error):
                            m.d.sync += irq.eq(1)
                    with m.Elif(bad_task):
                        m.d.sync += finish(1, ErrorCode.TASK_OUT_OF_RANGE.value)
                        with m.If(regs.irq_enable.error):
                            m.d.sync += irq.eq(1)
                    with m.Elif(bad_len):
                        m.d.sync += finish(1, ErrorCode.PROGRAM_ERROR.value)
                        with m.If(regs.irq_enable.error):
                            m.d.sync += irq.eq(1)
                    with m.Else():
                        m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), code.eq(0)]
                        m.d.comb += dp.go.eq(1)
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(soft):
                    m.d.sync += [outcome.eq(0), drain.eq(0)]
                    m.next = "DRAIN"
                with m.Elif(dp.finished):
                    m.d.sync += [outcome.eq(1), drain.eq(0)]
                    m.next = "DRAIN"
                with m.Elif(dp.failed):
                    m.d.sync += [outcome.eq(2), outcome_code.eq(dp.code), drain.eq(0)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += dp.halt.eq(1)
                m.d.sync += drain.eq(drain + 1)
                with m.If(soft):
                    m.d.sync += outcome.eq(0)
                with m.If(quiet | (drain == c.watchdog_cycles)):
                    m.d.comb += dp_rst.eq(1)
                    m.next = "IDLE"
                    with m.Switch(outcome):
                        with m.Case(0):
                            m.d.sync += [busy.eq(0), done.eq(0), error.eq(0), irq.eq(0),
                                         code.eq(0)]
                        with m.Case(1):
                            m.d.sync += [busy.eq(0), done.eq(1)]
                            with m.If(regs.irq_enable.done | (error & regs.irq_enable.error)):
                                m.d.sync += irq.eq(1)
                        with m.Case(2):
                            m.d.sync += finish(1, outcome_code)
                            with m.If(regs.irq_enable.error):
                                m.d.sync += irq.eq(1)
        with m.If(busy & start):
            m.d.sync += [error.eq(1), code.eq(ErrorCode.START_WHILE_BUSY.value)]
        with m.If(regs.ctrl.irq_clear):
            m.d.sync += irq.eq(0)

        m.d.comb += [
            regs.status.busy.eq(busy), regs.status.done.eq(done),
            regs.status.error.eq(error), regs.status.irq.eq(irq),
            regs.status.error_code.eq(code),
            self.irq.eq(irq),
            self.status.busy.eq(busy), self.status.done.eq(done), self.status.error.eq(error),
        ]

        # -- counters -------------------------------------------------------------------------
        ev = dp.events
        beat = c.beat_bytes
        r_beats = sum(mon.r_beat for mon in monitors)
        w_beats = sum(mon.w_beat for mon in monitors)
        increments = {
            "cycles": busy,
            "stall_weights": ev.stall_weights + dp.moe_stall,
            "stall_ddr_read": ev.stall_ddr_read,
            "stall_ddr_write": ev.stall_ddr_write,
            "stall_softmax": ev.stall_softmax,
            "stall_layernorm": ev.stall_layernorm,
            "ddr_read_bytes": r_beats * beat,
            "ddr_write_bytes": w_beats * beat,
            "compute_busy": ev.compute_busy,
            "moe_cycles": ev.moe,
            "stall_program": ev.stall_program,
            "instructions": ev.instruction,
        }
        for name, inc in increments.items():
            value = Signal(64, name=f"count_{name}")
            with m.If(regs.ctrl.counters_clear):
                m.d.sync += value.eq(0)
            with m.Else():
                m.d.sync += value.eq(value + inc)
            m.d.comb += getattr(regs, name).value.eq(value)
        return m
