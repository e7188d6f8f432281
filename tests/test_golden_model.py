# SPDX-License-Identifier: BSD-2-Clause
"""Tests of the float golden model: upstream layout, semantics per stage, routing, checkpoints.

Every numerical check compares against an independent float64 re-implementation written here
from the M³ViT digest (einsum attention, a per-token MoE loop, explicit LayerNorm and GELU
formulas), never against numbers produced by the code under test.
"""

import math

import numpy as np
import pytest
import torch

from golden.checkpoint import (IMAGENET_MEAN, IMAGENET_STD, init_model, init_multitask,
                               load_checkpoint, load_multitask, save_checkpoint, seeded_image)
from golden.config import get_config
from golden.heads import M3ViTMultiTask, postprocess
from golden.model import M3ViT, route

MICRO = get_config("micro")
TINY = get_config("m3vit-tiny")

ATOL = 2e-5


# -- independent references ------------------------------------------------------------------

def upstream_backbone_shapes(cfg):
    """Key → shape of upstream ``VisionTransformerMoE.state_dict()``, from the digest's rules."""
    d, p, e, hd, hm = cfg.dim, cfg.patch, cfg.num_experts, cfg.expert_hidden, cfg.mlp_hidden
    n = (cfg.img_h // p) * (cfg.img_w // p) + 1
    shapes = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, n, d),
        "patch_embed.proj.weight": (d, 3, p, p),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            shapes[b + norm + ".weight"] = (d,)
            shapes[b + norm + ".bias"] = (d,)
        shapes[b + "attn.qkv.weight"] = (3 * d, d)
        shapes[b + "attn.qkv.bias"] = (3 * d,)
        shapes[b + "attn.proj.weight"] = (d, d)
        shapes[b + "attn.proj.bias"] = (d,)
        if i % 2 == 1:
            shapes[b + "mlp.experts.htoh4.weight"] = (e, hd, d)
            shapes[b + "mlp.experts.htoh4.bias"] = (e, hd)
            shapes[b + "mlp.experts.h4toh.weight"] = (e, d, hd)
            shapes[b + "mlp.experts.h4toh.bias"] = (e, d)
            for t in range(cfg.num_tasks):
                shapes[b + f"mlp.gate.{t}.w_gate"] = (d, e)
        else:
            shapes[b + "mlp.fc1.weight"] = (hm, d)
            shapes[b + "mlp.fc1.bias"] = (hm,)
            shapes[b + "mlp.fc2.weight"] = (d, hm)
            shapes[b + "mlp.fc2.bias"] = (d,)
    return shapes


def upstream_multitask_shapes(cfg):
    """Key → shape of the whole model: ``backbone.`` prefix plus upstream head keys."""
    shapes = {"backbone." + k: v for k, v in upstream_backbone_shapes(cfg).items()}
    ch = cfg.head_channels
    for task, classes in zip(cfg.task_names, cfg.task_classes):
        b = f"decoders.{task}."
        shapes[b + "norm.weight"] = shapes[b + "norm.bias"] = (cfg.dim,)
        for i in range(4):
            shapes[b + f"conv_{i}.weight"] = (ch, cfg.dim if i == 0 else ch, 3, 3)
            shapes[b + f"conv_{i}.bias"] = (ch,)
            for stat in ("weight", "bias", "running_mean", "running_var"):
                shapes[b + f"syncbn_fc_{i}.{stat}"] = (ch,)
            shapes[b + f"syncbn_fc_{i}.num_batches_tracked"] = ()
        shapes[b + "conv_4.weight"] = (classes, ch, 1, 1)
        shapes[b + "conv_4.bias"] = (classes,)
    return shapes


def shapes_of(state):
    return {k: tuple(v.shape) for k, v in state.items()}


def ref_layernorm(x, weight, bias):
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * weight.double() + bias.double()


def ref_gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def ref_softmax(x):
    x = x - x.max(-1, keepdim=True).values
    return torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)


