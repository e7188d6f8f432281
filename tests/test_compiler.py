# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/isa.py and hdl/compiler.py: the program format, the weight image, and the
compiled program executed by the functional model (sim/program_model.py) against the twin."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from golden import qref
from golden.config import ModelConfig, get_config
from golden.fixed import quantize
from golden.numerics import DEFAULT_NUMERICS
from golden.twin import QuantizedModel, quantize_expert_weight, twin_forward
from hdl import isa
from hdl.compiler import compile_model, ln_eps_int, softmax_scale_int
from hdl.config import AccelConfig, get_accel_config
from hdl.isa import Base, Opcode, Segment
from hdl.moe.layout import SystolicOrder
from hdl.regmap import ErrorCode
from sim.program_model import ProgramFault, ProgramModel

SMALL = get_accel_config("small")
MICRO = get_config("micro")


def random_model(cfg, seed=0, nx=DEFAULT_NUMERICS):
    """A QuantizedModel of ``cfg`` with seeded random integers in plausible ranges (no torch)."""
    rng = np.random.default_rng(seed)
    d, n, e, hd = cfg.dim, cfg.tokens, cfg.num_experts, cfg.expert_hidden

    def w(*shape, std):
        return quantize(np.clip(rng.normal(0, std, shape), -2 * std, 2 * std), nx.weight)

    def b(*shape):
        return quantize(rng.normal(0, 0.02, shape), nx.bias)

    def we(*shape, std):
        return quantize_expert_weight(np.clip(rng.normal(0, std, shape), -2 * std, 2 * std), nx)

    p = {"patch_w": w(d, cfg.patch_dim, std=cfg.patch_dim ** -0.5), "patch_b": b(d),
         "pos": quantize(rng.normal(0, 0.5, (n, d)), nx.act)}
    for i in range(cfg.depth):
        k = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            p[k + ln + "_g"] = quantize(1 + rng.normal(0, 0.1, d), nx.ln_param)
            p[k + ln + "_b"] = quantize(rng.normal(0, 0.1, d), nx.ln_param)
        p[k + "qkv_w"], p[k + "qkv_b"] = w(3 * d, d, std=d ** -0.5), b(3 * d)
        p[k + "proj_w"], p[k + "proj_b"] = w(d, d, std=d ** -0.5), b(d)
        if cfg.is_moe(i):
            p[k + "w1"], p[k + "b1"] = we(e, hd, d, std=d ** -0.5), b(e, hd)
            p[k + "w2"], p[k + "b2"] = we(e, d, hd, std=hd ** -0.5), b(e, d)
            p[k + "gate"] = w(cfg.num_tasks, e, d, std=e ** -0.5)
        else:
            h = cfg.mlp_hidden
            p[k + "fc1_w"], p[k + "fc1_b"] = w(h, d, std=d ** -0.5), b(h)
            p[k + "fc2_w"], p[k + "fc2_b"] = w(d, h, std=h ** -0.5), b(d)
    return QuantizedModel(cfg, nx, p)


def random_image(cfg, seed=0, nx=DEFAULT_NUMERICS):
    rng = np.random.default_rng(seed)
    return quantize(rng.normal(0, 1, (cfg.in_chans, cfg.img_h, cfg.img_w)), nx.pixel)


class Memory:
    """A flat DDR for the functional model, with the compiled buffers placed like the driver."""

    def __init__(self, cm):
        def up(v):
            return -(-v // 4096) * 4096
        self.w = 0x1000
        self.p = up(self.w + len(cm.weights))
        self.i = up(self.p + len(cm.program))
        self.o = up(self.i + cm.input_bytes)
        self.mem = bytearray(up(self.o + cm.output_region_bytes) + 4096)
        self.write(self.w, cm.weights)
        self.write(self.p, cm.program)
        self.cm = cm

    def read(self, addr, n):
        assert 0 <= addr and addr + n <= len(self.mem)
        return bytes(self.mem[addr:addr + n])

    def write(self, addr, data):
        self.mem[addr:addr + len(data)] = data

    def run(self, model, image, task, **override):
        self.write(self.i, self.cm.pack_input(image))
        regs = dict(weights_addr=self.w, program_addr=self.p, program_len=len(self.cm.program),
                    input_addr=self.i, output_addr=self.o, task=task)
        regs.update(override)
        model.run(self.read, self.write, **regs)
        return self.cm.unpack_output(self.read(self.o, self.cm.output_bytes))


# -- the format -----------------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4095), st.integers(1, 4095), st.integers(1, 4095),
       st.integers(0, 65535), st.integers(0, 63), st.integers(0, 63))
