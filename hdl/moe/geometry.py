# SPDX-License-Identifier: BSD-2-Clause
"""The MoE weight image's geometry, computed in hardware from the model's shape.

:class:`Geometry` turns a model's MoE shape (layers, tasks, experts, ``dim``, ``hidden``) into
the :func:`~hdl.moe.dma.geometry_of` its :class:`~hdl.moe.layout.ImageLayout` has, so that one
MoE engine, built for the largest shape, runs any smaller model without re-elaboration: the
shape comes with each ``MOE`` instruction (:mod:`hdl.isa`), and the DMA addresses the image from
this unit's output.
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .dma import geometry_layout
from .layout import PARTS, ImageLayout, SystolicOrder

__all__ = ["Geometry", "shape_layout", "shape_of"]

_SHAPE_FIELDS = ("num_layers", "num_tasks", "num_experts", "dim", "hidden")


def shape_layout(layout):
    """Layout of a model's MoE shape within ``layout`` (the largest image): ``num_layers``,
    ``num_tasks``, ``num_experts``, ``dim`` and ``hidden``, each as wide as the largest."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    return data.StructLayout({name: range(getattr(layout, name) + 1)
                              for name in _SHAPE_FIELDS})


def shape_of(layout):
    """The shape of an :class:`ImageLayout`, as a dict for :func:`shape_layout`."""
    if not isinstance(layout, ImageLayout):
        raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
    return {name: getattr(layout, name) for name in _SHAPE_FIELDS}