def ref_moe(u, w_gate, w1, b1, w2, b2, k):
    """Route and combine token by token, in float64, with the lowest-index tie rule."""
    u, w_gate, w1, b1, w2, b2 = (t.double() for t in (u, w_gate, w1, b1, w2, b2))
    idx = torch.zeros(u.shape[0], k, dtype=torch.long)
    scores = torch.zeros(u.shape[0], k, dtype=torch.float64)
    out = torch.zeros_like(u)
    for n in range(u.shape[0]):
        p = ref_softmax(u[n] @ w_gate)
        ranked = sorted(range(p.shape[0]), key=lambda e: (-p[e].item(), e))
        for j, e in enumerate(ranked[:k]):
            idx[n, j] = e
            scores[n, j] = p[e]
            out[n] += p[e] * (w2[e] @ ref_gelu(w1[e] @ u[n] + b1[e]) + b2[e])
    return idx, scores, out


def run(model, image, task, taps=None):
    with torch.no_grad():
        return model(torch.as_tensor(image), task, taps)


@pytest.fixture(scope="module")
def micro():
    return init_model(MICRO, 0)


@pytest.fixture(scope="module")
def micro_taps(micro):
    """Unbatched taps of both tasks on one seeded image."""
    image = seeded_image(MICRO, 0)
    result = []
    for task in range(MICRO.num_tasks):
        taps = {}
        out = run(micro, image, task, taps)
        result.append((image, out, taps))
    return result


# -- layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [MICRO, TINY], ids=lambda c: c.name)
def test_backbone_state_dict_is_upstream(cfg):
    with torch.device("meta"):
        model = M3ViT(cfg)
    assert shapes_of(model.state_dict()) == upstream_backbone_shapes(cfg)


@pytest.mark.parametrize("cfg", [MICRO, TINY], ids=lambda c: c.name)
def test_multitask_state_dict_layout(cfg):
    with torch.device("meta"):
        model = M3ViTMultiTask(cfg)
    assert shapes_of(model.state_dict()) == upstream_multitask_shapes(cfg)
    assert shapes_of(model.backbone.state_dict()) == upstream_backbone_shapes(cfg)


def test_tiny_parameter_count_matches_upstream():
    # The digest's count from instantiating the original CityScapes ViT-Ti MoE classes.
    with torch.device("meta"):
        model = M3ViT(TINY)
    assert sum(p.numel() for p in model.parameters()) == 17_983_680


# -- routing ---------------------------------------------------------------------------------

def test_route_ties_go_to_lowest_index_and_scores_are_raw_probabilities():
    # Logits (1, 3, 3, 0, 3, 3) from power-of-two values, exact in any summation order.
    w_gate = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 3.0]])
    u = torch.ones(1, 1)
    p = ref_softmax(torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 3.0], dtype=torch.float64))
    for k, expected in ((1, [1]), (2, [1, 2]), (3, [1, 2, 4]), (6, [1, 2, 4, 5, 0, 3])):
        idx, scores = route(u, w_gate, k)
        assert idx.dtype == torch.int64
        assert idx[0].tolist() == expected
        torch.testing.assert_close(scores[0].double(), p[expected], atol=1e-7, rtol=0)
    _, scores = route(u, w_gate, 2)
    assert scores.sum().item() < 0.9  # not renormalised over the selected experts


def test_route_matches_reference_with_many_ties():
    gen = torch.Generator().manual_seed(5)
    # Integer logits in a small range: plenty of exact ties per token.
    u = torch.randint(-2, 3, (200, 6), generator=gen).float()
    w_gate = torch.randint(-1, 2, (6, 8), generator=gen).float()
    idx, scores = route(u, w_gate, 3)
    for n in range(u.shape[0]):
        p = ref_softmax((u[n] @ w_gate).double())
        ranked = sorted(range(8), key=lambda e: (-p[e].item(), e))[:3]
        assert idx[n].tolist() == ranked
        torch.testing.assert_close(scores[n].double(), p[ranked], atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [0, 5, 2.0, True])
def test_route_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        route(torch.zeros(3, 2), torch.zeros(2, 4), k)


def test_route_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(5, 4\)"):
        route(torch.zeros(3, 2), torch.zeros(5, 4), 1)


