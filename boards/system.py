# SPDX-License-Identifier: BSD-2-Clause
"""The ZCU104 system: the accelerator joined to the Zynq UltraScale+ PS, which owns the DDR.

Amaranth's own Vivado flow builds PL-only designs; reaching the PS DDR needs a Vivado block
design. So this module writes

* :class:`SystemWrapper` / :func:`convert_system`: the accelerator as one Verilog module with flat,
  AXI-conventional port names (``ap_clk``, ``ap_rst_n``, ``s_axi_control_*``, ``m_axi_gmem<i>_*``,
  ``interrupt``, ``led_*``) and ``X_INTERFACE_INFO`` attributes, so that Vivado infers the clock,
  the active-low reset, the interrupt and every AXI interface of a module reference;
* :func:`vivado_tcl`: a batch script that creates the project and block design (PS with the
  ZCU104 board preset; the accelerator as a module reference; its AXI4-Lite slave behind
  ``M_AXI_HPM0_FPD``; its AXI masters on ``S_AXI_HP0..3_FPD``; its interrupt on ``pl_ps_irq0``;
  the LEDs on board pins), assigns addresses, and runs synthesis, implementation and bitstream,
  failing on negative setup or hold slack;
* :func:`vivado_xdc` and :func:`vivado_script`: the LED constraints and the shell wrapper.

This mirrors how the published Edge-MoE design joined the PS (its ``vivado.tcl``: PS8 with the
board preset, PL clock at 300 MHz, one SmartConnect per master, control from HPM0), with a module
reference instead of an HLS IP.
"""

import re

from amaranth.hdl import ClockDomain, Elaboratable, Module, Shape, Signal
from amaranth.lib import wiring

from hdl import verilog
from hdl.axi import AXI4LiteSignature, AXI4Signature

__all__ = ["TOP_NAME", "PROJECT_NAME", "BD_NAME", "CTRL_BASE", "HP_MAX_DATA_WIDTH",
           "HP_MAX_CLOCK_MHZ", "SystemWrapper", "convert_system", "annotate_ports", "vivado_tcl",
           "vivado_xdc", "vivado_script"]

#: Name of the accelerator's Verilog module (and of the file ``<TOP_NAME>.v``).
TOP_NAME = "m3vit_accel"
#: Name of the Vivado project (and of the ``.bit``/``.hwh``/``.xsa`` it produces).
PROJECT_NAME = "m3vit_zcu104"
#: Name of the block design.
BD_NAME = "m3vit_system"
#: Address of the accelerator's registers as seen from the PS (start of the HPM0_FPD window).
CTRL_BASE = 0xA000_0000
#: The PS S_AXI_HP ports are at most 128 bits wide (UG1085).
HP_MAX_DATA_WIDTH = 128
#: The PS S_AXI_HP ports run at up to 333 MHz (UG1085, DS925).
HP_MAX_CLOCK_MHZ = 333
#: S_AXI_HP<i>_FPD is PSU__USE__S_AXI_GP<i+2> in the PS configuration.
_HP_PORTS = 4

_LEDS = ("busy", "done", "error", "heartbeat")


