# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/csr.py (register map, exports, AXI4-Lite register bank) and hdl/regmap.py."""

import json
import random
import re
import shutil
import subprocess
from functools import partial

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import wiring

from hdl.axi import Resp
from hdl.csr import Access, AXI4LiteTarget, Field, Register, RegisterBank, RegisterMap
from hdl.regmap import (ACCEL_ID, DEFAULT_COUNTERS, ERROR_CODE_DOCS, REGMAP_VERSION, ErrorCode,
                        accelerator_regmap)
from sim.harness import run_sim


# -- register map: construction and validation --------------------------------------------------

def test_field_defaults_and_access_coercion():
    f = Field("mode", 3, "rw", reset=5, doc="x")
    assert f.access is Access.RW and f.offset is None and f.reset == 5
    assert Field("go", 1, Access.WPULSE).access is Access.WPULSE


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(name="Bad", width=1, access="rw"), ValueError, "lowercase identifier"),
    (dict(name="class", width=1, access="rw"), ValueError, "lowercase identifier"),
    (dict(name="signature", width=1, access="rw"), ValueError, "lowercase identifier"),
    (dict(name="a", width=0, access="rw"), ValueError, "width"),
    (dict(name="a", width=65, access="rw"), ValueError, "width"),
    (dict(name="a", width=1.0, access="rw"), TypeError, "width"),
    (dict(name="a", width=1, access="rx"), ValueError, "access must be one of"),
    (dict(name="a", width=2, access="rw", reset=4), ValueError, "reset"),
    (dict(name="a", width=2, access="r", reset=1), ValueError, "no reset value"),
    (dict(name="a", width=2, access="wpulse", reset=1), ValueError, "no reset value"),
    (dict(name="a", width=2, access="r", enum=ErrorCode), ValueError, "does not fit"),
    (dict(name="a", width=8, access="r", enum=ErrorCode, enum_docs={"NOPE": "x"}), ValueError,
     "unknown members"),
    (dict(name="a", width=8, access="r", enum_docs={"NONE": "x"}), ValueError, "without enum"),
])
def test_field_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Field(**kwargs)


def test_register_places_fields():
    reg = Register("r", [Field("a", 4, "rw"), Field("b", 2, "r", offset=8), Field("c", 3, "rw")])
    assert [(f.name, f.offset) for f in reg.fields] == [("a", 0), ("b", 8), ("c", 10)]
    assert reg.field("c").mask == 0b111 << 10
    with pytest.raises(KeyError):
        reg.field("zz")


@pytest.mark.parametrize("fields, width, match", [
    ([Field("a", 4, "rw"), Field("a", 1, "rw")], 32, "duplicate field"),
    ([Field("a", 4, "rw"), Field("b", 4, "rw", offset=2)], 32, "overlaps"),
    ([Field("a", 33, "rw")], 32, "does not fit"),
    ([], 32, "no fields"),
])
def test_register_rejects(fields, width, match):
    with pytest.raises(ValueError, match=match):
        Register("r", fields, width=width)


def _small_map():
    rm = RegisterMap(addr_width=8, prefix="T", name="t")
    rm.add(Register("ctrl", [Field("go", 1, "wpulse"), Field("mode", 2, "wpulse", offset=4)]))
    rm.add(Register("cfg", [Field("a", 8, "rw", reset=0x5A),
                            Field("b", 12, "rw", offset=16, reset=0x123)]))
    rm.add(Register("stat", [Field("x", 16, "r"), Field("k", 4, "const", reset=9, offset=20)]))
    rm.add(Register("addr", [Field("value", 64, "rw", reset=0x1_2345_6789)], width=64))
    rm.add(Register("count", [Field("value", 64, "r")], width=64))
    rm.add(Register("tail", [Field("v", 32, "rw")]))
    return rm


