# SPDX-License-Identifier: BSD-2-Clause
"""A behavioural AXI4 subordinate (slave) memory for the Amaranth simulator."""

from collections import deque
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat
from amaranth.lib import wiring

from hdl.axi import AXI4Signature, Burst, Resp

__all__ = ["DDRAccessError", "DDRStats", "DDRModel", "SplitMix64"]


class DDRAccessError(AssertionError):
    """A burst the model cannot serve: outside the memory, unaligned, or not a full-width INCR."""


class SplitMix64:
    """The jitter and stall random number generator of :class:`DDRModel` (splitmix64).

    A deliberately tiny generator, so that other implementations of the DDR model (the C++ one
    of :mod:`sim.verilator`) produce the same sequence for the same seed, bit for bit.

    Parameters
    ----------
    seed : int
        Initial state; taken modulo 2**64.
    """

    _MASK = (1 << 64) - 1

    def __init__(self, seed):
        self.state = seed & self._MASK

    def next(self):
        """Return the next 64-bit output."""
        mask = self._MASK
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    def below(self, n):
        """Return an integer in ``0..n-1``: ``next() % n`` (bias about n / 2**64)."""
        return self.next() % n

    def random(self):
        """Return a float in [0, 1): the top 53 bits of :meth:`next` times 2**-53."""
        return (self.next() >> 11) * (1.0 / (1 << 53))


@dataclass
class DDRStats:
    """Counters gathered by :class:`DDRModel` during one simulation run.

    Attributes
    ----------
    cycles : int
        Clock cycles observed.
    busy_cycles : int
        Cycles in which at least one R or W beat was transferred.
    read_bytes, write_bytes : int
        Bytes transferred on R and W.
    read_bursts, write_bursts : int
        Bursts accepted on AR and AW.
    """
    cycles: int = 0
    busy_cycles: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    read_bursts: int = 0
    write_bursts: int = 0


