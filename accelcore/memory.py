"""Shared memory: the backing of BARs, device memory, buffer objects and dma-bufs.

Every piece of simulated memory that another process may map is a memfd
(:func:`os.memfd_create`), so "shared, not copied" holds across real processes:
the server passes the fd, the client maps the same pages. A memfd is sparse, so a
1 GiB buffer costs no resident memory until its pages are touched.

:data:`LIVE` counts the regions alive, for leak accounting in tests.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .errors import BadAddress, InvalidArgument, NoMemory

__all__ = ["LIVE", "PAGE_SIZE", "LiveCounter", "SharedMemory", "is_page_aligned", "page_align"]

PAGE_SIZE = mmap.PAGESIZE


def page_align(n: int) -> int:
    """Round ``n`` up to a whole number of pages."""
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def is_page_aligned(n: int) -> bool:
    """Whether ``n`` is a multiple of the page size."""
    return n % PAGE_SIZE == 0


@dataclass
class LiveCounter:
    """How many regions and bytes are alive right now (thread-safe)."""

    regions: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, size: int, sign: int) -> None:
        with self._lock:
            self.regions += sign
            self.bytes += sign * size


#: Every :class:`SharedMemory` not yet closed, counted.
LIVE = LiveCounter()

#: Live regions by the id of their mmap, so a view can be traced to its memfd.
_BY_MAP: weakref.WeakValueDictionary[int, SharedMemory] = weakref.WeakValueDictionary()


def _address(view: memoryview) -> int:
    """The address of a view's first byte (read-only views included)."""
    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data)


class SharedMemory:
    """A memfd of ``size`` bytes, mapped read-write in this process.

    Args:
        size: Bytes; must be positive.
        name: The memfd's name (shows in ``/proc/PID/fd`` as ``memfd:NAME``).
        fd: An existing memfd to adopt (ownership passes to this object), as a
            client does with a memfd received from the server.

    Raises:
        InvalidArgument: ``size`` is not positive.
        NoMemory: the memfd or the mapping could not be created.
    """

    __slots__ = ("__weakref__", "_closed", "_map", "_refs", "_view", "fd", "name", "size")

    def __init__(self, size: int, name: str = "accel", *, fd: int | None = None) -> None:
        if size <= 0:
            raise InvalidArgument(f"shared memory size {size} must be positive")
        self.size = size
        self.name = name
        try:
            if fd is None:
                fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                os.ftruncate(fd, size)
            self.fd = fd
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            raise NoMemory(f"cannot create {size}-byte shared memory {name!r}: {exc}") from exc
        self._view = memoryview(self._map)
        self._closed = False
        self._refs = 1
        _BY_MAP[id(self._map)] = self
        LIVE.add(size, +1)

    @property
    def closed(self) -> bool:
        return self._closed

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A zero-copy view of ``[offset, offset+length)``.

        Raises:
            BadAddress: the range is not inside the region.
        """
        if length is None:
            length = self.size - offset
        self.check_range(offset, length)
        return self._view[offset : offset + length]

    def check_range(self, offset: int, length: int) -> None:
        """Raise :class:`BadAddress` unless ``[offset, offset+length)`` is inside."""
        if self._closed:
            raise BadAddress(f"shared memory {self.name!r} is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BadAddress(
                f"range [{offset:#x}, {offset + length:#x}) is outside {self.name!r} "
                f"of {self.size:#x} bytes"
            )

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes out from ``offset``."""
        self.check_range(offset, length)
        return self._map[offset : offset + length]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in at ``offset``."""
        n = len(data)
        self.check_range(offset, n)
        self._map[offset : offset + n] = data

    def fill(self, offset: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes from ``offset`` to ``byte``."""
        self.check_range(offset, length)
        self._map[offset : offset + length] = bytes([byte]) * length

    @staticmethod
    def backing(view: memoryview) -> tuple[SharedMemory, int] | None:
        """The shared memory a view points into, and the view's offset in it.

        This is how "shared, not copied" crosses a process boundary: a transport
        passes the memfd and the offset, and the other side maps the same pages.

        Returns:
            ``None`` if ``view`` is not a view of a live :class:`SharedMemory`.
        """
        mem = _BY_MAP.get(id(view.obj))
        if mem is None or mem._closed or mem._map is not view.obj:
            return None
        base = _address(mem._view)
        return mem, _address(view) - base

    def seal(self) -> None:
        """Forbid shrinking and growing the memfd (``F_SEAL_SHRINK|F_SEAL_GROW``)."""
        import fcntl

        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)

    def get(self) -> SharedMemory:
        """Take a reference: the memory stays until every holder has closed it.

        A dma-buf over device memory holds one, so the pages outlive a device
        that is removed while the buffer is still shared.
        """
        if self._closed:
            raise BadAddress(f"shared memory {self.name!r} is closed")
        self._refs += 1
        return self

    def close(self) -> None:
        """Drop a reference; the last one unmaps and closes the memfd. Idempotent
        once closed.

        Views handed out earlier keep the pages alive until they are released
        (the mapping is closed when the last view goes), as munmap leaves other
        mappings of a file intact.
        """
        if self._closed:
            return
        self._refs -= 1
        if self._refs > 0:
            return
        _BY_MAP.pop(id(self._map), None)
        self._closed = True
        LIVE.add(self.size, -1)
        self._view.release()
        # A caller may still hold a view; then the mapping goes with the last one.
        with contextlib.suppress(BufferError):
            self._map.close()
        os.close(self.fd)

    def __enter__(self) -> SharedMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fd}"
        return f"SharedMemory({self.name!r}, size={self.size:#x}, {state})"


