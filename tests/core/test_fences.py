"""Fences: merged sync files (dma_resv_get_singleton / unwrap) and the signalling
path's isolation of callbacks (dma_fence_signal)."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, DmaBuf, FenceArray, FenceContext, Process, Usage
from accelcore.errors import InvalidArgument
from accelcore.fence import Fence, SyncFile
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.vfs import POLLIN, POLLOUT

from .conftest import Rig


def _shared_buffer(rig: Rig, p: Process, fd: int | None = None) -> tuple[int, DmaBuf]:
    if fd is None:
        fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    ph = CORE.new("struct drm_prime_handle", handle=h)
    p.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    buf = p.task.files.get(ph.fd)
    assert isinstance(buf, DmaBuf)
    return int(ph.fd), buf


def _export_sync(p: Process, buf_fd: int, flags: int) -> int:
    args = CORE.new("struct dma_buf_export_sync_file", flags=flags)
    p.ioctl(buf_fd, CORE.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, args)
    return int(args.fd)


def _engines(rig: Rig, n: int) -> list[Fence]:
    return [FenceContext(rig.clock, "test", f"engine{i}").create() for i in range(n)]


def test_export_sync_file_waits_for_every_fence_signalled_in_reverse(rig: Rig) -> None:
    p = rig.process()
    buf_fd, buf = _shared_buffer(rig, p)
    fences = _engines(rig, 3)
    buf.resv.add_fence(fences[0], Usage.WRITE)
    buf.resv.add_fence(fences[1], Usage.READ)
    buf.resv.add_fence(fences[2], Usage.READ)
    sync = _export_sync(p, buf_fd, CORE.DMA_BUF_SYNC_WRITE)
    for fence in reversed(fences):  # the last added signals first
        assert not p.poll(sync) & POLLIN, f"sync file signalled before {fence}"
        fence.signal()
    assert p.poll(sync) & POLLIN


def test_export_sync_file_for_read_waits_only_for_writers(rig: Rig) -> None:
    p = rig.process()
    buf_fd, buf = _shared_buffer(rig, p)
    writer, reader = _engines(rig, 2)
    buf.resv.add_fence(writer, Usage.WRITE)
    buf.resv.add_fence(reader, Usage.READ)
    sync = _export_sync(p, buf_fd, CORE.DMA_BUF_SYNC_READ)
    writer.signal()
    assert p.poll(sync) & POLLIN  # a reader does not wait for other readers


def test_export_sync_file_ignores_bookkeep_fences(rig: Rig) -> None:
    p = rig.process()
    buf_fd, buf = _shared_buffer(rig, p)
    (bookkeep,) = _engines(rig, 1)
    buf.resv.add_fence(bookkeep, Usage.BOOKKEEP)
    sync = _export_sync(p, buf_fd, CORE.DMA_BUF_SYNC_RW)
    assert p.poll(sync) & POLLIN  # dma_resv_usage_rw never includes BOOKKEEP
    assert buf.poll() == POLLIN | POLLOUT


def test_exported_merge_carries_the_first_component_error(rig: Rig) -> None:
    p = rig.process()
    buf_fd, buf = _shared_buffer(rig, p)
    ok, failed = _engines(rig, 2)
    buf.resv.add_fence(ok, Usage.WRITE)
    buf.resv.add_fence(failed, Usage.READ)
    sync_file = p.task.files.get(_export_sync(p, buf_fd, CORE.DMA_BUF_SYNC_WRITE))
    assert isinstance(sync_file, SyncFile)
    failed.set_error(-errno.EIO)
    failed.signal()
    assert sync_file.fence.status() == 0
    ok.signal()
    assert sync_file.fence.status() == -errno.EIO


def test_import_sync_file_adds_every_component(rig: Rig) -> None:
    p = rig.process()
    dev_fd = p.open("/dev/accel/accel0")
    src_fd, src = _shared_buffer(rig, p, dev_fd)
    dst_fd, dst = _shared_buffer(rig, p, dev_fd)
    fences = _engines(rig, 3)
    for fence in fences:
        src.resv.add_fence(fence, Usage.WRITE)
    sync = _export_sync(p, src_fd, CORE.DMA_BUF_SYNC_WRITE)
    imp = CORE.new("struct dma_buf_import_sync_file", flags=CORE.DMA_BUF_SYNC_WRITE, fd=sync)
    p.ioctl(dst_fd, CORE.DMA_BUF_IOCTL_IMPORT_SYNC_FILE, imp)
    assert set(dst.resv.fences(Usage.WRITE)) == set(fences)
    for fence in reversed(fences):
        assert not dst.poll() & POLLIN
        fence.signal()
    assert dst.poll() & POLLIN


def test_fence_array_needs_a_fence() -> None:
    with pytest.raises(InvalidArgument):
        FenceArray([])


def test_fence_array_of_signalled_fences_is_signalled(rig: Rig) -> None:
    a, b = _engines(rig, 2)
    a.signal()
    b.signal()
    assert FenceArray([a, b]).signalled


def test_fence_array_flattens_nested_arrays(rig: Rig) -> None:
    a, b, c = _engines(rig, 3)
    outer = FenceArray([FenceArray([a, b]), c])
    assert outer.unwrap() == [a, b, c]


# -- callbacks that raise -----------------------------------------------------------


def _boom(fence: Fence) -> None:
    raise RuntimeError("callback bug")


def test_raising_callback_does_not_stop_the_others_nor_the_signal(rig: Rig) -> None:
    ctx = FenceContext(rig.clock, "test", "engine", oops=rig.dev.record_oops)
    fence = ctx.create()
    seen: list[str] = []
    fence.add_callback(lambda f: seen.append("before"))
    fence.add_callback(_boom)
    fence.add_callback(lambda f: seen.append("after"))
    assert fence.signal() is True  # nothing propagates to the signaller
    assert fence.signalled and seen == ["before", "after"]
    assert len(rig.dev.oopses) == 1 and "_boom" in rig.dev.oopses[0].where
    rig.expect["oopses"] = 1


def test_context_without_handler_records_on_the_subsystem(rig: Rig) -> None:
    fence = FenceContext(rig.clock, "test", "engine").create()
    fence.add_callback(_boom)
    fence.signal()
    assert len(rig.sub.oopses) == 1 and "RuntimeError" in rig.sub.oopses[0].exception
    rig.expect["oopses"] = 1


def _submit(p: Process, fd: int, handle: int, delay_ns: int) -> int:
    s = V.new("struct vaccel_submit", handle=handle, fill=7, delay_ns=delay_ns)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    return int(s.seqno)


def test_raising_callback_on_a_job_fence_is_the_signallers_oops(rig: Rig) -> None:
    # A owns accel0 and queues a short job whose fence gets a buggy callback; B owns
    # accel1 and waits for a longer job. In virtual time B's wait runs A's
    # completion: the oops is A's device's, B's wait succeeds, and A's buffer goes.
    a, b = rig.process(), rig.process()
    fa, fb = a.open("/dev/accel/accel0"), b.open("/dev/accel/accel1")
    ha, _ = rig.create_bo(a, fa)
    hb, _ = rig.create_bo(b, fb)
    seq_a = _submit(a, fa, ha, 1_000)
    rig.dev.files[0].context.jobs[seq_a].add_callback(_boom)
    a.ioctl(fa, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=ha))
    seq_b = _submit(b, fb, hb, 5_000)
    w = V.new("struct vaccel_wait", seqno=seq_b, timeout_ns=-1)
    b.ioctl(fb, V.DRM_IOCTL_VACCEL_WAIT, w)
    assert w.status == V.VACCEL_WAIT_COMPLETED
    assert [o.device for o in rig.sub.oopses] == [rig.dev.name]
    assert not rig.dev1.oopses
    assert len(rig.dev.buffers) == 0  # the job's reference went despite the bug
    rig.expect["oopses"] = 1


def test_raising_timer_is_the_timers_oops_not_the_waiters(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel1")
    h, _ = rig.create_bo(p, fd)

    def broken_engine() -> None:
        raise ValueError("engine model bug")

    rig.clock.call_later(10, broken_engine)
    seq = _submit(p, fd, h, 1_000)
    w = V.new("struct vaccel_wait", seqno=seq, timeout_ns=-1)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, w)
    assert w.status == V.VACCEL_WAIT_COMPLETED
    assert len(rig.sub.oopses) == 1 and "broken_engine" in rig.sub.oopses[0].where
    assert not rig.dev1.oopses
    rig.expect["oopses"] = 1