def test_matmul_round_trip(m, k, n, base, flags, shift):
    raw = isa.encode(Opcode.MATMUL, m=m, k=k, n=n, x_base=base, y_stride=base // 3 + 1,
                     flags=flags, q_shift=shift, b_shift=63 - shift, out_bits=16)
    assert len(raw) == isa.INSTR_BYTES
    op, f = isa.decode(raw)
    assert op is Opcode.MATMUL
    assert (f["m"], f["k"], f["n"], f["x_base"], f["flags"], f["q_shift"], f["b_shift"]) == \
        (m, k, n, base, flags, shift, 63 - shift)


def test_every_opcode_round_trips():
    cases = {
        Opcode.END: {},
        Opcode.LOAD: dict(base=Base.WEIGHTS, offset=(1 << 40) - 16, addr=7, words=(1 << 24) - 1),
        Opcode.STORE: dict(base=Base.OUTPUT, offset=32, addr=65535, words=1),
        Opcode.LAYERNORM: dict(rows=129, n=192, in_base=1, in_stride=6, out_base=2,
                               out_stride=6),
        Opcode.SOFTMAX: dict(rows=129, n=129, scale=23637, fmt=1, in_base=5, in_stride=5,
                             out_base=5, out_stride=5),
        Opcode.MOE: dict(layer=5, u_base=774, x_base=0, scratch_base=1548),
    }
    for op, fields in cases.items():
        got_op, got = isa.decode(isa.encode(op, **fields))
        assert got_op is op
        assert {k: got[k] for k in fields} == {k: int(v) for k, v in fields.items()}
    assert isa.decode(bytes([0x42]) + bytes(31))[0] == 0x42


def test_format_errors():
    with pytest.raises(ValueError, match="does not fit in 16 bits"):
        isa.encode(Opcode.MATMUL, m=1 << 16)
    with pytest.raises(ValueError, match="no field"):
        isa.encode(Opcode.LOAD, rows=3)
    with pytest.raises(ValueError, match="takes no operands"):
        isa.encode(Opcode.END, m=1)
    with pytest.raises(TypeError, match="integer"):
        isa.encode(Opcode.LOAD, addr=1.5)
    with pytest.raises(ValueError):
        isa.encode(99)
    with pytest.raises(ValueError, match="32 bytes"):
        isa.decode(b"\0" * 16)
    hdr = isa.decode_header(isa.encode_header(num_tasks=5, weights_bytes=(1 << 40) - 1))
    assert hdr["magic"] == isa.MAGIC and hdr["version"] == isa.VERSION
    assert hdr["num_tasks"] == 5 and hdr["weights_bytes"] == (1 << 40) - 1
    seg = isa.decode_segment_header(isa.encode_segment_header(Segment.LNPARAM, 192, 24, 9664))
    assert seg == {"magic": isa.SEGMENT_MAGIC, "kind": Segment.LNPARAM, "n": 192, "words": 24,
                   "eps": 9664, "reserved": 0}


def test_helpers_match_the_twin():
    nx = DEFAULT_NUMERICS
    for hd in (16, 32, 64):
        assert softmax_scale_int(hd ** -0.5, nx) == qref.softmax_scale_int(hd ** -0.5, nx)
    x = np.arange(384 * 2).reshape(2, 384) - 200
    for n in (32, 192, 384):
        s1, v = qref.layernorm_stats(x[:, :n], 1e-6, nx.act)
        assert v[0] == n * (x[0, :n] ** 2).sum() - s1[0] ** 2 + ln_eps_int(n, nx.act)
    with pytest.raises(ValueError):
        softmax_scale_int(0, nx)


