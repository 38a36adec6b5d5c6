"""dma-fence semantics: one-way completion signals, and reservation objects.

A :class:`Fence` goes from unsignalled to signalled exactly once. An error may be
set before it signals (``-EIO`` for work aborted by a reset, ``-ENODEV`` after
unplug); callbacks run at the signal. Fences of one engine share a
:class:`FenceContext`, whose sequence numbers order them.

Callbacks run in the signalling path, on behalf of whoever signalled (an
engine's completion, a reset, a context teardown). As in ``dma_fence_signal``,
every callback runs and waiters are woken whatever one callback does: an
exception escaping a callback is an **oops of the signaller** — recorded
through the fence context's oops handler (the device that owns the timeline),
never raised into the signaller's caller nor into an unrelated waiter's ioctl.

A :class:`FenceArray` (``dma_fence_array``) is one fence standing for several:
it signals when every component has, with the first component error.

A :class:`ReservationObject` (``dma_resv``) holds the fences of a buffer with a
usage class each: ``KERNEL`` (memory management), ``WRITE``, ``READ``,
``BOOKKEEP``. Asking for a usage returns the fences of that class and the
stronger ones, as ``dma_resv_iter`` does; :meth:`ReservationObject.get_singleton`
merges them into one fence as ``dma_resv_get_singleton`` does.

A fence as a file (``sync_file``) is :class:`accelcore.sync_file.SyncFile`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from .clock import Clock, Deadlock, WaitResult
from .errors import InvalidArgument, NoEntry, RestartSyscall

if TYPE_CHECKING:
    from .task import Task

__all__ = [
    "Fence",
    "FenceArray",
    "FenceContext",
    "ReservationObject",
    "Usage",
    "usage_rw",
    "wait_fences",
]

_contexts = itertools.count(1)


class Usage(enum.IntEnum):
    """Fence usage classes, strongest first (``enum dma_resv_usage``)."""

    KERNEL = 0
    WRITE = 1
    READ = 2
    BOOKKEEP = 3


def usage_rw(write: bool) -> Usage:
    """``dma_resv_usage_rw``: the fences a new access must wait for.

    A writer waits for every reader and writer (``READ`` and stronger), a
    reader only for writers (``WRITE`` and stronger).
    """
    return Usage.READ if write else Usage.WRITE


class FenceContext:
    """A timeline: fences from one engine, numbered in submission order.

    Args:
        clock: The device clock (waits use it; signals wake its waiters).
        driver: The driver name (``dma_fence_ops.get_driver_name``).
        timeline: The engine name (``get_timeline_name``).
        oops: Where an exception escaping a callback of this timeline's fences is
            recorded, as ``oops(where, exc)`` — typically the owning device's
            :meth:`~accelcore.device.AccelDevice.record_oops`, so that the device
            that signalled is tainted. ``None``: the clock's
            ``Clock.oops_handler`` (the subsystem's record).
    """

    def __init__(
        self,
        clock: Clock,
        driver: str,
        timeline: str,
        *,
        oops: Callable[[str, BaseException], object] | None = None,
    ) -> None:
        self.clock = clock
        self.driver = driver
        self.timeline = timeline
        self.context = next(_contexts)
        self._seqno = 0
        self._oops = oops

    def report_oops(self, where: str, exc: BaseException) -> None:
        """Record an exception raised by code run when one of our fences signalled."""
        if self._oops is not None:
            self._oops(where, exc)
        else:
            self.clock.report_oops(where, exc)

    def create(self) -> Fence:
        """A new unsignalled fence, next in this timeline."""
        self._seqno += 1
        return Fence(self, self._seqno)

    def signalled_stub(self) -> Fence:
        """An already signalled fence (``dma_fence_get_stub``)."""
        fence = Fence(self, 0)
        fence.signal()
        return fence


class Fence:
    """A one-shot completion signal. Create them with :meth:`FenceContext.create`."""

    __slots__ = ("_callbacks", "context", "error", "seqno", "signalled", "timestamp")

    def __init__(self, context: FenceContext, seqno: int) -> None:
        self.context = context
        self.seqno = seqno
        self.signalled = False
        self.error = 0
        self.timestamp: int | None = None
        self._callbacks: list[Callable[[Fence], None]] = []

    def set_error(self, error: int) -> None:
        """Record a negative errno to report at the signal; only before signalling.

        Raises:
            InvalidArgument: ``error`` is not a negative errno, or the fence signalled.
        """
        if not -4095 <= error < 0:
            raise InvalidArgument(f"fence error {error} is not a negative errno")
        if self.signalled:
            raise InvalidArgument(f"fence {self} already signalled; cannot set error {error}")
        self.error = error

    def signal(self) -> bool:
        """Signal the fence, run its callbacks and wake waiters (``dma_fence_signal``).

        Every callback runs, in the order added. One that raises does not stop the
        others nor the wake-up, and does not propagate: it is an oops of this
        fence's timeline, recorded through :meth:`FenceContext.report_oops`.

        Returns:
            ``False`` if the fence had already signalled (nothing is done).
        """
        if self.signalled:
            return False
        self.signalled = True
        self.timestamp = self.context.clock.now()
        callbacks, self._callbacks = self._callbacks, []
        deadlock: Deadlock | None = None
        try:
            for cb in callbacks:
                try:
                    cb(self)
                except Deadlock as exc:  # a test harness error, not a driver bug
                    deadlock = exc
                except Exception as exc:
                    name = getattr(cb, "__qualname__", repr(cb))
                    self.context.report_oops(f"callback {name} of {self!r}", exc)
        finally:
            self.context.clock.notify()
        if deadlock is not None:
            raise deadlock
        return True

    def unwrap(self) -> list[Fence]:
        """The plain fences this one stands for (``dma_fence_unwrap_for_each``)."""
        return [self]

    def status(self) -> int:
        """``dma_fence_get_status``: 0 pending, 1 signalled, negative errno on error."""
        if not self.signalled:
            return 0
        return self.error or 1

    def add_callback(self, callback: Callable[[Fence], None]) -> None:
        """Run ``callback`` at the signal.

        Raises:
            NoEntry: the fence already signalled (the callback is not called),
                as ``dma_fence_add_callback`` returns ``-ENOENT``.
        """
        if self.signalled:
            raise NoEntry(f"fence {self} already signalled")
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[Fence], None]) -> bool:
        """Forget a callback; ``True`` if it was still pending."""
        try:
            self._callbacks.remove(callback)
        except ValueError:
            return False
        return True

    def is_later(self, other: Fence) -> bool:
        """Whether this fence comes after ``other`` on the same timeline."""
        if other.context is not self.context:
            raise InvalidArgument("fences on different timelines are not ordered")
        return self.seqno > other.seqno

    def __repr__(self) -> str:
        state = "signalled" if self.signalled else "unsignalled"
        return f"<Fence {self.context.driver}:{self.context.timeline} seq {self.seqno} {state}>"


class FenceArray(Fence):
    """One fence for several (``dma_fence_array``, signal-on-all).

    It signals when the last component signals; its error is the first error
    a component reported (``dma_fence_array_set_pending_error``). It has a
    timeline of its own (``dma_fence_context_alloc(1)``), as the kernel's.

    Args:
        fences: The components (at least one); nested arrays are flattened.

    Raises:
        InvalidArgument: ``fences`` is empty.
    """

    __slots__ = ("_pending", "fences")

    def __init__(self, fences: Sequence[Fence]) -> None:
        flat = [c for f in fences for c in f.unwrap()]
        if not flat:
            raise InvalidArgument("a fence array needs at least one fence")
        first = flat[0].context
        super().__init__(FenceContext(first.clock, "dma_fence_array", "unbound"), 1)
        self.fences: tuple[Fence, ...] = tuple(flat)
        self._pending = len(flat)
        for f in flat:
            try:
                f.add_callback(self._component_done)
            except NoEntry:
                self._component_done(f)

    def _component_done(self, fence: Fence) -> None:
        if fence.error and not self.error and not self.signalled:
            self.error = fence.error
        self._pending -= 1
        if self._pending == 0:
            self.signal()

    def unwrap(self) -> list[Fence]:
        return list(self.fences)


def wait_fences(
    fences: Iterable[Fence],
    clock: Clock,
    deadline: int | None,
    task: Task | None = None,
) -> bool:
    """Wait for every fence; ``True`` when all signalled, ``False`` at the deadline.

    This is an interruptible wait point: with a ``task``, a pending signal ends
    it with :class:`~accelcore.errors.RestartSyscall`.
    """
    pending = [f for f in fences if not f.signalled]
    if not pending:
        return True
    if task is not None:
        task.enter_wait()
    result = clock.wait_until(
        lambda: all(f.signalled for f in pending),
        deadline,
        (lambda: task.signal_pending) if task is not None else (lambda: False),
    )
    if result is WaitResult.INTERRUPTED:
        raise RestartSyscall("wait for fences interrupted by a signal")
    return result is WaitResult.DONE


class ReservationObject:
    """The fences attached to a buffer, each with a :class:`Usage`."""

    def __init__(self) -> None:
        self._fences: list[tuple[Fence, Usage]] = []

    def add_fence(self, fence: Fence, usage: Usage) -> None:
        """Attach ``fence`` (``dma_resv_add_fence``).

        A later fence of the same timeline replaces an earlier one of the same or
        a weaker usage (the later fence signals after it); re-adding a fence with a
        stronger usage promotes it, and fences are never demoted.
        """
        kept: list[tuple[Fence, Usage]] = []
        for f, u in self._fences:
            if f is fence:
                usage = min(usage, u)
            elif not (f.context is fence.context and u >= usage and fence.seqno >= f.seqno):
                kept.append((f, u))
        kept.append((fence, usage))
        self._fences = kept

    def fences(self, usage: Usage = Usage.BOOKKEEP) -> list[Fence]:
        """The unsignalled fences of ``usage`` and every stronger class."""
        self._fences = [(f, u) for f, u in self._fences if not f.signalled]
        return [f for f, u in self._fences if u <= usage]

    def get_singleton(self, usage: Usage) -> Fence | None:
        """The fences of ``usage`` and stronger as one fence (``dma_resv_get_singleton``).

        Returns:
            ``None`` when there are none, the fence itself when there is one, else
            a :class:`FenceArray` of all of them (it signals when the last does).
        """
        fences = self.fences(usage)
        if not fences:
            return None
        if len(fences) == 1:
            return fences[0]
        return FenceArray(fences)

    def describe(self) -> list[tuple[Fence, Usage]]:
        """Every attached fence with its usage (for bufinfo)."""
        return list(self._fences)

    def test_signalled(self, usage: Usage = Usage.BOOKKEEP) -> bool:
        """Whether every fence of ``usage`` and stronger has signalled."""
        return not self.fences(usage)


def __getattr__(name: str) -> object:
    # SyncFile moved to accelcore.sync_file (it is a file with an ioctl table, and
    # the ioctl machinery sits above fences); old imports keep working.
    if name == "SyncFile":
        from .sync_file import SyncFile  # calls up: sync_file imports this module

        return SyncFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