def test_regmap_assigns_aligned_offsets():
    rm = _small_map()
    assert [(reg.name, rm.address_of(reg.name)) for reg in rm] == [
        ("ctrl", 0x0), ("cfg", 0x4), ("stat", 0x8), ("addr", 0x10), ("count", 0x18),
        ("tail", 0x20)]
    assert rm.size == 0x24 and len(rm) == 6 and "cfg" in rm and rm["cfg"].name == "cfg"
    assert [(off, reg.name, k) for off, reg, k in rm.words()][3:7] == [
        (0x10, "addr", 0), (0x14, "addr", 1), (0x18, "count", 0), (0x1C, "count", 1)]
    with pytest.raises(KeyError, match="no register"):
        rm.address_of("nope")


@pytest.mark.parametrize("reg, offset, match", [
    (Register("cfg", [Field("a", 1, "rw")]), None, "already in the map"),
    (Register("x", [Field("a", 1, "rw")]), 0x6, "not aligned"),
    (Register("x", [Field("a", 1, "rw")], width=64), 0x24, "not aligned"),
    (Register("x", [Field("a", 1, "rw")]), 0x4, "overlaps register 'cfg'"),
    (Register("x", [Field("a", 1, "rw")]), 0x100, "does not fit"),
    (Register("x", [Field("a", 1, "rw")], width=48), None, "not a multiple"),
])
def test_regmap_rejects(reg, offset, match):
    rm = _small_map()
    with pytest.raises(ValueError, match=match):
        rm.add(reg, offset=offset)


def test_regmap_rejects_bad_parameters():
    with pytest.raises(ValueError, match="data_width"):
        RegisterMap(data_width=16)
    with pytest.raises(ValueError, match="prefix"):
        RegisterMap(prefix="lower")
    with pytest.raises(TypeError, match="Register"):
        RegisterMap().add("reg")


# -- exports ------------------------------------------------------------------------------------

def parse_c_header(text):
    """``{name: int}`` of every ``#define NAME <integer literal>`` in ``text``."""
    out = {}
    for match in re.finditer(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)(?:u|ull)?\b", text,
                             re.MULTILINE):
        out[match.group(1)] = int(match.group(2), 0)
    return out


def check_header_matches(rm, text):
    """Assert that the parsed C header describes exactly the map ``rm``."""
    defs = parse_c_header(text)
    p = rm.prefix
    expected = {f"{p}_REGS_DATA_WIDTH": rm.data_width, f"{p}_REGS_ADDR_WIDTH": rm.addr_width,
                f"{p}_REGS_SIZE": rm.size}
    for reg in rm:
        up = f"{p}_{reg.name.upper()}"
        base = rm.address_of(reg.name)
        expected[f"{up}_OFFSET"] = base
        expected[f"{up}_RESET"] = reg.reset
        if reg.width > rm.data_width:
            expected[f"{up}_LO_OFFSET"] = base
            expected[f"{up}_HI_OFFSET"] = base + 4
        for f in reg.fields:
            fu = f"{up}_{f.name.upper()}"
            expected.update({f"{fu}_SHIFT": f.offset, f"{fu}_WIDTH": f.width,
                             f"{fu}_MASK": f.mask, f"{fu}_RESET": f.reset})
            for member in f.enum or ():
                expected[f"{fu}_{member.name}"] = member.value
    assert defs == expected


def test_c_header_matches_map():
    rm = _small_map()
    text = rm.c_header()
    check_header_matches(rm, text)
    assert "#ifndef T_REGS_H" in text and text.rstrip().endswith("#endif /* T_REGS_H */")