# -- the compiled model ---------------------------------------------------------------------------

def test_micro_program_and_image():
    qm = random_model(MICRO, 1)
    cm = compile_model(qm, "small")
    assert cm.program[:4] == b"M3VP"
    lines = cm.disassemble()
    ops = [line.split()[1] for line in lines[1:]]
    assert ops[:3] == ["LOAD", "LOAD", "MATMUL"] and ops[-2:] == ["STORE", "END"]
    assert ops.count("MOE") == len(MICRO.moe_blocks)
    assert ops.count("SOFTMAX") == MICRO.depth * MICRO.heads
    assert ops.count("LAYERNORM") == 2 * MICRO.depth
    assert len(cm.weights) % 4096 == 0 and cm.moe_offset % 4096 == 0
    assert cm.plan.words <= SMALL.compute.abuf_depth
    # The parameter stream: one BIAS + WEIGHT pair per dense product and one LNPARAM per
    # LayerNorm, in program order, each decodable back to the model's integers.
    kinds = [s["kind"] for s in cm.segments]
    dense = 1 + MICRO.depth * 2 + 2 * (MICRO.depth - len(MICRO.moe_blocks))
    assert kinds.count(Segment.WEIGHT) == kinds.count(Segment.BIAS) == dense
    assert kinds.count(Segment.LNPARAM) == 2 * MICRO.depth
    seg = cm.segments[1]
    assert seg["what"] == "patch_embed.weight"
    a = SMALL.compute.array
    word = SMALL.beat_bytes * SMALL.stream_ports        # the header fills one stream word
    raw = cm.pstream[seg["offset"] + word:seg["offset"] + word + seg["n"] * a.rows * 2]
    vals = np.frombuffer(raw, dtype="<i2").astype(np.int64)
    idx = SystolicOrder(a.rows, a.cols).weights(MICRO.dim, MICRO.patch_dim)
    w = np.zeros(MICRO.dim * MICRO.patch_dim, dtype=np.int64)
    w[idx[idx >= 0]] = vals[idx >= 0]
    assert np.array_equal(w.reshape(MICRO.dim, -1), qm["patch_w"])
    pos = np.frombuffer(cm.weights[cm.pos_offset:cm.pos_offset + MICRO.tokens * MICRO.dim * 2],
                        dtype="<i2")
    assert np.array_equal(pos.reshape(MICRO.tokens, MICRO.dim), qm["pos"])
    # Output packing round trip.
    x = np.arange(MICRO.tokens * MICRO.dim).reshape(MICRO.tokens, MICRO.dim) - 50
    raw = x.astype("<i2").tobytes()
    assert np.array_equal(cm.unpack_output(raw + bytes(cm.output_bytes - len(raw))), x)
    with pytest.raises(ValueError, match="pixel format"):
        cm.pack_input(np.full((3, 32, 32), 1 << 20))


@pytest.mark.parametrize("seed", [0, 1])
def test_micro_frames_on_the_functional_model(seed):
    """The compiled program, executed by the functional model, equals the twin for every
    task, back to back on one model."""
    qm = random_model(MICRO, seed)
    cm = compile_model(qm, SMALL)
    mem = Memory(cm)
    pm = ProgramModel(SMALL)
    for task in range(MICRO.num_tasks):
        img = random_image(MICRO, seed * 10 + task)
        assert np.array_equal(mem.run(pm, img, task), twin_forward(qm, img, task))


#: A model smaller than micro in every MoE field (and with one head of 16): it runs on the
#: configurations built for micro and for m3vit-tiny.
NANO = ModelConfig(name="nano", img_h=32, img_w=16, dim=16, depth=2, heads=1, mlp_hidden=32,
                   num_experts=3, top_k=1, expert_hidden=16, num_tasks=1)


