# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/moe/layout.py: the host-side packer of the MoE weight image."""

import dataclasses

import numpy as np
import pytest

from golden.config import ModelConfig, get_config
from hdl.moe.layout import (PARTS, ImageLayout, RowMajorOrder, SystolicOrder, layout_for, pack,
                            unpack)
from sim.bench.moe import synthetic_model

KEYS = ("w1", "b1", "w2", "b2", "gate")


def _synth_cfg(E, D=8, Hd=16, T=3, depth=4, k=1):
    return ModelConfig(name="synth", img_h=16, img_w=32, dim=D, depth=depth, heads=1,
                       mlp_hidden=4 * D, num_experts=E, top_k=k, expert_hidden=Hd, num_tasks=T)


def _assert_round_trip(qm, image, index):
    back = unpack(image, index)
    for i in qm.cfg.moe_blocks:
        for key in KEYS:
            name = f"blocks.{i}.{key}"
            assert np.array_equal(back[name], qm.params[name]), name


@pytest.mark.parametrize("order", [RowMajorOrder(), SystolicOrder(4, 4), SystolicOrder(16, 16),
                                   SystolicOrder(2, 8)])
@pytest.mark.parametrize("data_width", [64, 128, 256])
def test_round_trip_micro(order, data_width):
    qm = synthetic_model("micro", seed=3)
    image, index = pack(qm, data_width, order=order)
    assert len(image) == index.total_bytes == index.layout.total_bytes
    _assert_round_trip(qm, image, index)


@pytest.mark.parametrize("E", [4, 16, 64])
def test_round_trip_expert_counts(E):
    qm = synthetic_model(_synth_cfg(E, D=12, Hd=20), seed=E)
    image, index = pack(qm, 128, order=SystolicOrder(8, 8))
    _assert_round_trip(qm, image, index)


def test_round_trip_real_checkpoint():
    """The quantised parameters of the float model's micro checkpoint pack and unpack."""
    pytest.importorskip("torch")
    from golden.checkpoint import init_model
    from golden.twin import quantize_params
    cfg = get_config("micro")
    qm = quantize_params(init_model(cfg, 5).state_dict(), cfg)
    image, index = pack(qm, 128, order=SystolicOrder(4, 4))
    _assert_round_trip(qm, image, index)


def test_alignment_and_addresses():
    qm = synthetic_model(_synth_cfg(16), seed=1)
    image, index = pack(qm, 128)
    lay = index.layout
    assert lay.expert_stride % 4096 == 0 and lay.layer_stride % 4096 == 0
    assert lay.experts_offset % 4096 == 0
    for (layer, e, part), (off, nbytes) in index.parts.items():
        assert off % lay.part_align == 0
        assert nbytes % lay.word_bytes == 0
        assert off == lay.part_offset(layer, e, part)
        assert lay.expert_offset(layer, e) % 4096 == 0
    for (layer, t), (off, nbytes) in index.routers.items():
        assert off % lay.part_align == 0 and off == lay.router_offset(layer, t)
    # Parts of one expert are in PARTS order and do not overlap; experts do not overlap.
    spans = sorted(index.parts.values()) + sorted(index.routers.values())
    spans.sort()
    for (a, na), (b, _) in zip(spans, spans[1:]):
        assert a + na <= b
    order = [index.parts[0, 0, p][0] for p in PARTS]
    assert order == sorted(order)


