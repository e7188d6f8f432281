# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""hdl/resources.py: the Verilog splitter, the partition, and an estimate in parts equal to one
in a single run where nothing is optimised across the cuts."""

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl import verilog
from hdl.resources import alike_parts, estimate, partition, split_modules
from hdl.systolic.config import ArrayConfig
from hdl.systolic.grid import PEGrid


class _Mac(wiring.Component):
    """One registered multiply-accumulate (a DSP48E2), with a constant compare like a PE's."""

    def __init__(self, index):
        self._index = index
        super().__init__({"a": In(signed(16)), "b": In(signed(16)), "tag": In(4),
                          "acc": Out(signed(40)), "hit": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [self.acc.eq(self.acc + self.a * self.b), self.hit.eq(self.tag == self._index)]
        return m


class _Row(wiring.Component):
    def __init__(self, n):
        self._n = n
        super().__init__({"a": In(signed(16)), "b": In(signed(16)), "tag": In(4),
                          "out": Out(signed(40)), "hits": Out(n)})

    def elaborate(self, platform):
        m = Module()
        total = 0
        for i in range(self._n):
            m.submodules[f"mac{i}"] = mac = _Mac(i)
            b = Signal(signed(16), name=f"b{i}")
            m.d.sync += b.eq(self.b + i)
            m.d.comb += [mac.a.eq(self.a), mac.b.eq(b), mac.tag.eq(self.tag),
                         self.hits[i].eq(mac.hit)]
            total = total + mac.acc
        m.d.sync += self.out.eq(total)
        return m


def _text(n=6):
    return verilog.convert(_Row(n), name="row", emit_src=False)


def test_split_and_partition():
    tree, top = split_modules(_text())
    assert top == "row"
    assert len(tree["row"][1]) == 6 and all(not kids for _, kids in
                                            (tree[k] for k in tree["row"][1]))
    whole = sum(text.count("\n") for text, _ in tree.values())
    assert partition(tree, top, limit=whole) == [("row", ())]
    parts = partition(tree, top, limit=whole // 2)
    assert parts[0][0] == "row" and parts[0][1]
    covered = {root for root, _ in parts}
    assert covered | set(tree["row"][1]) == set(tree)      # every module in some part
    with pytest.raises(ValueError, match="no top module"):
        split_modules("")


def test_estimate_in_parts_matches_one_run():
    text = _text()
    one = estimate(None, name="row", verilog_text=text)
    parts = estimate(None, name="row", verilog_text=text, part_lines=40)
    assert one["yosys_runs"] == 1 and parts["parts"] == 7
    # The MACs differ only in their constant (MAC 0's compare is written as `!tag`).
    assert parts["yosys_runs"] == 3
    # One wall time per Yosys run, by the part's root module (the top among them).
    assert len(parts["part_seconds"]) == 3 and "row" in parts["part_seconds"]
    assert list(one["part_seconds"]) == ["row"]
    assert all(s > 0 for s in parts["part_seconds"].values())
    assert one["DSP"] == parts["DSP"] == 6
    for key in ("FF", "BRAM36", "URAM"):
        assert one[key] == parts[key], key
    assert abs(one["LUT"] - parts["LUT"]) <= 0.1 * one["LUT"] + 4


@pytest.mark.parametrize("n", [4, 8])
def test_grid_pes_are_four_kinds(n):
    """Cut into one part per PE, an n × n grid is synthesized as five parts whatever n: the
    grid itself, the corner PE, the rest of the top row, the rest of the west column and the
    interior (the edge PEs read one signal per lane, not a slice of the wide edge port at
    their own offsets; with slices, every edge PE was a kind of its own)."""
    text = verilog.convert(PEGrid(ArrayConfig(n, n), 0, 0, n, n), name="grid", emit_src=False)
    tree, top = split_modules(text)
    parts = partition(tree, top, limit=1)
    assert len(parts) == n * n + 1
    _, copies = alike_parts(tree, parts)
    assert sorted(copies.values()) == sorted([1, 1, n - 1, n - 1, (n - 1) ** 2])