def _axi_port_names(core):
    """Split a core's signature into the ports the system knows; raise on anything else."""
    members = core.signature.members
    for required in ("ctrl", "irq", "status", "m_axi_0"):
        if required not in members:
            raise TypeError(f"the accelerator must have a member {required!r} (the contract of "
                            f"hdl.top.Accelerator); it has {sorted(members)}")
    ctrl = members["ctrl"]
    if not (ctrl.is_signature and ctrl.flow == wiring.In and
            isinstance(ctrl.signature.flip(), AXI4LiteSignature)):
        raise TypeError(f"the accelerator's 'ctrl' must be In(AXI4LiteSignature(...)), "
                        f"not {ctrl!r}")
    n = 0
    while f"m_axi_{n}" in members:
        port = members[f"m_axi_{n}"]
        if not (port.is_signature and port.flow == wiring.Out and
                isinstance(port.signature, AXI4Signature)):
            raise TypeError(f"the accelerator's 'm_axi_{n}' must be Out(AXI4Signature(...)), "
                            f"not {port!r}")
        n += 1
    known = {"ctrl", "irq", "status"} | {f"m_axi_{i}" for i in range(n)}
    unknown = sorted(set(members) - known)
    if unknown:
        raise TypeError(f"the accelerator has members the ZCU104 system cannot connect: "
                        f"{unknown} (expected ctrl, m_axi_0..m_axi_<n-1>, irq, status)")
    if n > _HP_PORTS:
        raise ValueError(f"the PS has {_HP_PORTS} S_AXI_HP ports; the accelerator has {n} AXI "
                         f"masters")
    irq = members["irq"]
    if irq.is_signature or irq.flow != wiring.Out or Shape.cast(irq.shape).width != 1:
        raise TypeError(f"the accelerator's 'irq' must be Out(1), not {irq!r}")
    status = members["status"]
    if status.is_signature or status.flow != wiring.Out:
        raise TypeError(f"the accelerator's 'status' must be an Out port, not {status!r}")
    for field in ("busy", "done", "error"):
        try:
            getattr(core.status, field)
        except AttributeError:
            raise TypeError(f"the accelerator's 'status' must have a field {field!r}") from None
    return n


