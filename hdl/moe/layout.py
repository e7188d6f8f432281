# SPDX-License-Identifier: BSD-2-Clause
"""The DDR weight image of the MoE blocks: layout, host-side packer and unpacker.

Pure Python and NumPy (no Amaranth, no torch): the host driver packs a quantised model with
:func:`pack` and hands the accelerator the image's base address and size; the hardware
(:class:`hdl.moe.dma.ExpertDMA`) computes every address from the same :class:`ImageLayout`'s
geometry, which :class:`hdl.moe.geometry.Geometry` derives in hardware from the model's shape.

Format
------
The image holds, for every MoE block of the model (in block order), one *layer region*::

    image
    ├── layer 0 (MoE block 1)          at 0 · layer_stride
    │   ├── router, task 0             at routers_offset + 0 · router_stride
    │   ├── router, task 1             …
    │   ├── (zero padding to a 4 KiB boundary)
    │   ├── expert 0                   at experts_offset + 0 · expert_stride
    │   │   ├── fc1_b   (Hd biases)
    │   │   ├── fc1_w   (Hd × D weights)
    │   │   ├── fc2_b   (D biases)
    │   │   └── fc2_w   (D × Hd weights)
    │   ├── expert 1                   …
    │   └── …
    ├── layer 1 (MoE block 3)          at 1 · layer_stride
    └── …

* The parts are in the order the compute unit consumes them: it takes a product's biases at
  the start of the command, before the weights, so each bias precedes its weights, and the
  DMA fetches the parts in image order.
* **Weights** (``weight`` format, SQ(2,14)) are in the order the compute unit consumes them
  (:class:`WeightOrder`: :class:`SystolicOrder` for :class:`hdl.systolic.unit.ComputeUnit`,
  weight tiles N-tile outer, K-tile inner, one PE column of ``rows`` weights after another;
  :class:`RowMajorOrder` is ``W[n, k]`` with ``k`` fastest). A router's weights are 16-bit
  two's complement, little-endian: a bus word of ``data_width`` bits holds ``data_width/16``
  consecutive weights, the first in the least significant bits.
* **Expert weights** (``fc1_w``, ``fc2_w``) keep only their ``expert_weight_bits`` upper bits
  (14 with the default numerics: :attr:`golden.numerics.Numerics.expert_weight_bits`; the low
  ``16 − expert_weight_bits`` bits of every expert weight are zero, :func:`pack` checks it):
  weight ``j`` of a part is bits ``j·b … j·b + b − 1`` of the part read as one little-endian
  bit string (``b = expert_weight_bits``, two's complement). A 32 × 32 tile is then 1,792 bytes
  instead of 2,048. With ``b = 16`` this is the router's format.
* **Biases** (``bias`` format, SQ(8,16), 24 bits) are sign-extended to 32-bit little-endian
  words, one per output, in output order, padded with zeros to whole N-tiles for
  :class:`SystolicOrder` (``data_width/32`` per bus word).
* A router is the task's ``gate`` matrix transposed, E × D (``Y = X·Wᵀ`` like every product),
  in the weight order; routers have no bias.
* Every part (``fc1_w``, ``fc1_b``, ``fc2_w``, ``fc2_b``, a router) starts on a
  ``part_align``-byte boundary (64 B by default) and is zero padded to a whole number of bus
  words; the hardware fetches exactly those words (:meth:`ImageLayout.bytes_for_expert`), never
  the padding between parts.
* Every expert region, the expert array and every layer region start on an
  ``expert_align``-byte boundary (4 KiB by default), so ``expert_stride`` and ``layer_stride``
  are multiples of 4 KiB.

Why these alignments: an AXI4 burst may not cross a 4 KiB boundary (the read master splits
there). With 4 KiB-aligned experts every expert is split into the same sequence of bursts, so
the fetch time of an expert does not depend on its id, and the address of expert ``e`` is
``base + e·stride`` with the low 12 bits constant. Parts are aligned to 64 B, the ZCU104 DDR4
burst (BL8 × 64 bits) and the PS interconnect's cache line: a part never starts inside a DDR
burst that another part also needs. Padding costs below 1.5 % of the image for m3vit-tiny
(and 0 bytes of DDR traffic, since padding is never fetched). The image base must be 4 KiB
aligned.

All offsets are byte offsets from the image base. :func:`pack` returns the image and an
:class:`ImageIndex` with every part's offset and size.
"""

