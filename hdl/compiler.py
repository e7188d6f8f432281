# SPDX-License-Identifier: BSD-2-Clause
"""The model compiler: a quantised checkpoint becomes a DDR weight image and a program.

:func:`compile_model` takes a :class:`golden.twin.QuantizedModel` (from
:func:`golden.twin.quantize_params`) and an :class:`~hdl.config.AccelConfig` and returns a
:class:`CompiledModel`: the weight image, the program (:mod:`hdl.isa`), the plan of the
activation buffer, and the packers of the input and output buffers. Pure NumPy; no torch, no
Amaranth elaboration.

The same hardware runs any model within the configured maxima: every size, address and format of
the dense layers, the attention and the LayerNorms is an operand of the program, and so is the
MoE shape of the model (tokens, widths, experts, top-k, tasks and MoE blocks: the ``MOE``
instruction's fields), which must lie within the MoE engine's (:mod:`hdl.moe.layer`, built for
the shape of the configuration's ``model``).

DDR buffers
-----------
Weight image (``WEIGHTS_ADDR``, 4 KiB aligned)::

    offset 0              parameter stream (hdl.isa): per dense product of the frame, in program
                          order, a BIAS and a WEIGHT segment; per LayerNorm an LNPARAM segment;
                          stored as stream_ports interleaved sub-streams
    moe_offset (4 KiB)    the MoE image of hdl.moe.layout.pack (SystolicOrder of the array)
    pos_offset (64 B)     the position embedding with the cls token folded into row 0, N rows of
                          ceil(D/L)·L 16-bit elements (act format), zero padded

Input (``INPUT_ADDR``): the image in the ``pixel`` format as patch rows
(:func:`golden.twin.image_patches`: raster order of the patches, (channel, row, column) inside a
patch), one row of ``ceil(3·p·p / L)·L`` little-endian 16-bit elements per patch, zero padded:
what :meth:`CompiledModel.pack_input` writes. (The host does this im2col; the accelerator's
patch embedding is then one product.)

Output (``OUTPUT_ADDR``): the last block's token matrix, N rows of ``ceil(D/L)·L`` 16-bit
elements (act format); :meth:`CompiledModel.unpack_output` returns the N × D integers. A
spilling program (below) keeps its work area after them: the header's ``output_bytes`` is the
whole region (:attr:`CompiledModel.output_region_bytes`).

Activation buffer plan
----------------------
``x`` (the residual stream, N × D) and ``u`` (LayerNorm output) stay for the whole frame; one
shared region after them holds, in turn, the patches (patch embedding), two score areas with
``qkv`` between them + the attention output (attention; the second score area in another bank
of the buffer than the first when there is room), the hidden layer (dense MLP) and the MoE
engine's scratch area. Heads are addressed by word: when the head width is not a multiple of
``L`` (micro's 16 on the ZCU104's 32 lanes), each head of ``q``, ``k``, ``v`` and of the
attention output is padded to whole words (``head_words``): the compiler inserts zero rows
into the ``qkv`` weights and bias and zero columns into the projection's weights, which leaves
every result bit-exact (a zero weight adds nothing to an exact integer sum). The softmax works
in place on the scores. Heads use the two score areas in turn, so that the softmax of one head
runs beside the attention products of its neighbours (docs/program.md, "The program of one
frame").

The DDR-spill program
---------------------
When the token matrices do not fit that plan (more tokens than the compute unit's ``max_m``
rows, or more words than the activation buffer), or when ``spill_rows`` asks for it, the
compiler emits the same frame in tiles of ``T`` tokens, with the token matrix in DDR between
the steps: ``x`` lives in the output region (it is the output at the end), and ``q``, ``k``,
``v`` of every head after it, one part after another (``3·H`` parts of N rows of a head's
words). Per block: for each tile, load its ``x``, LayerNorm, the ``qkv`` product one part at a
time, each stored to its part; then for each tile, load its ``x`` and, for each head, its ``q``
and every token's ``k`` and ``v``, the scores, the softmax and ``A·V``; the projection, the
second LayerNorm and the MLP or the MoE layer on the tile's tokens, and store the tile. Every
product takes its weights from the parameter stream once per tile. The activation buffer then
holds a tile's ``x`` and ``u`` and, in turn, its ``qkv`` parts, a head's attention (``q`` of the
tile, ``k`` and ``v`` of all tokens, the tile's scores and attention output), its hidden layer,
its patches and the MoE engine's scratch (:func:`_spill_plan`); ``T`` is the largest that fits
(at most ``max_m`` and the tokens the MoE engine is built for). The MoE layer runs one pass per
tile (:attr:`CompiledModel.moe_tokens`), each pass adding its experts' results in the order of
its own counts: the frame equals :func:`golden.twin.twin_forward` with ``moe_tokens = T``
(which differs from the one-pass result only where an addition saturates). The attention still
takes every token as a key: N must be within the products' ``max_n`` and ``max_k`` and the
softmax's row length.

Refused models
--------------
A model beyond the configuration's maxima even in the spill program is refused with a
``ValueError`` that lists every limit it exceeds (m3vit-small on ``zcu104``: its attention's
1025 keys, its MLP width, its LayerNorm rows, its softmax rows and the MoE engine's widths and
tasks).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from golden.config import ModelConfig

from . import isa
from ._checks import check_int
from .isa import Base, MatmulFlags, Opcode, Segment

__all__ = ["CompiledModel", "AbufPlan", "compile_model", "ln_eps_int", "softmax_scale_int",
           "PAGE", "POS_ALIGN"]

#: Alignment of the weight image and of the MoE image inside it.
PAGE = 4096
#: Alignment of the position embedding in the weight image.
POS_ALIGN = 64
#: LayerNorm epsilon of M³ViT.
LN_EPS = 1e-6


def ln_eps_int(n, in_fmt, eps=LN_EPS):
    """``eps_int`` of the LayerNorm unit for rows of ``n``: ``max(1, round(eps·n²·4**f))``
    (:func:`golden.qref.layernorm_stats`)."""
    return max(1, int(round(eps * n * n * 4.0 ** in_fmt.f_bits)))


def softmax_scale_int(scale, numerics):
    """The softmax unit's constant ``round(scale·log2(e)·2**softmax_scale_frac)``
    (:func:`golden.qref.softmax_scale_int`)."""
    if not scale > 0:
        raise ValueError(f"softmax scale must be positive, not {scale!r}")
    return int(round(scale / math.log(2.0) * (1 << numerics.softmax_scale_frac)))


def _ceil(a, b):
    return -(-a // b)


def _round_up(a, b):
    return _ceil(a, b) * b


@dataclass(frozen=True)
class AbufPlan:
    """Word addresses of the activation-buffer regions (see the module docstring).

    Attributes
    ----------
    lanes : int
        Elements per word, L.
    x, u, shared : int
        Base word of the residual stream, of the LayerNorm output and of the shared region.
    qkv, attn, hidden, patches, scratch : int
        Bases inside the shared region.
    scores : tuple of int
        The two score areas (head ``h`` uses ``scores[h % 2]``).
    row_words, qkv_words, score_words, hidden_words, patch_words, attn_words : int
        Words per row of each matrix.
    head_words : int
        Words of one head in a row of ``qkv`` and of the attention output (a head starts on a
        word; ``ceil(head_dim / L)``).
    words : int
        Words used in all.
    spill_rows : int
        Tokens of a tile in the DDR-spill program; 0 when the token matrices stay on chip.
    q, k, v : int
        The spill program's attention areas (a tile's ``q``, every token's ``k`` and ``v`` of a
        head); 0 on chip.
    """

    lanes: int
    x: int
    u: int
    shared: int
    qkv: int
    scores: tuple
    attn: int
    hidden: int
    patches: int
    scratch: int
    row_words: int
    qkv_words: int
    score_words: int
    hidden_words: int
    patch_words: int
    words: int
    head_words: int = 0
    attn_words: int = 0
    spill_rows: int = 0
    q: int = 0
    k: int = 0
    v: int = 0


@dataclass
class CompiledModel:
    """The output of :func:`compile_model`.

    Attributes
    ----------
    cfg : golden.config.ModelConfig
    config : hdl.config.AccelConfig
    weights : bytes
        The weight image (write it at a 4 KiB aligned ``WEIGHTS_ADDR``).
    program : bytes
        The program (header and instructions).
    plan : AbufPlan
    input_bytes, output_bytes : int
        Sizes of the input buffer and of the output tokens.
    spill_bytes : int
        Bytes of the DDR-spill program's work area after the output tokens (0 when the token
        matrices stay on chip); :attr:`output_region_bytes` is the whole output region.
    pos_offset, moe_offset, moe_bytes, pstream_bytes : int
        Where the parts of the weight image are.
    segments : list of dict
        The parameter-stream segments in order (``kind``, ``n``, ``offset``, ``words``, ``what``;
        ``offset`` in bytes of the stream in order, :attr:`pstream`).
    blocks : list of str
        For each instruction, the part of the model it belongs to: ``"embed"`` (input, position
        and patch embedding), ``"block<i>"``, or ``"output"`` (the store and ``END``).
    """

    cfg: ModelConfig
    config: object
    weights: bytes
    program: bytes
    plan: AbufPlan
    input_bytes: int
    output_bytes: int
    pos_offset: int
    moe_offset: int
    moe_bytes: int
    pstream_bytes: int
    segments: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    spill_bytes: int = 0

    @property
    def moe_tokens(self):
        """Tokens per pass of the MoE layers: every token on chip, a tile's when the token
        matrix is spilled to DDR. The frame equals :func:`golden.twin.twin_forward` with this
        ``moe_tokens``."""
        return self.plan.spill_rows or self.cfg.tokens

    @property
    def output_region_bytes(self):
        """Bytes the output region at ``OUTPUT_ADDR`` takes (the header's ``output_bytes``):
        the output tokens, then the spill program's work area."""
        return self.output_bytes + self.spill_bytes

    @property
    def num_tasks(self):
        """Tasks of the model (TASK must be below it)."""
        return self.cfg.num_tasks

    @property
    def instructions(self):
        """Number of instructions (the header excluded)."""
        return (len(self.program) - isa.HEADER_BYTES) // isa.INSTR_BYTES

    @property
    def pstream(self):
        """The parameter stream in order: the weight image's sub-streams de-interleaved."""
        return isa.deinterleave_stream(self.weights[:self.pstream_bytes],
                                       self.config.stream_ports, self.config.beat_bytes)

    def disassemble(self):
        """The program as text lines."""
        return isa.disassemble(self.program)

    def pack_input(self, image_q):
        """The input buffer for an image in the ``pixel`` format, shape (3, H, W)."""
        from golden.twin import image_patches
        cfg = self.cfg
        image_q = np.asarray(image_q)
        expected = (cfg.in_chans, cfg.img_h, cfg.img_w)
        if image_q.shape != expected:
            raise ValueError(f"image has shape {image_q.shape}; {cfg.name} takes {expected}")
        fmt = self.config.numerics.pixel
        if image_q.size and (image_q.min() < fmt.min_int or image_q.max() > fmt.max_int):
            raise ValueError(f"image values are outside the pixel format {fmt}")
        rows = image_patches(image_q, cfg)
        return _matrix_bytes(rows, self.plan.patch_words * self.plan.lanes, self.input_bytes)

    def unpack_output(self, raw):
        """The N × D ``act`` integers from the output buffer's bytes."""
        cfg, plan = self.cfg, self.plan
        width = plan.row_words * plan.lanes
        a = np.frombuffer(bytes(raw[:cfg.tokens * width * 2]), dtype="<i2")
        return a.reshape(cfg.tokens, width)[:, :cfg.dim].astype(np.int64)


def _matrix_bytes(mat, width, total=None):
    """Rows of ``mat`` as little-endian int16, each padded to ``width`` elements."""
    mat = np.asarray(mat, dtype=np.int64)
    out = np.zeros((mat.shape[0], width), dtype="<i2")
    out[:, :mat.shape[1]] = mat
    raw = out.tobytes()
    if total is not None:
        raw = raw + bytes(total - len(raw))
    return raw


class _Program:
    def __init__(self):
        self.words = []
        self.blocks = []
        self.block = "embed"

    def emit(self, op, **fields):
        self.words.append(isa.encode(op, **fields))
        self.blocks.append(self.block)


class _Stream:
    """The parameter stream being built."""

    def __init__(self, config):
        self.config = config
        self.chunks = []
        self.size = 0
        self.segments = []

    def _segment(self, kind, n, payload, what, eps=0):
        # Header and payload each fill whole stream words (stream_ports bus words).
        beat = self.config.beat_bytes
        word = beat * self.config.stream_ports
        payload = bytes(payload)
        payload = payload + bytes(_round_up(len(payload), word) - len(payload))
        words = len(payload) // beat
        header = isa.encode_segment_header(kind, n, words, eps) + bytes(word - 16)
        self.segments.append({"kind": Segment(kind), "n": n, "offset": self.size,
                              "words": words, "what": what})
        self.chunks += [header, payload]
        self.size += len(header) + len(payload)

    def product(self, w, b, what):
        """BIAS and WEIGHT segments of ``Y = X·Wᵀ + b``: W is (N, K)."""
        from .moe.layout import SystolicOrder
        a = self.config.compute.array
        order = SystolicOrder(a.rows, a.cols)
        w = np.asarray(w, dtype=np.int64)
        n, k = w.shape
        if b is not None:
            idx = order.bias(n)
            vals = np.where(idx >= 0, np.asarray(b, dtype=np.int64)[np.maximum(idx, 0)], 0)
            self._segment(Segment.BIAS, len(idx) // a.cols, vals.astype("<i4").tobytes(),
                          what + ".bias")
        idx = order.weights(n, k)
        flat = w.reshape(-1)
        vals = np.where(idx >= 0, flat[np.maximum(idx, 0)], 0)
        self._segment(Segment.WEIGHT, len(idx) // a.rows, vals.astype("<i2").tobytes(),
                      what + ".weight")

    def layernorm(self, gamma, beta, eps_int, what):
        lanes = self.config.ln_lanes
        n = len(gamma)
        beats = _ceil(n, lanes)
        g = np.zeros(beats * lanes, dtype=np.int64)
        bt = np.zeros(beats * lanes, dtype=np.int64)
        g[:n] = gamma
        bt[:n] = beta
        payload = np.concatenate([g.reshape(beats, lanes), bt.reshape(beats, lanes)], axis=1)
        self._segment(Segment.LNPARAM, n, payload.astype("<i2").tobytes(), what, eps=eps_int)

    def tobytes(self):
        """The stream in order (before :func:`hdl.isa.interleave_stream`)."""
        return b"".join(self.chunks)


def _check_structure(cfg, config):
    L = config.lanes
    if cfg.dim % L:
        raise ValueError(f"{cfg.name}: the embedding width ({cfg.dim}) must be a multiple of the "
                         f"activation buffer's {L} lanes")
    if cfg.num_tasks > 255:
        raise ValueError(f"{cfg.name} has {cfg.num_tasks} tasks; at most 255 are supported")


def _limits(cfg, config, rows=None):
    """The configured maxima ``cfg`` exceeds, as a list of phrases (empty when it fits): with
    its whole token matrix in each product (``rows`` None), or in tiles of ``rows`` tokens (the
    DDR-spill program: the attention still takes every token as a key)."""
    c = config.compute
    n, d, p = cfg.tokens, cfg.dim, cfg.num_patches
    mdl = config.model
    m_all, m_p = (n, p) if rows is None else (rows, min(rows, p))
    hp = _round_up(cfg.head_dim, config.lanes)          # a head, padded to whole words
    qkv_n = 3 * cfg.heads * hp if rows is None else hp  # the spill program: one part a product
    products = [("patch embedding", m_p, cfg.patch_dim, d), ("qkv", m_all, d, qkv_n),
                ("attention scores", m_all, cfg.head_dim, n),
                ("attention output", m_all, n, cfg.head_dim),
                ("projection", m_all, cfg.heads * hp, d), ("fc1", m_all, d, cfg.mlp_hidden),
                ("fc2", m_all, cfg.mlp_hidden, d)]
    out = []
    for what, m_, k_, n_ in products:
        for name, v, hi in (("M", m_, c.max_m), ("K", k_, c.max_k), ("N", n_, c.max_n)):
            if v > hi:
                out.append(f"the {what} product needs {name} = {v}, above max_{name.lower()} "
                           f"= {hi}")
    if d > config.ln_max_len:
        out.append(f"LayerNorm rows of {d} exceed ln_max_len = {config.ln_max_len}")
    if n > config.softmax_max_len:
        out.append(f"softmax rows of {n} exceed softmax_max_len = {config.softmax_max_len}")
    if cfg.moe_blocks:
        try:
            config.moe.check_model(cfg, rows)
        except ValueError as exc:
            out.append(f"{exc} (its largest shape is {mdl.name}'s)")
    if rows is not None and (config.lanes * 2) % config.beat_bytes:
        out.append(f"an activation-buffer word ({config.lanes * 2} bytes) is not a whole "
                   f"number of {config.beat_bytes}-byte bus words, so row tiles cannot be "
                   f"spilled to DDR")
    return out


def _row_words(cfg, L):
    """Words per row of a head (padded to whole words), of q, k, v or the attention output, of
    a token, of the scores, of the hidden layer and of a patch, on ``L`` lanes."""
    hw = _ceil(cfg.head_dim, L)
    return (hw, cfg.heads * hw, _ceil(cfg.dim, L), _ceil(cfg.tokens, L),
            _ceil(cfg.mlp_hidden, L), _ceil(cfg.patch_dim, L))


def _plan(cfg, config):
    c = config.compute
    L = config.lanes
    n = cfg.tokens
    hw, wa, wd, ws, wh, wp = _row_words(cfg, L)
    wq = 3 * wa                                 # a row of qkv
    x, u = 0, n * wd
    shared = 2 * n * wd
    # Attention: the two score areas, qkv between them; the second one moves to the next bank
    # of the buffer when both would share one and there is room, so that a softmax's writes in
    # one area never wait for the next Q·Kᵀ product's in the other (hdl.systolic.unit).
    scores0 = shared
    qkv = scores0 + n * ws
    scores1 = qkv + n * wq
    bank = c.abuf_bank_depth
    apart = ((scores0 + n * ws - 1) // bank + 1) * bank
    if scores1 // bank <= (scores0 + n * ws - 1) // bank \
            and apart + n * (ws + wa) <= c.abuf_depth:
        scores1 = apart
    attn = scores1 + n * ws
    attn_end = attn + n * wa
    scratch_words = config.moe_for(cfg).scratch_words if cfg.moe_blocks else 0
    size = max(cfg.num_patches * wp, attn_end - shared, n * wh, scratch_words)
    return AbufPlan(lanes=L, x=x, u=u, shared=shared, qkv=qkv,
                    scores=(scores0, scores1), attn=attn,
                    hidden=shared, patches=shared, scratch=shared, row_words=wd, qkv_words=wq,
                    score_words=ws, hidden_words=wh, patch_words=wp, words=shared + size,
                    head_words=hw, attn_words=wa)


def _spill_plan(cfg, config, rows):
    """The activation buffer of the DDR-spill program with tiles of ``rows`` tokens (module
    docstring): ``x`` and ``u`` hold a tile; the shared region in turn the ``qkv`` parts of a
    tile, a head's attention (``q`` of the tile, ``k`` and ``v`` of every token, the tile's
    scores and attention output), the tile's hidden layer, its patches, and the MoE engine's
    scratch for a tile."""
    L = config.lanes
    n = cfg.tokens
    hw, wa, wd, ws, wh, wp = _row_words(cfg, L)
    x, u, shared = 0, rows * wd, 2 * rows * wd
    q = shared
    k = q + rows * hw
    v = k + n * hw
    scores = v + n * hw
    attn = scores + rows * ws
    scratch_words = config.moe_for(cfg, rows).scratch_words if cfg.moe_blocks else 0
    size = max(3 * cfg.heads * rows * hw, attn + rows * wa - shared, rows * wh,
               min(rows, cfg.num_patches) * wp, scratch_words)
    return AbufPlan(lanes=L, x=x, u=u, shared=shared, qkv=shared, scores=(scores, scores),
                    attn=attn, hidden=shared, patches=shared, scratch=shared, row_words=wd,
                    qkv_words=hw, score_words=ws, hidden_words=wh, patch_words=wp,
                    words=shared + size, head_words=hw, attn_words=wa, spill_rows=rows,
                    q=q, k=k, v=v)


def _choose_plan(cfg, config, spill_rows):
    """The on-chip plan when the model fits it and ``spill_rows`` is None, else the spill plan
    with ``spill_rows`` tokens a tile (None: the most that fit); ``ValueError`` naming every
    limit the model exceeds when neither fits."""
    c = config.compute
    depth = c.abuf_depth
    if spill_rows is None:
        if not _limits(cfg, config):
            plan = _plan(cfg, config)
            if plan.words <= depth:
                return plan
        # (a tile is one pass of the MoE engine: at most the tokens it is built for)
        top = min(c.max_m, cfg.tokens, config.moe.tokens if cfg.moe_blocks else cfg.tokens)
        tiles = range(top, 0, -1)
    else:
        check_int("spill_rows", spill_rows, 1, min(c.max_m, cfg.tokens))
        tiles = [spill_rows]
    problems = _limits(cfg, config, tiles[0])
    if not problems:
        for rows in tiles:
            plan = _spill_plan(cfg, config, rows)
            if plan.words <= depth:
                return plan
        problems = [f"in tiles of {rows} token{'s' if rows > 1 else ''} spilled to DDR it "
                    f"needs {plan.words} activation-buffer words, above abuf_depth = "
                    f"{depth}"]
    raise ValueError(f"{cfg.name} does not fit this accelerator: " + "; ".join(problems))


def compile_model(qm, config, *, spill_rows=None):
    """Compile a quantised model for an accelerator configuration.

    Parameters
    ----------
    qm : golden.twin.QuantizedModel
        The integer parameters (:func:`golden.twin.quantize_params`).
    config : hdl.config.AccelConfig or str
        The accelerator (a preset name is looked up with :func:`hdl.config.get_accel_config`).
    spill_rows : int or None
        ``None``: the token matrices stay on chip when they fit, else the DDR-spill program
        with the largest tiles that fit. An integer (1 … ``min(max_m, tokens)``): the DDR-spill
        program with tiles of that many tokens, whether or not the model would fit on chip.

    Returns
    -------
    CompiledModel

    Raises
    ------
    ValueError
        The model exceeds the configuration's maxima (the message lists every one), its MoE
        blocks are not within the MoE engine's shape, or even its DDR-spill program's
        activation-buffer areas do not fit.
    """
    from .config import AccelConfig, get_accel_config
    config = get_accel_config(config)
    if not isinstance(config, AccelConfig):
        raise TypeError(f"config must be an AccelConfig, not {config!r}")
    cfg = getattr(qm, "cfg", None)
    if not isinstance(cfg, ModelConfig) or not hasattr(qm, "params"):
        raise TypeError(f"qm must be a golden.twin.QuantizedModel, not {qm!r}")
    nx = config.numerics
    if getattr(qm, "numerics", nx) != nx:
        raise ValueError("the model was quantised with other numerics than the accelerator's")
    _check_structure(cfg, config)
    plan = _choose_plan(cfg, config, spill_rows)
    L = plan.lanes
    n, d, hd = cfg.tokens, cfg.dim, cfg.head_dim
    wd, wp = plan.row_words, plan.patch_words
    a = config.compute.array
    stream = _Stream(config)
    prog = _Program()

    def matmul(m, k, nn, *, x_fmt, w_fmt, out_fmt, x_base, x_stride, y_base, y_stride,
               w_base=0, w_stride=0, flags=0):
        acc_f = x_fmt.f_bits + w_fmt.f_bits
        q_shift = acc_f - out_fmt.f_bits
        b_shift = acc_f - nx.bias.f_bits
        if flags & MatmulFlags.BIAS and b_shift < 0:
            raise ValueError("the accumulator has fewer fractional bits than the bias")
        prog.emit(Opcode.MATMUL, m=m, k=k, n=nn, x_base=x_base, x_stride=x_stride,
                  w_base=w_base, w_stride=w_stride, y_base=y_base, y_stride=y_stride,
                  flags=int(flags), q_shift=q_shift, b_shift=max(b_shift, 0),
                  out_bits=out_fmt.width)

    def dense(w, b, what, **kw):
        stream.product(w, b, what)
        nn, k = np.shape(w)
        flags = kw.pop("flags", 0) | (MatmulFlags.BIAS if b is not None else 0)
        matmul(kw.pop("m"), k, nn, flags=flags, **kw)

    def layernorm(prefix, src, dst, rows=n):
        eps = ln_eps_int(d, nx.act)
        stream.layernorm(qm[prefix + "_g"], qm[prefix + "_b"], eps, prefix)
        prog.emit(Opcode.LAYERNORM, rows=rows, n=d, in_base=src, in_stride=wd,
                  out_base=dst, out_stride=wd)

    # The position embedding's offset is known once the stream is complete: its LOADs are
    # patched at the end (instruction index, first row, rows).
    pos_loads = []

    def load_pos(row, rows):
        pos_loads.append((len(prog.words), row, rows))
        prog.emit(Opcode.LOAD, base=Base.WEIGHTS, offset=0, addr=plan.x, words=rows * wd)

    def patch_embed(p0, p1, y_base):
        """Patches ``p0 … p1 − 1`` embedded and accumulated into the rows from ``y_base``."""
        prog.emit(Opcode.LOAD, base=Base.INPUT, offset=p0 * wp * L * 2, addr=plan.patches,
                  words=(p1 - p0) * wp)
        dense(qm["patch_w"], qm["patch_b"], "patch_embed", m=p1 - p0, x_fmt=nx.pixel,
              w_fmt=nx.weight, out_fmt=nx.act, x_base=plan.patches, x_stride=wp,
              y_base=y_base, y_stride=wd, flags=MatmulFlags.ACCUMULATE)

    sm_fmt = config.softmax.in_formats.index(nx.score)
    sm_scale = softmax_scale_int(hd ** -0.5, nx)
    moe_layer = 0
    hw, H = plan.head_words, cfg.heads
    hp = hw * L                                 # a head's elements, padded to whole words

    def pad_heads(w, axis):
        """``w`` with each head's ``hd`` rows (``axis`` 0: the 3·H heads of qkv's outputs) or
        columns (``axis`` 1: the H heads of the projection's inputs) moved to ``h·hp``, zeros
        between."""
        w = np.asarray(w)
        if hp == hd:
            return w
        w = np.moveaxis(w, axis, 0)
        out = np.zeros((w.shape[0] // hd * hp,) + w.shape[1:], dtype=w.dtype)
        for j in range(w.shape[0] // hd):
            out[j * hp:j * hp + hd] = w[j * hd:(j + 1) * hd]
        return np.moveaxis(out, 0, axis)

    def mlp(b, rows):
        """The dense MLP of ``rows`` tokens: u → hidden → accumulated into x."""
        dense(qm[b + "fc1_w"], qm[b + "fc1_b"], b + "fc1", m=rows, x_fmt=nx.ln_out,
              w_fmt=nx.weight, out_fmt=nx.hidden, x_base=plan.u, x_stride=wd,
              y_base=plan.hidden, y_stride=plan.hidden_words, flags=MatmulFlags.GELU)
        dense(qm[b + "fc2_w"], qm[b + "fc2_b"], b + "fc2", m=rows, x_fmt=nx.hidden,
              w_fmt=nx.weight, out_fmt=nx.act, x_base=plan.hidden,
              x_stride=plan.hidden_words, y_base=plan.x, y_stride=wd,
              flags=MatmulFlags.ACCUMULATE)

    def moe(rows=n):
        # (the shape is within the engine's: checked by _limits)
        prog.emit(Opcode.MOE, layer=moe_layer, u_base=plan.u, x_base=plan.x,
                  scratch_base=plan.scratch, **config.moe.shape_of(cfg, rows))

    output_words = n * wd
    output_bytes = _round_up(output_words * L * 2, config.beat_bytes)
    spill_bytes = 0
    if not plan.spill_rows:
        # Input patches and the position embedding, then the patch embedding accumulated into
        # rows 1.. of x.
        load_pos(0, n)
        patch_embed(0, cfg.num_patches, plan.x + wd)
        for i in range(cfg.depth):
            b = f"blocks.{i}."
            prog.block = f"block{i}"
            layernorm(b + "ln1", plan.x, plan.u)
            dense(pad_heads(qm[b + "qkv_w"], 0), pad_heads(qm[b + "qkv_b"], 0), b + "qkv",
                  m=n, x_fmt=nx.ln_out, w_fmt=nx.weight, out_fmt=nx.qkv, x_base=plan.u,
                  x_stride=wd, y_base=plan.qkv, y_stride=plan.qkv_words)
            # Heads overlap, two score areas in turn: Q·Kᵀ of head h runs beside the softmax
            # of head h − 1; A·V of head h − 1 comes after the softmax of head h (which started
            # only once that of h − 1 was done) and runs beside it, so only the last head's
            # A·V waits.
            def attention_out(h, flags=0):
                matmul(n, n, hd, x_fmt=nx.prob, w_fmt=nx.qkv, out_fmt=nx.act,
                       x_base=plan.scores[h % 2], x_stride=plan.score_words,
                       w_base=plan.qkv + (2 * H + h) * hw, w_stride=plan.qkv_words,
                       y_base=plan.attn + h * hw, y_stride=plan.attn_words,
                       flags=MatmulFlags.W_FROM_ABUF | MatmulFlags.W_TRANSPOSED | flags)

            for h in range(cfg.heads):
                matmul(n, hd, n, x_fmt=nx.qkv, w_fmt=nx.qkv, out_fmt=nx.score,
                       x_base=plan.qkv + h * hw, x_stride=plan.qkv_words,
                       w_base=plan.qkv + (H + h) * hw, w_stride=plan.qkv_words,
                       y_base=plan.scores[h % 2], y_stride=plan.score_words,
                       flags=MatmulFlags.W_FROM_ABUF)
                prog.emit(Opcode.SOFTMAX, rows=n, n=n, scale=sm_scale, fmt=sm_fmt,
                          in_base=plan.scores[h % 2], in_stride=plan.score_words,
                          out_base=plan.scores[h % 2], out_stride=plan.score_words)
                if h:
                    attention_out(h - 1)
            attention_out(cfg.heads - 1, MatmulFlags.WAIT_SOFTMAX)
            dense(pad_heads(qm[b + "proj_w"], 1), qm[b + "proj_b"], b + "proj", m=n,
                  x_fmt=nx.act, w_fmt=nx.weight, out_fmt=nx.act, x_base=plan.attn,
                  x_stride=plan.attn_words, y_base=plan.x, y_stride=wd,
                  flags=MatmulFlags.ACCUMULATE)
            layernorm(b + "ln2", plan.x, plan.u)
            if cfg.is_moe(i):
                moe()
                moe_layer += 1
            else:
                mlp(b, n)
        prog.block = "output"
        prog.emit(Opcode.STORE, base=Base.OUTPUT, offset=0, addr=plan.x, words=output_words)
    else:
        # The DDR-spill program (module docstring): the token matrix x lives in the output
        # region (it is the output at the end), q, k and v of every head after it; the work
        # goes through the activation buffer a tile of rows at a time.
        T, WB = plan.spill_rows, L * 2
        qkv_offset = output_bytes
        spill_bytes = 3 * H * n * hw * WB
        tiles = [(t0, min(t0 + T, n)) for t0 in range(0, n, T)]

        def x_io(op, t0, t1):
            """Rows ``t0 … t1 − 1`` of the token matrix, between DDR and the tile's ``x``."""
            prog.emit(op, base=Base.OUTPUT, offset=t0 * wd * WB, addr=plan.x,
                      words=(t1 - t0) * wd)

        def part_io(op, j, t0, t1, addr):
            """Rows ``t0 … t1 − 1`` of qkv part ``j`` (q of head j, k of head j − H, v of
            head j − 2H), stored part after part."""
            prog.emit(op, base=Base.OUTPUT, offset=qkv_offset + (j * n + t0) * hw * WB,
                      addr=addr, words=(t1 - t0) * hw)

        for t0, t1 in tiles:
            load_pos(t0, t1 - t0)
            p0, p1 = max(t0, 1) - 1, t1 - 1       # token i ≥ 1 is patch i − 1
            if p1 > p0:
                patch_embed(p0, p1, plan.x + (p0 + 1 - t0) * wd)
            x_io(Opcode.STORE, t0, t1)
        for i in range(cfg.depth):
            b = f"blocks.{i}."
            prog.block = f"block{i}"
            qkv_w, qkv_b = pad_heads(qm[b + "qkv_w"], 0), pad_heads(qm[b + "qkv_b"], 0)
            for t0, t1 in tiles:
                r = t1 - t0
                x_io(Opcode.LOAD, t0, t1)
                layernorm(b + "ln1", plan.x, plan.u, r)
                for j in range(3 * H):
                    y = plan.qkv + j * T * hw
                    dense(qkv_w[j * hp:(j + 1) * hp], qkv_b[j * hp:(j + 1) * hp],
                          f"{b}qkv[{j}]", m=r, x_fmt=nx.ln_out, w_fmt=nx.weight,
                          out_fmt=nx.qkv, x_base=plan.u, x_stride=wd, y_base=y, y_stride=hw)
                    part_io(Opcode.STORE, j, t0, t1, y)
            for t0, t1 in tiles:
                r = t1 - t0
                x_io(Opcode.LOAD, t0, t1)
                for h in range(H):
                    part_io(Opcode.LOAD, h, t0, t1, plan.q)
                    part_io(Opcode.LOAD, H + h, 0, n, plan.k)
                    part_io(Opcode.LOAD, 2 * H + h, 0, n, plan.v)
                    matmul(r, hd, n, x_fmt=nx.qkv, w_fmt=nx.qkv, out_fmt=nx.score,
                           x_base=plan.q, x_stride=hw, w_base=plan.k, w_stride=hw,
                           y_base=plan.scores[0], y_stride=plan.score_words,
                           flags=MatmulFlags.W_FROM_ABUF)
                    prog.emit(Opcode.SOFTMAX, rows=r, n=n, scale=sm_scale, fmt=sm_fmt,
                              in_base=plan.scores[0], in_stride=plan.score_words,
                              out_base=plan.scores[0], out_stride=plan.score_words)
                    matmul(r, n, hd, x_fmt=nx.prob, w_fmt=nx.qkv, out_fmt=nx.act,
                           x_base=plan.scores[0], x_stride=plan.score_words,
                           w_base=plan.v, w_stride=hw, y_base=plan.attn + h * hw,
                           y_stride=plan.attn_words,
                           flags=MatmulFlags.W_FROM_ABUF | MatmulFlags.W_TRANSPOSED
                           | MatmulFlags.WAIT_SOFTMAX)
                dense(pad_heads(qm[b + "proj_w"], 1), qm[b + "proj_b"], b + "proj", m=r,
                      x_fmt=nx.act, w_fmt=nx.weight, out_fmt=nx.act, x_base=plan.attn,
                      x_stride=plan.attn_words, y_base=plan.x, y_stride=wd,
                      flags=MatmulFlags.ACCUMULATE)
                layernorm(b + "ln2", plan.x, plan.u, r)
                if cfg.is_moe(i):
                    moe(r)              # the MoE layer on the tile's tokens: one pass
                else:
                    mlp(b, r)
                x_io(Opcode.STORE, t0, t1)
            moe_layer += cfg.is_moe(i)
        prog.block = "output"
    prog.emit(Opcode.END)

    # The weight image: stream (as sub-streams, one per port that reads it), MoE image,
    # position embedding.
    pstream = isa.interleave_stream(stream.tobytes(), config.stream_ports, config.beat_bytes)
    moe_offset = _round_up(len(pstream), PAGE)
    if cfg.moe_blocks:
        from .moe.layout import SystolicOrder, pack
        moe_image, _ = pack(qm, config.axi_data_width, order=SystolicOrder(a.rows, a.cols))
    else:
        moe_image = b""
    pos_offset = _round_up(moe_offset + len(moe_image), POS_ALIGN)
    pos = _matrix_bytes(qm["pos"], plan.row_words * L)
    weights = bytearray(_round_up(pos_offset + len(pos), PAGE))
    weights[:len(pstream)] = pstream
    weights[moe_offset:moe_offset + len(moe_image)] = moe_image
    weights[pos_offset:pos_offset + len(pos)] = pos
    for at, row, rows in pos_loads:
        prog.words[at] = isa.encode(Opcode.LOAD, base=Base.WEIGHTS,
                                    offset=pos_offset + row * wd * L * 2, addr=plan.x,
                                    words=rows * wd)
    input_bytes = _round_up(cfg.num_patches * wp * L * 2, config.beat_bytes)
    header = isa.encode_header(num_tasks=cfg.num_tasks, input_bytes=input_bytes,
                               output_bytes=output_bytes + spill_bytes,
                               weights_bytes=len(weights),
                               pstream_bytes=len(pstream), moe_offset=moe_offset,
                               moe_bytes=len(moe_image))
    return CompiledModel(cfg=cfg, config=config, weights=bytes(weights),
                         program=header + b"".join(prog.words), plan=plan,
                         input_bytes=input_bytes, output_bytes=output_bytes,
                         pos_offset=pos_offset, moe_offset=moe_offset,
                         moe_bytes=len(moe_image), pstream_bytes=len(pstream),
                         segments=stream.segments, blocks=prog.blocks,
                         spill_bytes=spill_bytes)