def test_json_matches_map():
    rm = _small_map()
    data = json.loads(rm.to_json())
    assert data["prefix"] == "T" and data["data_width"] == 32 and data["addr_width"] == 8
    assert [r["name"] for r in data["registers"]] == [reg.name for reg in rm]
    for entry in data["registers"]:
        reg = rm[entry["name"]]
        assert entry["offset"] == rm.address_of(reg.name) and entry["width"] == reg.width
        assert [w["offset"] for w in entry["words"]] == \
            [rm.address_of(reg.name) + 4 * k for k in range(reg.width // 32)]
        assert entry["read_shadow"] == (reg.name == "count")
        for fj, f in zip(entry["fields"], reg.fields, strict=True):
            assert (fj["name"], fj["offset"], fj["width"], fj["access"], fj["reset"],
                    fj["mask"]) == (f.name, f.offset, f.width, f.access.value, f.reset, f.mask)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_header_compiles_with_the_right_values(tmp_path):
    rm = accelerator_regmap(axi_ports=2)
    (tmp_path / "m3vit_regs.h").write_text(rm.c_header())
    checks = [f"_Static_assert(M3VIT_{reg.name.upper()}_OFFSET == {rm.address_of(reg.name)}u, "
              f"\"{reg.name}\");" for reg in rm]
    checks.append("_Static_assert(M3VIT_CYCLES_VALUE_MASK == 0xffffffffffffffffull, \"mask\");")
    checks.append("_Static_assert(M3VIT_STATUS_ERROR_CODE_AXI_ERROR == 6u, \"enum\");")
    (tmp_path / "t.c").write_text('#include "m3vit_regs.h"\n' + "\n".join(checks) + "\n")
    proc = subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", "-fsyntax-only", "t.c"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- the accelerator's map ----------------------------------------------------------------------

def test_accelerator_regmap_layout():
    rm = accelerator_regmap(axi_ports=2, array_rows=16, array_cols=32, num_experts=16, top_k=2,
                            clock_khz=300_000)
    assert rm.address_of("id") == 0 and rm["id"].reset == ACCEL_ID
    assert rm["version"].reset == (REGMAP_VERSION[0] << 16) | (REGMAP_VERSION[1] << 8) \
        | REGMAP_VERSION[2]
    for name in ("weights_addr", "program_addr", "input_addr", "output_addr"):
        assert rm[name].width == 64 and rm.address_of(name) % 8 == 0
        assert rm[name].field("value").access is Access.RW
    assert {f.name for f in rm["ctrl"].fields} == {"start", "soft_reset", "irq_clear",
                                                  "counters_clear"}
    assert all(f.access is Access.WPULSE for f in rm["ctrl"].fields)
    status = rm["status"]
    assert [f.name for f in status.fields] == ["busy", "done", "error", "irq", "error_code"]
    assert status.field("error_code").enum is ErrorCode
    assert rm["hw_array"].reset == 16 | (32 << 16)
    assert rm["hw_axi"].reset == 2 | (16 << 8)
    assert rm["hw_clock_khz"].reset == 300_000
    assert rm.address_of("cycles") == 0x100
    counters = [reg.name for reg in rm if rm.address_of(reg.name) >= 0x100]
    assert counters == [name for name, _ in DEFAULT_COUNTERS]
    assert all(rm[c].width == 64 and rm[c].hardware_driven for c in counters)
    assert rm.size <= 1 << rm.addr_width
    check_header_matches(rm, rm.c_header())


def test_accelerator_regmap_exports_error_codes():
    data = json.loads(accelerator_regmap(axi_ports=1).to_json())
    status = next(r for r in data["registers"] if r["name"] == "status")
    code = next(f for f in status["fields"] if f["name"] == "error_code")
    assert [(e["name"], e["value"]) for e in code["enum"]] == [(m.name, m.value)
                                                               for m in ErrorCode]
    assert all(e["doc"] == ERROR_CODE_DOCS[ErrorCode[e["name"]]] for e in code["enum"])
    assert set(ERROR_CODE_DOCS) == set(ErrorCode)


def test_accelerator_regmap_parameterised_counters():
    rm = accelerator_regmap(axi_ports=4, counters=["cycles", ("stall_x", "X stalls.")])
    assert [reg.name for reg in rm][-2:] == ["cycles", "stall_x"]
    assert rm["stall_x"].doc == "X stalls." and rm.address_of("stall_x") == 0x108


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(axi_ports=0), ValueError, "axi_ports"),
    (dict(axi_ports=16), ValueError, "axi_ports"),
    (dict(axi_ports=True), TypeError, "axi_ports"),
    (dict(axi_ports=1, array_rows=1 << 16), ValueError, "array_rows|rows"),
    (dict(axi_ports=1, axi_data_width=100), ValueError, "axi_data_width"),
    (dict(axi_ports=1, counters=["a", "a"]), ValueError, "duplicate counter"),
    (dict(axi_ports=1, counters=["status"]), ValueError, "clashes"),
    (dict(axi_ports=1, counters=[("a", "b", "c")]), TypeError, "counter"),
])
def test_accelerator_regmap_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        accelerator_regmap(**kwargs)


