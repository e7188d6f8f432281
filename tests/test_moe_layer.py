# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/moe/layer.py: whole MoE layers in simulation, bit-exact against the integer
twin, with the DDR model (latency, jitter, bandwidth cap) and the AXI checker on every port."""

import dataclasses

import numpy as np
import pytest

from golden.config import ModelConfig, get_config
from golden.numerics import DEFAULT_NUMERICS as NX
from hdl.moe.layer import MoELayer, MoELayerConfig, Status
from hdl.moe.layout import pack
from hdl.systolic.config import ArrayConfig, ComputeConfig
from sim.axi_check import AXI4Checker
from sim.bench.moe import (BASE, compute_config, measure, moe_block_reference, simulate_layer,
                           synthetic_case)
from sim.ddr import DDRModel
from sim.harness import run_sim, unelaborated

MICRO = get_config("micro")
ARRAY = 4          # a 4 × 4 PE array keeps the pure-Python simulations short


def _synth_cfg(E, k, *, D=8, Hd=8, img=32, T=2):
    return ModelConfig(name=f"synth-e{E}-k{k}", img_h=img, img_w=img, dim=D, depth=2, heads=1,
                       mlp_hidden=4 * D, num_experts=E, top_k=k, expert_hidden=Hd,
                       num_tasks=T)


def _check(res, qm, u, x, task, layer=0):
    cfg = qm.cfg
    ref, info = moe_block_reference(qm, cfg.moe_blocks[layer], task, u, x)
    assert res["status"] == Status.OK
    assert np.array_equal(res["x"], ref), \
        f"first difference at {np.argwhere(res['x'] != ref)[:3].tolist()}"
    lay = res["config"].layout
    assert res["n_used"] == len(info["experts"])
    assert res["bytes_fetched"] == len(info["experts"]) * lay.bytes_for_expert()
    assert res["router_bytes"] == lay.bytes_for_router()
    # The bus carried exactly the used experts (once each) and the router.
    beats = sum(n for _, n in res["bursts"])
    assert beats * lay.word_bytes == res["bytes_fetched"] + res["router_bytes"] + \
        (res["prior"]["bytes_fetched"] + res["prior"]["router_bytes"] if "prior" in res else 0)
    return info


def test_micro_bit_exact_against_twin_with_task_switch(sim_args):
    """Block 1 of micro from the float model's checkpoint, task 0 then task 1 (a task switch
    between frames, no reset): both equal the twin's block output."""
    pytest.importorskip("torch")
    from golden.checkpoint import init_model, seeded_image
    from golden.twin import quantize_image, quantize_params, twin_forward
    qm = quantize_params(init_model(MICRO, 7).state_dict(), MICRO)
    image = quantize_image(seeded_image(MICRO, 3), MICRO)
    taps = [{}, {}]
    for t in range(2):
        twin_forward(qm, image, t, taps[t])
    blk = MICRO.moe_blocks[0]
    u, x = taps[0][f"block{blk}.ln2"], taps[0][f"block{blk}.resid1"]
    # Attention and LN2 do not depend on the task before the first MoE block.
    assert np.array_equal(u, taps[1][f"block{blk}.ln2"])
    compute = compute_config(MICRO, ARRAY, ARRAY)
    res = simulate_layer(qm, u, x, 0, 1, compute, prior_task=0, latency=40, jitter=16, seed=1,
                         p_addr_stall=0.1, **sim_args)
    assert np.array_equal(res["prior"]["x"], taps[0][f"block{blk}"])
    assert np.array_equal(res["x"], taps[1][f"block{blk}"])
    assert res["status"] == Status.OK and res["prior"]["status"] == Status.OK
    _check(res, qm, u, x, 1)
    # The switch costs only the router load (which every layer pays anyway): at most the
    # router's bytes at one beat per cycle, plus the DDR latency and jitter and the masters'
    # pipeline.
    limit = res["router_bytes"] // 16 + 40 + 16 + 16
    assert res["router_wait_cycles"] <= limit and res["prior"]["router_wait_cycles"] <= limit


@pytest.mark.parametrize("routing", ["tied", "skewed"])
def test_micro_skewed_routings(routing, sim_args):
    """All scores tied (experts 0..k−1 for every token) and every token to the last expert:
    complete, bit-exact, unused experts skipped and never fetched."""
    qm, u, x = synthetic_case(MICRO, 5, routing)
    compute = compute_config(MICRO, ARRAY, ARRAY)
    res = simulate_layer(qm, u, x, 0, 0, compute, latency=30, jitter=30, seed=2, **sim_args)
    info = _check(res, qm, u, x, 0)
    used = [e for e, _, _ in info["experts"]]
    E, N = MICRO.num_experts, MICRO.tokens
    assert used == ([0, 1] if routing == "tied" else [0, E - 1])
    assert all(len(tok) == N for _, tok, _ in info["experts"])


