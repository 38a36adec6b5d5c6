"""``proc.batch()``: each call runs as it would alone — its own return value,
errno, restart or ``EINTR``, descriptors it returns — in order, in process and
through the server (where up to 64 calls travel in one BATCH record)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from accelcore import CORE, Process
from accelcore.errors import InvalidArgument
from accelcore.server import protocol as p
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import Rig
from .test_syncobj import Client


def _outcome(call: Any) -> tuple[str, int]:
    return ("errno", call.error.errno) if call.error else ("ret", call.result())


def test_each_call_has_the_result_it_has_alone(rig_both: Rig) -> None:
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    closed = proc.dup(fd)
    proc.close(closed)
    alone = [CORE.new("struct drm_version") for _ in range(2)]
    batched = [CORE.new("struct drm_version") for _ in range(2)]

    def calls(version: Any) -> list[tuple[int, int, Any]]:
        return [
            (fd, CORE.DRM_IOCTL_VERSION, version),
            (fd, 0xDEAD, 0),  # no such ioctl: ENOTTY
            (closed, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version")),  # EBADF
            (fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=77)),
        ]

    expected = []
    for f, cmd, arg in calls(alone[0]):
        try:
            expected.append(("ret", proc.ioctl(f, cmd, arg)))
        except OSError as exc:
            expected.append(("errno", exc.errno))
    with proc.batch() as b:
        queued = [b.ioctl(f, cmd, arg) for f, cmd, arg in calls(batched[0])]
        assert len(b) == 4 and not queued[0].done
    assert [_outcome(c) for c in queued] == expected
    assert expected[1:] == [
        ("errno", errno.ENOTTY),
        ("errno", errno.EBADF),
        ("errno", errno.EINVAL),
    ]
    assert bytes(CORE.to_bytes(batched[0]))[:12] == bytes(CORE.to_bytes(alone[0]))[:12]
    assert batched[0].version_major == 1
    proc.close(fd)


def test_a_batch_longer_than_a_record_keeps_its_order(rig_both: Rig) -> None:
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    n = 2 * p.MAX_BATCH + 5
    creates = [V.new("struct vaccel_create_bo", size=4096) for _ in range(n)]
    with proc.batch() as b:
        calls = [b.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, a) for a in creates]
    assert all(c.result() == 0 for c in calls)
    handles = [a.handle for a in creates]
    assert handles == sorted(handles) and len(set(handles)) == n  # made in order
    with proc.batch() as b:
        for h in handles:
            b.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h))
    proc.close(fd)


def test_a_call_refused_before_the_kernel_fails_alone(rig_both: Rig) -> None:
    """An argument of no kind (EINVAL), or a command wider than 32 bits, fails
    that call as it fails alone, wherever it sits — first, mid-record, in a later record —
    and the calls around it run, in order (through the server they once failed
    the whole submit, leaving every call uncompleted)."""
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    n = p.MAX_BATCH + 20
    bad = {0: (V.DRM_IOCTL_VACCEL_NOP, "not an argument"), 30: (1 << 40, 0)}
    bad[p.MAX_BATCH + 7] = (V.DRM_IOCTL_VACCEL_NOP, object())
    expected = {}
    for i, (cmd, arg) in bad.items():
        with pytest.raises(OSError) as alone:
            proc.ioctl(fd, cmd, arg)
        expected[i] = alone.value.errno
    assert expected[0] == expected[p.MAX_BATCH + 7] == errno.EINVAL
    nops = [V.new("struct vaccel_nop", value=i) for i in range(n)]
    with proc.batch() as b:
        calls = [
            b.ioctl(fd, *bad[i]) if i in bad else b.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nops[i])
            for i in range(n)
        ]
    assert all(c.done for c in calls)
    assert {i: c.error.errno for i, c in enumerate(calls) if c.error} == expected
    assert [nops[i].result for i in range(n) if i not in bad] == [
        i + 1 for i in range(n) if i not in bad
    ]
    proc.close(fd)


def test_calls_returning_descriptors_each_get_them_all(rig_both: Rig) -> None:
    """More descriptors than one reply may carry: each call still gets its own."""
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    bo = V.new("struct vaccel_create_bo", size=4096)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    n = p.MAX_FDS + 4
    exports = [
        CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC)
        for _ in range(n)
    ]
    with proc.batch() as b:
        calls = [b.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, a) for a in exports]
    assert [c.error for c in calls] == [None] * n
    fds = [a.fd for a in exports]
    assert len(set(fds)) == n
    for dmabuf in fds:
        proc.close(dmabuf)  # each an open descriptor of this process (else EBADF)
    proc.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=bo.handle))
    proc.close(fd)


def test_an_interrupted_wait_is_eintr_and_the_next_call_runs(rig_both: Rig) -> None:
    c = Client(rig_both)
    h = c.create()
    c.job(5000, out=h)
    c.proc.task.inject_interrupts(0)
    args = [
        CORE.new(
            "struct drm_syncobj_wait",
            handles=c.u32s(h),
            count_handles=1,
            timeout_nsec=8000,
        )
        for _ in range(2)
    ]
    with c.proc.batch() as b:
        first, second = (b.ioctl(c.fd, CORE.DRM_IOCTL_SYNCOBJ_WAIT, a) for a in args)
    assert first.error is not None and first.error.errno == errno.EINTR
    assert second.result() == 0  # the same wait, alone after the signal, completes
    assert rig_both.clock.now() == 5000


def test_restart_semantics_follow_the_process(rig_both: Rig) -> None:
    c = Client(rig_both, rig_both.process(restart=True))
    h = c.create()
    c.job(5000, out=h)
    c.proc.task.inject_interrupts(0)
    wait = CORE.new(
        "struct drm_syncobj_wait", handles=c.u32s(h), count_handles=1, timeout_nsec=8000
    )
    with c.proc.batch() as b:
        call = b.ioctl(c.fd, CORE.DRM_IOCTL_SYNCOBJ_WAIT, wait)
    assert call.result() == 0  # SA_RESTART: restarted, not EINTR
    assert rig_both.clock.now() == 5000


def test_results_before_submit_and_discarded_batches(rig_both: Rig) -> None:
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    b = proc.batch()
    call = b.ioctl(fd, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version"))
    with pytest.raises(InvalidArgument, match="submit its batch first"):
        call.result()
    assert b.submit() == [call] and call.result() == 0
    assert b.submit() == []  # reusable, and empty now
    never = CORE.new("struct drm_gem_close", handle=1)
    with pytest.raises(RuntimeError), proc.batch() as b:
        dropped = b.ioctl(fd, CORE.DRM_IOCTL_GEM_CLOSE, never)
        raise RuntimeError("the block failed: nothing is submitted")
    assert not dropped.done
    proc.close(fd)


def test_a_failed_transport_completes_the_calls_it_left_with_its_error() -> None:
    """A transport that fails midway (the server session ended: ENODEV) makes
    submit() raise, and the calls it did not complete carry that error, rather
    than saying they were never submitted."""
    from accelcore.batch import Batch
    from accelcore.errors import NoDevice

    def run(calls: Any) -> None:
        calls[0].set_result(7)
        raise NoDevice("the devfs server session ended")

    b = Batch(run)
    first, second = b.ioctl(3, 1), b.ioctl(3, 2)
    with pytest.raises(NoDevice):
        b.submit()
    assert first.result() == 7
    assert second.done and second.error is not None and second.error.errno == errno.ENODEV
    with pytest.raises(NoDevice):
        second.result()


def test_in_process_batch_is_the_single_calls() -> None:
    from accelcore.testing import vaccel_subsystem

    sub, dev = vaccel_subsystem()
    proc = Process(sub)
    fd = proc.open(dev.node_path)
    with proc.batch() as b:
        v = b.ioctl(fd, CORE.DRM_IOCTL_VERSION, CORE.new("struct drm_version"))
    assert v.result() == 0 and repr(v).startswith("<BatchedIoctl")
    proc.exit()


def test_arguments_are_read_when_the_batch_is_submitted(rig_both: Rig) -> None:
    """One buffer passed to two calls: both run on the bytes it held at submit, in
    process and through the server alike. SYNCOBJ_CREATE writes its new handle
    at offset 0; SYNCOBJ_DESTROY, batched after it on the same buffer, reads the
    0 that was there at submit (EINVAL), not the new handle."""
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    shared = bytearray(8)
    with proc.batch() as b:
        create = b.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_CREATE, shared)
        destroy = b.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_DESTROY, shared)
    assert create.result() == 0
    assert destroy.error is not None and destroy.error.errno == errno.EINVAL
    # The same two calls alone: the second reads the handle the first wrote.
    alone = bytearray(8)
    proc.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_CREATE, alone)
    assert proc.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_DESTROY, alone) == 0
    proc.close(fd)


def test_command_and_address_are_taken_as_the_system_call_takes_them(rig_both: Rig) -> None:
    """``cmd`` is an unsigned int and ``arg`` an unsigned long, as ``fcntl.ioctl``
    passes them: higher bits are dropped, the same through either transport."""
    proc = rig_both.process()
    fd = proc.open(rig_both.dev.node_path)
    v = CORE.new("struct drm_version")
    assert proc.ioctl(fd, CORE.DRM_IOCTL_VERSION | (1 << 40), v) == 0
    with pytest.raises(OSError) as wide:
        proc.ioctl(fd, CORE.DRM_IOCTL_VERSION, -4096)  # 2**64 - 4096: unmapped
    assert wide.value.errno == errno.EFAULT
    with pytest.raises(OSError) as bad_fd:
        proc.ioctl(1 << 40, CORE.DRM_IOCTL_VERSION, v)
    assert bad_fd.value.errno == errno.EBADF
    proc.close(fd)
