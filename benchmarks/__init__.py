"""accelcore benchmarks: every figure a ratio to a baseline measured in the same run.

Run ``python -m benchmarks [--quick] [--json]``. Each :class:`Figure` has the
measured median (``value``), the baseline's median (``baseline``), their ratio,
the target and whether it is met. Baselines run interleaved with the measured
code, in the same process, so machine noise hits both alike.
"""

from __future__ import annotations

from .harness import Figure, compare, median_ns

__all__ = ["Figure", "compare", "median_ns"]