class DDRModel:
    """Memory behind an AXI4 subordinate port, with latency, jitter and a bandwidth cap.

    Attach it to the manager-side interface of a design (for example ``dut.bus`` of an
    :class:`~hdl.axi_master.AXI4ReadMaster`): the model drives ``arready``, ``r*``, ``awready``,
    ``wready`` and ``b*``. Run :meth:`testbench` as a background testbench::

        ddr = DDRModel(dut.bus, size=1 << 16, latency=20)
        run_sim(dut, [tb], background=[ddr.testbench])

    Timing model:

    * **Latency.** The first R beat of a burst is offered ``latency`` cycles after the cycle of its
      AR transfer, plus a random 0..``jitter`` cycles drawn per burst; responses are in order, so
      a burst also waits for the bursts before it. A B response is offered ``latency`` (+ jitter)
      cycles after the cycle of the burst's last W beat.
    * **Bandwidth.** One budget of ``bytes_per_cycle`` is **shared by reads and writes**, as a
      DDR data bus is. A token bucket gains ``bytes_per_cycle`` every cycle; offering an R beat
      or a W ready costs one beat of bytes. Its capacity is ``bytes_per_cycle`` at a beat per
      cycle or more, and one beat plus ``bytes_per_cycle`` below that, so that a fractional rate
      is kept exactly over time (12 B/cycle on a 16-byte bus: three beats every four cycles,
      not one every two). R and W take turns at the budget. A W ready that is not used is
      refunded.
    * **Outstanding.** ``arready`` is low while ``max_outstanding`` read bursts are queued;
      ``awready`` is low while ``max_outstanding`` write bursts await their data or response.
      With ``p_addr_stall``, ``arready``/``awready`` are also low at random in a cycle.
    * ``wready`` is high only once the burst's AW has been accepted (AXI4 allows a subordinate to
      wait for AW before accepting W).

    Every burst must be INCR with full-width beats, aligned, and inside
    ``[base, base + size)``; anything else raises :exc:`DDRAccessError` from the testbench, which
    fails the simulation (the model never returns made-up data). Bursts that touch
    ``slverr_range`` get an SLVERR response: reads return zeros, writes are discarded.

    A restart of :meth:`testbench` (for example the replay in :func:`sim.harness.run_sim`)
    resets queues, jitter RNG and :attr:`stats`, but not the memory contents.

    Parameters
    ----------
    bus : interface
        An interface of :class:`~hdl.axi.AXI4Signature` (manager view), or its flip.
    size : int
        Memory size in bytes; a multiple of the beat size.
    base : int
        Address of the first byte.
    latency : int
        Cycles from an AR transfer to its first R beat (and from a last W beat to B); ≥ 1.
    bytes_per_cycle : float or None
        Bandwidth cap shared by R and W; ``None`` means one beat per cycle.
    jitter : int
        Maximum extra latency per burst, in cycles.
    seed : int
        Seed of the jitter and stall RNG (a :class:`SplitMix64`). Each burst's jitter is
        ``below(jitter + 1)``, drawn when its AR is accepted or its last W beat arrives; a
        stall is ``random() < p_addr_stall``, drawn for AR then AW in every cycle out of reset
        (no draw when ``jitter`` or ``p_addr_stall`` is 0).
    max_outstanding : int
        Bursts the model queues per direction.
    p_addr_stall : float
        Probability that ``arready``/``awready`` are held low in a cycle.
    slverr_range : tuple of (int, int) or None
        ``(start, end)`` byte addresses answered with SLVERR.
    """

    def __init__(self, bus, *, size, base=0, latency=8, bytes_per_cycle=None, jitter=0, seed=0,
                 max_outstanding=8, p_addr_stall=0.0, slverr_range=None):
        sig = bus.signature
        if isinstance(sig, wiring.FlippedSignature):
            sig = sig.flip()
        if not isinstance(sig, AXI4Signature):
            raise TypeError(f"bus must be an AXI4Signature interface, not {bus!r}")
        self._bus = bus
        self._sig = sig
        self._nbytes = sig.bytes_per_beat
        if size <= 0 or size % self._nbytes:
            raise ValueError(f"size must be a positive multiple of {self._nbytes}, not {size!r}")
        if latency < 1:
            raise ValueError(f"latency must be at least 1, not {latency!r}")
        if jitter < 0:
            raise ValueError(f"jitter must be non-negative, not {jitter!r}")
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, not {max_outstanding!r}")
        if bytes_per_cycle is None:
            bytes_per_cycle = self._nbytes
        if bytes_per_cycle <= 0:
            raise ValueError(f"bytes_per_cycle must be positive, not {bytes_per_cycle!r}")
        self._mem = bytearray(size)
        self.base = base
        self.size = size
        self.latency = latency
        self.bytes_per_cycle = bytes_per_cycle
        self.jitter = jitter
        self.seed = seed
        self.max_outstanding = max_outstanding
        self.p_addr_stall = p_addr_stall
        self.slverr_range = slverr_range
        self.stats = DDRStats()

    # -- host-side access ---------------------------------------------------------------------

    @property
    def array(self):
        """The memory as a writable :class:`numpy.ndarray` of ``uint8`` (index 0 is ``base``)."""
        return np.frombuffer(self._mem, dtype=np.uint8)

    def _offset(self, addr, length):
        off = addr - self.base
        if off < 0 or off + length > self.size:
            raise DDRAccessError(f"access of {length} bytes at {addr:#x} is outside the memory "
                                 f"[{self.base:#x}, {self.base + self.size:#x})")
        return off

    def write(self, addr, data):
        """Store the bytes of ``data`` (bytes-like or a ``uint8`` array) at ``addr``."""
        data = bytes(data)
        off = self._offset(addr, len(data))
        self._mem[off:off + len(data)] = data

    def read(self, addr, length):
        """Return ``length`` bytes from ``addr``."""
        off = self._offset(addr, length)
        return bytes(self._mem[off:off + length])

    def write_words(self, addr, words):
        """Store bus words (little-endian integers of ``data_width`` bits) from ``addr``."""
        self.write(addr, b"".join(w.to_bytes(self._nbytes, "little") for w in words))

    def read_words(self, addr, count):
        """Return ``count`` bus words from ``addr`` as little-endian integers."""
        raw = self.read(addr, count * self._nbytes)
        nb = self._nbytes
        return [int.from_bytes(raw[i:i + nb], "little") for i in range(0, len(raw), nb)]

    # -- simulation ---------------------------------------------------------------------------

    def _check_burst(self, kind, addr, length, size, burst):
        beat = self._nbytes
        if burst != Burst.INCR.value:
            raise DDRAccessError(f"{kind} burst at {addr:#x}: burst type {burst} is not INCR")
        if (1 << size) != beat:
            raise DDRAccessError(f"{kind} burst at {addr:#x}: {1 << size}-byte beats, the model "
                                 f"serves full-width {beat}-byte beats only")
        if addr % beat:
            raise DDRAccessError(f"{kind} burst at {addr:#x}: address not aligned to {beat} bytes")
        try:
            off = self._offset(addr, length * beat)
        except DDRAccessError as error:
            raise DDRAccessError(f"{kind} burst at {addr:#x}: {error}") from None
        if self.slverr_range is None:
            return off, Resp.OKAY.value
        lo, hi = self.slverr_range
        hit = addr < hi and lo < addr + length * beat
        return off, Resp.SLVERR.value if hit else Resp.OKAY.value

    async def testbench(self, ctx):
        """Serve the bus forever; run with ``background=True``."""
        bus, sig, nb = self._bus, self._sig, self._nbytes
        dw, aw_, id_mask = sig.data_width, sig.addr_width, (1 << sig.id_width) - 1
        okay = Resp.OKAY.value
        rng = SplitMix64(self.seed)
        stats = self.stats = DDRStats()
        bpc = self.bytes_per_cycle
        # One beat plus one cycle's credit when the rate is below a beat per cycle: a bucket of
        # one beat would throw the fraction away and round the rate down to nb / ceil(nb / bpc).
        capacity = nb + bpc if bpc < nb else bpc
        tokens = capacity
        mem = self._mem

        # Read bursts: [offset, beats left, id, resp, first cycle]; the head is being served.
        reads = deque()
        # Write bursts whose AW was accepted and W data is incomplete: [offset, beats left, id,
        # resp]. Write responses: [first cycle, id, resp].
        writes = deque()
        responses = deque()

        r_out = Cat(bus.rdata, bus.rresp, bus.rlast, bus.rid, bus.rvalid)
        b_out = Cat(bus.bresp, bus.bid, bus.bvalid)

        def decode(bits):
            return (bits & ((1 << aw_) - 1), ((bits >> aw_) & 0xff) + 1, (bits >> (aw_ + 8)) & 7,
                    (bits >> (aw_ + 11)) & 3, (bits >> (aw_ + 13)) & id_mask)

        def jitter():
            return rng.below(self.jitter + 1) if self.jitter else 0

        # What the model drives; it is not sampled back, which saves simulator time.
        rvalid = bvalid = arready = awready = wready = 0
        cycle = 0
        async for (_, rst, arvalid, ar, rready, awvalid, aw, wvalid, wdata, wstrb, wlast,
                   bready) in ctx.tick().sample(
                       bus.arvalid, Cat(bus.araddr, bus.arlen, bus.arsize, bus.arburst, bus.arid),
                       bus.rready,
                       bus.awvalid, Cat(bus.awaddr, bus.awlen, bus.awsize, bus.awburst, bus.awid),
                       bus.wvalid, bus.wdata, bus.wstrb, bus.wlast, bus.bready):
            # `cycle` is the number of the cycle that starts now; the one that ended is cycle-1.
            cycle += 1
            stats.cycles += 1
            if rst:
                continue

            # Transfers of the cycle that just ended.
            r_beat = rvalid and rready
            w_beat = wready and wvalid
            if r_beat:
                stats.read_bytes += nb
                head = reads[0]
                head[0] += nb
                head[1] -= 1
                if head[1] == 0:
                    reads.popleft()
            if arvalid and arready:
                addr, length, size, burst, rid = decode(ar)
                off, resp = self._check_burst("read", addr, length, size, burst)
                reads.append([off, length, rid, resp, cycle - 1 + self.latency + jitter()])
                stats.read_bursts += 1
            if bvalid and bready:
                responses.popleft()
            if w_beat:
                stats.write_bytes += nb
                head = writes[0]
                off = head[0]
                if head[3] == okay:
                    if wstrb == (1 << nb) - 1:
                        mem[off:off + nb] = wdata.to_bytes(nb, "little")
                    else:
                        raw = wdata.to_bytes(nb, "little")
                        for i in range(nb):
                            if (wstrb >> i) & 1:
                                mem[off + i] = raw[i]
                head[0] += nb
                head[1] -= 1
                if bool(wlast) != (head[1] == 0):
                    raise DDRAccessError(f"write burst to {self.base + off:#x}: wlast={wlast} "
                                         f"with {head[1]} beats left")
                if head[1] == 0:
                    writes.popleft()
                    responses.append([cycle - 1 + self.latency + jitter(), head[2], head[3]])
            elif wready:
                tokens += nb                      # refund the unused W ready
            if awvalid and awready:
                addr, length, size, burst, wid = decode(aw)
                off, resp = self._check_burst("write", addr, length, size, burst)
                writes.append([off, length, wid, resp])
                stats.write_bursts += 1
            if r_beat or w_beat:
                stats.busy_cycles += 1

            # Outputs for the cycle that starts now. R and W take turns at the bandwidth budget.
            tokens = min(capacity, tokens + bpc)
            want_r = (not rvalid or r_beat) and reads and reads[0][4] <= cycle
            grant_r = grant_w = False
            if want_r and (cycle & 1 or not writes) and tokens >= nb:
                grant_r = True
                tokens -= nb
            if writes and tokens >= nb:
                grant_w = True
                tokens -= nb
            if want_r and not grant_r and tokens >= nb:
                grant_r = True
                tokens -= nb
            if grant_r:
                off, left, rid, resp = reads[0][:4]
                data = int.from_bytes(mem[off:off + nb], "little") if resp == okay else 0
                ctx.set(r_out, data | (resp << dw) | ((left == 1) << (dw + 2)) |
                        (rid << (dw + 3)) | (1 << (dw + 3 + sig.id_width)))
                rvalid = 1
            elif r_beat:
                ctx.set(bus.rvalid, 0)
                rvalid = 0
            if (not bvalid or bready) and responses and responses[0][0] <= cycle:
                _, bid, resp = responses[0]
                ctx.set(b_out, resp | (bid << 2) | (1 << (2 + sig.id_width)))
                bvalid = 1
            elif bvalid and bready:
                ctx.set(bus.bvalid, 0)
                bvalid = 0
            if grant_w != wready:
                wready = int(grant_w)
                ctx.set(bus.wready, wready)
            stall = self.p_addr_stall and rng.random() < self.p_addr_stall
            new = int(len(reads) < self.max_outstanding and not stall)
            if new != arready:
                arready = new
                ctx.set(bus.arready, new)
            stall = self.p_addr_stall and rng.random() < self.p_addr_stall
            new = int(len(writes) + len(responses) < self.max_outstanding and not stall)
            if new != awready:
                awready = new
                ctx.set(bus.awready, new)
