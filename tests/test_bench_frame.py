# SPDX-License-Identifier: BSD-2-Clause
"""``python -m sim.bench frame``: the figures, the per-block breakdown and its chart."""

import json

import pytest

from sim.bench import main

pytest.importorskip("torch")


def _run(argv, capsys):
    code = main(["frame", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_model_only_micro(capsys):
    code, out, err = _run(["--config", "micro", "--model-only", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["bit_exact"] is True and r["backend"] == "model"
    for key in ("cycles", "ms_at_clock", "macs", "pe_utilization", "ddr_bytes",
                "roofline_cycles", "roofline_fraction", "model_cycles"):
        assert key in r
    assert r["roofline_cycles"] == max(r["compute_bound_cycles"], r["ddr_bound_cycles"])
    assert r["pe_utilization"] == round(r["macs"] / (r["cycles"] * 64), 4)


def test_spill_rows(capsys):
    """``--spill-rows`` measures the DDR-spill program: bit-exact against the twin with the
    tiles' MoE passes; more cycles and DDR bytes than on chip, more for smaller tiles."""
    runs = {}
    for rows in (None, 5, 2):
        extra = [] if rows is None else ["--spill-rows", str(rows)]
        code, out, err = _run(["--config", "micro", "--model-only", "--json", *extra], capsys)
        assert code == 0, err
        runs[rows] = r = json.loads(out)
        assert r["bit_exact"] is True and r["spill_rows"] == (rows or 0)
    assert runs[None]["cycles"] < runs[5]["cycles"] < runs[2]["cycles"]
    assert runs[None]["ddr_bytes"] < runs[5]["ddr_bytes"] < runs[2]["ddr_bytes"]
    assert len(runs[2]["experts_used"]) == 3 * len(runs[None]["experts_used"])


@pytest.mark.slow
def test_breakdown_and_plot_on_verilator(tmp_path, capsys):
    """The per-block cycles add up to the frame's cycles; the chart is a PNG. (Slow: the
    Verilator build of the `small` accelerator, which the slow run shares with
    tests/test_top.py.)"""
    png = tmp_path / "frame.png"
    code, out, err = _run(["--config", "micro", "--backend", "verilator", "--task", "1",
                           "--plot", str(png), "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["bit_exact"] is True
    blocks = r["per_block"]
    assert [b["block"] for b in blocks] == ["embed", "block0", "block1", "output"]
    # Every cycle is attributed; the per-category figures are rounded to whole cycles.
    assert abs(sum(b["cycles"] for b in blocks) - r["cycles"]) <= len(blocks) * 3
    assert blocks[2]["moe"] > 0 and blocks[1]["moe"] == 0           # micro: block 1 is MoE
    assert all(b["attention"] > 0 and b["nonlinear"] > 0 for b in blocks[1:3])
    assert r["sim_seconds"] > 0 and r["sim_cycles_per_second"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_what_ifs(capsys):
    """``--array`` rebuilds the configuration around another array; ``--stream-ports`` reads
    the parameter stream through fewer ports (the `small` array is weight bound: one port
    slows the modelled frame); ``--stream-bytes`` sets the analytic model's parameter-stream
    bandwidth (a starved stream slows the frame down, a wider one never does)."""
    runs = {}
    for name, extra in (("base", []), ("array", ["--array", "16x8"]),
                        ("stream", ["--stream-bytes", "64"]),
                        ("starved", ["--stream-bytes", "1"]),
                        ("one_port", ["--stream-ports", "1"])):
        code, out, err = _run(["--config", "micro", "--model-only", "--json", *extra], capsys)
        assert code == 0, err
        runs[name] = json.loads(out)
    assert runs["base"]["array"] == "16x4" and runs["array"]["array"] == "16x8"
    # The array keeps the preset's pair weight loads.
    assert runs["base"]["load_words"] == runs["array"]["load_words"] == 2
    assert runs["array"]["bit_exact"] and runs["array"]["cycles"] != runs["base"]["cycles"]
    assert runs["array"]["pe_utilization"] == round(
        runs["array"]["macs"] / (runs["array"]["cycles"] * 128), 4)
    assert runs["stream"]["cycles"] <= runs["base"]["cycles"] < runs["starved"]["cycles"]
    assert runs["base"]["stream_ports"] == 2 and runs["one_port"]["stream_ports"] == 1
    assert runs["base"]["cycles"] < runs["one_port"]["cycles"]


@pytest.mark.slow
def test_one_stream_port_in_simulation(capsys):
    """``--stream-ports 1`` in simulation: the `small` array's frame stays bit-exact and is
    slower than on two ports, as the model says. (Slow: two micro frames in the pure-Python
    simulator.)"""
    sims = {}
    for name, extra in (("two", []), ("one", ["--stream-ports", "1"])):
        code, out, err = _run(["--config", "micro", "--json", *extra], capsys)
        assert code == 0, err
        sims[name] = json.loads(out)
    assert sims["two"]["bit_exact"] and sims["one"]["bit_exact"]
    assert sims["two"]["cycles"] < sims["one"]["cycles"]


@pytest.mark.parametrize("argv, message", [
    (["--model-only", "--plot", "x.png"], "need a simulation"),
    (["--stream-bytes", "64"], "needs --model-only"),
    (["--model-only", "--stream-bytes", "0"], "positive number"),
    (["--model-only", "--array", "16"], "ROWSxCOLS"),
    (["--model-only", "--array", "12x4"], "power of two"),
    (["--model-only", "--stream-ports", "3"], "stream_ports"),
    (["--model-only", "--stream-ports", "4"], "stream_ports"),
    (["--sample-every", "0"], "--sample-every must be a positive"),
    (["--task", "7"], "task"),
    (["--model-only", "--spill-rows", "6"], "spill_rows must be an integer in the range 1..5"),
])
def test_refusals(argv, message, capsys):
    code, _, err = _run(["--config", "micro", *argv], capsys)
    assert code == 2 and message in err
