"""The pytest plugin (entry point ``pytest11``): fixtures for driver tests, and the
conformance suite's driver selection.

Fixtures:
    accel_subsystem: a fresh :class:`~accelcore.subsystem.Subsystem` in virtual time.
    accel_leak_check: snapshots :meth:`Subsystem.accounting` and fails the test if
        anything is still alive, or an oops happened, when it ends.
    accel_process_factory: a :class:`~accelcore.testing.transports.ProcessFactory`;
        the test runs once per transport (ids ``inproc`` and ``server``, or those
        ``--accel-transport`` names), and ``factory(machine)`` gives a user
        process of the machine over it.
    accel_driver: the driver class under test (``--accel-driver``).
    accel_conformance: a :class:`~accelcore.testing.conformance.session.Conformance`
        session; after the test body every process exits and any leaked resource
        or oops fails the test.

The conformance suite (``accelcore.testing.conformance``) runs with::

    pytest --pyargs accelcore.testing.conformance --accel-driver NAME [--accel-driver NAME2]

``NAME`` is an ``accelcore.drivers`` entry point or ``module:Class``. Every test
that uses ``accel_conformance`` (or ``accel_driver``) is parametrized once per
driver, with the id ``drv=NAME``, and every test that uses ``accel_conformance``
once per transport, with the id ``via=inproc`` (an :class:`~accelcore.Process`
calling the engine directly) or ``via=server`` (sessions of a devfs server over
the machine); ``--accel-transport inproc|server`` (repeatable) selects them, both
by default. Without ``--accel-driver`` such tests are
collected once as ``drv=none`` and skipped, with a reason naming the option, so
a run that forgot it shows skips instead of passing silently; the project's own
``pytest`` run (``testpaths = ["tests"]``) never collects the package at all.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from ..clock import VirtualClock
from ..driver import AccelDriver
from ..machine import installed_drivers, load_driver
from ..subsystem import Subsystem
from .transports import TRANSPORTS, ProcessFactory

_SUMMARY = pytest.StashKey[list[str]]()


@pytest.fixture
def accel_subsystem() -> Subsystem:
    """A subsystem with no drivers, in virtual time."""
    return Subsystem(VirtualClock())


@pytest.fixture
def accel_leak_check(accel_subsystem: Subsystem) -> Iterator[Subsystem]:
    """The subsystem, checked at teardown for leaks and oopses."""
    before = accel_subsystem.accounting()
    yield accel_subsystem
    after = accel_subsystem.accounting()
    leaked = {k: (before[k], after[k]) for k in before if after[k] != before[k]}
    assert not leaked, f"resources leaked (before, after): {leaked}"


@pytest.fixture
def accel_process_factory(request: pytest.FixtureRequest) -> Iterator[ProcessFactory]:
    """User processes in process, then through a devfs server (one run each;
    parametrized by :func:`pytest_generate_tests`)."""
    factory = ProcessFactory(request.param)
    yield factory
    factory.close()


# -- the conformance suite --------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("accelcore", "accelcore conformance suite")
    group.addoption(
        "--accel-driver",
        action="append",
        default=[],
        metavar="NAME",
        help="run the conformance checks on this driver (an accelcore.drivers entry point "
        "or module:Class); repeatable",
    )
    group.addoption(
        "--accel-transport",
        action="append",
        default=[],
        choices=TRANSPORTS,
        metavar="TRANSPORT",
        help="run the conformance checks (and tests using accel_process_factory) through "
        "this transport: inproc or server; repeatable; default: both",
    )


def _transports(config: pytest.Config) -> list[str]:
    chosen: list[str] = config.getoption("accel_transport") or []
    return [t for t in TRANSPORTS if t in chosen] or list(TRANSPORTS)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SUMMARY] = []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    transports = _transports(metafunc.config)
    if "accel_process_factory" in metafunc.fixturenames:
        metafunc.parametrize("accel_process_factory", transports, indirect=True, ids=transports)
    if "accel_transport_name" in metafunc.fixturenames:
        metafunc.parametrize(
            "accel_transport_name", transports, ids=[f"via={t}" for t in transports]
        )
    if "accel_driver_name" not in metafunc.fixturenames:
        return
    names: list[str] = metafunc.config.getoption("accel_driver") or []
    if names:
        metafunc.parametrize("accel_driver_name", names, ids=[f"drv={n}" for n in names])
        return
    reason = (
        "no --accel-driver given: pass --accel-driver NAME to run the conformance checks "
        f"(installed: {', '.join(sorted(installed_drivers()))})"
    )
    metafunc.parametrize(
        "accel_driver_name",
        [pytest.param(None, marks=pytest.mark.skip(reason=reason))],
        ids=["drv=none"],
    )


@pytest.fixture
def accel_driver(accel_driver_name: str) -> type[AccelDriver]:
    """The driver class named by ``--accel-driver``."""
    try:
        return load_driver(accel_driver_name)
    except (OSError, ImportError) as exc:
        problem = f"--accel-driver {accel_driver_name}: {exc}"
    pytest.fail(problem, pytrace=False)


@pytest.fixture
def accel_conformance(
    request: pytest.FixtureRequest, accel_driver: type[AccelDriver], accel_transport_name: str
) -> Iterator[object]:
    """A conformance session for the driver over one transport; leaks and oopses
    fail the test."""
    from .conformance.session import Conformance

    conf = Conformance(
        accel_driver, request.config.stash.get(_SUMMARY, []), transport=accel_transport_name
    )
    yield conf
    conf.finish()  # when the test body never ran (a fixture failed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail the test that caused a leak or an oops, in its own call phase."""
    from .conformance.session import Conformance

    funcargs = getattr(item, "funcargs", {})
    conf = funcargs.get("accel_conformance")
    if not isinstance(conf, Conformance):
        return (yield)
    try:
        result = yield
    except BaseException as exc:
        _, oopses = conf.finish()
        if oopses:
            raise AssertionError(oopses) from exc
        raise
    leaks, oopses = conf.finish()
    if oopses or leaks:
        raise AssertionError("\n".join(x for x in (oopses, leaks) if x))
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("accelcore conformance")
        for line in lines:
            terminalreporter.write_line(line)
