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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import BadAddress, InvalidArgument, NoMemory

__all__ = [
    "FILL_CHUNK",
    "LIVE",
    "MAX_LFS_FILESIZE",
    "PAGE_SIZE",
    "DeviceMemory",
    "LiveCounter",
    "MemoryBlock",
    "MemoryCharge",
    "RangeAllocator",
    "SharedMemory",
    "charge_to",
    "copy_chunked",
    "fill_chunked",
    "is_page_aligned",
    "page_align",
]

PAGE_SIZE = mmap.PAGESIZE
#: Bytes a fill or copy does between two :meth:`~accelcore.clock.Clock.cond_resched`.
FILL_CHUNK = 1 << 20


def fill_chunked(
    view: memoryview, byte: int, resched: Callable[[], None], chunk: int = FILL_CHUNK
) -> None:
    """Set every byte of ``view`` to ``byte``, ``chunk`` bytes at a time, calling
    ``resched`` (:meth:`~accelcore.clock.Clock.cond_resched`) between chunks, so a
    fill of hundreds of MiB does not hold the engine lock throughout.

    Raises:
        ValueError: ``byte`` is not in ``0..255``.
    """
    n = len(view)
    pattern = bytes([byte]) * min(chunk, n)
    for start in range(0, n, chunk):
        if start:
            resched()
        end = min(start + chunk, n)
        view[start:end] = pattern[: end - start]


#: ``LLONG_MAX``, the largest size a file (a memfd, a shmem-backed GEM object) can
#: have. A ``__u64`` size from user space above it is ``EINVAL``, as in
#: ``shmem_file_setup``.
MAX_LFS_FILESIZE = (1 << 63) - 1


def copy_chunked(
    dst: memoryview, src: memoryview, resched: Callable[[], None], chunk: int = FILL_CHUNK
) -> None:
    """``dst[:] = src`` (same length), ``chunk`` bytes at a time, calling ``resched``
    between chunks (see :func:`fill_chunked`).

    Raises:
        ValueError: the lengths differ.
    """
    if len(dst) != len(src):
        raise ValueError(f"copy of {len(src)} bytes into {len(dst)}")
    for start in range(0, len(dst), chunk):
        if start:
            resched()
        dst[start : start + chunk] = src[start : start + chunk]


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


class MemoryCharge(Protocol):
    """Who pays for new memory (see :func:`charge_to`)."""

    def charge(self, nbytes: int) -> None:
        """Take ``nbytes`` more; raise (``NoMemory``) to refuse the allocation."""

    def uncharge(self, nbytes: int) -> None:
        """Give back what :meth:`charge` took (the memory was freed)."""


_CHARGE = threading.local()


