"""Compute-context ownership: one owner per device, and what pins it (seeds 000, 001).

Under a single-owner policy (lazy or exclusive open) one open file at a time holds
the device's compute context. When that file drops it (``DROP_MASTER``) or is
released, everything that can be revoked is: the context is destroyed (its
in-flight work completes with an error), CPU mappings are zapped, handles freed,
and dma-bufs the owner exported are revoked when their exporter supports it.
What cannot be revoked — a dma-buf held by another device or process — keeps the
ownership **pinned**: new owners get ``EBUSY`` until those buffers are released.
INFO says who owns or what pins; bufinfo shows the buffers and their holders.

Under the per-process policy every file has its own context and nothing is owned.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from .driver import OwnershipPolicy
from .errors import Busy, InvalidArgument
from .resources import release_scope

if TYPE_CHECKING:
    from .device import AccelDevice
    from .dmabuf import DmaBuf
    from .file import AccelFile

__all__ = ["OwnerState", "Ownership"]


class OwnerState(enum.IntEnum):
    """``ACCEL_OWNER_*``."""

    FREE = 0
    OWNED = 1
    PINNED = 2


class Ownership:
    """The ownership state of one device."""

    def __init__(self, device: AccelDevice, policy: OwnershipPolicy) -> None:
        self.device = device
        self.policy = policy
        self.owner: AccelFile | None = None
        #: dma-bufs exported during the current tenure.
        self._exports: set[DmaBuf] = set()
        #: dma-bufs of a finished tenure that could not be revoked.
        self.pins: set[DmaBuf] = set()

    @property
    def single_owner(self) -> bool:
        return self.policy != OwnershipPolicy.PER_PROCESS

    @property
    def state(self) -> OwnerState:
        if self.owner is not None:
            return OwnerState.OWNED
        return OwnerState.PINNED if self.pins else OwnerState.FREE

    def describe(self) -> str:
        """One line for error messages and listings."""
        if self.owner is not None:
            return (
                f"owned by client {self.owner.client_id} (pid {self.owner.pid}) on "
                f"{self.device.name}"
            )
        if self.pins:
            return (
                f"pinned by {len(self.pins)} dma-buf(s) exported by a previous owner "
                f"(inodes {sorted(b.inode for b in self.pins)})"
            )
        return "free"

    # -- acquiring ---------------------------------------------------------------
    def acquire(self, file: AccelFile) -> None:
        """Make ``file`` the owner and create its context.

        Raises:
            Busy: another file owns the device, or exports of a previous owner pin it.
            InvalidArgument: the policy has no owner (per-process contexts).
        """
        if not self.single_owner:
            raise InvalidArgument(
                f"{self.device.name} uses per-process contexts; there is no device owner"
            )
        if self.owner is file:
            return
        if self.owner is not None or self.pins:
            raise Busy(f"compute context of {self.device.name} is {self.describe()}")
        self._create_context(file)
        self.owner = file

    def require(self, file: AccelFile) -> None:
        """Make sure ``file`` holds a compute context (an ``OWNER`` ioctl is coming).

        Lazy policy: the first such ioctl makes the file the owner. Exclusive open:
        only the file that got ownership at open. Per-process: a context per file.

        Raises:
            Busy: the device is owned by someone else or pinned.
        """
        if self.policy == OwnershipPolicy.PER_PROCESS:
            if file.context is None:
                self._create_context(file)
            return
        if self.owner is file:
            if file.context is None:  # recreated after a reset
                self._create_context(file)
            return
        if self.policy == OwnershipPolicy.EXCLUSIVE_OPEN and (self.owner or self.pins):
            raise Busy(f"compute context of {self.device.name} is {self.describe()}")
        self.acquire(file)

    def _create_context(self, file: AccelFile) -> None:
        file.context = self.device.driver.context_create(file)

    # -- releasing ---------------------------------------------------------------
    def drop(self, file: AccelFile) -> None:
        """``DROP_MASTER``: give up ownership, revoking what can be revoked.

        Raises:
            InvalidArgument: ``file`` is not the owner (as ``DROP_MASTER`` by a
                non-master).
        """
        if self.owner is not file:
            raise InvalidArgument(f"client {file.client_id} does not own {self.device.name}")
        self._end_tenure(file)

    def file_released(self, file: AccelFile) -> None:
        """The last reference of ``file`` went: end its tenure or its context."""
        if self.owner is file:
            self._end_tenure(file)
        else:
            self.abort_context(file)

    def _end_tenure(self, file: AccelFile) -> None:
        self.abort_context(file)
        file.zap_mappings()
        file.forget_prime()
        file.handles.clear()
        for buf in list(self._exports):
            if buf.ops.revocable:
                buf.revoke()
            else:
                self.pins.add(buf)
                buf.pins.add(f"ownership of {self.device.name}")
        self._exports.clear()
        self.owner = None

    def abort_context(self, file: AccelFile) -> None:
        """Destroy ``file``'s context through the driver, if it has one."""
        ctx, file.context = file.context, None
        if ctx is not None:
            try:
                self.device.driver.context_destroy(file, ctx)
            finally:
                release_scope("context", file, self.device)

    # -- exports -----------------------------------------------------------------
    def exported(self, file: AccelFile, buf: DmaBuf) -> None:
        """Track a dma-buf the owner exported: it may pin the ownership later."""
        if self.single_owner and self.owner is file:
            self._exports.add(buf)
            buf.on_release(self._buffer_gone)

    def _buffer_gone(self, buf: DmaBuf) -> None:
        self._exports.discard(buf)
        if buf in self.pins:
            self.pins.discard(buf)
            if not self.pins and self.owner is None and self.device.sysfs is not None:
                self.device.subsystem.sysfs.emit("change", self.device.sysfs, {"OWNERSHIP": "FREE"})

    @property
    def pinned_bytes(self) -> int:
        return sum(b.size for b in self.pins)
