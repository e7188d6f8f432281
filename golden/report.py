# SPDX-License-Identifier: BSD-2-Clause
"""The numerics study: how far the integer twin is from the float model, and why.

:func:`fidelity_report` runs seeded checkpoints and images through both and reports, per layer
and for the final backbone output, the cosine similarity and the normalised MSE (MSE divided by
the mean square of the float output), the routing agreement (teacher-forced: each MoE layer's
router fed the float model's input to that layer; and free-running), and the approximation
errors of the GELU and softmax units measured against exact math.
"""

import math

import numpy as np
import torch

from . import qref
from .checkpoint import init_model, seeded_image
from .config import get_config
from .fixed import dequantize, quantize
from .numerics import DEFAULT_NUMERICS
from .twin import quantize_image, quantize_params, twin_forward

__all__ = ["cosine", "nmse", "run_both", "gelu_error", "softmax_error", "fidelity_report",
           "TARGETS"]

#: The targets the default numerics must meet on m3vit-tiny.
TARGETS = {"cosine": 0.999, "nmse": 1e-3, "routing_agreement": 0.99,
           "gelu_max_abs_err": 1e-4, "gelu_max_lsb_err": 1,
           "softmax_max_abs_err": 2.0 ** -10, "softmax_max_lsb_err": 1}


