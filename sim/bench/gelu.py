# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench gelu``: the streaming GELU against the integer twin.

Runs :class:`hdl.nonlin.gelu.Gelu` in the Amaranth simulator on random elements of the chosen
format, compares every output with :func:`golden.qref.gelu`, and reports cycles, elements per
cycle, the observed latency, and the approximation error of the twin itself (exact erf GELU over
every representable input in [−gelu_range, gelu_range]).
"""

import math
import random
from functools import partial

import numpy as np

from golden import qref
from golden.numerics import DEFAULT_NUMERICS
from hdl.nonlin.config import GeluConfig
from hdl.nonlin.gelu import Gelu
from sim.bench import add_stream_arguments, unit_resources
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n, put_all

__all__ = ["HELP", "add_arguments", "run", "simulate_gelu", "gelu_error"]

HELP = "streaming GELU (δ table + interpolation) vs golden.qref.gelu"

_FORMATS = ("hidden", "act", "ln_out", "logit")


def simulate_gelu(dut, beats, *, seed=0, p_idle=0.0, p_stall=0.0, vcd_path=None,
                  always_vcd=False, observe=None):
    """Push ``beats`` (lists of ``lanes`` ints) through a :class:`Gelu`; return the output beats.

    Random bubbles on ``i`` (``p_idle``) and stalls on ``o`` (``p_stall``); the stream-rule
    checker watches both. ``observe`` (a dict) receives ``first_in`` and ``first_out`` (cycle of
    the first input transfer and of the first valid output) and ``cycles`` (cycle after the last
    output transfer).
    """
    result = {}
    obs = observe if observe is not None else {}

    async def producer(ctx):
        await put_all(ctx, dut.i, beats, rng=random.Random(seed), p_idle=p_idle)

    async def consumer(ctx):
        out = await get_n(ctx, dut.o, len(beats), rng=random.Random(seed + 1), p_stall=p_stall)
        result["out"] = [[int(v) for v in beat] for beat in out]

    async def monitor(ctx):
        cycle = 0
        async for _, _, iv, ir, ov, orr in ctx.tick().sample(dut.i.valid, dut.i.ready,
                                                              dut.o.valid, dut.o.ready):
            if iv and ir and "first_in" not in obs:
                obs["first_in"] = cycle
            if ov and "first_out" not in obs:
                obs["first_out"] = cycle
            if ov and orr:
                obs["cycles"] = cycle + 1
            cycle += 1

    run_sim(dut, [producer, consumer],
            background=[partial(check_stream_rules, stream=dut.i, name="i"),
                        partial(check_stream_rules, stream=dut.o, name="o"), monitor],
            deadline_cycles=20 * len(beats) + 200, vcd_path=vcd_path, always_vcd=always_vcd)
    return result["out"]


def gelu_error(fmt, numerics=DEFAULT_NUMERICS):
    """Error of :func:`golden.qref.gelu` against the exact (erf) GELU over every value of
    ``fmt`` in [−gelu_range, gelu_range].

    Returns ``(max_abs_err_unrounded, max_lsb_err)``: the largest absolute error of the value
    before its final rounding (real units), and of the result in units of ``fmt``'s LSB.
    """
    lim = min(numerics.gelu_range << fmt.f_bits, fmt.max_int)
    x = np.arange(max(-lim, fmt.min_int), lim + 1, dtype=np.int64)
    xr = np.ldexp(x.astype(np.float64), -fmt.f_bits)
    exact = xr * 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in xr])
    detail_frac = numerics.gelu_frac + fmt.f_bits - numerics.gelu_step_bits
    unrounded = np.ldexp(qref.gelu_detail(x, fmt, numerics).astype(np.float64), -detail_frac)
    rounded = qref.gelu(x, fmt, numerics).astype(np.float64)
    return (float(np.max(np.abs(unrounded - exact))),
            float(np.max(np.abs(rounded - np.ldexp(exact, fmt.f_bits)))))


def add_arguments(parser):
    parser.add_argument("--lanes", type=int, default=16, help="elements per cycle (16)")
    parser.add_argument("--format", choices=_FORMATS, default="hidden",
                        help="numerics format of input and output (hidden)")
    parser.add_argument("--rows", type=int, default=16, help="rows of random data (16)")
    parser.add_argument("--len", type=int, default=256, help="elements per row (256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    add_stream_arguments(parser)


def run(args):
    nx = DEFAULT_NUMERICS
    fmt = getattr(nx, args.format)
    cfg = GeluConfig(nx, fmt, args.lanes)
    if args.rows < 1 or args.len < 1:
        raise ValueError("--rows and --len must be positive")
    rng = np.random.default_rng(args.seed)
    n = args.rows * args.len
    # Half uniform over the format, half Gaussian around 0 (where δ matters).
    x = np.concatenate([rng.integers(fmt.min_int, fmt.max_int + 1, n - n // 2),
                        np.clip(np.rint(rng.normal(0, 2.0, n // 2) * (1 << fmt.f_bits)),
                                fmt.min_int, fmt.max_int).astype(np.int64)])
    rng.shuffle(x)
    pad = (-n) % cfg.lanes
    xs = np.concatenate([x, np.zeros(pad, dtype=np.int64)])
    beats = xs.reshape(-1, cfg.lanes).tolist()
    dut = Gelu(cfg)
    obs = {}
    out = simulate_gelu(dut, beats, seed=args.seed, p_idle=args.p_idle, p_stall=args.p_stall,
                        observe=obs)
    got = np.array(out, dtype=np.int64).ravel()[:n]
    want = qref.gelu(x, fmt, nx)
    cycles = obs["cycles"] - obs["first_in"]
    err_unrounded, err_lsb = gelu_error(fmt, nx)
    result = {
        "block": "gelu",
        "format": str(fmt),
        "lanes": cfg.lanes,
        "elements": n,
        "bit_exact": bool(np.array_equal(got, want)),
        "mismatches": int(np.count_nonzero(got != want)),
        "cycles": cycles,
        "elements_per_cycle": n / cycles,
        "latency": dut.latency,
        "latency_observed": obs["first_out"] - obs["first_in"],
        "max_abs_err_unrounded": err_unrounded,
        "max_lsb_err": err_lsb,
        "table_entries": len(cfg.table),
    }
    if args.resources:
        result["resources"] = unit_resources(Gelu(cfg), "gelu")
    return result
