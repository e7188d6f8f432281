# SPDX-License-Identifier: BSD-2-Clause
"""Configurations of the streaming nonlinear units: frozen, validated dataclasses.

Each configuration names the numerics (:class:`golden.numerics.Numerics`) the unit must match bit
for bit, the number of lanes (elements per cycle) and the largest row it accepts, and derives
every internal width from those, with the integer bounds that justify it. Invalid parameters
raise :exc:`TypeError` or :exc:`ValueError` at construction, never later.

The bounds below are computed from the very table contents the hardware holds
(:mod:`golden.tables`), so a width is never narrower than the value it carries.
"""

import math
from dataclasses import dataclass

from golden import tables
from golden.fixed import QFormat
from golden.numerics import DEFAULT_NUMERICS, MANTISSA_FRAC, Numerics

from .._checks import check_int

__all__ = ["GeluConfig", "SoftmaxConfig", "LayerNormConfig"]


#: Words the default row buffers add to two rows: a word waits about this many cycles between a
#: row's last input beat and its second read (the units' ``row_overhead`` is below it).
ROW_SLACK_WORDS = 32

#: The DSP48E2 multiplier is 27 × 18 (two's complement): 26 × 17 bits unsigned.
DSP_A_BITS = 27
DSP_B_BITS = 18


def _numerics(value):
    if not isinstance(value, Numerics):
        raise TypeError(f"numerics must be a golden.numerics.Numerics, not {value!r}")


def _signed_format(name, fmt, *, max_width=None, why=""):
    if not isinstance(fmt, QFormat):
        raise TypeError(f"{name} must be a QFormat, not {fmt!r}")
    if not fmt.signed:
        raise ValueError(f"{name} {fmt} must be a signed format")
    if max_width is not None and fmt.width > max_width:
        raise ValueError(f"{name} {fmt} is {fmt.width} bits wide; at most {max_width} bits are "
                         f"supported{why}")


def _rne_shift(x, n):
    """Python-int twin of :func:`golden.fixed.round_shift` (scalar, any ``n``)."""
    if n <= 0:
        return x << -n
    q = x >> n
    rem = x & ((1 << n) - 1)
    half = 1 << (n - 1)
    return q + (rem > half or (rem == half and q & 1))