class SystemWrapper(Elaboratable):
    """The accelerator with flat, Vivado-conventional ports; the Verilog top of the module
    reference.

    The wrapper owns the ``sync`` domain: ``ap_clk`` is its clock, and its synchronous
    active-high reset is ``~ap_rst_n`` delayed by one (reset-less) register, which keeps the AXI
    reset convention outside and Amaranth's inside and takes the reset net off the PS reset
    block's output path. The reset register starts at 1, so the design is held in reset until
    the first clock edges after configuration.

    Port names (``<i>`` counts the AXI masters):

    ====================================  =====================================================
    ``ap_clk``                            clock (``X_INTERFACE_INFO`` clock, associated with
                                          every AXI interface and with ``ap_rst_n``; no fixed
                                          ``FREQ_HZ``, the block design propagates it)
    ``ap_rst_n``                          active-low synchronous reset
    ``s_axi_control_<member>``            AXI4-Lite slave (``ctrl``), AMBA member names
    ``m_axi_gmem<i>_<member>``            AXI4 master ``m_axi_<i>``
    ``interrupt``                         level-high interrupt (``irq``)
    ``led_busy/led_done/led_error``       ``status`` fields, registered
    ``led_heartbeat``                     blinks at about 1 Hz while the clock runs
    ====================================  =====================================================

    Parameters
    ----------
    core : wiring.Component
        The accelerator, with the members ``ctrl: In(AXI4LiteSignature)``,
        ``m_axi_0..m_axi_<n-1>: Out(AXI4Signature)``, ``irq: Out(1)`` and ``status: Out(...)``
        with ``busy``, ``done``, ``error`` fields. It must use the ``sync`` domain only.
    heartbeat_bit : int
        Counter bit that drives ``led_heartbeat`` (28 gives 0.56 Hz at 300 MHz).

    Attributes
    ----------
    axi_ports : int
        Number of AXI masters.
    bus_names : list of str
        Vivado interface names: ``s_axi_control``, ``m_axi_gmem0`` ...
    port_attrs : dict
        ``X_INTERFACE_INFO``/``X_INTERFACE_PARAMETER`` attributes per port name, which
        :func:`convert_system` writes onto the port declarations.
    """

    def __init__(self, core, *, heartbeat_bit=28):
        self.core = core
        self.axi_ports = _axi_port_names(core)
        if isinstance(heartbeat_bit, bool) or not isinstance(heartbeat_bit, int) \
                or not 1 <= heartbeat_bit <= 40:
            raise ValueError(f"heartbeat_bit must be an integer in the range 1..40, "
                             f"not {heartbeat_bit!r}")
        self._heartbeat_bit = heartbeat_bit

        self.bus_names = ["s_axi_control"] + [f"m_axi_gmem{i}" for i in range(self.axi_ports)]
        self.ap_clk = Signal(name="ap_clk")
        self.ap_rst_n = Signal(name="ap_rst_n")
        self.interrupt = Signal(name="interrupt")
        self.leds = {name: Signal(name=f"led_{name}") for name in _LEDS}
        # Vivado interface attributes per port name. They are written into the Verilog text by
        # :func:`convert_system` rather than set as Signal attributes, because Yosys merges
        # wires driven by the same constant (idle AXI outputs) and their attributes with them.
        self.port_attrs = {
            "ap_clk": {
                "X_INTERFACE_INFO": "xilinx.com:signal:clock:1.0 ap_clk CLK",
                "X_INTERFACE_PARAMETER": f"ASSOCIATED_BUSIF {':'.join(self.bus_names)}, "
                                         f"ASSOCIATED_RESET ap_rst_n",
            },
            "ap_rst_n": {
                "X_INTERFACE_INFO": "xilinx.com:signal:reset:1.0 ap_rst_n RST",
                "X_INTERFACE_PARAMETER": "POLARITY ACTIVE_LOW",
            },
            "interrupt": {
                "X_INTERFACE_INFO": "xilinx.com:signal:interrupt:1.0 interrupt INTERRUPT",
                "X_INTERFACE_PARAMETER": "SENSITIVITY LEVEL_HIGH",
            },
        }

        # (wrapper port, core signal, core drives it) for every AXI wire.
        self._axi = []
        for path, member, value in core.signature.flatten(core):
            if path[0] == "ctrl":
                bus = "s_axi_control"
            elif path[0].startswith("m_axi_"):
                bus = f"m_axi_gmem{path[0][len('m_axi_'):]}"
            else:
                continue
            (wire,) = path[1:]
            port = Signal(len(value), name=f"{bus}_{wire}")
            self.port_attrs[port.name] = {
                "X_INTERFACE_INFO": f"xilinx.com:interface:aximm:1.0 {bus} {wire.upper()}",
            }
            self._axi.append((port, value, member.flow == wiring.Out))

    def ports(self):
        """Every top-level port, for :func:`amaranth.back.verilog.convert`."""
        return ([self.ap_clk, self.ap_rst_n] + [port for port, _, _ in self._axi] +
                [self.interrupt] + list(self.leds.values()))

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = cd = ClockDomain("sync")
        rst_q = Signal(init=1, reset_less=True, name="rst_q")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(rst_q)]
        m.d.sync += rst_q.eq(~self.ap_rst_n)

        m.submodules.core = core = self.core
        for port, value, core_drives in self._axi:
            if core_drives:
                m.d.comb += port.eq(value)
            else:
                m.d.comb += value.eq(port)
        m.d.comb += self.interrupt.eq(core.irq)

        # Status LEDs: one register each so that the pad path starts at a flip-flop.
        for name in ("busy", "done", "error"):
            m.d.sync += self.leds[name].eq(getattr(core.status, name))
        beat = Signal(self._heartbeat_bit + 1, name="heartbeat_count")
        m.d.sync += beat.eq(beat + 1)
        m.d.comb += self.leds["heartbeat"].eq(beat[-1])
        return m


def convert_system(core, *, name=TOP_NAME, emit_src=False, heartbeat_bit=28):
    """Return the Verilog text of :class:`SystemWrapper` around ``core`` (module ``name``),
    with the Vivado interface attributes on the top module's port declarations."""
    wrapper = SystemWrapper(core, heartbeat_bit=heartbeat_bit)
    text = verilog.convert(wrapper, name=name, ports=wrapper.ports(), emit_src=emit_src)
    return annotate_ports(text, name, wrapper.port_attrs)


_PORT_DECL = re.compile(r"^(\s*)(?:input|output|inout)\b[^;]*?\b(\w+)\s*;\s*$")


