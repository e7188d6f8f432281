# SPDX-License-Identifier: BSD-2-Clause
"""The host driver: one API to run M³ViT frames on the accelerator, in simulation or on a board.

::

    drv = Driver(AmaranthBackend("small"))            # or VerilatorBackend, BoardBackend
    drv.load_model(qm)                                # a QuantizedModel, a state dict or a path
    drv.set_task(1)
    tokens = drv.run_frame(image)                     # N × D integers (act format)
    drv.counters()                                    # {"cycles": ..., "stall_weights": ...}

A back end gives the driver register access, DDR access and a way to wait:

``write_reg(addr, value)`` / ``read_reg(addr) -> int``
    32-bit register access at byte offsets of the register map.
``ddr_write(addr, data)`` / ``ddr_read(addr, length) -> bytes``
    DDR access at bus addresses (physical addresses on a board).
``wait(max_cycles) -> int``
    Let the accelerator run until ``status.busy`` falls (or ``max_cycles`` pass, which raises
    :exc:`TimeoutError`); returns the cycles (or polls) it took.
``ddr_base``, ``ddr_size``
    The DDR window the driver may use for the weight image, program, input and output.
``config``
    The :class:`hdl.config.AccelConfig` of the accelerator.

Back ends here: :class:`AmaranthBackend` (the Amaranth simulator, a DDR model with latency,
jitter and a bandwidth cap on every AXI port, an AXI protocol checker on every port, registers
over AXI4-Lite), :class:`VerilatorBackend` (the same at C++ speed, :mod:`sim.verilator`) and
:class:`BoardBackend` (PYNQ-style memory-mapped registers and a physically contiguous buffer).
"""

import dataclasses
import os

import numpy as np

from hdl.config import get_accel_config
from hdl.regmap import ErrorCode

__all__ = ["AcceleratorError", "Layout", "Driver", "SimBackend", "AmaranthBackend",
           "VerilatorBackend", "BoardBackend", "ZCU104_DDR"]

#: DDR model figures of the ZCU104 at 300 MHz: latency, jitter and bytes per cycle, the last
#: being the PS DDR4-2133 × 64 bits (17.06 GB/s) shared by all ports (each port gets its share).
ZCU104_DDR = {"latency": 100, "jitter": 16, "bytes_per_cycle": 17.06e9 / 300e6}

_PAGE = 4096


