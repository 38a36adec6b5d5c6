"""Restart and partial failure (seed 004): interrupted or failed calls converge.

For each ioctl with ``waits=True`` and an example: the uninterrupted run on a
fresh machine counts its wait points; then, for each wait point, a fresh machine
runs it with an interrupt injected there — once without ``SA_RESTART`` (the call
gets ``EINTR`` and is re-issued with the same struct, as libdrm's ``drmIoctl``
does) and once with it (the core restarts). The copied-out argument bytes and a
driver-neutral state snapshot must equal the uninterrupted run's.

For ``multi_device=True`` ioctls, a driver may offer the optional hook
``inject_failure(dev, position)``: the next multi-device call made on ``dev``
fails with an errno when it reaches the device at ``position`` (0-based, in the
order the call visits devices). Each position is tried; retrying the same
struct must converge to the uninterrupted state.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from accelcore.driver import IoctlDesc
from accelcore.testing.conformance import check
from accelcore.testing.conformance.payloads import decode_fields
from accelcore.testing.conformance.rig import Rig, example_setup
from accelcore.testing.conformance.session import Conformance

#: Retries of a call that keeps failing with EINTR (or an injected failure).
MAX_RETRIES = 16
#: Devices on machines for multi-device ioctls.
MULTI_DEVICES = 2


@dataclass
class Outcome:
    """What one run left behind."""

    args: bytes
    state: dict[str, Any]
    wait_points: int
    errors: list[int]


def _table(conf: Conformance, pick: Callable[[IoctlDesc], bool], what: str) -> list[IoctlDesc]:
    rows = [d for d in conf.driver().ioctl_table().values() if pick(d)]
    if not rows:
        pytest.skip(f"driver {conf.name} declares no ioctl with {what}")
    have = [d for d in rows if d.name in conf.driver.examples]
    if not have:
        pytest.skip(
            f"driver {conf.name} declares no example for its ioctls with {what} "
            f"({', '.join(sorted(d.name for d in rows))}): declare one in `examples`, with "
            f"the steps that make it valid (a buffer, a job…) in `example_setup`"
        )
    missing = sorted(d.name for d in rows if d.name not in conf.driver.examples)
    if missing:
        conf.report(
            f"not exercised (no `examples` entry, with `example_setup`): {', '.join(missing)}"
        )
    return sorted(have, key=lambda d: d.name)


def _run(
    conf: Conformance,
    desc: IoctlDesc,
    *,
    count: int = 1,
    interrupt: int | None = None,
    restart: bool = False,
    arm: Callable[[Rig], None] | None = None,
) -> Outcome:
    """Run ``desc``'s prepared example on a fresh machine until it succeeds
    (re-issuing the same struct after each failure, as ``drmIoctl`` does)."""
    setup = example_setup(conf.driver, desc.name)
    rig = conf.rig(count=max(count, setup.devices if setup is not None else 1))
    proc = rig.process(restart=restart)
    prep = rig.prepare(proc, desc.name)
    payload = bytearray(prep.payload)
    if arm is not None:
        arm(rig)
    proc.task.inject_interrupts(*(() if interrupt is None else (interrupt,)))
    errors: list[int] = []
    seen = 0
    for _ in range(MAX_RETRIES):
        try:
            proc.ioctl(prep.fd, desc.cmd, payload if payload else 0)
        except OSError as exc:
            errors.append(exc.errno or 0)
            seen = max(seen, proc.task.wait_points_seen)
            continue
        break
    seen = max(seen, proc.task.wait_points_seen)
    rig.settle()
    # A user array's address is where this process's allocator put it: not state
    # (through the server, arenas land wherever mmap puts them), so it is named.
    addrs = {
        res["addr"]: f"<address of {label}>"
        for label, res in prep.results.items()
        if isinstance(res, dict) and "addr" in res
    }
    args: dict[str, Any] = {}
    if desc.arg_type is not None:
        args = {
            f"args.{k}": addrs.get(v, v) if isinstance(v, int) else v
            for k, v in decode_fields(rig.uapi, desc.arg_type, bytes(payload)).items()
        }
    return Outcome(bytes(payload), {**args, **rig.snapshot()}, seen, errors)


def _diff(name: str, how: str, ref: Outcome, got: Outcome) -> list[str]:
    changes = []
    for key in sorted(set(ref.state) | set(got.state)):
        want, have = ref.state.get(key, "<absent>"), got.state.get(key, "<absent>")
        if want != have:
            changes.append(f"{key} {have!r} (uninterrupted: {want!r})")
    if not changes:
        return []
    return [f"{name} {how}: differs from the uninterrupted run: " + "; ".join(changes)]


@check(
    "restart",
    "an ioctl interrupted at each wait point (EINTR+reissue, SA_RESTART) converges: "
    "args and the whole snapshot equal the clean run's",
    catches="a wait that is not restartable; a restart that repeats work, seen in args, "
    "INFO or sysfs (a job run twice)",
)
def test_restart_at_every_wait_point(accel_conformance: Conformance) -> None:
    conf = accel_conformance
    problems: list[str] = []
    total = 0
    rows = _table(conf, lambda d: d.waits, "waits=True")
    for desc in rows:
        count = MULTI_DEVICES if desc.multi_device else 1
        ref = _run(conf, desc, count=count)
        if ref.errors:
            problems.append(f"{desc.name}: its example fails uninterrupted: errno {ref.errors}")
            continue
        total += ref.wait_points
        for k in range(ref.wait_points):
            for restart in (False, True):
                how = f"interrupted at wait point {k} ({'SA_RESTART' if restart else 'EINTR'})"
                got = _run(conf, desc, count=count, interrupt=k, restart=restart)
                allowed = {errno.EINTR} if not restart else set()
                bad = [e for e in got.errors if e not in allowed]
                if bad or len(got.errors) >= MAX_RETRIES:
                    problems.append(f"{desc.name} {how}: errnos {got.errors}, expected {allowed}")
                    continue
                problems += _diff(desc.name, how, ref, got)
    conf.report(
        f"restart checker: {total} wait point(s) exercised over {len(rows)} ioctl(s) "
        f"({', '.join(d.name for d in rows)})"
    )
    assert not problems, f"driver {conf.name}:\n  " + "\n  ".join(problems)


@check(
    "restart",
    "a multi-device ioctl failing at each device position, retried, converges",
    catches="a retried multi-device call that redoes devices it already did",
)
def test_multi_device_partial_failure(accel_conformance: Conformance) -> None:
    conf = accel_conformance
    rows = _table(conf, lambda d: d.multi_device, "multi_device=True")
    if not callable(getattr(conf.driver, "inject_failure", None)):
        pytest.skip(f"driver {conf.name} has no inject_failure(dev, position) hook")
    problems: list[str] = []
    for desc in rows:
        ref = _run(conf, desc, count=MULTI_DEVICES)
        if ref.errors:
            problems.append(f"{desc.name}: its example fails: errno {ref.errors}")
            continue
        for pos in range(MULTI_DEVICES):

            def arm(rig: Rig, pos: int = pos) -> None:
                rig.driver.inject_failure(rig.devices[0], pos)  # type: ignore[attr-defined]

            got = _run(conf, desc, count=MULTI_DEVICES, arm=arm)
            how = f"failing at device position {pos}"
            if not got.errors:
                problems.append(
                    f"{desc.name} {how}: inject_failure(dev, {pos}) never made the call fail"
                )
                continue
            if len(got.errors) >= MAX_RETRIES:
                problems.append(f"{desc.name} {how}: errnos {got.errors}; retry never converged")
                continue
            problems += _diff(desc.name, how, ref, got)
    conf.report(f"partial-failure checker: {len(rows)} multi-device ioctl(s)")
    assert not problems, f"driver {conf.name}:\n  " + "\n  ".join(problems)