# -- hardware: AXI4-Lite manager model and protocol checker -------------------------------------

class LiteManager:
    """AXI4-Lite manager for async testbenches, with random delays on every channel.

    AW and W are raised independently (either may lead); ``bready``/``rready`` come after a
    random delay (possibly before ``valid``). While a channel's ``valid`` is low its payload is
    random junk, so a target that samples without ``valid`` is caught.
    """

    def __init__(self, bus, rng, max_delay=3):
        self.bus = bus
        self.rng = rng
        self.max_delay = max_delay

    def _delay(self):
        return self.rng.choice([0, 0, *range(1, self.max_delay + 1)])

    async def write(self, ctx, addr, data, strb=0xF):
        bus, rng = self.bus, self.rng
        aw_wait, w_wait, b_wait = self._delay(), self._delay(), self._delay()
        aw_done = w_done = False
        while True:
            aw_on = not aw_done and aw_wait == 0
            w_on = not w_done and w_wait == 0
            ctx.set(bus.awvalid, aw_on)
            ctx.set(bus.awaddr, addr if aw_on else rng.getrandbits(len(bus.awaddr)))
            ctx.set(bus.wvalid, w_on)
            ctx.set(bus.wdata, data if w_on else rng.getrandbits(32))
            ctx.set(bus.wstrb, strb if w_on else rng.getrandbits(4))
            ctx.set(bus.bready, b_wait == 0)
            _, _, awready, wready, bvalid, bresp = await ctx.tick().sample(
                bus.awready, bus.wready, bus.bvalid, bus.bresp)
            if aw_on and awready:
                aw_done = True
            aw_wait = max(0, aw_wait - 1)
            if w_on and wready:
                w_done = True
            w_wait = max(0, w_wait - 1)
            if b_wait == 0 and bvalid:
                assert aw_done and w_done, "B before both AW and W were transferred"
                break
            b_wait = max(0, b_wait - 1)
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        ctx.set(bus.bready, 0)
        return Resp(bresp)

    async def read(self, ctx, addr):
        bus, rng = self.bus, self.rng
        ar_wait, r_wait = self._delay(), self._delay()
        ar_done = False
        while True:
            ar_on = not ar_done and ar_wait == 0
            ctx.set(bus.arvalid, ar_on)
            ctx.set(bus.araddr, addr if ar_on else rng.getrandbits(len(bus.araddr)))
            ctx.set(bus.rready, r_wait == 0)
            _, _, arready, rvalid, rdata, rresp = await ctx.tick().sample(
                bus.arready, bus.rvalid, bus.rdata, bus.rresp)
            if ar_on and arready:
                ar_done = True
            ar_wait = max(0, ar_wait - 1)
            if r_wait == 0 and rvalid:
                assert ar_done, "R before AR was transferred"
                break
            r_wait = max(0, r_wait - 1)
        ctx.set(bus.arvalid, 0)
        ctx.set(bus.rready, 0)
        return rdata, Resp(rresp)


async def lite_checker(bus, stats, ctx):
    """Background testbench: check the subordinate's side of the AXI4-Lite rules.

    * B and R: once ``valid`` is high it stays high, with the same payload, until ``ready``;
    * a B response only for a write whose AW and W were both transferred in earlier cycles, and
      an R response only for an AR transferred in an earlier cycle (at most one each in flight).
    """
    aw = w = b = ar = r = 0
    held_b = held_r = None
    cycle = -1
    async for _, _, *v in ctx.tick().sample(
            bus.awvalid, bus.awready, bus.wvalid, bus.wready, bus.bvalid, bus.bready, bus.bresp,
            bus.arvalid, bus.arready, bus.rvalid, bus.rready, bus.rdata, bus.rresp):
        cycle += 1
        awv, awr, wv, wr, bv, br, bresp, arv, arr, rv, rr, rdata, rresp = v
        if held_b is not None:
            assert bv and bresp == held_b, f"cycle {cycle}: B changed before bready"
        if held_r is not None:
            assert rv and (rdata, rresp) == held_r, f"cycle {cycle}: R changed before rready"
        if bv:
            assert min(aw, w) > b, f"cycle {cycle}: bvalid without a complete write"
        if rv:
            assert ar > r, f"cycle {cycle}: rvalid without a read"
        held_b = bresp if bv and not br else None
        held_r = (rdata, rresp) if rv and not rr else None
        aw += awv and awr
        w += wv and wr
        b += bv and br
        ar += arv and arr
        r += rv and rr
        assert min(aw, w) - b <= 1 and ar - r <= 1, f"cycle {cycle}: more than one in flight"
        stats.update(aw=aw, w=w, b=b, ar=ar, r=r)


