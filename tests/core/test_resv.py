"""Buffer objects carry reservation objects shared with their dma-bufs: the job
fences a driver adds are seen by poll, EXPORT_SYNC_FILE, bufinfo and importers
(implicit sync), and the resv wait helper behaves like drm_gem_dma_resv_wait."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE, Process, Usage
from accelcore.testing.transports import file_of
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.vfs import POLLIN, POLLOUT

from .conftest import Rig


def _owner(rig: Rig, dev_index: int = 0, size: int = 4096) -> tuple[Process, int, int]:
    proc = rig.process()
    dev = rig.dev if dev_index == 0 else rig.dev1
    fd = proc.open(dev.node_path)
    handle, _ = rig.create_bo(proc, fd, size)
    return proc, fd, handle


def _export(proc: Process, fd: int, handle: int) -> int:
    a = CORE.new("struct drm_prime_handle", handle=handle, flags=CORE.DRM_RDWR)
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, a)
    return int(a.fd)


def _import(proc: Process, fd: int, buf_fd: int) -> int:
    a = CORE.new("struct drm_prime_handle", fd=buf_fd)
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, a)
    return int(a.handle)


def _fill(proc: Process, fd: int, handle: int, byte: int, delay_ns: int) -> int:
    a = V.new("struct vaccel_submit", handle=handle, fill=byte, delay_ns=delay_ns)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, a)
    return int(a.seqno)


def test_export_shares_the_buffer_objects_reservation(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    buf_fd = _export(proc, fd, h)
    bo = rig.dev.files[0].handles.lookup(h)
    assert file_of(proc, buf_fd).resv is bo.resv  # type: ignore[attr-defined]


def test_import_on_another_device_shares_the_dmabufs_reservation(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    buf_fd = _export(proc, fd, h)
    fd1 = proc.open(rig.dev1.node_path)
    h1 = _import(proc, fd1, buf_fd)
    theirs = rig.dev1.files[0].handles.lookup(h1)
    assert theirs.resv is rig.dev.files[0].handles.lookup(h).resv


def test_dmabuf_of_a_buffer_being_written_polls_busy_until_the_job_ends(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    buf_fd = _export(proc, fd, h)
    _fill(proc, fd, h, 0x11, delay_ns=5000)
    assert proc.poll(buf_fd) & (POLLIN | POLLOUT) == 0
    rig.clock.advance(5000)
    assert proc.poll(buf_fd) & (POLLIN | POLLOUT) == POLLIN | POLLOUT


def test_reader_fence_blocks_pollout_but_not_pollin(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    dst_h, _ = rig.create_bo(proc, fd)
    buf_fd = _export(proc, fd, h)
    cp = V.new("struct vaccel_copy", src_handle=h, dst_handle=dst_h, delay_ns=5000)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_COPY, cp)  # reads h
    assert proc.poll(buf_fd) & (POLLIN | POLLOUT) == POLLIN
    rig.clock.advance(5000)


def test_export_sync_file_waits_for_the_writing_job(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    buf_fd = _export(proc, fd, h)
    _fill(proc, fd, h, 0x22, delay_ns=7000)
    a = CORE.new("struct dma_buf_export_sync_file", flags=CORE.DMA_BUF_SYNC_READ)
    proc.ioctl(buf_fd, CORE.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, a)
    assert proc.poll(a.fd) == 0
    rig.clock.advance(7000)
    assert proc.poll(a.fd) == POLLIN
    proc.close(a.fd)


def test_export_sync_file_for_write_waits_for_every_job(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    other = rig.process()
    ofd = other.open(rig.dev1.node_path)
    buf_fd = _export(proc, fd, h)
    oh = _import(other, ofd, proc.send_fd(buf_fd, other))
    _fill(proc, fd, h, 0x22, delay_ns=1000)
    _fill(other, ofd, oh, 0x33, delay_ns=9000)  # waits for the first, then runs 9000 ns
    a = CORE.new("struct dma_buf_export_sync_file", flags=CORE.DMA_BUF_SYNC_WRITE)
    proc.ioctl(buf_fd, CORE.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, a)
    rig.clock.advance(1000)
    assert proc.poll(a.fd) == 0  # a merge of both jobs' fences: one is still busy
    rig.clock.advance(9000)
    assert proc.poll(a.fd) == POLLIN
    proc.close(a.fd)


def test_bufinfo_lists_the_job_fences_with_their_usage(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    _export(proc, fd, h)
    _fill(proc, fd, h, 0x44, delay_ns=3000)
    (info,) = rig.sub.dmabufs.bufinfo()
    assert [(f["usage"], f["driver"], f["signalled"]) for f in info["fences"]] == [
        ("write", "vaccel", False)
    ]
    rig.clock.advance(3000)


def test_importer_job_waits_for_the_exporters_writer(rig_both: Rig) -> None:
    """Implicit sync between two devices in two processes, no fence passed: the
    reader's copy runs only after the writer's fill, so it copies the new bytes."""
    rig = rig_both
    writer, wfd, wh = _owner(rig)
    buf_fd = _export(writer, wfd, wh)
    reader = rig.process()
    rfd = reader.open(rig.dev1.node_path)
    src = _import(reader, rfd, writer.send_fd(buf_fd, reader))
    dst, dst_off = rig.create_bo(reader, rfd)
    _fill(writer, wfd, wh, 0x5A, delay_ns=50_000)
    cp = V.new("struct vaccel_copy", src_handle=src, dst_handle=dst, delay_ns=1)
    reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_COPY, cp)
    rig.clock.advance(10)
    w = V.new("struct vaccel_wait", seqno=cp.seqno, timeout_ns=0)
    with pytest.raises(OSError) as exc:
        reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_WAIT, w)
    assert exc.value.errno == errno.ETIMEDOUT  # still waiting for the writer
    w.timeout_ns = -1
    reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_WAIT, w)
    assert w.status == V.VACCEL_WAIT_COMPLETED
    m = reader.mmap(rfd, 4096, dst_off)
    assert bytes(m.view[:8]) == b"\x5a" * 8


def test_writer_waits_for_readers_of_another_device(rig_both: Rig) -> None:
    rig = rig_both
    writer, wfd, wh = _owner(rig)
    buf_fd = _export(writer, wfd, wh)
    reader = rig.process()
    rfd = reader.open(rig.dev1.node_path)
    src = _import(reader, rfd, writer.send_fd(buf_fd, reader))
    dst, dst_off = rig.create_bo(reader, rfd)
    cp = V.new("struct vaccel_copy", src_handle=src, dst_handle=dst, delay_ns=20_000)
    reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_COPY, cp)  # reads the zeros for 20 µs
    seq = _fill(writer, wfd, wh, 0x77, delay_ns=1)
    reader.ioctl(
        rfd, V.DRM_IOCTL_VACCEL_WAIT, V.new("struct vaccel_wait", seqno=cp.seqno, timeout_ns=-1)
    )
    m = reader.mmap(rfd, 4096, dst_off)
    assert bytes(m.view[:4]) == b"\0" * 4  # the fill did not overtake the reader
    writer.ioctl(
        wfd, V.DRM_IOCTL_VACCEL_WAIT, V.new("struct vaccel_wait", seqno=seq, timeout_ns=-1)
    )


# -- the wait helper (drm_gem_dma_resv_wait) --------------------------------------


def _wait_bo(proc: Process, fd: int, handle: int, timeout_ns: int, write: bool = False) -> object:
    a = V.new(
        "struct vaccel_wait_bo",
        handle=handle,
        flags=V.VACCEL_WAIT_BO_WRITE if write else 0,
        timeout_ns=timeout_ns,
    )
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT_BO, a)
    return a


def test_wait_bo_returns_when_the_writer_is_done(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    _fill(proc, fd, h, 1, delay_ns=4000)
    _wait_bo(proc, fd, h, -1)
    assert rig.clock.now() == 4000


def test_wait_bo_unknown_handle_is_einval(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, _ = _owner(rig)
    with pytest.raises(OSError) as exc:
        _wait_bo(proc, fd, 99, 0)
    assert exc.value.errno == errno.EINVAL


def test_wait_bo_busy_at_timeout_is_etime(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    _fill(proc, fd, h, 1, delay_ns=4000)
    with pytest.raises(OSError) as exc:
        _wait_bo(proc, fd, h, 1000)
    assert exc.value.errno == errno.ETIME
    rig.clock.advance(4000)


def test_wait_bo_zero_timeout_tests_without_waiting(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    _fill(proc, fd, h, 1, delay_ns=4000)
    with pytest.raises(OSError) as exc:
        _wait_bo(proc, fd, h, 0)
    assert exc.value.errno == errno.ETIME
    assert rig.clock.now() == 0
    rig.clock.advance(4000)
    _wait_bo(proc, fd, h, 0)


def test_wait_bo_for_read_ignores_readers_for_write_waits_for_them(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    dst, _ = rig.create_bo(proc, fd)
    cp = V.new("struct vaccel_copy", src_handle=h, dst_handle=dst, delay_ns=4000)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_COPY, cp)  # a reader of h
    _wait_bo(proc, fd, h, 0)  # no writer of h
    with pytest.raises(OSError) as exc:
        _wait_bo(proc, fd, h, 0, write=True)
    assert exc.value.errno == errno.ETIME
    rig.clock.advance(4000)


def test_wait_bo_interrupted_reports_time_left_and_returns_eintr(rig_both: Rig) -> None:
    rig = rig_both
    proc, fd, h = _owner(rig)
    _fill(proc, fd, h, 1, delay_ns=4000)
    a = V.new("struct vaccel_wait_bo", handle=h, timeout_ns=10_000)
    proc.task.inject_interrupts(0)
    with pytest.raises(OSError) as exc:
        proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT_BO, a)
    assert exc.value.errno == errno.EINTR
    assert a.timeout_ns == 10_000 - rig.clock.now()
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT_BO, a)  # the restart goes on to the end
    assert rig.clock.now() == 4000


def test_wait_bo_restarts_after_a_signal_with_sa_restart(rig_both: Rig) -> None:
    rig = rig_both
    proc = rig.process(restart=True)
    fd = proc.open(rig.dev.node_path)
    h, _ = rig.create_bo(proc, fd)
    _fill(proc, fd, h, 1, delay_ns=4000)
    proc.task.inject_interrupts(0)
    _wait_bo(proc, fd, h, 10_000)
    assert rig.clock.now() == 4000


def test_resv_add_fence_promotes_and_replaces_like_dma_resv() -> None:
    from accelcore import FenceContext, ReservationObject, VirtualClock

    ctx = FenceContext(VirtualClock(), "t", "t")
    a, b = ctx.create(), ctx.create()
    resv = ReservationObject()
    resv.add_fence(a, Usage.BOOKKEEP)
    resv.add_fence(a, Usage.READ)  # promoted
    assert resv.describe() == [(a, Usage.READ)]
    resv.add_fence(a, Usage.BOOKKEEP)  # never demoted
    assert resv.describe() == [(a, Usage.READ)]
    resv.add_fence(b, Usage.WRITE)  # later fence, stronger usage: replaces
    assert resv.describe() == [(b, Usage.WRITE)]
