"""Exporter ops and importers: pinning, move_notify, revocation, refused imports, fences."""

from __future__ import annotations

import errno

import pytest

from accelcore import (
    CORE,
    Attachment,
    DmaBuf,
    DmaBufOps,
    FenceContext,
    ImporterOps,
    NotSupported,
    Process,
    SharedMemory,
    Subsystem,
    Usage,
    VirtualClock,
)
from accelcore.dmabuf import DmaBufRegistry
from accelcore.errors import InvalidArgument
from accelcore.testing import VAccelDriver

from .conftest import Rig


class Recording(DmaBufOps):
    name = "recording"
    dynamic = True
    revocable = True

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pin(self, dmabuf: DmaBuf, attachment: Attachment) -> None:
        self.calls.append(f"pin:{attachment.importer}")

    def unpin(self, dmabuf: DmaBuf, attachment: Attachment) -> None:
        self.calls.append(f"unpin:{attachment.importer}")

    def release(self, dmabuf: DmaBuf) -> None:
        self.calls.append("release")


class Importer(ImporterOps):
    def __init__(self) -> None:
        self.notified = 0

    def move_notify(self, attachment: Attachment) -> None:
        self.notified += 1


def _buf(ops: DmaBufOps) -> tuple[DmaBuf, SharedMemory]:
    mem = SharedMemory(8192)
    return DmaBuf(ops, mem, 0, 8192, exporter="test", registry=DmaBufRegistry()), mem


def test_static_importer_of_dynamic_exporter_is_pinned_while_attached() -> None:
    ops = Recording()
    buf, mem = _buf(ops)
    att = buf.attach("static-dev")
    assert buf.pinned and ops.calls == ["pin:static-dev"]
    buf.detach(att)
    buf.put()
    assert ops.calls == ["pin:static-dev", "unpin:static-dev", "release"]
    mem.close()


def test_dynamic_importer_pins_explicitly_and_gets_move_notify() -> None:
    ops, imp = Recording(), Importer()
    buf, mem = _buf(ops)
    att = buf.attach("dyn-dev", imp)
    assert not buf.pinned
    buf.pin(att)
    assert buf.pinned
    buf.move_notify()
    assert imp.notified == 1
    buf.unpin(att)
    with pytest.raises(InvalidArgument):
        buf.unpin(att)
    buf.detach(att)
    buf.put()
    mem.close()


def test_static_attachment_cannot_pin() -> None:
    buf, mem = _buf(DmaBufOps())
    att = buf.attach("static-dev")
    with pytest.raises(InvalidArgument):
        buf.pin(att)
    buf.detach(att)
    buf.put()
    mem.close()


def test_revoke_invalidates_mappings_and_refuses_new_users() -> None:
    ops, imp = Recording(), Importer()
    buf, mem = _buf(ops)
    att = buf.attach("dyn-dev", imp)
    mapping = buf.map_attachment(att)
    buf.revoke()
    assert imp.notified == 1 and not mapping.valid
    with pytest.raises(OSError) as e:
        buf.attach("late-dev")
    assert e.value.errno == errno.EBADFD
    buf.detach(att)
    buf.put()
    mem.close()


def test_revoke_unsupported_is_eopnotsupp() -> None:
    buf, mem = _buf(DmaBufOps())
    with pytest.raises(NotSupported):
        buf.revoke()
    buf.put()
    mem.close()


class Unreachable(VAccelDriver):
    """An exporter whose memory other devices cannot reach (no p2p path)."""

    name = "island"

    def prime_export(self, file, bo, flags):  # type: ignore[no-untyped-def]
        dmabuf = super().prime_export(file, bo, flags)

        def refuse(dmabuf: DmaBuf, att: Attachment) -> None:
            raise OSError(errno.EOPNOTSUPP, f"{att.importer} cannot reach island memory")

        dmabuf.ops.attach = refuse  # type: ignore[method-assign]
        return dmabuf


def test_import_from_unreachable_exporter_fails_and_leaks_nothing() -> None:
    sub = Subsystem(VirtualClock())
    island, other = Unreachable(), VAccelDriver()
    sub.register_driver(island)
    sub.register_driver(other)
    sub.create_device(island)
    sub.create_device(other)
    p = Process(sub)
    fa, fb = p.open("/dev/accel/accel0"), p.open("/dev/accel/accel1")
    from accelcore.testing.vaccel import VACCEL_UAPI as V

    bo = V.new("struct vaccel_create_bo", size=4096)
    p.ioctl(fa, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle)
    p.ioctl(fa, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    with pytest.raises(OSError) as e:
        p.ioctl(
            fb, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, CORE.new("struct drm_prime_handle", fd=ph.fd)
        )
    assert e.value.errno == errno.EOPNOTSUPP
    assert sub.accounting()["attachments"] == 0
    p.exit()
    assert sub.accounting()["dmabufs"] == 0 and sub.accounting()["buffers"] == 0


def test_fence_signals_once_with_error_and_callbacks() -> None:
    clock = VirtualClock()
    ctx = FenceContext(clock, "drv", "engine0")
    f = ctx.create()
    seen: list[int] = []
    f.add_callback(lambda fence: seen.append(fence.status()))
    f.set_error(-errno.EIO)
    assert f.signal() and not f.signal()
    assert seen == [-errno.EIO] and f.status() == -errno.EIO
    with pytest.raises(InvalidArgument):
        f.set_error(-errno.EINVAL)
    with pytest.raises(OSError) as e:
        f.add_callback(lambda fence: None)
    assert e.value.errno == errno.ENOENT


def test_reservation_usage_classes(rig: Rig) -> None:
    ctx = FenceContext(rig.clock, "drv", "e")
    buf, mem = _buf(DmaBufOps())
    w, r = ctx.create(), ctx.create()
    buf.resv.add_fence(w, Usage.WRITE)
    buf.resv.add_fence(r, Usage.READ)
    assert buf.resv.fences(Usage.WRITE) == [w]
    assert buf.resv.fences(Usage.READ) == [w, r]
    w.signal()
    from accelcore.vfs import POLLIN, POLLOUT

    assert buf.poll() == POLLIN  # writers done, a reader still busy
    r.signal()
    assert buf.poll() == POLLIN | POLLOUT
    buf.put()
    mem.close()


def test_export_sync_file_and_wait(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    ph = CORE.new("struct drm_prime_handle", handle=h)
    p.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    buf = p.task.files.get(ph.fd)
    assert isinstance(buf, DmaBuf)
    fence = FenceContext(rig.clock, "vaccel", "fill").create()
    buf.resv.add_fence(fence, Usage.WRITE)
    args = CORE.new("struct dma_buf_export_sync_file", flags=CORE.DMA_BUF_SYNC_READ)
    p.ioctl(ph.fd, CORE.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, args)
    from accelcore.vfs import POLLIN

    assert not p.poll(args.fd) & POLLIN
    fence.signal()
    assert p.poll(args.fd) & POLLIN


def test_fences_order_on_one_timeline_only() -> None:
    clock = VirtualClock()
    a, b = FenceContext(clock, "drv", "e0"), FenceContext(clock, "drv", "e1")
    first, second = a.create(), a.create()
    assert second.is_later(first) and not first.is_later(second)
    with pytest.raises(InvalidArgument):
        b.create().is_later(first)
