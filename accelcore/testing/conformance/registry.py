"""The table of checks: every conformance test registers its area and what it checks.

A check is a pytest test function of this package marked with :func:`check`. The
table (:data:`CHECKS`, :func:`checks_table`) is what the documentation renders, so
the description is one line that says what a passing driver does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["AREAS", "CATCHES", "CHECKS", "Check", "check"]

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


#: The kind of driver bug each area's checks catch (a check may name its own).
CATCHES: dict[str, str] = {
    "registration": "a botched uAPI header (implicit holes, numbers outside the driver range)",
    "open": "a per-file or per-context resource not freed at close",
    "version-info": "INFO or VERSION answers that break the two-call size protocol",
    "ownership": "a second owner let in, or ownership not given back",
    "ioctl-matrix": "unchecked flags or padding, a wrong errno, a failed call with a "
    "visible effect (a handle made before validating)",
    "handles": "handles that leak between files",
    "dma-buf": "a dma-buf outliving or dying before its buffer",
    "sysfs": "an attribute that raises or oopses",
    "hot-unplug": "an oops or a leak when the device goes away",
    "reset": "a reset that does not bring the device back",
    "restart": "a restart that repeats work (in args, INFO or sysfs) or a wait that is not "
    "restartable",
    "fuzz": "an oops on junk, an error path that leaks references or handles",
}


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the table: the test's name, its area, what it checks and which
    kind of driver bug it catches."""

    name: str
    area: str
    what: str
    module: str
    catches: str = ""


#: Every registered check by test name, in registration (= module) order.
CHECKS: dict[str, Check] = {}

F = TypeVar("F", bound=Callable[..., Any])


def check(area: str, what: str, catches: str | None = None) -> Callable[[F], F]:
    """Register a conformance test in the table of checks.

    Args:
        area: One of :data:`AREAS`.
        what: One line: what a conforming driver does.
        catches: The kind of driver bug it catches (default: its area's, from ``CATCHES``).

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
        CHECKS[name] = Check(name, area, what, fn.__module__, catches or CATCHES[area])
        fn.__accel_check__ = CHECKS[name]  # type: ignore[attr-defined]
        return fn

    return mark
