# SPDX-License-Identifier: BSD-2-Clause
"""The weight-stationary systolic array and the unified compute unit around it.

:mod:`.config` (``ArrayConfig``, ``ComputeConfig``), :mod:`.pe` → :mod:`.grid` → :mod:`.mesh`
→ :mod:`.array` (with :mod:`.skew`), and :mod:`.unit` (``ComputeUnit``).
"""

from .array import SystolicArray
from .config import M3VIT_TINY_COMPUTE, SMALL_COMPUTE, ArrayConfig, ComputeConfig
from .unit import ComputeUnit

__all__ = ["ArrayConfig", "ComputeConfig", "SystolicArray", "ComputeUnit", "SMALL_COMPUTE",
           "M3VIT_TINY_COMPUTE"]
