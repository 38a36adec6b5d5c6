"""Opening and closing: many cycles leave nothing behind."""

from __future__ import annotations

import pytest

from accelcore.driver import OwnershipPolicy
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import SetupError
from accelcore.testing.conformance.session import Conformance

CYCLES = 200


@check(
    "open",
    "200 open/close cycles of the compute node return accounting to baseline",
    catches="a per-file allocation leaked at close",
)
def test_open_close_cycles(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    proc = rig.process()
    before = rig.subsystem.accounting()
    opens = rig.devices[0].opens_total
    for i in range(CYCLES):
        fd = rig.open(proc)
        proc.close(fd)
        after = rig.subsystem.accounting()
        changed = {k: f"{before[k]} -> {after[k]}" for k in before if after[k] != before[k]}
        assert not changed, f"after open/close cycle {i}, resources changed: {changed}"
    assert rig.devices[0].opens_total == opens + CYCLES


@check("open", "many files open at once (when the policy allows) close back to baseline")
def test_many_open_files(accel_conformance: Conformance) -> None:
    rig = accel_conformance.rig()
    n = 1 if rig.policy == OwnershipPolicy.EXCLUSIVE_OPEN else 64
    procs = [rig.process() for _ in range(4)]
    before = rig.subsystem.accounting()
    fds = [(p, rig.open(p)) for _ in range(n // 4 or 1) for p in procs[: n if n < 4 else 4]]
    assert len(rig.devices[0].files) == len(fds)
    for p, fd in fds:
        p.close(fd)
    after = rig.subsystem.accounting()
    changed = {k: f"{before[k]} -> {after[k]}" for k in before if after[k] != before[k]}
    assert not changed, f"after closing {len(fds)} files, resources changed: {changed}"


#: Contexts the churn check creates and destroys: more than any fixed per-device
#: table of contexts (ASIDs, PASIDs, doorbell pages) a driver could have.
CHURN = 300


@check(
    "open",
    f"{CHURN} cycles of open, an ioctl that needs the compute context, close: every one "
    "succeeds and frees its context",
    catches="a per-context resource never freed (a fixed table of contexts runs out)",
)
def test_context_churn(accel_conformance: Conformance) -> None:
    rig = accel_conformance.example_rig()
    name = rig.context_example()
    if name is None:
        pytest.skip(
            f"driver {rig.name}: no example makes a compute context (declare an `examples` "
            f"entry of an OWNER ioctl, or one whose `example_setup` acquires a context)"
        )
    base = rig.subsystem.accounting()
    for i in range(CHURN):
        proc = rig.process()
        try:
            rig.run_example(proc, rig.open(proc), name)
        except (OSError, SetupError) as exc:
            raise AssertionError(
                f"driver {rig.name}: {name} failed in open/ioctl/close cycle {i} of {CHURN}: "
                f"{exc} (a per-context resource is not freed at close)"
            ) from exc
        finally:
            proc.exit()
        rig.settle()
        after = rig.subsystem.accounting()
        changed = {
            k: f"{base[k]} -> {after.get(k)}"
            for k in base
            if k not in {"shared_memory", "oopses"} and after.get(k) != base[k]
        }
        assert not changed, (
            f"driver {rig.name}: after open/{name}/close cycle {i}, resources changed: {changed}"
        )
    accel_conformance.report(f"context churn: {CHURN} cycles of open/{name}/close")
