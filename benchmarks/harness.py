"""Timing helpers: interleaved medians and the Figure record."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Figure", "compare", "compare_many", "median_ns"]


@dataclass(frozen=True, slots=True)
class Figure:
    """One benchmark figure, as ``--json`` prints it."""

    name: str
    value: float
    baseline: float
    unit: str
    ratio: float
    target: str
    met: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median_ns(fn: Callable[[], object], loops: int) -> float:
    """Median nanoseconds per call over ``loops`` calls, in 10 batches."""
    per_batch = max(1, loops // 10)
    samples = []
    for _ in range(10):
        t0 = time.perf_counter_ns()
        for _ in range(per_batch):
            fn()
        samples.append((time.perf_counter_ns() - t0) / per_batch)
    return statistics.median(samples)


def compare(
    measured: Callable[[], object], baseline: Callable[[], object], loops: int, rounds: int = 5
) -> tuple[float, float]:
    """Medians of ``measured`` and ``baseline``, run alternately ``rounds`` times."""
    ms, bs = [], []
    for _ in range(rounds):
        ms.append(median_ns(measured, loops))
        bs.append(median_ns(baseline, loops))
    return statistics.median(ms), statistics.median(bs)


def compare_many(fns: list[Callable[[], object]], loops: int, rounds: int = 5) -> list[float]:
    """:func:`compare` for several functions: medians, each run in turn ``rounds`` times."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, samples, strict=True):
            out.append(median_ns(fn, loops))
    return [statistics.median(out) for out in samples]


def ratio_figure(
    name: str,
    value: float,
    baseline: float,
    unit: str,
    limit: float,
    *,
    higher_is_better: bool = False,
    note: str = "",
) -> Figure:
    """A figure whose target is ``ratio <= limit`` (or ``>= limit`` when higher is better)."""
    ratio = value / baseline if baseline else float("inf")
    met = ratio >= limit if higher_is_better else ratio <= limit
    target = f">= {limit}x" if higher_is_better else f"<= {limit}x"
    if not met:
        short = limit / ratio if higher_is_better and ratio else ratio / limit
        missed = f"missed by {short:.1f}x (ratio {ratio:.3g}, target {target})"
        note = f"{missed}; {note}" if note else missed
    return Figure(
        name, round(value, 3), round(baseline, 3), unit, round(ratio, 3), target, met, note
    )
