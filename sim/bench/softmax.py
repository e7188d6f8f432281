# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench softmax``: the streaming softmax against the integer twin.

Runs :class:`hdl.nonlin.softmax.Softmax` in the Amaranth simulator on random rows, compares every
probability with :func:`golden.qref.softmax`, and reports cycles, elements per cycle (rows back
to back), the latency of an isolated row (observed and the ``latency`` property), and the twin's
own error against float64 softmax.
"""

import dataclasses
import random
from functools import partial

import numpy as np

from golden import qref
from golden.numerics import DEFAULT_NUMERICS
from hdl.nonlin.config import SoftmaxConfig
from hdl.nonlin.softmax import Softmax
from sim.bench import add_stream_arguments, unit_resources
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n, put_all

__all__ = ["HELP", "add_arguments", "run", "simulate_softmax", "row_beats", "softmax_error"]

HELP = "streaming softmax (running max/sum, exp2 tables, reciprocal) vs golden.qref.softmax"


def row_beats(config, values, fmt_index, scale_int):
    """Input beats (payload dicts) of one row; refuses rows the configuration cannot take."""
    lanes = config.lanes
    values = [int(v) for v in values]
    config.check_row_len(len(values))
    if not 0 <= fmt_index < len(config.in_formats):
        raise ValueError(f"format index {fmt_index} is outside 0..{len(config.in_formats) - 1}")
    if not 0 <= scale_int <= config.scale_max:
        raise ValueError(f"scale constant {scale_int} does not fit scale_bits = "
                         f"{config.scale_bits}")
    fmt = config.in_formats[fmt_index]
    if values and (min(values) < fmt.min_int or max(values) > fmt.max_int):
        raise ValueError(f"row holds values outside its format {fmt}")
    beats = []
    for lo in range(0, len(values), lanes):
        chunk = values[lo:lo + lanes]
        last = lo + lanes >= len(values)
        beats.append({"data": chunk + [0] * (lanes - len(chunk)), "count": len(chunk),
                      "last": int(last), "scale": scale_int, "fmt": fmt_index})
    return beats


def simulate_softmax(dut, rows, *, seed=0, p_idle=0.0, p_stall=0.0, vcd_path=None,
                     always_vcd=False, observe=None):
    """Run ``rows`` (a list of ``(values, fmt_index, scale_int)``) through ``dut``.

    Returns the output rows as lists of ints (``count`` elements of each beat). Random bubbles on
    ``i`` and stalls on ``o``; the stream-rule checker watches both. ``observe`` (a dict)
    receives ``first_in`` (cycle of the first input transfer), ``cycles`` (cycle after the last
    output transfer), and per row ``last_in`` (cycle of its last input transfer) and
    ``first_out`` (first cycle its first beat is valid on ``o``).
    """
    cfg = dut.config
    beats = [b for values, k, c in rows for b in row_beats(cfg, values, k, c)]
    result = {}
    obs = observe if observe is not None else {}
    obs.setdefault("last_in", [])
    obs.setdefault("first_out", [])

    async def producer(ctx):
        await put_all(ctx, dut.i, beats, rng=random.Random(seed), p_idle=p_idle)

    async def consumer(ctx):
        result["out"] = await get_n(ctx, dut.o, len(beats), rng=random.Random(seed + 1),
                                    p_stall=p_stall)

    async def monitor(ctx):
        cycle = 0
        row_start = True
        async for _, _, iv, ir, il, ov, orr, ol in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.i.payload.last,
                dut.o.valid, dut.o.ready, dut.o.payload.last):
            if iv and ir:
                obs.setdefault("first_in", cycle)
                if il:
                    obs["last_in"].append(cycle)
            if ov and row_start:
                obs["first_out"].append(cycle)
                row_start = False
            if ov and orr:
                obs["cycles"] = cycle + 1
                row_start = bool(ol)
            cycle += 1

    run_sim(dut, [producer, consumer],
            background=[partial(check_stream_rules, stream=dut.i, name="i"),
                        partial(check_stream_rules, stream=dut.o, name="o"), monitor],
            deadline_cycles=40 * len(beats) + 40 * len(rows) + 500,
            vcd_path=vcd_path, always_vcd=always_vcd)
    out_rows, cur = [], []
    for beat in result["out"]:
        count = int(beat.count)
        cur.extend(int(beat.data[j]) for j in range(count))
        for j in range(count, cfg.lanes):
            if int(beat.data[j]) != 0:
                raise AssertionError(f"masked lane {j} of a last beat is {int(beat.data[j])}")
        if beat.last:
            out_rows.append(cur)
            cur = []
        elif count != cfg.lanes:
            raise AssertionError(f"a beat that is not last has count {count}")
    if cur:
        raise AssertionError("the output ended inside a row")
    return out_rows


def reference(config, values, fmt_index, scale):
    """``golden.qref.softmax`` of one row."""
    fmt = config.in_formats[fmt_index]
    return qref.softmax(np.array([values], dtype=np.int64), fmt, scale, config.numerics)[0]


def softmax_error(rows, fmt, scale, numerics=DEFAULT_NUMERICS):
    """Error of the twin against float64 softmax over ``rows`` (int arrays in ``fmt``).

    Returns ``(max_abs_err_unrounded, max_lsb_err)``: the largest absolute error of the
    probability before its final rounding (``e·y1·2**-(recip_frac + b)``), and of the result in
    units of ``prob``'s LSB.
    """
    worst_unrounded = worst_lsb = 0.0
    pf = numerics.prob.f_bits
    for row in rows:
        s = np.array([row], dtype=np.int64)
        x = np.ldexp(s.astype(np.float64), -fmt.f_bits) * scale
        ex = np.exp(x - x.max())
        exact = ex / ex.sum()
        e, y1, b = qref.softmax_detail(s, fmt, scale, numerics)
        unrounded = (e.astype(np.float64) * y1[..., None].astype(np.float64)
                     * np.ldexp(1.0, -(numerics.recip_frac + b))[..., None])
        p = qref.softmax(s, fmt, scale, numerics).astype(np.float64)
        worst_unrounded = max(worst_unrounded, float(np.max(np.abs(unrounded - exact))))
        worst_lsb = max(worst_lsb, float(np.max(np.abs(p - np.ldexp(exact, pf)))))
    return worst_unrounded, worst_lsb


def edge_rows(fmt, length, rng):
    """Edge-case rows of ``length`` in ``fmt``: all equal, one dominant, underflowing tails,
    the format's limits, an increasing ramp (the running maximum rises every group)."""
    lo, hi = fmt.min_int, fmt.max_int
    rows = [
        [0] * length,
        [hi] * length,
        [lo] * length,
        [lo] * (length - 1) + [hi],
        [hi] + [lo] * (length - 1),
        list(np.linspace(lo, hi, length).astype(np.int64)),
        list(np.linspace(hi, lo, length).astype(np.int64)),
        [int(v) for v in rng.integers(lo, hi + 1, length)],
    ]
    rows.append([hi if k % 2 else lo for k in range(length)])
    return rows


