"""The table of checks: every conformance test registers its area and what it checks.

A check is a pytest test function of this package marked with :func:`check`. The
table (:data:`CHECKS`, :func:`checks_table`) is what the documentation renders, so
the description is one line that says what a passing driver does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["AREAS", "CHECKS", "Check", "check"]

#: The areas, in the order the documentation lists them.
AREAS: tuple[str, ...] = (
    "registration",
    "open",
    "version-info",
    "ownership",
    "ioctl-matrix",
    "handles",
    "dma-buf",
    "sysfs",
    "hot-unplug",
    "reset",
    "restart",
    "fuzz",
)


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the table: the test's name, its area and what it checks."""

    name: str
    area: str
    what: str
    module: str


#: Every registered check by test name, in registration (= module) order.
CHECKS: dict[str, Check] = {}

F = TypeVar("F", bound=Callable[..., Any])


def check(area: str, what: str) -> Callable[[F], F]:
    """Register a conformance test in the table of checks.

    Args:
        area: One of :data:`AREAS`.
        what: One line: what a conforming driver does.

    Raises:
        ValueError: an unknown area, or two checks with one name.
    """
    if area not in AREAS:
        raise ValueError(f"unknown conformance area {area!r} (known: {', '.join(AREAS)})")

    def mark(fn: F) -> F:
        name = fn.__name__
        old = CHECKS.get(name)
        if old is not None and old.module != fn.__module__:
            raise ValueError(f"two conformance checks are named {name!r}")
        CHECKS[name] = Check(name, area, what, fn.__module__)
        fn.__accel_check__ = CHECKS[name]  # type: ignore[attr-defined]
        return fn

    return mark
