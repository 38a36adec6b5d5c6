"""Buffer-object handles are private to their file; dma-buf export, import and lifetime."""

from __future__ import annotations

import errno
from typing import Any

from accelcore.driver import OwnershipPolicy
from accelcore.memory import PAGE_SIZE
from accelcore.testing.conformance import check
from accelcore.testing.conformance.rig import Rig
from accelcore.testing.conformance.session import Conformance
from accelcore.uapi import CORE
from accelcore.userspace import Process


def _errno_of(fn: Any, *args: Any, **kw: Any) -> int:
    try:
        fn(*args, **kw)
    except OSError as exc:
        return exc.errno or 0
    return 0


def _export(proc: Process, fd: int, handle: int) -> int:
    a = CORE.new("struct drm_prime_handle", handle=handle, flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR)
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, a)
    return int(a.fd)


def _import(proc: Process, fd: int, dmabuf_fd: int) -> int:
    a = CORE.new("struct drm_prime_handle", fd=dmabuf_fd)
    proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, a)
    return int(a.handle)


def _bo(rig: Rig, proc: Process, fd: int, handle: int) -> Any:
    """The buffer object behind a handle (the model's kernel side, for its bytes)."""
    return rig.file_of(proc, fd).handles.lookup(handle)


def _other_file(rig: Rig, *, needs_owner: bool) -> tuple[Process, int]:
    """A second file where the first file's handle numbers mean nothing.

    On the same device when the policy lets a second file do the call; otherwise
    on the second device (handle namespaces are per file either way).
    """
    proc = rig.process()
    same = rig.policy == OwnershipPolicy.PER_PROCESS or (
        rig.policy == OwnershipPolicy.LAZY_SINGLE and not needs_owner
    )
    return proc, rig.open(proc, 0 if same else 1)


def _owner_with_bo(
    conf: Conformance, *, prime: bool = True, count: int = 1
) -> tuple[Rig, Process, int, int]:
    """A machine, a process owning device 0's file, and one buffer object's handle
    (skipping when the driver declares no way to make one, or no PRIME)."""
    if prime:
        conf.require_prime()
    conf.require_bo_create()
    rig = conf.rig(count=count)
    a = rig.process()
    fa = rig.open(a)
    return rig, a, fa, rig.create_bo(a, fa)


@check("handles", "GEM_CLOSE of another file's handle gets EINVAL and leaves it alive")
def test_gem_close_foreign_handle(accel_conformance: Conformance) -> None:
    rig, a, fa, h = _owner_with_bo(accel_conformance, prime=False, count=2)
    b, fb = _other_file(rig, needs_owner=False)
    got = _errno_of(
        b.ioctl, fb, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h)
    )
    assert got == errno.EINVAL, f"GEM_CLOSE of another file's handle {h}: errno {got}, not EINVAL"
    _bo(rig, a, fa, h)  # still there
    a.ioctl(fa, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h))


@check("handles", "PRIME export of another file's handle gets ENOENT")
def test_prime_export_foreign_handle(accel_conformance: Conformance) -> None:
    rig, _a, _fa, h = _owner_with_bo(accel_conformance, count=2)
    b, fb = _other_file(rig, needs_owner=True)
    got = _errno_of(_export, b, fb, h)
    assert got == errno.ENOENT, f"PRIME export of another file's handle {h}: errno {got}"


@check("dma-buf", "importing a buffer's own dma-buf on the same file returns the same handle")
def test_self_import_same_handle(accel_conformance: Conformance) -> None:
    _rig, a, fa, h = _owner_with_bo(accel_conformance)
    dfd = _export(a, fa, h)
    h2 = _import(a, fa, dfd)
    assert h2 == h, f"self-import of handle {h}'s dma-buf gave handle {h2}"
    a.close(dfd)


def _fill(view: memoryview, seed: int) -> bytes:
    data = bytes((seed + i * 7) & 0xFF for i in range(min(len(view), 2 * PAGE_SIZE)))
    view[: len(data)] = data
    return data


