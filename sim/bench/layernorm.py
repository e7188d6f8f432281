# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench layernorm``: the streaming LayerNorm against the integer twin.

Runs :class:`hdl.nonlin.layernorm.LayerNorm` in the Amaranth simulator: one parameter load
(random γ, β, n and eps_int), then random rows back to back; compares every output with
:func:`golden.qref.layernorm` and reports cycles, elements per cycle, the latency of an isolated
row, and the twin's error against float64 LayerNorm.
"""

import random
from functools import partial

import numpy as np

from golden import qref
from golden.fixed import round_shift
from golden.numerics import DEFAULT_NUMERICS
from hdl.nonlin.config import LayerNormConfig
from hdl.nonlin.layernorm import LayerNorm
from sim.bench import add_stream_arguments, unit_resources
from sim.harness import run_sim
from sim.streams import check_stream_rules, get_n, put_all

__all__ = ["HELP", "add_arguments", "run", "simulate_layernorm", "eps_int", "param_beats",
           "layernorm_error"]

HELP = "streaming LayerNorm (exact sums, rsqrt table + Newton) vs golden.qref.layernorm"


def eps_int(config, n, eps):
    """The runtime constant for rows of ``n`` in ``config.in_fmt`` (from
    :func:`golden.qref.layernorm_stats`: ``V'`` of a zero row is ``eps_int``)."""
    return int(qref.layernorm_stats(np.zeros(n, dtype=np.int64), eps, config.in_fmt)[1])


def param_beats(config, gamma, beta, eps_value):
    """The ``params`` beats of one parameter load."""
    lanes = config.lanes
    n = len(gamma)
    config.check_row_len(n)
    if len(beta) != n:
        raise ValueError(f"gamma and beta must have the same length, not {n} and {len(beta)}")
    if not 1 <= eps_value <= config.eps_max:
        raise ValueError(f"eps_int {eps_value} is outside 1..{config.eps_max} "
                         f"(eps_bits = {config.eps_bits})")
    beats = []
    for lo in range(0, n, lanes):
        g = [int(v) for v in gamma[lo:lo + lanes]]
        b = [int(v) for v in beta[lo:lo + lanes]]
        pad = lanes - len(g)
        beats.append({"gamma": g + [0] * pad, "beta": b + [0] * pad, "count": len(g),
                      "last": int(lo + lanes >= n), "eps": eps_value})
    return beats


def _row_beats(config, row):
    lanes = config.lanes
    row = [int(v) for v in row]
    row += [0] * ((-len(row)) % lanes)
    return [row[k:k + lanes] for k in range(0, len(row), lanes)]


def simulate_layernorm(dut, layers, *, seed=0, p_idle=0.0, p_stall=0.0, vcd_path=None,
                       always_vcd=False, observe=None):
    """Run ``layers`` through ``dut``: each ``(gamma, beta, eps_int, rows)`` is a parameter load
    followed by its rows. Returns the output rows of every layer (lists of ints).

    Random bubbles on ``params`` and ``i`` and stalls on ``o``; the stream-rule checker watches
    all three. ``observe`` (a dict) receives ``first_in``, ``cycles``, and per row ``last_in``
    and ``first_out`` (as :func:`sim.bench.softmax.simulate_softmax`).
    """
    cfg = dut.config
    total = sum(len(rows) * -(-len(gamma) // cfg.lanes) for gamma, _, _, rows in layers)
    result = {}
    obs = observe if observe is not None else {}
    obs.setdefault("last_in", [])
    obs.setdefault("first_out", [])

    async def producer(ctx):
        rng = random.Random(seed)
        for gamma, beta, eps_value, rows in layers:
            await put_all(ctx, dut.params, param_beats(cfg, gamma, beta, eps_value), rng=rng,
                          p_idle=p_idle)
            beats = [b for row in rows for b in _row_beats(cfg, row)]
            await put_all(ctx, dut.i, beats, rng=rng, p_idle=p_idle)

    async def consumer(ctx):
        result["out"] = await get_n(ctx, dut.o, total, rng=random.Random(seed + 1),
                                    p_stall=p_stall)

    row_ends = []
    for gamma, _, _, rows in layers:
        g = -(-len(gamma) // cfg.lanes)
        row_ends += [g] * len(rows)

    async def monitor(ctx):
        cycle = 0
        row_start = True
        beats_in = 0
        row = 0
        async for _, _, iv, ir, ov, orr, ol in ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload.last):
            if iv and ir:
                obs.setdefault("first_in", cycle)
                beats_in += 1
                if row < len(row_ends) and beats_in == row_ends[row]:
                    obs["last_in"].append(cycle)
                    beats_in = 0
                    row += 1
            if ov and row_start:
                obs["first_out"].append(cycle)
                row_start = False
            if ov and orr:
                obs["cycles"] = cycle + 1
                row_start = bool(ol)
            cycle += 1

    run_sim(dut, [producer, consumer],
            background=[partial(check_stream_rules, stream=dut.params, name="params"),
                        partial(check_stream_rules, stream=dut.i, name="i"),
                        partial(check_stream_rules, stream=dut.o, name="o"), monitor],
            deadline_cycles=40 * total + 60 * len(row_ends) + 500,
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
    if cur:
        raise AssertionError("the output ended inside a row")
    return out_rows


def reference(config, rows, gamma, beta, eps):
    """``golden.qref.layernorm`` of ``rows`` with float ``eps``."""
    return qref.layernorm(np.array(rows, dtype=np.int64), np.array(gamma), np.array(beta),
                          in_fmt=config.in_fmt, param_fmt=config.param_fmt,
                          out_fmt=config.out_fmt, numerics=config.numerics, eps=eps)


def layernorm_error(config, rows, gamma, beta, eps):
    """Error of the twin against float64 LayerNorm over ``rows``.

    Returns ``(max_abs_err_xhat, max_lsb_err)``: the largest error of the normalised value x̂
    (before the gain; real units) and of the output in units of ``out_fmt``'s LSB.
    """
    nx = config.numerics
    x = np.array(rows, dtype=np.int64)
    xr = np.ldexp(x.astype(np.float64), -config.in_fmt.f_bits)
    mean = xr.mean(axis=-1, keepdims=True)
    var = xr.var(axis=-1, keepdims=True)
    exact_xhat = (xr - mean) / np.sqrt(var + eps)
    g = np.ldexp(np.array(gamma, dtype=np.float64), -config.param_fmt.f_bits)
    b = np.ldexp(np.array(beta, dtype=np.float64), -config.param_fmt.f_bits)
    exact = exact_xhat * g + b
    s1, v = qref.layernorm_stats(x, eps, config.in_fmt)
    y1, e = qref.rsqrt(v, nx)
    n = x.shape[-1]
    xhat = round_shift((n * x - s1[..., None]) * y1[..., None],
                            (nx.rsqrt_frac + e - nx.ln_xhat_frac)[..., None])
    got = reference(config, rows, gamma, beta, eps).astype(np.float64)
    return (float(np.max(np.abs(np.ldexp(xhat.astype(np.float64), -nx.ln_xhat_frac)
                                - exact_xhat))),
            float(np.max(np.abs(got - np.ldexp(exact, config.out_fmt.f_bits)))))


def add_arguments(parser):
    parser.add_argument("--lanes", type=int, default=8, help="elements per cycle (8)")
    parser.add_argument("--max-len", type=int, default=192, help="longest row (192)")
    parser.add_argument("--len", type=int, default=192, help="row length n (192)")
    parser.add_argument("--rows", type=int, default=16, help="rows (16)")
    parser.add_argument("--eps", type=float, default=1e-6, help="LayerNorm epsilon (1e-6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--sigma", type=float, default=2.0,
                        help="standard deviation of the inputs, real units (2.0)")
    add_stream_arguments(parser)


def run(args):
    nx = DEFAULT_NUMERICS
    cfg = LayerNormConfig(nx, args.lanes, args.max_len)
    cfg.check_row_len(args.len)
    if args.rows < 1:
        raise ValueError("--rows must be positive")
    n = args.len
    fi, fp = cfg.in_fmt, cfg.param_fmt
    e_int = eps_int(cfg, n, args.eps)
    if e_int > cfg.eps_max:
        raise ValueError(f"eps_int {e_int} needs more than eps_bits = {cfg.eps_bits} bits")
    rng = np.random.default_rng(args.seed)
    rows = np.clip(np.rint(rng.normal(rng.normal(0, 1, (args.rows, 1)), args.sigma,
                                      (args.rows, n)) * (1 << fi.f_bits)),
                   fi.min_int, fi.max_int).astype(np.int64)
    gamma = np.clip(np.rint(rng.normal(1.0, 0.5, n) * (1 << fp.f_bits)), fp.min_int,
                    fp.max_int).astype(np.int64)
    beta = np.clip(np.rint(rng.normal(0.0, 0.5, n) * (1 << fp.f_bits)), fp.min_int,
                   fp.max_int).astype(np.int64)
    dut = LayerNorm(cfg)
    obs = {}
    out = simulate_layernorm(dut, [(gamma, beta, e_int, list(rows))], seed=args.seed,
                             p_idle=args.p_idle, p_stall=args.p_stall, observe=obs)
    want = reference(cfg, rows, gamma, beta, args.eps)
    got = np.array(out, dtype=np.int64)
    mismatches = int(np.count_nonzero(got != want)) if got.shape == want.shape else want.size
    cycles = obs["cycles"] - obs["first_in"]

    single = LayerNorm(cfg)
    lobs = {}
    simulate_layernorm(single, [(gamma, beta, e_int, [rows[0]])], observe=lobs)

    err_rows = np.concatenate([rows, np.clip(np.rint(rng.normal(0, 1, (256, n)) * args.sigma
                                                     * (1 << fi.f_bits)),
                                             fi.min_int, fi.max_int).astype(np.int64)])
    err_xhat, err_lsb = layernorm_error(cfg, err_rows, gamma, beta, args.eps)
    result = {
        "block": "layernorm",
        "lanes": cfg.lanes,
        "max_len": cfg.max_len,
        "len": n,
        "rows": args.rows,
        "eps_int": e_int,
        "bit_exact": mismatches == 0,
        "mismatches": mismatches,
        "cycles": cycles,
        "elements_per_cycle": n * args.rows / cycles,
        "elements_per_cycle_model": dut.throughput(n),
        "latency": dut.latency,
        "latency_observed": lobs["first_out"][0] - lobs["last_in"][0],
        "max_abs_err_xhat": err_xhat,
        "max_lsb_err": err_lsb,
    }
    if args.resources:
        result["resources"] = unit_resources(LayerNorm(cfg), "layernorm")
    return result
