# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/moe/core.py: the MoE layer engine behind registers, on the host driver API of
sim/verilator (the Amaranth back end here; the Verilator back end for m3vit-tiny, slow)."""

import numpy as np
import pytest

from hdl.moe.core import Op, moe_core_regmap
from hdl.moe.layer import Status
from sim.bench.moe import compute_config, moe_block_reference, run_core, synthetic_case


def test_regmap():
    rm = moe_core_regmap()
    assert rm.address_of("control") == 0
    names = [r.name for r in rm]
    for name in ("task", "layer", "image_base", "image_bytes", "ddr_addr", "state", "cycles",
                 "stall_cycles", "bytes_fetched", "n_used"):
        assert name in names
    assert [op.value for op in Op] == [0, 1, 2, 3]


def test_core_amaranth_backend_micro():
    """Load u and x over AXI, run task 0 then task 1, store x: both bit-exact."""
    qm, u, x = synthetic_case("micro", 4, "random")
    compute = compute_config("micro", 4, 4)
    res = run_core(qm, u, x, 0, 1, compute, backend="amaranth", prior_task=0, latency=30,
                   jitter=8, seed=3)
    for t, r in ((0, res["prior"]), (1, res)):
        ref, info = moe_block_reference(qm, qm.cfg.moe_blocks[0], t, u, x)
        assert r["status"] == Status.OK
        assert np.array_equal(r["x"], ref)
        assert r["bytes_fetched"] == len(info["experts"]) * res["config"].layout.bytes_for_expert()


@pytest.mark.slow
def test_core_verilator_m3vit_tiny():
    """One MoE layer of m3vit-tiny (16 × 16 array) on Verilator: bit-exact, every used expert
    fetched once, within 1.25 × the larger of the compute and DDR bounds."""
    from sim.verilator import VerilatorNotFound, find_verilator
    try:
        find_verilator()
    except VerilatorNotFound as error:
        pytest.skip(str(error))
    from sim.bench.moe import measure
    out = measure("m3vit-tiny", task=1, backend="verilator")
    assert out["bit_exact"]
    assert out["experts_used"] == len(out["tokens_per_expert"])
    assert out["bytes_fetched"] == out["bytes_expected"]
    assert out["stall_cycles_between_experts"] == 0
    assert out["cycles"] <= 1.25 * out["bound_cycles"]
