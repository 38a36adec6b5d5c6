"""The per-test conformance session: builds rigs, then checks leaks and oopses.

:class:`Conformance` is the value of the ``accel_conformance`` fixture. A check
asks it for machines (:meth:`Conformance.rig`) and for the declarations it
depends on (:meth:`require_gem` and friends skip, with the reason, when the
driver declares the capability absent). After the test body the plugin calls
:meth:`Conformance.finish`: every process exits, device time runs out, and any
resource still alive or any oops fails the test that caused it.
"""

from __future__ import annotations

import pytest

from ...clock import Deadlock
from ...device import Oops
from ...driver import AccelDriver, DriverFeature
from ...memory import LIVE
from .rig import Rig, RigError, build_rig, example_devices

__all__ = ["Conformance", "format_oopses"]


def format_oopses(oopses: list[Oops]) -> str:
    """The oopses with their tracebacks, for a failure message."""
    parts = [f"oops on {o.device} in {o.where}: {o.exception}\n{o.traceback}" for o in oopses]
    return f"{len(oopses)} oops(es) (a driver bug: an exception that is not an errno):\n" + (
        "\n".join(parts)
    )


class Conformance:
    """One test's view of the driver under test.

    Args:
        driver_cls: The driver class (``--accel-driver``).
        summary: Where summary lines for the terminal report go.
        transport: How the checks' processes reach the machines: ``"inproc"``
            or ``"server"`` (see :mod:`accelcore.testing.transports`).
    """

    def __init__(
        self,
        driver_cls: type[AccelDriver],
        summary: list[str] | None = None,
        transport: str = "inproc",
    ) -> None:
        self.driver_cls = driver_cls
        self.transport = transport
        self.rigs: list[Rig] = []
        self.summary = summary if summary is not None else []
        self._finished = False
        self._live_base = LIVE.regions

    @property
    def name(self) -> str:
        return self.driver_cls.name

    @property
    def driver(self) -> type[AccelDriver]:
        """The driver class: its declarations (examples, policy, features…)."""
        return self.driver_cls

    def rig(self, *, count: int = 1, peer: bool = False) -> Rig:
        """A fresh machine with ``count`` devices of the driver (and a vaccel peer)."""
        if not self.rigs:
            self._live_base = LIVE.regions
        try:
            rig = build_rig(self.driver_cls, count=count, peer=peer, transport=self.transport)
        except RigError as exc:
            problem = str(exc)
        else:
            self.rigs.append(rig)
            return rig
        pytest.fail(problem, pytrace=False)

    def example_rig(self, *, peer: bool = False) -> Rig:
        """A machine with as many devices as the driver's examples need."""
        return self.rig(count=example_devices(self.driver_cls), peer=peer)

    def report(self, line: str) -> None:
        """Add a line to the terminal summary (``accelcore conformance`` section)."""
        self.summary.append(f"drv={self.name} via {self.transport}: {line}")

    # -- capability gates: skip only for what the driver declares absent ---------
    def require_gem(self) -> None:
        if DriverFeature.GEM not in self.driver_cls.features:
            pytest.skip(f"driver {self.name} declares no GEM feature (no buffer objects)")

    def require_prime(self) -> None:
        self.require_gem()
        if DriverFeature.PRIME not in self.driver_cls.features:
            pytest.skip(f"driver {self.name} declares no PRIME feature (no dma-buf export)")

    def require_bo_create(self) -> None:
        self.require_gem()
        if self.driver_cls.bo_create is None and getattr(self.driver_cls, "bo_setup", None) is None:
            pytest.skip(
                f"driver {self.name} declares no bo_create (how to make a buffer object), "
                f"nor bo_setup (the steps that make one)"
            )

    def require_control_node(self) -> None:
        if DriverFeature.CONTROL_NODE not in self.driver_cls.features:
            pytest.skip(f"driver {self.name} declares no control node")

    # -- the end of a test --------------------------------------------------------
    def finish(self) -> tuple[str, str]:
        """Tear every rig down; returns (leak report, oops report), empty when clean."""
        if self._finished:
            return "", ""
        self._finished = True
        leaks: list[str] = []
        oopses: list[Oops] = []
        for i, rig in enumerate(self.rigs):
            try:
                rig.stop()
            except Deadlock as exc:
                leaks.append(f"machine {i}: device time never goes idle at the end: {exc}")
        for i, rig in enumerate(self.rigs):
            oopses.extend(rig.oopses())
            leaked = rig.leaks()
            if leaked:
                items = ", ".join(f"{k}: expected {b}, found {a}" for k, (b, a) in leaked.items())
                leaks.append(
                    f"machine {i}: resources still alive after every process exited "
                    f"(driver {self.name}): {items}"
                )
        if self.rigs:
            want = self._live_base + sum(r.built_memory for r in self.rigs)
            if LIVE.regions > want:
                leaks.append(
                    f"shared memory regions still alive after every process exited "
                    f"(driver {self.name}): expected {want}, found {LIVE.regions}"
                )
        return "\n".join(leaks), format_oopses(oopses) if oopses else ""