# -- hardware: register bank ---------------------------------------------------------------------

class BankHarness(Elaboratable):
    """The bank of :func:`_small_map` with a free-running 64-bit counter on ``count``."""

    def __init__(self, count_init):
        self.bank = RegisterBank(_small_map())
        self.counter = Signal(64, init=count_init)

    def elaborate(self, platform):
        m = Module()
        m.submodules.bank = self.bank
        m.d.sync += self.counter.eq(self.counter + 1)
        m.d.comb += self.bank.regs.count.value.eq(self.counter)
        return m


def test_bank_signature():
    bank = RegisterBank(_small_map())
    members = bank.signature.members
    regs = members["regs"].signature.members
    assert set(regs) == {"ctrl", "cfg", "stat", "addr", "count", "tail"}
    assert regs["ctrl"].signature.members["go"].flow == wiring.Out
    assert regs["stat"].signature.members["x"].flow == wiring.In
    assert "k" not in regs["stat"].signature.members          # CONST has no signal
    assert regs["count"].signature.members["value"].shape == 64
    assert regs["cfg"].signature.members["b"].init == 0x123


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bank_random_access(seed, sim_args):
    rm = _small_map()
    dut = BankHarness(count_init=(1 << 32) - 40)
    bus, regs = dut.bank.bus, dut.bank.regs
    stats = {}
    pulses = []

    async def pulse_monitor(ctx):
        async for _, _, go, mode in ctx.tick().sample(regs.ctrl.go, regs.ctrl.mode):
            if go or mode:
                pulses.append((go, mode))

    async def main(ctx):
        rng = random.Random(seed)
        mgr = LiteManager(bus, rng)
        model = {"cfg": rm["cfg"].reset, "addr": rm["addr"].reset, "tail": 0}
        expected_pulses = []

        # Reset values.
        for name in ("cfg", "tail"):
            assert await mgr.read(ctx, rm.address_of(name)) == (model[name], Resp.OKAY)
        lo, _ = await mgr.read(ctx, rm.address_of("addr"))
        hi, _ = await mgr.read(ctx, rm.address_of("addr") + 4)
        assert hi << 32 | lo == model["addr"]

        # The 64-bit counter: LO then HI is one snapshot, also across the carry at 2**32.
        for _ in range(12):
            before = ctx.get(dut.counter)
            lo, resp_lo = await mgr.read(ctx, rm.address_of("count"))
            after = ctx.get(dut.counter)
            hi, resp_hi = await mgr.read(ctx, rm.address_of("count") + 4)
            assert resp_lo == resp_hi == Resp.OKAY
            assert before <= (hi << 32 | lo) <= after, (hex(before), hex(hi), hex(lo))
        assert ctx.get(dut.counter) > 1 << 32, "the counter must have crossed 2**32"

        cfg_mask = rm["cfg"].field("a").mask | rm["cfg"].field("b").mask
        for _ in range(60):
            op = rng.randrange(9)
            if op == 0:                                   # RW with random byte strobes
                data, strb = rng.getrandbits(32), rng.randrange(16)
                assert await mgr.write(ctx, rm.address_of("cfg"), data, strb) == Resp.OKAY
                mask = sum(0xFF << (8 * i) for i in range(4) if strb >> i & 1) & cfg_mask
                model["cfg"] = (model["cfg"] & ~mask) | (data & mask)
            elif op == 1:                                 # read back, unaligned address too
                off = rm.address_of("cfg") + rng.randrange(4)
                assert await mgr.read(ctx, off) == (model["cfg"], Resp.OKAY)
            elif op == 2:                                 # wide RW, one word at a time
                k = rng.randrange(2)
                data = rng.getrandbits(32)
                await mgr.write(ctx, rm.address_of("addr") + 4 * k, data)
                model["addr"] = (model["addr"] & ~(0xFFFF_FFFF << 32 * k)) | (data << 32 * k)
                got, _ = await mgr.read(ctx, rm.address_of("addr") + 4 * k)
                assert got == (model["addr"] >> 32 * k) & 0xFFFF_FFFF
                assert ctx.get(regs.addr.value) == model["addr"]
            elif op == 3:                                 # R field and CONST field
                x = rng.getrandbits(16)
                ctx.set(regs.stat.x, x)
                assert await mgr.read(ctx, rm.address_of("stat")) == (x | 9 << 20, Resp.OKAY)
            elif op == 4:                                 # write to read-only: OKAY, ignored
                assert await mgr.write(ctx, rm.address_of("stat"), 0xFFFF_FFFF) == Resp.OKAY
                got, _ = await mgr.read(ctx, rm.address_of("stat"))
                assert got == ctx.get(regs.stat.x) | 9 << 20
            elif op == 5:                                 # pulses; the register reads as 0
                data = rng.getrandbits(32)
                strb = rng.choice([0xF, 0x1, 0xE])
                await mgr.write(ctx, rm.address_of("ctrl"), data, strb)
                if strb & 1 and data & 0x31:
                    expected_pulses.append((data & 1, data >> 4 & 3))
                assert await mgr.read(ctx, rm.address_of("ctrl")) == (0, Resp.OKAY)
            elif op == 6:                                 # unmapped: SLVERR, data 0, no effect
                off = rng.choice([0x24, 0x28, 0x80, 0xFC])
                assert await mgr.read(ctx, off) == (0, Resp.SLVERR)
                assert await mgr.write(ctx, off, rng.getrandbits(32)) == Resp.SLVERR
            elif op == 7:                                 # a plain RW word
                data = rng.getrandbits(32)
                await mgr.write(ctx, rm.address_of("tail"), data)
                model["tail"] = data
            else:
                assert await mgr.read(ctx, rm.address_of("tail")) == (model["tail"], Resp.OKAY)
            assert ctx.get(regs.cfg.a) == model["cfg"] & 0xFF
            assert ctx.get(regs.cfg.b) == model["cfg"] >> 16 & 0xFFF
            assert ctx.get(regs.tail.v) == model["tail"]
        await ctx.tick().repeat(2)
        assert pulses == expected_pulses
        assert stats["b"] == stats["aw"] == stats["w"] and stats["r"] == stats["ar"]

    run_sim(dut, [main], background=[pulse_monitor, partial(lite_checker, bus, stats)],
            deadline_cycles=20_000, **sim_args)