def _ceil_div(value, div):
    """``ceil(value / div)`` for a power-of-two ``div``: of an ``int``, or in hardware."""
    if isinstance(value, int):
        return -(-value // div)
    return (value + (div - 1)) >> exact_log2(div)


def _round_up(value, align):
    """``value`` rounded up to a multiple of the power of two ``align``."""
    return _ceil_div(value, align) << exact_log2(align)


class Geometry(wiring.Component):
    """The geometry of the MoE weight image of a shape, in :attr:`latency` cycles.

    A feed-forward pipeline (no handshake): ``geometry`` is
    :func:`~hdl.moe.dma.geometry_of` the :class:`~hdl.moe.layout.ImageLayout` of ``shape`` (with
    ``layout``'s weight order, bus width and alignments) :attr:`latency` cycles after ``shape``
    last changed. The stages: tile counts and their products; the parts' bus words and bytes;
    the parts' offsets in an expert (each rounded up to ``part_align``) and the router stride;
    the expert stride and the experts' offset (rounded up to ``expert_align``); the layer
    stride (``num_experts`` times the expert stride past the routers); the image size
    (``num_layers`` layer strides). Four multipliers, none wider than the image size.

    The shape must lie within ``layout`` (every field at most ``layout``'s, none zero); the
    consumer checks it (:class:`hdl.moe.layer.MoELayer`), the unit does not.

    Parameters
    ----------
    layout : ImageLayout
        The largest image, in :class:`~hdl.moe.layout.SystolicOrder` (the compute unit's).

    Members
    -------
    shape : In(shape_layout(layout))
        The model's MoE shape.
    geometry : Out(hdl.moe.dma.geometry_layout(layout))
        Its image's geometry (registered).
    """

    def __init__(self, layout):
        if not isinstance(layout, ImageLayout):
            raise TypeError(f"layout must be an ImageLayout, not {layout!r}")
        if not isinstance(layout.order, SystolicOrder):
            raise ValueError(f"the image must be in the compute unit's SystolicOrder, not "
                             f"{layout.order!r}")
        tile_bits = layout.order.rows * layout.order.cols * layout.expert_weight_bits
        if tile_bits % 8:
            raise ValueError(f"a weight tile of {layout.order.rows} × {layout.order.cols} "
                             f"expert weights of {layout.expert_weight_bits} bits is not a "
                             f"whole number of bytes")
        self._layout = layout
        super().__init__({
            "shape": In(shape_layout(layout)),
            "geometry": Out(geometry_layout(layout)),
        })

    @property
    def layout(self):
        """The largest :class:`ImageLayout`."""
        return self._layout

    @property
    def latency(self):
        """Cycles from a change of ``shape`` to the matching ``geometry``."""
        return 6

    def elaborate(self, platform):
        m = Module()
        lay = self._layout
        rows, cols = lay.order.rows, lay.order.cols
        wb = lay.word_bytes
        sh, g = self.shape, self.geometry
        out_t = geometry_layout(lay)
        pw_t = out_t.members["part_words"].elem_shape

        # Stage 1: tiles of each part (weights: N-tiles × K-tiles; biases: N-tiles).
        d, h, e = sh.dim, sh.hidden, sh.num_experts
        tiles = {"fc1_b": _ceil_div(h, cols), "fc1_w": _ceil_div(h, cols) * _ceil_div(d, rows),
                 "fc2_b": _ceil_div(d, cols), "fc2_w": _ceil_div(d, cols) * _ceil_div(h, rows),
                 "router": _ceil_div(e, cols) * _ceil_div(d, rows)}
        t1 = {}
        for name, v in tiles.items():
            t1[name] = Signal(range(self._max_tiles(name) + 1), name=f"tiles_{name}")
            m.d.sync += t1[name].eq(v)

        # Stage 2: bus words and fetched bytes of each part.
        names = PARTS + ("router",)
        words = {n: Signal(pw_t, name=f"words_{n}") for n in names}
        for n in names:
            # Bytes per weight tile or per N-tile of biases (ImageLayout.element_bits each).
            elems = rows * cols if n.endswith("_w") or n == "router" else cols
            per_tile = elems * lay.element_bits(n) // 8
            m.d.sync += words[n].eq(_ceil_div(t1[n] * per_tile, wb))

        def nbytes(n):
            return words[n] << exact_log2(wb)

        # Stage 3: the parts' offsets in an expert region, the span, the router stride.
        offs = [Signal(out_t.members["part_offsets"].elem_shape, name=f"off_{x}")
                for x in PARTS]
        span = Signal(range(lay.expert_span + 1))
        router_stride = Signal(range(lay.router_stride + 1))
        o = 0
        exprs = []
        for x in PARTS:                  # chained adders within the stage (four parts)
            exprs.append(o)
            o = _round_up(o + nbytes(x), lay.part_align)
        for sig, v in zip(offs, exprs):
            m.d.sync += sig.eq(v)
        m.d.sync += [span.eq(exprs[-1] + nbytes(PARTS[-1])),
                     router_stride.eq(_round_up(nbytes("router"), lay.part_align))]

        # Stage 4: the expert stride and the experts' offset after the task routers.
        expert_stride = Signal(range(lay.expert_stride + 1))
        experts_offset = Signal(range(lay.experts_offset + 1))
        m.d.sync += [
            expert_stride.eq(_round_up(span, lay.expert_align)),
            experts_offset.eq(_round_up(sh.num_tasks * router_stride, lay.expert_align)),
        ]

        # Stage 5: the layer stride.
        layer_stride = Signal(range(lay.layer_stride + 1))
        m.d.sync += layer_stride.eq(experts_offset + sh.num_experts * expert_stride)

        # Stage 6: the image size, and every other field registered once more. (The shape is
        # held while the pipeline fills: each field is right `latency` cycles after a change.)
        m.d.sync += [
            g.total_bytes.eq(sh.num_layers * layer_stride),
            g.layer_stride.eq(layer_stride),
            g.expert_stride.eq(expert_stride),
            g.experts_offset.eq(experts_offset),
            g.router_stride.eq(router_stride),
            g.num_layers.eq(sh.num_layers),
            g.num_tasks.eq(sh.num_tasks),
            g.num_experts.eq(sh.num_experts),
        ]
        for i, n in enumerate(names):
            m.d.sync += g.part_words[i].eq(words[n])
        for i, sig in enumerate(offs):
            m.d.sync += g.part_offsets[i].eq(sig)
        return m

    def _max_tiles(self, name):
        """Tiles of part ``name`` at the largest shape."""
        lay = self._layout
        rows, cols = lay.order.rows, lay.order.cols
        n, k = {"fc1_b": (lay.hidden, 0), "fc1_w": (lay.hidden, lay.dim),
                "fc2_b": (lay.dim, 0), "fc2_w": (lay.dim, lay.hidden),
                "router": (lay.num_experts, lay.dim)}[name]
        return _ceil_div(n, cols) * (_ceil_div(k, rows) if k else 1)