def cosine(a, b):
    """Cosine similarity of two arrays, flattened."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den else float(np.array_equal(a, b))


def nmse(approx, ref):
    """MSE of ``approx`` against ``ref``, divided by the mean square of ``ref``."""
    approx = np.asarray(approx, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    den = np.mean(ref ** 2)
    return float(np.mean((approx - ref) ** 2) / den) if den else float(np.mean(approx ** 2))


def run_both(model, image, task, numerics=DEFAULT_NUMERICS, qm=None):
    """Run the float model and the twin on one image; return ``(float_taps, twin_taps, qm)``.

    Taps are float64 NumPy arrays (the twin's dequantised).
    """
    cfg = model.cfg
    if qm is None:
        qm = quantize_params(model.state_dict(), cfg, numerics)
    ftaps = {}
    with torch.no_grad():
        model(torch.from_numpy(np.asarray(image, dtype=np.float32)), task, taps=ftaps)
    ftaps = {k: v.double().numpy() for k, v in ftaps.items()}
    itaps = {}
    twin_forward(qm, quantize_image(image, cfg, numerics), task, taps=itaps)
    return ftaps, itaps, qm


def _tap_format(key, numerics):
    kind = key.split(".")[-1]
    return {
        "ln1": numerics.ln_out, "ln2": numerics.ln_out, "qkv": numerics.qkv,
        "attn_probs": numerics.prob, "attn_out": numerics.act, "hidden": numerics.hidden,
        "router_logits": numerics.logit, "router_probs": numerics.prob,
        "topk_scores": numerics.prob,
    }.get(kind, numerics.act)


def teacher_forced_routing(qm, ftaps, task):
    """Per MoE layer, the fraction of tokens whose twin top-k set equals the float one when the
    twin's LayerNorm and router are fed the float model's input to that layer."""
    cfg, nx = qm.cfg, qm.numerics
    out = {}
    for i in cfg.moe_blocks:
        b = f"blocks.{i}."
        x = quantize(ftaps[f"block{i}.resid1"], nx.act)
        u = qref.layernorm(x, qm[b + "ln2_g"], qm[b + "ln2_b"], in_fmt=nx.act,
                           param_fmt=nx.ln_param, out_fmt=nx.ln_out, numerics=nx)
        _, _, idx, _ = qref.route(u, qm[b + "gate"][task], cfg.top_k, nx)
        out[i] = _set_agreement(idx, ftaps[f"block{i}.topk_idx"])
    return out


def _set_agreement(a, b):
    return float(np.mean(np.all(np.sort(a, axis=-1) == np.sort(np.asarray(b, np.int64), axis=-1),
                                axis=-1)))


def gelu_error(numerics=DEFAULT_NUMERICS, lo=-8.0, hi=8.0):
    """GELU unit errors over every ``hidden``-format input in [lo, hi].

    Returns ``(max_abs_err, max_lsb_err)``: the approximation before its final rounding against
    exact erf-GELU, and the output against exact GELU rounded to the format (in LSBs).
    """
    fmt = numerics.hidden
    x = np.arange(max(fmt.min_int, int(lo * 2 ** fmt.f_bits)),
                  min(fmt.max_int, int(hi * 2 ** fmt.f_bits)) + 1, dtype=np.int64)
    xr = dequantize(x, fmt)
    exact = xr * 0.5 * (1.0 + np.vectorize(math.erf)(xr / math.sqrt(2.0)))
    pre_frac = numerics.gelu_frac + fmt.f_bits - numerics.gelu_step_bits
    pre = dequantize(qref.gelu_detail(x, fmt, numerics), pre_frac)
    out = qref.gelu(x, fmt, numerics)
    ref = quantize(exact, fmt)
    return float(np.max(np.abs(pre - exact))), int(np.max(np.abs(out - ref)))


def _softmax_cases(fmt, rng, lanes):
    lo, hi = fmt.min_int, fmt.max_int
    cases = []
    for n in (1, 2, lanes - 1, lanes, lanes + 1, 16, 129, 257):
        if n >= 1:
            cases.append(rng.integers(lo, hi + 1, size=(16, n)))           # full range
            cases.append(rng.integers(-8 << fmt.f_bits, 8 << fmt.f_bits, size=(16, n)))
            for sigma in (2, 16, 64):                                      # peaked rows
                cases.append(rng.normal(0, sigma << fmt.f_bits, size=(16, n)).astype(np.int64))
    cases.append(np.full((4, 129), 123))                                   # all equal
    dom = rng.integers(-1 << fmt.f_bits, 1 << fmt.f_bits, size=(4, 129))
    dom[:, 17] = hi                                                        # one dominant
    cases.append(dom)
    under = np.full((4, 129), lo)
    under[:, 3] = hi                                                       # others underflow
    cases.append(under)
    cases.append(np.array([[lo, hi] * 8]))
    return [np.clip(c, lo, hi) for c in cases]


def softmax_error(numerics=DEFAULT_NUMERICS, seed=0):
    """Softmax unit errors on random rows and edge cases, for the attention-score format (scales
    64**-0.5 and 32**-0.5) and the router-logit format (scale 1).

    Returns ``(max_abs_err, max_lsb_err)``: each probability before its final rounding against
    exact softmax, and the output against the exactly rounded value (in LSBs).
    """
    rng = np.random.default_rng(seed)
    pf = numerics.prob
    worst_abs, worst_lsb = 0.0, 0
    for fmt, scales in ((numerics.score, (64 ** -0.5, 32 ** -0.5)), (numerics.logit, (1.0,))):
        for scale in scales:
            for s in _softmax_cases(fmt, rng, numerics.softmax_lanes):
                z = dequantize(s, fmt) * scale
                z = z - z.max(axis=-1, keepdims=True)
                exact = np.exp(z)
                exact /= exact.sum(axis=-1, keepdims=True)
                e, y1, b = qref.softmax_detail(s, fmt, scale, numerics)
                pre = e * np.ldexp(y1.astype(np.float64), -(numerics.recip_frac + b))[..., None]
                out = qref.softmax(s, fmt, scale, numerics)
                worst_abs = max(worst_abs, float(np.max(np.abs(pre - exact))))
                worst_lsb = max(worst_lsb, int(np.max(np.abs(out - quantize(exact, pf)))))
    return worst_abs, worst_lsb


def fidelity_report(config="m3vit-tiny", seeds=(0, 1), images_per_seed=2, tasks=None,
                    numerics=DEFAULT_NUMERICS, state_dict=None):
    """The fidelity table: final and per-layer cosine and NMSE, routing agreement, GELU and
    softmax errors.

    Runs every seed's checkpoint (or the given ``state_dict``, once) on ``images_per_seed``
    seeded images for every task. Per-layer figures are the worst over all runs; the final
    cosine is the worst run's and the NMSE the largest.
    """
    cfg = get_config(config)
    tasks = range(cfg.num_tasks) if tasks is None else tasks
    runs = []
    if state_dict is not None:
        from .checkpoint import load_checkpoint
        models = [(0, load_checkpoint(state_dict, cfg))]
    else:
        models = [(s, init_model(cfg, s)) for s in seeds]
    layer_cos = {}
    layer_nmse = {}
    tf_agree, free_agree = [], []
    for seed, model in models:
        qm = quantize_params(model.state_dict(), cfg, numerics)
        for j in range(images_per_seed):
            image = seeded_image(cfg, 1000 * seed + j)
            for task in tasks:
                ftaps, itaps, _ = run_both(model, image, task, numerics, qm)
                last = f"block{cfg.depth - 1}"
                fout = ftaps[last]
                tout = dequantize(itaps[last], numerics.act)
                runs.append((cosine(tout, fout), nmse(tout, fout)))
                for i in range(cfg.depth):
                    for key in (f"block{i}.ln1", f"block{i}.attn_out", f"block{i}.resid1",
                                f"block{i}.ln2", f"block{i}"):
                        t = dequantize(itaps[key], _tap_format(key, numerics))
                        layer_cos[key] = min(layer_cos.get(key, 1.0), cosine(t, ftaps[key]))
                        layer_nmse[key] = max(layer_nmse.get(key, 0.0), nmse(t, ftaps[key]))
                tf = teacher_forced_routing(qm, ftaps, task)
                tf_agree.extend(tf.values())
                for i in cfg.moe_blocks:
                    free_agree.append(_set_agreement(itaps[f"block{i}.topk_idx"],
                                                     ftaps[f"block{i}.topk_idx"]))
    gelu_abs, gelu_lsb = gelu_error(numerics)
    sm_abs, sm_lsb = softmax_error(numerics)
    result = {
        "config": cfg.name,
        "runs": len(runs),
        "cosine": min(c for c, _ in runs),
        "nmse": max(m for _, m in runs),
        "routing_agreement": float(np.mean(tf_agree)) if tf_agree else 1.0,
        "routing_agreement_min_layer": float(np.min(tf_agree)) if tf_agree else 1.0,
        "routing_agreement_free": float(np.mean(free_agree)) if free_agree else 1.0,
        "gelu_max_abs_err": gelu_abs,
        "gelu_max_lsb_err": gelu_lsb,
        "softmax_max_abs_err": sm_abs,
        "softmax_max_lsb_err": sm_lsb,
        "formats": {k: str(v) for k, v in numerics.formats().items()},
        "layers": [{"tap": k, "cosine": layer_cos[k], "nmse": layer_nmse[k]} for k in layer_cos],
    }
    result["meets_targets"] = meets_targets(result)
    return result


def meets_targets(result):
    """Whether a report meets :data:`TARGETS`."""
    t = TARGETS
    return bool(result["cosine"] >= t["cosine"] and result["nmse"] <= t["nmse"]
                and result["routing_agreement"] >= t["routing_agreement"]
                and result["gelu_max_abs_err"] <= t["gelu_max_abs_err"]
                and result["gelu_max_lsb_err"] <= t["gelu_max_lsb_err"]
                and result["softmax_max_abs_err"] <= t["softmax_max_abs_err"]
                and result["softmax_max_lsb_err"] <= t["softmax_max_lsb_err"])


#: Alternatives measured by :func:`format_sweep`: each replaces some formats (or, an integer,
#: the experts' weight bits) of the defaults. A narrower ``weight`` narrows the experts' weights
#: with it where they would be wider.
SWEEP = (
    ("defaults", {}),
    ("expert weights 16 bits", {"expert_weight_bits": 16}),
    ("expert weights 12 bits", {"expert_weight_bits": 12}),
    ("weight SQ(2,12)", {"weight": "SQ(2,12)"}),
    ("weight SQ(2,10)", {"weight": "SQ(2,10)"}),
    ("weight SQ(2,8)", {"weight": "SQ(2,8)"}),
    ("act, qkv SQ(7,7)", {"act": "SQ(7,7)", "qkv": "SQ(7,7)"}),
    ("ln_out, hidden SQ(5,9)", {"ln_out": "SQ(5,9)", "hidden": "SQ(5,9)"}),
    ("prob SQ(1,11)", {"prob": "SQ(1,11)"}),
)


def format_sweep(config="m3vit-tiny", seeds=(0,), images_per_seed=1):
    """Fidelity of the defaults and of narrower alternatives (:data:`SWEEP`), one row each."""
    import dataclasses

    from .fixed import SQ
    rows = []
    for name, change in SWEEP:
        fmts = {k: v if isinstance(v, int) else SQ(*map(int, v[3:-1].split(",")))
                for k, v in change.items()}
        if "weight" in fmts:
            fmts.setdefault("expert_weight_bits", min(DEFAULT_NUMERICS.expert_weight_bits,
                                                      fmts["weight"].width))
        nx = dataclasses.replace(DEFAULT_NUMERICS, **fmts)
        r = fidelity_report(config, seeds, images_per_seed, numerics=nx)
        rows.append({"variant": name, "cosine": r["cosine"], "nmse": r["nmse"],
                     "routing_agreement": r["routing_agreement"],
                     "routing_agreement_free": r["routing_agreement_free"],
                     "meets_targets": r["meets_targets"]})
    return rows
