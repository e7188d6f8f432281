# SPDX-License-Identifier: BSD-2-Clause
"""A functional model of the accelerator: it executes a program (:mod:`hdl.isa`) on a NumPy
activation buffer with the integer twin's operations.

It reads the program, the parameter stream, the MoE image and the activations from a DDR image
exactly as the hardware does, so that a program and a weight image from :mod:`hdl.compiler` can
be checked against :func:`golden.twin.twin_forward` in a fraction of a second, and so that the
host driver has a back end without any hardware simulation (:class:`sim.driver.ModelBackend`).

The register checks of the hardware (alignment, overlap, task range, program errors) are
modelled too: :meth:`ProgramModel.run` raises :exc:`ProgramFault` with the
:class:`hdl.regmap.ErrorCode` the hardware would report.
"""

import numpy as np

from golden import qref
from golden.fixed import QFormat, round_shift, saturate
from hdl import isa
from hdl.isa import Base, MatmulFlags, Opcode, Segment
from hdl.regmap import ErrorCode

__all__ = ["ProgramFault", "ProgramModel"]


class ProgramFault(Exception):
    """The accelerator would stop with ``status.error`` and this ``code``."""

    def __init__(self, code, message):
        super().__init__(f"{code.name}: {message}")
        self.code = code


def _signed(bits):
    return QFormat(bits, 0, True)


