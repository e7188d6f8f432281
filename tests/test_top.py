# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/top.py: whole M³ViT frames on the accelerator in the Amaranth simulator.

Every frame runs on the ``small`` configuration with a DDR model on every AXI port (latency,
random jitter and address-channel stalls) and an AXI protocol checker on every port, and is
compared bit for bit with :func:`golden.twin.twin_forward`. The error cases (bad register
values, bad programs, AXI errors, start while busy, a soft reset in the middle of a frame) run
in one simulation, each followed by a check that the accelerator is idle, and end with a good
frame that must still be exact.
"""

import dataclasses

import numpy as np
import pytest

from golden.config import ModelConfig, get_config
from golden.twin import quantize_image, quantize_params, twin_forward
from hdl import isa
from hdl.config import ACCEL_PRESETS, COUNTERS, get_accel_config
from hdl.regmap import ACCEL_ID, ErrorCode
from hdl.top import Accelerator
from sim.driver import AmaranthBackend, Driver
from sim.harness import unelaborated
from test_compiler import saturating

torch = pytest.importorskip("torch")
from golden.checkpoint import init_model, seeded_image  # noqa: E402  (needs torch)

SMALL = get_accel_config("small")
MICRO = get_config("micro")
DEADLINE = 40_000          # cycles: a frame takes about 9000


#: micro with a third block: dense, MoE, dense. The MoE blocks have micro's shape (the MoE
#: engine of the small configuration is built for them), and a dense block follows the MoE
#: block, whose weights the parameter stream reads ahead while the MoE engine runs.
MICRO3 = dataclasses.replace(MICRO, name="micro-3", depth=3)


@pytest.fixture(scope="module")
def micro():
    qm = quantize_params(init_model(MICRO, 7).state_dict(), MICRO)
    images = [quantize_image(seeded_image(MICRO, s), MICRO) for s in (3, 4)]
    return qm, images


@pytest.fixture(scope="module")
def micro3():
    qm = quantize_params(init_model(MICRO3, 8).state_dict(), MICRO3)
    return qm, quantize_image(seeded_image(MICRO3, 5), MICRO3)


def _backend(**kw):
    params = dict(ddr_size=1 << 20, latency=30, jitter=8, p_addr_stall=0.1, seed=5)
    params.update(kw)
    return AmaranthBackend(SMALL, **params)


def _expect_error(drv, code):
    st = drv.status()
    assert (st["busy"], st["done"], st["error"]) == (0, 1, 1), st
    assert st["error_code"] == code, st


def test_contract():
    acc = Accelerator(SMALL)
    unelaborated(acc)                    # only its signature is checked
    members = acc.signature.members
    assert set(members) == {"ctrl", "m_axi_0", "m_axi_1", "irq", "status"}
    assert members["ctrl"].signature.flip().addr_width == SMALL.ctrl_addr_width
    assert members["m_axi_0"].signature.data_width == 128
    assert members["m_axi_1"].signature.addr_width == SMALL.axi_addr_width
    with pytest.raises(TypeError, match="AccelConfig"):
        Accelerator("small")
    assert set(ACCEL_PRESETS) == {"small", "zcu104"}


def test_micro_frames_each_task_back_to_back(micro):
    """Task 0 then task 1, with only TASK written between the frames: both exact."""
    qm, images = micro
    be = _backend()
    drv = Driver(be, frame_timeout=DEADLINE)
    cm = drv.load_model(qm)
    drv.clear_counters()
    for task, image in ((0, images[0]), (1, images[1])):
        drv.set_task(task)
        out = drv.run_frame(image)
        ref = twin_forward(qm, image, task)
        assert np.array_equal(out, ref), \
            f"task {task}: first difference at {np.argwhere(out != ref)[:3].tolist()}"
        st = drv.status()
        assert (st["busy"], st["done"], st["error"]) == (0, 1, 0)
    cnt = drv.counters()
    assert set(cnt) == {name for name, _ in COUNTERS}
    assert cnt["instructions"] == 2 * cm.instructions
    assert cnt["ddr_write_bytes"] == 2 * cm.output_bytes
    assert cnt["ddr_read_bytes"] > 2 * (cm.input_bytes + cm.pstream_bytes)
    assert 0 < cnt["compute_busy"] < cnt["cycles"]
    assert cnt["moe_cycles"] > 0 and cnt["stall_layernorm"] > 0
    # The softmax runs beside the attention products (hdl.datapath): of its rows, a few
    # cycles per row at most are waited for (a synchronous softmax would count them all).
    assert cnt["stall_softmax"] < 2 * MICRO.depth * MICRO.heads * MICRO.tokens
    # Every port carried traffic and passed the protocol checker.
    assert all(c.read_bursts for c in be.checkers)
    assert be.checkers[0].write_bursts


#: A model of another shape than micro in every MoE field (2 experts, top-1, D = 16,
#: Hd = 32, 3 tokens, one task): it runs on the accelerator built for micro's maxima.
NARROW = ModelConfig(name="narrow", img_h=32, img_w=16, dim=16, depth=2, heads=1,
                     mlp_hidden=32, num_experts=2, top_k=1, expert_hidden=32, num_tasks=1)


def test_models_of_different_shapes_on_one_accelerator(micro):
    """micro, then a model of another shape (dense and MoE), then micro again, on one
    accelerator without re-elaboration or reset: each frame exact."""
    qm, images = micro
    qn = quantize_params(init_model(NARROW, 2).state_dict(), NARROW)
    drv = Driver(_backend(seed=7), frame_timeout=DEADLINE)
    for model, image, task in ((qm, images[0], 1), (qn, None, 0), (qm, images[1], 0)):
        if image is None:
            image = quantize_image(seeded_image(NARROW, 9), NARROW)
        drv.load_model(model)
        drv.set_task(task)
        out = drv.run_frame(image)
        ref = twin_forward(model, image, task)
        assert np.array_equal(out, ref), \
            f"{model.cfg.name}: first difference at {np.argwhere(out != ref)[:3].tolist()}"


def test_micro_frame_on_a_banked_buffer(micro):
    """The small configuration with its activation buffer in two banks: the compiler puts the
    two score areas in different banks, so a softmax's writes go on beside the next head's
    Q·Kᵀ writes in the other bank (hdl.systolic.unit); the frame is exact."""
    qm, images = micro
    accel = SMALL.replace(compute=dataclasses.replace(SMALL.compute, abuf_bank_depth=128))
    be = AmaranthBackend(accel, ddr_size=1 << 20, latency=30, jitter=8, p_addr_stall=0.1,
                         seed=6)
    drv = Driver(be, frame_timeout=DEADLINE)
    cm = drv.load_model(qm)
    assert len({s // 128 for s in cm.plan.scores}) == 2
    drv.set_task(1)
    out = drv.run_frame(images[0])
    ref = twin_forward(qm, images[0], 1)
    assert np.array_equal(out, ref), f"first difference at {np.argwhere(out != ref)[:3].tolist()}"


@pytest.mark.parametrize("abuf_depth, spill_rows, which", [
    (192, None, 0),
    pytest.param(256, 2, 1, marks=pytest.mark.slow),
])
def test_micro_frames_spilled_to_ddr(micro, abuf_depth, spill_rows, which):
    """The DDR-spill program (hdl.compiler): the token matrix in the output region, q, k and v
    after it, the work in tiles of rows, the MoE layer a pass per tile. Chosen by the compiler
    on a buffer too small for micro's on-chip plan (tiles of 3), and forced with tiles of 2 on
    the small configuration. The MoE layers are made to saturate, so that the frame equals the
    twin with the tiles' MoE passes and not the one-pass twin; each frame exact."""
    qm = saturating(quantize_params(init_model(MICRO, 7).state_dict(), MICRO))
    image, task = micro[1][which], 0
    accel = SMALL.replace(compute=dataclasses.replace(SMALL.compute, abuf_depth=abuf_depth))
    be = AmaranthBackend(accel, ddr_size=1 << 20, latency=30, jitter=8, p_addr_stall=0.1,
                         seed=11)
    drv = Driver(be, frame_timeout=4 * DEADLINE)
    cm = drv.load_model(qm, spill_rows=spill_rows)
    assert cm.plan.spill_rows == cm.moe_tokens == (spill_rows or 3) and cm.spill_bytes > 0
    ref = twin_forward(qm, image, task, moe_tokens=cm.moe_tokens)
    assert not np.array_equal(ref, twin_forward(qm, image, task))
    drv.set_task(task)
    drv.clear_counters()
    out = drv.run_frame(image)
    assert np.array_equal(out, ref), f"first difference at {np.argwhere(out != ref)[:3].tolist()}"
    cnt = drv.counters()
    # The embedding stores the tokens, every block its q, k, v and then its tokens.
    assert cnt["ddr_write_bytes"] == cm.output_bytes + MICRO.depth * (cm.spill_bytes
                                                                      + cm.output_bytes)
    assert all(c.read_bursts for c in be.checkers) and be.checkers[0].write_bursts


