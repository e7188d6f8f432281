# SPDX-License-Identifier: BSD-2-Clause
"""An analytic cycle model of a whole frame on :class:`hdl.top.Accelerator`.

The accelerator executes one instruction at a time, but for the softmax: a SOFTMAX starts the
softmax engine and the next instructions run beside it until one needs it idle (any but a
MATMUL without ``WAIT_SOFTMAX``), which waits for it. So a frame's cycles are the sum of its
instructions' cycles and of those waits; each instruction is modelled from the formulas of the
block that runs it:

``MATMUL``
    ``max(ComputeUnit.cycles(M, K, N), stream bytes / parameter-path bandwidth)`` plus the
    hand-over (decode, command register, status): the compute unit's own cycle formula when the
    weights keep up, the parameter stream's rate (a bus word per cycle from each of its
    ``stream_ports`` ports, at most the DDR's share of a port) when they do not.
``LAYERNORM``, ``SOFTMAX``
    ``rows · max(words, beats)``: the activation buffer's external port reads one word and
    writes one word per cycle; the unit takes one beat of ``lanes`` per cycle; plus the unit's
    latency. A SOFTMAX costs the sequencer only its dispatch; its engine runs that long beside
    the instructions after it (taking the buffer cycles the compute unit leaves free, which
    the model does not count), and the wait for it is counted as ``SOFTMAX`` cycles.
``LOAD``, ``STORE``
    DDR latency plus the transfer: a STORE at one bus word per cycle, a LOAD at a bus word per
    cycle from each of its ``load_ports`` ports (at most one activation-buffer word per cycle).
``MOE``
    routing (the router fetch, the logits product, the softmax and the reordering), then the used
    experts in order: each expert's weights are fetched as soon as the DMA is free and a bank is
    (the DMA prefetches one expert ahead), its products are fed while its weights arrive, and it
    ends at the later of its compute time (:meth:`hdl.moe.layer.MoELayer.expert_cycles`) after
    the previous expert and its fetch plus its last pass.

The *roofline* of a frame is ``max(compute-bound, DDR-bound)``: every product at the compute
unit's formula plus the nonlinear units at their throughput (of the softmax, the part the
program cannot hide behind products: the waits, with every product at its formula), against
every byte at the DDR's aggregate bandwidth.
"""

import math
from dataclasses import dataclass, field

from hdl import isa
from hdl.isa import MatmulFlags, Opcode
from sim.harness import unelaborated

__all__ = ["FrameEstimate", "estimate_frame", "expert_counts", "ZCU104_DDR_BYTES_PER_CYCLE"]

#: PS DDR4-2133 × 64 bits = 17.06 GB/s, in bytes per cycle at 300 MHz.
ZCU104_DDR_BYTES_PER_CYCLE = 17.06e9 / 300e6


@dataclass
class FrameEstimate:
    """The model's figures for one frame (``per_instruction``: the model's ``op``, ``cycles``,
    ``compute_bound`` and ``ddr_bytes`` of every instruction before ``END``, in program
    order)."""
    cycles: int = 0
    compute_bound: int = 0
    ddr_bytes: int = 0
    ddr_bound: int = 0
    by_opcode: dict = field(default_factory=dict)
    per_instruction: list = field(default_factory=list)

    @property
    def roofline(self):
        """``max(compute_bound, ddr_bound)``."""
        return max(self.compute_bound, self.ddr_bound)

    def as_dict(self):
        return {"cycles": self.cycles, "compute_bound_cycles": self.compute_bound,
                "ddr_bound_cycles": self.ddr_bound, "roofline_cycles": self.roofline,
                "ddr_bytes": self.ddr_bytes, "by_opcode": dict(self.by_opcode)}


def expert_counts(qm, image_q, task, moe_tokens=None):
    """Tokens per used expert of every pass of an MoE layer, in program order (each MoE block's
    tiles of ``moe_tokens`` tokens in turn; one pass a block by default), from the twin's
    routing of this frame."""
    import numpy as np
    from golden import qref
    from golden.twin import twin_forward
    taps = {}
    twin_forward(qm, image_q, task, taps, moe_tokens=moe_tokens)
    out = []
    for blk in qm.cfg.moe_blocks:
        idx = taps[f"block{blk}.topk_idx"]
        for one_pass in qref.reorder_passes(idx, np.zeros_like(idx), qm.cfg.num_experts,
                                            moe_tokens):
            out.append([len(t) for _, t, _ in one_pass])
    return out