# -- semantics per stage ---------------------------------------------------------------------

def test_patch_embedding_and_tokens(micro, micro_taps):
    image, _, taps = micro_taps[0]
    p, d = MICRO.patch, MICRO.dim
    img = torch.from_numpy(image).double()
    # Raster order of patches, each flattened in (channel, row, column) order.
    patches = torch.stack([img[:, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(-1)
                           for r in range(MICRO.grid_h) for c in range(MICRO.grid_w)])
    w = micro.patch_embed.proj.weight.double().reshape(d, -1)
    tokens = patches @ w.T + micro.patch_embed.proj.bias.double()
    tokens = torch.cat([micro.cls_token.double()[0], tokens]) + micro.pos_embed.double()[0]
    torch.testing.assert_close(taps["patch_embed"].double(), tokens, atol=ATOL, rtol=0)


def test_attention_matches_einsum(micro, micro_taps):
    d, nh, hd = MICRO.dim, MICRO.heads, MICRO.head_dim
    for _, _, taps in micro_taps:
        for i in range(MICRO.depth):
            blk = micro.blocks[i]
            x = taps["patch_embed"] if i == 0 else taps[f"block{i - 1}"]
            ln1 = ref_layernorm(x, blk.norm1.weight, blk.norm1.bias)
            torch.testing.assert_close(taps[f"block{i}.ln1"].double(), ln1, atol=ATOL, rtol=0)
            wqkv, bqkv = blk.attn.qkv.weight.double(), blk.attn.qkv.bias.double()
            qkv = torch.einsum("nd,od->no", ln1, wqkv) + bqkv
            torch.testing.assert_close(taps[f"block{i}.qkv"].double(), qkv, atol=ATOL, rtol=0)
            q, k, v = (qkv[:, j * d:(j + 1) * d].reshape(-1, nh, hd) for j in range(3))
            probs = ref_softmax(torch.einsum("nhc,mhc->hnm", q, k) / math.sqrt(hd))
            torch.testing.assert_close(taps[f"block{i}.attn_probs"].double(), probs,
                                       atol=ATOL, rtol=0)
            out = torch.einsum("hnm,mhc->nhc", probs, v).reshape(-1, d)
            torch.testing.assert_close(taps[f"block{i}.attn_out"].double(), out,
                                       atol=ATOL, rtol=0)
            resid = (x.double() + out @ blk.attn.proj.weight.double().T
                     + blk.attn.proj.bias.double())
            torch.testing.assert_close(taps[f"block{i}.resid1"].double(), resid,
                                       atol=ATOL, rtol=0)
            ln2 = ref_layernorm(taps[f"block{i}.resid1"], blk.norm2.weight, blk.norm2.bias)
            torch.testing.assert_close(taps[f"block{i}.ln2"].double(), ln2, atol=ATOL, rtol=0)


def check_dense_against_reference(model, cfg, taps):
    for i in range(0, cfg.depth, 2):
        mlp = model.blocks[i].mlp
        u = taps[f"block{i}.ln2"].double()
        pre = u @ mlp.fc1.weight.double().T + mlp.fc1.bias.double()
        hidden = ref_gelu(pre)
        out = taps[f"block{i}.resid1"].double() + hidden @ mlp.fc2.weight.double().T \
            + mlp.fc2.bias.double()
        torch.testing.assert_close(taps[f"block{i}.fc1"].double(), pre, atol=ATOL, rtol=1e-6)
        torch.testing.assert_close(taps[f"block{i}.hidden"].double(), hidden,
                                   atol=ATOL, rtol=1e-6)
        torch.testing.assert_close(taps[f"block{i}"].double(), out, atol=ATOL, rtol=1e-6)


def test_dense_mlp_matches_reference(micro, micro_taps):
    for _, _, taps in micro_taps:
        check_dense_against_reference(micro, MICRO, taps)


def check_moe_against_loop(model, cfg, taps, task):
    for i in cfg.moe_blocks:
        mlp = model.blocks[i].mlp
        ex = mlp.experts
        idx, scores, out = ref_moe(taps[f"block{i}.ln2"], mlp.gate[task].w_gate,
                                   ex.htoh4.weight, ex.htoh4.bias, ex.h4toh.weight,
                                   ex.h4toh.bias, cfg.top_k)
        assert torch.equal(taps[f"block{i}.topk_idx"], idx)
        torch.testing.assert_close(taps[f"block{i}.topk_scores"].double(), scores,
                                   atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(taps[f"block{i}.moe_out"].double(), out, atol=ATOL,
                                   rtol=1e-6)
        torch.testing.assert_close(taps[f"block{i}"].double(),
                                   taps[f"block{i}.resid1"].double() + out, atol=ATOL,
                                   rtol=1e-6)
        logits = taps[f"block{i}.ln2"].double() @ mlp.gate[task].w_gate.double()
        torch.testing.assert_close(taps[f"block{i}.router_logits"].double(), logits,
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(taps[f"block{i}.router_probs"].double(),
                                   ref_softmax(logits), atol=1e-6, rtol=1e-5)


def test_moe_matches_per_token_loop(micro, micro_taps):
    for task, (_, _, taps) in enumerate(micro_taps):
        check_moe_against_loop(micro, MICRO, taps, task)


def test_gelu_is_exact_erf_over_a_wide_range():
    # With init_model's small weights GELU inputs stay near 0, where the tanh approximation is
    # close to exact; scaled-up first layers spread them over several units.
    model = init_model(MICRO, 3)
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.mul_(40)
        model.blocks[1].mlp.experts.htoh4.weight.mul_(40)
    taps = {}
    run(model, seeded_image(MICRO, 3), 1, taps)
    assert taps["block0.fc1"].abs().max() > 3
    check_dense_against_reference(model, MICRO, taps)
    check_moe_against_loop(model, MICRO, taps, 1)


def test_moe_uses_several_experts_and_raw_scores(micro_taps):
    for _, _, taps in micro_taps:
        for i in MICRO.moe_blocks:
            assert len(torch.unique(taps[f"block{i}.topk_idx"])) > 1
            assert (taps[f"block{i}.topk_scores"].sum(-1) < 1 - 1e-3).all()


def test_tasks_share_dense_path_but_route_differently(micro_taps):
    (_, out0, taps0), (_, out1, taps1) = micro_taps
    first_moe = MICRO.moe_blocks[0]
    for key in taps0:
        if key.startswith("patch_embed") or int(key[5:].split(".")[0]) < first_moe:
            assert torch.equal(taps0[key], taps1[key]), key
    assert torch.equal(taps0[f"block{first_moe}.ln2"], taps1[f"block{first_moe}.ln2"])
    assert not torch.equal(taps0[f"block{first_moe}.router_logits"],
                           taps1[f"block{first_moe}.router_logits"])
    assert not torch.allclose(out0, out1)


def test_output_is_last_block_tap(micro_taps):
    for _, out, taps in micro_taps:
        assert torch.equal(out, taps[f"block{MICRO.depth - 1}"])


# -- taps, batching and input validation -----------------------------------------------------

def expected_tap_shapes(cfg, batch=()):
    n, d, e, k = cfg.tokens, cfg.dim, cfg.num_experts, cfg.top_k
    shapes = {"patch_embed": (n, d)}
    for i in range(cfg.depth):
        b = f"block{i}."
        shapes.update({b + "ln1": (n, d), b + "qkv": (n, 3 * d),
                       b + "attn_probs": (cfg.heads, n, n), b + "attn_out": (n, d),
                       b + "resid1": (n, d), b + "ln2": (n, d), f"block{i}": (n, d)})
        if i % 2:
            shapes.update({b + "router_logits": (n, e), b + "router_probs": (n, e),
                           b + "topk_idx": (n, k), b + "topk_scores": (n, k),
                           b + "moe_out": (n, d)})
        else:
            shapes.update({b + "fc1": (n, cfg.mlp_hidden), b + "hidden": (n, cfg.mlp_hidden)})
    return {key: tuple(batch) + s for key, s in shapes.items()}


def test_taps_keys_and_shapes(micro_taps):
    _, out, taps = micro_taps[0]
    assert out.shape == (MICRO.tokens, MICRO.dim)
    assert shapes_of(taps) == expected_tap_shapes(MICRO)
    for key, value in taps.items():
        assert value.dtype == (torch.int64 if key.endswith("topk_idx") else torch.float32), key


def test_batched_equals_unbatched(micro):
    images = [seeded_image(MICRO, s) for s in (3, 4)]
    taps = {}
    out = run(micro, np.stack(images), 1, taps)
    assert out.shape == (2, MICRO.tokens, MICRO.dim)
    assert shapes_of(taps) == expected_tap_shapes(MICRO, batch=(2,))
    for b, image in enumerate(images):
        single = {}
        torch.testing.assert_close(out[b], run(micro, image, 1, single), atol=1e-5, rtol=0)
        for i in MICRO.moe_blocks:
            assert torch.equal(taps[f"block{i}.topk_idx"][b], single[f"block{i}.topk_idx"])


def test_bad_task_id(micro):
    image = seeded_image(MICRO, 0)
    for task in (-1, MICRO.num_tasks):
        with pytest.raises(ValueError, match="out of range"):
            run(micro, image, task)
    with pytest.raises(TypeError, match="integer"):
        run(micro, image, True)


@pytest.mark.parametrize("shape", [(3, 32, 48), (1, 32, 32), (32, 32), (2, 1, 3, 32, 32)])
def test_bad_image_shape_names_expected_shape(micro, shape):
    with pytest.raises(ValueError, match=r"expects \(3, 32, 32\)"):
        run(micro, torch.zeros(shape), 0)


def test_integer_image_rejected(micro):
    with pytest.raises(TypeError, match="floating-point"):
        run(micro, torch.zeros(3, 32, 32, dtype=torch.uint8), 0)


def test_tiny_forward():
    model = init_model(TINY, 1)
    taps = {}
    out = run(model, seeded_image(TINY, 1), 0, taps)
    assert out.shape == (TINY.tokens, TINY.dim) == (129, 192)
    assert torch.isfinite(out).all()
    assert shapes_of(taps) == expected_tap_shapes(TINY)
    check_moe_against_loop(model, TINY, taps, 0)


# -- decoder heads ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def micro_mt():
    return init_multitask(MICRO, 0)


def ref_head(head, feats):
    """The PUP head step by step, in float64, with BatchNorm written out."""
    x = ref_layernorm(feats[1:], head.norm.weight, head.norm.bias)
    x = x.T.reshape(1, MICRO.dim, MICRO.grid_h, MICRO.grid_w)

    def up(t):
        return torch.nn.functional.interpolate(t, scale_factor=2, mode="bilinear",
                                               align_corners=False)

    for i in range(4):
        conv, bn = getattr(head, f"conv_{i}"), getattr(head, f"syncbn_fc_{i}")
        x = torch.nn.functional.conv2d(x, conv.weight.double(), conv.bias.double(), padding=1)
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + 1e-5)
        x = (x - bn.running_mean.double()[:, None, None]) * scale[:, None, None] \
            + bn.bias.double()[:, None, None]
        x = x.clamp(min=0)
        if i < 3:
            x = up(x)
    x = torch.nn.functional.conv2d(x, head.conv_4.weight.double(), head.conv_4.bias.double())
    return up(x)[0]


def test_head_output_shape_and_value_per_task(micro_mt):
    image = seeded_image(MICRO, 2)
    for task, (name, classes) in enumerate(zip(MICRO.task_names, MICRO.task_classes)):
        with torch.no_grad():
            out = micro_mt(torch.from_numpy(image), name)
            feats = micro_mt.backbone(torch.from_numpy(image), task)
            ref = ref_head(micro_mt.decoders[name], feats)
            by_id = micro_mt(torch.from_numpy(image), task)
        assert out.shape == (classes, MICRO.img_h, MICRO.img_w)
        torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)
        assert torch.equal(out, by_id)


def test_head_batched_shape(micro_mt):
    images = torch.from_numpy(np.stack([seeded_image(MICRO, s) for s in (0, 1, 2)]))
    with torch.no_grad():
        out = micro_mt(images, "semseg")
    assert out.shape == (3, MICRO.task_classes[0], MICRO.img_h, MICRO.img_w)


def test_head_uses_running_statistics_in_train_mode(micro_mt):
    image = torch.from_numpy(seeded_image(MICRO, 2))
    with torch.no_grad():
        ref = micro_mt(image, "depth")
        micro_mt.train()
        try:
            out = micro_mt(image, "depth")
        finally:
            micro_mt.eval()
    assert torch.equal(out, ref)


def test_multitask_bad_task(micro_mt):
    image = seeded_image(MICRO, 0)
    with pytest.raises(ValueError, match="unknown task 'normals'"):
        micro_mt(image, "normals")
    with pytest.raises(ValueError, match="out of range"):
        micro_mt(image, MICRO.num_tasks)


def test_postprocess():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 4, 6, generator=gen)
    seg = postprocess("semseg", logits)
    assert seg.shape == (2, 4, 6) and seg.dtype == torch.int64
    assert torch.equal(seg[1, 2, 3], logits[1, :, 2, 3].argmax())
    assert torch.equal(postprocess("human_parts", logits[0]), logits[0].argmax(0))
    assert torch.equal(postprocess("depth", logits[:, :1]), logits[:, :1])
    normals = postprocess("normals", logits[:, :3])
    unit = normals / 255.0 * 2.0 - 1.0
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(2, 4, 6))
    torch.testing.assert_close(unit * logits[:, :3].norm(dim=1, keepdim=True), logits[:, :3])
    for name in ("sal", "edge"):
        sal = postprocess(name, logits[:, :1])
        torch.testing.assert_close(sal, 255.0 / (1.0 + torch.exp(-logits[:, :1])))
    with pytest.raises(ValueError, match="unknown task 'task0'"):
        postprocess("task0", logits)
    with pytest.raises(ValueError, match=r"\(5, 4\)"):
        postprocess("depth", logits[0, :, :, 0])


