"""The benchmark harness produces every figure with the documented JSON keys.

(A smoke test of the harness, not a timed test: no figure's value is asserted.)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable

from benchmarks.gemm import cs_nop_rate
from benchmarks.harness import Figure, compare_many, ratio_figure

KEYS = {"name", "value", "baseline", "unit", "ratio", "target", "met"}


def test_ratio_figure_keys_and_direction() -> None:
    low = ratio_figure("x", 2.0, 1.0, "ns", 4.0)
    high = ratio_figure("y", 0.5, 1.0, "GiB/s", 0.8, higher_is_better=True)
    assert set(low.as_dict()) >= KEYS
    assert (low.ratio, low.met, high.met) == (2.0, True, False)
    assert "missed" not in low.note
    assert high.note.startswith("missed by 1.6x")  # 0.5 against >= 0.8
    assert ratio_figure("z", 6.0, 1.0, "ns", 4.0, note="n").note.startswith("missed by 1.5x")
    assert isinstance(low, Figure)


def test_quick_mode_figure_function_produces_a_valid_figure(monkeypatch) -> None:
    """One cheap figure function, with tiny loops, end to end (values not checked)."""
    monkeypatch.setattr("benchmarks.gemm.STEADY_STATE", 2)
    core, kernel = cs_nop_rate(quick=True, loops=20)
    for fig in (core, kernel):
        assert isinstance(fig, Figure)
        assert set(fig.as_dict()) >= KEYS
        assert isinstance(fig.met, bool)
        assert all(math.isfinite(v) and v > 0 for v in (fig.value, fig.baseline, fig.ratio))
    assert (core.name, kernel.name) == ("cs_nop_rate", "cs_nop_rate_vs_kernel")
    assert core.value == kernel.value  # one CS rate, two baselines of the same run


def test_compare_many_gives_one_median_per_function_in_order() -> None:
    calls = {"a": 0, "b": 0, "c": 0}

    def counter(name: str) -> Callable[[], None]:
        def fn() -> None:
            calls[name] += 1

        return fn

    out = compare_many([counter("a"), counter("b"), counter("c")], loops=20, rounds=3)
    assert len(out) == 3 and all(v > 0 for v in out)
    assert calls == {"a": 60, "b": 60, "c": 60}


def test_server_p99_figure_says_where_the_tail_went(monkeypatch) -> None:
    """The fleet figure end to end with 2 clients (values not checked): its note
    splits the tail calls' time into the clients' run-queue wait and the rest."""
    from benchmarks import crossprocess

    monkeypatch.setattr(crossprocess, "FLEET", 2)
    (fig,) = crossprocess.server_p99_32(quick=True)
    assert set(fig.as_dict()) >= KEYS
    assert fig.name == "server_p99_32" and fig.target == "<= 4.0x"
    assert all(math.isfinite(v) and v > 0 for v in (fig.value, fig.baseline, fig.ratio))
    assert "400 INFO calls; 2 client processes" in fig.note
    if os.path.exists("/proc/self/schedstat"):
        assert re.search(
            r"calls at or above p99 took [\d.]+ ms on average, [\d.]+ ms of it", fig.note
        )
    assert re.search(r"server CPU \d+ us per call; load average [\d.]+ on \d+ CPUs", fig.note)