def test_errors_reset_and_recovery(micro3):
    """Every bad input ends in error status with its code and never hangs; a start while busy
    and a soft reset mid-frame are handled; a good frame after all of it is exact (micro with a
    dense block after the MoE block)."""
    qm, image = micro3
    slverr = (0xF0000, 0xF1000)
    be = _backend(slverr_range=slverr, seed=9)
    drv = Driver(be, frame_timeout=DEADLINE)
    rm = SMALL.regmap

    # Register map: identity, read-back, a RW register, an unmapped word.
    assert drv.read_reg("id") == ACCEL_ID
    hw = drv.hardware()
    assert hw["hw_array"] == {"rows": 16, "cols": 4}
    assert hw["hw_model2"]["num_tasks"] == MICRO3.num_tasks
    drv.write_reg("scratch", 0x1234_5678)
    assert drv.read_reg("scratch") == 0x1234_5678
    with pytest.raises(AssertionError, match="SLVERR"):
        be.read_reg(rm.size + 0x40)

    cm = drv.load_model(qm)
    lay = drv.layout

    good = {"weights_addr": lay.weights, "program_addr": lay.program, "input_addr": lay.input,
            "output_addr": lay.output, "program_len": len(cm.program), "task": 0}

    def run_expect(code, **regs):
        for name, value in regs.items():
            drv.write_reg(name, value)
        drv.start()
        be.wait(DEADLINE)
        _expect_error(drv, code)
        for name in regs:
            drv.write_reg(name, good[name])

    # Bad register values, refused at start.
    run_expect(ErrorCode.TASK_OUT_OF_RANGE, task=2)
    run_expect(ErrorCode.MISALIGNED_ADDRESS, input_addr=lay.input + 8)
    run_expect(ErrorCode.MISALIGNED_ADDRESS, weights_addr=lay.weights + 0x100)
    run_expect(ErrorCode.MISALIGNED_ADDRESS, output_addr=lay.output | (1 << 45))
    run_expect(ErrorCode.PROGRAM_ERROR, program_len=48)
    # Checked against the program header.
    run_expect(ErrorCode.OVERLAPPING_REGIONS, output_addr=lay.input + 0x20)
    run_expect(ErrorCode.OVERLAPPING_REGIONS, output_addr=lay.weights + 0x1000)
    # A program whose header allows one task only, run with task 1.
    one_task = bytearray(cm.program)
    one_task[5] = 1                                    # header.num_tasks
    alt = lay.end
    be.ddr_write(alt, bytes(one_task))
    run_expect(ErrorCode.TASK_OUT_OF_RANGE, program_addr=alt, task=1)
    # A bad opcode after the first instruction.
    bad = bytearray(cm.program)
    bad[isa.HEADER_BYTES + isa.INSTR_BYTES] = 0x7F
    be.ddr_write(alt, bytes(bad))
    run_expect(ErrorCode.PROGRAM_ERROR, program_addr=alt)
    # A MATMUL flag above WAIT_SOFTMAX (the first MATMUL).
    bad = bytearray(cm.program)
    at = next(i for i in range(isa.HEADER_BYTES, len(bad), isa.INSTR_BYTES)
              if isa.decode(bytes(bad[i:i + isa.INSTR_BYTES]))[0] == isa.Opcode.MATMUL)
    op, f = isa.decode(bytes(bad[at:at + isa.INSTR_BYTES]))
    bad[at:at + isa.INSTR_BYTES] = isa.encode(op, **{**f, "flags": f["flags"] | 0x80})
    be.ddr_write(alt, bytes(bad))
    run_expect(ErrorCode.PROGRAM_ERROR, program_addr=alt)
    # A LOAD from a base that is no region, a STORE into the input (the first instruction).
    for op, base in ((isa.Opcode.LOAD, 3), (isa.Opcode.STORE, isa.Base.INPUT)):
        bad = bytearray(cm.program)
        bad[isa.HEADER_BYTES:isa.HEADER_BYTES + isa.INSTR_BYTES] = isa.encode(
            op, base=base, offset=0, addr=0, words=1)
        be.ddr_write(alt, bytes(bad))
        run_expect(ErrorCode.PROGRAM_ERROR, program_addr=alt)
    # A MOE whose shape is above the engine's maxima (10 experts of 4 at most: its low three
    # bits, 2, would be a valid shape), or has k = 0.
    at = next(i for i in range(isa.HEADER_BYTES, len(cm.program), isa.INSTR_BYTES)
              if isa.decode(cm.program[i:i + isa.INSTR_BYTES])[0] == isa.Opcode.MOE)
    op, f = isa.decode(cm.program[at:at + isa.INSTR_BYTES])
    for change in ({"num_experts": 10}, {"k": 0}):
        bad = bytearray(cm.program)
        bad[at:at + isa.INSTR_BYTES] = isa.encode(op, **{**f, **change})
        be.ddr_write(alt, bytes(bad))
        run_expect(ErrorCode.PROGRAM_ERROR, program_addr=alt)
    # A program that stops before END.
    be.ddr_write(alt, cm.program[:3 * isa.INSTR_BYTES])
    run_expect(ErrorCode.PROGRAM_ERROR, program_addr=alt, program_len=3 * isa.INSTR_BYTES)
    # A DDR read answered with SLVERR (the input LOAD).
    run_expect(ErrorCode.AXI_ERROR, input_addr=slverr[0])

    # Start while busy, then a soft reset in the middle of the frame.
    drv.set_task(1)
    be.ddr_write(lay.input, cm.pack_input(image))
    drv.start()
    be.step(600)
    assert drv.status()["busy"]
    drv.start()
    st = drv.status()
    assert st["busy"] and st["error"] and st["error_code"] == ErrorCode.START_WHILE_BUSY
    be.step(1500)
    assert drv.status()["busy"]
    drv.soft_reset()
    st = drv.status()
    assert (st["busy"], st["done"], st["error"]) == (0, 0, 0)

    # Interrupt on done, then a good frame.
    drv.write_reg("irq_enable", 1)
    out = drv.run_frame(image)
    ref = twin_forward(qm, image, 1)
    assert np.array_equal(out, ref), \
        f"first difference at {np.argwhere(out != ref)[:3].tolist()}"
    st = drv.status()
    assert st["irq"] and be.sim.read_reg(rm.address_of("status")) & 8
    drv.write_reg("ctrl", 1 << rm["ctrl"].field("irq_clear").offset)
    assert not drv.status()["irq"]