# -- checkpoints -------------------------------------------------------------------------------

def test_save_load_round_trip(micro, tmp_path):
    path = tmp_path / "micro.pt"
    save_checkpoint(micro, path)
    saved = torch.load(path, weights_only=True)
    assert shapes_of(saved) == upstream_backbone_shapes(MICRO)
    image = seeded_image(MICRO, 7)
    for source in (path, str(path), saved, {"model": saved, "epoch": 3}, {"state_dict": saved}):
        loaded = load_checkpoint(source, MICRO)
        for task in range(MICRO.num_tasks):
            assert torch.equal(run(loaded, image, task), run(micro, image, task))


def test_multitask_round_trip(micro_mt, tmp_path):
    path = tmp_path / "micro_mt.pt"
    save_checkpoint(micro_mt, path)
    loaded = load_multitask(path, MICRO)
    image = torch.from_numpy(seeded_image(MICRO, 7))
    for name in MICRO.task_names:
        with torch.no_grad():
            assert torch.equal(loaded(image, name), micro_mt(image, name))
    for key, value in micro_mt.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_missing_key(micro):
    state = dict(micro.state_dict())
    del state["blocks.1.mlp.gate.1.w_gate"]
    with pytest.raises(ValueError, match=r"missing key\(s\) 'blocks\.1\.mlp\.gate\.1\.w_gate'"):
        load_checkpoint(state, MICRO)