class ProgramModel:
    """Execute programs the way :class:`hdl.top.Accelerator` does, functionally.

    Parameters
    ----------
    config : hdl.config.AccelConfig

    Attributes
    ----------
    abuf : numpy.ndarray
        The activation buffer, ``abuf_depth × L`` int64 (kept between frames, like the
        hardware's).
    trace : list of str
        The instructions of the last frame, one line each.
    """

    def __init__(self, config):
        self.config = config
        self.abuf = np.zeros((config.compute.abuf_depth, config.lanes), dtype=np.int64)
        self.trace = []

    # -- checks the hardware does at start ------------------------------------------------------

    def check_registers(self, *, weights_addr, program_addr, program_len, input_addr,
                        output_addr, task):
        """Raise :exc:`ProgramFault` for register values the hardware refuses at start."""
        c = self.config
        beat = c.beat_bytes
        limit = 1 << c.axi_addr_width
        for name, v in (("weights_addr", weights_addr), ("program_addr", program_addr),
                        ("input_addr", input_addr), ("output_addr", output_addr)):
            if v % beat or v >= limit:
                raise ProgramFault(ErrorCode.MISALIGNED_ADDRESS,
                                   f"{name} {v:#x} is not a multiple of {beat} below 2**"
                                   f"{c.axi_addr_width}")
        if weights_addr % 4096:
            raise ProgramFault(ErrorCode.MISALIGNED_ADDRESS,
                               f"weights_addr {weights_addr:#x} is not 4 KiB aligned")
        if program_len % beat:
            raise ProgramFault(ErrorCode.MISALIGNED_ADDRESS,
                               f"program_len {program_len} is not a multiple of {beat}")
        if task >= c.model.num_tasks:
            raise ProgramFault(ErrorCode.TASK_OUT_OF_RANGE,
                               f"task {task} is not below the hardware's {c.model.num_tasks}")
        if program_len < 2 * isa.INSTR_BYTES or program_len % isa.INSTR_BYTES:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR,
                               f"program_len {program_len} is not a header plus whole "
                               f"instructions")

    @staticmethod
    def check_header(hdr, *, weights_addr, program_addr, program_len, input_addr, output_addr,
                     task):
        """Raise :exc:`ProgramFault` for a bad header, task or overlapping regions."""
        if hdr["magic"] != isa.MAGIC or hdr["version"] != isa.VERSION:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "bad program header (magic/version)")
        if task >= hdr["num_tasks"]:
            raise ProgramFault(ErrorCode.TASK_OUT_OF_RANGE,
                               f"task {task} is not below the program's {hdr['num_tasks']}")
        out = (output_addr, output_addr + hdr["output_bytes"])
        for name, lo, size in (("weights", weights_addr, hdr["weights_bytes"]),
                               ("program", program_addr, program_len),
                               ("input", input_addr, hdr["input_bytes"])):
            if lo < out[1] and out[0] < lo + size:
                raise ProgramFault(ErrorCode.OVERLAPPING_REGIONS,
                                   f"the output overlaps the {name}")

    # -- execution --------------------------------------------------------------------------

    def _elems(self, base, stride, rows, cols):
        L = self.config.lanes
        depth = self.abuf.shape[0]
        out = np.empty((rows, cols), dtype=np.int64)
        j = np.arange(cols)
        for r in range(rows):
            out[r] = self.abuf[(base + r * stride + j // L) % depth, j % L]
        return out

    def _store_elems(self, base, stride, mat):
        L = self.config.lanes
        depth = self.abuf.shape[0]
        j = np.arange(mat.shape[1])
        for r in range(mat.shape[0]):
            self.abuf[(base + r * stride + j // L) % depth, j % L] = mat[r]

    def run(self, read, write, *, weights_addr, program_addr, program_len, input_addr,
            output_addr, task):
        """Run one frame.

        Parameters
        ----------
        read : callable
            ``read(addr, length) -> bytes`` from DDR.
        write : callable
            ``write(addr, data)`` to DDR.

        Returns
        -------
        dict
            ``instructions`` executed and ``macs`` of the MATMULs (the MoE's not counted).
        """
        regs = dict(weights_addr=weights_addr, program_addr=program_addr,
                    program_len=program_len, input_addr=input_addr, output_addr=output_addr,
                    task=task)
        self.check_registers(**regs)
        prog = read(program_addr, program_len)
        hdr = isa.decode_header(prog)
        self.check_header(hdr, **regs)
        c = self.config
        L = c.lanes
        stream = _StreamReader(read, weights_addr, hdr["pstream_bytes"], c)
        bases = {Base.INPUT: input_addr, Base.WEIGHTS: weights_addr, Base.OUTPUT: output_addr}
        self.trace = []
        macs = 0
        executed = 0
        pc = isa.HEADER_BYTES
        while True:
            if pc + isa.INSTR_BYTES > len(prog):
                raise ProgramFault(ErrorCode.PROGRAM_ERROR, "the program ends before END")
            op, f = isa.decode(prog[pc:pc + isa.INSTR_BYTES])
            pc += isa.INSTR_BYTES
            executed += 1
            self.trace.append(f"{op!r} {f}")
            if op == Opcode.END:
                break
            if op in (Opcode.LOAD, Opcode.STORE):
                base = f["base"]
                ok = base in (Base.INPUT, Base.WEIGHTS, Base.OUTPUT) if op == Opcode.LOAD \
                    else base == Base.OUTPUT
                if not ok or f["addr"] + f["words"] > self.abuf.shape[0]:
                    raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"bad {op.name} {f}")
                addr = bases[Base(base)] + f["offset"]
                nbytes = f["words"] * L * 2
                if op == Opcode.LOAD:
                    raw = read(addr, -(-nbytes // c.beat_bytes) * c.beat_bytes)[:nbytes]
                    words = np.frombuffer(raw, dtype="<i2").astype(np.int64).reshape(-1, L)
                    self.abuf[f["addr"]:f["addr"] + f["words"]] = words
                else:
                    raw = self.abuf[f["addr"]:f["addr"] + f["words"]].astype("<i2").tobytes()
                    raw += bytes(-len(raw) % c.beat_bytes)
                    write(addr, raw)
            elif op == Opcode.MATMUL:
                macs += self._matmul(f, stream)
            elif op == Opcode.LAYERNORM:
                self._layernorm(f, stream)
            elif op == Opcode.SOFTMAX:
                self._softmax(f)
            elif op == Opcode.MOE:
                self._moe(f, read, weights_addr + hdr["moe_offset"], task, hdr["moe_bytes"])
            else:
                raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"unknown opcode {op}")
        return {"instructions": executed, "macs": macs}

    def _matmul(self, f, stream):
        c = self.config
        nx = c.numerics
        cc = c.compute
        m, k, n = f["m"], f["k"], f["n"]
        flags = MatmulFlags(f["flags"])
        if not (1 <= m <= cc.max_m and 1 <= k <= cc.max_k and 1 <= n <= cc.max_n) \
                or flags & MatmulFlags.ROW_SCALE or f["flags"] >= 2 * MatmulFlags.WAIT_SOFTMAX \
                or not 2 <= f["out_bits"] <= 16:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"bad MATMUL {f}")
        x = self._elems(f["x_base"], f["x_stride"], m, k)
        bias = None
        if flags & MatmulFlags.W_FROM_ABUF:
            if flags & MatmulFlags.W_TRANSPOSED:
                w = self._elems(f["w_base"], f["w_stride"], k, n).T
            else:
                w = self._elems(f["w_base"], f["w_stride"], n, k)
        else:
            if flags & MatmulFlags.BIAS:
                bias = stream.bias(n)
            w = stream.weights(n, k)
        if flags & MatmulFlags.BIAS and bias is None:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "bias with weights from abuf")
        acc = qref.matmul_exact(x, w)
        if bias is not None:
            acc = acc + (bias[None, :n] << f["b_shift"])
        out = _signed(f["out_bits"])
        y = saturate(round_shift(acc, f["q_shift"]), out)
        if flags & MatmulFlags.GELU:
            y = qref.gelu(y, nx.hidden, nx)
        if flags & MatmulFlags.ACCUMULATE:
            y = saturate(self._elems(f["y_base"], f["y_stride"], m, n) + y, out)
        self._store_elems(f["y_base"], f["y_stride"], y)
        return m * k * n

    def _layernorm(self, f, stream):
        c = self.config
        nx = c.numerics
        lc = c.layernorm
        n = f["n"]
        if not 1 <= n <= lc.max_len:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"bad LAYERNORM {f}")
        gamma, beta, eps = stream.lnparams(n)
        x = self._elems(f["in_base"], f["in_stride"], f["rows"], n)
        hf = nx.ln_xhat_frac
        s1 = x.sum(axis=-1)
        v = n * (x * x).sum(axis=-1) - s1 * s1 + eps
        y1, e = qref.rsqrt(v, nx)
        xhat = round_shift((n * x - s1[:, None]) * y1[:, None],
                           (nx.rsqrt_frac + e - hf)[:, None])
        y = xhat * gamma + (beta << hf)
        y = saturate(round_shift(y, hf + lc.param_fmt.f_bits - lc.out_fmt.f_bits), lc.out_fmt)
        self._store_elems(f["out_base"], f["out_stride"], y)

    def _softmax(self, f):
        c = self.config
        nx = c.numerics
        sc = c.softmax
        n = f["n"]
        if not 1 <= n <= sc.max_len or f["fmt"] >= len(sc.in_formats) \
                or f["scale"] > sc.scale_max:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"bad SOFTMAX {f}")
        fmt = sc.in_formats[f["fmt"]]
        s = self._elems(f["in_base"], f["in_stride"], f["rows"], n)
        # Sign-extend from the input width (abuf elements are 16-bit).
        s = np.where(s > fmt.max_int, s - (1 << fmt.width), s) if fmt.width < 16 else s
        lf, ef = nx.softmax_logit_frac, nx.exp_frac
        t = round_shift(s * f["scale"], fmt.f_bits + nx.softmax_scale_frac - lf)
        lanes = nx.softmax_lanes
        m = acc = None
        for lo in range(0, n, lanes):
            chunk = t[:, lo:lo + lanes]
            cm = chunk.max(axis=-1)
            if m is None:
                m_new, acc = cm, np.zeros_like(cm)
            else:
                m_new = np.maximum(m, cm)
                acc = round_shift(acc * qref.exp2_neg(m_new - m, nx), ef)
            acc = acc + qref.exp2_neg(m_new[:, None] - chunk, nx).sum(axis=-1)
            m = m_new
        y1, b = qref.reciprocal(acc, nx)
        e = qref.exp2_neg(m[:, None] - t, nx)
        p = saturate(round_shift(e * y1[:, None], (nx.recip_frac + b - nx.prob.f_bits)[:, None]),
                     nx.prob)
        self._store_elems(f["out_base"], f["out_stride"], p)

    def _moe(self, f, read, image_addr, task, image_bytes):
        from hdl.moe.layer import SHAPE_FIELDS
        from hdl.moe.layout import PARTS, ImageLayout, SystolicOrder, decode_weights
        c = self.config
        nx = c.numerics
        a = c.compute.array
        shape = {name: f[name] for name in SHAPE_FIELDS}
        over = [name for name in SHAPE_FIELDS if shape[name] > getattr(c.moe, name)]
        if over:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR,
                               f"MOE shape above the engine's maxima: {', '.join(over)}")
        if 0 in shape.values() or shape["k"] > shape["num_experts"]:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"bad MOE shape {shape}")
        lay = ImageLayout(num_layers=shape["num_layers"], num_experts=shape["num_experts"],
                          num_tasks=shape["num_tasks"], dim=shape["dim"],
                          hidden=shape["hidden"], data_width=c.axi_data_width,
                          order=SystolicOrder(a.rows, a.cols),
                          expert_weight_bits=nx.expert_weight_bits)
        layer = f["layer"]
        if layer >= lay.num_layers or task >= lay.num_tasks:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, f"MoE layer {layer} or task {task} "
                                                        f"out of range")
        if image_bytes < lay.total_bytes:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "the MoE image is smaller than the "
                                                        "MOE shape's layout")
        od = lay.order
        d, h, E = shape["dim"], shape["hidden"], shape["num_experts"]

        def matrix(off, n, k, bits=16):
            # A router (16-bit weights) or an expert's weights (`bits` each).
            idx = od.weights(n, k)
            raw = decode_weights(read(image_addr + off, -(-bits * len(idx) // 8)), len(idx), bits)
            out = np.zeros(n * k, dtype=np.int64)
            sel = idx >= 0
            out[idx[sel]] = raw[sel]
            return out.reshape(n, k)

        def vector(off, n):
            idx = od.bias(n)
            raw = np.frombuffer(read(image_addr + off, 4 * len(idx)), dtype="<i4")
            out = np.zeros(n, dtype=np.int64)
            sel = idx >= 0
            out[idx[sel]] = raw[sel]
            return out

        rw = -(-d // c.lanes)
        n_tok = shape["tokens"]
        u = self._elems(f["u_base"], rw, n_tok, d)
        x = self._elems(f["x_base"], rw, n_tok, d)
        gate = matrix(lay.router_offset(layer, task), E, d)
        _, _, idx, scores = qref.route(u, gate, shape["k"], nx)
        for e, tokens, s in qref.reorder(idx, scores, E):
            off = {p: lay.part_offset(layer, e, p) for p in PARTS}
            eb = lay.expert_weight_bits
            hid = qref.linear(u[tokens], matrix(off["fc1_w"], h, d, eb), vector(off["fc1_b"], h),
                              x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.hidden, numerics=nx,
                              gelu=True)
            x[tokens] = qref.linear(hid, matrix(off["fc2_w"], d, h, eb), vector(off["fc2_b"], d),
                                    x_fmt=nx.hidden, w_fmt=nx.weight, out_fmt=nx.act,
                                    numerics=nx, row_scale=s, accumulate=x[tokens])
        self._store_elems(f["x_base"], rw, x)


class _StreamReader:
    """Reads the parameter stream segment by segment, checking kinds and sizes."""

    def __init__(self, read, base, size, config):
        word = config.beat_bytes * config.stream_ports
        if size % word:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR,
                               f"the parameter stream ({size} bytes) is not a whole number of "
                               f"{word}-byte stream words")
        self.stream = isa.deinterleave_stream(read(base, size), config.stream_ports,
                                              config.beat_bytes)
        self.pos = 0
        self.word = word
        self.config = config

    def _segment(self, kind):
        word = self.word
        beat = self.config.beat_bytes
        if self.pos + word > len(self.stream):
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "the parameter stream ran out")
        hdr = isa.decode_segment_header(self.stream[self.pos:self.pos + 16])
        if hdr["magic"] != isa.SEGMENT_MAGIC or hdr["kind"] != kind:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR,
                               f"expected a {kind.name} segment, found {hdr}")
        if (hdr["words"] * beat) % word:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR,
                               f"a segment of {hdr['words']} bus words does not fill whole "
                               f"stream words")
        start = self.pos + word
        self.pos = start + hdr["words"] * beat
        if self.pos > len(self.stream):
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "the parameter stream ran out")
        return hdr, self.stream[start:self.pos]

    def bias(self, n):
        a = self.config.compute.array
        hdr, raw = self._segment(Segment.BIAS)
        vals = np.frombuffer(raw[:hdr["n"] * a.cols * 4], dtype="<i4").astype(np.int64)
        if len(vals) < n:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "short bias segment")
        return vals

    def weights(self, n, k):
        from hdl.moe.layout import SystolicOrder
        a = self.config.compute.array
        hdr, raw = self._segment(Segment.WEIGHT)
        idx = SystolicOrder(a.rows, a.cols).weights(n, k)
        vals = np.frombuffer(raw[:hdr["n"] * a.rows * 2], dtype="<i2").astype(np.int64)
        if len(vals) != len(idx):
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "weight segment of the wrong size")
        w = np.zeros(n * k, dtype=np.int64)
        sel = idx >= 0
        w[idx[sel]] = vals[sel]
        return w.reshape(n, k)

    def lnparams(self, n):
        lanes = self.config.ln_lanes
        hdr, raw = self._segment(Segment.LNPARAM)
        if hdr["n"] != n:
            raise ProgramFault(ErrorCode.PROGRAM_ERROR, "LayerNorm parameters of another width")
        beats = -(-n // lanes)
        v = np.frombuffer(raw[:beats * lanes * 4], dtype="<i2").astype(np.int64)
        v = v.reshape(beats, 2, lanes)
        return v[:, 0].reshape(-1)[:n], v[:, 1].reshape(-1)[:n], hdr["eps"]