@pytest.mark.parametrize("E, k, img, ports, load_words", [
    (4, 4, 32, 2, 1),       # k = E: every expert gets every token
    (16, 2, 48, 1, 1),
    (64, 1, 48, 4, 1),
    (4, 2, 32, 2, 2),       # weights loaded in pairs (the zcu104 array's way)
    (16, 2, 48, 1, 2),
])
def test_expert_counts_and_top_k(E, k, img, ports, load_words, sim_args):
    cfg = _synth_cfg(E, k, img=img)
    qm, u, x = synthetic_case(cfg, E + k, "random")
    compute = compute_config(cfg, ARRAY, ARRAY, load_words)
    res = simulate_layer(qm, u, x, 0, 1, compute, ports=ports, latency=25, jitter=10,
                         seed=E, **sim_args)
    _check(res, qm, u, x, 1)


# An engine for shapes up to these (8 experts, k ≤ 4, 10 tokens, D ≤ 48, Hd ≤ 96, 3 tasks,
# 2 MoE layers): micro and smaller models run on it, told their shape at run time.
LARGEST = ModelConfig(name="largest", img_h=48, img_w=48, dim=48, depth=4, heads=1,
                      mlp_hidden=192, num_experts=8, top_k=4, expert_hidden=96, num_tasks=3)


@pytest.mark.parametrize("cfg, task, ports, load_words", [
    (MICRO, 1, 1, 1),
    (_synth_cfg(5, 3, D=12, Hd=20, img=32, T=3), 2, 2, 2),   # rows not whole buffer words
    (_synth_cfg(2, 1, D=4, Hd=4, img=16, T=1), 0, 2, 1),     # two tokens, fewest of all
])
def test_runtime_shape(cfg, task, ports, load_words, sim_args):
    """An engine built for a larger shape runs a smaller model told its shape at run time,
    bit-exact against the twin, fetching exactly that model's experts and router."""
    qm, u, x = synthetic_case(cfg, 11, "random")
    compute = compute_config(LARGEST, ARRAY, ARRAY, load_words)
    engine = MoELayerConfig.for_model(LARGEST, compute, ports=ports)
    # (A shape the engine got wrong would rather hang than finish: fail fast.)
    res = simulate_layer(qm, u, x, 0, task, compute, ports=ports, latency=25, jitter=10,
                         seed=3, engine=engine, deadline_cycles=30_000, **sim_args)
    _check(res, qm, u, x, task)


@pytest.mark.parametrize("halves, ports", [(1, 2), (2, 1), (5, 2)])
def test_weight_buffer(halves, ports, sim_args):
    """A DMA ring of one half expert (smaller than an expert: each fc2 half streams in behind
    its own FC1), of two (one expert) or of five: the same results, bit-exact, each expert
    fetched once."""
    cfg = _synth_cfg(16, 2, img=48)
    qm, u, x = synthetic_case(cfg, 7, "random")
    compute = compute_config(cfg, ARRAY, ARRAY, 2)
    lc = MoELayerConfig.for_model(cfg, compute, ports=ports)
    nbytes = halves * max(lc.halves_words) * ports * lc.data_width // 8
    engine = MoELayerConfig.for_model(cfg, compute, ports=ports, weight_buffer_bytes=nbytes)
    assert engine.ring_words == halves * max(lc.halves_words)
    res = simulate_layer(qm, u, x, 0, 1, compute, ports=ports, latency=25, jitter=10,
                         seed=halves, engine=engine, deadline_cycles=60_000, **sim_args)
    _check(res, qm, u, x, 1)


@pytest.mark.parametrize("bits, load_words", [(16, 2), (11, 2), (13, 1)])
def test_expert_weight_bits(bits, load_words, sim_args):
    """Expert weights stored in 16 bits (no gearbox), 11 or 13 (a gearbox of 88-bit transfers
    from 128-bit reads, or 52-bit ones): bit-exact, each expert's image bytes fetched once."""
    nx = dataclasses.replace(NX, expert_weight_bits=bits)
    cfg = _synth_cfg(8, 2, D=12, Hd=20)
    qm, u, x = synthetic_case(cfg, bits, "random", numerics=nx)
    compute = compute_config(cfg, ARRAY, ARRAY, load_words, numerics=nx)
    assert MoELayerConfig.for_model(cfg, compute).layout.expert_weight_bits == bits
    res = simulate_layer(qm, u, x, 0, 1, compute, ports=1, latency=25, jitter=10, seed=bits,
                         deadline_cycles=60_000, **sim_args)
    _check(res, qm, u, x, 1)


