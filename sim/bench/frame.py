# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench frame``: one whole M³ViT backbone frame on the accelerator.

The model (``--config``, seeded weights from :func:`golden.checkpoint.init_model`) is compiled
for an accelerator configuration (``--accel``), the frame runs in simulation (``--backend
amaranth`` or ``verilator``) with the DDR model at ZCU104 figures (100 cycles latency, jitter,
17.06 GB/s at 300 MHz shared by the ports, 128-bit ports), and the output is compared with
:func:`golden.twin.twin_forward`. ``--model-only`` skips the hardware simulation: the compiled
program runs on the functional model (:mod:`sim.program_model`, for ``bit_exact``) and the
cycles come from the analytic model (:mod:`sim.frame_model`).

Figures: ``bit_exact``, ``cycles``, ``ms_at_clock``, ``macs`` (``ModelConfig.macs()``),
``pe_utilization`` (MACs / (cycles · PEs)), ``ddr_bytes`` (read + write), ``stall_cycles`` by
cause (the accelerator's counters), ``roofline_cycles`` = max(compute-bound, DDR-bound),
``roofline_fraction`` = roofline / cycles, the analytic estimate ``model_cycles``, and the
time it took: ``setup_seconds`` (elaboration, Verilog, the Verilator build or its cache),
``sim_seconds`` (the frame itself) and ``sim_cycles_per_second``.

What-ifs: ``--array RxC`` replaces the configuration's PE array (powers of two, as the MoE
engine needs); ``--stream-ports S`` the number of ports the parameter stream reads at once (one
bus word from each per cycle; both on any back end); ``--stream-bytes B`` (with ``--model-only``)
lets the analytic model read the parameter stream at ``B`` bytes per cycle whatever the ports.

