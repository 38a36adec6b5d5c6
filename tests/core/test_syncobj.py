"""DRM syncobjs as core ioctls: binary and timeline, every ioctl with its
positive paths and the kernel's exact errnos (drm_syncobj.c)."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from accelcore import CORE, DriverFeature, Process
from accelcore.syncobj import lookup_syncobj
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from accelcore.vfs import POLLIN

from .conftest import Rig

WAIT_ALL = CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL
FOR_SUBMIT = CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT
AVAILABLE = CORE.DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE
NO_FIRST = 0xFFFF_FFFF


class Client:
    """One process with a vaccel file, and the syncobj ioctls as methods."""

    def __init__(self, rig: Rig, proc: Process | None = None, dev: Any = None) -> None:
        self.rig = rig
        self.proc = proc or rig.process()
        self.fd = self.proc.open((dev or rig.dev).node_path)
        self.file = (dev or rig.dev).files[-1]

    def call(self, name: str, arg: Any) -> Any:
        self.proc.ioctl(self.fd, getattr(CORE, name), arg)
        return arg

    def create(self, flags: int = 0) -> int:
        return int(
            self.call(
                "DRM_IOCTL_SYNCOBJ_CREATE", CORE.new("struct drm_syncobj_create", flags=flags)
            ).handle
        )

    def u32s(self, *values: int) -> int:
        buf = self.proc.alloc(max(4, 4 * len(values)))
        buf.view[: 4 * len(values)] = struct.pack(f"<{len(values)}I", *values)
        return buf.addr

    def u64s(self, *values: int) -> tuple[int, Any]:
        buf = self.proc.alloc(max(8, 8 * len(values)))
        buf.view[: 8 * len(values)] = struct.pack(f"<{len(values)}Q", *values)
        return buf.addr, buf

    def wait(self, handles: list[int], timeout: int, flags: int = 0) -> Any:
        a = CORE.new(
            "struct drm_syncobj_wait",
            handles=self.u32s(*handles),
            count_handles=len(handles),
            timeout_nsec=timeout,
            flags=flags,
        )
        return self.call("DRM_IOCTL_SYNCOBJ_WAIT", a)

    def twait(self, handles: list[int], points: list[int], timeout: int, flags: int = 0) -> Any:
        addr, _ = self.u64s(*points)
        a = CORE.new(
            "struct drm_syncobj_timeline_wait",
            handles=self.u32s(*handles),
            points=addr,
            count_handles=len(handles),
            timeout_nsec=timeout,
            flags=flags,
        )
        return self.call("DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT", a)

    def array(self, name: str, handles: list[int], pad: int = 0) -> None:
        a = CORE.new(
            "struct drm_syncobj_array",
            handles=self.u32s(*handles),
            count_handles=len(handles),
            pad=pad,
        )
        self.call(f"DRM_IOCTL_SYNCOBJ_{name}", a)

    def tsignal(self, handles: list[int], points: list[int], flags: int = 0) -> None:
        addr, _ = self.u64s(*points)
        a = CORE.new(
            "struct drm_syncobj_timeline_array",
            handles=self.u32s(*handles),
            points=addr,
            count_handles=len(handles),
            flags=flags,
        )
        self.call("DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", a)

    def query(self, handles: list[int], flags: int = 0) -> list[int]:
        addr, buf = self.u64s(*([0] * len(handles)))
        a = CORE.new(
            "struct drm_syncobj_timeline_array",
            handles=self.u32s(*handles),
            points=addr,
            count_handles=len(handles),
            flags=flags,
        )
        self.call("DRM_IOCTL_SYNCOBJ_QUERY", a)
        return list(struct.unpack(f"<{len(handles)}Q", bytes(buf.view[: 8 * len(handles)])))

    def to_fd(self, handle: int, flags: int = 0, point: int = 0, pad: int = 0) -> int:
        a = CORE.new("struct drm_syncobj_handle", handle=handle, flags=flags, point=point, pad=pad)
        return int(self.call("DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", a).fd)

    def from_fd(self, fd: int, handle: int = 0, flags: int = 0, point: int = 0) -> int:
        a = CORE.new("struct drm_syncobj_handle", fd=fd, handle=handle, flags=flags, point=point)
        return int(self.call("DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE", a).handle)

    def transfer(
        self, src: int, dst: int, src_point: int = 0, dst_point: int = 0, flags: int = 0
    ) -> None:
        a = CORE.new(
            "struct drm_syncobj_transfer",
            src_handle=src,
            dst_handle=dst,
            src_point=src_point,
            dst_point=dst_point,
            flags=flags,
        )
        self.call("DRM_IOCTL_SYNCOBJ_TRANSFER", a)

    def job(self, delay_ns: int, out: int = 0, in_: int = 0) -> int:
        """A copy job between two new buffers, reporting to ``out``, after ``in_``."""
        handles = []
        for _ in range(2):
            bo = V.new("struct vaccel_create_bo", size=4096)
            self.proc.ioctl(self.fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
            handles.append(bo.handle)
        cp = V.new(
            "struct vaccel_copy",
            src_handle=handles[0],
            dst_handle=handles[1],
            delay_ns=delay_ns,
            out_syncobj=out,
            in_syncobj=in_,
        )
        self.proc.ioctl(self.fd, V.DRM_IOCTL_VACCEL_COPY, cp)
        return int(cp.seqno)


@pytest.fixture
def c(rig: Rig) -> Iterator[Client]:
    yield Client(rig)


def _errno(fn: Any, *args: Any, **kw: Any) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args, **kw)
    return int(exc.value.errno or 0)


# -- CREATE / DESTROY -------------------------------------------------------------


def test_create_gives_handles_from_one(c: Client) -> None:
    assert [c.create(), c.create()] == [1, 2]


def test_create_signaled_waits_at_once(c: Client) -> None:
    h = c.create(CORE.DRM_SYNCOBJ_CREATE_SIGNALED)
    assert c.wait([h], 0).first_signaled == 0


def test_create_unknown_flags_einval(c: Client) -> None:
    assert _errno(c.create, 2) == errno.EINVAL


def test_destroy_frees_the_handle(c: Client) -> None:
    h = c.create()
    c.call("DRM_IOCTL_SYNCOBJ_DESTROY", CORE.new("struct drm_syncobj_destroy", handle=h))
    assert _errno(c.wait, [h], 0) == errno.ENOENT


def test_destroy_unknown_handle_einval(c: Client) -> None:
    a = CORE.new("struct drm_syncobj_destroy", handle=7)
    assert _errno(c.call, "DRM_IOCTL_SYNCOBJ_DESTROY", a) == errno.EINVAL


def test_destroy_nonzero_pad_einval(c: Client) -> None:
    a = CORE.new("struct drm_syncobj_destroy", handle=c.create(), pad=1)
    assert _errno(c.call, "DRM_IOCTL_SYNCOBJ_DESTROY", a) == errno.EINVAL


def test_driver_without_the_feature_gets_eopnotsupp(rig: Rig) -> None:
    class NoSync(VAccelDriver):
        name = "nosync"
        features = DriverFeature.GEM | DriverFeature.PRIME

    drv = NoSync()
    rig.sub.register_driver(drv)
    dev = rig.sub.create_device(drv)
    try:
        c = Client(rig, dev=dev)
        assert _errno(c.create) == errno.EOPNOTSUPP
        cap = c.call(
            "DRM_IOCTL_GET_CAP", CORE.new("struct drm_get_cap", capability=CORE.DRM_CAP_SYNCOBJ)
        )
        assert cap.value == 0
        c.proc.exit()
    finally:
        rig.sub.remove_device(dev)
        rig.sub.unregister_driver(drv)


def test_binary_only_driver_refuses_timeline_ioctls(rig: Rig) -> None:
    class BinaryOnly(VAccelDriver):
        name = "binsync"
        features = DriverFeature.GEM | DriverFeature.PRIME | DriverFeature.SYNCOBJ

    drv = BinaryOnly()
    rig.sub.register_driver(drv)
    dev = rig.sub.create_device(drv)
    try:
        c = Client(rig, dev=dev)
        h = c.create()
        assert _errno(c.query, [h]) == errno.EOPNOTSUPP
        assert _errno(c.tsignal, [h], [1]) == errno.EOPNOTSUPP
        c.proc.exit()
    finally:
        rig.sub.remove_device(dev)
        rig.sub.unregister_driver(drv)


def test_caps_report_syncobj_support(c: Client) -> None:
    for cap in (CORE.DRM_CAP_SYNCOBJ, CORE.DRM_CAP_SYNCOBJ_TIMELINE):
        assert (
            c.call("DRM_IOCTL_GET_CAP", CORE.new("struct drm_get_cap", capability=cap)).value == 1
        )


def test_syncobjs_are_freed_with_the_file_and_counted(c: Client, rig: Rig) -> None:
    c.create()
    c.create()
    assert rig.sub.accounting()["managed.vaccel.file.syncobjs"] == 2
    c.proc.close(c.fd)
    assert "managed.vaccel.file.syncobjs" not in rig.sub.accounting()
    assert rig.sub.oopses == []


# -- WAIT ----------------------------------------------------------------------------


def test_wait_for_a_job_out_fence_until_it_completes(c: Client, rig: Rig) -> None:
    h = c.create()
    c.job(3000, out=h)
    assert c.wait([h], 10_000).first_signaled == 0
    assert rig.clock.now() == 3000


def test_wait_any_reports_the_first_signalled(c: Client, rig: Rig) -> None:
    c2 = Client(rig, proc=c.proc, dev=rig.dev1)
    slow, fast = c.create(), c2.create()
    c.job(9000, out=slow)
    c2.job(2000, out=fast)
    # fast lives on the other file: move it here through a syncobj fd
    mine = c.from_fd(c2.to_fd(fast))
    assert c.wait([slow, mine], 100_000).first_signaled == 1
    assert rig.clock.now() == 2000
    rig.clock.advance(9000)


def test_wait_all_waits_for_every_one(c: Client, rig: Rig) -> None:
    a, b = c.create(), c.create()
    c.job(1000, out=a)
    c.job(1000, out=b)  # runs after the first on the same queue
    r = c.wait([a, b], 100_000, WAIT_ALL)
    assert rig.clock.now() == 2000 and r.first_signaled == NO_FIRST


def test_wait_zero_handles_is_a_success(c: Client) -> None:
    assert c.wait([], 0).first_signaled == 0


def test_wait_past_absolute_timeout_is_etime(c: Client, rig: Rig) -> None:
    h = c.create()
    c.job(5000, out=h)
    rig.clock.advance(100)
    assert _errno(c.wait, [h], 50) == errno.ETIME  # 50 ns is in the past: a poll
    assert rig.clock.now() == 100
    assert _errno(c.wait, [h], 4000) == errno.ETIME
    assert rig.clock.now() == 4000
    rig.clock.advance(1000)


def test_wait_empty_syncobj_without_for_submit_einval(c: Client) -> None:
    assert _errno(c.wait, [c.create()], 10**9) == errno.EINVAL


def test_wait_for_submit_waits_for_a_fence_to_appear(c: Client, rig: Rig) -> None:
    h = c.create()
    rig.clock.call_at(700, lambda: lookup_syncobj(c.file, h).signal())
    c.wait([h], 10_000, FOR_SUBMIT)
    assert rig.clock.now() == 700


def test_wait_available_flag_is_einval_on_plain_wait(c: Client) -> None:
    assert _errno(c.wait, [c.create(1)], 0, AVAILABLE) == errno.EINVAL


def test_wait_unknown_handle_enoent(c: Client) -> None:
    h = c.create(1)
    assert _errno(c.wait, [h, 42], 0) == errno.ENOENT


def test_wait_bad_handles_pointer_efault(c: Client) -> None:
    a = CORE.new("struct drm_syncobj_wait", handles=0x10, count_handles=1)
    assert _errno(c.call, "DRM_IOCTL_SYNCOBJ_WAIT", a) == errno.EFAULT


def test_wait_interrupted_is_eintr_and_restart_safe(c: Client, rig: Rig) -> None:
    h = c.create()
    c.job(5000, out=h)
    c.proc.task.inject_interrupts(0)
    assert _errno(c.wait, [h], 8000) == errno.EINTR
    c.wait([h], 8000)  # the same absolute timeout: the restart does not start over
    assert rig.clock.now() == 5000


# -- RESET / SIGNAL ----------------------------------------------------------------


def test_signal_then_reset(c: Client) -> None:
    h = c.create()
    c.array("SIGNAL", [h])
    c.wait([h], 0)
    c.array("RESET", [h])
    assert _errno(c.wait, [h], 0) == errno.EINVAL  # no fence any more


@pytest.mark.parametrize("name", ["RESET", "SIGNAL"])
def test_array_zero_handles_einval(c: Client, name: str) -> None:
    assert _errno(c.array, name, []) == errno.EINVAL


@pytest.mark.parametrize("name", ["RESET", "SIGNAL"])
def test_array_nonzero_pad_einval(c: Client, name: str) -> None:
    assert _errno(c.array, name, [c.create()], pad=1) == errno.EINVAL


@pytest.mark.parametrize("name", ["RESET", "SIGNAL"])
def test_array_unknown_handle_enoent(c: Client, name: str) -> None:
    assert _errno(c.array, name, [c.create(), 9]) == errno.ENOENT


# -- HANDLE_TO_FD / FD_TO_HANDLE ----------------------------------------------------


def test_fd_shares_the_syncobj_with_another_process(c: Client, rig: Rig) -> None:
    h = c.create()
    fd = c.to_fd(h)
    other = Client(rig)
    theirs = other.from_fd(c.proc.send_fd(fd, other.proc))
    assert other.from_fd(c.proc.send_fd(fd, other.proc)) != theirs  # a new handle each time
    c.array("SIGNAL", [h])
    other.wait([theirs], 0)


def test_plain_export_unknown_handle_einval(c: Client) -> None:
    assert _errno(c.to_fd, 5) == errno.EINVAL


def test_export_point_without_timeline_flag_einval(c: Client) -> None:
    assert _errno(c.to_fd, c.create(), point=1) == errno.EINVAL


def test_export_unknown_flags_and_pad_einval(c: Client) -> None:
    h = c.create()
    assert _errno(c.to_fd, h, flags=4) == errno.EINVAL
    assert _errno(c.to_fd, h, pad=1) == errno.EINVAL


def test_export_sync_file_snapshots_the_fence(c: Client, rig: Rig) -> None:
    h = c.create()
    c.job(3000, out=h)
    fd = c.to_fd(h, CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE)
    c.array("RESET", [h])  # does not change the exported fence
    assert c.proc.poll(fd) == 0
    rig.clock.advance(3000)
    assert c.proc.poll(fd) == POLLIN


def test_export_sync_file_unknown_handle_enoent_empty_einval(c: Client) -> None:
    flag = CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE
    assert _errno(c.to_fd, 8, flag) == errno.ENOENT
    assert _errno(c.to_fd, c.create(), flag) == errno.EINVAL


def test_import_of_a_non_syncobj_fd_einval(c: Client) -> None:
    assert _errno(c.from_fd, c.fd) == errno.EINVAL  # the accel file itself
    assert _errno(c.from_fd, 999) == errno.EINVAL  # not open: EINVAL, not EBADF


def test_import_sync_file_from_a_dmabuf_makes_implicit_explicit(c: Client, rig: Rig) -> None:
    """EXPORT_SYNC_FILE of a busy dma-buf, imported into a syncobj, waits for the job."""
    bo = V.new("struct vaccel_create_bo", size=4096)
    c.proc.ioctl(c.fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    prime = c.call(
        "DRM_IOCTL_PRIME_HANDLE_TO_FD", CORE.new("struct drm_prime_handle", handle=bo.handle)
    )
    s = V.new("struct vaccel_submit", handle=bo.handle, fill=2, delay_ns=6000)
    c.proc.ioctl(c.fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    sync = CORE.new("struct dma_buf_export_sync_file", flags=CORE.DMA_BUF_SYNC_READ)
    c.proc.ioctl(prime.fd, CORE.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, sync)
    h = c.create()
    c.from_fd(sync.fd, h, CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE)
    c.wait([h], 10**6)
    assert rig.clock.now() == 6000


def test_import_sync_file_errors(c: Client) -> None:
    flag = CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
    h = c.create()
    c.job(10, out=h)
    sync_fd = c.to_fd(h, CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE)
    assert _errno(c.from_fd, c.fd, h, flag) == errno.EINVAL  # not a sync_file
    assert _errno(c.from_fd, sync_fd, 77, flag) == errno.ENOENT  # unknown handle


# -- timelines ---------------------------------------------------------------------


def test_timeline_signal_and_query(c: Client) -> None:
    h = c.create()
    c.tsignal([h], [1])
    c.tsignal([h], [3])
    assert c.query([h]) == [3]
    assert c.query([h], CORE.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED) == [3]
    c.twait([h], [2], 0)  # point 3 covers 2


def test_query_of_a_binary_syncobj_is_zero(c: Client) -> None:
    assert c.query([c.create(1)]) == [0]


def test_timeline_points_signal_in_order(c: Client, rig: Rig) -> None:
    h, job = c.create(), c.create()
    c.job(4000, out=job)
    sync_fd = c.to_fd(job, CORE.DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE)
    flags = (
        CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE
        | CORE.DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE
    )
    c.from_fd(sync_fd, h, flags, point=1)  # point 1: the job
    c.tsignal([h], [2])  # point 2: already signalled, but after point 1
    assert c.query([h]) == [0]
    assert c.query([h], CORE.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED) == [2]
    assert _errno(c.twait, [h], [2], 0) == errno.ETIME
    c.twait([h], [2], 10_000)
    assert rig.clock.now() == 4000 and c.query([h]) == [2]


def test_timeline_wait_unsubmitted_point(c: Client, rig: Rig) -> None:
    h = c.create()
    c.tsignal([h], [1])
    assert _errno(c.twait, [h], [5], 0) == errno.EINVAL
    assert _errno(c.twait, [h], [5], 0, AVAILABLE) == errno.ETIME
    rig.clock.call_at(900, lambda: c.tsignal([h], [5]))
    c.twait([h], [5], 10_000, FOR_SUBMIT)
    assert rig.clock.now() == 900


def test_timeline_wait_available_needs_only_the_fence(c: Client, rig: Rig) -> None:
    h, job = c.create(), c.create()
    c.job(4000, out=job)
    c.transfer(job, h, dst_point=1)
    c.twait([h], [1], 0, AVAILABLE)  # the point exists, not yet signalled
    assert _errno(c.twait, [h], [1], 0) == errno.ETIME
    rig.clock.advance(4000)


def test_timeline_signal_flags_and_count_einval(c: Client) -> None:
    h = c.create()
    assert _errno(c.tsignal, [h], [1], flags=1) == errno.EINVAL
    assert _errno(c.tsignal, [], []) == errno.EINVAL


def test_query_flags_and_count_einval(c: Client) -> None:
    assert _errno(c.query, [c.create()], flags=2) == errno.EINVAL
    assert _errno(c.query, []) == errno.EINVAL


def test_timeline_wait_unknown_flag_einval(c: Client) -> None:
    assert _errno(c.twait, [c.create(1)], [0], 0, 1 << 4) == errno.EINVAL


# -- TRANSFER ------------------------------------------------------------------------


def test_transfer_binary_into_a_timeline_point_and_back(c: Client, rig: Rig) -> None:
    src, tl, out = c.create(), c.create(), c.create()
    c.job(2500, out=src)
    c.transfer(src, tl, dst_point=4)
    assert c.query([tl], CORE.DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED) == [4]
    c.transfer(tl, out, src_point=4)
    c.wait([out], 10_000)
    assert rig.clock.now() == 2500 and c.query([tl]) == [4]


def test_transfer_errors(c: Client) -> None:
    h, empty = c.create(1), c.create()
    assert _errno(c.transfer, 50, h) == errno.ENOENT
    assert _errno(c.transfer, h, 51) == errno.ENOENT
    assert _errno(c.transfer, empty, h) == errno.EINVAL
    assert _errno(c.transfer, h, empty, flags=WAIT_ALL) == errno.EINVAL
    a = CORE.new("struct drm_syncobj_transfer", src_handle=h, dst_handle=empty, pad=1)
    assert _errno(c.call, "DRM_IOCTL_SYNCOBJ_TRANSFER", a) == errno.EINVAL


def test_transfer_wait_for_submit_gives_up_after_five_seconds(c: Client, rig: Rig) -> None:
    h, empty = c.create(), c.create()
    assert _errno(c.transfer, empty, h, flags=FOR_SUBMIT) == errno.ETIME
    assert rig.clock.now() == 5_000_000_000


# -- a driver's in-fence ---------------------------------------------------------------


def test_job_waits_for_its_in_syncobj_from_another_device(c: Client, rig: Rig) -> None:
    c2 = Client(rig, proc=c.proc, dev=rig.dev1)
    theirs = c2.create()
    c2.job(8000, out=theirs)
    gate, done = c.from_fd(c2.to_fd(theirs)), c.create()
    c.job(100, out=done, in_=gate)
    c.wait([done], 10**6)
    assert rig.clock.now() == 8100


def test_job_with_empty_in_syncobj_einval_unknown_enoent(c: Client) -> None:
    assert _errno(c.job, 10, in_=c.create()) == errno.EINVAL
    assert _errno(c.job, 10, in_=99) == errno.ENOENT
    assert _errno(c.job, 10, out=98) == errno.ENOENT
