# SPDX-License-Identifier: BSD-2-Clause
"""Fixed-point building blocks shared by the nonlinear units (combinational helpers).

Each helper returns an Amaranth value that implements, bit for bit, the rule of the same name in
:mod:`golden.fixed` (or in :mod:`golden.qref` for :func:`msb` and :func:`normalise`). Nothing here
narrows silently: a result is as wide as its exact value needs, unless the docstring states why
fewer bits are exact.
"""

from amaranth.hdl import Array, Const, Mux, Value, signed, unsigned

__all__ = ["round_shift", "round_shift_var", "round_shift_var_parts", "round_up", "clamp",
           "saturate", "msb", "normalise", "bits_for_range",
           "shape_for_range"]


def bits_for_range(lo, hi):
    """Width of the smallest two's-complement (or unsigned, if ``lo ≥ 0``) shape holding
    ``[lo, hi]``."""
    return shape_for_range(lo, hi).width


def shape_for_range(lo, hi):
    """Smallest shape holding every integer in ``[lo, hi]`` (unsigned when ``lo ≥ 0``)."""
    if lo > hi:
        raise ValueError(f"empty range [{lo}, {hi}]")
    if lo >= 0:
        return unsigned(max(hi.bit_length(), 1))
    width = max((-lo - 1).bit_length(), hi.bit_length()) + 1
    return signed(width)


def _widen(value, width):
    """``value`` sign- or zero-extended to at least ``width`` bits (exact)."""
    shape = value.shape()
    if shape.width >= width:
        return value
    return value + Const(0, signed(width) if shape.signed else unsigned(width))


def round_shift(value, n):
    """``value`` shifted right by the constant ``n``, rounding half to even (``n ≤ 0``: exact
    left shift). Mirrors :func:`golden.fixed.round_shift`.

    ``q = value >> n`` (floor), plus one when the remainder is above half, or exactly half and
    ``q`` is odd. The result is one bit wider than ``value`` (the carry of the increment).
    """
    value = Value.cast(value)
    if n <= 0:
        return value << -n
    value = _widen(value, n + 2)
    q = value >> n
    rem = value.as_unsigned()[:n]
    half = 1 << (n - 1)
    up = (rem > half) | ((rem == half) & q[0])
    return q + up


def round_shift_var_parts(value, extra, lo, hi):
    """The two halves of :func:`round_shift_var`, for a pipeline register between them.

    Returns ``(q, guard, sticky)``: the floor ``value >> (lo + extra)``, the bit just below it,
    and the OR of every bit below that; :func:`round_up` of the three is the rounded result.
    """
    if lo < 1 or hi < lo:
        raise ValueError(f"round_shift_var needs 1 ≤ lo ≤ hi, not lo={lo}, hi={hi}")
    value = _widen(Value.cast(value), hi + 2)
    pre = lo - 1
    sticky_lo = (value.as_unsigned()[:pre] != 0) if pre > 0 else Const(0, 1)
    base = value >> pre
    span = hi - lo
    if span:
        var = Value.cast(extra).as_unsigned()[:span.bit_length()]   # 0 ≤ extra ≤ span
        # prefix[k] = OR(base[0:k]): the base bits that a shift by k pushes out.
        prefix = [Const(0, 1)] + [base[:k].any() for k in range(1, span + 1)]
        sticky_var = Array(prefix)[var]
        r = base >> var
    else:
        sticky_var = Const(0, 1)
        r = base
    return r >> 1, r[0], sticky_lo | sticky_var


def round_up(q, guard, sticky):
    """Finish a round-half-to-even shift from its floor ``q``, guard bit and sticky bit."""
    q = Value.cast(q)
    return q + (guard & (sticky | q[0]))


def round_shift_var(value, extra, lo, hi):
    """``value`` shifted right by ``lo + extra`` for a runtime ``extra`` in ``[0, hi − lo]``
    (``lo ≥ 1``), rounding half to even. Mirrors :func:`golden.fixed.round_shift` with an array
    shift.

    Built as a guard/sticky rounder: ``r = value >> (amount − 1)`` keeps the half bit as ``r[0]``;
    the sticky bit ORs every bit below it. ``q = r >> 1`` is the floor and one is added when the
    half bit is set and the sticky bit or ``q[0]`` is (the half-to-even rule). The constant part
    ``lo − 1`` of the shift is wired; only ``extra`` goes through a barrel shifter.
    """
    return round_up(*round_shift_var_parts(value, extra, lo, hi))


def clamp(value, lo, hi):
    """``value`` clamped to the constant range ``[lo, hi]``."""
    value = Value.cast(value)
    return Mux(value < lo, lo, Mux(value > hi, hi, value))


def saturate(value, shape):
    """``value`` clamped to the range of ``shape`` (a shape or a :class:`golden.fixed.QFormat`).

    Mirrors :func:`golden.fixed.saturate`. Assigning the result to a signal of ``shape`` is then
    exact.
    """
    value = Value.cast(value)
    if hasattr(shape, "min_int"):
        lo, hi = shape.min_int, shape.max_int
    else:
        from amaranth.hdl import Shape
        shape = Shape.cast(shape)
        if shape.signed:
            lo, hi = -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
        else:
            lo, hi = 0, (1 << shape.width) - 1
    vs = value.shape()
    v_lo = -(1 << (vs.width - 1)) if vs.signed else 0
    v_hi = (1 << (vs.width - 1)) - 1 if vs.signed else (1 << vs.width) - 1
    out = value
    if v_hi > hi:
        out = Mux(value > hi, hi, out)
    if v_lo < lo:
        out = Mux(value < lo, lo, out)
    return out


def msb(value):
    """Bit index of the leading one of the unsigned ``value`` (0 when ``value`` is 0).

    A priority encoder built as a tree (``log2`` of the width levels of multiplexers); mirrors
    ``golden.qref._msb`` for positive values.
    """
    value = Value.cast(value).as_unsigned()
    width = value.shape().width
    if width <= 1:
        return Const(0, 1)
    half = 1 << ((width - 1).bit_length() - 1)          # largest power of two below width
    return Mux(value[half:] != 0, half + msb(value[half:]), msb(value[:half]))


def normalise(value, extra, b_lo, b_hi, frac, above=0):
    """``value`` shifted (floor) so that its bit ``b = b_lo + extra`` (runtime ``extra`` in
    ``[0, b_hi − b_lo]``) lands on bit ``frac``. Mirrors ``golden.qref._normalise``.

    ``above`` is how many bits of ``value`` above bit ``b`` may be set (0 when ``b`` is the
    leading one, 1 for the even index of rsqrt). The result is ``frac + 1 + above`` bits wide:
    taking those bits is exact, because no bit above ``b + above`` is set.
    """
    value = Value.cast(value).as_unsigned()
    var = Value.cast(extra).as_unsigned()
    span = b_hi - b_lo
    if frac >= b_lo:
        wide = value << (frac - b_lo)           # exact
    else:
        wide = value >> (b_lo - frac)           # floor, like the twin (b ≥ b_lo > frac)
    if span:
        wide = wide >> var[:span.bit_length()]  # floor
    return wide[:frac + 1 + above]