def test_bank_concurrent_reads_and_writes(sim_args):
    """Reads and writes from two independent managers, interleaved on the bus."""
    rm = _small_map()
    dut = BankHarness(count_init=0)
    bus = dut.bank.bus
    stats = {}
    written = []

    async def writer(ctx):
        mgr = LiteManager(bus, random.Random(7))
        for i in range(25):
            value = 0x1000 + i
            assert await mgr.write(ctx, rm.address_of("tail"), value) == Resp.OKAY
            written.append(value)

    async def reader(ctx):
        mgr = LiteManager(bus, random.Random(8))
        seen = []
        for _ in range(30):
            data, resp = await mgr.read(ctx, rm.address_of("tail"))
            assert resp == Resp.OKAY
            seen.append(data)
        # Every value read was written (or is the reset value), in write order.
        assert all(v == 0 or v in range(0x1000, 0x1000 + 25) for v in seen)
        assert seen == sorted(seen)

    run_sim(dut, [writer, reader], background=[partial(lite_checker, bus, stats)],
            deadline_cycles=5_000, **sim_args)
    assert stats["b"] == 25 and stats["r"] == 30


def test_target_latency_and_back_pressure(sim_args):
    """Documented timing: B two cycles after AW and W together; responses held until ready."""
    dut = AXI4LiteTarget(addr_width=8)
    bus, port = dut.bus, dut.port

    async def tb(ctx):
        ctx.set(port.r_data, 0xDEAD_BEEF)
        ctx.set(bus.awaddr, 0x14)
        ctx.set(bus.wdata, 0x1234_5678)
        ctx.set(bus.wstrb, 0b0101)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        await ctx.tick()                                  # AW and W accepted
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        assert ctx.get(port.w_stb) and ctx.get(port.w_addr) == 0x14 >> 2
        assert ctx.get(port.w_data) == 0x1234_5678 and ctx.get(port.w_strb) == 0b0101
        assert not ctx.get(bus.awready) and not ctx.get(bus.wready)
        await ctx.tick()
        assert ctx.get(bus.bvalid) and ctx.get(bus.bresp) == Resp.OKAY.value
        await ctx.tick().repeat(3)                        # bready low: B is held
        assert ctx.get(bus.bvalid)
        ctx.set(bus.bready, 1)
        await ctx.tick()
        assert not ctx.get(bus.bvalid)
        ctx.set(bus.bready, 0)

        ctx.set(bus.araddr, 0x20)
        ctx.set(bus.arvalid, 1)
        ctx.set(port.r_err, 1)
        await ctx.tick()
        ctx.set(bus.arvalid, 0)
        assert ctx.get(port.r_stb) and ctx.get(port.r_addr) == 0x20 >> 2
        await ctx.tick()
        assert ctx.get(bus.rvalid) and ctx.get(bus.rresp) == Resp.SLVERR.value
        assert ctx.get(bus.rdata) == 0 and not ctx.get(bus.arready)
        ctx.set(bus.rready, 1)
        await ctx.tick()
        assert not ctx.get(bus.rvalid) and ctx.get(bus.arready)

    run_sim(dut, [tb], deadline_cycles=100, **sim_args)


