"""The system-call layer: one lock rule, one restart loop, descriptor fields from the
uAPI headers, and whether a call may sleep — for every kind of file."""

from __future__ import annotations

import errno
import os

import pytest

from accelcore import CORE, DmaBuf, DmaBufOps, Mapping, OpenFile, Process, SharedMemory
from accelcore.errors import InvalidArgument
from accelcore.subsystem import Subsystem
from accelcore.syscalls import Syscalls, fd_offsets, ioctl_may_sleep, read_may_sleep
from accelcore.task import Task
from accelcore.testing import vaccel_subsystem
from accelcore.testing.transports import ProcessFactory
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import load_uapi
from drivers.habana_like import HLK
from drivers.kfd_like import KFD_UAPI as K
from drivers.kfd_like.thunk import Kfd, make_machine


def _owned(sub: Subsystem) -> bool:
    return bool(sub.clock.lock._is_owned())  # type: ignore[attr-defined]


class Probe(OpenFile):
    """A file that records whether each operation ran with the engine lock held."""

    kind = "probe"

    def __init__(self, sub: Subsystem) -> None:
        super().__init__(flags=os.O_RDWR)
        self.sub = sub
        self.held: dict[str, bool] = {}

    def ioctl(self, task: Task, cmd: int, argp: int) -> int:
        self.held["ioctl"] = _owned(self.sub)
        return 0

    def read(self, task: Task, size: int, *, nonblock: bool = False) -> bytes:
        self.held["read"] = _owned(self.sub)
        return b"x"

    def poll(self) -> int:
        self.held["poll"] = _owned(self.sub)
        return 0

    def mmap(self, task: Task, offset: int, length: int, writable: bool) -> Mapping:
        self.held["mmap"] = _owned(self.sub)
        return Mapping(self, memoryview(bytearray(length)), offset, writable)


@pytest.mark.parametrize("call", ["ioctl", "read", "poll", "mmap"])
def test_every_call_holds_the_engine_lock_whatever_the_file(call: str) -> None:
    sub, _ = vaccel_subsystem()
    p = Process(sub)
    probe = Probe(sub)
    fd = p.task.files.install(probe)
    {
        "ioctl": lambda: p.ioctl(fd, 0x1234, 0),
        "read": lambda: p.read(fd, 1),
        "poll": lambda: p.poll(fd),
        "mmap": lambda: p.munmap(p.mmap(fd, 4096)),
    }[call]()
    assert probe.held == {call: True}
    assert not _owned(sub)
    p.exit()


class RecordingOps(DmaBufOps):
    def __init__(self, sub: Subsystem, fail: bool = False) -> None:
        self.sub = sub
        self.fail = fail
        self.locked: list[bool] = []

    def begin_cpu_access(self, dmabuf: DmaBuf, write: bool) -> None:
        self.locked.append(_owned(self.sub))
        if self.fail:
            raise RuntimeError("exporter bug")


def _dmabuf(sub: Subsystem, ops: DmaBufOps) -> DmaBuf:
    return DmaBuf(ops, SharedMemory(4096, "t"), 0, 4096, exporter="test", registry=sub.dmabufs)


def test_dmabuf_ioctls_run_with_the_engine_lock_in_process() -> None:
    sub, _ = vaccel_subsystem()
    p = Process(sub)
    ops = RecordingOps(sub)
    fd = p.task.files.install(_dmabuf(sub, ops))
    flags = CORE.DMA_BUF_SYNC_START | CORE.DMA_BUF_SYNC_RW
    p.ioctl(fd, CORE.DMA_BUF_IOCTL_SYNC, CORE.new("struct dma_buf_sync", flags=flags))
    assert ops.locked == [True]
    p.exit()
    assert sub.accounting()["dmabufs"] == 0


def test_a_bug_in_a_dmabuf_exporter_is_an_oops_with_eio() -> None:
    sub, _ = vaccel_subsystem()
    p = Process(sub)
    fd = p.task.files.install(_dmabuf(sub, RecordingOps(sub, fail=True)))
    flags = CORE.DMA_BUF_SYNC_START | CORE.DMA_BUF_SYNC_READ
    with pytest.raises(OSError) as info:
        p.ioctl(fd, CORE.DMA_BUF_IOCTL_SYNC, CORE.new("struct dma_buf_sync", flags=flags))
    assert info.value.errno == errno.EIO
    assert [o.where for o in sub.oopses] == ["DMA_BUF_IOCTL_SYNC"]
    assert "exporter bug" in sub.oopses[0].exception
    p.exit()
    assert sub.accounting()["dmabufs"] == 0


def test_a_sync_file_answers_ioctls_enotty_from_its_table() -> None:
    sub, _ = vaccel_subsystem()
    p = Process(sub)
    fd = p.task.files.install(_dmabuf(sub, DmaBufOps()))
    exp = CORE.new("struct dma_buf_export_sync_file", flags=CORE.DMA_BUF_SYNC_READ)
    p.ioctl(fd, CORE.DMA_BUF_IOCTL_EXPORT_SYNC_FILE, exp)
    with pytest.raises(OSError) as info:
        p.ioctl(exp.fd, CORE.DMA_BUF_IOCTL_SYNC, bytearray(8))
    assert info.value.errno == errno.ENOTTY
    assert "sync_file" in str(info.value)
    p.exit()


def test_udmabuf_create_with_a_bad_memfd_number_is_ebadf() -> None:
    sub, _ = vaccel_subsystem()
    p = Process(sub)
    ufd = p.open("/dev/udmabuf")
    args = CORE.new("struct udmabuf_create", memfd=999, size=4096)
    with pytest.raises(OSError) as info:
        p.ioctl(ufd, CORE.UDMABUF_CREATE, args)
    assert info.value.errno == errno.EBADF
    p.exit()


