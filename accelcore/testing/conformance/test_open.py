"""Opening and closing: many cycles leave nothing behind."""

from __future__ import annotations

from accelcore.driver import OwnershipPolicy
from accelcore.testing.conformance import check
from accelcore.testing.conformance.session import Conformance

CYCLES = 200


@check("open", "200 open/close cycles of the compute node return accounting to baseline")
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