def test_load_misshaped_key(micro):
    state = dict(micro.state_dict())
    state["blocks.1.mlp.experts.htoh4.weight"] = torch.zeros(4, 32, 64)
    with pytest.raises(ValueError, match=r"'blocks\.1\.mlp\.experts\.htoh4\.weight' has shape "
                                         r"\(4, 32, 64\) in the checkpoint but \(4, 64, 32\)"):
        load_checkpoint(state, MICRO)


def test_load_wrong_config_names_shapes(micro):
    with pytest.raises(ValueError, match=r"'pos_embed' has shape \(1, 5, 32\).*\(1, 129, 192\)"):
        load_checkpoint(micro.state_dict(), TINY)


def test_load_unexpected_key(micro):
    state = dict(micro.state_dict())
    state["blocks.0.mlp.fc3.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected key\(s\) 'blocks\.0\.mlp\.fc3\.weight'"):
        load_checkpoint(state, MICRO)


def test_decoder_keys_only_for_multitask_loader(micro_mt):
    state = micro_mt.state_dict()
    with pytest.raises(ValueError, match=r"whole-model checkpoint: use load_multitask"):
        load_checkpoint(state, MICRO)
    with_head = dict(micro_mt.backbone.state_dict())
    with_head["decoders.semseg.norm.weight"] = state["decoders.semseg.norm.weight"]
    with pytest.raises(ValueError, match=r"^[^;]*unexpected key\(s\) 'decoders\.semseg\.norm"
                                         r"\.weight' \(.*load_multitask"):
        load_checkpoint(with_head, MICRO)
    backbone_only = micro_mt.backbone.state_dict()
    with pytest.raises(ValueError, match=r"missing key\(s\) 'backbone\.cls_token'"):
        load_multitask(backbone_only, MICRO)
    trimmed = {k: v for k, v in state.items() if not k.startswith("decoders.depth.")}
    with pytest.raises(ValueError, match=r"'decoders\.depth\.norm\.weight'"):
        load_multitask(trimmed, MICRO)