class RangeAllocator:
    """First-fit allocation of page-granular ranges of ``[0, size)``: the device
    memory manager drivers share (DRAM, VRAM), with coalescing frees.

    Args:
        size: Bytes managed.
        page: Granularity (a power of two); sizes are rounded up to it.
        name: What the memory is called in error messages (``DRAM``, ``VRAM``).

    >>> dram = RangeAllocator(4 * PAGE_SIZE)
    >>> a, b = dram.alloc(PAGE_SIZE), dram.alloc(100)
    >>> (a, b, dram.used == 2 * PAGE_SIZE)
    (0, 4096, True)
    >>> dram.free(a, PAGE_SIZE); dram.alloc(2 * PAGE_SIZE) == 2 * PAGE_SIZE
    True
    """

    def __init__(self, size: int, page: int = PAGE_SIZE, name: str = "device memory") -> None:
        if page <= 0 or page & (page - 1):
            raise InvalidArgument(f"allocation granularity {page} is not a power of two")
        self.size = size
        self.page = page
        self.name = name
        self.used = 0
        self._free: list[tuple[int, int]] = [(0, size)]  # (offset, length), sorted

    @property
    def free_bytes(self) -> int:
        return self.size - self.used

    def round(self, size: int) -> int:
        """``size`` rounded up to whole pages."""
        return (size + self.page - 1) // self.page * self.page

    def alloc(self, size: int) -> int:
        """Reserve ``size`` bytes (rounded up to pages); returns the offset.

        Raises:
            NoMemory: no free range is large enough (the caller's ``ENOMEM``;
                others keep what they have).
        """
        need = self.round(size)
        for i, (off, length) in enumerate(self._free):
            if length >= need:
                if length == need:
                    del self._free[i]
                else:
                    self._free[i] = (off + need, length - need)
                self.used += need
                return off
        raise NoMemory(
            f"no {need:#x}-byte range of {self.name} free "
            f"({self.free_bytes:#x} of {self.size:#x} bytes free, fragmented)"
        )

    def free(self, offset: int, size: int) -> None:
        """Return a range from :meth:`alloc`, merging it with free neighbours."""
        size = self.round(size)
        i = bisect.bisect_left(self._free, (offset, 0))
        self._free.insert(i, (offset, size))
        self.used -= size
        merged: list[tuple[int, int]] = []
        for off, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == off:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((off, length))
        self._free = merged
