# SPDX-License-Identifier: BSD-2-Clause
"""The argument checks that every configuration and constructor in :mod:`hdl` shares.

One wording for every block: ``TypeError`` for a value that is not an ``int`` (``bool``
included), ``ValueError`` for one out of range, both saying what was expected and what was
given.
"""

__all__ = ["check_int", "check_pow2"]


def _expected(lo, hi):
    if hi is not None:
        return f"an integer in the range {lo}..{hi}"
    return "a positive integer" if lo == 1 else f"an integer ≥ {lo}"


def check_int(name, value, lo=1, hi=None):
    """Raise unless ``value`` is an ``int`` (not a ``bool``) with ``lo ≤ value`` and, when
    ``hi`` is given, ``value ≤ hi``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {_expected(lo, hi)}, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {_expected(lo, hi)}, not {value!r}")


def check_pow2(name, value, lo=1, hi=None):
    """:func:`check_int`, and ``value`` a power of two."""
    check_int(name, value, lo, hi)
    if value & (value - 1):
        raise ValueError(f"{name} must be a power of two, not {value!r}")