def test_runtime_shape_too_large():
    compute = compute_config(MICRO, ARRAY, ARRAY)
    engine = MoELayerConfig.for_model(MICRO, compute)
    with pytest.raises(ValueError, match=r"do not fit this MoE engine: .*num_experts 8 > 4"):
        engine.check_model(LARGEST)
    assert engine.check_model(MICRO) == engine.max_shape


def test_stalls_follow_the_bandwidth():
    """With the bandwidth above the compute unit's weight consumption the compute unit never
    waits for weights between experts; far below it, it does and the bench says so."""
    fast = measure("micro", rows=ARRAY, cols=ARRAY, latency=100, jitter=16, seed=3)
    assert fast["bit_exact"] and fast["bandwidth_covers_compute"]
    assert fast["stall_cycles_between_experts"] == 0
    assert fast["bytes_fetched"] == fast["bytes_expected"]
    slow = measure("micro", rows=ARRAY, cols=ARRAY, latency=100, jitter=16, seed=3,
                   port_bytes=4.0, ports=1)
    assert slow["bit_exact"] and not slow["bandwidth_covers_compute"]
    assert slow["bottleneck"] == "ddr" and slow["stall_cycles_between_experts"] > 0
    assert slow["cycles"] >= slow["ddr_bound_cycles"]


def test_bench_weight_ring():
    """``python -m sim.bench moe --weight-bytes``: a ring of one half expert, smaller than an
    expert, is still bit-exact with every expert fetched once, and the bench reports it."""
    lc = MoELayerConfig.for_model(MICRO, compute_config(MICRO, ARRAY, ARRAY))
    half = max(lc.halves_words) * lc.ports * lc.data_width // 8
    out = measure("micro", rows=ARRAY, cols=ARRAY, seed=3, weight_bytes=half)
    assert out["bit_exact"] and out["bytes_fetched"] == out["bytes_expected"]
    assert out["weight_ring_bytes"] == half
    with pytest.raises(ValueError, match="must hold the largest half expert"):
        measure("micro", rows=ARRAY, cols=ARRAY, seed=3, weight_bytes=half - 64)


def _bare_run(qm, steps, sim_args, *, slverr=None):
    """Run ``steps`` [(task, layer, image_bytes[, shape changes])] back to back on one engine;
    return the statuses and counters."""
    cfg = qm.cfg
    compute = compute_config(cfg, ARRAY, ARRAY)
    lc = MoELayerConfig.for_model(cfg, compute)
    image, _ = pack(qm, lc.data_width, order=lc.order)
    dut = MoELayer(lc)
    ddr = DDRModel(dut.bus0, size=BASE + len(image) + 8192, latency=20, jitter=5,
                   slverr_range=slverr)
    ddr.write(BASE, image)
    checker = AXI4Checker(dut.bus0)
    out = []
    N, Wd = cfg.tokens, lc.row_words

    async def tb(ctx):
        for task, layer, nbytes, *change in steps:
            ctx.set(dut.shape, {**lc.max_shape, **(change[0] if change else {})})
            ctx.set(dut.task, task)
            ctx.set(dut.layer, layer)
            ctx.set(dut.image_base, BASE)
            ctx.set(dut.image_bytes, len(image) if nbytes is None else nbytes)
            ctx.set(dut.u_base, 0)
            ctx.set(dut.x_base, N * Wd)
            ctx.set(dut.scratch_base, 2 * N * Wd)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            await ctx.tick().until(dut.done)
            out.append((Status(ctx.get(dut.status)), ctx.get(dut.bytes_fetched),
                        ctx.get(dut.busy)))

    run_sim(dut, [tb], background=[ddr.testbench, checker.testbench],
            deadline_cycles=100_000, **sim_args)
    return out, lc


def test_bad_inputs_give_an_error_status(sim_args):
    """Task out of range, layer out of range, an image smaller than the layout, a bad shape
    (a zero field, k above the experts, a field above the maximum): an error status, nothing
    fetched, and the engine still runs a good layer afterwards."""
    qm, _, _ = synthetic_case(MICRO, 0)
    steps = [(2, 0, None), (0, 1, None), (0, 0, 1000), (0, 0, None, {"dim": 0}),
             (0, 0, None, {"num_experts": 1}), (0, 0, None, {"tokens": 7}),
             (1, 0, None, {"num_tasks": 1}), (1, 0, None)]
    out, lc = _bare_run(qm, steps, sim_args)
    assert [s for s, _, _ in out] == [Status.BAD_TASK, Status.BAD_LAYER, Status.BAD_IMAGE,
                                      Status.BAD_SHAPE, Status.BAD_SHAPE, Status.BAD_SHAPE,
                                      Status.BAD_TASK, Status.OK]
    assert all(b == 0 for _, b, _ in out[:-1])
    assert not any(busy for _, _, busy in out)