def test_sizes_m3vit_tiny():
    cfg = get_config("m3vit-tiny")
    lay = layout_for(cfg, 128, SystolicOrder(16, 16))
    d, h = cfg.dim, cfg.expert_hidden
    # 16 × 16 tiles divide 192 and 384: no padding, exactly the parameters.
    assert lay.part_bytes("fc1_w") == lay.part_bytes("fc2_w") == 2 * d * h
    assert lay.part_bytes("fc1_b") == 4 * h and lay.part_bytes("fc2_b") == 4 * d
    assert lay.bytes_for_expert() == 4 * d * h + 4 * (d + h)
    assert lay.bytes_for_router() == 2 * cfg.num_experts * d
    assert lay.expert_stride == -(-lay.expert_span // 4096) * 4096
    assert lay.num_layers == 6
    padding = lay.total_bytes - lay.num_layers * (cfg.num_experts * lay.bytes_for_expert() +
                                                  cfg.num_tasks * lay.bytes_for_router())
    assert 0 <= padding < 0.015 * lay.total_bytes


def test_expert_weights_in_fewer_bits():
    """With expert_weight_bits = b an expert's weights take b bits each (a 32 × 32 tile of 14-bit
    weights is 1,792 bytes); routers and biases keep their widths."""
    cfg = get_config("m3vit-tiny")
    full = layout_for(cfg, 128, SystolicOrder(32, 32))
    lay = layout_for(cfg, 128, SystolicOrder(32, 32), expert_weight_bits=14)
    d, h = cfg.dim, cfg.expert_hidden
    assert lay.part_bytes("fc1_w") == lay.part_bytes("fc2_w") == d * h * 14 // 8
    assert lay.part_bytes("fc1_w") // ((d // 32) * (h // 32)) == 1792
    for p in ("fc1_b", "fc2_b", "router"):
        assert lay.part_bytes(p) == full.part_bytes(p)
    assert lay.bytes_for_expert() < 0.88 * full.bytes_for_expert()
    # Whole bus words: 3 × 5 weights of 9 bits are 135 bits, two 128-bit words.
    odd = ImageLayout(num_layers=1, num_experts=1, num_tasks=1, dim=3, hidden=5,
                      expert_weight_bits=9)
    assert odd.part_words("fc1_w") == 2 and odd.element_bits("fc1_w") == 9


@pytest.mark.parametrize("bits", [16, 14, 12, 9])
@pytest.mark.parametrize("order, data_width", [(SystolicOrder(4, 4), 128),
                                               (SystolicOrder(2, 8), 64), (RowMajorOrder(), 256)])
def test_round_trip_expert_weight_bits(bits, order, data_width):
    """The experts' weights of a model quantised to ``bits`` pack into ``bits`` each and come
    back; the stored bit string is the weights' upper bits, back to back."""
    from golden.numerics import DEFAULT_NUMERICS
    nx = dataclasses.replace(DEFAULT_NUMERICS, expert_weight_bits=bits)
    qm = synthetic_model("micro", seed=bits, numerics=nx)
    image, index = pack(qm, data_width, order=order)
    assert index.layout.expert_weight_bits == bits
    _assert_round_trip(qm, image, index)
    # The first weights of layer 0's expert 0, read back from the bit string by hand.
    lay = index.layout
    off, nbytes = index.parts[0, 0, "fc1_w"]
    string = int.from_bytes(image[off:off + nbytes], "little")
    idx = lay.order.weights(*lay._shape("fc1_w"))
    w1 = qm.params[f"blocks.{qm.cfg.moe_blocks[0]}.w1"][0].reshape(-1)
    for j in range(12):
        field = (string >> (j * bits)) & ((1 << bits) - 1)
        field -= (field >> (bits - 1)) << bits
        assert field << (16 - bits) == (w1[idx[j]] if idx[j] >= 0 else 0)


def test_pack_refuses_weights_off_the_expert_grid():
    """A 14-bit image cannot hold an expert weight with nonzero low bits; a 16-bit one can."""
    qm = synthetic_model("micro", seed=0)
    bad = dict(qm.params)
    key = f"blocks.{qm.cfg.moe_blocks[-1]}.w2"
    bad[key] = bad[key].copy()
    bad[key][1, 2, 3] += 1
    with pytest.raises(ValueError, match=r"w2 has expert weights with nonzero low 2 bits: the "
                                         r"image stores 14 bits"):
        pack(dataclasses.replace(qm, params=bad))
    image, index = pack(dataclasses.replace(qm, params=bad), expert_weight_bits=16)
    assert unpack(image, index)[key][1, 2, 3] == bad[key][1, 2, 3]
    with pytest.raises(ValueError, match="expert_weight_bits must be"):
        ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=4, hidden=4,
                    expert_weight_bits=17)


def test_padding_to_bus_words_and_tiles():
    lay = ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=5, hidden=3,
                      order=SystolicOrder(4, 4))
    # fc1_w: NT = 1, KT = 2 → 2 tiles × 4 words × 4 weights = 32 weights = 64 B = 4 words.
    assert lay.part_elements("fc1_w") == 32 and lay.part_bytes("fc1_w") == 64
    # fc1_b: one N-tile of 4 biases = 16 B, one bus word.
    assert lay.part_bytes("fc1_b") == 16
    # fc2_w: N = 5 → NT = 2, K = 3 → KT = 1: 2 × 4 × 4 = 32 weights.
    assert lay.part_elements("fc2_w") == 32
    assert lay.part_elements("fc2_b") == 8


def test_image_too_small():
    qm = synthetic_model("micro", seed=0)
    image, index = pack(qm, 128)
    with pytest.raises(ValueError, match=r"the weight image has \d+ bytes; the layout needs "
                                         rf"{index.total_bytes}"):
        unpack(image[:-1], index)
    with pytest.raises(ValueError, match="layout needs"):
        index.layout.check_image(b"")


def test_bad_parameters():
    with pytest.raises(ValueError, match="data_width must be one of"):
        ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=4, hidden=4, data_width=96)
    with pytest.raises(TypeError, match="num_experts must be a positive integer"):
        ImageLayout(num_layers=1, num_experts=2.0, num_tasks=1, dim=4, hidden=4)
    with pytest.raises(ValueError, match="part_align must be a power of two"):
        ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=4, hidden=4, part_align=48)
    with pytest.raises(ValueError, match="part_align .* multiple of the bus word"):
        ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=4, hidden=4, data_width=1024,
                    part_align=64)
    with pytest.raises(TypeError, match="order must be a WeightOrder"):
        ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=4, hidden=4, order="rows")
    lay = ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=4, hidden=4)
    with pytest.raises(ValueError, match="expert 2 is out of range 0..1"):
        lay.expert_offset(0, 2)
    with pytest.raises(ValueError, match="task 1 is out of range"):
        lay.router_offset(0, 1)


def test_pack_refuses_bad_params():
    qm = synthetic_model("micro", seed=0)
    bad = dict(qm.params)
    key = f"blocks.{qm.cfg.moe_blocks[0]}.w1"
    bad[key] = bad[key][:, :-1]
    with pytest.raises(ValueError, match="w1 has shape"):
        pack(dataclasses.replace(qm, params=bad))
    bad = dict(qm.params)
    bad[key] = bad[key].copy()
    bad[key][0, 0, 0] = 1 << 16
    with pytest.raises(ValueError, match="outside 16-bit"):
        pack(dataclasses.replace(qm, params=bad))
