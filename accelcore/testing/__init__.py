"""Test helpers shipped for driver authors: drivers to test with, and fixtures.

* :class:`~accelcore.testing.vaccel.VAccelDriver` — the vgem-sized reference
  driver the core's own tests use;
* :func:`~accelcore.testing.factory.make_driver` — throwaway drivers, KUnit style;
* :func:`vaccel_subsystem` — a subsystem with vaccel devices, in virtual time;
* the pytest plugin (:mod:`accelcore.testing.plugin`) with fixtures and the
  conformance suite.
"""

from __future__ import annotations

from ..clock import Clock
from ..device import AccelDevice
from ..subsystem import Subsystem
from .factory import Handler, make_driver
from .vaccel import VAccelDriver

__all__ = ["Handler", "VAccelDriver", "make_driver", "vaccel_subsystem"]


def vaccel_subsystem(count: int = 1, clock: Clock | None = None) -> tuple[Subsystem, AccelDevice]:
    """A subsystem with ``count`` virtual vaccel devices; returns it and the first.

    >>> from accelcore.testing import vaccel_subsystem
    >>> sub, dev = vaccel_subsystem(2)
    >>> [d.name for d in sub.registered_devices()]
    ['accel0', 'accel1']
    """
    sub = Subsystem(clock)
    driver = VAccelDriver()
    sub.register_driver(driver)
    devices = [sub.create_device(driver) for _ in range(count)]
    return sub, devices[0]
