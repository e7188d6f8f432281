# SPDX-License-Identifier: BSD-2-Clause
"""Shared pytest options and fixtures for simulation tests."""

import re

import pytest


def pytest_addoption(parser):
    parser.addoption("--vcd", action="store_true", default=False,
                     help="write a VCD for every simulation to sim_out/<test id>.vcd "
                          "(by default only failing simulations write one)")


@pytest.fixture
def vcd_path(request):
    """Waveform path of this test: ``sim_out/<sanitised node id>.vcd`` under the rootdir."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid).strip("_")
    return request.config.rootpath / "sim_out" / f"{name}.vcd"


@pytest.fixture
def sim_args(request, vcd_path):
    """Keyword arguments for :func:`sim.harness.run_sim`: ``vcd_path`` and ``always_vcd``."""
    return {"vcd_path": vcd_path, "always_vcd": request.config.getoption("--vcd")}
