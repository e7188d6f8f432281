# SPDX-License-Identifier: BSD-2-Clause
"""Tests of sim/driver.py's board back end against a fake memory-mapped accelerator.

:class:`FakeAccelerator` emulates the register file of :mod:`hdl.regmap` word by word (reset
values, read-only constants, write-pulse control bits, 64-bit registers low word first) and runs
frames with the functional model (:mod:`sim.program_model`) on a fake physically contiguous
buffer, so the driver's register protocol, DDR layout, polling, cache maintenance and error
reporting are exercised without a board.
"""

import numpy as np
import pytest

from golden.config import get_config
from golden.twin import twin_forward
from hdl.config import COUNTERS, get_accel_config
from hdl.csr import Access
from hdl.regmap import ErrorCode
from sim.driver import AcceleratorError, BoardBackend, Driver
from sim.program_model import ProgramFault, ProgramModel

from test_compiler import random_image, random_model

SMALL = get_accel_config("small")
MICRO = get_config("micro")
PHYS = 0x7000_0000


class FakeBuffer(np.ndarray):
    """A ``pynq.allocate``-like buffer: a uint8 array with a physical address."""

    def __new__(cls, size, physical_address):
        obj = np.zeros(size, dtype=np.uint8).view(cls)
        obj.physical_address = physical_address
        obj.flushes = obj.invalidates = 0
        return obj

    def __array_finalize__(self, obj):
        self.physical_address = getattr(obj, "physical_address", None)

    def flush(self):
        self.flushes += 1

    def invalidate(self):
        self.invalidates += 1


