"""Sync files: a fence as a file descriptor (``drivers/dma-buf/sync_file.c``).

``DMA_BUF_IOCTL_EXPORT_SYNC_FILE`` hands one out; ``IMPORT_SYNC_FILE`` and
``poll`` take one. Like every file the core owns, its ioctls run from a table
through :func:`accelcore.ioctl.run_ioctl`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from .fence import Fence
from .ioctl import IoctlTableFile
from .vfs import POLLIN, OpenFile

if TYPE_CHECKING:
    from .clock import Clock
    from .driver import IoctlDesc

__all__ = ["SyncFile"]


class SyncFile(IoctlTableFile, OpenFile):
    """A fence as a file (``sync_file``): poll says ``POLLIN`` once it signalled.

    Its ioctls run through the core's table path (:class:`IoctlTableFile`);
    accelcore models none of ``SYNC_IOC_*`` yet, so every number is ``ENOTTY``.

    Args:
        fence: The fence (a reference is not counted: fences live until signalled).
    """

    kind = "sync_file"
    IOCTLS: ClassVar[Mapping[int, IoctlDesc]] = {}

    def __init__(self, fence: Fence) -> None:
        super().__init__()
        self.fence = fence

    def ioctl_clock(self) -> Clock:
        return self.fence.context.clock

    def poll(self) -> int:
        return POLLIN if self.fence.signalled else 0

    def fdinfo(self) -> dict[str, str]:
        info = super().fdinfo()
        info["fence"] = repr(self.fence)
        info["status"] = str(self.fence.status())
        return info
