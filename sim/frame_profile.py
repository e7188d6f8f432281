# SPDX-License-Identifier: BSD-2-Clause
"""Per-block cycle breakdown of a frame on a simulated accelerator, and its chart.

:func:`profile_frame` runs a frame the way :meth:`sim.driver.Driver.run_frame` does, but steps
the simulation ``every`` cycles and reads the accelerator's counters in between (the reads go
over the AXI4-Lite port while the frame runs and do not change its timing). Each interval's
cycles go to the instructions that ran in it — the ``instructions`` counter says which —
split by the analytic model's cycles of those instructions (:mod:`sim.frame_model`) when an
interval spans several; its DMA stall cycles (``stall_weights``, ``stall_ddr_read``,
``stall_ddr_write``) are taken out of those instructions' category and counted as
``dma_stall``. Totals per block are exact; the split inside an interval is the model's.

Categories (by instruction, :mod:`hdl.isa`):

``dense``      MATMUL with weights from DDR (patch embedding, QKV, projection, fc1/fc2)
``attention``  MATMUL with both operands in the activation buffer (Q·Kᵀ, A·V per head)
``nonlinear``  SOFTMAX and LAYERNORM
``moe``        MOE (routing and the experts)
``copy``       LOAD, STORE, END
``dma_stall``  cycles stalled on DDR (weights, reads, writes) inside any of the above
"""

from hdl import isa
from hdl.isa import MatmulFlags, Opcode

__all__ = ["CATEGORIES", "category_of", "profile_frame", "per_block", "plot_breakdown"]

CATEGORIES = ("dense", "attention", "nonlinear", "moe", "copy", "dma_stall")

_STALLS = ("stall_weights", "stall_ddr_read", "stall_ddr_write")


def category_of(opcode, fields):
    """The category (:data:`CATEGORIES`, not ``dma_stall``) of one decoded instruction."""
    if opcode == Opcode.MATMUL:
        return "attention" if fields["flags"] & MatmulFlags.W_FROM_ABUF else "dense"
    if opcode in (Opcode.SOFTMAX, Opcode.LAYERNORM):
        return "nonlinear"
    if opcode == Opcode.MOE:
        return "moe"
    return "copy"


def _instructions(cm):
    prog = cm.program
    return [isa.decode(prog[i:i + isa.INSTR_BYTES])
            for i in range(isa.HEADER_BYTES, len(prog), isa.INSTR_BYTES)]


def profile_frame(drv, image, *, every, weights=None):
    """Run one frame on ``drv`` (a :class:`sim.driver.Driver` over a simulator back end),
    reading the counters every ``every`` cycles.

    Parameters
    ----------
    weights : list of float or None
        Relative cycles of each instruction (e.g. the analytic model's), used to split an
        interval over the instructions it spans; default: equal.

    Returns
    -------
    (output, cycles) : the output tokens, and per instruction a dict of the cycles by
        category (the instruction's own and ``dma_stall``).
    """
    if every < 1:
        raise ValueError(f"every must be a positive number of cycles, not {every!r}")
    cm = drv.compiled
    ops = _instructions(cm)
    weights = list(weights) if weights is not None else [1.0] * len(ops)
    weights += [1.0] * (len(ops) - len(weights))
    cats = [category_of(op, f) for op, f in ops]
    raw_cycles = [0.0] * len(ops)
    raw_stall = [0.0] * len(ops)

    def snapshot():
        return {name: drv.read_reg(name) for name in ("cycles", "instructions") + _STALLS}

    def attribute(prev, cur):
        d_cycles = cur["cycles"] - prev["cycles"]
        d_stall = sum(cur[s] - prev[s] for s in _STALLS)
        first = max(prev["instructions"] - 1, 0)
        last = min(max(cur["instructions"] - 1, 0), len(ops) - 1)
        span = range(first, last + 1)
        total = sum(weights[i] for i in span) or 1.0
        for i in span:
            raw_cycles[i] += d_cycles * weights[i] / total
            raw_stall[i] += d_stall * weights[i] / total

    b = drv.backend
    before = snapshot()
    drv.start_frame(image)
    prev = before
    while True:
        b.step(every)
        cur = snapshot()
        attribute(prev, cur)
        prev = cur
        if not drv.status()["busy"]:
            break
    attribute(prev, snapshot())        # the cycles between the last sample and the end
    out = drv.finish_frame()
    # The MoE engine's weight stalls reach the counter in one lump when its instruction ends:
    # they are clamped per instruction, not per interval.
    per = []
    for i, cat in enumerate(cats):
        row = dict.fromkeys(CATEGORIES, 0.0)
        row["dma_stall"] = min(raw_stall[i], raw_cycles[i])
        row[cat] = raw_cycles[i] - row["dma_stall"]
        per.append(row)
    return out, per


def per_block(cm, cycles, est=None, *, ddr_bytes_per_cycle):
    """Sum :func:`profile_frame`'s per-instruction cycles over the blocks of ``cm``
    (:attr:`hdl.compiler.CompiledModel.blocks`), with each block's roofline from the analytic
    model ``est`` (:class:`sim.frame_model.FrameEstimate`): ``max(compute-bound, DDR bytes /
    ddr_bytes_per_cycle)``."""
    rows = {}
    for i, block in enumerate(cm.blocks):
        row = rows.setdefault(block, {"block": block, **dict.fromkeys(CATEGORIES, 0.0),
                                      "compute_bound": 0, "ddr_bytes": 0})
        for cat in CATEGORIES:
            row[cat] += cycles[i][cat]
        if est is not None and i < len(est.per_instruction):
            row["compute_bound"] += est.per_instruction[i]["compute_bound"]
            row["ddr_bytes"] += est.per_instruction[i]["ddr_bytes"]
    out = []
    for row in rows.values():
        for cat in CATEGORIES:
            row[cat] = int(round(row[cat]))
        row["cycles"] = sum(row[cat] for cat in CATEGORIES)
        row["roofline_cycles"] = max(row.pop("compute_bound"),
                                     int(-(-row.pop("ddr_bytes") // ddr_bytes_per_cycle)))
        out.append(row)
    return out


def plot_breakdown(blocks, path, *, title):
    """Write a stacked-bar chart of :func:`per_block`'s rows (one bar per block, one colour per
    category) with each block's roofline as a black mark, to ``path`` (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["block"] for row in blocks]
    colours = {"dense": "#4477aa", "attention": "#66ccee", "nonlinear": "#228833",
               "moe": "#ccbb44", "copy": "#bbbbbb", "dma_stall": "#ee6677"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(blocks) + 2), 4.5))
    bottom = [0.0] * len(blocks)
    for cat in CATEGORIES:
        vals = [row[cat] / 1e3 for row in blocks]
        ax.bar(names, vals, bottom=bottom, color=colours[cat], label=cat.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals)]
    for x, row in enumerate(blocks):
        ax.hlines(row["roofline_cycles"] / 1e3, x - 0.45, x + 0.45, colors="black",
                  linewidth=2, label="roofline" if x == 0 else None)
    ax.set_ylabel("thousand cycles")
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