def test_signal_delivered_as_a_call_completes_does_not_interrupt_the_next() -> None:
    sub, dev = vaccel_subsystem()
    calls = Syscalls(sub)
    task = sub.new_task()
    fd = calls.open(task, dev.node_path)
    for read in (False, True):
        calls.signal(task)
        assert task.signal_pending
        if read:
            with pytest.raises(OSError) as info:
                calls.read(task, fd, 64, nonblock=True)
            assert info.value.errno == errno.EAGAIN
        else:
            arg = task.mm.alloc(CORE.sizeof("struct drm_get_cap"))
            arg.view[:8] = CORE.DRM_CAP_PRIME.to_bytes(8, "little")
            assert calls.ioctl(task, fd, CORE.DRM_IOCTL_GET_CAP, arg.addr) == 0
        assert not task.signal_pending  # delivered on the way out
    calls.exit(task)


def test_may_sleep_follows_the_table_for_every_kind_of_file() -> None:
    m = make_machine(1000)
    k = Kfd(m)
    kfd_file = k.p.task.files.get(k.fd)
    assert ioctl_may_sleep(kfd_file, K.DRM_IOCTL_KFD_WAIT_EVENTS)
    assert not ioctl_may_sleep(kfd_file, K.DRM_IOCTL_KFD_GET_VERSION)
    sub, dev = vaccel_subsystem()
    p = Process(sub)
    accel = p.task.files.get(p.open(dev.node_path))
    assert ioctl_may_sleep(accel, V.DRM_IOCTL_VACCEL_WAIT)
    assert not ioctl_may_sleep(accel, CORE.ACCEL_IOCTL_INFO)
    assert not ioctl_may_sleep(accel, 0xDEAD)  # ENOTTY at once
    buf = _dmabuf(sub, DmaBufOps())
    assert not ioctl_may_sleep(buf, CORE.DMA_BUF_IOCTL_SYNC)
    assert ioctl_may_sleep(Probe(sub), 0x1234)  # an ioctl with no table to look in
    assert read_may_sleep(accel, nonblock=False)
    assert not read_may_sleep(accel, nonblock=True)
    assert not read_may_sleep(buf, nonblock=False)  # dma-bufs cannot be read
    buf.put()
    p.exit()


def test_fd_offsets_cover_the_core_and_every_registered_driver() -> None:
    table = fd_offsets(make_machine(1000).subsystem)
    acquire = K.ioctls["DRM_IOCTL_KFD_ACQUIRE_VM"]
    assert table[acquire.cmd] == (0,)
    assert table[CORE.UDMABUF_CREATE] == (CORE.ffi.offsetof("struct udmabuf_create", "memfd"),)
    assert K.DRM_IOCTL_KFD_EXPORT_DMABUF not in table  # returns a descriptor, reads none


def test_fd_fields_in_nested_unions_are_found() -> None:
    d = HLK.ioctls["DRM_IOCTL_HLK_MEMORY"]
    assert d.arg_type is not None
    out = HLK.ffi.offsetof(d.arg_type, "output") + HLK.ffi.offsetof("struct hlk_mem_out", "fd")
    assert d.fd_out_offsets == (out,)
    assert d.fd_offsets == ()


HEADER = """
/* cffi:begin */
struct inner { __u32 a; __s32 fd; /* accel:fd */ };
struct outer { __u64 x; struct inner in; %s };
/* cffi:end */
#define T_IOCTL _IOW('t', 1, struct outer)
"""


def test_nested_descriptor_fields_compose_their_offsets() -> None:
    u = load_uapi("t.h", text=HEADER % "")
    assert u.ioctls["T_IOCTL"].fd_offsets == (8 + 4,)


def test_a_descriptor_field_that_is_not_32_bit_is_refused_by_name() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_uapi("t.h", text=HEADER % "__u64 bad; /* accel:fd */")
    assert "struct outer.bad" in str(info.value)


@pytest.mark.parametrize(
    ("offset", "length", "code"),
    [
        (-4096, 4096, errno.EINVAL),  # a negative offset (an API misuse: off_t is unsigned here)
        (100, 4096, errno.EINVAL),  # not page-aligned
        (1 << 64, 4096, errno.EINVAL),  # not a 64-bit offset
        (0, 0, errno.EINVAL),  # empty
        ((1 << 64) - 4096, 8192, errno.EOVERFLOW),  # wraps the offset space (do_mmap)
    ],
    ids=["negative", "unaligned", "too-big", "empty", "wraps"],
)
def test_mmap_arguments_are_checked_before_the_file_in_both_transports(
    accel_process_factory: ProcessFactory, offset: int, length: int, code: int
) -> None:
    """mmap's own argument checks give the same errno in process and through the
    server (where a bad offset used to escape as a struct.error while encoding)."""
    from accelcore.machine import Machine
    from accelcore.testing import VAccelDriver

    machine = Machine()
    drv = VAccelDriver()
    machine.add_driver(drv)
    machine.subsystem.create_device(drv)
    base = machine.subsystem.accounting()
    proc = accel_process_factory(machine)
    fd = proc.open("/dev/accel/accel0")
    with pytest.raises(OSError) as exc:
        proc.mmap(fd, length, offset)
    assert exc.value.errno == code, exc.value
    proc.close(fd)
    assert machine.subsystem.accounting()["files"] == base["files"]