def estimate_frame(cm, *, counts=None, latency=100, ddr_bytes_per_cycle=None,
                   port_bytes_per_cycle=None, stream_bytes_per_cycle=None):
    """Estimate a compiled frame (:class:`hdl.compiler.CompiledModel`).

    Parameters
    ----------
    counts : list of list of int or None
        Tokens per used expert for each ``MOE`` instruction in program order
        (:func:`expert_counts` with the model's ``moe_tokens``); default: every expert used,
        tokens spread evenly.
    latency : int
        DDR latency in cycles.
    ddr_bytes_per_cycle : float or None
        Aggregate DDR bandwidth (default: one bus word per cycle per port).
    port_bytes_per_cycle : float or None
        Bandwidth of one port (default: ``min(bus word, aggregate / ports)``).
    stream_bytes_per_cycle : float or None
        Bandwidth of the parameter stream (default: the hardware's, one port's bandwidth times
        ``stream_ports``: a bus word from each of its ports per cycle). A what-if.

    Returns
    -------
    FrameEstimate
    """
    from hdl.moe.layer import MoELayer
    from hdl.systolic.unit import ComputeUnit
    c = cm.config
    cfg = cm.cfg
    a = c.compute.array
    beat = c.beat_bytes
    L = c.lanes
    agg = ddr_bytes_per_cycle or beat * c.axi_ports
    port = port_bytes_per_cycle or min(beat, agg / c.axi_ports)
    stream_bw = stream_bytes_per_cycle or port * c.stream_ports
    moe_bw = min(agg, port * c.moe_ports)
    cu = ComputeUnit(c.compute)
    est = FrameEstimate()
    by = {}
    ops = []
    prog = cm.program
    for i in range(isa.HEADER_BYTES, len(prog), isa.INSTR_BYTES):
        ops.append(isa.decode(prog[i:i + isa.INSTR_BYTES]))
    ln, sm = c.layernorm, c.softmax
    ln_lat = 40
    sm_lat = 60
    overhead = 4            # fetch, decode, dispatch, completion
    passes = [f for op, f in ops if op == Opcode.MOE]
    if counts is None:
        counts = [[max(1, round(f["tokens"] * cfg.top_k / cfg.num_experts))] * cfg.num_experts
                  for f in passes]
    if len(counts) != len(passes):
        raise ValueError(f"counts has {len(counts)} entries; the program has {len(passes)} MOE "
                         f"instructions")
    moe_pass = 0
    # The engine's cycle formulas and image layout at the model's own MoE shape (the tokens of
    # a pass: all, or a tile's when the token matrix is spilled).
    mc = c.moe_for(cfg, cm.moe_tokens) if cfg.moe_blocks else None
    moe_engine = MoELayer(mc) if cfg.moe_blocks else None
    unelaborated(cu, moe_engine)      # built for their cycle formulas only
    lay = mc.layout if cfg.moe_blocks else None

    sm_end = 0          # when the softmax engine is done (frame cycles)
    sm_wait = 0         # the current instruction's wait for it

    def add(op, cycles, bound, nbytes):
        est.per_instruction.append({"op": op, "cycles": int(round(cycles)) + overhead + sm_wait,
                                    "compute_bound": int(round(bound)) + sm_wait,
                                    "ddr_bytes": int(nbytes)})
        by[op] = by.get(op, 0) + int(round(cycles))
        est.cycles += int(round(cycles)) + overhead
        est.compute_bound += int(round(bound))
        est.ddr_bytes += int(nbytes)

    for op, f in ops:
        waits = op != Opcode.MATMUL or f["flags"] & MatmulFlags.WAIT_SOFTMAX
        sm_wait = max(sm_end - est.cycles, 0) if waits else 0
        if sm_wait:
            by["SOFTMAX"] = by.get("SOFTMAX", 0) + sm_wait
            est.cycles += sm_wait
            est.compute_bound += sm_wait
        if op == Opcode.END:
            break
        if op in (Opcode.LOAD, Opcode.STORE):
            nbytes = -(-f["words"] * L * 2 // beat) * beat
            # A LOAD reads load_ports ports at once, a STORE writes store_ports (at most one
            # buffer word per cycle).
            ports = c.load_ports if op == Opcode.LOAD else c.store_ports
            rate = min(port * ports, agg, 2 * L)
            add(op.name, latency + nbytes / rate + 8, 0, nbytes)
        elif op == Opcode.MATMUL:
            flags = MatmulFlags(f["flags"])
            tr = bool(flags & MatmulFlags.W_TRANSPOSED)
            cyc = cu.cycles(f["m"], f["k"], f["n"], w_transposed=tr,
                            w_from_abuf=bool(flags & MatmulFlags.W_FROM_ABUF),
                            bias=bool(flags & MatmulFlags.BIAS))
            nbytes = 0
            if not flags & MatmulFlags.W_FROM_ABUF:
                nt = -(-f["n"] // a.cols)
                kt = -(-f["k"] // a.rows)
                nbytes = nt * kt * a.cols * a.rows * 2 + 2 * beat
                if flags & MatmulFlags.BIAS:
                    nbytes += nt * a.cols * 4 + beat
            add(op.name, max(cyc, nbytes / stream_bw), cyc, nbytes)
        elif op == Opcode.LAYERNORM:
            words = -(-f["n"] // L)
            beats = -(-f["n"] // ln.lanes)
            cyc = f["rows"] * max(words, beats) + ln_lat + beats
            add(op.name, cyc, f["rows"] * beats, 0)
        elif op == Opcode.SOFTMAX:
            words = -(-f["n"] // L)
            beats = -(-f["n"] // sm.lanes)
            sm_end = est.cycles + overhead + f["rows"] * max(words, beats) + sm_lat
            add(op.name, 0, 0, 0)
        elif op == Opcode.MOE:
            layer_counts = counts[moe_pass]
            moe_pass += 1
            tokens = f["tokens"]
            router = lay.bytes_for_router()
            expert = lay.bytes_for_expert()
            logits = cu.cycles(tokens, cfg.dim, cfg.num_experts)
            # The routing: 2·E cycles as before, plus the reorder's scatter (N·k) and its scan
            # of the counters for the first expert (E).
            route = (moe_engine.setup_cycles + latency + router / moe_bw + logits
                     + tokens * mc.logit_words + sm_lat + 3 * cfg.num_experts
                     + tokens * cfg.top_k)
            # Experts in order: half g of the job list (job g // 2's fc1 parts when g is even,
            # its fc2 parts when odd) follows half g − 1 in the DMA's ring of C words (per
            # port); it is fetched when the DMA is free and, up to its end, once the halves
            # that end C words before are released (an fc1 half when its job's FC1 is done, an
            # fc2 half when its job is): it starts when its first chunk fits and ends no
            # sooner than its last one fits. A job's products are fed while its weights
            # arrive, so it ends at the later of its own compute time and its fetch plus a
            # pass and the drain. (A fetch that waited pays the DDR latency.)
            fc1_bytes = lay.part_bytes("fc1_b") + lay.part_bytes("fc1_w")
            fetch1, fetch2 = fc1_bytes / moe_bw, (expert - fc1_bytes) / moe_bw
            ring, h_words, chunk = c.moe.ring_words, mc.halves_words, mc.max_burst_beats
            dma_free, ends, fc1_ends = route, [], []

            def half_end(g):
                """Ring position (per port) where half g ends."""
                return (g // 2 + 1) * sum(h_words) if g % 2 else g // 2 * sum(h_words) + h_words[0]

            def fits(pos):
                """When the ring has room up to ``pos``: once the first half ending at or past
                ``pos − C`` is released."""
                if pos <= ring:
                    return route
                g = 0
                while half_end(g) < pos - ring:
                    g += 1
                return ends[g // 2] if g % 2 else fc1_ends[g // 2]

            def fetch_half(g, ready, duration):
                s = max(ready, fits((half_end(g - 1) if g else 0) + chunk))
                end = max(s + duration, fits(half_end(g)))
                return end + (latency if g == 0 or s > ready else 0)

            for j, n in enumerate(layer_counts):
                comp = moe_engine.expert_cycles(n)
                start = ends[-1] if ends else route
                tail = max(n, a.cols // a.load_words) + sm_lat
                half = fetch_half(2 * j, dma_free, fetch1)
                # The fc2 half may wait for this job's own FC1 (a ring smaller than an expert):
                # FC1 ends after its compute time and its half's arrival.
                fc1_ends.append(max(start + comp - moe_engine.fc2_cycles(n), half + tail))
                fetched = fetch_half(2 * j + 1, half, fetch2)
                dma_free = fetched
                ends.append(max(start + comp, fetched + tail))
                fc1_ends[-1] = ends[-1] - moe_engine.fc2_cycles(n)
            cyc = ends[-1]
            bound = moe_engine.compute_bound_cycles(layer_counts)
            add(op.name, cyc, bound, router + expert * len(layer_counts))
    est.by_opcode = by
    est.ddr_bound = int(math.ceil(est.ddr_bytes / agg))
    return est
