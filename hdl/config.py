# SPDX-License-Identifier: BSD-2-Clause
"""Accelerator configurations: :class:`AccelConfig` and the named presets.

An :class:`AccelConfig` composes the sub-configurations of the blocks (the compute unit's
:class:`~hdl.systolic.config.ComputeConfig`, the LayerNorm and softmax units', the MoE layer
engine's) with the memory interface (AXI ports and widths) and the clock, and derives the
register map (:attr:`AccelConfig.regmap`). Presets:

``"zcu104"``
    The ZCU104 build: a 32 × 32 array (1024 DSP48E2 MACs), an 8192-word activation buffer that
    holds every token matrix of m3vit-tiny on chip, four 128-bit AXI masters (one per PS HP
    port; the parameter stream reads ports 1 and 2 at once, 32 bytes per cycle), 300 MHz. Its
    maxima are m3vit-small's (products of K and N up to 1536, LayerNorm rows of 384, softmax
    rows of 1025, the MoE engine at its D 384, hidden 768 and five tasks, with a 640 KiB ring
    for the expert weights), so it runs micro, m3vit-tiny (on chip) and m3vit-small (its 1025
    tokens in tiles through DDR) without re-elaboration.
``"small"``
    A 16 × 4 array (tall, so that the patch embedding's few rows are not weight-load bound),
    maxima that cover the ``micro`` model, two AXI masters: a whole micro frame in the
    pure-Python simulator (about 7300 cycles).

Why 32 × 32 and not more PEs: the MoE layer engine (:mod:`hdl.moe.layer`) needs power-of-two
array sides, so the next size up is 64 × 32 = 2048 DSP48E2, more than the XCZU7EV's 1728 (and
48 × 32 would make the activation-buffer word 96 elements, which heads of 64 do not fill). The
two-port parameter stream would keep a 64 × 32 array fed (docs/accelerator.md, "Why not 0.9 M
cycles").
"""

import dataclasses
from dataclasses import dataclass

from golden.config import ModelConfig, get_config

from ._checks import check_int, check_pow2
from .nonlin.config import LayerNormConfig, SoftmaxConfig
from .regmap import DEFAULT_COUNTERS, accelerator_regmap
from .systolic.config import ArrayConfig, ComputeConfig

__all__ = ["COUNTERS", "AccelConfig", "ACCEL_PRESETS", "get_accel_config"]

#: The accelerator's 64-bit counters (``0x100`` onwards): the register map's defaults plus
#: the ones the frame bench needs.
COUNTERS = DEFAULT_COUNTERS + (
    ("compute_busy", "Cycles the compute unit was running a command (MATMUL or inside MOE)."),
    ("moe_cycles", "Cycles spent in MOE instructions."),
    ("stall_program", "Cycles the sequencer waited for the next instruction from DDR."),
    ("instructions", "Instructions executed."),
)