def annotate_ports(text, module, port_attrs):
    """Put ``(* key = "value" *)`` attributes before port declarations of ``module``.

    ``port_attrs`` maps port names to attribute dicts. Raises :exc:`ValueError` if a port is not
    declared in the module.
    """
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines)
                     if re.match(rf"module {re.escape(module)}\s*\(", line))
    except StopIteration:
        raise ValueError(f"module {module} not found in the Verilog") from None
    out = lines[:start]
    done = set()
    for i in range(start, len(lines)):
        line = lines[i]
        match = _PORT_DECL.match(line)
        if match and match.group(2) in port_attrs and match.group(2) not in done:
            indent = match.group(1)
            for key, value in port_attrs[match.group(2)].items():
                out.append(f'{indent}(* {key} = "{value}" *)\n')
            done.add(match.group(2))
        out.append(line)
        if line.startswith("endmodule"):
            out.extend(lines[i + 1:])
            break
    missing = sorted(set(port_attrs) - done)
    if missing:
        raise ValueError(f"ports not declared in module {module}: {', '.join(missing)}")
    return "".join(out)


def _tcl_quote(text):
    return "{" + text + "}"


def vivado_tcl(*, part, board_part_pattern, clock_mhz, axi_ports, axi_data_width=128,
               ctrl_addr_width=12, top=TOP_NAME, verilog_file=None, xdc_file=None,
               project_name=PROJECT_NAME, bd_name=BD_NAME, ctrl_base=CTRL_BASE,
               allow_timing_fail=False, jobs=4):
    """Return the Vivado batch script that takes the generated files to a bitstream.

    Run as ``vivado -mode batch -source <script> [-tclargs bd-only]`` from any directory; every
    path is relative to the script's own directory. ``bd-only`` stops after the block design
    validates. The environment variable ``VIVADO_JOBS`` overrides ``jobs``.

    Products, next to the script: ``<project_name>.bit``, ``.hwh`` (PYNQ), ``.xsa`` (Vitis),
    ``address_map.txt``, ``timing_summary.txt``, ``reports/`` and the project in ``vivado/``.
    The script exits with status 1 when the board files are missing, a run fails, or the routed
    design has negative setup or hold slack (unless ``allow_timing_fail``).
    """
    if not 1 <= axi_ports <= _HP_PORTS:
        raise ValueError(f"axi_ports must be in the range 1..{_HP_PORTS}, not {axi_ports!r}")
    if not 0 < clock_mhz <= HP_MAX_CLOCK_MHZ:
        raise ValueError(f"clock_mhz must be in the range (0, {HP_MAX_CLOCK_MHZ}], "
                         f"not {clock_mhz!r}")
    verilog_file = verilog_file or f"{top}.v"
    xdc_file = xdc_file or f"{project_name}.xdc"
    hp_width = min(axi_data_width, HP_MAX_DATA_WIDTH)
    ctrl_range = 1 << ctrl_addr_width
    range_text = f"{ctrl_range // 1024}K" if ctrl_range >= 1024 else str(ctrl_range)
    return f"""\
# SPDX-License-Identifier: BSD-2-Clause
# Generated by `python -m hdl.build zcu104` (boards/system.py); re-run the build instead of
# editing. Creates the Vivado project and block design for the M3ViT accelerator on a ZCU104 and
# runs synthesis, implementation and bitstream generation.
#
#   vivado -mode batch -source {project_name}.tcl [-tclargs bd-only]
#
# bd-only: stop once the block design validates. VIVADO_JOBS overrides the number of jobs.
# Exit status 1: missing board files, a failed run, or negative setup/hold slack.

set here [file normalize [file dirname [info script]]]
set top {top}
set part {part}
set board_pattern {_tcl_quote(board_part_pattern)}
set proj_name {project_name}
set proj_dir [file join $here vivado]
set bd_name {bd_name}
set clock_mhz {clock_mhz:g}
set axi_ports {axi_ports}
set hp_data_width {hp_width}
set ctrl_base 0x{ctrl_base:08X}
set ctrl_range {range_text}
set allow_timing_fail {int(bool(allow_timing_fail))}
set jobs {jobs}
if {{[info exists ::env(VIVADO_JOBS)]}} {{ set jobs $::env(VIVADO_JOBS) }}
set bd_only [expr {{[lsearch -exact $argv bd-only] >= 0}}]

proc fail {{msg}} {{ puts "ERROR: \\[m3vit\\] $msg"; exit 1 }}
proc note {{msg}} {{ puts "INFO: \\[m3vit\\] $msg" }}

# ---- project -------------------------------------------------------------------------------
create_project -force $proj_name $proj_dir -part $part
set board_parts [get_board_parts -quiet -latest_file_version $board_pattern]
if {{[llength $board_parts] == 0}} {{
    fail "Vivado has no board files matching $board_pattern; install the ZCU104 board files\\
          (Vivado Store > Boards, or XilinxBoardStore with set_param board.repoPaths)"
}}
set_property board_part [lindex $board_parts 0] [current_project]
note "board part [lindex $board_parts 0], part $part"
add_files -norecurse [file join $here {verilog_file}]
add_files -fileset constrs_1 -norecurse [file join $here {xdc_file}]
update_compile_order -fileset sources_1

# ---- block design: PS with the ZCU104 preset --------------------------------------------------
create_bd_design $bd_name
set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:zynq_ultra_ps_e ps]
apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {{apply_board_preset "1"}} $ps
# M_AXI_HPM0_FPD (GP0) for the registers; S_AXI_HP<i>_FPD is GP<i+2>; PL clock 0; IRQ0.
set cfg [list \\
    CONFIG.PSU__USE__M_AXI_GP0 1 CONFIG.PSU__MAXIGP0__DATA_WIDTH 32 \\
    CONFIG.PSU__USE__M_AXI_GP1 0 CONFIG.PSU__USE__M_AXI_GP2 0 \\
    CONFIG.PSU__FPGA_PL0_ENABLE 1 CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz \\
    CONFIG.PSU__USE__IRQ0 1]
for {{set i 0}} {{$i < $axi_ports}} {{incr i}} {{
    set gp [expr {{$i + 2}}]
    lappend cfg CONFIG.PSU__USE__S_AXI_GP$gp 1 CONFIG.PSU__SAXIGP${{gp}}__DATA_WIDTH $hp_data_width
}}
set_property -dict $cfg $ps
set act_mhz [get_property CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ $ps]
note "pl_clk0: requested $clock_mhz MHz, the PS generates $act_mhz MHz"
if {{abs($act_mhz - $clock_mhz) > 0.01 * $clock_mhz}} {{
    puts "WARNING: \\[m3vit\\] pl_clk0 is $act_mhz MHz, more than 1% away from $clock_mhz MHz"
}}

# ---- the accelerator, reset, interconnect -----------------------------------------------------
set accel [create_bd_cell -type module -reference $top accel]
set rst [create_bd_cell -type ip -vlnv xilinx.com:ip:proc_sys_reset rst_pl0]
set sc_ctrl [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect sc_ctrl]
set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 1] $sc_ctrl

set clk [get_bd_pins ps/pl_clk0]
connect_bd_net $clk [get_bd_pins ps/maxihpm0_fpd_aclk] [get_bd_pins accel/ap_clk] \\
    [get_bd_pins rst_pl0/slowest_sync_clk] [get_bd_pins sc_ctrl/aclk]
connect_bd_net [get_bd_pins ps/pl_resetn0] [get_bd_pins rst_pl0/ext_reset_in]
connect_bd_net [get_bd_pins rst_pl0/peripheral_aresetn] [get_bd_pins accel/ap_rst_n]
connect_bd_net [get_bd_pins rst_pl0/interconnect_aresetn] [get_bd_pins sc_ctrl/aresetn]
connect_bd_intf_net [get_bd_intf_pins ps/M_AXI_HPM0_FPD] [get_bd_intf_pins sc_ctrl/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins sc_ctrl/M00_AXI] [get_bd_intf_pins accel/s_axi_control]

for {{set i 0}} {{$i < $axi_ports}} {{incr i}} {{
    set sc [create_bd_cell -type ip -vlnv xilinx.com:ip:smartconnect sc_gmem$i]
    set_property -dict [list CONFIG.NUM_SI 1 CONFIG.NUM_MI 1] $sc
    connect_bd_net $clk [get_bd_pins ps/saxihp${{i}}_fpd_aclk] [get_bd_pins sc_gmem$i/aclk]
    connect_bd_net [get_bd_pins rst_pl0/interconnect_aresetn] [get_bd_pins sc_gmem$i/aresetn]
    connect_bd_intf_net [get_bd_intf_pins accel/m_axi_gmem$i] [get_bd_intf_pins sc_gmem$i/S00_AXI]
    connect_bd_intf_net [get_bd_intf_pins sc_gmem$i/M00_AXI] \\
        [get_bd_intf_pins ps/S_AXI_HP${{i}}_FPD]
}}
connect_bd_net [get_bd_pins accel/interrupt] [get_bd_pins ps/pl_ps_irq0]
foreach led {{{' '.join(_LEDS)}}} {{
    create_bd_port -dir O led_$led
    connect_bd_net [get_bd_pins accel/led_$led] [get_bd_ports led_$led]
}}

# The module reference must carry pl_clk0's real frequency, or validation finds a FREQ_HZ
# mismatch on its AXI interfaces.
set freq_hz [get_property CONFIG.FREQ_HZ $clk]
if {{[catch {{set_property CONFIG.FREQ_HZ $freq_hz [get_bd_pins accel/ap_clk]}} err]}} {{
    puts "WARNING: \\[m3vit\\] could not set FREQ_HZ on accel/ap_clk: $err"
}}

# ---- addresses -----------------------------------------------------------------------------
assign_bd_address
set seg [get_bd_addr_segs -quiet -of_objects [get_bd_addr_spaces ps/Data] \\
    -filter {{NAME =~ "*accel*"}}]
if {{[llength $seg] == 1}} {{
    set_property offset $ctrl_base $seg
    set_property range $ctrl_range $seg
}} else {{
    puts "WARNING: \\[m3vit\\] no register window among ps/Data segments; see address_map.txt"
}}
validate_bd_design
save_bd_design
set f [open [file join $here address_map.txt] w]
foreach space [get_bd_addr_spaces] {{
    foreach s [get_bd_addr_segs -quiet -of_objects $space] {{
        puts $f [format "%s %s offset=%s range=%s" [get_property NAME $space] \\
            [get_property NAME $s] [get_property OFFSET $s] [get_property RANGE $s]]
    }}
}}
close $f
note "block design validated; address map in [file join $here address_map.txt]"
if {{$bd_only}} {{ note "bd-only: stopping before synthesis"; exit 0 }}

# ---- synthesis, implementation, bitstream ----------------------------------------------------
set bd_file [get_files $bd_name.bd]
generate_target all $bd_file
add_files -norecurse [make_wrapper -files $bd_file -top]
set_property top ${{bd_name}}_wrapper [current_fileset]
update_compile_order -fileset sources_1

launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {{[get_property PROGRESS [get_runs synth_1]] ne "100%"}} {{
    fail "synthesis failed: [get_property STATUS [get_runs synth_1]]"
}}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {{[get_property PROGRESS [get_runs impl_1]] ne "100%"}} {{
    fail "implementation failed: [get_property STATUS [get_runs impl_1]]"
}}

open_run impl_1
set rpt [file join $here reports]
file mkdir $rpt
report_utilization -file [file join $rpt utilization.rpt]
report_utilization -hierarchical -hierarchical_depth 4 -file [file join $rpt utilization_hier.rpt]
report_timing_summary -max_paths 20 -report_unconstrained -file [file join $rpt timing_summary.rpt]
report_power -file [file join $rpt power.rpt]

set wns [get_property SLACK [get_timing_paths -max_paths 1 -nworst 1 -setup]]
set whs [get_property SLACK [get_timing_paths -max_paths 1 -nworst 1 -hold]]
if {{$wns eq ""}} {{ set wns [get_property STATS.WNS [get_runs impl_1]] }}
if {{$whs eq ""}} {{ set whs [get_property STATS.WHS [get_runs impl_1]] }}
set f [open [file join $here timing_summary.txt] w]
puts $f "pl_clk0_mhz $act_mhz"
puts $f "wns_ns $wns"
puts $f "whs_ns $whs"
close $f
note "timing: WNS $wns ns, WHS $whs ns at $act_mhz MHz"
if {{$wns < 0 || $whs < 0}} {{
    if {{!$allow_timing_fail}} {{
        fail "timing not met (WNS $wns ns, WHS $whs ns); see [file join $rpt timing_summary.rpt]"
    }}
    puts "WARNING: \\[m3vit\\] timing not met, continuing because allow_timing_fail is set"
}}

set bit [lindex [glob -nocomplain [file join $proj_dir $proj_name.runs impl_1 *.bit]] 0]
if {{$bit eq ""}} {{ fail "no bitstream in [file join $proj_dir $proj_name.runs impl_1]" }}
file copy -force $bit [file join $here $proj_name.bit]
# The hardware handoff lives in <proj>.gen (Vivado 2020.2+) or <proj>.srcs (older).
set hwh [lindex [glob -nocomplain \\
    [file join $proj_dir * sources_1 bd $bd_name hw_handoff $bd_name.hwh]] 0]
if {{$hwh ne ""}} {{ file copy -force $hwh [file join $here $proj_name.hwh] }}
set xsa [file join $here $proj_name.xsa]
if {{[catch {{write_hw_platform -fixed -include_bit -force -file $xsa}} err]}} {{
    puts "WARNING: \\[m3vit\\] write_hw_platform failed: $err"
}}
note "bitstream [file join $here $proj_name.bit]"
exit 0
"""