@pytest.mark.parametrize("accel, models", [
    ("small", [MICRO, NANO, MICRO]),
    # Heads of 16 on 32 lanes: padded to a word each (zero weights between).
    ("zcu104", [MICRO, dataclasses.replace(MICRO, name="micro-h1", heads=1)]),
])
def test_models_share_one_configuration(accel, models):
    """Models of different shapes (MoE shape included) compiled for one configuration, run one
    after the other on one functional model, each equal to its twin."""
    pm = ProgramModel(get_accel_config(accel))
    for i, cfg in enumerate(models):
        qm = random_model(cfg, i)
        cm = compile_model(qm, accel)
        mem = Memory(cm)
        for task in range(cfg.num_tasks):
            img = random_image(cfg, 7 * i + task)
            assert np.array_equal(mem.run(pm, img, task), twin_forward(qm, img, task)), \
                (cfg.name, task)


def test_padded_heads_plan():
    """micro on the ZCU104's 32 lanes: each head of q, k, v and of the attention output takes
    a whole word; m3vit-tiny's heads of 64 need no padding (its program is unchanged)."""
    cm = compile_model(random_model(MICRO, 0), "zcu104")
    assert (cm.plan.head_words, cm.plan.attn_words, cm.plan.qkv_words) == (1, 2, 6)
    assert cm.plan.row_words == 1
    tiny = get_config("m3vit-tiny")
    assert (-(-tiny.head_dim // 32) * tiny.heads, 3 * tiny.dim // 32) == (6, 18)


def test_functional_model_checks():
    qm = random_model(MICRO, 2)
    cm = compile_model(qm, SMALL)
    mem = Memory(cm)
    pm = ProgramModel(SMALL)
    img = random_image(MICRO)
    cases = [
        (ErrorCode.TASK_OUT_OF_RANGE, dict(task=2)),
        (ErrorCode.MISALIGNED_ADDRESS, dict(input_addr=mem.i + 8)),
        (ErrorCode.MISALIGNED_ADDRESS, dict(weights_addr=mem.w + 256)),
        (ErrorCode.OVERLAPPING_REGIONS, dict(output_addr=mem.i)),
        (ErrorCode.PROGRAM_ERROR, dict(program_len=48)),
    ]
    for code, override in cases:
        with pytest.raises(ProgramFault) as info:
            mem.run(pm, img, override.pop("task", 0), **override)
        assert info.value.code == code
    # A MATMUL flag above WAIT_SOFTMAX is refused, as the hardware refuses it.
    prog = cm.program
    at = next(i for i in range(isa.HEADER_BYTES, len(prog), isa.INSTR_BYTES)
              if isa.decode(prog[i:i + isa.INSTR_BYTES])[0] == Opcode.MATMUL)
    op, f = isa.decode(prog[at:at + isa.INSTR_BYTES])
    bad = isa.encode(op, **{**f, "flags": f["flags"] | 2 * isa.MatmulFlags.WAIT_SOFTMAX})
    mem.write(mem.p + at, bad)
    with pytest.raises(ProgramFault, match="bad MATMUL") as info:
        mem.run(pm, img, 0)
    assert info.value.code == ErrorCode.PROGRAM_ERROR
    mem.write(mem.p + at, prog[at:at + isa.INSTR_BYTES])
    # A MOE shape above the engine's maxima, or a bad one.
    at = next(i for i in range(isa.HEADER_BYTES, len(prog), isa.INSTR_BYTES)
              if isa.decode(prog[i:i + isa.INSTR_BYTES])[0] == Opcode.MOE)
    op, f = isa.decode(prog[at:at + isa.INSTR_BYTES])
    for change, what in (({"dim": 48}, "above the engine's maxima: dim"),
                         ({"k": 5}, "above the engine's maxima: k"),
                         ({"k": 0}, "bad MOE shape")):
        mem.write(mem.p + at, isa.encode(op, **{**f, **change}))
        with pytest.raises(ProgramFault, match=what) as info:
            mem.run(pm, img, 0)
        assert info.value.code == ErrorCode.PROGRAM_ERROR
    mem.write(mem.p + at, prog[at:at + isa.INSTR_BYTES])
    # A LOAD reads INPUT, WEIGHTS or OUTPUT; a STORE writes only OUTPUT.
    at = isa.HEADER_BYTES
    for op, base in ((Opcode.LOAD, 3), (Opcode.STORE, Base.INPUT), (Opcode.STORE, Base.WEIGHTS)):
        mem.write(mem.p + at, isa.encode(op, base=base, offset=0, addr=0, words=1))
        with pytest.raises(ProgramFault, match=f"bad {op.name}") as info:
            mem.run(pm, img, 0)
        assert info.value.code == ErrorCode.PROGRAM_ERROR


def test_refusals():
    qm = random_model(MICRO, 3)
    with pytest.raises(ValueError, match="nano: the embedding width \\(16\\) must be a multiple "
                                         "of the activation buffer's 32 lanes"):
        compile_model(random_model(NANO, 0), "zcu104")
    other = dataclasses.replace(MICRO, name="micro-e8", num_experts=8)
    with pytest.raises(ValueError, match="the MoE blocks of micro-e8 do not fit this MoE "
                                         "engine: num_experts 8 > 4 \\(its largest shape is "
                                         "micro's\\)"):
        compile_model(random_model(other, 0), SMALL)
    # A buffer too small for micro's on-chip plan: the compiler spills (below); one too small
    # even for tiles of one token is refused, with the need.
    tiny_abuf = _with_abuf(SMALL, 48)
    with pytest.raises(ValueError, match="micro does not fit this accelerator: in tiles of 1 "
                                         "token spilled to DDR it needs 52 activation-buffer "
                                         "words, above abuf_depth = 48"):
        compile_model(qm, tiny_abuf)
    for bad, exc in ((0, ValueError), (MICRO.tokens + 1, ValueError), (2.0, TypeError)):
        with pytest.raises(exc, match="spill_rows must be an integer in the range 1..5"):
            compile_model(qm, SMALL, spill_rows=bad)
    with pytest.raises(TypeError, match="QuantizedModel"):
        compile_model({"x": 1}, SMALL)
    with pytest.raises(ValueError, match="unknown accelerator configuration"):
        compile_model(qm, "huge")


def test_m3vit_small_compiles_for_the_zcu104_in_tiles():
    """m3vit-small runs on the zcu104 configuration without re-elaboration: its 1025 tokens in
    tiles through DDR (the largest that fit the activation buffer), every product, softmax and
    LayerNorm row within the configured maxima, the MoE a pass per tile within the engine's
    shape."""
    cfg = get_config("m3vit-small")
    zcu = get_accel_config("zcu104")
    cm = compile_model(random_model(cfg, 0), zcu)
    T = cm.plan.spill_rows
    assert 0 < T <= zcu.compute.max_m and cm.moe_tokens == T
    assert cm.output_region_bytes > cm.output_bytes        # q, k, v spilled after x
    c = zcu.compute
    n_moe = 0
    for i in range(isa.HEADER_BYTES, len(cm.program), isa.INSTR_BYTES):
        op, f = isa.decode(cm.program[i:i + isa.INSTR_BYTES])
        if op == Opcode.MATMUL:
            assert f["m"] <= min(T, c.max_m) and f["k"] <= c.max_k and f["n"] <= c.max_n, f
        elif op == Opcode.SOFTMAX:
            assert f["n"] <= zcu.softmax_max_len and f["rows"] <= T
        elif op == Opcode.LAYERNORM:
            assert f["n"] <= zcu.ln_max_len
        elif op == Opcode.MOE:
            n_moe += 1
            assert f["tokens"] <= T
    tiles = -(-cfg.tokens // T)
    assert n_moe == tiles * len(cfg.moe_blocks)
    # The tiny one runs on the same hardware, on chip.
    assert compile_model(random_model(get_config("m3vit-tiny"), 0), zcu).plan.spill_rows == 0


def test_a_larger_model_is_refused_with_the_reasons():
    """A model past the zcu104's maxima (ViT-Base widths) is refused with every limit it
    exceeds in one message."""
    cfg = dataclasses.replace(get_config("m3vit-small"), name="m3vit-base", dim=768,
                              mlp_hidden=3072, expert_hidden=1536)
    zcu = get_accel_config("zcu104")
    with pytest.raises(ValueError) as info:
        compile_model(QuantizedModel(cfg, DEFAULT_NUMERICS, {}), zcu)
    msg = str(info.value)
    for part in ("the fc1 product needs N = 3072, above max_n = 1536",
                 "the fc2 product needs K = 3072, above max_k = 1536",
                 "LayerNorm rows of 768 exceed ln_max_len = 384",
                 "do not fit this MoE engine: dim 768 > 384, hidden 1536 > 768"):
        assert part in msg, msg


def _with_abuf(accel, depth):
    return accel.replace(compute=dataclasses.replace(accel.compute, abuf_depth=depth))


#: micro with a dense block after its MoE block.
MICRO3 = dataclasses.replace(MICRO, name="micro-3", depth=3)


@pytest.mark.parametrize("cfg, accel, rows", [
    (MICRO, SMALL, 1), (MICRO, SMALL, 2), (MICRO, SMALL, 4), (MICRO, SMALL, 5),
    (MICRO3, SMALL, 3), (NANO, SMALL, 2),
    (MICRO, _with_abuf(SMALL, 160), None),      # the compiler picks 3 (156 words of 212)
    (MICRO, "zcu104", 2),                       # heads padded to a word
])
def test_spilled_frames_on_the_functional_model(cfg, accel, rows):
    """The DDR-spill program: the token matrix in the output region and q, k, v after it, the
    work in tiles of ``rows`` tokens (the MoE layer a pass per tile): equal to the twin with
    the tiles' MoE passes for every task; every transfer inside its region and every buffer
    word inside the plan."""
    qm = random_model(cfg, 4)
    cm = compile_model(qm, accel, spill_rows=rows)
    config = cm.config
    T = cm.plan.spill_rows
    assert T == (rows or 3) and cm.moe_tokens == T
    assert cm.plan.words <= config.compute.abuf_depth
    assert cm.spill_bytes == 3 * cfg.heads * cfg.tokens * cm.plan.head_words * config.lanes * 2
    hdr = isa.decode_header(cm.program)
    assert hdr["output_bytes"] == cm.output_region_bytes
    ops, loads_back = [], 0
    for i in range(isa.HEADER_BYTES, len(cm.program), isa.INSTR_BYTES):
        op, f = isa.decode(cm.program[i:i + isa.INSTR_BYTES])
        ops.append(op)
        if op in (Opcode.LOAD, Opcode.STORE):
            assert f["addr"] + f["words"] <= cm.plan.words
            nbytes = f["words"] * config.lanes * 2
            size = {Base.INPUT: cm.input_bytes, Base.WEIGHTS: len(cm.weights),
                    Base.OUTPUT: cm.output_region_bytes}[f["base"]]
            assert f["offset"] % config.beat_bytes == 0 and f["offset"] + nbytes <= size
            loads_back += op == Opcode.LOAD and f["base"] == Base.OUTPUT
        elif op == Opcode.MOE:
            assert f["tokens"] <= T
    tiles = -(-cfg.tokens // T)
    assert ops.count(Opcode.MOE) == tiles * len(cfg.moe_blocks)
    assert ops.count(Opcode.SOFTMAX) == tiles * cfg.depth * cfg.heads
    assert loads_back == cfg.depth * tiles * (2 + 3 * cfg.heads)
    mem = Memory(cm)
    pm = ProgramModel(config)
    for task in range(cfg.num_tasks):
        img = random_image(cfg, task)
        assert np.array_equal(mem.run(pm, img, task), twin_forward(qm, img, task, moe_tokens=T))


def saturating(qm):
    """``qm`` with its MoE layers made to saturate: the residual pushed up (projection bias
    +40), experts 0 and 1 adding the format's most, 2 and 3 taking a quarter of it off; a
    token's result then depends on the order its two experts come in."""
    nx = qm.numerics
    big = (1 << (nx.bias.width - 1)) - 1
    for blk in qm.cfg.moe_blocks:
        qm[f"blocks.{blk}.proj_b"][...] = 40 << nx.bias.f_bits
        b2 = qm[f"blocks.{blk}.b2"]
        b2[...] = np.where(np.arange(len(b2)) < 2, big, -big // 4)[:, None]
    return qm


@settings(max_examples=12, deadline=None)
@given(st.integers(1, MICRO.tokens), st.integers(0, MICRO.num_tasks - 1), st.integers(0, 3))
def test_spilled_tiles_of_any_size(rows, task, seed):
    """Any tile size, task and image, on the model whose MoE additions saturate: the spilled
    program equals the twin with the tiles' MoE passes."""
    qm = saturating(random_model(MICRO, seed))
    cm = compile_model(qm, SMALL, spill_rows=rows)
    img = random_image(MICRO, seed)
    assert np.array_equal(Memory(cm).run(ProgramModel(SMALL), img, task),
                          twin_forward(qm, img, task, moe_tokens=rows))


def test_spilled_moe_runs_a_pass_per_tile():
    """The MoE layer of a spilled program runs a pass per tile: the experts of a tile in the
    order of the tile's counts. On a model whose MoE additions saturate, that differs from one
    pass over all tokens, and the program equals the twin with the tiles' passes."""
    qm = saturating(random_model(MICRO, 0))
    cm = compile_model(qm, SMALL, spill_rows=2)
    img = random_image(MICRO, 0)
    tiled = twin_forward(qm, img, 0, moe_tokens=2)
    assert not np.array_equal(tiled, twin_forward(qm, img, 0))
    assert np.array_equal(Memory(cm).run(ProgramModel(SMALL), img, 0), tiled)
    assert np.array_equal(twin_forward(qm, img, 0, moe_tokens=MICRO.tokens),
                          twin_forward(qm, img, 0))
    for bad, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="moe_tokens must be a positive integer or None"):
            twin_forward(qm, img, 0, moe_tokens=bad)


def _words(base, stride, rows, elems, L):
    """The activation-buffer words of a matrix of ``rows`` rows of ``elems`` elements."""
    return {base + r * stride + w for r in range(rows) for w in range(-(-elems // L))}


@pytest.mark.parametrize("model, accel", [("micro", "small"), ("m3vit-tiny", "zcu104")])
def test_products_beside_the_softmax_keep_off_its_rows(model, accel):
    """A SOFTMAX runs on beside the MATMULs after it until an instruction waits for it
    (:mod:`hdl.isa`). In the compiled program no MATMUL that runs beside a softmax reads or
    writes that softmax's rows, and every head's products run beside a softmax but the first
    head's Q·Kᵀ and the last head's A·V (the next head's Q·Kᵀ beside the softmax of head h, in
    the other score area; A·V of head h beside the softmax of head h + 1)."""
    cfg = get_config(model)
    cm = compile_model(random_model(cfg, 0), accel)
    L = cm.config.lanes
    prog = cm.program
    pending, beside = None, 0
    for i in range(isa.HEADER_BYTES, len(prog), isa.INSTR_BYTES):
        op, f = isa.decode(prog[i:i + isa.INSTR_BYTES])
        if op == Opcode.SOFTMAX:
            pending = (_words(f["in_base"], f["in_stride"], f["rows"], f["n"], L)
                       | _words(f["out_base"], f["out_stride"], f["rows"], f["n"], L))
        elif op == Opcode.MATMUL and not f["flags"] & isa.MatmulFlags.WAIT_SOFTMAX:
            if pending is None:
                continue
            flags = isa.MatmulFlags(f["flags"])
            touched = (_words(f["x_base"], f["x_stride"], f["m"], f["k"], L)
                       | _words(f["y_base"], f["y_stride"], f["m"], f["n"], L))
            if flags & isa.MatmulFlags.W_FROM_ABUF:
                rows, elems = ((f["k"], f["n"]) if flags & isa.MatmulFlags.W_TRANSPOSED
                               else (f["n"], f["k"]))
                touched |= _words(f["w_base"], f["w_stride"], rows, elems, L)
            assert not touched & pending, f"instruction {i // isa.INSTR_BYTES - 1}"
            beside += 1
        else:
            pending = None          # waits for the softmax engine
    assert beside == cfg.depth * 2 * (cfg.heads - 1)
    # The two score areas lie in different banks of the buffer where it has more than one.
    bank = cm.config.compute.abuf_bank_depth
    s0, s1 = cm.plan.scores
    spans = [set(range(s // bank, (s + cfg.tokens * cm.plan.score_words - 1) // bank + 1))
             for s in (s0, s1)]
    assert not spans[0] & spans[1] or cm.config.compute.abuf_depth <= bank


@pytest.mark.slow
def test_m3vit_tiny_on_the_functional_model():
    """m3vit-tiny compiled for the zcu104 configuration equals the twin (both tasks)."""
    cfg = get_config("m3vit-tiny")
    qm = random_model(cfg, 0)
    cm = compile_model(qm, "zcu104")
    mem = Memory(cm)
    pm = ProgramModel(get_accel_config("zcu104"))
    for task in range(cfg.num_tasks):
        img = random_image(cfg, task)
        assert np.array_equal(mem.run(pm, img, task), twin_forward(qm, img, task))


@pytest.mark.slow
def test_m3vit_small_on_the_functional_model():
    """m3vit-small compiled for the zcu104 configuration (its token matrix in tiles through DDR,
    the MoE layer a pass per tile) equals the tiled twin (one task: a frame is about 31 G
    multiply-accumulates, minutes in the functional model)."""
    cfg = get_config("m3vit-small")
    qm = random_model(cfg, 0)
    cm = compile_model(qm, "zcu104")
    mem = Memory(cm)
    pm = ProgramModel(get_accel_config("zcu104"))
    img = random_image(cfg, 3)
    assert np.array_equal(mem.run(pm, img, 3),
                          twin_forward(qm, img, 3, moe_tokens=cm.moe_tokens))


def test_config_validation():
    c = SMALL.compute
    with pytest.raises(TypeError, match="ComputeConfig"):
        AccelConfig("x")
    with pytest.raises(ValueError, match="axi_ports"):
        SMALL.replace(axi_ports=5)
    with pytest.raises(ValueError, match="ln_lanes"):
        SMALL.replace(ln_lanes=6)
    with pytest.raises(ValueError, match="axi_data_width"):
        SMALL.replace(axi_data_width=96)
    with pytest.raises(ValueError, match="weight_buffer_bytes .* must hold the largest half"):
        SMALL.replace(moe_weight_bytes=1024)
    with pytest.raises(TypeError, match="moe_weight_bytes"):
        SMALL.replace(moe_weight_bytes="1 MiB")
    with pytest.raises(ValueError, match=r"softmax_max_len \(3\) must be at least the model's 4 "
                                         r"experts: one softmax unit serves"):
        SMALL.replace(softmax_max_len=3)
    with pytest.raises(ValueError, match="GELU"):
        SMALL.replace(compute=c.__class__(c.array, max_m=8, max_k=768, max_n=128,
                                          abuf_depth=256, gelu=False))
    with pytest.raises(ValueError, match="unknown accelerator configuration 'x'; known: "
                                         "small, zcu104"):
        get_accel_config("x")
    assert get_accel_config(SMALL) is SMALL
    z = get_accel_config("zcu104")
    assert z.n_pes <= 1728 and z.axi_ports == 4 and z.axi_data_width == 128
    assert z.regmap["hw_clock_khz"].reset == 300_000
    assert math.gcd(z.lanes, 192) == z.lanes


@pytest.mark.parametrize("ways", [1, 2, 4])
def test_stream_interleave(ways):
    """The parameter stream's DDR image: sub-stream j holds bus words j, j + ways, … one after
    the other, and de-interleaving gives the stream back; lengths that are not whole stream
    words are refused."""
    rng = np.random.default_rng(ways)
    beat = 16
    raw = rng.integers(0, 256, size=5 * ways * beat, dtype=np.uint8).tobytes()
    image = isa.interleave_stream(raw, ways, beat)
    words = [raw[i * beat:(i + 1) * beat] for i in range(len(raw) // beat)]
    size = len(raw) // ways
    for j in range(ways):
        assert image[j * size:(j + 1) * size] == b"".join(words[j::ways])
    assert isa.deinterleave_stream(image, ways, beat) == raw
    with pytest.raises(ValueError, match="whole number"):
        isa.interleave_stream(raw[:-1], ways, beat)
    with pytest.raises(ValueError, match="ways"):
        isa.deinterleave_stream(raw, 0, beat)