def _verilator_or_skip():
    from sim.verilator import find_verilator
    try:
        find_verilator()
    except Exception as exc:          # VerilatorNotFound
        pytest.skip(str(exc))


@pytest.mark.slow
def test_micro_frame_verilator_agrees_cycle_for_cycle(micro):
    """The same frame on the Verilator back end: exact, and as many cycles as the Amaranth
    back end takes with the same DDR model seed."""
    _verilator_or_skip()
    from sim.driver import VerilatorBackend
    qm, images = micro
    ddr = dict(ddr_size=1 << 20, latency=30, jitter=8, p_addr_stall=0.1, seed=5)
    cycles = []
    for make in (lambda: VerilatorBackend(SMALL, **ddr), lambda: AmaranthBackend(SMALL, **ddr)):
        drv = Driver(make(), frame_timeout=DEADLINE)
        drv.load_model(qm)
        drv.set_task(1)
        out = drv.run_frame(images[1])
        assert np.array_equal(out, twin_forward(qm, images[1], 1))
        cycles.append(drv.counters()["cycles"])
    assert cycles[0] == cycles[1]


def _zcu104_verilator_driver(*, ddr_size, frame_timeout):
    """A driver of the zcu104 configuration on the Verilator back end, with the DDR model at
    ZCU104 figures (the aggregate rate split over the four ports)."""
    _verilator_or_skip()
    from sim.driver import ZCU104_DDR, VerilatorBackend
    zcu = get_accel_config("zcu104")
    ddr = dict(ZCU104_DDR)
    ddr["bytes_per_cycle"] = ddr["bytes_per_cycle"] / zcu.axi_ports
    be = VerilatorBackend(zcu, ddr_size=ddr_size, max_outstanding=16, **ddr)
    return Driver(be, frame_timeout=frame_timeout)


