"""The accel driver conformance suite: IGT-style checks any driver can run.

Run it on one or more installed drivers (``accelcore.drivers`` entry points, or
``module:Class``)::

    pytest --pyargs accelcore.testing.conformance --accel-driver vaccel

Each check is a test in one of this package's ``test_*.py`` modules, parametrized
per driver (ids ``drv=NAME``) by the ``accelcore`` pytest plugin. Checks use only
what a driver declares (:class:`~accelcore.driver.AccelDriver`'s ``device_model``,
``examples``, ``bo_create``, ``ownership``, ``features``, the ioctl flags
``waits``/``multi_device``, and the optional ``example_setup`` / ``bo_setup``
steps (``accelcore.testing.conformance.steps``), ``legacy_ignored_fields`` and
``inject_failure`` hook); collection never opens a device. A check skips only
when the driver declares the capability absent, and says so; anything else that
goes wrong fails with what was wrong.
After every check all processes exit, and a leaked resource or any oops fails it;
after every negative case the whole named snapshot of the machine
(``Rig.snapshot``) must be unchanged.

Without ``--accel-driver`` every check is collected once as ``drv=none`` and
skipped with a reason naming the option.

:data:`CHECKS` / :func:`checks_table` list every check with its area and a
one-line description, for the documentation.
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import AREAS, CATCHES, CHECKS, Check, check

__all__ = ["AREAS", "CATCHES", "CHECKS", "Check", "check", "checks_table"]


def checks_table() -> list[tuple[str, str, str]]:
    """Every check as ``(name, area, what)``, ordered by area then definition.

    >>> from accelcore.testing.conformance import checks_table
    >>> rows = checks_table()
    >>> ("test_register_driver_succeeds", "registration") in [(n, a) for n, a, _ in rows]
    True
    """
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("test_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    order = {area: i for i, area in enumerate(AREAS)}
    rows = sorted(enumerate(CHECKS.values()), key=lambda ic: (order[ic[1].area], ic[0]))
    return [(c.name, c.area, c.what) for _, c in rows]
