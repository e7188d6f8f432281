# SPDX-License-Identifier: BSD-2-Clause
"""Every lookup table of the accelerator, generated here and only here.

The integer twin (:mod:`golden.qref`) indexes these lists, and the hardware initialises its
memories from the very same lists, so the two cannot drift apart. Each function returns a tuple
of Python ints. Values are rounded half to even from double precision, which is exact to far
more bits than any table holds.
"""

import math
from functools import lru_cache

__all__ = ["exp2_hi_table", "exp2_lo_table", "recip_table", "rsqrt_table", "gelu_delta_table"]


def _rne(x):
    return int(round(x))  # Python's round() is half to even


@lru_cache(maxsize=None)
def exp2_hi_table(table_bits, frac):
    """``2**(-i / 2**table_bits)`` for the high bits ``i`` of a base-2 fraction, in UQ(1, frac)."""
    return tuple(_rne(2.0 ** (-i / (1 << table_bits)) * (1 << frac))
                 for i in range(1 << table_bits))


@lru_cache(maxsize=None)
def exp2_lo_table(lo_bits, logit_frac, frac):
    """``2**(-j / 2**logit_frac)`` for the low ``lo_bits`` bits ``j`` of the fraction, UQ(1, frac)."""
    return tuple(_rne(2.0 ** (-j / (1 << logit_frac)) * (1 << frac)) for j in range(1 << lo_bits))


@lru_cache(maxsize=None)
def recip_table(table_bits, frac):
    """Seed of ``1/x`` for ``x`` in [1, 2), sampled at each segment's midpoint, in UQ(1, frac).

    Entry ``i`` covers ``x`` in ``[1 + i/2**table_bits, 1 + (i+1)/2**table_bits)``.
    """
    n = 1 << table_bits
    return tuple(_rne((1 << frac) / (1.0 + (i + 0.5) / n)) for i in range(n))


@lru_cache(maxsize=None)
def rsqrt_table(table_bits, frac):
    """Seed of ``1/sqrt(x)`` for ``x`` in [1, 4), sampled at segment midpoints, in UQ(1, frac).

    The segments have width ``2**-table_bits``; entry ``i`` covers
    ``[1 + i/2**table_bits, 1 + (i+1)/2**table_bits)``, so there are ``3·2**table_bits`` entries.
    """
    n = 1 << table_bits
    return tuple(_rne((1 << frac) / math.sqrt(1.0 + (i + 0.5) / n)) for i in range(3 * n))


def _gelu_delta(a):
    """ReLU(a) − GELU(a) for a ≥ 0, i.e. a·Φ(−a) with the exact (erf) GELU."""
    return a * 0.5 * math.erfc(a / math.sqrt(2.0))


@lru_cache(maxsize=None)
def gelu_delta_table(step_bits, range_, frac):
    """``δ(a) = a·Φ(−a)`` sampled at ``a = i·2**-step_bits`` for ``a`` in [0, range], UQ(0, frac).

    GELU(x) = ReLU(x) − δ(|x|). The table has ``range·2**step_bits + 1`` entries so that linear
    interpolation has a right neighbour for the last segment; beyond ``range`` δ is taken as 0
    (δ(8) ≈ 5e-15).
    """
    n = range_ << step_bits
    return tuple(_rne(_gelu_delta(i / (1 << step_bits)) * (1 << frac)) for i in range(n + 1))
