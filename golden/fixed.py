# SPDX-License-Identifier: BSD-2-Clause
"""Fixed-point formats and the rounding and saturation rules of the hardware.

Every tensor in the accelerator is a two's-complement integer ``v`` that stands for the real
number ``v · 2**-f_bits``. Formats follow the naming of Amaranth RFC 41: ``SQ(i, f)`` is signed
with ``i`` integer bits *including the sign bit* and ``f`` fractional bits; ``UQ(i, f)`` is
unsigned.

The rules, which the hardware implements bit for bit:

* Arithmetic is exact: products and sums are computed on wide enough integers that nothing is
  lost (NumPy ``int64`` here; the widths are documented at each use and asserted by the
  callers' tests).
* Narrowing a value to fewer fractional bits uses :func:`round_shift`: round half to even.
* Narrowing a value to fewer integer bits uses :func:`saturate`: clamp to the format's range.
  Nothing ever wraps.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["QFormat", "SQ", "UQ", "round_shift", "floor_shift", "shift", "saturate",
           "quantize", "dequantize", "requantize"]


@dataclass(frozen=True)
class QFormat:
    """A fixed-point format.

    Parameters
    ----------
    i_bits : int
        Integer bits, the sign bit included for signed formats.
    f_bits : int
        Fractional bits.
    signed : bool
        Two's complement when true.
    """

    i_bits: int
    f_bits: int
    signed: bool = True

    def __post_init__(self):
        for name in ("i_bits", "f_bits"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an integer, not {v!r}")
        if self.f_bits < 0:
            raise ValueError(f"f_bits must be non-negative, not {self.f_bits}")
        if self.width < 1:
            raise ValueError(f"format {self} has no room for a value")
        if self.width > 48:
            raise ValueError(f"format {self} is {self.width} bits wide; at most 48 are supported")

    @property
    def width(self):
        """Total bits."""
        return self.i_bits + self.f_bits

    @property
    def min_int(self):
        """Smallest representable integer."""
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def max_int(self):
        """Largest representable integer."""
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def lsb(self):
        """Real value of one unit in the last place."""
        return 2.0 ** -self.f_bits

    @property
    def min_real(self):
        """Smallest representable real value."""
        return self.min_int * self.lsb

    @property
    def max_real(self):
        """Largest representable real value."""
        return self.max_int * self.lsb

    def __str__(self):
        return f"{'SQ' if self.signed else 'UQ'}({self.i_bits},{self.f_bits})"


def SQ(i_bits, f_bits):
    """Signed format with ``i_bits`` integer bits (sign included) and ``f_bits`` fraction."""
    return QFormat(i_bits, f_bits, True)


def UQ(i_bits, f_bits):
    """Unsigned format with ``i_bits`` integer bits and ``f_bits`` fraction."""
    return QFormat(i_bits, f_bits, False)


def _as_int64(x):
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"fixed-point operations take integer arrays, not {a.dtype}")
    return a.astype(np.int64)


def round_shift(x, n):
    """Shift ``x`` right by ``n`` bits, rounding half to even.

    ``n`` may be an array broadcasting against ``x``. Where it is zero the value is unchanged,
    where it is negative the shift is an exact left shift. This is the one rounding rule of the
    hardware: ``q = x >> n`` (floor), then add one when the remainder is above half, or exactly
    half and ``q`` is odd.
    """
    x = _as_int64(x)
    n = np.asarray(n, dtype=np.int64)
    if n.ndim == 0:
        n = int(n)
        if n <= 0:
            return x << -n
        if n >= 63:
            # |x| < 2**62 here, so x / 2**n lies strictly between -1/2 and 1/2.
            return np.zeros_like(x)
        q = x >> n
        rem = x & ((1 << n) - 1)
        half = 1 << (n - 1)
        return q + ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    if np.any(n >= 63):
        raise ValueError("shifts of 63 bits or more are not supported elementwise")
    left = np.maximum(-n, 0)
    right = np.maximum(n, 0)
    q = x >> right
    rem = x & ((np.int64(1) << right) - 1)
    half = (np.int64(1) << right) >> 1
    up = (right > 0) & ((rem > half) | ((rem == half) & ((q & 1) == 1)))
    return (q + up) << left


def floor_shift(x, n):
    """Shift ``x`` right by ``n`` bits, rounding toward minus infinity (negative ``n``: left)."""
    x = _as_int64(x)
    n = int(n)
    if n >= 63:
        return np.where(x < 0, -1, 0).astype(np.int64)
    return x >> n if n >= 0 else x << -n


def shift(x, n):
    """Exact left shift by ``n`` (``n`` ≥ 0) or :func:`round_shift` right by ``-n``."""
    return round_shift(x, -int(n))


def saturate(x, fmt):
    """Clamp ``x`` to the integer range of ``fmt``."""
    return np.clip(_as_int64(x), fmt.min_int, fmt.max_int)


def requantize(x, from_f_bits, fmt):
    """Round ``x`` (with ``from_f_bits`` fractional bits) to ``fmt``, then saturate."""
    return saturate(round_shift(x, from_f_bits - fmt.f_bits), fmt)


def quantize(x, fmt):
    """Convert real values to ``fmt``: round half to even, then saturate.

    Used on the host for weights and images; NaN and infinities are refused.
    """
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("cannot quantize NaN or infinite values")
    scaled = np.ldexp(a, fmt.f_bits)
    lim = float(1 << 60)
    return saturate(np.rint(np.clip(scaled, -lim, lim)).astype(np.int64), fmt)


def dequantize(x, fmt_or_f_bits):
    """Real value of integers ``x`` in a format (or with that many fractional bits)."""
    f = fmt_or_f_bits.f_bits if isinstance(fmt_or_f_bits, QFormat) else int(fmt_or_f_bits)
    return np.ldexp(_as_int64(x).astype(np.float64), -f)
