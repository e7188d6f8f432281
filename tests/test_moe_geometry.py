# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: BSD-2-Clause
"""Tests of hdl/moe/geometry.py: the image geometry computed in hardware equals ImageLayout's."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdl.moe.dma import geometry_layout, geometry_of
from hdl.moe.geometry import Geometry, shape_layout, shape_of
from hdl.moe.layout import ImageLayout, RowMajorOrder, SystolicOrder
from sim.harness import run_sim


def _layout(order, data_width, **shape):
    return ImageLayout(order=order, data_width=data_width, **shape)


def run_geometry(big, layouts, sim_args):
    """Feed each layout's shape in turn; return the geometry read ``latency`` cycles later."""
    dut = Geometry(big)
    got = []

    async def tb(ctx):
        for lay in layouts:
            ctx.set(dut.shape, shape_of(lay))
            await ctx.tick().repeat(dut.latency)
            got.append(ctx.get(dut.geometry))

    run_sim(dut, [tb], deadline_cycles=dut.latency * len(layouts) + 10, **sim_args)
    return got


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), array=st.sampled_from([(32, 32), (16, 4), (4, 8), (8, 8), (2, 2)]),
       data_width=st.sampled_from([64, 128, 256, 512]),
       bits=st.sampled_from([16, 14, 12, 10]))
def test_geometry_matches_layout(data, array, data_width, bits, sim_args):
    """Any shape within the largest, any array, bus and expert weight width: the geometry of
    its ImageLayout."""
    order = SystolicOrder(*array)
    big = _layout(order, data_width, num_layers=6, num_experts=16, num_tasks=5, dim=200,
                  hidden=400, expert_weight_bits=bits)
    layouts = [big]
    for _ in range(4):
        layouts.append(_layout(
            order, data_width, expert_weight_bits=bits,
            num_layers=data.draw(st.integers(1, 6), label="L"),
            num_experts=data.draw(st.integers(1, 16), label="E"),
            num_tasks=data.draw(st.integers(1, 5), label="T"),
            dim=data.draw(st.integers(1, 200), label="D"),
            hidden=data.draw(st.integers(1, 400), label="Hd")))
    got = run_geometry(big, layouts, sim_args)
    t = geometry_layout(big)
    for lay, g in zip(layouts, got):
        assert g.as_value().value == t.const(geometry_of(lay)).as_value().value, lay


def test_presets(sim_args):
    """m3vit-tiny's image on the ZCU104 array, and micro's on the same unit."""
    from golden.config import get_config
    from hdl.moe.layout import layout_for
    order = SystolicOrder(32, 32)
    tiny = layout_for(get_config("m3vit-tiny"), order=order, expert_weight_bits=14)
    micro = layout_for(get_config("micro"), order=order, expert_weight_bits=14)
    got = run_geometry(tiny, [micro, tiny, micro], sim_args)
    t = geometry_layout(tiny)
    for lay, g in zip([micro, tiny, micro], got):
        assert g.as_value().value == t.const(geometry_of(lay)).as_value().value


def test_bad_parameters():
    with pytest.raises(TypeError):
        Geometry("tiny")
    with pytest.raises(ValueError, match="SystolicOrder"):
        Geometry(ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=8, hidden=8,
                             order=RowMajorOrder()))
    with pytest.raises(ValueError, match=r"a weight tile of 1 × 1 expert weights of 14 bits is "
                                         r"not a whole number of bytes"):
        Geometry(ImageLayout(num_layers=1, num_experts=2, num_tasks=1, dim=8, hidden=8,
                             order=SystolicOrder(1, 1), expert_weight_bits=14))
    with pytest.raises(TypeError):
        shape_layout(None)
    with pytest.raises(TypeError):
        shape_of({})