@check("dma-buf", "a buffer goes to a vaccel device and back, bytes shared, not copied")
def test_cross_driver_import(accel_conformance: Conformance) -> None:
    accel_conformance.require_prime()
    accel_conformance.require_bo_create()
    rig = accel_conformance.rig(peer=True)
    assert rig.peer is not None
    a = rig.process()
    fa = rig.open(a)
    fp = a.open(rig.peer.node_path)
    h = rig.create_bo(a, fa)
    size = _bo(rig, a, fa, h).size
    dfd = _export(a, fa, h)
    hp = _import(a, fp, dfd)
    back_fd = _export(a, fp, hp)
    h3 = _import(a, fa, back_fd)
    m1 = a.mmap(dfd, size)
    m2 = a.mmap(back_fd, size)
    try:
        data = _fill(m1.view, 3)
        assert bytes(m2.view[: len(data)]) == data, (
            "bytes written through the exported dma-buf are not seen through the vaccel "
            "device's re-export"
        )
        assert bytes(_bo(rig, a, fa, h3).view()[: len(data)]) == data, (
            f"the buffer imported back (handle {h3}) does not share the original's bytes"
        )
    finally:
        a.munmap(m1)
        a.munmap(m2)


@check("dma-buf", "the buffer lives until its last dma-buf fd closes, then everything is freed")
def test_buffer_lives_until_last_fd(accel_conformance: Conformance) -> None:
    accel_conformance.require_prime()
    accel_conformance.require_bo_create()
    rig = accel_conformance.rig()
    a = rig.process()
    fa = rig.open(a)
    base = rig.subsystem.accounting()
    h = rig.create_bo(a, fa)
    data = _fill(_bo(rig, a, fa, h).view(), 9)
    dfd = _export(a, fa, h)
    a.ioctl(fa, CORE.DRM_IOCTL_GEM_CLOSE, CORE.new("struct drm_gem_close", handle=h))
    live = rig.subsystem.accounting()
    assert live["dmabufs"] == base["dmabufs"] + 1 and live["buffers"] == base["buffers"] + 1, (
        f"after GEM_CLOSE with the dma-buf still open: {live} (before the buffer: {base})"
    )
    m = a.mmap(dfd, PAGE_SIZE)
    assert bytes(m.view[: len(data[:PAGE_SIZE])]) == data[:PAGE_SIZE], (
        "the dma-buf lost its bytes after GEM_CLOSE of the handle"
    )
    a.munmap(m)
    a.close(dfd)
    after = rig.subsystem.accounting()
    for key in ("dmabufs", "buffers", "handles", "attachments", "cpu_mappings"):
        assert after[key] == base[key], (
            f"after closing the last dma-buf fd: {key} {after[key]}, {base[key]} before the buffer"
        )


@check("dma-buf", "mmap of the dma-buf fd sees the buffer object's bytes, both ways")
def test_dmabuf_mmap_coherent(accel_conformance: Conformance) -> None:
    rig, a, fa, h = _owner_with_bo(accel_conformance)
    bo = _bo(rig, a, fa, h)
    dfd = _export(a, fa, h)
    m = a.mmap(dfd, bo.size)
    try:
        data = _fill(bo.view(), 5)
        assert bytes(m.view[: len(data)]) == data, "dma-buf mmap does not see the BO's bytes"
        data = _fill(m.view, 11)
        assert bytes(bo.view()[: len(data)]) == data, "BO does not see writes through the mmap"
    finally:
        a.munmap(m)


@check("dma-buf", "mmap of a dma-buf beyond its size gets EINVAL")
def test_dmabuf_mmap_out_of_range(accel_conformance: Conformance) -> None:
    rig, a, fa, h = _owner_with_bo(accel_conformance)
    size = _bo(rig, a, fa, h).size
    dfd = _export(a, fa, h)
    cases = {
        f"length {size + PAGE_SIZE:#x}": (size + PAGE_SIZE, 0),
        f"offset {size:#x}": (PAGE_SIZE, size),
        f"[{size - PAGE_SIZE:#x}, +2 pages)": (2 * PAGE_SIZE, size - PAGE_SIZE),
    }
    wrong = []
    for what, (length, offset) in cases.items():
        got = _errno_of(a.mmap, dfd, length, offset)
        if got != errno.EINVAL:
            wrong.append(f"mmap of a {size:#x}-byte dma-buf at {what}: errno {got}, not EINVAL")
    assert not wrong, "; ".join(wrong)