from dataclasses import dataclass, field

import numpy as np

from .._checks import check_int, check_pow2

__all__ = ["WeightOrder", "RowMajorOrder", "SystolicOrder", "ImageLayout", "ImageIndex",
           "layout_for", "pack", "unpack", "decode_weights", "PARTS", "WEIGHT_BYTES",
           "BIAS_BYTES"]

#: The four parts of an expert, in image, fetch and consumption order.
PARTS = ("fc1_b", "fc1_w", "fc2_b", "fc2_w")
#: Bytes per stored weight (the ``weight`` format, 16 bits).
WEIGHT_BYTES = 2
#: Bytes per stored bias (the 24-bit ``bias`` format in a 32-bit word).
BIAS_BYTES = 4

_DATA_WIDTHS = (32, 64, 128, 256, 512, 1024)


def _round_up(value, align):
    return -(-value // align) * align


class WeightOrder:
    """The order in which the compute unit consumes a weight matrix and its bias.

    A subclass returns, for a matrix ``W`` of ``n × k`` (``Y = X·Wᵀ``), the flat indices
    ``n_i·k + k_i`` of the weights in stream order, with ``-1`` for a zero (padding) weight; and
    for a bias of ``n`` outputs, the output indices in stream order (``-1``: zero).
    """

    name = "abstract"

    def weights(self, n, k):
        """Flat indices into ``W`` (``n × k``) in stream order, ``-1`` for padding."""
        raise NotImplementedError

    def bias(self, n):
        """Output indices in stream order, ``-1`` for padding."""
        return np.arange(n, dtype=np.int64)

    def __eq__(self, other):
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.__dict__.items()))))

    def __repr__(self):
        return f"{type(self).__name__}()"


class RowMajorOrder(WeightOrder):
    """``W[n, k]`` row by row, ``k`` fastest (PyTorch's ``[out][in]`` layout)."""

    name = "row-major"

    def weights(self, n, k):
        return np.arange(n * k, dtype=np.int64)


