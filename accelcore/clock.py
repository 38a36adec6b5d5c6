"""Device time: an injectable clock and scheduler, and the one lock of the engine.

Everything that takes time on a simulated device (a DMA transfer, a kernel on a
compute engine, a page-table update) is a callback scheduled on a :class:`Clock`.
Blocking waits in ioctl handlers go through :meth:`Clock.wait_until`, so the same
driver code runs:

* in **virtual time** (:class:`VirtualClock`): a wait runs the scheduled callbacks in
  order, jumping time forward, until its condition holds or its deadline passes. No
  threads and no sleeps: tests are deterministic and instant.
* in **real time** (:class:`RealClock`): a timer thread runs callbacks when they are
  due, and waiters sleep on a condition variable. Used by the demo and the server.

The clock also owns the engine's lock (``clock.lock``). Every entry point of the
engine holds it; a wait releases it while it sleeps, like the kernel's
``wait_event_interruptible`` drops the caller's locks.

A scheduled callback runs on behalf of the device, not of whoever happens to be
waiting when it falls due (in virtual time, a waiter runs it). So an exception
escaping one is an oops of the code that scheduled it: it goes to
:attr:`Clock.oops_handler` (the subsystem records it), the other callbacks still
run, and the waiter's call is not failed by it — as a crashing interrupt handler
or work item does not fail an unrelated ``ioctl`` in the kernel.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "NSEC_PER_MSEC",
    "NSEC_PER_SEC",
    "NSEC_PER_USEC",
    "Clock",
    "Deadlock",
    "RealClock",
    "Timer",
    "VirtualClock",
    "WaitResult",
]

log = logging.getLogger(__name__)

NSEC_PER_USEC = 1_000
NSEC_PER_MSEC = 1_000_000
NSEC_PER_SEC = 1_000_000_000


class WaitResult(enum.Enum):
    """How a wait ended."""

    DONE = "done"
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"


class Deadlock(RuntimeError):
    """A wait with no deadline in virtual time, and nothing scheduled that could end it."""


@dataclass(order=True, slots=True)
class Timer:
    """A scheduled callback. Cancel it with :meth:`cancel`."""

    when: int
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    clock: Clock | None = field(default=None, compare=False, repr=False)

    def cancel(self) -> None:
        """Stop the callback from running; harmless if it already ran."""
        if not self.cancelled:
            self.cancelled = True
            if self.clock is not None:
                self.clock._cancelled()


class Clock:
    """Base class: a scheduler of callbacks on a monotonic nanosecond timeline.

    Subclasses decide how time passes. All methods must be called with
    :attr:`lock` held, except :meth:`now`.
    """

    def __init__(self) -> None:
        #: The engine's lock; hold it for every call but :meth:`now`.
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        # Heap of (when, seq, timer): ordered by the tuple's C comparison (seq is
        # unique, so timers themselves are never compared).
        self._timers: list[tuple[int, int, Timer]] = []
        self._n_cancelled = 0
        self._seq = itertools.count()
        #: Where exceptions escaping scheduled callbacks and fence callbacks go:
        #: ``handler(where, exc)``. The :class:`~accelcore.subsystem.Subsystem`
        #: owning the clock sets it to its ``record_oops``; unset, they are logged.
        self.oops_handler: Callable[[str, BaseException], object] | None = None

    # -- time ---------------------------------------------------------------
    def now(self) -> int:
        """The current device time in nanoseconds."""
        raise NotImplementedError

    # -- scheduling ----------------------------------------------------------
    def call_at(self, when: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` (with the lock held) at device time ``when``."""
        seq = next(self._seq)
        timer = Timer(when, seq, callback, clock=self)
        heapq.heappush(self._timers, (when, seq, timer))
        self._scheduled()
        return timer

    def call_later(self, delay: int, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` ``delay`` nanoseconds from now."""
        return self.call_at(self.now() + max(0, delay), callback)

    def pending(self) -> int:
        """How many callbacks are scheduled and not cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def _cancelled(self) -> None:
        # Cancelled timers stay in the heap until they reach its top; when they
        # are most of it, rebuild it from the live ones (as asyncio does), so a
        # driver that arms and cancels a timeout per job does not grow it forever.
        self._n_cancelled += 1
        if self._n_cancelled > 100 and self._n_cancelled * 2 > len(self._timers):
            self._timers = [e for e in self._timers if not e[2].cancelled]
            heapq.heapify(self._timers)
            self._n_cancelled = 0

    def notify(self) -> None:
        """Tell waiters that state changed (a fence signalled, a signal posted)."""
        with self.lock:
            self.changed.notify_all()

    def cond_resched(self) -> None:
        """Let other threads into the engine in the middle of long work (the
        kernel's ``cond_resched_lock``): call with the lock held, between bounded
        chunks of work (a fill, a copy), at a point where the state is consistent.
        The lock is released (all levels) and taken back.

        With one thread (:class:`VirtualClock`) there is no one to let in: no-op.
        """

    def _scheduled(self) -> None:
        """Hook: a timer was added."""

    def report_oops(self, where: str, exc: BaseException) -> None:
        """Record an exception that escaped code run for the device (a timer, a
        fence callback) through :attr:`oops_handler`, or log it."""
        if self.oops_handler is not None:
            self.oops_handler(where, exc)
        else:
            log.error("oops in %s: %r", where, exc, exc_info=exc)

    def _fire(self, timer: Timer) -> None:
        """Run a due timer; an exception escaping it is an oops of the timer's code."""
        try:
            timer.callback()
        except Deadlock:
            raise
        except Exception as exc:
            name = getattr(timer.callback, "__qualname__", repr(timer.callback))
            self.report_oops(f"timer {name}", exc)

    def _drop_cancelled_top(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
            self._n_cancelled = max(0, self._n_cancelled - 1)

    def _pop_due(self, until: int) -> Timer | None:
        self._drop_cancelled_top()
        if self._timers and self._timers[0][0] <= until:
            timer = heapq.heappop(self._timers)[2]
            timer.clock = None  # it ran: a late cancel() must not count
            return timer
        return None

    def _next_when(self) -> int | None:
        self._drop_cancelled_top()
        return self._timers[0][0] if self._timers else None

    # -- waiting ------------------------------------------------------------
    def wait_until(
        self,
        predicate: Callable[[], bool],
        deadline: int | None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> WaitResult:
        """Block until ``predicate()`` is true, ``deadline`` passes, or ``interrupted()``.

        Args:
            predicate: The condition waited for; evaluated with the lock held.
            deadline: Absolute device time in ns, or ``None`` to wait forever.
            interrupted: Polled while waiting; true means a signal is pending.

        Returns:
            Which of the three ended the wait. The predicate wins ties.
        """
        raise NotImplementedError


class VirtualClock(Clock):
    """Virtual time: advanced explicitly or by waits; never sleeps.

    Args:
        start: The initial time in nanoseconds.
    """

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self._now = start

    def now(self) -> int:
        return self._now

    def advance(self, delta: int) -> None:
        """Move time forward by ``delta`` ns, running every callback that falls due."""
        self.advance_to(self._now + delta)

    def advance_to(self, when: int) -> None:
        """Move time forward to ``when``, running due callbacks in order."""
        with self.lock:
            while (timer := self._pop_due(when)) is not None:
                self._now = max(self._now, timer.when)
                self._fire(timer)
            self._now = max(self._now, when)
            self.notify()

    def run_until_idle(self, limit: int = 1_000_000) -> int:
        """Run scheduled callbacks until none are left; returns how many ran.

        Raises:
            Deadlock: if more than ``limit`` callbacks run (a self-rescheduling loop).
        """
        ran = 0
        with self.lock:
            while (when := self._next_when()) is not None:
                timer = self._pop_due(when)
                assert timer is not None
                self._now = max(self._now, timer.when)
                self._fire(timer)
                ran += 1
                if ran > limit:
                    raise Deadlock(f"more than {limit} callbacks ran; a timer keeps rescheduling")
            self.notify()
        return ran

    def wait_until(
        self,
        predicate: Callable[[], bool],
        deadline: int | None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> WaitResult:
        with self.lock:
            while True:
                if predicate():
                    return WaitResult.DONE
                if interrupted():
                    return WaitResult.INTERRUPTED
                nxt = self._next_when()
                if nxt is None or (deadline is not None and nxt > deadline):
                    if deadline is None:
                        raise Deadlock("wait with no deadline and nothing scheduled to end it")
                    self._now = max(self._now, deadline)
                    return WaitResult.DONE if predicate() else WaitResult.TIMEOUT
                timer = self._pop_due(nxt)
                assert timer is not None
                self._now = max(self._now, timer.when)
                self._fire(timer)


class RealClock(Clock):
    """Real time from ``time.monotonic_ns``; a daemon thread runs due callbacks.

    Args:
        speed: Device nanoseconds per host nanosecond; ``2.0`` runs devices twice as
            fast as the wall clock. Only the device timeline is scaled.
    """

    #: Longest a waiter sleeps before re-checking its interrupt flag.
    POLL_NS = 50 * NSEC_PER_MSEC

    def __init__(self, speed: float = 1.0) -> None:
        super().__init__()
        self._speed = speed
        self._origin = time.monotonic_ns()
        self._wakeup = threading.Condition(self.lock)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="accel-clock", daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int((time.monotonic_ns() - self._origin) * self._speed)

    def _host_seconds(self, device_ns: int) -> float:
        return max(0.0, device_ns / self._speed / NSEC_PER_SEC)

    #: Seconds :meth:`cond_resched` leaves the lock free, so that a thread woken by
    #: the release can take it (the lock is not fair).
    RESCHED_SECONDS = 50e-6

    def _scheduled(self) -> None:
        self._wakeup.notify()

    def cond_resched(self) -> None:
        # Condition.wait releases every level of the RLock and takes them back.
        self.changed.wait(self.RESCHED_SECONDS)

    def stop(self) -> None:
        """Stop the timer thread (pending callbacks never run)."""
        with self.lock:
            self._stopped = True
            self._wakeup.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self.lock:
            while not self._stopped:
                nxt = self._next_when()
                now = self.now()
                if nxt is None:
                    self._wakeup.wait()
                    continue
                if nxt > now:
                    self._wakeup.wait(self._host_seconds(nxt - now))
                    continue
                timer = self._pop_due(now)
                if timer is not None:
                    self._fire(timer)
                    self.notify()

    def wait_until(
        self,
        predicate: Callable[[], bool],
        deadline: int | None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> WaitResult:
        with self.lock:
            while True:
                if predicate():
                    return WaitResult.DONE
                if interrupted():
                    return WaitResult.INTERRUPTED
                step = self.POLL_NS
                if deadline is not None:
                    remaining = deadline - self.now()
                    if remaining <= 0:
                        return WaitResult.TIMEOUT
                    step = min(step, remaining)
                self.changed.wait(self._host_seconds(step))
