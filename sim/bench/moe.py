# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench moe``: one MoE layer in simulation, against the integer twin.

::

    python -m sim.bench moe --config m3vit-tiny --task 0 --json

The layer (:class:`hdl.moe.layer.MoELayer`) runs on a synthetic, seeded model of the chosen
config (:func:`synthetic_case`; NumPy only) with its weight image (:func:`hdl.moe.layout.pack`)
in a DDR model with the ZCU104's timing (per port: 16 B/cycle, the 128-bit HP port at 300 MHz,
and the ports together at most 56.9 B/cycle, DDR4-2133 × 64 bits; 100 cycles of latency plus up
to 16 of random jitter). Its output is compared with :func:`moe_block_reference`, the MoE block of
:func:`golden.twin.twin_forward`.

Figures
-------
``bit_exact``
    The layer's ``x`` equals the twin's, and the status is OK.
``cycles``
    From ``start`` to ``done`` (routing, reordering, every expert).
``bytes_fetched``, ``bytes_expected``
    Expert weight bytes read from DDR, and the bytes of the used experts' four parts, once each
    (:meth:`hdl.moe.layout.ImageLayout.bytes_for_expert` × ``experts_used``).
``experts_used``, ``tokens_per_expert``
    The routing (the reference's).
``stall_cycles``
    Cycles the compute unit's weight feed waited for words of an expert that the DMA had not
    yet delivered (it reads a part while it arrives, so some of these overlap the array working
    on words already queued): ``first_expert_wait_cycles`` for the first expert (its weights
    cannot be fetched before the routing is known) plus ``stall_cycles_between_experts``.
``compute_bound_cycles``
    The compute unit's cycle formula (:meth:`hdl.systolic.unit.ComputeUnit.cycles`) summed over
    the logits product and every used expert's fc1 and fc2.
``ddr_bound_cycles``
    (router + used experts' bytes) / the ports' bandwidth.
``bound_cycles``, ``cycles_over_bound``, ``bottleneck``
    The larger bound, the ratio of ``cycles`` to it, and which bound it is.
``bandwidth_covers_compute``
    Whether the ports' bandwidth covers the compute unit's weight consumption
    (``weight_bytes_per_cycle_needed``: ``load_words`` words of ``rows`` weights per cycle, at
    the image's ``expert_weight_bits`` each).
``task_switch_cycles``
    Cycles the logits product waited for the task's router weights: the whole cost of selecting
    a task (every layer loads its router, whether the task changed or not). ``--switch-from``
    runs a layer of another task first, in the same simulation.
``route_cycles``
    From ``start`` to the first expert.

Back ends: ``amaranth`` (the Python simulator, with :class:`sim.axi_check.AXI4Checker` on every
port) simulates this engine at roughly 100 (16 × 16 array) to 250 (4 × 4) cycles per second, so
an m3vit-tiny layer (~190 000 cycles with a 16 × 16 array) takes it the better part of an hour;
``verilator`` (:class:`hdl.moe.core.MoECore` on :mod:`sim.verilator`, cycle for cycle the same;
no AXI checker there) takes about three minutes after a one-off build of several minutes.
``--backend auto`` (the default) picks ``amaranth`` for frames of at most 16 tokens (micro)
and ``verilator`` otherwise when it is installed.
"""

import numpy as np

from golden import qref
from golden.config import get_config
from golden.fixed import quantize
from golden.numerics import DEFAULT_NUMERICS
from golden.twin import QuantizedModel, quantize_expert_weight
from sim.bench import array_shape
from sim.compute_model import pack_row, unpack_row

__all__ = ["synthetic_model", "synthetic_case", "moe_block_reference", "simulate_layer",
           "run_core", "compute_config", "measure", "ROUTINGS"]

HELP = "one MoE layer (router, top-k, reordering, expert DMA, experts) in simulation"


def _trunc_normal(rng, shape, std):
    return np.clip(rng.normal(0.0, std, size=shape), -2 * std, 2 * std)


def synthetic_model(cfg, seed=0, numerics=DEFAULT_NUMERICS):
    """The MoE-block parameters of ``cfg`` with seeded random values, quantised (NumPy only).

    The distributions follow :func:`golden.checkpoint.init_model`: expert weights truncated
    normal with std 0.02 (here ``1/√fan_in``, so that the hidden layer and the GELU see values of
    unit scale), expert biases N(0, 0.02²), routers U(±1/√E). Only the MoE blocks' keys are
    present (``blocks.{i}.w1``, ``b1``, ``w2``, ``b2``, ``gate``).
    """
    cfg = get_config(cfg)
    nx = numerics
    rng = np.random.default_rng(seed)
    d, h, E, T = cfg.dim, cfg.expert_hidden, cfg.num_experts, cfg.num_tasks
    p = {}
    for i in cfg.moe_blocks:
        b = f"blocks.{i}."
        p[b + "w1"] = quantize_expert_weight(_trunc_normal(rng, (E, h, d), d ** -0.5), nx)
        p[b + "b1"] = quantize(rng.normal(0.0, 0.02, (E, h)), nx.bias)
        p[b + "w2"] = quantize_expert_weight(_trunc_normal(rng, (E, d, h), h ** -0.5), nx)
        p[b + "b2"] = quantize(rng.normal(0.0, 0.02, (E, d)), nx.bias)
        p[b + "gate"] = quantize(rng.uniform(-E ** -0.5, E ** -0.5, (T, E, d)), nx.weight)
    return QuantizedModel(cfg, nx, p)


ROUTINGS = ("random", "tied", "skewed")


def synthetic_case(cfg, seed=0, routing="random", numerics=DEFAULT_NUMERICS):
    """``(qm, u, x)``: a :func:`synthetic_model`, a LayerNorm-like ``u`` (``ln_out``) and a
    residual ``x`` (``act``), both N × D.

    ``routing`` selects what the routers see:

    ``"random"``
        ``u`` ~ N(0, 1).
    ``"tied"``
        ``u = 0``: every logit is 0, every probability tied; every token goes to experts
        ``0 .. k−1`` (the tie rule), the other experts get no token.
    ``"skewed"``
        Feature 0 of every token is the largest ``ln_out`` value and every router weighs it
        only for the last expert, so every token picks expert ``E − 1`` first (the logit
        saturates); the other probabilities underflow to 0 and tie, so the rest of the top-k
        is experts ``0 .. k−2`` for every token and the other experts get no token.
    """
    cfg = get_config(cfg)
    nx = numerics
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, not {routing!r}")
    qm = synthetic_model(cfg, seed, nx)
    rng = np.random.default_rng(seed + 1)
    n, d, E = cfg.tokens, cfg.dim, cfg.num_experts
    u = quantize(rng.normal(0.0, 1.0, (n, d)), nx.ln_out)
    x = quantize(rng.normal(0.0, 2.0, (n, d)), nx.act)
    if routing == "tied":
        u[:] = 0
    elif routing == "skewed":
        u[:, 0] = nx.ln_out.max_int
        for i in cfg.moe_blocks:
            gate = qm.params[f"blocks.{i}.gate"]
            gate[:, :, 0] = 0
            gate[:, E - 1, 0] = nx.weight.max_int
    return qm, u, x


def moe_block_reference(qm, block, task, u, x, route_override=None):
    """The MoE block of :func:`golden.twin.twin_forward` on its own: ``(x_out, info)``.

    The same operations in the same order as the twin: route with ``gate[task]``, then for
    every used expert in :func:`golden.qref.expert_order` ``hid = linear(u[tokens], w1, b1,
    gelu)``,
    ``x[tokens] = linear(hid, w2, b2, row_scale=s, accumulate=x[tokens])``. ``info`` holds
    ``logits``, ``probs``, ``idx``, ``scores`` and ``experts`` (the used experts with their token
    lists and scores).
    """
    cfg, nx = qm.cfg, qm.numerics
    cfg.check_task(task)
    b = f"blocks.{block}."
    u = np.asarray(u, dtype=np.int64)
    x = np.array(x, dtype=np.int64)
    logits, probs, idx, scores = qref.route(u, qm[b + "gate"][task], cfg.top_k, nx)
    if route_override is not None:
        idx, scores = route_override(idx, scores)
    experts = qref.reorder(idx, scores, cfg.num_experts)
    for e, tokens, s in experts:
        hid = qref.linear(u[tokens], qm[b + "w1"][e], qm[b + "b1"][e], x_fmt=nx.ln_out,
                          w_fmt=nx.weight, out_fmt=nx.hidden, numerics=nx, gelu=True)
        x[tokens] = qref.linear(hid, qm[b + "w2"][e], qm[b + "b2"][e], x_fmt=nx.hidden,
                                w_fmt=nx.weight, out_fmt=nx.act, numerics=nx,
                                row_scale=s, accumulate=x[tokens])
    return x, {"logits": logits, "probs": probs, "idx": idx, "scores": scores,
               "experts": experts}


BASE = 0x100000      # byte address of the weight image in the simulated DDR


def simulate_layer(qm, u, x, layer, task, compute, *, ports=None, latency=100, jitter=16,
                   bytes_per_cycle=16.0, seed=0, prior_task=None, image_bytes=None,
                   slverr=None, p_addr_stall=0.0, vcd_path=None, always_vcd=False,
                   deadline_cycles=None, engine=None):
    """Simulate one MoE layer of ``qm`` on :class:`hdl.moe.layer.MoELayer`.

    The engine is built for ``qm``'s model, or with ``engine`` (a
    :class:`~hdl.moe.layer.MoELayerConfig` on ``compute``) for a larger shape, and told the
    model's at run time.

    The packed weight image sits in one :class:`sim.ddr.DDRModel` per AXI port (latency,
    random jitter and ``bytes_per_cycle`` per port), every port is watched by an
    :class:`sim.axi_check.AXI4Checker`. ``u`` and ``x`` are written into the activation buffer
    through the engine's ``ext`` port, the layer runs, ``x`` is read back. With
    ``prior_task``, a whole layer with that task runs first (and its result is checked
    against the reference too), so that the measured run follows a task switch.

    Returns a dict: ``x`` (the result), the engine's counters (``cycles``, ``stall_cycles``,
    ``first_stall_cycles``, ``router_wait_cycles``, ``route_cycles``, ``bytes_fetched``,
    ``router_bytes``, ``n_used``), ``status`` (a :class:`hdl.moe.layer.Status`), ``bursts``
    (every AR burst on every port), ``ddr`` (the models' statistics), ``config`` (the model's
    :class:`MoELayerConfig`), ``dut`` and ``index`` (the image index); and ``prior`` (the
    first run's ``x`` and counters) with ``prior_task``.
    """
    from amaranth.hdl import Value

    from hdl.moe.layer import MoELayer, MoELayerConfig, Status
    from hdl.moe.layout import pack
    from sim.axi_check import AXI4Checker
    from sim.ddr import DDRModel
    from sim.harness import run_sim

    cfg = qm.cfg
    lc = MoELayerConfig.for_model(cfg, compute, ports=ports)
    if engine is None:
        engine = lc
    elif not isinstance(engine, MoELayerConfig) or engine.compute != compute:
        raise ValueError("engine must be a MoELayerConfig on the same compute configuration")
    shape = engine.check_model(cfg)
    image, index = pack(qm, lc.data_width, order=lc.order)
    dut = MoELayer(engine)
    a = compute.array
    L, ew = a.buffer_lanes, a.elem_bits
    N, D = cfg.tokens, cfg.dim
    Wd = lc.row_words
    u_base, x_base = 0, N * Wd
    s_base = 2 * N * Wd
    if s_base + lc.scratch_words > compute.abuf_depth:
        raise ValueError(f"the activation buffer ({compute.abuf_depth} words) cannot hold u, x "
                         f"and the scratch area ({s_base + lc.scratch_words} words)")
    mem = BASE + -(-len(image) // 4096) * 4096 + 4096
    ddrs, checkers = [], []
    for p, bus in enumerate(dut.buses):
        ddr = DDRModel(bus, size=mem, latency=latency, jitter=jitter, seed=seed + 17 * p,
                       bytes_per_cycle=bytes_per_cycle, slverr_range=slverr,
                       p_addr_stall=p_addr_stall, max_outstanding=16)
        ddr.write(BASE, image)
        ddrs.append(ddr)
        checkers.append(AXI4Checker(bus, name=f"bus{p}"))
    u_words = [w for r in np.asarray(u) for w in pack_row(r, L, ew)]
    x_words = [w for r in np.asarray(x) for w in pack_row(r, L, ew)]
    wdata = Value.cast(dut.ext.w_data)
    out = {}
    counters = ("cycles", "stall_cycles", "first_stall_cycles", "router_wait_cycles",
                "route_cycles", "bytes_fetched", "router_bytes", "n_used")

    async def write_words(ctx, base, words):
        ctx.set(dut.ext.w_en, 1)
        for i, w in enumerate(words):
            ctx.set(dut.ext.w_addr, base + i)
            ctx.set(wdata, w)
            await ctx.tick()
        ctx.set(dut.ext.w_en, 0)

    async def read_x(ctx):
        words = []
        for i in range(N * Wd):
            ctx.set(dut.ext.r_addr, x_base + i)
            await ctx.tick()            # a synchronous read: the word of this address
            words.append(ctx.get(Value.cast(dut.ext.r_data)))
        return np.array([unpack_row(words[t * Wd:(t + 1) * Wd], D, L, ew) for t in range(N)],
                        dtype=np.int64)

    async def run_layer(ctx, t):
        await write_words(ctx, x_base, x_words)
        ctx.set(dut.shape, shape)
        ctx.set(dut.task, t)
        ctx.set(dut.layer, layer)
        ctx.set(dut.image_base, BASE)
        ctx.set(dut.image_bytes, len(image) if image_bytes is None else image_bytes)
        ctx.set(dut.u_base, u_base)
        ctx.set(dut.x_base, x_base)
        ctx.set(dut.scratch_base, s_base)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        res = {name: ctx.get(getattr(dut, name)) for name in counters}
        res["status"] = Status(ctx.get(dut.status))
        res["x"] = await read_x(ctx)
        return res

    async def tb(ctx):
        await write_words(ctx, u_base, u_words)
        if prior_task is not None:
            out["prior"] = await run_layer(ctx, prior_task)
        out.update(await run_layer(ctx, task))

    if deadline_cycles is None:
        deadline_cycles = 200_000 + 40 * len(image) // max(1, len(dut.buses))
    run_sim(dut, [tb], background=[d.testbench for d in ddrs] + [c.testbench for c in checkers],
            vcd_path=vcd_path, always_vcd=always_vcd, deadline_cycles=deadline_cycles)
    out["bursts"] = [b for c in checkers for b in c.read_bursts]
    out["ddr"] = [d.stats for d in ddrs]
    out["config"] = lc
    out["dut"] = dut
    out["index"] = index
    return out


def run_core(qm, u, x, layer, task, compute, *, backend="verilator", ports=None, latency=100,
             jitter=16, bytes_per_cycle=16.0, seed=0, prior_task=None, image_bytes=None,
             weight_bytes=None):
    """Run one MoE layer on :class:`hdl.moe.core.MoECore` behind the host driver API of
    :mod:`sim.verilator`: ``backend="verilator"`` (:class:`~sim.verilator.VerilatorSim`, C++)
    or ``"amaranth"`` (:class:`~sim.verilator.AmaranthSim`).

    The image, ``u`` and ``x`` are written to the simulated DDR; the core loads ``u`` and ``x``
    into its activation buffer, runs the layer (after one with ``prior_task`` if given) and
    stores ``x``. Returns the same dict as :func:`simulate_layer` (without ``bursts``), plus
    ``build_seconds``.
    """
    from hdl.moe.core import MoECore, Op
    from hdl.moe.layer import MoELayerConfig, Status
    from hdl.moe.layout import pack
    from sim.verilator import AmaranthSim, VerilatorSim, VerilogDesign

    cfg = qm.cfg
    lc = MoELayerConfig.for_model(cfg, compute, ports=ports, weight_buffer_bytes=weight_bytes)
    image, index = pack(qm, lc.data_width, order=lc.order)
    core = MoECore(lc)
    a = compute.array
    L, ew = a.buffer_lanes, a.elem_bits
    N, D, Wd = cfg.tokens, cfg.dim, lc.row_words
    bpw = core.bus_words_per_word
    wb = lc.data_width // 8
    mat_bytes = N * Wd * bpw * wb
    mat_span = -(-mat_bytes // 4096) * 4096
    u_addr = BASE - 3 * mat_span
    x_addr = BASE - 2 * mat_span
    out_addr = BASE - mat_span
    if u_addr < 0:
        raise ValueError("u and x do not fit below the weight image")
    size = BASE + -(-len(image) // 4096) * 4096 + 4096
    kw = dict(ddr_size=size, latency=latency, jitter=jitter, seed=seed,
              bytes_per_cycle=bytes_per_cycle, max_outstanding=16)
    if backend == "verilator":
        design = VerilogDesign.from_core(core, name="moe_core")
        sim = VerilatorSim(design, **kw)
        build = sim.build_seconds
    elif backend == "amaranth":
        sim = AmaranthSim(core, **kw)
        build = 0.0
    else:
        raise ValueError(f"backend must be 'verilator' or 'amaranth', not {backend!r}")
    rm = core.regmap
    addr = rm.address_of

    def matrix_bytes(mat):
        raw = bytearray()
        for r in np.asarray(mat):
            for w in pack_row(r, L, ew):
                raw += w.to_bytes(bpw * wb, "little")
        return bytes(raw)

    def op(code, ddr=0, limit=10_000_000):
        sim.write_reg(addr("ddr_addr"), ddr)
        sim.write_reg(addr("control"), (code.value << 4) | 1)
        sim.run_until(max_cycles=limit, done=1)
        return sim.read_reg(addr("state"))

    try:
        sim.reset()
        sim.ddr_write(BASE, image)
        sim.ddr_write(u_addr, matrix_bytes(u))
        sim.write_reg(addr("layer"), layer)
        sim.write_reg(addr("image_base"), BASE)
        sim.write_reg(addr("image_bytes"), len(image) if image_bytes is None else image_bytes)
        if op(Op.LOAD_U, u_addr) & 4:
            raise RuntimeError("loading u failed")
        out = {}

        def run(t):
            sim.ddr_write(x_addr, matrix_bytes(x))
            if op(Op.LOAD_X, x_addr) & 4:
                raise RuntimeError("loading x failed")
            sim.write_reg(addr("task"), t)
            state = op(Op.RUN)
            res = {name: sim.read_reg(addr(name)) for name in (
                "cycles", "stall_cycles", "first_stall_cycles", "router_wait_cycles",
                "route_cycles", "bytes_fetched", "router_bytes", "n_used")}
            res["status"] = Status((state >> 4) & 7)
            if op(Op.STORE_X, out_addr) & 4:
                raise RuntimeError("storing x failed")
            raw = sim.ddr_read(out_addr, mat_bytes)
            words = [int.from_bytes(raw[i:i + bpw * wb], "little")
                     for i in range(0, mat_bytes, bpw * wb)]
            res["x"] = np.array([unpack_row(words[t_ * Wd:(t_ + 1) * Wd], D, L, ew)
                                 for t_ in range(N)], dtype=np.int64)
            return res

        if prior_task is not None:
            out["prior"] = run(prior_task)
        out.update(run(task))
        out["ddr"] = sim.stats
    finally:
        sim.close()
    out["config"] = lc
    out["index"] = index
    out["dut"] = core.layer
    out["build_seconds"] = build
    out["bursts"] = None
    return out


#: ZCU104 PS DDR4-2133 × 64 bits = 17.06 GB/s, in bytes per cycle at 300 MHz.
ZCU104_DDR_BYTES_PER_CYCLE = 17.06e9 / 300e6
#: One 128-bit HP port at the 300 MHz fabric clock.
ZCU104_PORT_BYTES_PER_CYCLE = 16.0


def compute_config(cfg, rows, cols, load_words=1, numerics=DEFAULT_NUMERICS):
    """A :class:`hdl.systolic.config.ComputeConfig` just large enough for ``cfg``'s MoE layer
    (``load_words``: :class:`~hdl.systolic.config.ArrayConfig`'s, 2 for pair weight loads)."""
    from hdl.systolic.config import ArrayConfig, ComputeConfig
    from hdl.moe.layer import MoELayerConfig

    cfg = get_config(cfg)
    big = max(cfg.dim, cfg.expert_hidden, cfg.num_experts)
    array = ArrayConfig(rows, cols, numerics=numerics, load_words=load_words)
    trial = ComputeConfig(array, max_m=cfg.tokens, max_k=big, max_n=big,
                          abuf_depth=1 << 20, gelu=True)
    lc = MoELayerConfig.for_model(cfg, trial, ports=1)
    need = 2 * cfg.tokens * lc.row_words + lc.scratch_words
    return ComputeConfig(array, max_m=cfg.tokens, max_k=big, max_n=big,
                         abuf_depth=1 << max(need - 1, 1).bit_length(), gelu=True)


def measure(cfg, *, task=0, seed=0, layer=0, routing="random", rows=16, cols=16, ports=None,
            load_words=1, latency=100, jitter=16, port_bytes=ZCU104_PORT_BYTES_PER_CYCLE,
            ddr_bytes=ZCU104_DDR_BYTES_PER_CYCLE, switch_from=None, backend="amaranth", qm=None,
            u=None, x=None, weight_bytes=None):
    """Simulate one MoE layer and return the bench figures (a dict); see the module doc."""
    import time

    from hdl.moe.layer import MoELayerConfig, Status

    cfg = get_config(cfg)
    cfg.check_task(task)
    if switch_from is not None:
        cfg.check_task(switch_from)
    if not 0 <= layer < len(cfg.moe_blocks):
        raise ValueError(f"layer {layer} is out of range: {cfg.name} has "
                         f"{len(cfg.moe_blocks)} MoE layers")
    if qm is None:
        qm, u, x = synthetic_case(cfg, seed, routing)
    compute = compute_config(cfg, rows, cols, load_words)
    lc = MoELayerConfig.for_model(cfg, compute, ports=ports, port_bytes=port_bytes,
                                  weight_buffer_bytes=weight_bytes)
    per_port = min(port_bytes, ddr_bytes / lc.ports)
    block = cfg.moe_blocks[layer]
    ref, info = moe_block_reference(qm, block, task, u, x)
    t0 = time.time()
    if backend == "amaranth":
        res = simulate_layer(qm, u, x, layer, task, compute, ports=lc.ports, latency=latency,
                             jitter=jitter, bytes_per_cycle=per_port, seed=seed,
                             prior_task=switch_from, engine=lc)
    else:
        res = run_core(qm, u, x, layer, task, compute, backend=backend, ports=lc.ports,
                       latency=latency, jitter=jitter, bytes_per_cycle=per_port, seed=seed,
                       prior_task=switch_from, weight_bytes=weight_bytes)
    wall = time.time() - t0
    dut = res["dut"]
    lay = lc.layout
    counts = [len(t) for _, t, _ in info["experts"]]
    bytes_expected = len(counts) * lay.bytes_for_expert()
    bandwidth = per_port * lc.ports
    compute_bound = dut.compute_bound_cycles(counts)
    ddr_bound = (bytes_expected + lay.bytes_for_router()) / bandwidth
    bound = max(compute_bound, ddr_bound)
    exact = bool(np.array_equal(res["x"], ref)) and res["status"] == Status.OK
    out = {
        "config": cfg.name,
        "task": task,
        "layer": layer,
        "block": block,
        "routing": routing,
        "seed": seed,
        "bit_exact": exact,
        "status": res["status"].name,
        "cycles": res["cycles"],
        "bound_cycles": round(bound),
        "cycles_over_bound": round(res["cycles"] / bound, 4),
        "compute_bound_cycles": compute_bound,
        "ddr_bound_cycles": round(ddr_bound),
        "bottleneck": "ddr" if ddr_bound > compute_bound else "compute",
        "bytes_fetched": res["bytes_fetched"],
        "bytes_expected": bytes_expected,
        "router_bytes": res["router_bytes"],
        "experts_used": res["n_used"],
        "tokens_per_expert": counts,
        "stall_cycles": res["stall_cycles"],
        "stall_cycles_between_experts": res["stall_cycles"] - res["first_stall_cycles"],
        "first_expert_wait_cycles": res["first_stall_cycles"],
        "route_cycles": res["route_cycles"],
        "task_switch_cycles": res["router_wait_cycles"],
        "switched_from_task": switch_from,
        "weight_bytes_per_cycle_needed": lc.weight_bytes_per_cycle,
        "ddr_bytes_per_cycle": round(bandwidth, 3),
        "bandwidth_covers_compute": bandwidth >= lc.weight_bytes_per_cycle,
        "ports": lc.ports,
        "weight_ring_bytes": lc.ring_words * lc.ports * lc.data_width // 8,
        "array": f"{rows}x{cols}", "load_words": load_words,
        "data_width": lc.data_width,
        "ddr_latency": latency,
        "ddr_jitter": jitter,
        "backend": backend,
        "sim_seconds": round(wall - res.get("build_seconds", 0.0), 1),
        "build_seconds": round(res.get("build_seconds", 0.0), 1),
    }
    if switch_from is not None:
        prior_ref, _ = moe_block_reference(qm, block, switch_from, u, x)
        out["bit_exact"] = exact and bool(np.array_equal(res["prior"]["x"], prior_ref))
        out["prior_cycles"] = res["prior"]["cycles"]
    return out


def add_arguments(parser):
    parser.add_argument("--config", default="micro", help="model preset (micro, m3vit-tiny, …)")
    parser.add_argument("--task", type=int, default=0, help="task id (selects the routers)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights")
    parser.add_argument("--layer", type=int, default=0, help="MoE layer index (0 = first)")
    parser.add_argument("--routing", choices=ROUTINGS, default="random",
                        help="input case: random, tied (all scores tied), skewed (every "
                             "token to one expert)")
    parser.add_argument("--array", default="16x16", help="PE array ROWSxCOLS (default 16x16)")
    parser.add_argument("--load-words", type=int, choices=(1, 2), default=1,
                        help="weight words per load of the array (2: pairs, tiles in half "
                             "the cycles, as in the zcu104 configuration; default 1)")
    parser.add_argument("--ports", type=int, default=None,
                        help="AXI read ports (default: the scheduler's choice)")
    parser.add_argument("--weight-bytes", type=int, default=None,
                        help="bytes of the DMA's expert-weight ring, all ports (default: two "
                             "experts; at least the largest half expert)")
    parser.add_argument("--latency", type=int, default=100, help="DDR latency in cycles")
    parser.add_argument("--jitter", type=int, default=16, help="DDR random extra latency")
    parser.add_argument("--port-bytes-per-cycle", type=float,
                        default=ZCU104_PORT_BYTES_PER_CYCLE,
                        help="bandwidth cap of one AXI port (16: 128-bit HP port)")
    parser.add_argument("--ddr-bytes-per-cycle", type=float, default=ZCU104_DDR_BYTES_PER_CYCLE,
                        help="aggregate DDR bandwidth shared by the ports (ZCU104: 56.9 at "
                             "300 MHz)")
    parser.add_argument("--switch-from", type=int, default=None,
                        help="run a layer with this task first, then the measured one")
    parser.add_argument("--backend", choices=("auto", "amaranth", "verilator"), default="auto",
                        help="amaranth: the Python simulator, with the AXI protocol checker "
                             "on every port; verilator: the core (hdl.moe.core) compiled with "
                             "Verilator (cached build; the first build of a 16x16 array takes "
                             "minutes), the only practical choice for m3vit-tiny; auto (default): "
                             "amaranth for frames of at most 16 tokens or without Verilator, "
                             "verilator otherwise")


def _backend(choice, config):
    if choice != "auto":
        return choice
    if get_config(config).tokens <= 16:
        return "amaranth"
    from sim.verilator import VerilatorNotFound, find_verilator
    try:
        find_verilator()
    except VerilatorNotFound:
        return "amaranth"
    return "verilator"


def run(args):
    rows, cols = array_shape(args.array)
    return measure(args.config, task=args.task, seed=args.seed, layer=args.layer,
                   routing=args.routing, rows=rows, cols=cols, load_words=args.load_words,
                   ports=args.ports,
                   latency=args.latency, jitter=args.jitter,
                   port_bytes=args.port_bytes_per_cycle, ddr_bytes=args.ddr_bytes_per_cycle,
                   switch_from=args.switch_from, weight_bytes=args.weight_bytes,
                   backend=_backend(args.backend, args.config))