def vivado_xdc(platform, *, leds=None):
    """Return the XDC for the block design's top-level ports: the LEDs.

    Pins and I/O standards come from ``platform`` (:class:`boards.zcu104.ZCU104Platform`), so
    that they are defined in one place. ``leds`` maps port names to ``led`` resource numbers
    (default: busy 0, done 1, error 2, heartbeat 3).
    """
    leds = leds or {f"led_{name}": i for i, name in enumerate(_LEDS)}
    lines = [
        "# SPDX-License-Identifier: BSD-2-Clause",
        "# Generated by `python -m hdl.build zcu104` (boards/system.py) from boards/zcu104.py.",
        "# The PS clock, DDR and MIO constraints come from the zynq_ultra_ps_e IP itself.",
        "",
    ]
    for port, number in leds.items():
        pin, attrs = platform.pin_of("led", number)
        lines.append(f"# {port}: user LED {number}")
        lines.append(f"set_property PACKAGE_PIN {pin} [get_ports {port}]")
        for key, value in attrs.items():
            lines.append(f"set_property {key} {value} [get_ports {port}]")
    lines += [
        "",
        "# The LEDs are slow status indicators; their pad paths carry no timing requirement.",
        f"set_false_path -to [get_ports {{{' '.join(leds)}}}]",
        "",
        "set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]",
        "",
    ]
    return "\n".join(lines)