@pytest.mark.long
def test_zcu104_frames_verilator(micro):
    """m3vit-tiny on the zcu104 configuration, both tasks back to back, then micro's two tasks
    and a micro frame spilled to DDR on the same model, through Verilator with the DDR model
    at ZCU104 figures: exact against the twin. (Minutes: the Verilator build of the full
    design, then about a million cycles per m3vit-tiny frame.)"""
    cfg = get_config("m3vit-tiny")
    qm = quantize_params(init_model(cfg, 0).state_dict(), cfg)
    drv = _zcu104_verilator_driver(ddr_size=64 << 20, frame_timeout=20_000_000)
    drv.load_model(qm)
    for task in range(cfg.num_tasks):
        image = quantize_image(seeded_image(cfg, 1 + task), cfg)
        drv.set_task(task)
        assert np.array_equal(drv.run_frame(image), twin_forward(qm, image, task))
    # micro on the same hardware (its MoE shape at run time, its heads of 16 padded to words),
    # on chip, then spilled to DDR in tiles of 2 tokens with saturating MoE layers.
    qm, images = micro
    drv.load_model(qm)
    for task in range(MICRO.num_tasks):
        drv.set_task(task)
        assert np.array_equal(drv.run_frame(images[task]), twin_forward(qm, images[task], task))
    qs = saturating(quantize_params(init_model(MICRO, 7).state_dict(), MICRO))
    cm = drv.load_model(qs, spill_rows=2)
    ref = twin_forward(qs, images[0], 0, moe_tokens=cm.moe_tokens)
    assert not np.array_equal(ref, twin_forward(qs, images[0], 0))
    assert np.array_equal(drv.run_frame(images[0]), ref)


