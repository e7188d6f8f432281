# SPDX-License-Identifier: BSD-2-Clause
"""The one place that names the fixed-point format of every tensor in the accelerator.

The formats were chosen by the numerics study (``python -m golden report``; the README has the
table). Every hardware block takes its widths from a :class:`Numerics` object and must equal the
integer twin in :mod:`golden.qref` bit for bit.

================  ==========  =====================================================================
tensor            format      where
================  ==========  =====================================================================
``pixel``         SQ(4,12)    the normalised input image (patch-embedding operand)
``weight``        SQ(2,14)    every linear weight: patch embed, qkv, proj, fc1/fc2, experts, router
``bias``          SQ(8,16)    every bias, added exactly into the accumulator (24 bits)
``act``           SQ(7,9)     the residual stream, pos/cls embeddings, attention output
``ln_out``        SQ(5,11)    LayerNorm outputs (operands of qkv, fc1, experts, router)
``ln_param``      SQ(6,10)    LayerNorm gain and bias
``qkv``           SQ(7,9)     queries, keys and values
``score``         SQ(9,7)     raw attention scores q·kᵀ, before the head_dim**-0.5 scale
``prob``          SQ(1,15)    softmax outputs: attention probabilities and router scores
``hidden``        SQ(5,11)    MLP and expert hidden layer, before and after GELU
``logit``         SQ(6,10)    router logits
``acc``           48 bits     the compute unit's accumulator; exact for K ≤ 2**16 (16×16-bit)
================  ==========  =====================================================================

Expert weights (fc1/fc2 of the MoE experts) are ``weight`` values on a coarser grid: rounded to
``expert_weight_bits`` = 14 bits (SQ(2,12), multiples of 2**-12), so that the DDR image stores
them in 14 bits instead of 16 (:mod:`hdl.moe.layout`), an eighth less of the MoE layers'
DDR traffic, which bounds them. They stay SQ(2,14) integers (with two zero low bits) in the
twin and on the compute unit, so no product changes. The routers keep the full ``weight``.

Every matrix operand is at most 16 bits, so one MAC maps onto one DSP48E2 (27×18). Two MACs per
DSP (the INT8 packing of Xilinx WP486) needs 8-bit operands; these formats do not allow it.
"""

from dataclasses import dataclass, fields

from .fixed import SQ, QFormat

__all__ = ["Numerics", "DEFAULT_NUMERICS", "MANTISSA_FRAC"]

#: Fractional bits of the mantissa that the reciprocal and rsqrt (the softmax's and the
#: LayerNorm's) normalise their input to, in [1, 2) or [1, 4): fixed by the table-plus-Newton
#: datapath, not a setting (:func:`golden.qref.reciprocal`, :func:`golden.qref.rsqrt`).
MANTISSA_FRAC = 24

# The matrix products of the model, as (X operand, W operand) formats.
_PRODUCTS = (("pixel", "weight"), ("ln_out", "weight"), ("act", "weight"), ("hidden", "weight"),
             ("qkv", "qkv"), ("prob", "qkv"))
# Those that add a bias (the attention products Q·Kᵀ and A·V have none).
_PRODUCTS_WITH_BIAS = _PRODUCTS[:4]

_FORMAT_FIELDS = ("pixel", "weight", "bias", "act", "ln_out", "ln_param", "qkv", "score",
                  "prob", "hidden", "logit")