def _groups(length, lanes):
    return -(-length // lanes)


def _pow2_at_least(n):
    return 1 << max(n - 1, 0).bit_length()


def _msb(v):
    return v.bit_length() - 1


def _signed_bits(lo, hi):
    return max((-lo - 1).bit_length() if lo < 0 else 0, hi.bit_length()) + 1


# -- GELU ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeluConfig:
    """Configuration of :class:`hdl.nonlin.gelu.Gelu`.

    Parameters
    ----------
    numerics : Numerics
        Formats and the GELU table parameters (``gelu_step_bits``, ``gelu_range``,
        ``gelu_frac``).
    fmt : QFormat
        Input and output format (``numerics.hidden`` by default). Signed, with at least
        ``gelu_step_bits`` fractional bits (the table step must not be finer than the format).
    lanes : int
        Elements per cycle.
    """

    numerics: Numerics = DEFAULT_NUMERICS
    fmt: QFormat = None
    lanes: int = 16

    def __post_init__(self):
        _numerics(self.numerics)
        if self.fmt is None:
            object.__setattr__(self, "fmt", self.numerics.hidden)
        _signed_format("fmt", self.fmt)
        check_int("lanes", self.lanes)
        if self.fmt.f_bits < self.numerics.gelu_step_bits:
            raise ValueError(f"GELU format {self.fmt} is coarser than the table step "
                             f"2**-{self.numerics.gelu_step_bits}: the table cannot be indexed")

    @property
    def table(self):
        """The δ table, :func:`golden.tables.gelu_delta_table` (a tuple of ints)."""
        nx = self.numerics
        return tables.gelu_delta_table(nx.gelu_step_bits, nx.gelu_range, nx.gelu_frac)

    @property
    def segments(self):
        """Number of interpolation segments, ``gelu_range·2**gelu_step_bits``."""
        return self.numerics.gelu_range << self.numerics.gelu_step_bits

    @property
    def interp_bits(self):
        """Bits of ``|x|`` below the table step (the interpolation fraction)."""
        return self.fmt.f_bits - self.numerics.gelu_step_bits

    @property
    def out_shift(self):
        """Final rounding shift, ``gelu_frac − gelu_step_bits``."""
        return self.numerics.gelu_frac - self.numerics.gelu_step_bits

    @property
    def entry_bits(self):
        """Width of one (unsigned) table entry."""
        return max(max(self.table).bit_length(), 1)


# -- softmax ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoftmaxConfig:
    """Configuration of :class:`hdl.nonlin.softmax.Softmax`.

    Parameters
    ----------
    numerics : Numerics
        Formats and the softmax approximation parameters.
    lanes : int or None
        Elements per cycle. It must equal ``numerics.softmax_lanes``, because the running sum is
        rescaled once per group of that many elements (part of the numerics); ``None`` takes it.
    max_len : int
        Longest row, in elements (129, 1025 or 1201 tokens for the presets).
    in_formats : tuple of QFormat or None
        Input formats selectable at runtime (``fmt`` field of the input), by index. Signed, at
        most ``numerics.operand_bits`` (18) bits: ``s·c`` is one DSP48E2 product. Default
        ``(numerics.score, numerics.logit)``: attention scores and router logits.
    scale_bits : int
        Width of the runtime constant ``c = softmax_scale_int(scale)`` (unsigned, at most 26
        bits, the DSP48E2's 27-bit port). ``None``: ``numerics.softmax_scale_frac + 2``, which
        holds every scale below 2.77 (the router's scale is 1, attention's at most 1).
    buffer_words : int or None
        Capacity of the circular row buffer, in words of ``lanes`` elements; at least one whole
        row (``ceil(max_len/lanes)``). ``None``: the power of two at or above two rows plus
        ``ROW_SLACK_WORDS``, which lets one row be read out while the next is written (the
        ping-pong of the classic design) with room for the cycles between a row's last beat
        and its second read.
    max_rows : int
        Rows that may be in flight at once (admitted, not yet read out): the depth of the
        per-row statistics queue. Short rows (the router's E logits) need several to keep the
        pipeline full.
    """

    numerics: Numerics = DEFAULT_NUMERICS
    lanes: int = None
    max_len: int = 1201
    in_formats: tuple = None
    scale_bits: int = None
    buffer_words: int = None
    max_rows: int = 16

    #: Longest row the hardware supports at all (the widths grow with log2 of it).
    MAX_LEN_LIMIT = 1 << 16

    def __post_init__(self):
        _numerics(self.numerics)
        nx = self.numerics
        if self.lanes is None:
            object.__setattr__(self, "lanes", nx.softmax_lanes)
        check_int("lanes", self.lanes)
        if self.lanes != nx.softmax_lanes:
            raise ValueError(f"lanes ({self.lanes}) must equal numerics.softmax_lanes "
                             f"({nx.softmax_lanes}): the running sum is rescaled once per group "
                             f"of that many elements, so the lane count is part of the numerics")
        check_int("max_len", self.max_len)
        if self.max_len > self.MAX_LEN_LIMIT:
            raise ValueError(f"max_len ({self.max_len}) is above the supported maximum row "
                             f"length {self.MAX_LEN_LIMIT}")
        if self.in_formats is None:
            object.__setattr__(self, "in_formats", (nx.score, nx.logit))
        if isinstance(self.in_formats, QFormat) or not isinstance(self.in_formats, (tuple, list)):
            raise TypeError(f"in_formats must be a tuple of QFormat, not {self.in_formats!r}")
        object.__setattr__(self, "in_formats", tuple(self.in_formats))
        if not self.in_formats:
            raise ValueError("in_formats must name at least one input format")
        for k, fmt in enumerate(self.in_formats):
            _signed_format(f"in_formats[{k}]", fmt, max_width=nx.operand_bits,
                           why=" (the product s·c is one DSP48E2 multiplication)")
        if len(set(self.in_formats)) != len(self.in_formats):
            raise ValueError(f"in_formats must not repeat a format: {self.in_formats}")
        if self.scale_bits is None:
            object.__setattr__(self, "scale_bits", nx.softmax_scale_frac + 2)
        check_int("scale_bits", self.scale_bits)
        if self.scale_bits > DSP_A_BITS - 1:
            raise ValueError(f"scale_bits ({self.scale_bits}) must be at most {DSP_A_BITS - 1} "
                             f"(unsigned on the DSP48E2's {DSP_A_BITS}-bit port)")
        if self.buffer_words is None:
            object.__setattr__(self, "buffer_words",
                               _pow2_at_least(2 * self.max_groups + ROW_SLACK_WORDS))
        check_int("buffer_words", self.buffer_words)
        if self.buffer_words < self.max_groups:
            raise ValueError(f"buffer_words ({self.buffer_words}) must hold a whole row of "
                             f"max_len = {self.max_len} elements ({self.max_groups} words of "
                             f"{self.lanes})")
        check_int("max_rows", self.max_rows)
        if nx.recip_table_bits > MANTISSA_FRAC:
            raise ValueError(f"recip_table_bits ({nx.recip_table_bits}) must be at most the "
                             f"mantissa precision {MANTISSA_FRAC}")
        if self.prob_shift_range[0] < 1:
            raise ValueError("recip_frac + exp_frac − prob.f_bits must be positive: the "
                             "probability is a right shift of e·y1")

    def check_row_len(self, length):
        """Raise ``ValueError`` unless ``1 ≤ length ≤ max_len``."""
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"row length must be an integer, not {length!r}")
        if not 1 <= length <= self.max_len:
            raise ValueError(f"row length {length} is outside 1..max_len = {self.max_len}")

    @property
    def max_groups(self):
        """Words (groups of ``lanes`` elements) of the longest row."""
        return _groups(self.max_len, self.lanes)

    @property
    def in_width(self):
        """Width of an input element (the widest of ``in_formats``)."""
        return max(fmt.width for fmt in self.in_formats)

    @property
    def in_format_shifts(self):
        """Right shift of ``s·c`` to ``softmax_logit_frac`` fractional bits, per input format."""
        nx = self.numerics
        return tuple(fmt.f_bits + nx.softmax_scale_frac - nx.softmax_logit_frac
                     for fmt in self.in_formats)

    @property
    def scale_max(self):
        """Largest runtime scale constant."""
        return (1 << self.scale_bits) - 1

    @property
    def logit_range(self):
        """``(lo, hi)`` bounds of the base-2 logit ``t`` over every format and scale."""
        lo = hi = 0
        for fmt, sh in zip(self.in_formats, self.in_format_shifts):
            lo = min(lo, _rne_shift(fmt.min_int * self.scale_max, sh))
            hi = max(hi, _rne_shift(fmt.max_int * self.scale_max, sh))
        return lo, hi

    @property
    def logit_bits(self):
        """Width of the signed base-2 logit ``t`` (the row buffer holds it)."""
        return _signed_bits(*self.logit_range)

    @property
    def exp_one(self):
        """``2**0`` in the exponential's format, ``1 << exp_frac``."""
        return 1 << self.numerics.exp_frac

    @property
    def exp_bits(self):
        """Width of an exponential (unsigned, at most ``1 << exp_frac``)."""
        return self.exp_one.bit_length()

    @property
    def d_sat(self):
        """Exponent argument beyond which ``2**-d`` is 0: ``(exp_frac + 1) << logit_frac``.

        :func:`golden.qref.exp2_neg` caps the integer part at ``exp_frac + 1``, where the product
        of the two tables (at most ``2**(2·exp_frac)``) shifted right by ``2·exp_frac + 1`` rounds
        to 0 whatever the fraction; so ``d`` saturates to this value exactly.
        """
        return (self.numerics.exp_frac + 1) << self.numerics.softmax_logit_frac

    @property
    def hi_table(self):
        """The high-fraction table, :func:`golden.tables.exp2_hi_table`."""
        nx = self.numerics
        return tables.exp2_hi_table(nx.exp_table_bits, nx.exp_frac)

    @property
    def lo_table(self):
        """The low-fraction table, :func:`golden.tables.exp2_lo_table`."""
        nx = self.numerics
        return tables.exp2_lo_table(nx.softmax_logit_frac - nx.exp_table_bits,
                                    nx.softmax_logit_frac, nx.exp_frac)

    @property
    def recip_table(self):
        """The reciprocal seed table, :func:`golden.tables.recip_table`."""
        nx = self.numerics
        return tables.recip_table(nx.recip_table_bits, nx.recip_frac)

    @property
    def group_sum_max(self):
        """Largest sum of one group's exponentials."""
        return self.lanes * self.exp_one

    @property
    def acc_max(self):
        """Largest running sum: every exponential is at most 1 and rescaling never grows it."""
        return self.max_len * self.exp_one

    @property
    def sum_msb_range(self):
        """``(lo, hi)`` of the leading-one index ``b`` of the final sum.

        The group that sets the row maximum adds ``2**-0 = 1 << exp_frac`` and later groups only
        add, so ``b ≥ exp_frac``.
        """
        return self.numerics.exp_frac, _msb(self.acc_max)

    @property
    def recip_bounds(self):
        """``(max y0, max(2 − x·y0) after rounding, max y1)`` of the reciprocal unit.

        ``2 − x·y0`` decreases with ``x`` inside a seed segment and ``y1`` grows with it, so the
        maxima are at the segment starts.
        """
        nx = self.numerics
        mf, rf, tb = MANTISSA_FRAC, nx.recip_frac, nx.recip_table_bits
        seed = self.recip_table
        tm_max = y1_max = 0
        for i, y0 in enumerate(seed):
            x = (1 << mf) + (i << (mf - tb))
            tm = _rne_shift((2 << (mf + rf)) - x * y0, mf)
            tm_max = max(tm_max, tm)
            y1_max = max(y1_max, _rne_shift(y0 * tm, rf))
        return max(seed), tm_max, y1_max

    @property
    def prob_shift_range(self):
        """``(lo, hi)`` of the final shift ``recip_frac + b − prob.f_bits``."""
        nx = self.numerics
        lo, hi = self.sum_msb_range
        return nx.recip_frac + lo - nx.prob.f_bits, nx.recip_frac + hi - nx.prob.f_bits