def add_arguments(parser):
    parser.add_argument("--lanes", type=int, default=None,
                        help="elements per cycle (numerics.softmax_lanes)")
    parser.add_argument("--max-len", type=int, default=1201, help="longest row (1201)")
    parser.add_argument("--len", type=int, default=129, help="row length (129)")
    parser.add_argument("--rows", type=int, default=8, help="rows (8)")
    parser.add_argument("--format", choices=("score", "logit"), default="score",
                        help="input format (score)")
    parser.add_argument("--scale", type=float, default=None,
                        help="softmax scale (score: 64**-0.5, logit: 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--sigma", type=float, default=4.0,
                        help="standard deviation of the random inputs, real units (4.0)")
    add_stream_arguments(parser)
    parser.add_argument("--error-rows", type=int, default=2000,
                        help="random rows for the twin's error figures (2000)")


def run(args):
    nx = DEFAULT_NUMERICS
    if args.lanes is not None:
        # The lane count is part of the numerics: the twin regroups the running sum with it.
        nx = dataclasses.replace(nx, softmax_lanes=args.lanes)
    cfg = SoftmaxConfig(nx, args.lanes, args.max_len)
    cfg.check_row_len(args.len)
    if args.rows < 1:
        raise ValueError("--rows must be positive")
    fmt_index = 0 if args.format == "score" else 1
    fmt = cfg.in_formats[fmt_index]
    scale = args.scale if args.scale is not None else (64 ** -0.5 if args.format == "score"
                                                        else 1.0)
    c = qref.softmax_scale_int(scale, nx)
    if c >= 1 << cfg.scale_bits:
        raise ValueError(f"scale {scale} needs more than scale_bits = {cfg.scale_bits} bits")
    rng = np.random.default_rng(args.seed)

    def random_rows(n_rows, length):
        x = rng.normal(0.0, args.sigma, (n_rows, length)) * (1 << fmt.f_bits)
        return np.clip(np.rint(x), fmt.min_int, fmt.max_int).astype(np.int64)

    data_rows = random_rows(args.rows, args.len)
    dut = Softmax(cfg)
    obs = {}
    out = simulate_softmax(dut, [(r, fmt_index, c) for r in data_rows], seed=args.seed,
                           p_idle=args.p_idle, p_stall=args.p_stall, observe=obs)
    want = [reference(cfg, r, fmt_index, scale) for r in data_rows]
    mismatches = sum(int(np.count_nonzero(np.array(o) != w)) for o, w in zip(out, want))
    cycles = obs["cycles"] - obs["first_in"]

    # Latency of an isolated row (one with a constant maximum: no rescale in flight).
    single = Softmax(cfg)
    lobs = {}
    simulate_softmax(single, [([0] * args.len, fmt_index, c)], observe=lobs)

    err_rows = list(random_rows(args.error_rows, args.len))
    err_rows += edge_rows(fmt, args.len, rng)
    err_unrounded, err_lsb = softmax_error(err_rows, fmt, scale, nx)
    n = args.rows * args.len
    result = {
        "block": "softmax",
        "lanes": cfg.lanes,
        "max_len": cfg.max_len,
        "len": args.len,
        "rows": args.rows,
        "format": str(fmt),
        "scale": scale,
        "scale_int": c,
        "bit_exact": mismatches == 0,
        "mismatches": mismatches,
        "cycles": cycles,
        "elements_per_cycle": n / cycles,
        "elements_per_cycle_model": dut.throughput(args.len),
        "latency": dut.latency,
        "latency_observed": lobs["first_out"][0] - lobs["last_in"][0],
        "max_abs_err_unrounded": err_unrounded,
        "max_lsb_err": err_lsb,
        "error_rows": len(err_rows),
    }
    if args.resources:
        result["resources"] = unit_resources(Softmax(cfg), "softmax")
    return result