@dataclass(frozen=True)
class Numerics:
    """Formats of every tensor, and the parameters of the nonlinear approximations.

    Parameters
    ----------
    pixel, weight, bias, act, ln_out, ln_param, qkv, score, prob, hidden, logit : QFormat
        See the module table.
    acc_bits : int
        Accumulator width of the compute unit.
    operand_bits : int
        Widest matrix operand the compute unit takes (DSP48E2: 27 × 18; both operands ≤ 18).
    softmax_lanes : int
        Elements the softmax unit consumes per cycle. The running sum is rescaled once per group
        of ``softmax_lanes`` elements, so this is part of the numerics (see
        :func:`golden.qref.softmax`).
    softmax_logit_frac : int
        Fractional bits of the base-2 logits ``t = s · scale · log2(e)``.
    softmax_scale_frac : int
        Fractional bits of the constant ``scale · log2(e)``.
    exp_frac : int
        Fractional bits of the two 2**-u tables, of the exponentials and of the running sum.
    exp_table_bits : int
        Address bits of each of the two exponential tables (the 2**-u fraction is split in two).
    recip_table_bits : int
        Address bits of the reciprocal seed table (one Newton step follows).
    recip_frac : int
        Fractional bits of the reciprocal.
    gelu_step_bits : int
        The GELU δ table samples at a step of 2**-gelu_step_bits.
    gelu_range : int
        The GELU δ table covers |x| < gelu_range; beyond it GELU(x) = ReLU(x).
    gelu_frac : int
        Fractional bits of the GELU δ table entries.
    rsqrt_table_bits : int
        Address bits of the rsqrt seed table over [1, 4) (one Newton step follows).
    rsqrt_frac : int
        Fractional bits of the rsqrt result.
    ln_xhat_frac : int
        Fractional bits of the normalised LayerNorm value before the gain.
    expert_weight_bits : int
        Significant bits of an expert weight (fc1/fc2 of the MoE experts), at least
        ``weight.i_bits + 1`` and at most ``weight.width``: the experts' weights are rounded to
        :attr:`expert_weight_format` and kept in ``weight``, their low
        :attr:`expert_weight_shift` bits zero (:func:`golden.twin.quantize_expert_weight`).
    """

    pixel: QFormat = SQ(4, 12)
    weight: QFormat = SQ(2, 14)
    bias: QFormat = SQ(8, 16)
    act: QFormat = SQ(7, 9)
    ln_out: QFormat = SQ(5, 11)
    ln_param: QFormat = SQ(6, 10)
    qkv: QFormat = SQ(7, 9)
    score: QFormat = SQ(9, 7)
    prob: QFormat = SQ(1, 15)
    hidden: QFormat = SQ(5, 11)
    logit: QFormat = SQ(6, 10)
    acc_bits: int = 48
    operand_bits: int = 18
    softmax_lanes: int = 16
    softmax_logit_frac: int = 16
    softmax_scale_frac: int = 20
    exp_frac: int = 18
    exp_table_bits: int = 8
    recip_table_bits: int = 8
    recip_frac: int = 20
    gelu_step_bits: int = 6
    gelu_range: int = 8
    gelu_frac: int = 20
    rsqrt_table_bits: int = 7
    rsqrt_frac: int = 20
    ln_xhat_frac: int = 16
    expert_weight_bits: int = 14

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _FORMAT_FIELDS:
                if not isinstance(v, QFormat):
                    raise TypeError(f"{f.name} must be a QFormat, not {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise TypeError(f"{f.name} must be a positive integer, not {v!r}")
        for name in ("pixel", "weight", "act", "ln_out", "qkv", "prob", "hidden"):
            fmt = getattr(self, name)
            if fmt.width > self.operand_bits:
                raise ValueError(f"{name} format {fmt} is {fmt.width} bits wide; matrix operands "
                                 f"are at most {self.operand_bits} bits (one DSP48E2 per MAC)")
        if self.operand_bits > 18:
            raise ValueError(f"operand_bits must be at most 18 (DSP48E2 B port), "
                             f"not {self.operand_bits}")
        for x, w in _PRODUCTS:
            fx, fw = getattr(self, x), getattr(self, w)
            if fx.width + fw.width - 1 + 16 > self.acc_bits:
                raise ValueError(f"acc_bits ({self.acc_bits}) cannot hold a sum of 2**16 "
                                 f"products {x}·{w} ({fx.width + fw.width - 1 + 16} bits)")
        for x, w in _PRODUCTS_WITH_BIAS:
            fx, fw = getattr(self, x).f_bits, getattr(self, w).f_bits
            if fx + fw < self.bias.f_bits:
                raise ValueError(f"the accumulator of {x}·{w} has {fx + fw} fractional bits, "
                                 f"fewer than the bias format {self.bias}")
        if self.hidden.f_bits < self.gelu_step_bits:
            raise ValueError(f"the GELU table step 2**-{self.gelu_step_bits} is finer than the "
                             f"hidden format {self.hidden}")
        if self.prob.max_int < (1 << self.prob.f_bits) - 1:
            raise ValueError(f"prob format {self.prob} cannot hold probabilities near 1")
        if not self.weight.i_bits < self.expert_weight_bits <= self.weight.width:
            raise ValueError(f"expert_weight_bits ({self.expert_weight_bits}) must lie in "
                             f"{self.weight.i_bits + 1}..{self.weight.width}: the weight format "
                             f"{self.weight} with fewer fractional bits")
        if self.softmax_logit_frac < self.exp_table_bits:
            raise ValueError("softmax_logit_frac must be at least exp_table_bits")
        if self.softmax_logit_frac > 2 * self.exp_table_bits:
            raise ValueError("softmax_logit_frac must be at most 2·exp_table_bits: the two "
                             "exponential tables cover the fraction of the base-2 logit")

    @property
    def expert_weight_format(self):
        """The grid of the experts' weights: ``weight`` with ``expert_weight_bits`` bits."""
        return SQ(self.weight.i_bits, self.expert_weight_bits - self.weight.i_bits)

    @property
    def expert_weight_shift(self):
        """Low bits of an expert weight that are zero in the ``weight`` format."""
        return self.weight.width - self.expert_weight_bits

    def formats(self):
        """Mapping of tensor name to format, in the module table's order."""
        return {name: getattr(self, name) for name in _FORMAT_FIELDS}


DEFAULT_NUMERICS = Numerics()
