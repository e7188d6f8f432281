# SPDX-License-Identifier: BSD-2-Clause
"""The fixed-point rules of golden/fixed.py against exact rational arithmetic."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from golden.fixed import (QFormat, SQ, UQ, dequantize, floor_shift, quantize, requantize,
                          round_shift, saturate)

INT62 = st.integers(-(1 << 62) + 1, (1 << 62) - 1)


def rne(q):
    """Round a Fraction half to even."""
    f = q.numerator // q.denominator
    r = q - f
    if r > Fraction(1, 2) or (r == Fraction(1, 2) and f % 2):
        f += 1
    return f


@settings(max_examples=400, derandomize=True, deadline=None)
@given(INT62, st.integers(0, 70))
@example(5, 1)
@example(7, 1)
@example(-5, 1)
@example(-7, 1)
@example(-1, 1)
@example(1, 1)
@example((1 << 62) - 1, 62)
def test_round_shift_is_round_half_even(x, n):
    assert int(round_shift(np.int64(x), n)) == rne(Fraction(x, 1 << n))


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.integers(-(1 << 40), 1 << 40), st.integers(-8, 30)), min_size=1,
                max_size=20))
def test_round_shift_elementwise_shifts(pairs):
    x = np.array([p[0] for p in pairs], dtype=np.int64)
    n = np.array([p[1] for p in pairs], dtype=np.int64)
    got = round_shift(x, n)
    for xi, ni, gi in zip(x, n, got):
        want = int(xi) << -int(ni) if ni < 0 else rne(Fraction(int(xi), 1 << int(ni)))
        assert int(gi) == want


@settings(max_examples=200, derandomize=True, deadline=None)
@given(INT62, st.integers(0, 70))
def test_floor_shift(x, n):
    assert int(floor_shift(np.int64(x), n)) == x // (1 << n)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(2, 24), st.integers(0, 20), st.booleans(),
       st.integers(-(1 << 40), 1 << 40))
def test_saturate_clamps_to_the_format(i_bits, f_bits, signed, x):
    fmt = QFormat(i_bits, f_bits, signed)
    got = int(saturate(np.int64(x), fmt))
    assert got == min(max(x, fmt.min_int), fmt.max_int)
    assert fmt.min_int <= got <= fmt.max_int


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.floats(-1000, 1000, allow_nan=False), st.integers(1, 12), st.integers(0, 20))
def test_quantize_rounds_half_even_and_saturates(x, i_bits, f_bits):
    fmt = SQ(i_bits, f_bits)
    want = min(max(rne(Fraction(x) * (1 << f_bits)), fmt.min_int), fmt.max_int)
    assert int(quantize(x, fmt)) == want


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(-(1 << 45), 1 << 45), st.integers(0, 30))
def test_requantize_is_round_then_saturate(x, frm):
    fmt = SQ(7, 9)
    want = min(max(rne(Fraction(x, 1 << frm) * (1 << 9)), fmt.min_int), fmt.max_int)
    assert int(requantize(np.int64(x), frm, fmt)) == want


def test_format_properties():
    f = SQ(7, 9)
    assert (f.width, f.min_int, f.max_int) == (16, -32768, 32767)
    assert f.max_real == 32767 / 512 and f.min_real == -64.0
    u = UQ(1, 15)
    assert (u.min_int, u.max_int) == (0, 65535)
    assert str(f) == "SQ(7,9)" and str(u) == "UQ(1,15)"
    assert np.all(dequantize(np.array([512, -256]), f) == np.array([1.0, -0.5]))


@pytest.mark.parametrize("args, exc, match", [
    ((1.5, 3), TypeError, "i_bits must be an integer"),
    ((3, -1), ValueError, "f_bits must be non-negative"),
    ((0, 0), ValueError, "no room"),
    ((30, 30), ValueError, "at most 48"),
])
def test_bad_formats_are_refused(args, exc, match):
    with pytest.raises(exc, match=match):
        QFormat(*args)


def test_float_inputs_are_refused():
    with pytest.raises(TypeError, match="integer arrays"):
        round_shift(np.array([1.5]), 1)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([np.nan]), SQ(4, 4))