@pytest.mark.long
def test_zcu104_small_blocks_verilator():
    """Two blocks of m3vit-small (a dense one and an MoE one, at 512 × 512: 1025 tokens of 384,
    12 heads, an MLP of 1536, experts of 1.03 MB, five tasks) on the zcu104 configuration
    through Verilator: in tiles through DDR, every attention row of 1025 keys, each expert
    streaming through the DMA's ring; exact against the tiled twin for the last task. (About
    nine million cycles: a sixth of a whole m3vit-small frame, which `python -m sim.bench frame
    --config m3vit-small --backend verilator` runs in 54 M.)"""
    cfg = dataclasses.replace(get_config("m3vit-small"), name="m3vit-small-2", depth=2)
    assert cfg.moe_blocks == (1,)
    qm = quantize_params(init_model(cfg, 0).state_dict(), cfg)
    drv = _zcu104_verilator_driver(ddr_size=128 << 20, frame_timeout=40_000_000)
    cm = drv.load_model(qm)
    assert cm.plan.spill_rows and cm.moe_tokens == cm.plan.spill_rows
    task = cfg.num_tasks - 1
    image = quantize_image(seeded_image(cfg, 5), cfg)
    drv.set_task(task)
    assert np.array_equal(drv.run_frame(image),
                          twin_forward(qm, image, task, moe_tokens=cm.moe_tokens))
