"""The benchmark harness produces every figure with the documented JSON keys.

(A smoke test of the harness, not a timed test: no figure's value is asserted.)
"""

from __future__ import annotations

from benchmarks.harness import Figure, ratio_figure

KEYS = {"name", "value", "baseline", "unit", "ratio", "target", "met"}


def test_ratio_figure_keys_and_direction() -> None:
    low = ratio_figure("x", 2.0, 1.0, "ns", 4.0)
    high = ratio_figure("y", 0.5, 1.0, "GiB/s", 0.8, higher_is_better=True)
    assert set(low.as_dict()) >= KEYS
    assert (low.ratio, low.met, high.met) == (2.0, True, False)
    assert isinstance(low, Figure)