def test_accelerator_bank_reads_constants(sim_args):
    rm = accelerator_regmap(axi_ports=2, array_rows=16, array_cols=16, clock_khz=300_000)
    dut = RegisterBank(rm)
    bus, regs = dut.bus, dut.regs
    starts = []

    async def watch(ctx):
        async for _, _, start in ctx.tick().sample(regs.ctrl.start):
            if start:
                starts.append(1)

    async def tb(ctx):
        mgr = LiteManager(bus, random.Random(3))
        assert await mgr.read(ctx, rm.address_of("id")) == (ACCEL_ID, Resp.OKAY)
        assert (await mgr.read(ctx, rm.address_of("hw_array")))[0] == 16 | 16 << 16
        assert (await mgr.read(ctx, rm.address_of("hw_clock_khz")))[0] == 300_000
        await mgr.write(ctx, rm.address_of("scratch"), 0xCAFE_F00D)
        assert (await mgr.read(ctx, rm.address_of("scratch")))[0] == 0xCAFE_F00D
        ctx.set(regs.status.busy, 1)
        ctx.set(regs.status.error_code, ErrorCode.AXI_ERROR.value)
        assert (await mgr.read(ctx, rm.address_of("status")))[0] == 1 | 6 << 8
        await mgr.write(ctx, rm.address_of("ctrl"), 1)
        await ctx.tick().repeat(2)
        assert starts == [1]
        await mgr.write(ctx, rm.address_of("weights_addr") + 4, 0x12)
        await mgr.write(ctx, rm.address_of("weights_addr"), 0x3400_0000)
        assert ctx.get(regs.weights_addr.value) == 0x12_3400_0000

    run_sim(dut, [tb], background=[watch], deadline_cycles=2_000, **sim_args)


def test_bank_rejects_bad_arguments():
    with pytest.raises(TypeError, match="RegisterMap"):
        RegisterBank("map")
    with pytest.raises(ValueError, match="no registers"):
        RegisterBank(RegisterMap())