class FakeAccelerator:
    """PYNQ ``MMIO``-like access (``read(offset)``, ``write(offset, value)``) to emulated
    accelerator registers; frames run on the functional model over ``buffer``."""

    def __init__(self, config, buffer, *, busy_polls=3, stuck=False):
        self.config = config
        self.regmap = config.regmap
        self.buffer = buffer
        self.model = ProgramModel(config)
        self.busy_polls = busy_polls
        self.stuck = stuck
        self.words = {}
        self.where = {}
        for off, reg, k in self.regmap.words():
            self.words[off] = (reg.reset >> (32 * k)) & 0xFFFF_FFFF
            self.where[off] = (reg, k)
        self.status = dict(busy=0, done=0, error=0, irq=0, error_code=0)
        self.counters = {name: 0 for name, _ in COUNTERS}
        self.polls_left = 0
        self.log = []

    def _reg(self, name):
        reg = self.regmap[name]
        off = self.regmap.address_of(name)
        return sum(self.words[off + 4 * k] << (32 * k) for k in range(reg.width // 32))

    def _field(self, reg, field):
        f = self.regmap[reg].field(field)
        return (self._reg(reg) >> f.offset) & ((1 << f.width) - 1)

    def read(self, offset):
        if offset not in self.where:
            raise KeyError(f"unmapped register {offset:#x}")
        reg, k = self.where[offset]
        if reg.name == "status":
            if self.status["busy"]:
                self.polls_left -= 1
                if self.polls_left <= 0 and not self.stuck:
                    self._finish()
            value = 0
            for name, v in self.status.items():
                value |= v << reg.field(name).offset
            return value
        if reg.name in self.counters:
            return (self.counters[reg.name] >> (32 * k)) & 0xFFFF_FFFF
        return self.words[offset]

    def write(self, offset, value):
        reg, k = self.where[offset]
        self.log.append((reg.name, k, value))
        if reg.name == "ctrl":
            bits = {f.name: (value >> f.offset) & 1 for f in reg.fields}
            if bits["start"]:
                self._start()
            if bits["soft_reset"]:
                self.status.update(busy=0, done=0, error=0, irq=0, error_code=0)
            if bits["counters_clear"]:
                self.counters = dict.fromkeys(self.counters, 0)
            return
        mask = 0
        for f in reg.fields:
            if f.access is Access.RW:
                mask |= f.mask
        mask = (mask >> (32 * k)) & 0xFFFF_FFFF
        self.words[offset] = (self.words[offset] & ~mask) | (value & mask)

    def _mem_read(self, addr, n):
        off = addr - self.buffer.physical_address
        assert 0 <= off and off + n <= self.buffer.size, f"DMA outside the buffer at {addr:#x}"
        return self.buffer[off:off + n].tobytes()

    def _mem_write(self, addr, data):
        off = addr - self.buffer.physical_address
        assert 0 <= off and off + len(data) <= self.buffer.size
        self.buffer[off:off + len(data)] = np.frombuffer(data, dtype=np.uint8)

    def _start(self):
        if self.status["busy"]:
            self.status.update(error=1, error_code=ErrorCode.START_WHILE_BUSY.value)
            return
        self.status.update(busy=1, done=0, error=0, error_code=0)
        self.polls_left = self.busy_polls
        self._result = None
        try:
            res = self.model.run(self._mem_read, self._mem_write,
                                 weights_addr=self._reg("weights_addr"),
                                 program_addr=self._reg("program_addr"),
                                 program_len=self._reg("program_len"),
                                 input_addr=self._reg("input_addr"),
                                 output_addr=self._reg("output_addr"),
                                 task=self._field("task", "id"))
            self.counters["instructions"] += res["instructions"]
            self.counters["cycles"] += 1000
        except ProgramFault as fault:
            self._result = fault.code

    def _finish(self):
        self.status["busy"] = 0
        self.status["done"] = 1
        if self._result is not None:
            self.status.update(error=1, error_code=self._result.value)
        if self._field("irq_enable", "done") or (self.status["error"]
                                                 and self._field("irq_enable", "error")):
            self.status["irq"] = 1


@pytest.fixture
def board():
    buf = FakeBuffer(1 << 20, PHYS)
    fake = FakeAccelerator(SMALL, buf)
    return fake, buf, BoardBackend(fake, buf, SMALL)


def test_frames_on_the_board_back_end(board):
    fake, buf, be = board
    qm = random_model(MICRO, 4)
    drv = Driver(be, frame_timeout=100)
    cm = drv.load_model(qm)
    lay = drv.layout
    assert lay.weights >= PHYS and lay.weights % 4096 == 0
    assert lay.weights < lay.program < lay.input < lay.output < lay.end <= PHYS + buf.size
    assert fake._reg("program_len") == len(cm.program)
    assert fake._reg("output_addr") == lay.output
    for task in (0, 1, 0):
        drv.set_task(task)
        img = random_image(MICRO, task + 7)
        out = drv.run_frame(img)
        assert np.array_equal(out, twin_forward(qm, img, task))
        assert drv.last_cycles == 3       # polls until busy fell
    assert buf.flushes > 0 and buf.invalidates > 0
    cnt = drv.counters()
    assert cnt["instructions"] == 3 * cm.instructions
    drv.clear_counters()
    assert drv.counters()["instructions"] == 0
    # Writes of 64-bit registers go low word first.
    w = [(k, v) for name, k, v in fake.log if name == "weights_addr"]
    assert w[:2] == [(0, lay.weights & 0xFFFF_FFFF), (1, lay.weights >> 32)]


def test_float_images_and_state_dicts(board):
    _, _, be = board
    drv = Driver(be, frame_timeout=100)
    with pytest.raises(ValueError, match="model_cfg"):
        drv.load_model({"patch_embed.proj.weight": 0})
    qm = random_model(MICRO, 5)
    drv.load_model(qm)
    img = np.random.default_rng(0).normal(0, 1, (3, 32, 32))
    from golden.twin import quantize_image
    out = drv.run_frame(img)
    assert np.array_equal(out, twin_forward(qm, quantize_image(img, MICRO), 0))


def test_errors_are_reported(board):
    fake, _, be = board
    drv = Driver(be, frame_timeout=100)
    with pytest.raises(RuntimeError, match="load_model"):
        drv.run_frame(np.zeros((3, 32, 32), dtype=np.int64))
    drv.load_model(random_model(MICRO, 6))
    with pytest.raises(ValueError, match="out of range"):
        drv.set_task(2)
    drv.write_reg("task", 2)                      # bypass the driver's own check
    with pytest.raises(AcceleratorError) as info:
        drv.run_frame(random_image(MICRO))
    assert info.value.code is ErrorCode.TASK_OUT_OF_RANGE
    drv.write_reg("task", 0)
    drv.write_reg("output_addr", drv.layout.input)
    with pytest.raises(AcceleratorError) as info:
        drv.run_frame(random_image(MICRO))
    assert info.value.code is ErrorCode.OVERLAPPING_REGIONS
    st = drv.status()
    assert st["done"] and st["error"] and st["error_code"] is ErrorCode.OVERLAPPING_REGIONS
    drv.soft_reset()
    assert not drv.status()["error"]


def test_identity_and_timeouts():
    buf = FakeBuffer(1 << 20, PHYS)
    fake = FakeAccelerator(SMALL, buf)
    with pytest.raises(RuntimeError, match="hw_array"):
        BoardBackend(fake, buf, "zcu104")
    fake.words[0] = 0
    with pytest.raises(RuntimeError, match="no M3ViT accelerator"):
        BoardBackend(fake, buf, SMALL)
    with pytest.raises(TypeError, match="physical_address"):
        BoardBackend(fake, np.zeros(16, dtype=np.uint8), SMALL, check=False)
    stuck = FakeAccelerator(SMALL, buf, stuck=True)
    be = BoardBackend(stuck, buf, SMALL)
    drv = Driver(be, frame_timeout=50)
    drv.load_model(random_model(MICRO, 7))
    with pytest.raises(TimeoutError, match="still busy after 50 polls"):
        drv.run_frame(random_image(MICRO))
    with pytest.raises(ValueError, match="outside the buffer"):
        be.ddr_write(PHYS - 16, b"x" * 16)


def test_driver_reads_the_hardware_description(board):
    _, _, be = board
    drv = Driver(be)
    hw = drv.hardware()
    assert hw["hw_array"] == {"rows": 16, "cols": 4}
    assert hw["hw_axi"] == {"ports": 2, "data_bytes": 16}
    assert hw["hw_clock_khz"]["value"] == 300_000