def vivado_script(tcl_file):
    """Return the POSIX shell script that runs Vivado in batch mode on ``tcl_file``.

    It runs from its own directory, sources ``$AMARANTH_ENV_VIVADO`` when set (Amaranth's
    convention for a Vivado ``settings64.sh``), honours ``$VIVADO`` (the executable), passes its
    arguments to the Tcl script (``bd-only``), and fails with status 127 and a clear message
    when Vivado cannot be found.
    """
    return f"""\
#!/bin/sh
# SPDX-License-Identifier: BSD-2-Clause
# Generated by `python -m hdl.build zcu104`. Runs Vivado in batch mode on {tcl_file}.
# Usage: ./build_vivado.sh [bd-only]
set -e
cd "$(dirname "$0")"
if [ -n "$AMARANTH_ENV_VIVADO" ]; then
    . "$AMARANTH_ENV_VIVADO"
fi
VIVADO="${{VIVADO:-vivado}}"
if ! command -v "$VIVADO" >/dev/null 2>&1; then
    echo "error: Vivado ('$VIVADO') is not on PATH; source Vivado's settings64.sh, or set" >&2
    echo "       VIVADO to the executable or AMARANTH_ENV_VIVADO to settings64.sh" >&2
    exit 127
fi
exec "$VIVADO" -mode batch -nojournal -log vivado.log -source {tcl_file} -tclargs "$@"
"""
