# SPDX-License-Identifier: BSD-2-Clause
"""The mixture-of-experts datapath: router top-k, patch reordering, the expert-weight DMA
scheduler, the MoE layer engine and the host-side packer of the expert-weight image.

Modules
-------
:mod:`hdl.moe.layout`
    The DDR weight image of the experts and routers (host-side packer, pure NumPy).
:mod:`hdl.moe.topk`
    Streaming top-k over the router softmax's probability stream.
:mod:`hdl.moe.reorder`
    Counting sort of tokens into per-expert lists; the used experts in the balanced order.
:mod:`hdl.moe.dma`
    Expert-weight DMA scheduler: AXI4 reads into a ring of half-expert slots, prefetching the
    next experts.
:mod:`hdl.moe.geometry`
    The weight image's geometry computed in hardware from a model's MoE shape.
:mod:`hdl.moe.layer`
    The MoE layer engine joining all of the above with the compute unit and the softmax.
:mod:`hdl.moe.core`
    The engine as a stand-alone core (registers, DDR load/store of ``u`` and ``x``), for the
    Verilator back end and bring-up.
"""
