"""The accel minor allocator: 256 numbers, lowest free first.

Mirrors ``drm_minor_alloc`` on ``accel_minors_xa``: a number is *reserved* when a
device is allocated (an entry that lookups do not see), made *visible* when the
device registers, hidden again at unregister, and *freed* only at the device's
final release, so a minor is never reused while anything still refers to it.
Exhaustion is ``ENOSPC``.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from .errors import InvalidArgument, NoDevice, NoSpace

__all__ = ["ACCEL_MAX_MINORS", "MinorAllocator"]

ACCEL_MAX_MINORS = 256

T = TypeVar("T")

_RESERVED = object()


class MinorAllocator(Generic[T]):
    """Minor numbers ``0 .. limit-1`` mapped to objects once visible. Thread-safe.

    >>> minors: MinorAllocator[str] = MinorAllocator()
    >>> minors.reserve(), minors.reserve()
    (0, 1)
    >>> minors.release(0); minors.reserve()
    0
    """

    def __init__(self, limit: int = ACCEL_MAX_MINORS) -> None:
        self._limit = limit
        self._slots: dict[int, object] = {}
        self._lock = threading.Lock()

    def reserve(self) -> int:
        """Reserve the lowest free number.

        Raises:
            NoSpace: all ``limit`` numbers are taken.
        """
        with self._lock:
            for minor in range(self._limit):
                if minor not in self._slots:
                    self._slots[minor] = _RESERVED
                    return minor
        raise NoSpace(f"all {self._limit} accel minors are in use")

    def publish(self, minor: int, obj: T) -> None:
        """Make a reserved ``minor`` visible to :meth:`lookup` as ``obj``."""
        with self._lock:
            self._check_reserved(minor)
            self._slots[minor] = obj

    def hide(self, minor: int) -> None:
        """Make ``minor`` invisible again; it stays reserved."""
        with self._lock:
            self._check_reserved(minor)
            self._slots[minor] = _RESERVED

    def release(self, minor: int) -> None:
        """Free ``minor`` for reuse."""
        with self._lock:
            self._check_reserved(minor)
            del self._slots[minor]

    def lookup(self, minor: int) -> T:
        """The object behind a visible ``minor``.

        Raises:
            NoDevice: the number is free, only reserved, or out of range.
        """
        obj = self._slots.get(minor, _RESERVED)
        if obj is _RESERVED:
            raise NoDevice(f"no accel device at minor {minor}")
        return obj  # type: ignore[return-value]

    def _check_reserved(self, minor: int) -> None:
        if minor not in self._slots:
            raise InvalidArgument(f"minor {minor} is not allocated")

    @property
    def in_use(self) -> int:
        """How many numbers are reserved or visible."""
        return len(self._slots)

    @property
    def limit(self) -> int:
        return self._limit