def test_load_rejects_non_tensor_entries(micro):
    state = dict(micro.state_dict())
    state["cls_token"] = [0.0]
    with pytest.raises(ValueError, match="'cls_token' is a list"):
        load_checkpoint(state, MICRO)


# -- seeded initialisation and images ---------------------------------------------------------

def test_init_is_deterministic_and_seed_dependent():
    before = torch.random.get_rng_state()
    a, b, c = init_model(MICRO, 11), init_model(MICRO, 11), init_model(MICRO, 12)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global RNG is untouched
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
        assert not torch.equal(value, c.state_dict()[key]), key
        assert value.std() > 0, key  # every parameter is random, biases and LN included


def test_init_magnitudes():
    state = init_model(TINY, 0).state_dict()
    w1 = state["blocks.1.mlp.experts.htoh4.weight"]
    assert 0.015 < w1.std() < 0.025 and w1.abs().max() <= 0.04 + 1e-6
    gain = state["blocks.0.norm1.weight"]
    assert 0.9 < gain.mean() < 1.1 and 0.02 < gain.std() < 0.1
    bound = 1 / math.sqrt(TINY.num_experts)
    w_gate = state["blocks.3.mlp.gate.1.w_gate"]
    assert w_gate.abs().max() <= bound and w_gate.abs().max() > 0.9 * bound


