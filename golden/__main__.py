# SPDX-License-Identifier: BSD-2-Clause
"""Command line of the golden models: ``python -m golden {init,run,report}``.

``init``
    Write a seeded checkpoint in the upstream M³ViT key layout.
``run``
    Run one frame through the float model and the integer twin; write an ``.npz`` with the float
    output (``float``), the twin's output as real values (``twin``) and per-block taps
    (``float_block{i}``, ``twin_block{i}``).
``report``
    The numerics study: fidelity of the twin against the float model, with the targets.
"""

import argparse
import json
import sys

import numpy as np

from .config import PRESETS, get_config

__all__ = ["main"]


def _cmd_init(args):
    from .checkpoint import init_model, save_checkpoint
    cfg = get_config(args.config)
    save_checkpoint(init_model(cfg, args.seed), args.out)
    print(f"wrote {args.out} ({cfg.name}, seed {args.seed})", file=sys.stderr)
    return 0


def _load_image(args, cfg):
    from .checkpoint import seeded_image
    if args.image is None:
        return seeded_image(cfg, args.seed)
    image = np.load(args.image)
    expected = (cfg.in_chans, cfg.img_h, cfg.img_w)
    if image.shape != expected:
        raise ValueError(f"image {args.image} has shape {image.shape}; {cfg.name} takes "
                         f"{expected}")
    if image.dtype != np.float32:
        raise ValueError(f"image {args.image} is {image.dtype}; a float32 array is expected")
    return image


def _cmd_run(args):
    from .checkpoint import load_checkpoint
    from .fixed import dequantize
    from .report import cosine, nmse, run_both
    cfg = get_config(args.config)
    cfg.check_task(args.task)
    model = load_checkpoint(args.checkpoint, cfg)
    image = _load_image(args, cfg)
    ftaps, itaps, qm = run_both(model, image, args.task)
    act = qm.numerics.act
    last = f"block{cfg.depth - 1}"
    out = {"float": ftaps[last].astype(np.float32),
           "twin": dequantize(itaps[last], act).astype(np.float32)}
    for i in range(cfg.depth):
        out[f"float_block{i}"] = ftaps[f"block{i}"].astype(np.float32)
        out[f"twin_block{i}"] = dequantize(itaps[f"block{i}"], act).astype(np.float32)
    np.savez(args.out, **out)
    print(f"cosine {cosine(out['twin'], out['float']):.6f}  "
          f"nmse {nmse(out['twin'], out['float']):.3e}", file=sys.stderr)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _cmd_report(args):
    from .report import TARGETS, fidelity_report, format_sweep
    if args.sweep:
        rows = format_sweep(args.config, tuple(range(args.seeds)), args.images)
        if args.json:
            print(json.dumps(rows))
        else:
            print(f"{'variant':<24} {'cosine':>9} {'nmse':>9} {'routing':>8} {'free':>7}  ok")
            for r in rows:
                print(f"{r['variant']:<24} {r['cosine']:>9.6f} {r['nmse']:>9.2e} "
                      f"{r['routing_agreement']:>8.4f} {r['routing_agreement_free']:>7.4f}  "
                      f"{'yes' if r['meets_targets'] else 'no'}")
        return 0
    result = fidelity_report(args.config, seeds=tuple(range(args.seeds)),
                             images_per_seed=args.images, state_dict=args.checkpoint)
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [("final cosine", result["cosine"], f">= {TARGETS['cosine']}"),
            ("final nmse", result["nmse"], f"<= {TARGETS['nmse']}"),
            ("routing agreement (teacher-forced)", result["routing_agreement"],
             f">= {TARGETS['routing_agreement']}"),
            ("routing agreement (free-running)", result["routing_agreement_free"], ""),
            ("GELU max abs error before rounding", result["gelu_max_abs_err"],
             f"<= {TARGETS['gelu_max_abs_err']}"),
            ("GELU max error after rounding (LSB)", result["gelu_max_lsb_err"], "<= 1"),
            ("softmax max abs error before rounding", result["softmax_max_abs_err"],
             "<= 2**-10"),
            ("softmax max error after rounding (LSB)", result["softmax_max_lsb_err"], "<= 1")]
    print(f"{result['config']}: {result['runs']} runs (seeds x images x tasks)")
    for name, value, target in rows:
        print(f"  {name:<40} {value:<12.6g} {target}")
    print(f"  {'meets targets':<40} {result['meets_targets']}")
    print("formats: " + ", ".join(f"{k} {v}" for k, v in result["formats"].items()))
    print(f"{'tap':<18} {'cosine':>10} {'nmse':>10}")
    for layer in result["layers"]:
        print(f"{layer['tap']:<18} {layer['cosine']:>10.6f} {layer['nmse']:>10.2e}")
    return 0


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m golden", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    configs = ", ".join(PRESETS)

    p = sub.add_parser("init", help="write a seeded checkpoint (upstream key layout)")
    p.add_argument("--config", required=True, help=f"model preset ({configs})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser("run", help="one frame through the float model and the integer twin")
    p.add_argument("--config", required=True, help=f"model preset ({configs})")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--image", help="float32 .npy of shape (3, H, W); default: a seeded image")
    p.add_argument("--seed", type=int, default=0, help="seed of the default image")
    p.add_argument("--out", required=True, help=".npz file to write")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="fidelity of the integer twin against the float model")
    p.add_argument("--config", default="m3vit-tiny", help=f"model preset ({configs})")
    p.add_argument("--checkpoint", help="a checkpoint to study instead of seeded ones")
    p.add_argument("--seeds", type=int, default=2, help="seeded checkpoints to run")
    p.add_argument("--images", type=int, default=2, help="seeded images per checkpoint")
    p.add_argument("--sweep", action="store_true",
                   help="also measure narrower formats, one table row each")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
