"""A KUnit-style factory of throwaway drivers, for tests of the core and of tools.

:func:`make_driver` builds an :class:`~accelcore.driver.AccelDriver` subclass from
a few lines of C (the uAPI) and plain functions (the handlers), so a test can
state exactly the driver it needs:

>>> from accelcore.testing import make_driver
>>> drv = make_driver(
...     "adder",
...     header='''
...         /* cffi:begin */
...         struct adder_args { __u32 a; __u32 b; __u32 sum; __u32 pad; };
...         /* cffi:end */
...         #define DRM_IOCTL_ADDER_ADD DRM_IOWR(DRM_COMMAND_BASE + 0, struct adder_args)
...     ''',
...     ioctls={"DRM_IOCTL_ADDER_ADD": lambda call: setattr(call.args, "sum",
...                                                          call.args.a + call.args.b)},
... )
>>> drv.name, sorted(d.name for d in drv.ioctl_table().values())
('adder', ['DRM_IOCTL_ADDER_ADD'])
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from ..dispatch import IoctlCall
from ..driver import AccelDriver, DriverFeature, IoctlFlags, OwnershipPolicy, ioctl
from ..uapi import CORE, load_uapi

__all__ = ["Handler", "make_driver"]

Handler = Callable[[IoctlCall], int | None]


def _as_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a plain function as a method that ignores ``self``."""

    def method(self: AccelDriver, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return method


def make_driver(
    name: str = "kunit",
    *,
    header: str = "",
    ioctls: Mapping[str, Handler | tuple[Handler, IoctlFlags]] | None = None,
    ownership: OwnershipPolicy = OwnershipPolicy.LAZY_SINGLE,
    features: DriverFeature = DriverFeature.GEM | DriverFeature.PRIME,
    base: type[AccelDriver] = AccelDriver,
    **attributes: Any,
) -> AccelDriver:
    """Build and instantiate a one-off driver.

    Args:
        name: The driver name.
        header: C uAPI text (structs between the cffi markers, ioctl ``#define``\\ s);
            it sees the core header's macros and types.
        ioctls: ``#define`` name → handler, or ``(handler, flags)``.
        ownership: The ownership policy.
        features: Driver features.
        base: A driver class to extend (its callbacks are kept).
        **attributes: More class attributes or callbacks (``probe=…``,
            ``context_destroy=…``, ``version=(2, 0, 0)``).

    Returns:
        A driver instance, ready for :meth:`Subsystem.register_driver`.
    """
    ns: dict[str, Any] = {
        "name": name,
        "ownership": ownership,
        "features": features,
        "uapi": load_uapi(f"{name}.h", include=[CORE], text=textwrap.dedent(header))
        if header
        else None,
    }
    for i, (ioctl_name, spec) in enumerate((ioctls or {}).items()):
        fn, flags = spec if isinstance(spec, tuple) else (spec, IoctlFlags.NONE)

        def method(self: AccelDriver, call: IoctlCall, _fn: Handler = fn) -> int | None:
            return _fn(call)

        ns[f"ioctl_{i}"] = ioctl(ioctl_name, flags)(method)
    for key, value in attributes.items():
        ns[key] = _as_method(value) if callable(value) and not isinstance(value, type) else value
    cls = type(f"{name.title()}Driver", (base,), ns)
    driver: AccelDriver = cls()
    return driver