def test_init_multitask_backbone_equals_init_model(micro, micro_mt):
    for key, value in micro.state_dict().items():
        assert torch.equal(micro_mt.backbone.state_dict()[key], value), key
    other = init_multitask(MICRO, 1)
    for key, value in micro_mt.decoders.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert not torch.equal(other.decoders.state_dict()[key], value), key


def test_seeded_image():
    a, b, c = seeded_image(TINY, 4), seeded_image(TINY, 4), seeded_image(TINY, 5)
    assert a.shape == (3, TINY.img_h, TINY.img_w) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    raw = a * np.asarray(IMAGENET_STD)[:, None, None] + np.asarray(IMAGENET_MEAN)[:, None, None]
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5
    np.testing.assert_allclose(raw * 255, np.round(raw * 255), atol=1e-3)  # 8-bit levels
    assert raw.std() > 0.1  # not flat
    # Smooth: neighbouring pixels correlate far more than random pixels do.
    flat = raw[0]
    assert np.corrcoef(flat[:, 1:].ravel(), flat[:, :-1].ravel())[0, 1] > 0.8


@pytest.mark.parametrize("seed", [-1, 2 ** 63, 1.0, True])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be"):
        init_model(MICRO, seed)
    with pytest.raises(ValueError, match="seed must be"):
        seeded_image(MICRO, seed)