def test_axi_error_ends_the_layer(sim_args):
    qm, _, _ = synthetic_case(MICRO, 0, "tied")
    compute = compute_config(MICRO, ARRAY, ARRAY)
    lc = MoELayerConfig.for_model(MICRO, compute)
    off = lc.layout.part_offset(0, 1, "fc2_w")
    out, _ = _bare_run(qm, [(0, 0, None)], sim_args, slverr=(BASE + off, BASE + off + 16))
    assert out[0][0] == Status.DMA_ERROR and not out[0][2]


def test_config_validation():
    compute = ComputeConfig(ArrayConfig(4, 4), max_m=8, max_k=64, max_n=64, abuf_depth=512)
    base = dict(num_experts=4, k=2, tokens=5, dim=32, hidden=64, num_tasks=2, num_layers=1,
                compute=compute)
    with pytest.raises(ValueError, match=r"k \(3\) must not exceed the number of experts"):
        MoELayerConfig(**{**base, "k": 3, "num_experts": 2})
    with pytest.raises(ValueError, match=r"k must be an integer in the range 1..4, not 5"):
        MoELayerConfig(**{**base, "k": 5, "num_experts": 8})
    with pytest.raises(ValueError, match="num_experts must be an integer in the range 1..64"):
        MoELayerConfig(**{**base, "num_experts": 65})
    with pytest.raises(ValueError, match="exceeds the compute unit's limits"):
        MoELayerConfig(**{**base, "tokens": 9})
    with pytest.raises(ValueError, match="must be a power of two"):
        MoELayerConfig(**{**base, "compute": ComputeConfig(ArrayConfig(3, 4), max_m=8,
                                                             max_k=64, max_n=64)})
    with pytest.raises(ValueError, match="GELU"):
        MoELayerConfig(**{**base, "compute": ComputeConfig(ArrayConfig(4, 4), max_m=8,
                                                             max_k=64, max_n=64, gelu=False)})
    with pytest.raises(TypeError, match="compute must be a ComputeConfig"):
        MoELayerConfig(**{**base, "compute": None})
    lc = MoELayerConfig(**base)
    # 4 rows of 14-bit expert weights a cycle: 7 bytes, one 128-bit port.
    assert lc.ports == 1 and lc.weight_bytes_per_cycle == 7
    big = MoELayerConfig(**{**base, "compute": ComputeConfig(ArrayConfig(16, 16), max_m=8,
                                                               max_k=64, max_n=64)})
    assert big.ports == 2 and big.read_words == 4
    with pytest.raises(ValueError, match="ports must be 1, 2 or 4"):
        MoELayerConfig(**{**base, "ports": 8})
    with pytest.raises(ValueError, match="ports must be a power of two"):
        MoELayerConfig(**{**base, "ports": 3})
    half = max(lc.halves_words) * lc.ports * lc.data_width // 8
    assert MoELayerConfig(**{**base, "weight_buffer_bytes": half}).ring_words \
        == max(lc.halves_words)
    with pytest.raises(ValueError, match=r"weight_buffer_bytes \(\d+\) must hold the largest "
                                         r"half expert"):
        MoELayerConfig(**{**base, "weight_buffer_bytes": half - 1})
    with pytest.raises(TypeError, match="weight_buffer_bytes"):
        MoELayerConfig(**{**base, "weight_buffer_bytes": 1.5})


def test_shared_softmax_config_errors():
    """A softmax unit given to the engine must suit the router's rows."""
    from hdl.nonlin.config import SoftmaxConfig
    cfg = get_config("micro")
    lc = MoELayerConfig.for_model(cfg, compute_config(cfg, ARRAY, ARRAY))
    with pytest.raises(TypeError, match="softmax must be a SoftmaxConfig"):
        MoELayer(lc, softmax=4)
    with pytest.raises(ValueError, match=r"rows \(max_len 3\) must hold the 4 router logits"):
        MoELayer(lc, softmax=SoftmaxConfig(NX, max_len=3))
    with pytest.raises(ValueError, match="must take the logit format"):
        MoELayer(lc, softmax=SoftmaxConfig(NX, max_len=64, in_formats=(NX.score,)))
    other = dataclasses.replace(NX, softmax_lanes=4)
    with pytest.raises(ValueError, match="numerics must be the compute unit's"):
        MoELayer(lc, softmax=SoftmaxConfig(other, max_len=64))
    # The accelerator's configuration (scores and logits) is accepted; the logits are format 1.
    shared = MoELayer(lc, softmax=SoftmaxConfig(NX, max_len=64))
    unelaborated(shared)
    assert shared.softmax.config.max_len == 64 and shared._logit_fmt == 1