class SystolicOrder(WeightOrder):
    """The weight stream of :class:`hdl.systolic.unit.ComputeUnit` (column loads).

    For each N-tile (outer) and K-tile (inner), ``cols`` words of ``rows`` weights, word ``c`` =
    ``W[n0 + c, k0 : k0 + rows]``; weights beyond ``N`` or ``K`` are zero. The bias stream is one
    word of ``cols`` biases per N-tile, ``b[n0 : n0 + cols]``, zero beyond ``N``.

    Parameters
    ----------
    rows, cols : int
        The PE array's size.
    """

    name = "systolic"

    def __init__(self, rows, cols):
        check_int("rows", rows)
        check_int("cols", cols)
        self.rows = rows
        self.cols = cols

    def weights(self, n, k):
        r, c = self.rows, self.cols
        nt, kt = -(-n // c), -(-k // r)
        ni = (np.arange(nt)[:, None, None, None] * c + np.arange(c)[None, None, :, None])
        ki = (np.arange(kt)[None, :, None, None] * r + np.arange(r)[None, None, None, :])
        ni, ki = np.broadcast_arrays(ni, ki)
        idx = np.where((ni < n) & (ki < k), ni * k + ki, -1)
        return idx.reshape(-1).astype(np.int64)

    def bias(self, n):
        c = self.cols
        i = np.arange(-(-n // c) * c)
        return np.where(i < n, i, -1).astype(np.int64)

    def __repr__(self):
        return f"SystolicOrder(rows={self.rows}, cols={self.cols})"


@dataclass(frozen=True)
class ImageLayout:
    """Geometry of the MoE weight image of one model.

    Parameters
    ----------
    num_layers : int
        MoE blocks in the model.
    num_experts : int
        Experts per block, E.
    num_tasks : int
        Tasks (one router per task per block), T.
    dim : int
        Embedding dimension D.
    hidden : int
        Expert hidden width Hd.
    data_width : int
        Bus width in bits (32 … 1024): parts are padded to whole bus words.
    order : WeightOrder
        Stream order of weights and biases (the compute unit's).
    part_align : int
        Alignment of every part, in bytes (a power of two, a multiple of the bus word).
    expert_align : int
        Alignment of every expert and layer region, in bytes (a power of two, a multiple of
        ``part_align``).
    expert_weight_bits : int
        Bits stored per expert weight, 2..16 (see the module docstring).
    """

    num_layers: int
    num_experts: int
    num_tasks: int
    dim: int
    hidden: int
    data_width: int = 128
    order: WeightOrder = field(default_factory=RowMajorOrder)
    part_align: int = 64
    expert_align: int = 4096
    expert_weight_bits: int = 8 * WEIGHT_BYTES

    def __post_init__(self):
        for name in ("num_layers", "num_experts", "num_tasks", "dim", "hidden", "part_align",
                     "expert_align"):
            check_int(name, getattr(self, name))
        check_int("expert_weight_bits", self.expert_weight_bits, 2, 8 * WEIGHT_BYTES)
        if isinstance(self.data_width, bool) or not isinstance(self.data_width, int):
            raise TypeError(f"data_width must be an integer, not {self.data_width!r}")
        if self.data_width not in _DATA_WIDTHS:
            raise ValueError(f"data_width must be one of {', '.join(map(str, _DATA_WIDTHS))}, "
                             f"not {self.data_width!r}")
        if not isinstance(self.order, WeightOrder):
            raise TypeError(f"order must be a WeightOrder, not {self.order!r}")
        for name in ("part_align", "expert_align"):
            check_pow2(name, getattr(self, name))
        if self.part_align % self.word_bytes:
            raise ValueError(f"part_align ({self.part_align}) must be a multiple of the bus word "
                             f"({self.word_bytes} bytes)")
        if self.expert_align % self.part_align:
            raise ValueError(f"expert_align ({self.expert_align}) must be a multiple of "
                             f"part_align ({self.part_align})")

    # -- sizes ------------------------------------------------------------------------------

    @property
    def word_bytes(self):
        """Bytes per bus word."""
        return self.data_width // 8

    def _shape(self, part):
        d, h = self.dim, self.hidden
        return {"fc1_w": (h, d), "fc1_b": (h,), "fc2_w": (d, h), "fc2_b": (d,),
                "router": (self.num_experts, d)}[part]

    def part_elements(self, part):
        """Stored elements of a part (``fc1_w`` … ``fc2_b`` or ``router``), padding included."""
        shape = self._shape(part)
        if len(shape) == 2:
            return len(self.order.weights(*shape))
        return len(self.order.bias(*shape))

    def element_bits(self, part):
        """Bits stored per element of a part: ``expert_weight_bits`` for the expert weights,
        16 for a router's weights, 32 for biases."""
        if part.endswith("_w"):
            return self.expert_weight_bits
        return 8 * (WEIGHT_BYTES if part == "router" else BIAS_BYTES)

    def part_words(self, part):
        """Bus words of a part (what the hardware fetches for it)."""
        return -(-self.part_elements(part) * self.element_bits(part) // self.data_width)

    def part_bytes(self, part):
        """Bytes fetched for a part: :meth:`part_words` times the bus word."""
        return self.part_words(part) * self.word_bytes

    @property
    def part_offsets(self):
        """Offset of each expert part from the start of its expert region (a dict)."""
        out, off = {}, 0
        for p in PARTS:
            out[p] = off
            off = _round_up(off + self.part_bytes(p), self.part_align)
        return out

    @property
    def expert_span(self):
        """Bytes from the start of an expert region to the end of its last part."""
        return self.part_offsets[PARTS[-1]] + self.part_bytes(PARTS[-1])

    @property
    def expert_stride(self):
        """Distance between consecutive experts (a multiple of ``expert_align``)."""
        return _round_up(self.expert_span, self.expert_align)

    @property
    def router_stride(self):
        """Distance between the routers of consecutive tasks."""
        return _round_up(self.part_bytes("router"), self.part_align)

    @property
    def routers_offset(self):
        """Offset of the routers from the start of a layer region."""
        return 0

    @property
    def experts_offset(self):
        """Offset of expert 0 from the start of a layer region."""
        return _round_up(self.num_tasks * self.router_stride, self.expert_align)

    @property
    def layer_stride(self):
        """Distance between consecutive layer regions."""
        return self.experts_offset + self.num_experts * self.expert_stride

    @property
    def total_bytes(self):
        """Bytes of the whole image (the smallest image the hardware accepts)."""
        return self.num_layers * self.layer_stride

    def bytes_for_expert(self):
        """Bytes the hardware fetches for one expert: its four parts, no padding between."""
        return sum(self.part_bytes(p) for p in PARTS)

    def bytes_for_router(self):
        """Bytes the hardware fetches for one task's router of one layer."""
        return self.part_bytes("router")

    # -- addresses --------------------------------------------------------------------------

    def _check_index(self, name, value, limit):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, not {value!r}")
        if not 0 <= value < limit:
            raise ValueError(f"{name} {value} is out of range 0..{limit - 1}")

    def layer_offset(self, layer):
        """Offset of the region of MoE layer ``layer`` (0 = the first MoE block)."""
        self._check_index("layer", layer, self.num_layers)
        return int(layer) * self.layer_stride

    def router_offset(self, layer, task):
        """Offset of task ``task``'s router in layer ``layer``."""
        self._check_index("task", task, self.num_tasks)
        return self.layer_offset(layer) + self.routers_offset + int(task) * self.router_stride

    def expert_offset(self, layer, expert):
        """Offset of expert ``expert``'s region in layer ``layer``."""
        self._check_index("expert", expert, self.num_experts)
        return self.layer_offset(layer) + self.experts_offset + int(expert) * self.expert_stride

    def part_offset(self, layer, expert, part):
        """Offset of one part of one expert."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, not {part!r}")
        return self.expert_offset(layer, expert) + self.part_offsets[part]

    def check_image(self, image):
        """Raise ``ValueError`` unless ``image`` (bytes-like) holds at least
        :attr:`total_bytes`."""
        n = len(image)
        if n < self.total_bytes:
            raise ValueError(f"the weight image has {n} bytes; the layout needs "
                             f"{self.total_bytes} ({self.num_layers} MoE layers × "
                             f"{self.layer_stride} bytes)")


def layout_for(cfg, data_width=128, order=None, **kwargs):
    """The :class:`ImageLayout` of a :class:`golden.config.ModelConfig`."""
    return ImageLayout(num_layers=len(cfg.moe_blocks), num_experts=cfg.num_experts,
                       num_tasks=cfg.num_tasks, dim=cfg.dim, hidden=cfg.expert_hidden,
                       data_width=data_width, order=order or RowMajorOrder(), **kwargs)


@dataclass(frozen=True)
class ImageIndex:
    """Where everything is in a packed image.

    Attributes
    ----------
    layout : ImageLayout
    blocks : tuple of int
        The model block index of each MoE layer.
    routers : dict
        ``(layer, task) -> (offset, nbytes)``.
    parts : dict
        ``(layer, expert, part) -> (offset, nbytes)``.
    """

    layout: ImageLayout
    blocks: tuple
    routers: dict
    parts: dict

    def bytes_for_expert(self, layer=0, expert=0):
        """Bytes fetched for one expert (the same for every expert of a model)."""
        return sum(self.parts[layer, expert, p][1] for p in PARTS)

    @property
    def total_bytes(self):
        """Size of the image."""
        return self.layout.total_bytes


def _to_elems(mat_or_vec, idx):
    flat = np.asarray(mat_or_vec, dtype=np.int64).reshape(-1)
    out = np.zeros(len(idx), dtype=np.int64)
    sel = idx >= 0
    out[sel] = flat[idx[sel]]
    return out


def _check_range(name, a, bits):
    a = np.asarray(a)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if a.size and (a.min() < lo or a.max() > hi):
        raise ValueError(f"{name} holds values outside {bits}-bit two's complement "
                         f"([{a.min()}, {a.max()}])")


def _put(buf, offset, elems, dtype):
    raw = np.asarray(elems, dtype=np.int64).astype(dtype).tobytes()
    buf[offset:offset + len(raw)] = raw


def _put_bits(buf, offset, elems, bits):
    """Store ``elems`` as ``bits``-bit two's complement fields, back to back, LSB first."""
    v = np.asarray(elems, dtype=np.int64) & ((1 << bits) - 1)
    string = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    raw = np.packbits(string, bitorder="little").tobytes()
    buf[offset:offset + len(raw)] = raw


def decode_weights(raw, count, bits):
    """``count`` weights stored in ``bits`` bits each at the start of ``raw`` (bytes-like), as
    16-bit ``weight`` integers (the inverse of what :func:`pack` stores for a part)."""
    b = np.frombuffer(raw, dtype=np.uint8, count=-(-count * bits // 8))
    string = np.unpackbits(b, bitorder="little")[:count * bits].reshape(count, bits)
    v = (string.astype(np.int64) << np.arange(bits)).sum(axis=1)
    return np.where(v >> (bits - 1), v - (1 << bits), v) << (8 * WEIGHT_BYTES - bits)


def pack(quantized_model, data_width=128, *, order=None, **layout_kwargs):
    """Pack the MoE weights of a quantised model into one DDR image.

    Parameters
    ----------
    quantized_model : golden.twin.QuantizedModel
        (anything with ``cfg`` and ``params``): per MoE block ``i``, ``blocks.{i}.w1`` (E, Hd,
        D), ``b1`` (E, Hd), ``w2`` (E, D, Hd), ``b2`` (E, D) and ``gate`` (T, E, D).
    data_width : int
        Bus width in bits.
    order : WeightOrder or None
        The compute unit's stream order (default :class:`RowMajorOrder`).
    **layout_kwargs
        ``part_align``, ``expert_align``, ``expert_weight_bits`` (see :class:`ImageLayout`;
        the last defaults to the model's ``numerics.expert_weight_bits``, or 16).

    Returns
    -------
    (bytes, ImageIndex)

    Raises ``ValueError`` for a parameter of the wrong shape, a value outside its field, or an
    expert weight that the layout's ``expert_weight_bits`` cannot hold (nonzero low bits).
    """
    cfg = quantized_model.cfg
    params = quantized_model.params
    nx = getattr(quantized_model, "numerics", None)
    layout_kwargs.setdefault("expert_weight_bits",
                             nx.expert_weight_bits if nx is not None else 8 * WEIGHT_BYTES)
    layout = layout_for(cfg, data_width, order, **layout_kwargs)
    shift = 8 * WEIGHT_BYTES - layout.expert_weight_bits
    wbits = nx.weight.width if nx is not None else 16
    bbits = nx.bias.width if nx is not None else 24
    if wbits > 8 * WEIGHT_BYTES or bbits > 8 * BIAS_BYTES:
        raise ValueError(f"weights ({wbits} bits) or biases ({bbits} bits) do not fit the "
                         f"image's {8 * WEIGHT_BYTES}/{8 * BIAS_BYTES}-bit fields")
    buf = bytearray(layout.total_bytes)
    od = layout.order
    d, h, E, T = layout.dim, layout.hidden, layout.num_experts, layout.num_tasks
    routers, parts = {}, {}
    for layer, blk in enumerate(cfg.moe_blocks):
        b = f"blocks.{blk}."
        arrays = {"fc1_w": (params[b + "w1"], (E, h, d)), "fc1_b": (params[b + "b1"], (E, h)),
                  "fc2_w": (params[b + "w2"], (E, d, h)), "fc2_b": (params[b + "b2"], (E, d)),
                  "gate": (params[b + "gate"], (T, E, d))}
        keys = {"fc1_w": "w1", "fc1_b": "b1", "fc2_w": "w2", "fc2_b": "b2", "gate": "gate"}
        for name, (a, shape) in arrays.items():
            if np.shape(a) != shape:
                raise ValueError(f"{b}{keys[name]} has shape {np.shape(a)}, expected {shape}")
            _check_range(b + keys[name], a, bbits if name.endswith("_b") else wbits)
            if name in ("fc1_w", "fc2_w") and np.any(np.asarray(a) & ((1 << shift) - 1)):
                raise ValueError(
                    f"{b}{keys[name]} has expert weights with nonzero low {shift} bits: the "
                    f"image stores {layout.expert_weight_bits} bits of each (quantise them with "
                    f"golden.twin.quantize_expert_weight)")
        for t in range(T):
            off = layout.router_offset(layer, t)
            elems = _to_elems(params[b + "gate"][t], od.weights(E, d))
            _put(buf, off, elems, "<i2")
            routers[layer, t] = (off, layout.part_bytes("router"))
        for e in range(E):
            for p in PARTS:
                off = layout.part_offset(layer, e, p)
                a = arrays[p][0][e]
                if p.endswith("_w"):
                    elems = _to_elems(a, od.weights(*layout._shape(p)))
                    _put_bits(buf, off, elems >> shift, layout.expert_weight_bits)
                else:
                    elems = _to_elems(a, od.bias(*layout._shape(p)))
                    _put(buf, off, elems, "<i4")
                parts[layer, e, p] = (off, layout.part_bytes(p))
    index = ImageIndex(layout, tuple(cfg.moe_blocks), routers, parts)
    return bytes(buf), index


def _from_elems(elems, idx, size):
    out = np.zeros(size, dtype=np.int64)
    sel = idx >= 0
    out[idx[sel]] = elems[sel]
    return out


def unpack(image, index):
    """Read the parameters back from an image: the inverse of :func:`pack`.

    Returns a dict ``blocks.{i}.w1``, ``b1``, ``w2``, ``b2``, ``gate`` of int64 arrays. Raises
    ``ValueError`` if the image is smaller than the layout needs.
    """
    layout = index.layout
    layout.check_image(image)
    raw = memoryview(bytes(image))       # slices below are views, not copies
    od = layout.order
    d, E, T = layout.dim, layout.num_experts, layout.num_tasks
    out = {}

    def read(off, count, dtype):
        return np.frombuffer(raw, dtype=dtype, count=count, offset=off).astype(np.int64)

    for layer, blk in enumerate(index.blocks):
        b = f"blocks.{blk}."
        gate = np.zeros((T, E, d), dtype=np.int64)
        widx = od.weights(E, d)
        for t in range(T):
            off, _ = index.routers[layer, t]
            gate[t] = _from_elems(read(off, len(widx), "<i2"), widx, E * d).reshape(E, d)
        out[b + "gate"] = gate
        for p, key in (("fc1_w", "w1"), ("fc1_b", "b1"), ("fc2_w", "w2"), ("fc2_b", "b2")):
            shape = layout._shape(p)
            arr = np.zeros((E,) + shape, dtype=np.int64)
            for e in range(E):
                off, _ = index.parts[layer, e, p]
                if p.endswith("_w"):
                    idx = od.weights(*shape)
                    elems = decode_weights(raw[off:], len(idx), layout.expert_weight_bits)
                    arr[e] = _from_elems(elems, idx, shape[0] * shape[1]).reshape(shape)
                else:
                    idx = od.bias(*shape)
                    arr[e] = _from_elems(read(off, len(idx), "<i4"), idx, shape[0])
            out[b + key] = arr
    return out
