"""The conformance suite passes on vaccel and fails, saying what is wrong, on broken drivers.

Each run is a whole ``pytest --pyargs accelcore.testing.conformance`` session
inside this one (pytester, in process).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).parent
# The inner session runs in this process, where accelcore is already imported, so
# pytest cannot rewrite its asserts and says so (under the plain `pytest` script):
# a fact about nesting sessions, not about the suite, so that one warning is off.
SUITE = (
    "--pyargs",
    "accelcore.testing.conformance",
    "-p",
    "no:cacheprovider",
    "-rA",
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
)


def _broken_drivers() -> ModuleType:
    # Imported by file (the tests run with --import-mode=importlib); the inner
    # sessions import it by name as "broken_drivers", so it is registered so.
    mod = sys.modules.get("broken_drivers")
    if mod is None:
        spec = importlib.util.spec_from_file_location("broken_drivers", HERE / "broken_drivers.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["broken_drivers"] = mod
        spec.loader.exec_module(mod)
    return mod


BROKEN = _broken_drivers().BROKEN


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.syspathinsert(HERE)
    return pytester.runpytest_inprocess(*SUITE, *args)


def test_suite_passes_on_vaccel(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--accel-driver", "vaccel")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 25
    result.stdout.fnmatch_lines(
        [
            "*accelcore conformance*",
            "drv=vaccel via inproc: fuzz: * calls*",
            "drv=vaccel via server: fuzz: * calls*",
        ]
    )
    # Each check ran through both transports, to the same outcome.
    assert outcomes["passed"] % 2 == 0 and outcomes.get("skipped", 0) % 2 == 0, outcomes


def test_without_driver_everything_skips(pytester: pytest.Pytester) -> None:
    result = _run(pytester)
    outcomes = result.parseoutcomes()
    assert set(outcomes) == {"skipped"}, result.stdout.str()
    result.stdout.fnmatch_lines(["*no --accel-driver given*"])
    assert result.ret == pytest.ExitCode.OK


def test_suite_runs_two_drivers(pytester: pytest.Pytester) -> None:
    spec = "broken_drivers:FlagsIgnored"
    result = _run(
        pytester, "--accel-driver", "vaccel", "--accel-driver", spec, "-k", "all_ones_flags"
    )
    for via in ("inproc", "server"):
        result.stdout.fnmatch_lines(
            [
                f"PASSED *test_all_ones_flags_einval[[]via={via}-drv=vaccel[]]*",
                f"FAILED *test_all_ones_flags_einval[[]via={via}-drv=broken_drivers:Flags*",
            ]
        )


def test_partial_failure_checker_passes_a_resumable_driver(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--accel-driver", "broken_drivers:MultiDevice", "-k", "multi_device")
    result.assert_outcomes(passed=2)  # through each transport
    result.stdout.fnmatch_lines(["*partial-failure checker: 1 multi-device ioctl(s)*"])


def test_declarations_without_setup_keep_working(pytester: pytest.Pytester) -> None:
    result = _run(pytester, "--accel-driver", "broken_drivers:LegacyDeclarations")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["SKIPPED*test_restart.py*DRM_IOCTL_VACCEL_WAIT*example_setup*"])


@pytest.mark.parametrize("driver", ["habana_like", "kfd_like"])
def test_restart_matrix_reaches_the_reference_drivers_waits(
    pytester: pytest.Pytester, driver: str
) -> None:
    # habana_like's WAIT_CS wrote its output over its input before waiting: the
    # restarted call got EINVAL. kfd_like's waits live on /dev/kfd.
    result = _run(pytester, "--accel-driver", driver, "-k", "restart")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    waits = {"habana_like": "DRM_IOCTL_HLK_WAIT_CS", "kfd_like": "DRM_IOCTL_KFD_WAIT_EVENTS"}
    result.stdout.fnmatch_lines([f"*restart checker: * wait point(s) exercised*{waits[driver]}*"])
    assert "restart checker: 0 wait point" not in result.stdout.str()


@pytest.mark.parametrize("broken", BROKEN, ids=[b.cls.__name__ for b in BROKEN])
def test_suite_catches_broken_driver(pytester: pytest.Pytester, broken: object) -> None:
    name = broken.cls.__name__  # type: ignore[attr-defined]
    # Only the check that must catch it: the whole suite on vaccel's variants costs
    # CI minutes and proves nothing more about this bug.
    result = _run(pytester, "--accel-driver", f"broken_drivers:{name}", "-k", broken.check)  # type: ignore[attr-defined]
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    for via in ("inproc", "server"):  # the bug shows through both transports
        assert any(
            line.startswith(("FAILED", "ERROR")) and f"{broken.check}[via={via}-" in line  # type: ignore[attr-defined]
            for line in out.splitlines()
        ), f"{broken.check} did not fail for {name} via {via}:\n{out}"  # type: ignore[attr-defined]
    for word in broken.message:  # type: ignore[attr-defined]
        assert word in out, f"the failure report for {name} does not say {word!r}:\n{out}"