class AcceleratorError(RuntimeError):
    """The accelerator stopped a frame with ``status.error``.

    Attributes
    ----------
    code : hdl.regmap.ErrorCode
    """

    def __init__(self, code, message=None):
        self.code = code
        super().__init__(message or f"the accelerator reported {code.name}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the driver puts things in DDR (bus addresses)."""
    weights: int
    program: int
    input: int
    output: int
    end: int


def _round_up(v, a):
    return -(-v // a) * a


class Driver:
    """Run frames on an accelerator through a back end (see the module docstring).

    Parameters
    ----------
    backend
        :class:`AmaranthBackend`, :class:`VerilatorBackend`, :class:`BoardBackend` or anything
        with the same methods.
    frame_timeout : int
        Cycles (simulation) or polls (board) a frame may take.
    """

    def __init__(self, backend, *, frame_timeout=50_000_000):
        self.backend = backend
        self.config = backend.config
        self.regmap = self.config.regmap
        self.frame_timeout = frame_timeout
        self.compiled = None
        self.layout = None
        self.task = 0
        self.last_cycles = None

    # -- registers ------------------------------------------------------------------------------

    def _addr(self, name):
        return self.regmap.address_of(name)

    def write_reg(self, name, value):
        """Write register ``name`` (64-bit registers low word first)."""
        reg = self.regmap[name]
        addr = self._addr(name)
        for k in range(reg.width // 32):
            self.backend.write_reg(addr + 4 * k, (value >> (32 * k)) & 0xFFFF_FFFF)

    def read_reg(self, name):
        """Read register ``name`` (64-bit registers low word first, one snapshot)."""
        reg = self.regmap[name]
        addr = self._addr(name)
        value = 0
        for k in range(reg.width // 32):
            value |= self.backend.read_reg(addr + 4 * k) << (32 * k)
        return value

    def _fields(self, name, value):
        return {f.name: (value >> f.offset) & ((1 << f.width) - 1)
                for f in self.regmap[name].fields}

    def status(self):
        """The status register as a dict (``busy``, ``done``, ``error``, ``irq``,
        ``error_code`` as an :class:`~hdl.regmap.ErrorCode`)."""
        st = self._fields("status", self.read_reg("status"))
        st["error_code"] = ErrorCode(st["error_code"])
        return st

    def counters(self):
        """Every counter of the register map, by name."""
        from hdl.config import COUNTERS
        return {name: self.read_reg(name) for name, _ in COUNTERS}

    def clear_counters(self):
        """Zero the counters."""
        self.write_reg("ctrl", 1 << self.regmap["ctrl"].field("counters_clear").offset)

    def soft_reset(self):
        """Abort any frame and return the datapath to idle (``ctrl.soft_reset``)."""
        self.write_reg("ctrl", 1 << self.regmap["ctrl"].field("soft_reset").offset)
        self.backend.wait(self.frame_timeout)

    def hardware(self):
        """The configuration read-back registers, as a dict of dicts."""
        return {name: self._fields(name, self.read_reg(name))
                for name in ("hw_array", "hw_model", "hw_model2", "hw_axi", "hw_clock_khz")}

    # -- model ------------------------------------------------------------------------------

    def load_model(self, model, model_cfg=None, *, task=0, spill_rows=None):
        """Compile a model for this accelerator and write it into DDR.

        Parameters
        ----------
        model : golden.twin.QuantizedModel, dict or path
            Integer parameters, or a float state dict (upstream key layout) or a checkpoint file
            to quantise (with ``model_cfg``, a model name or :class:`golden.config.ModelConfig`).
        model_cfg : str or ModelConfig or None
            Needed unless ``model`` is a :class:`~golden.twin.QuantizedModel`.
        task : int
            The task of the following frames (:meth:`set_task`).
        spill_rows : int or None
            Passed to :func:`hdl.compiler.compile_model` (``None``: the token matrices on chip
            when they fit, else spilled to DDR in the largest tiles that fit).

        Returns
        -------
        hdl.compiler.CompiledModel
        """
        from golden.twin import QuantizedModel, quantize_params
        from hdl.compiler import compile_model
        if not isinstance(model, QuantizedModel):
            if model_cfg is None:
                raise ValueError("model_cfg is needed to quantise a state dict or checkpoint")
            if isinstance(model, (str, os.PathLike)):
                from golden.checkpoint import load_checkpoint
                model = load_checkpoint(model, model_cfg).state_dict()
            model = quantize_params(model, model_cfg, self.config.numerics)
        cm = compile_model(model, self.config, spill_rows=spill_rows)
        b = self.backend
        base = _round_up(b.ddr_base, _PAGE)
        weights = base
        program = _round_up(weights + len(cm.weights), _PAGE)
        inp = _round_up(program + len(cm.program), _PAGE)
        out = _round_up(inp + cm.input_bytes, _PAGE)
        end = _round_up(out + cm.output_region_bytes, _PAGE)
        if end > b.ddr_base + b.ddr_size:
            raise ValueError(f"the model needs {end - b.ddr_base} bytes of DDR; the back end has "
                             f"{b.ddr_size}")
        b.ddr_write(weights, cm.weights)
        b.ddr_write(program, cm.program)
        self.compiled = cm
        self.layout = Layout(weights, program, inp, out, end)
        self.write_reg("weights_addr", weights)
        self.write_reg("program_addr", program)
        self.write_reg("input_addr", inp)
        self.write_reg("output_addr", out)
        self.write_reg("program_len", len(cm.program))
        self.set_task(task)
        return cm

    def set_task(self, task):
        """Select the task of the following frames (only the TASK register changes)."""
        if self.compiled is not None:
            self.compiled.cfg.check_task(task)
        self.task = task
        self.write_reg("task", task)

    def start(self):
        """Write ``ctrl.start`` (no waiting)."""
        self.write_reg("ctrl", 1 << self.regmap["ctrl"].field("start").offset)

    def run_frame(self, image):
        """Run one frame and return the output tokens.

        Parameters
        ----------
        image : array (3, H, W)
            A float image (normalised; quantised to the ``pixel`` format here) or integers
            already in the ``pixel`` format.

        Returns
        -------
        numpy.ndarray
            The N × D integers of the last block's output (``act`` format).

        Raises
        ------
        AcceleratorError
            If the accelerator reports an error.
        """
        self.start_frame(image)
        return self.finish_frame()

    def start_frame(self, image):
        """Write the image into DDR and start a frame, without waiting (:meth:`run_frame` is
        this, then :meth:`finish_frame`)."""
        if self.compiled is None:
            raise RuntimeError("load_model() first")
        from golden.twin import quantize_image
        image = np.asarray(image)
        if image.dtype.kind == "f":
            image = quantize_image(image, self.compiled.cfg, self.config.numerics)
        self.backend.ddr_write(self.layout.input, self.compiled.pack_input(image))
        self.start()

    def finish_frame(self):
        """Wait for the frame started by :meth:`start_frame` and return its output tokens
        (raises :exc:`AcceleratorError` on an error status)."""
        b = self.backend
        self.last_cycles = b.wait(self.frame_timeout)
        st = self.status()
        if st["error"]:
            raise AcceleratorError(st["error_code"])
        if not st["done"]:
            raise AcceleratorError(ErrorCode.NONE, "the frame ended without status.done")
        raw = b.ddr_read(self.layout.output, self.compiled.output_bytes)
        return self.compiled.unpack_output(raw)


# -- simulation back ends ---------------------------------------------------------------------

class SimBackend:
    """Adapter from a :mod:`sim.verilator` simulation (``VerilatorSim`` or ``AmaranthSim``) to
    the driver's back-end interface. The DDR window starts at ``ddr_base``."""

    def __init__(self, sim, config, *, ddr_base, ddr_size):
        self.sim = sim
        self.config = config
        self.ddr_base = ddr_base
        self.ddr_size = ddr_size
        # Both simulators start with the same reset pulse, so that the DDR models' random
        # streams (jitter, address stalls) line up and the back ends agree cycle for cycle.
        sim.reset()

    def write_reg(self, addr, value):
        self.sim.write_reg(addr, value)

    def read_reg(self, addr):
        return self.sim.read_reg(addr)

    def ddr_write(self, addr, data):
        self.sim.ddr_write(addr, data)

    def ddr_read(self, addr, length):
        return self.sim.ddr_read(addr, length)

    def wait(self, max_cycles):
        try:
            return self.sim.run_until(max_cycles=max_cycles, busy=0)
        except Exception as exc:
            if type(exc).__name__ == "SimulationDeadline":
                raise TimeoutError(str(exc)) from exc
            raise

    def step(self, cycles):
        """Run ``cycles`` clock cycles."""
        self.sim.step(cycles)

    @property
    def cycles(self):
        """Clock cycles simulated so far."""
        return self.sim.cycles

    @property
    def stats(self):
        """DDR statistics per port (:class:`sim.ddr.DDRStats`)."""
        return self.sim.stats

    def reset(self):
        """Pulse the hardware reset (only while the accelerator is idle)."""
        self.sim.reset()

    def close(self):
        self.sim.close()


def _ddr_args(config, kwargs):
    params = dict(latency=8, jitter=0, bytes_per_cycle=None, seed=0, p_addr_stall=0.0,
                  max_outstanding=8, slverr_range=None)
    params.update(kwargs)
    return params


class AmaranthBackend(SimBackend):
    """The accelerator in the Amaranth simulator (pure Python).

    Every AXI port has a :class:`sim.ddr.DDRModel` (one memory behind all of them) and an
    :class:`sim.axi_check.AXI4Checker`; registers are accessed by AXI4-Lite transactions.

    Parameters
    ----------
    config : hdl.config.AccelConfig or str
    ddr_size : int
        Bytes of DDR.
    ddr_base : int
        Bus address of the first byte.
    check_axi : bool
        Attach the protocol checkers.
    trace : path or None
        Write a VCD.
    monitors : iterable of async callables
        Extra background testbenches (``async def tb(ctx)``), e.g. to watch internal signals.
    **ddr
        ``latency``, ``jitter``, ``bytes_per_cycle`` (per port), ``seed``, ``p_addr_stall``,
        ``max_outstanding``, ``slverr_range`` of the DDR models.

    Attributes
    ----------
    accelerator : hdl.top.Accelerator
    checkers : list of sim.axi_check.AXI4Checker
    """

    def __init__(self, config, *, ddr_size=1 << 22, ddr_base=0, check_axi=True, trace=None,
                 monitors=(), **ddr):
        from hdl.top import Accelerator
        from sim.axi_check import AXI4Checker
        from sim.verilator import AmaranthSim
        config = get_accel_config(config)
        self.accelerator = core = Accelerator(config)
        sim = AmaranthSim(core, ddr_size=ddr_size, ddr_base=ddr_base, trace=trace,
                          **_ddr_args(config, ddr))
        self.checkers = []
        if check_axi:
            for p in range(config.axi_ports):
                checker = AXI4Checker(getattr(core, f"m_axi_{p}"), name=f"m_axi_{p}")
                self.checkers.append(checker)
                # AmaranthSim builds its simulator in its constructor; the checkers join it
                # before the first cycle runs.
                sim._sim.add_testbench(checker.testbench, background=True)
        for tb in monitors:
            sim._sim.add_testbench(tb, background=True)
        super().__init__(sim, config, ddr_base=ddr_base, ddr_size=ddr_size)


def design_key(config):
    """What the accelerator's Verilog depends on, as one string: the Amaranth version, the
    configuration and a hash of every source file of the ``hdl`` and ``golden`` packages (the
    key of :meth:`sim.verilator.VerilogDesign.cached`)."""
    import hashlib
    import importlib.metadata
    from pathlib import Path

    import golden
    import hdl
    h = hashlib.sha256()
    for pkg in (hdl, golden):
        root = Path(pkg.__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes())
    return (f"amaranth {importlib.metadata.version('amaranth')}; {config!r}; "
            f"sources {h.hexdigest()}")


class VerilatorBackend(SimBackend):
    """The accelerator compiled with Verilator (:class:`sim.verilator.VerilatorSim`), with the
    same DDR model timing as :class:`AmaranthBackend` (no protocol checker: the Amaranth back
    end checks the same design cycle for cycle)."""

    def __init__(self, config, *, ddr_size=1 << 22, ddr_base=0, trace=None, **ddr):
        from hdl.top import Accelerator
        from sim.verilator import VerilatorSim
        from sim.verilator import VerilogDesign
        config = get_accel_config(config)
        self.accelerator = core = Accelerator(config)
        design = VerilogDesign.cached(core, name="m3vit_accel", key=design_key(config))
        sim = VerilatorSim(design, ddr_size=ddr_size, ddr_base=ddr_base, trace=trace,
                           **_ddr_args(config, ddr))
        super().__init__(sim, config, ddr_base=ddr_base, ddr_size=ddr_size)


# -- board back end ---------------------------------------------------------------------------

class BoardBackend:
    """The accelerator on a board, PYNQ style.

    Parameters
    ----------
    mmio
        The register window: ``read(offset) -> int`` and ``write(offset, value)`` of 32-bit
        words (``pynq.MMIO(CTRL_BASE, size)``).
    buffer
        A physically contiguous buffer (``pynq.allocate((n,), dtype="u1")``): a writable
        ``uint8`` array with ``physical_address`` (or ``device_address``), and optionally
        ``flush()`` / ``invalidate()`` for cache maintenance.
    config : hdl.config.AccelConfig or str
        The configuration the bitstream was built from. The read-back registers are checked
        against it.
    poll_interval : float
        Seconds between status polls (0: busy polling).
    """

    def __init__(self, mmio, buffer, config="zcu104", *, poll_interval=0.0, check=True):
        self.mmio = mmio
        self.buffer = buffer
        self.config = get_accel_config(config)
        self.poll_interval = poll_interval
        addr = getattr(buffer, "physical_address", None)
        if addr is None:
            addr = getattr(buffer, "device_address", None)
        if addr is None:
            raise TypeError("buffer must have a physical_address (a pynq.allocate buffer)")
        self.ddr_base = int(addr)
        self._array = np.asarray(buffer).view(np.uint8).reshape(-1)
        self.ddr_size = self._array.size
        if check:
            self.check_identity()

    def check_identity(self):
        """Raise ``RuntimeError`` unless the ``id``/``version``/``hw_*`` registers match the
        configuration."""
        from hdl.regmap import ACCEL_ID, REGMAP_VERSION
        rm = self.config.regmap
        ident = self.read_reg(rm.address_of("id"))
        if ident != ACCEL_ID:
            raise RuntimeError(f"no M3ViT accelerator at this address (id {ident:#x})")
        major = (self.read_reg(rm.address_of("version")) >> 16) & 0xFF
        if major != REGMAP_VERSION[0]:
            raise RuntimeError(f"register map version {major}.x, the driver knows "
                               f"{REGMAP_VERSION[0]}.x")
        for reg in ("hw_array", "hw_model", "hw_model2", "hw_axi"):
            want = rm[reg].reset
            got = self.read_reg(rm.address_of(reg))
            if got != want:
                raise RuntimeError(f"{reg} reads {got:#x}; the configuration "
                                   f"{self.config!r:.40} expects {want:#x}")

    def write_reg(self, addr, value):
        self.mmio.write(addr, int(value))

    def read_reg(self, addr):
        return int(self.mmio.read(addr))

    def _off(self, addr, length):
        off = addr - self.ddr_base
        if off < 0 or off + length > self.ddr_size:
            raise ValueError(f"{length} bytes at {addr:#x} are outside the buffer "
                             f"[{self.ddr_base:#x}, {self.ddr_base + self.ddr_size:#x})")
        return off

    def ddr_write(self, addr, data):
        data = np.frombuffer(bytes(data), dtype=np.uint8)
        off = self._off(addr, data.size)
        self._array[off:off + data.size] = data
        flush = getattr(self.buffer, "flush", None)
        if flush is not None:
            flush()

    def ddr_read(self, addr, length):
        inv = getattr(self.buffer, "invalidate", None)
        if inv is not None:
            inv()
        off = self._off(addr, length)
        return self._array[off:off + length].tobytes()

    def wait(self, max_polls):
        import time
        status = self.config.regmap.address_of("status")
        busy = self.config.regmap["status"].field("busy").mask
        for n in range(1, max_polls + 1):
            if not self.read_reg(status) & busy:
                return n
            if self.poll_interval:
                time.sleep(self.poll_interval)
        raise TimeoutError(f"the accelerator is still busy after {max_polls} polls")
