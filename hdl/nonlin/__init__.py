# SPDX-License-Identifier: BSD-2-Clause
"""Streaming nonlinear units, each bit-exact with its integer twin in :mod:`golden.qref`.

:class:`Gelu` / :class:`GeluPipeline`
    ``ReLU(x) − δ(|x|)``, δ from :func:`golden.tables.gelu_delta_table` with linear
    interpolation (:func:`golden.qref.gelu`).
:class:`Softmax`
    Single-pass softmax with running maximum and sum, base-2 exponentials from two tables and a
    reciprocal by table and one Newton step (:func:`golden.qref.softmax`); serves attention
    scores and router logits.
:class:`LayerNorm`
    Exact ``Σx`` and ``Σx²``, rsqrt by table and one Newton step, gain and bias
    (:func:`golden.qref.layernorm`).

Configurations (frozen, validated dataclasses) are in :mod:`hdl.nonlin.config`.
"""

from .config import GeluConfig, LayerNormConfig, SoftmaxConfig
from .gelu import Gelu, GeluPipeline
from .layernorm import LayerNorm
from .softmax import Softmax

__all__ = ["GeluConfig", "SoftmaxConfig", "LayerNormConfig", "Gelu", "GeluPipeline", "Softmax",
           "LayerNorm"]