``--plot FILE.png`` (or ``--breakdown``) also samples the counters during the frame
(:mod:`sim.frame_profile`) and reports ``per_block``: each block's cycles by category (dense
products, attention, nonlinear units, MoE, copies, DMA stall) and its roofline; ``--plot``
draws them.
"""

import time

import numpy as np

from sim.bench import array_shape

HELP = "a whole backbone frame on the accelerator, against the integer twin"

__all__ = ["run", "add_arguments"]


def add_arguments(parser):
    parser.add_argument("--config", default="micro", help="model preset (golden.config)")
    parser.add_argument("--accel", default=None,
                        help="accelerator preset (hdl.config; default: small for micro, "
                             "zcu104 otherwise)")
    parser.add_argument("--task", type=int, default=0, help="task id")
    parser.add_argument("--seed", type=int, default=0, help="weights and image seed")
    parser.add_argument("--backend", choices=("amaranth", "verilator"), default="amaranth")
    parser.add_argument("--model-only", action="store_true",
                        help="no hardware simulation: functional model and analytic cycles")
    parser.add_argument("--array", metavar="RxC", default=None,
                        help="what-if: replace the accelerator's PE array by rows x cols")
    parser.add_argument("--stream-bytes", type=float, default=None,
                        help="what-if with --model-only: parameter-stream bandwidth in bytes "
                             "per cycle (default: the hardware's, a bus word per stream port)")
    parser.add_argument("--stream-ports", type=int, default=None,
                        help="what-if: ports the parameter stream reads at once (1, 2 or 4)")
    parser.add_argument("--spill-rows", type=int, default=None, metavar="T",
                        help="run the DDR-spill program with tiles of T tokens (default: on "
                             "chip when the model fits, else the largest tiles that fit)")
    parser.add_argument("--latency", type=int, default=100, help="DDR latency in cycles")
    parser.add_argument("--jitter", type=int, default=16, help="DDR latency jitter")
    parser.add_argument("--breakdown", action="store_true",
                        help="per-block cycle breakdown (samples the counters during the frame)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="draw the per-block breakdown and rooflines to FILE.png (implies "
                             "--breakdown)")
    parser.add_argument("--sample-every", type=int, default=None,
                        help="cycles between counter samples for the breakdown (default: the "
                             "estimated frame cycles / 500, at least 256)")


def _model(cfg, seed):
    from golden.checkpoint import init_model, seeded_image
    from golden.twin import quantize_image, quantize_params
    qm = quantize_params(init_model(cfg, seed).state_dict(), cfg)
    return qm, quantize_image(seeded_image(cfg, seed + 1), cfg)


def _with_array(accel, spec):
    """``accel`` with its PE array replaced by ``spec`` = ``"RxC"``."""
    import dataclasses

    from hdl.systolic.config import ArrayConfig
    rows, cols = array_shape(spec)
    old = accel.compute.array
    array = ArrayConfig(rows, cols, numerics=old.numerics, mesh_regs=old.mesh_regs,
                        load_words=old.load_words if rows % 2 == cols % 2 == 0 else 1)
    return accel.replace(compute=dataclasses.replace(accel.compute, array=array))


def run(args):
    from golden.config import get_config
    from golden.twin import twin_forward
    from hdl.compiler import compile_model
    from hdl.config import get_accel_config
    from sim.frame_model import ZCU104_DDR_BYTES_PER_CYCLE, estimate_frame, expert_counts

    cfg = get_config(args.config)
    cfg.check_task(args.task)
    breakdown = args.breakdown or args.plot is not None
    if breakdown and args.model_only:
        raise ValueError("--breakdown and --plot need a simulation, not --model-only")
    if args.sample_every is not None and args.sample_every < 1:
        raise ValueError(f"--sample-every must be a positive number of cycles, not "
                         f"{args.sample_every}")
    accel = get_accel_config(args.accel or ("small" if cfg.name == "micro" else "zcu104"))
    if args.array is not None:
        accel = _with_array(accel, args.array)
    if args.stream_ports is not None:
        accel = accel.replace(stream_ports=args.stream_ports)
    if args.stream_bytes is not None and not (args.model_only and args.stream_bytes > 0):
        raise ValueError("--stream-bytes is a what-if of the analytic model: it needs "
                         "--model-only and a positive number of bytes per cycle")
    qm, image = _model(cfg, args.seed)
    cm = compile_model(qm, accel, spill_rows=args.spill_rows)
    ref = twin_forward(qm, image, args.task, moe_tokens=cm.moe_tokens)
    agg = ZCU104_DDR_BYTES_PER_CYCLE
    port = min(accel.beat_bytes, agg / accel.axi_ports)
    counts = expert_counts(qm, image, args.task, cm.moe_tokens)
    est = estimate_frame(cm, counts=counts, latency=args.latency, ddr_bytes_per_cycle=agg,
                         port_bytes_per_cycle=port, stream_bytes_per_cycle=args.stream_bytes)
    out = {"config": cfg.name, "accel": args.accel or ("small" if cfg.name == "micro"
                                                        else "zcu104"),
           "task": args.task, "backend": "model" if args.model_only else args.backend,
           "array": f"{accel.compute.array.rows}x{accel.compute.array.cols}",
           "load_words": accel.compute.array.load_words,
           "axi_ports": accel.axi_ports, "stream_ports": accel.stream_ports,
           "clock_mhz": accel.clock_mhz, "spill_rows": cm.plan.spill_rows}
    t0 = time.time()
    if args.model_only:
        from sim.program_model import ProgramModel
        buf = bytearray(len(cm.weights) + len(cm.program) + cm.input_bytes
                        + cm.output_region_bytes + 4 * 4096)
        w, p = 0, -(-len(cm.weights) // 4096) * 4096
        i = p + -(-len(cm.program) // 4096) * 4096
        o = i + -(-cm.input_bytes // 4096) * 4096
        buf[w:w + len(cm.weights)] = cm.weights
        buf[p:p + len(cm.program)] = cm.program
        buf[i:i + cm.input_bytes] = cm.pack_input(image)

        def rd(a, n):
            return bytes(buf[a:a + n])

        def wr(a, d):
            buf[a:a + len(d)] = d

        ProgramModel(accel).run(rd, wr, weights_addr=w, program_addr=p,
                                program_len=len(cm.program), input_addr=i, output_addr=o,
                                task=args.task)
        got = cm.unpack_output(buf[o:o + cm.output_bytes])
        cycles = est.cycles
        stalls = None
        ddr_bytes = est.ddr_bytes
    else:
        from sim.driver import AmaranthBackend, Driver, VerilatorBackend
        size = -(-(len(cm.weights) + len(cm.program) + cm.input_bytes
                   + cm.output_region_bytes + 6 * 4096) // (1 << 20)) << 20
        ddr = dict(ddr_size=size, latency=args.latency, jitter=args.jitter, seed=args.seed,
                   bytes_per_cycle=port, max_outstanding=16)
        backend = (AmaranthBackend(accel, **ddr) if args.backend == "amaranth"
                   else VerilatorBackend(accel, **ddr))
        setup = time.time() - t0
        drv = Driver(backend, frame_timeout=20 * est.cycles + 100_000)
        drv.load_model(qm, spill_rows=args.spill_rows)
        drv.set_task(args.task)
        drv.clear_counters()
        t1, c1 = time.time(), backend.cycles
        if breakdown:
            from sim.frame_profile import per_block, profile_frame
            every = args.sample_every or max(256, est.cycles // 500)
            got, per_instr = profile_frame(drv, image, every=every,
                                           weights=[i["cycles"] for i in est.per_instruction])
            out["sample_every"] = every
        else:
            got = drv.run_frame(image)
        sim_s = time.time() - t1
        sim_cycles = backend.cycles - c1
        out.update({"setup_seconds": round(setup, 1), "sim_seconds": round(sim_s, 2),
                    "sim_cycles_per_second": round(sim_cycles / max(sim_s, 1e-9))})
        cnt = drv.counters()
        cycles = cnt["cycles"]
        stalls = {k[len("stall_"):]: v for k, v in cnt.items() if k.startswith("stall_")}
        ddr_bytes = cnt["ddr_read_bytes"] + cnt["ddr_write_bytes"]
        out.update({"ddr_read_bytes": cnt["ddr_read_bytes"],
                    "ddr_write_bytes": cnt["ddr_write_bytes"],
                    "compute_busy_cycles": cnt["compute_busy"],
                    "moe_cycles": cnt["moe_cycles"], "instructions": cnt["instructions"]})
    wall = time.time() - t0
    macs = cfg.macs()
    ddr_bound = int(np.ceil(ddr_bytes / agg))
    roofline = max(est.compute_bound, ddr_bound)
    out.update({
        "bit_exact": bool(np.array_equal(got, ref)),
        "cycles": int(cycles),
        "ms_at_clock": round(cycles / (accel.clock_mhz * 1e3), 4),
        "macs": macs,
        "pe_utilization": round(macs / (cycles * accel.n_pes), 4),
        "ddr_bytes": int(ddr_bytes),
        "stall_cycles": stalls,
        "compute_bound_cycles": est.compute_bound,
        "ddr_bound_cycles": ddr_bound,
        "roofline_cycles": roofline,
        "roofline_fraction": round(roofline / cycles, 4),
        "model_cycles": est.cycles,
        "model_cycles_by_opcode": est.by_opcode,
        "experts_used": [len(c) for c in counts],
        "wall_s": round(wall, 1),
    })
    if breakdown:
        blocks = per_block(cm, per_instr, est, ddr_bytes_per_cycle=agg)
        out["per_block"] = blocks
        if args.plot:
            from sim.frame_profile import plot_breakdown
            plot_breakdown(blocks, args.plot, title=(
                f"{cfg.name}, task {args.task}, {out['array']} array: {int(cycles):,} cycles "
                f"({out['ms_at_clock']} ms at {accel.clock_mhz:g} MHz)"))
            out["plot"] = str(args.plot)
    return out