_DATA_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class AccelConfig:
    """Configuration of :class:`hdl.top.Accelerator`.

    Parameters
    ----------
    compute : ComputeConfig
        The compute unit (array, maxima, activation buffer, GELU). Its array sides must be
        powers of two (the MoE engine), its elements 16 bits wide, and it must have the GELU.
    model : str or golden.config.ModelConfig
        The model whose MoE blocks set the MoE layer engine's maxima (widths, experts, top-k,
        tasks, MoE blocks, and its tokens up to ``compute.max_m`` a pass:
        :class:`hdl.moe.layer.MoELayerConfig`); a model whose MoE shape lies within them runs
        on the same hardware (the ``MOE`` instruction carries its shape). Dense layers,
        attention and LayerNorm are programmed at run time within the compute unit's maxima.
    ln_lanes : int
        Elements per cycle of the LayerNorm unit (a power of two, at least 4).
    ln_max_len : int or None
        Longest LayerNorm row (default: the model's ``dim``).
    softmax_max_len : int or None
        Longest softmax row (default: ``compute.max_m``, the most tokens). The one softmax unit
        serves the attention rows and the MoE router's (rows of ``num_experts`` logits).
    axi_ports : int
        AXI4 masters ``m_axi_0 … m_axi_{axi_ports−1}``, 1..4 (one per PS HP port). Port 0
        carries the program; LOAD and STORE are spread over ``load_ports`` / ``store_ports`` of
        them from port 0 on; the parameter stream reads
        ``stream_ports`` of the others (from port 0 on when there are not enough others); the MoE
        engine's DMA uses ``moe_ports`` of them.
    stream_ports : int or None
        Ports the parameter stream reads at once, 1, 2 or 4 (at most ``axi_ports``): the stream
        is stored as that many interleaved sub-streams (:mod:`hdl.isa`), one per port, and the
        unpacker takes one bus word of each per cycle, ``stream_ports`` bus words per cycle in
        all. ``None``: the largest power of two not above the ports other than port 0 (all the
        ports when there are at most two).
    axi_data_width : int
        AXI data width (64, 128, 256 or 512; the ZCU104's HP ports are 128 bits).
    axi_addr_width : int
        AXI byte address width, 32..64 (40 on the ZCU104).
    axi_id_width : int
        AXI ID width (enough for the masters sharing a port: 2 + 1 bits at least).
    ctrl_addr_width : int
        Byte address width of the AXI4-Lite control port (12: 4 KiB).
    clock_mhz : float
        Nominal clock, for the ``hw_clock_khz`` register and the benches.
    max_burst_beats, max_outstanding : int
        AXI burst length limit and bursts in flight per read master.
    weight_fifo_words : int
        Weight words queued between the parameter stream and the compute unit (prefetch; the
        queue holds ``weight_fifo_words / load_words`` transfers of the unit's ``w`` stream).
        In the Yosys estimate up to 64 transfers map to LUT RAM; more take block RAM by the
        width of a transfer (a 1024-bit transfer: 14.5 BRAM36 at any depth up to 512).
    watchdog_cycles : int
        An instruction that runs longer than this stops the frame with a program error, and a
        drain after an abort longer than this resets the datapath anyway (never hang).
    moe_weight_bytes : int or None
        Bytes of the MoE engine's expert-weight ring
        (:attr:`hdl.moe.layer.MoELayerConfig.weight_buffer_bytes`): at least the largest half
        expert of ``model``; the fetch runs as far ahead of the experts' products as it holds.
        ``None``: two of ``model``'s experts.
    """

    compute: ComputeConfig
    model: object = "micro"
    ln_lanes: int = 8
    ln_max_len: int = None
    softmax_max_len: int = None
    axi_ports: int = 1
    stream_ports: int = None
    axi_data_width: int = 128
    axi_addr_width: int = 40
    axi_id_width: int = 4
    ctrl_addr_width: int = 12
    clock_mhz: float = 300.0
    max_burst_beats: int = 16
    max_outstanding: int = 8
    weight_fifo_words: int = 64
    watchdog_cycles: int = 1 << 22
    moe_weight_bytes: int = None

    def __post_init__(self):
        if not isinstance(self.compute, ComputeConfig):
            raise TypeError(f"compute must be a ComputeConfig, not {self.compute!r}")
        if isinstance(self.model, str):
            object.__setattr__(self, "model", get_config(self.model))
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model must be a model name or a ModelConfig, not {self.model!r}")
        a = self.compute.array
        check_pow2("compute.array.rows", a.rows)
        check_pow2("compute.array.cols", a.cols)
        if a.elem_bits != 16:
            raise ValueError(f"the activation buffer's elements must be 16 bits wide (DDR "
                             f"copies move 16-bit elements), not {a.elem_bits}")
        if not self.compute.gelu:
            raise ValueError("the compute unit must have the GELU (ComputeConfig(gelu=True))")
        check_int("ln_lanes", self.ln_lanes, 4)
        check_pow2("ln_lanes", self.ln_lanes)
        for name, default in (("ln_max_len", self.model.dim),
                              ("softmax_max_len", self.compute.max_m)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            check_int(name, getattr(self, name))
        check_int("axi_ports", self.axi_ports, 1, 4)
        if self.stream_ports is None:
            others = self.axi_ports - 1 if self.axi_ports > 2 else self.axi_ports
            object.__setattr__(self, "stream_ports", 1 << (others.bit_length() - 1))
        check_int("stream_ports", self.stream_ports, 1, self.axi_ports)
        check_pow2("stream_ports", self.stream_ports)
        if self.axi_data_width not in _DATA_WIDTHS:
            raise ValueError(f"axi_data_width must be one of "
                             f"{', '.join(map(str, _DATA_WIDTHS))}, not {self.axi_data_width!r}")
        check_int("axi_addr_width", self.axi_addr_width, 32, 64)
        check_int("axi_id_width", self.axi_id_width, 1, 32)
        if self.axi_id_width < 1 + self.port_masters_bits:
            raise ValueError(f"axi_id_width ({self.axi_id_width}) must be at least "
                             f"{1 + self.port_masters_bits}: {self.port_masters} read masters "
                             f"share port 0")
        check_int("ctrl_addr_width", self.ctrl_addr_width, 9, 32)
        if isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float)) \
                or not self.clock_mhz > 0:
            raise ValueError(f"clock_mhz must be a positive number, not {self.clock_mhz!r}")
        check_int("max_burst_beats", self.max_burst_beats, 1, 256)
        check_int("max_outstanding", self.max_outstanding)
        check_int("weight_fifo_words", self.weight_fifo_words, 2)
        check_int("watchdog_cycles", self.watchdog_cycles, 1024)
        if self.moe_weight_bytes is not None:
            check_int("moe_weight_bytes", self.moe_weight_bytes)
        L = a.buffer_lanes
        for name, lanes in (("the softmax", self.numerics.softmax_lanes),
                            ("the LayerNorm", self.ln_lanes)):
            if L % lanes and lanes % L:
                raise ValueError(f"the activation buffer's {L} lanes and {name}'s {lanes} lanes "
                                 f"must divide one another")
        dw = self.axi_data_width
        for what, bits in (("an abuf word", L * 16), ("a weight word", a.rows * 16),
                           ("a bias word", a.cols * 32), ("a LayerNorm parameter beat",
                                                          self.ln_lanes * 32)):
            if bits % dw and dw % bits:
                raise ValueError(f"{what} ({bits} bits) and the {dw}-bit bus must divide one "
                                 f"another")
            sw = self.stream_bits
            if what != "an abuf word" and bits % sw and sw % bits:
                raise ValueError(f"{what} ({bits} bits) and the parameter stream's "
                                 f"{sw}-bit words ({self.stream_ports} ports × {dw} bits) must "
                                 f"divide one another")
        mdl = self.model
        if self.softmax_max_len < mdl.num_experts:
            raise ValueError(f"softmax_max_len ({self.softmax_max_len}) must be at least the "
                             f"model's {mdl.num_experts} experts: one softmax unit serves the "
                             f"attention rows and the router's")
        # Building the sub-configurations validates them.
        self.layernorm
        self.softmax
        self.moe

    # -- derived ------------------------------------------------------------------------------

    @property
    def numerics(self):
        """The :class:`golden.numerics.Numerics` of the compute unit."""
        return self.compute.numerics

    @property
    def lanes(self):
        """Elements per activation-buffer word (``lcm(rows, cols)``)."""
        return self.compute.array.buffer_lanes

    @property
    def n_pes(self):
        """Processing elements (DSP48E2 MACs) of the array."""
        return self.compute.array.n_pes

    @property
    def layernorm(self):
        """The :class:`~hdl.nonlin.config.LayerNormConfig` of the LayerNorm unit."""
        return LayerNormConfig(self.numerics, lanes=self.ln_lanes, max_len=self.ln_max_len)

    @property
    def softmax(self):
        """The :class:`~hdl.nonlin.config.SoftmaxConfig` of the attention softmax unit."""
        return SoftmaxConfig(self.numerics, max_len=self.softmax_max_len)

    @property
    def moe_ports(self):
        """AXI read ports of the MoE engine's DMA: the largest of 1, 2, 4 not above
        ``axi_ports``."""
        p = 1
        while p * 2 <= self.axi_ports:
            p *= 2
        return p

    def moe_for(self, cfg, tokens=None):
        """The :class:`~hdl.moe.layer.MoELayerConfig` of a model's own MoE shape on this
        configuration's compute unit and ports (the engine is :attr:`moe`, built for the
        largest; this one sizes the model's image, buffer rows and cycle formulas), with
        ``tokens`` per pass (default all: see :attr:`hdl.compiler.CompiledModel.moe_tokens`).
        Raises ``ValueError`` when the shape is not within :attr:`moe`'s."""
        from .moe.layer import MoELayerConfig
        self.moe.check_model(cfg, tokens)
        return MoELayerConfig.for_model(cfg, self.compute, tokens=tokens,
                                        data_width=self.axi_data_width,
                                        ports=self.moe_ports, addr_width=self.axi_addr_width,
                                        max_burst_beats=self.max_burst_beats,
                                        max_outstanding=self.max_outstanding,
                                        weight_buffer_bytes=self.moe_weight_bytes)

    @property
    def load_ports(self):
        """AXI read ports a LOAD is spread over (:class:`hdl.engines.LoadEngine`): like the MoE
        DMA, the largest of 1, 2, 4 not above ``axi_ports``."""
        return self.moe_ports

    @property
    def store_ports(self):
        """AXI ports a STORE writes through at once (:class:`hdl.engines.StoreEngine`), ports
        ``0 … store_ports − 1``: like a LOAD, the largest of 1, 2, 4 not above ``axi_ports``."""
        return self.moe_ports

    @property
    def moe(self):
        """The :class:`~hdl.moe.layer.MoELayerConfig` of the MoE layer engine."""
        from .moe.layer import MoELayerConfig
        return MoELayerConfig.for_model(self.model, self.compute,
                                        tokens=min(self.model.tokens, self.compute.max_m),
                                        data_width=self.axi_data_width,
                                        ports=self.moe_ports, addr_width=self.axi_addr_width,
                                        max_burst_beats=self.max_burst_beats,
                                        max_outstanding=self.max_outstanding,
                                        weight_buffer_bytes=self.moe_weight_bytes)

    @property
    def param_ports(self):
        """Ports of the parameter stream's sub-streams, ``stream_ports`` of them: ``1, 2, …``
        when there are enough ports besides port 0 (which carries the program, the activations
        and the results), ``0, 1, …`` otherwise."""
        first = 1 if self.axi_ports > self.stream_ports else 0
        return tuple(range(first, first + self.stream_ports))

    @property
    def stream_bits(self):
        """Bits the parameter stream delivers per cycle at most: one bus word per port."""
        return self.stream_ports * self.axi_data_width

    @property
    def port_masters(self):
        """Read masters sharing port 0 (the most of any port): program, LOAD, MoE port 0, and the
        parameter stream when it uses port 0. (Another port has at most a LOAD piece, an MoE
        DMA port and a parameter sub-stream.)"""
        return 3 + (0 in self.param_ports)

    @property
    def port_masters_bits(self):
        """ID bits that tell the read masters of one port apart."""
        return max(self.port_masters - 1, 1).bit_length()

    @property
    def beat_bytes(self):
        """Bytes per AXI beat."""
        return self.axi_data_width // 8

    @property
    def regmap(self):
        """The register map (:func:`hdl.regmap.accelerator_regmap`) with this configuration's
        read-back constants and :data:`COUNTERS`."""
        a, mdl = self.compute.array, self.model
        return accelerator_regmap(
            axi_ports=self.axi_ports, counters=COUNTERS, array_rows=a.rows, array_cols=a.cols,
            max_tokens=self.compute.max_m, embed_dim=self.ln_max_len,
            num_experts=mdl.num_experts, top_k=mdl.top_k, num_tasks=mdl.num_tasks,
            axi_data_width=self.axi_data_width, clock_khz=round(self.clock_mhz * 1000),
            addr_width=self.ctrl_addr_width)

    def replace(self, **changes):
        """A copy with ``changes`` (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)


ACCEL_PRESETS = {
    "zcu104": AccelConfig(
        ComputeConfig(ArrayConfig(32, 32, load_words=2), max_m=256, max_k=1536, max_n=1536,
                      abuf_depth=8192, gelu=True),
        model="m3vit-small", ln_lanes=32, softmax_max_len=1025, axi_ports=4,
        weight_fifo_words=128, moe_weight_bytes=640 * 1024),
    "small": AccelConfig(
        ComputeConfig(ArrayConfig(16, 4, load_words=2), max_m=8, max_k=768, max_n=128,
                      abuf_depth=256, gelu=True),
        model="micro", ln_lanes=8, axi_ports=2, weight_fifo_words=16,
        watchdog_cycles=1 << 16),
}


def get_accel_config(name):
    """Return the preset called ``name`` (an :class:`AccelConfig` passes through), or raise
    ``ValueError`` naming the known ones."""
    if isinstance(name, AccelConfig):
        return name
    try:
        return ACCEL_PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown accelerator configuration {name!r}; known: "
                         f"{', '.join(sorted(ACCEL_PRESETS))}") from None