# -- LayerNorm ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerNormConfig:
    """Configuration of :class:`hdl.nonlin.layernorm.LayerNorm`.

    Parameters
    ----------
    numerics : Numerics
        Formats and the rsqrt parameters (``rsqrt_table_bits``, ``rsqrt_frac``,
        ``ln_xhat_frac``).
    lanes : int
        Elements per cycle.
    max_len : int
        Longest row n (the embedding dimension: 192 for m3vit-tiny, 384 for m3vit-small).
    in_fmt, param_fmt, out_fmt : QFormat or None
        Input (``numerics.act``), gain/bias (``numerics.ln_param``) and output
        (``numerics.ln_out``) formats. Input and parameters are at most 18 bits (one DSP48E2
        product each).
    eps_bits : int
        Width of the runtime constant ``eps_int`` (unsigned). ``eps_int`` for ``eps = 1e-6``,
        n = 192 and 9 fractional bits is 9664 (14 bits).
    buffer_words : int or None
        Capacity of the circular row buffer in words; at least one row. ``None``: the power of
        two at or above two rows plus ``ROW_SLACK_WORDS``.
    max_rows : int
        Rows in flight at once (depth of the per-row statistics queue).
    """

    numerics: Numerics = DEFAULT_NUMERICS
    lanes: int = 8
    max_len: int = 192
    in_fmt: QFormat = None
    param_fmt: QFormat = None
    out_fmt: QFormat = None
    eps_bits: int = 24
    buffer_words: int = None
    max_rows: int = 8

    #: Longest row the hardware supports at all (bounds the variance word to 62 bits).
    MAX_LEN_LIMIT = 4096

    def __post_init__(self):
        _numerics(self.numerics)
        nx = self.numerics
        check_int("lanes", self.lanes)
        check_int("max_len", self.max_len)
        if self.max_len > self.MAX_LEN_LIMIT:
            raise ValueError(f"max_len ({self.max_len}) is above the supported maximum row "
                             f"length {self.MAX_LEN_LIMIT}")
        for name, default in (("in_fmt", nx.act), ("param_fmt", nx.ln_param),
                              ("out_fmt", nx.ln_out)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        _signed_format("in_fmt", self.in_fmt, max_width=DSP_B_BITS,
                       why=" (x² and n·x are DSP48E2 products)")
        _signed_format("param_fmt", self.param_fmt, max_width=DSP_B_BITS,
                       why=" (the gain is the 18-bit operand of a DSP48E2 product)")
        _signed_format("out_fmt", self.out_fmt)
        check_int("eps_bits", self.eps_bits)
        if self.eps_bits > 40:
            raise ValueError(f"eps_bits ({self.eps_bits}) must be at most 40")
        if self.var_max >= 1 << 62:
            raise ValueError(f"max_len ({self.max_len}) and {self.in_fmt} make the variance "
                             f"word n·Σx² − (Σx)² exceed 62 bits")
        if self.buffer_words is None:
            object.__setattr__(self, "buffer_words",
                               _pow2_at_least(2 * self.max_groups + ROW_SLACK_WORDS))
        check_int("buffer_words", self.buffer_words)
        if self.buffer_words < self.max_groups:
            raise ValueError(f"buffer_words ({self.buffer_words}) must hold a whole row of "
                             f"max_len = {self.max_len} elements ({self.max_groups} words of "
                             f"{self.lanes})")
        check_int("max_rows", self.max_rows)
        if nx.rsqrt_table_bits > MANTISSA_FRAC:
            raise ValueError(f"rsqrt_table_bits ({nx.rsqrt_table_bits}) must be at most the "
                             f"mantissa precision {MANTISSA_FRAC}")
        if nx.rsqrt_frac <= nx.ln_xhat_frac:
            raise ValueError(f"rsqrt_frac ({nx.rsqrt_frac}) must exceed ln_xhat_frac "
                             f"({nx.ln_xhat_frac}): x̂ is a right shift of (n·x − S1)·y1")

    def check_row_len(self, length):
        """Raise ``ValueError`` unless ``1 ≤ length ≤ max_len``."""
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"row length must be an integer, not {length!r}")
        if not 1 <= length <= self.max_len:
            raise ValueError(f"row length {length} is outside 1..max_len = {self.max_len}")

    @property
    def max_groups(self):
        """Words of the longest row."""
        return _groups(self.max_len, self.lanes)

    @property
    def eps_max(self):
        """Largest runtime ``eps_int``."""
        return (1 << self.eps_bits) - 1

    @property
    def sum_range(self):
        """``(lo, hi)`` of ``S1 = Σx``."""
        return self.max_len * self.in_fmt.min_int, self.max_len * self.in_fmt.max_int

    @property
    def sumsq_max(self):
        """Largest ``S2 = Σx²``."""
        return self.max_len * self.in_fmt.min_int ** 2

    @property
    def var_max(self):
        """Largest ``V' = n·S2 − S1² + eps_int`` (``n·S2 − S1² ≤ n²·max x²/… ≤ n·S2``)."""
        return self.max_len * self.sumsq_max + self.eps_max

    @property
    def exp_range(self):
        """``(lo, hi)`` of ``e = msb(V') >> 1`` (``V' ≥ eps_int ≥ 1``)."""
        return 0, _msb(self.var_max) >> 1

    @property
    def rsqrt_table(self):
        """The rsqrt seed table, :func:`golden.tables.rsqrt_table`."""
        nx = self.numerics
        return tables.rsqrt_table(nx.rsqrt_table_bits, nx.rsqrt_frac)

    @property
    def rsqrt_bounds(self):
        """``(max y0, max y0², (min, max) x·y0², max y1)`` after each rounding.

        Inside a seed segment ``y0`` is fixed, ``x·y0²`` grows with ``x`` and ``y1`` falls with
        it, so the extremes are at the segment ends.
        """
        nx = self.numerics
        mf, rf, tb = MANTISSA_FRAC, nx.rsqrt_frac, nx.rsqrt_table_bits
        seed = self.rsqrt_table
        y0sq_max = 0
        xy_lo, xy_hi, y1_max = None, 0, 0
        for i, y0 in enumerate(seed):
            y0sq = _rne_shift(y0 * y0, rf)
            y0sq_max = max(y0sq_max, y0sq)
            x_lo = (1 << mf) + (i << (mf - tb))
            x_hi = x_lo + (1 << (mf - tb)) - 1
            lo = _rne_shift(x_lo * y0sq, mf)
            hi = _rne_shift(x_hi * y0sq, mf)
            xy_lo = lo if xy_lo is None else min(xy_lo, lo)
            xy_hi = max(xy_hi, hi)
            y1_max = max(y1_max, _rne_shift(y0 * ((3 << rf) - lo), rf + 1))
        if (3 << rf) - xy_hi <= 0:
            raise ValueError("rsqrt seed table is too coarse: 3 − x·y0² is not positive")
        return max(seed), y0sq_max, (xy_lo, xy_hi), y1_max

    @property
    def xhat_shift_range(self):
        """``(lo, hi)`` of the x̂ shift ``rsqrt_frac + e − ln_xhat_frac``."""
        nx = self.numerics
        lo, hi = self.exp_range
        return nx.rsqrt_frac + lo - nx.ln_xhat_frac, nx.rsqrt_frac + hi - nx.ln_xhat_frac

    @property
    def center_max(self):
        """Largest ``|n·x − S1| = |Σᵢ (x − xᵢ)| ≤ (n − 1)·(max − min)``."""
        return (self.max_len - 1) * (self.in_fmt.max_int - self.in_fmt.min_int)

    @property
    def xhat_max(self):
        """Bound on ``|x̂|``: ``(n·x − S1)² ≤ (n − 1)·(n·S2 − S1²)`` (Cauchy–Schwarz), so
        ``|x − mean|/std ≤ sqrt(n − 1)``; the Newton rsqrt never exceeds ``1/sqrt`` by more than
        a few units of ``2**-rsqrt_frac``, hence the small margin."""
        hf = self.numerics.ln_xhat_frac
        return math.ceil(math.sqrt(max(self.max_len - 1, 0)) * (1 << hf) * (1 + 2 ** -12)) + 2

    @property
    def out_shift(self):
        """Final shift ``ln_xhat_frac + param.f − out.f`` (may be ≤ 0: a left shift)."""
        return self.numerics.ln_xhat_frac + self.param_fmt.f_bits - self.out_fmt.f_bits

