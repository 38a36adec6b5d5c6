"""PRIME: buffer objects to dma-buf fds and back (``drm_prime.c``).

The two core ioctls that share buffer objects across devices and processes:
``PRIME_HANDLE_TO_FD`` exports a handle of the calling file as a dma-buf fd, and
``PRIME_FD_TO_HANDLE`` imports a dma-buf fd as a handle. Each file keeps a PRIME
cache (``AccelFile.prime``, ``drm_prime_file_private``): dma-buf → handle, so one
buffer gets one handle per file however often it is imported. Both need the
driver's ``DriverFeature.PRIME`` (``EOPNOTSUPP`` without it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dmabuf import require_dmabuf
from .driver import DriverFeature
from .errors import AccelError, InvalidArgument, NotSupported
from .gem import BufferObject, GemDmaBufOps
from .uapi import CORE

if TYPE_CHECKING:
    from .dispatch import IoctlCall

__all__ = ["prime_fd_to_handle_ioctl", "prime_handle_to_fd_ioctl", "require_prime"]


def require_prime(call: IoctlCall) -> None:
    """Refuse a PRIME ioctl on a driver without ``DriverFeature.PRIME`` (``EOPNOTSUPP``)."""
    if DriverFeature.PRIME not in call.device.driver.features:
        raise NotSupported(f"{call.device.driver.name} does not support dma-buf (PRIME)")


def prime_handle_to_fd_ioctl(call: IoctlCall) -> None:
    """``DRM_IOCTL_PRIME_HANDLE_TO_FD`` (``drm_prime_handle_to_fd_ioctl``): export a
    buffer object as a dma-buf fd. One dma-buf per object: a second export returns
    a new fd for the same buffer. The file's PRIME cache remembers dma-buf → handle.

    Raises:
        NotSupported: the driver has no PRIME (``EOPNOTSUPP``).
        InvalidArgument: unknown flags, or no such handle.
        TooManyFiles: no descriptor left (``EMFILE``).
    """
    require_prime(call)
    a = call.args
    valid = CORE.DRM_CLOEXEC | CORE.DRM_RDWR
    if a.flags & ~valid:
        raise InvalidArgument(
            f"PRIME_HANDLE_TO_FD flags {a.flags:#o} has unknown bits {a.flags & ~valid:#o}"
        )
    file = call.file
    bo = file.handles.lookup(a.handle)
    dmabuf = bo.dma_buf
    if dmabuf is not None and not dmabuf.released:
        dmabuf.get()
    else:
        dmabuf = call.device.driver.prime_export(file, bo, a.flags)
        bo.dma_buf = dmabuf
        call.device.ownership.exported(file, dmabuf)
    if dmabuf not in file.prime:
        file.prime[dmabuf] = a.handle
        dmabuf.get()
    try:
        a.fd = call.install_fd(dmabuf, cloexec=bool(a.flags & CORE.DRM_CLOEXEC))
    except AccelError:
        dmabuf.put()
        raise


def prime_fd_to_handle_ioctl(call: IoctlCall) -> None:
    """``DRM_IOCTL_PRIME_FD_TO_HANDLE`` (``drm_prime_fd_to_handle_ioctl``): import a
    dma-buf fd as a handle of the file. A buffer this device exported comes back as
    its own object (self-import); a file gets one handle per dma-buf.

    Raises:
        NotSupported: the driver has no PRIME (``EOPNOTSUPP``).
        BadFd: ``fd`` is not open (``EBADF``).
        InvalidArgument: ``fd`` is not a dma-buf, or the driver refuses it.
    """
    require_prime(call)
    a = call.args
    file = call.file
    dmabuf = require_dmabuf(call.get_file(a.fd), a.fd)
    if dmabuf in file.prime:
        a.handle = file.prime[dmabuf]
        return
    bo = dmabuf.priv
    if (
        isinstance(dmabuf.ops, GemDmaBufOps)
        and isinstance(bo, BufferObject)
        and bo.device is call.device
    ):
        existing = file.handles.handle_of(bo)
        handle = existing if existing is not None else file.handles.create(bo)
    else:
        imported = call.device.driver.prime_import(file, dmabuf)
        try:
            handle = file.handles.create(imported)
        finally:
            imported.put()
    file.prime[dmabuf] = handle
    dmabuf.get()
    a.handle = handle