class charge_to:  # noqa: N801 - used as a function: ``with charge_to(account):``
    """Charge every :class:`SharedMemory` this thread creates meanwhile (buffer
    objects, not adopted memfds) to ``account`` until it is freed, as the kernel
    charges an allocation to the current task's memory cgroup. The devfs server
    charges a client's calls to that client and its uid. (A plain context
    manager, not a generator: the server enters one per call.)
    """

    __slots__ = ("_account", "_before")

    def __init__(self, account: MemoryCharge) -> None:
        self._account = account
        self._before: MemoryCharge | None = None

    def __enter__(self) -> None:
        self._before = getattr(_CHARGE, "account", None)
        _CHARGE.account = self._account

    def __exit__(self, *exc: object) -> None:
        _CHARGE.account = self._before


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
        readonly: Map it read-only (a memfd sealed against writing, which
            cannot be mapped writable); :meth:`write` and :meth:`fill` are then
            ``EFAULT`` and views are read-only.

    Raises:
        InvalidArgument: ``size`` is not positive, or above
            :data:`~accelcore.memory.MAX_LFS_FILESIZE`.
        NoMemory: the memfd or the mapping could not be created (also a size the
            address space cannot hold), or the account this thread charges
            (:func:`~accelcore.memory.charge_to`) refused it.
    """

    __slots__ = (
        "__weakref__",
        "_account",
        "_closed",
        "_map",
        "_refs",
        "_view",
        "fd",
        "name",
        "readonly",
        "size",
    )

    def __init__(
        self, size: int, name: str = "accel", *, fd: int | None = None, readonly: bool = False
    ) -> None:
        if size <= 0 or size > MAX_LFS_FILESIZE:
            raise InvalidArgument(
                f"shared memory size {size:#x} must be in (0, {MAX_LFS_FILESIZE:#x}]"
            )
        self.size = size
        self.name = name
        self.readonly = readonly
        prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
        account: MemoryCharge | None = getattr(_CHARGE, "account", None) if fd is None else None
        if account is not None:
            account.charge(size)  # may refuse: nothing made yet
        self._account = account
        try:
            if fd is None:
                fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
                # Only the owner may re-open it through /proc/PID/fd: a process
                # given a read-only descriptor cannot turn it into a writable one.
                os.fchmod(fd, 0o600)
                os.ftruncate(fd, size)
            self.fd = fd
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        except (OSError, OverflowError, ValueError) as exc:
            if fd is not None:
                os.close(fd)
            if account is not None:
                account.uncharge(size)
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

    def _check_writable(self) -> None:
        if self.readonly:
            raise BadAddress(f"shared memory {self.name!r} is mapped read-only")

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes out from ``offset``."""
        self.check_range(offset, length)
        return self._map[offset : offset + length]

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in at ``offset``."""
        n = len(data)
        self.check_range(offset, n)
        self._check_writable()
        self._map[offset : offset + n] = data

    def fill(self, offset: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes from ``offset`` to ``byte`` (a fill of hundreds of
        MiB under the engine lock should use :func:`fill_chunked`)."""
        self.check_range(offset, length)
        self._check_writable()
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

    def open_readonly(self) -> int:
        """A new descriptor of the memfd, opened ``O_RDONLY`` (a new open file
        description, through ``/proc/self/fd``): whoever receives it can map the
        pages only read-only (``mmap(PROT_WRITE, MAP_SHARED)`` and ``mprotect``
        are ``EACCES``), and, the memfd being mode 0600, cannot re-open it
        writable unless it runs as this process's uid (which could ptrace us
        anyway) or with ``CAP_DAC_OVERRIDE``.

        Raises:
            BadAddress: the memory is closed.
            NoMemory: the descriptor could not be opened.
        """
        if self._closed:
            raise BadAddress(f"shared memory {self.name!r} is closed")
        try:
            return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NoMemory(f"cannot re-open {self.name!r} read-only: {exc}") from exc

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
        if self._account is not None:
            self._account.uncharge(self.size)
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

    >>> from accelcore.memory import PAGE_SIZE, RangeAllocator
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
            InvalidArgument: ``size`` is not positive.
            NoMemory: no free range is large enough, or ``size`` exceeds the
                whole memory (a ``__u64`` near 2**64 included): the caller's
                ``ENOMEM``; others keep what they have.
        """
        if size <= 0:
            raise InvalidArgument(f"{self.name} allocation of {size} bytes")
        if size > self.size:
            raise NoMemory(
                f"{size:#x} bytes asked of {self.name}, which has {self.size:#x} bytes in all"
            )
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
        """Return a range from :meth:`alloc`, merging it with free neighbours.

        Raises:
            InvalidArgument: the range is not inside the memory (a driver bug:
                it would corrupt the free list).
        """
        size = self.round(size)
        if offset < 0 or size <= 0 or offset + size > self.size:
            raise InvalidArgument(
                f"free of [{offset:#x}, {offset + size:#x}) outside {self.name} of {self.size:#x}"
            )
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


class MemoryBlock:
    """One allocation of :class:`DeviceMemory`: a device-address range backed by
    a memfd of its own, with a reference count.

    Every holder takes a reference (the handle that allocated it, a buffer
    object, a device mapping, a dma-buf, a CPU mapping through those); the last
    :meth:`put` closes the memfd and returns the range to the allocator. Because
    the pages are the block's own memfd, nothing that reaches them — a view, a
    descriptor passed to another process — reaches any other allocation, before
    or after the range is reused.

    Attributes:
        addr: First device address (an offset in the device memory).
        size: Bytes (whole pages).
        memory: The block's own memfd, exactly ``size`` bytes.
        label: For listings and error messages.
    """

    __slots__ = ("_owner", "addr", "label", "memory", "refs", "size")

    def __init__(self, owner: DeviceMemory, addr: int, size: int, label: str) -> None:
        self._owner = owner
        self.addr = addr
        self.size = size
        self.label = label
        self.memory = SharedMemory(size, label)
        self.refs = 1

    @property
    def alive(self) -> bool:
        """Whether a reference is still held (the range is still reserved)."""
        return self.refs > 0

    def get(self) -> MemoryBlock:
        """Take a reference.

        Raises:
            BadAddress: the block was already freed.
        """
        if self.refs <= 0:
            raise BadAddress(f"{self.label} at {self.addr:#x} was already freed")
        self.refs += 1
        return self

    def put(self) -> None:
        """Drop a reference; the last frees the memfd and the device range."""
        if self.refs <= 0:
            raise InvalidArgument(f"{self.label}: reference count underflow")
        self.refs -= 1
        if self.refs == 0:
            self._owner._release(self)

    def view(self, offset: int = 0, length: int | None = None) -> memoryview:
        """A view of ``[offset, offset+length)`` of the block (see
        :meth:`SharedMemory.view`)."""
        return self.memory.view(offset, length)

    def __repr__(self) -> str:
        return f"<MemoryBlock {self.label} [{self.addr:#x}, +{self.size:#x}) refs={self.refs}>"


class DeviceMemory:
    """Device memory (VRAM, DRAM): an address space of ``size`` bytes whose every
    allocation is a :class:`MemoryBlock` with its own memfd.

    Drivers allocate with :meth:`alloc`; device models (DMA and compute engines,
    a BAR window) reach the memory by device address with :meth:`read`,
    :meth:`write`, :meth:`fill` and :meth:`view`, which resolve the address to
    the block holding it. Addresses no block holds have no pages: an engine
    access there is ``EFAULT`` (:class:`BadAddress`), a BAR read of them all
    zeros (:meth:`peek`).

    Args:
        size: Bytes of device memory.
        page: Allocation granularity (a power of two).
        name: What the memory is called in messages (``VRAM``, ``DRAM``).
        on_change: Called after every allocation and free (accounting hooks).

    >>> from accelcore.memory import PAGE_SIZE, DeviceMemory
    >>> vram = DeviceMemory(4 * PAGE_SIZE, name="VRAM")
    >>> a = vram.alloc(100, "a")
    >>> (a.addr, a.size == PAGE_SIZE, a.memory.size == PAGE_SIZE, vram.used == PAGE_SIZE)
    (0, True, True, True)
    >>> vram.write(a.addr + 8, b"hi"); bytes(a.view(8, 2))
    b'hi'
    >>> a.put(); (vram.used, a.memory.closed)
    (0, True)
    """

    def __init__(
        self,
        size: int,
        page: int = PAGE_SIZE,
        name: str = "device memory",
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.allocator = RangeAllocator(size, page, name)
        self.name = name
        self._starts: list[int] = []
        self._blocks: dict[int, MemoryBlock] = {}
        self._on_change = on_change

    @property
    def size(self) -> int:
        return self.allocator.size

    @property
    def page(self) -> int:
        return self.allocator.page

    @property
    def used(self) -> int:
        """Bytes reserved by live blocks (freed handles under a live mapping count)."""
        return self.allocator.used

    @property
    def free_bytes(self) -> int:
        return self.allocator.free_bytes

    def round(self, size: int) -> int:
        """``size`` rounded up to the allocation granularity."""
        return self.allocator.round(size)

    def blocks(self) -> list[MemoryBlock]:
        """The live blocks, by address."""
        return [self._blocks[a] for a in self._starts]

    def alloc(self, size: int, label: str = "") -> MemoryBlock:
        """A new zeroed block of ``size`` bytes (rounded up to pages).

        The block's memfd is a :class:`SharedMemory`, so it is charged to the
        account this thread charges (:func:`charge_to`: the devfs server's client
        and its uid) until the block's last reference goes — device memory is
        charged as the kernel charges an allocation to the current task's memory
        cgroup, and a refused charge gives the range back.

        Raises:
            InvalidArgument: ``size`` is not positive.
            NoMemory: no free range is large enough, ``size`` exceeds the whole
                memory, no memfd could be made, or the charge was refused.
        """
        addr = self.allocator.alloc(size)
        nbytes = self.allocator.round(size)
        try:
            block = MemoryBlock(self, addr, nbytes, label or f"{self.name}@{addr:#x}")
        except BaseException:
            self.allocator.free(addr, nbytes)
            raise
        bisect.insort(self._starts, addr)
        self._blocks[addr] = block
        if self._on_change is not None:
            self._on_change()
        return block

    def _release(self, block: MemoryBlock) -> None:
        block.memory.close()
        if self._blocks.get(block.addr) is block:
            del self._blocks[block.addr]
            self._starts.remove(block.addr)
            self.allocator.free(block.addr, block.size)
        if self._on_change is not None:
            self._on_change()

    def block_at(self, addr: int, length: int) -> tuple[MemoryBlock, int]:
        """The block holding all of ``[addr, addr+length)``, and ``addr``'s offset in it.

        Raises:
            BadAddress: the range is not inside one live block.
        """
        i = bisect.bisect_right(self._starts, addr) - 1
        block = self._blocks[self._starts[i]] if i >= 0 else None
        if block is None or length < 0 or addr + length > block.addr + block.size:
            raise BadAddress(
                f"{self.name} range [{addr:#x}, {addr + length:#x}) is not inside one allocation"
            )
        return block, addr - block.addr

    def view(self, addr: int, length: int) -> memoryview:
        """A zero-copy view of ``[addr, addr+length)`` (one block's bytes)."""
        block, off = self.block_at(addr, length)
        return block.memory.view(off, length)

    def read(self, addr: int, length: int) -> bytes:
        """Copy ``length`` bytes out from device address ``addr``."""
        block, off = self.block_at(addr, length)
        return block.memory.read(off, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` in at device address ``addr``."""
        block, off = self.block_at(addr, len(data))
        block.memory.write(off, data)

    def fill(self, addr: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes from ``addr`` to ``byte``."""
        block, off = self.block_at(addr, length)
        block.memory.fill(off, length, byte)

    def peek(self, addr: int, length: int) -> bytes:
        """What a CPU reading through the BAR sees: the bytes of the blocks there,
        zeros where nothing is allocated. Never raises for an address inside the
        memory."""
        out = bytearray(length)
        end = addr + length
        i = max(bisect.bisect_right(self._starts, addr) - 1, 0)
        for start in self._starts[i:]:
            if start >= end:
                break
            b = self._blocks[start]
            lo, hi = max(addr, b.addr), min(end, b.addr + b.size)
            if lo < hi:
                out[lo - addr : hi - addr] = b.memory.read(lo - b.addr, hi - lo)
        return bytes(out)

    def poke(self, addr: int, data: bytes) -> None:
        """A CPU write through the BAR: lands in the blocks there, dropped elsewhere."""
        end = addr + len(data)
        i = max(bisect.bisect_right(self._starts, addr) - 1, 0)
        for start in self._starts[i:]:
            if start >= end:
                break
            b = self._blocks[start]
            lo, hi = max(addr, b.addr), min(end, b.addr + b.size)
            if lo < hi:
                b.memory.write(lo - b.addr, data[lo - addr : hi - addr])

    def __repr__(self) -> str:
        return (
            f"DeviceMemory({self.name!r}, size={self.size:#x}, used={self.used:#x}, "
            f"blocks={len(self._blocks)})"
        )
