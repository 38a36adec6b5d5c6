"""The preload library's session handles (protocol v2, ``programs/handles.c``).

What travels is observed at the server: a spy wraps the session's IOCTL and
CLOSE handlers (:meth:`Session._ioctl`, :meth:`Session._close`) in this test
process, where the server runs, and records for each request the handle it
named and how many ``SCM_RIGHTS`` descriptors came with it — the descriptors
the record carried, as received, before the server resolves them. Nothing in
the server is changed for the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from accelcore.machine import Machine
from accelcore.server import protocol as p
from accelcore.server.session import Session

from .conftest import Run, settled

NODE, OTHER = "/dev/accel/accel0", "/dev/accel/accel1"


@dataclass(frozen=True)
class Sent:
    """One IOCTL as the server received it."""

    pid: int
    fd: int
    handle: int
    descriptors: int


@dataclass
class Spy:
    ioctls: list[Sent]
    closes: list[tuple[int, bool]]

    def of(self, pid: str | int, fd: str | int) -> list[Sent]:
        return [s for s in self.ioctls if s.pid == int(pid) and s.fd == int(fd)]

    def forgets(self, pid: str | int) -> list[bool]:
        return [forget for who, forget in self.closes if who == int(pid)]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    seen = Spy([], [])
    ioctl, close = Session._ioctl, Session._close

    def spy_ioctl(self: Session, rid: int, msg: p.Ioctl, fds: list[int]) -> None:
        seen.ioctls.append(Sent(self.pid, msg.fd, msg.handle, len(fds)))
        ioctl(self, rid, msg, fds)

    def spy_close(self: Session, rid: int, msg: p.Close, fds: list[int]) -> None:
        seen.closes.append((self.pid, msg.forget))
        close(self, rid, msg, fds)

    monkeypatch.setattr(Session, "_ioctl", spy_ioctl)
    monkeypatch.setattr(Session, "_close", spy_close)
    yield seen


@pytest.fixture
def minors(machine: Machine) -> dict[str, str]:
    return {d.node_path: str(d.minor) for d in machine.subsystem.devices}


def _run(run_native: Callable[..., Run], what: str) -> dict[str, Any]:
    res = run_native("handles.c", what, NODE, OTHER)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res.lines()


def test_repeated_ioctls_carry_the_descriptor_at_most_once(
    run_native: Callable[..., Run], spy: Spy, minors: dict[str, str], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "repeat")
    opened, passed = out["fds"].split()
    assert [out[f"opened_{i}"] for i in range(5)] == [minors[NODE]] * 5
    assert [out[f"passed_{i}"] for i in range(5)] == [minors[NODE]] * 5
    # Opened: OPEN's answer named the handle, so no call carries the descriptor.
    calls = spy.of(out["pid"], opened)
    assert len(calls) == 5
    handle = calls[0].handle
    assert handle and all(c.handle == handle and c.descriptors == 0 for c in calls)
    # Received with SCM_RIGHTS: the first call proves it; the rest name the
    # handle its answer gave, the file's (the same as the opened descriptor's).
    calls = spy.of(out["pid"], passed)
    assert [(c.handle, c.descriptors) for c in calls] == [(0, 1)] + [(handle, 0)] * 4
    assert out["close"] == "0 0"
    assert spy.forgets(out["pid"]) == [False, True]  # the second close was the last
    assert settled(machine, baseline) == baseline


def test_a_reused_number_reaches_its_new_file(
    run_native: Callable[..., Run], spy: Spy, minors: dict[str, str], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "reuse")
    assert out["opened_before"] == minors[NODE]
    assert out["opened_same_number"] == "1"
    assert out["opened_after_close"] == minors[OTHER]
    assert out["passed_before"] == minors[NODE]
    assert out["passed_same_number"] == "1"
    # Without the close forgetting the number's handle this would reach NODE.
    assert out["passed_after_close"] == minors[OTHER]
    assert out["dup2"] == "1"
    assert out["after_dup2"] == minors[NODE]
    assert out["close"] == "0 0 0"
    assert settled(machine, baseline) == baseline


def test_copies_share_the_handle_and_the_last_close_forgets_it(
    run_native: Callable[..., Run], spy: Spy, minors: dict[str, str], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "dup")
    _original, *copies = out["fds"].split()
    assert int(copies[1]) >= 20 and copies[2] == "30"
    assert out["close_original"] == "0"
    assert out["dup"] == out["fdupfd"] == out["dup3"] == out["last"] == minors[NODE]
    assert out["close_copies"] == "0 0" and out["close_last"] == "0"
    calls = [c for fd in copies for c in spy.of(out["pid"], fd)]
    assert len(calls) == 4
    assert calls[0].handle and {(c.handle, c.descriptors) for c in calls} == {(calls[0].handle, 0)}
    # Four descriptors of one file: only the last one's CLOSE lets the handle go.
    assert spy.forgets(out["pid"]) == [False, False, False, True]
    assert settled(machine, baseline) == baseline


def test_a_forked_child_proves_its_inherited_descriptor_in_its_own_session(
    run_native: Callable[..., Run], spy: Spy, minors: dict[str, str], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "fork")
    assert out["child_status"] == "0"
    assert out["parent_before"] == out["parent_after"] == minors[NODE]
    assert out["child_other"] == minors[OTHER]
    # The child's session gave OTHER the handle the parent's gave NODE: a child
    # using the parent's cached handle would reach OTHER here.
    assert out["child_inherited"] == out["child_inherited_again"] == minors[NODE]
    parent = [c for c in spy.ioctls if c.pid == int(out["pid"])]
    child = [c for c in spy.ioctls if c.pid == int(out["child_pid"])]
    assert len(parent) == 2 and parent[0].handle == parent[1].handle != 0
    assert [c.descriptors for c in parent] == [0, 0]
    assert child[0].handle == parent[0].handle  # OTHER, by its OPEN in the child
    assert [(c.handle == 0, c.descriptors) for c in child[1:]] == [(True, 1), (False, 0)]
    assert settled(machine, baseline) == baseline


def test_a_number_past_the_handle_cache_keeps_sending_its_descriptor(
    run_native: Callable[..., Run], spy: Spy, minors: dict[str, str], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "far")
    if int(out["far_fd"]) < 0:
        pytest.skip("RLIMIT_NOFILE's hard limit keeps descriptor numbers below 8000")
    assert [out[f"far_{i}"] for i in range(3)] == [minors[NODE]] * 3
    calls = spy.of(out["pid"], out["far_fd"])
    assert [(c.handle, c.descriptors) for c in calls] == [(0, 1)] * 3
    assert out["close"] == "0"
    assert settled(machine, baseline) == baseline


def test_close_range_and_closefrom_close_as_close_does(
    run_native: Callable[..., Run], spy: Spy, minors: dict[str, str], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "range")
    assert out["before"] == out["before_closefrom"] == minors[NODE]
    assert out["close_range"] == "0"
    assert out["range_same_number"] == out["closefrom_same_number"] == "1"
    # The numbers closed by range forgot their handle (else: NODE's file).
    assert out["after_close_range"] == out["after_closefrom"] == minors[OTHER]
    assert out["session_alive"] == minors[NODE]  # the library's session was spared
    assert out["close"] == "0 0 0"
    # Each closed a copy of a file the program still holds: CLOSE, no forget.
    assert spy.forgets(out["pid"])[:2] == [False, False]
    assert settled(machine, baseline) == baseline


def test_a_first_answer_racing_with_the_forgetting_close_is_not_kept(
    run_native: Callable[..., Run], minors: dict[str, str], machine: Machine
) -> None:
    """A thread's first call on a passed copy may be answered with the handle the
    main thread's concurrent last close is making the server forget; the library
    must not keep it (the thread's next call would be ``EBADF``)."""
    baseline = machine.subsystem.accounting()
    out = _run(run_native, "race")
    assert out["race_minor"] == minors[NODE]
    assert out["race_bad"] == "0"
    assert settled(machine, baseline) == baseline
