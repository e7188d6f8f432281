# SPDX-License-Identifier: BSD-2-Clause
"""An AXI4 protocol checker for the Amaranth simulator."""

from collections import defaultdict, deque

from amaranth.hdl import Cat
from amaranth.lib import wiring

from hdl.axi import AXI4Signature, Burst

__all__ = ["AXI4Checker"]


class _Channel:
    """One AXI channel: its valid/ready pair and payload fields, sampled as one value."""

    def __init__(self, label, bus, prefix, fields):
        self.label = label
        self.prefix = prefix
        self.valid = getattr(bus, f"{prefix}valid")
        self.ready = getattr(bus, f"{prefix}ready")
        signals = [getattr(bus, f"{prefix}{f}") for f in fields]
        self.names = [f"{prefix}{f}" for f in fields]
        self.widths = [len(s) for s in signals]
        self.payload = Cat(*signals)

    def decode(self, bits):
        out = {}
        for name, width in zip(self.names, self.widths):
            out[name] = bits & ((1 << width) - 1)
            bits >>= width
        return out

    def describe(self, bits):
        return ", ".join(f"{k}={v:#x}" for k, v in self.decode(bits).items())


class AXI4Checker:
    """Check the AXI4 rules on an interface, from the outside, for a whole simulation.

    Run :meth:`testbench` as a background testbench. Any violation raises
    :exc:`AssertionError` naming the checker, the channel, the rule and the cycle (cycle ``n``
    is the one ending at clock edge ``n + 1``). Checked rules:

    * every channel (AR, AW, W, R, B): once ``valid`` is high, ``valid`` and the payload stay
      unchanged until ``ready``;
    * AR/AW: burst type INCR; ``size`` equal to the bus width (full-width beats, which this
      project always uses); address aligned to the beat size; the burst does not cross a 4 KiB
      boundary. (``len + 1 <= 256`` holds by construction of the 8-bit ``len`` field.)
    * W: each burst has ``awlen + 1`` beats with ``wlast`` exactly on the last one, matched to AW
      bursts in order (W may lead its AW);
    * R: each beat belongs to an outstanding read burst of its ID (oldest first, so responses of
      one ID are in order); ``arlen + 1`` beats with ``rlast`` exactly on the last one; no beat in
      the cycle of its own AR transfer or earlier;
    * B: each response belongs to the oldest outstanding write burst of its ID whose AW and last
      W beat were both transferred in earlier cycles.

    Parameters
    ----------
    bus : interface
        An interface of :class:`~hdl.axi.AXI4Signature` (manager view), or its flip.
    name : str
        Prefix of every message.

    Attributes
    ----------
    read_bursts, write_bursts : list of (int, int)
        ``(address, beats)`` of every accepted AR / AW transfer, in order.
    max_reads_in_flight, max_writes_in_flight : int
        Largest number of bursts accepted and not yet completed (last R beat / B response).
    """

    def __init__(self, bus, *, name="axi"):
        sig = bus.signature
        if isinstance(sig, wiring.FlippedSignature):
            sig = sig.flip()
        if not isinstance(sig, AXI4Signature):
            raise TypeError(f"bus must be an AXI4Signature interface, not {bus!r}")
        self._sig = sig
        self.name = name
        addr_fields = ["addr", "len", "size", "burst", "id", "cache", "prot"]
        self._ar = _Channel("AR", bus, "ar", addr_fields)
        self._aw = _Channel("AW", bus, "aw", addr_fields)
        self._w = _Channel("W", bus, "w", ["data", "strb", "last"])
        self._r = _Channel("R", bus, "r", ["data", "resp", "last", "id"])
        self._b = _Channel("B", bus, "b", ["resp", "id"])
        self._channels = (self._ar, self._aw, self._w, self._r, self._b)
        self.read_bursts = []
        self.write_bursts = []
        self.max_reads_in_flight = 0
        self.max_writes_in_flight = 0

    def _fail(self, channel, rule, cycle, detail):
        raise AssertionError(f"{self.name}: {channel.label} channel: {rule} in cycle {cycle}: "
                             f"{detail}")

    def _check_addr(self, ch, cycle, fields, prefix):
        addr, beats = fields[f"{prefix}addr"], fields[f"{prefix}len"] + 1
        size, burst = fields[f"{prefix}size"], fields[f"{prefix}burst"]
        where = f"{beats}-beat burst at {addr:#x}"
        if burst != Burst.INCR.value:
            self._fail(ch, "burst type must be INCR", cycle, f"{prefix}burst={burst}, {where}")
        if size != self._sig.size:
            self._fail(ch, "beats must be full width", cycle,
                       f"{prefix}size={size}, bus size is {self._sig.size}, {where}")
        if addr % (1 << size):
            self._fail(ch, "address must be aligned to the beat size", cycle, where)
        if (addr % 4096) + (beats << size) > 4096:
            self._fail(ch, "INCR burst must not cross a 4 KiB boundary", cycle,
                       f"{where} of {1 << size} bytes ends at {addr + (beats << size) - 1:#x}")
        return addr, beats

    async def testbench(self, ctx):
        """Observe the bus forever; run with ``background=True``."""
        ar, aw, w, r, b = self._channels
        self.read_bursts = []
        self.write_bursts = []
        self.max_reads_in_flight = self.max_writes_in_flight = 0
        reads = defaultdict(deque)       # id -> [[beats, beats seen]] in AR order
        n_reads = 0
        writes = defaultdict(deque)      # id -> [[beats, W complete]] in AW order, until B
        n_writes = 0
        unwritten = deque()              # AW entries still waiting for their W burst
        early = deque()                  # beat counts of W bursts that completed before their AW
        w_count = 0                      # beats of the W burst in progress
        held = [None] * len(self._channels)
        exprs = []
        for ch in self._channels:
            exprs += [ch.valid, ch.ready, ch.payload]

        cycle = -1
        async for _, rst, *values in ctx.tick().sample(*exprs):
            cycle += 1
            if rst:
                held = [None] * len(self._channels)
                continue
            fire = []
            for i, ch in enumerate(self._channels):
                valid, ready, payload = values[3 * i:3 * i + 3]
                if held[i] is not None:
                    if not valid:
                        self._fail(ch, f"{ch.prefix}valid dropped before the handshake",
                                   cycle, f"pending payload {ch.describe(held[i])}")
                    if payload != held[i]:
                        self._fail(ch, "payload changed while valid and not ready", cycle,
                                   f"was {ch.describe(held[i])}; now {ch.describe(payload)}")
                held[i] = payload if valid and not ready else None
                fire.append(ch.decode(payload) if valid and ready else None)
            ar_f, aw_f, w_f, r_f, b_f = fire

            # Responses first: they must not be in the cycle of the request they answer.
            if r_f is not None:
                queue = reads.get(r_f["rid"])
                if not queue:
                    self._fail(r, "R beat without an outstanding read burst of its ID", cycle,
                               f"rid={r_f['rid']:#x}")
                entry = queue[0]
                entry[1] += 1
                last = entry[1] == entry[0]
                if r_f["rlast"] != last:
                    self._fail(r, "rlast must be high exactly on the last beat", cycle,
                               f"beat {entry[1]} of {entry[0]} has rlast={r_f['rlast']}")
                if last:
                    queue.popleft()
                    n_reads -= 1
            if b_f is not None:
                queue = writes.get(b_f["bid"])
                if not queue:
                    self._fail(b, "B response without an outstanding write burst of its ID",
                               cycle, f"bid={b_f['bid']:#x}")
                if not queue[0][1]:
                    self._fail(b, "B response before the last W beat of its burst", cycle,
                               f"bid={b_f['bid']:#x}, burst of {queue[0][0]} beats")
                queue.popleft()
                n_writes -= 1
            if w_f is not None:
                w_count += 1
                target = unwritten[0] if unwritten and not early else None
                if target is not None and w_count > target[0]:
                    self._fail(w, "wlast must be high exactly on the last beat", cycle,
                               f"beat {w_count} of a {target[0]}-beat burst")
                if w_f["wlast"]:
                    if target is None:
                        early.append(w_count)
                    else:
                        if w_count != target[0]:
                            self._fail(w, "wlast must be high exactly on the last beat", cycle,
                                       f"wlast on beat {w_count} of a {target[0]}-beat burst")
                        target[1] = True
                        unwritten.popleft()
                    w_count = 0
            if ar_f is not None:
                addr, beats = self._check_addr(ar, cycle, ar_f, "ar")
                self.read_bursts.append((addr, beats))
                reads[ar_f["arid"]].append([beats, 0])
                n_reads += 1
                self.max_reads_in_flight = max(self.max_reads_in_flight, n_reads)
            if aw_f is not None:
                addr, beats = self._check_addr(aw, cycle, aw_f, "aw")
                self.write_bursts.append((addr, beats))
                entry = [beats, False]
                writes[aw_f["awid"]].append(entry)
                n_writes += 1
                self.max_writes_in_flight = max(self.max_writes_in_flight, n_writes)
                if early:
                    count = early.popleft()
                    if count != beats:
                        self._fail(w, "W burst length must equal awlen + 1", cycle,
                                   f"W burst of {count} beats sent ahead of a {beats}-beat AW "
                                   f"at {addr:#x}")
                    entry[1] = True
                else:
                    unwritten.append(entry)
