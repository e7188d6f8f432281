# SPDX-License-Identifier: BSD-2-Clause
"""Small elaboration helpers for the always-valid pipelines of the nonlinear units."""

from amaranth.hdl import Signal, Value

__all__ = ["reg", "delay", "valid_chain", "tree_stages", "reduce_tree"]


def reg(m, value, name, shape=None):
    """A datapath register (no reset) loaded with ``value`` every cycle; returns the register.

    ``shape`` defaults to the shape of ``value``; a narrower ``shape`` is only passed where the
    caller has bounded the value (the callers saturate or document why it is exact).
    """
    value = Value.cast(value)
    sig = Signal(shape if shape is not None else value.shape(), name=name, reset_less=True)
    m.d.sync += sig.eq(value)
    return sig


def delay(m, value, cycles, name):
    """``value`` delayed by ``cycles`` datapath registers (``name_d1`` … ``name_d<cycles>``)."""
    for k in range(cycles):
        value = reg(m, value, f"{name}_d{k + 1}")
    return value


def valid_chain(m, valid, cycles, name):
    """A control bit delayed by ``cycles`` registers that reset to 0; returns every stage
    (``[stage 1, …, stage cycles]``)."""
    out = []
    for k in range(cycles):
        sig = Signal(name=f"{name}_q{k + 1}")
        m.d.sync += sig.eq(valid)
        out.append(sig)
        valid = sig
    return out


def tree_stages(n):
    """Register stages of :func:`reduce_tree` over ``n`` operands: one register after every two
    levels of the tree and after the last, and at least one."""
    levels = max(n - 1, 0).bit_length()
    return max(1, -(-levels // 2))


def reduce_tree(m, values, op, name, carry=()):
    """Reduce ``values`` with the binary ``op`` in a balanced tree of :func:`tree_stages` register
    stages; ``carry`` values travel alongside with the same delay.

    Returns ``(result, carried)``, both registered.
    """
    values = list(values)
    carry = list(carry)
    levels = max(len(values) - 1, 0).bit_length()
    reg_after = {lv for lv in range(2, levels + 1, 2)} | {levels}
    stage = 0
    level = 0
    while True:
        if level in reg_after or (levels == 0 and level == 0):
            stage += 1
            values = [reg(m, v, f"{name}_s{stage}_{k}") for k, v in enumerate(values)]
            carry = [reg(m, v, f"{name}_carry_s{stage}_{k}") for k, v in enumerate(carry)]
        if len(values) == 1:
            break
        level += 1
        nxt = [op(values[k], values[k + 1]) for k in range(0, len(values) - 1, 2)]
        if len(values) % 2:
            nxt.append(values[-1])
        values = nxt
    return values[0], carry
