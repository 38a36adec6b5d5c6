"""A job scheduler for drivers, modelled on ``drm_sched`` (drivers/gpu/drm/scheduler).

A driver makes one :class:`Scheduler` per hardware queue (ring) with its
:class:`SchedulerOps`, and one :class:`SchedEntity` per context (or per file)
and queue. It wraps each submission in a :class:`SchedJob`, adds the job's
dependencies (fences, the implicit fences of the buffers it uses, syncobjs), and
pushes it to the entity. The scheduler then:

* runs jobs of one entity in push order, each once its dependencies signalled
  and the queue has credits (``credit_limit``), choosing among entities the one
  whose ready job waited longest (the FIFO policy, the kernel's default);
* signals the job's ``scheduled`` fence when it calls
  :meth:`SchedulerOps.run_job`, and its ``finished`` fence — the
  out-fence user space and other drivers wait on, which exists from the moment
  the job is made — when the hardware fence ``run_job`` returned signals, with
  that fence's error; then calls :meth:`SchedulerOps.free_job`;
* arms a timeout for each job it runs; when it expires it calls
  :meth:`SchedulerOps.timedout_job`, where the driver resets (see :meth:`Scheduler.stop`,
  :meth:`Scheduler.start`, :meth:`Scheduler.resubmit`, or a device reset that
  tears the contexts down with :meth:`SchedEntity.fini`);
* at context teardown, :meth:`SchedEntity.fini` cancels the entity's queued and
  running jobs: their finished fences signal with the error the driver gives.

Everything runs in device time on the subsystem's clock, with the engine lock
held: the scheduler starts no thread (a :class:`~accelcore.RealClock`'s timer
thread runs its callbacks; a :class:`~accelcore.VirtualClock` runs them in the
waiter). Deviations from the kernel (stated in the guide's
table): the timeout is per job, from the moment it runs (the kernel has one timer
per scheduler, re-armed as the head job finishes), and a job may carry its own
timeout (habanalabs' per-submission timeout); :meth:`SchedEntity.fini` also
cancels jobs already on the hardware, through :meth:`SchedulerOps.cancel_job`,
because a context's teardown revokes its work (seed 001), where the kernel lets
them finish and kills only the queued ones with ``-ESRCH``.
"""

from __future__ import annotations

import enum
import errno
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from .errors import InvalidArgument, NoEntry
from .fence import Fence, FenceContext, Usage, usage_rw

if TYPE_CHECKING:
    from .clock import Clock, Timer
    from .fence import ReservationObject

__all__ = ["Reservable", "SchedEntity", "SchedJob", "SchedStat", "Scheduler", "SchedulerOps"]

_push_order = itertools.count(1)


class Reservable(Protocol):
    """Anything with a reservation object: a buffer object, a driver's memory block."""

    @property
    def resv(self) -> ReservationObject: ...


class SchedStat(enum.Enum):
    """What :meth:`SchedulerOps.timedout_job` reports (``enum drm_gpu_sched_stat``)."""

    #: The driver handled a real hang (reset, cancelled or resubmitted the jobs).
    RESET = "reset"
    #: The device is gone; no further timeouts are armed.
    ENODEV = "enodev"
    #: A false alarm: the job goes on running and its timeout is armed again.
    NO_HANG = "no_hang"


class SchedulerOps:
    """The driver's callbacks (``struct drm_sched_backend_ops``). Subclass it."""

    def run_job(self, job: SchedJob) -> Fence | None:
        """Start ``job`` on the hardware; return the fence the hardware signals
        when it is done (``None``: the job completed at once, without error).
        Raise an errno error to fail the job with it (its finished fence gets
        the error, as an ``ERR_PTR`` from the kernel's ``run_job``)."""
        raise NotImplementedError

    def timedout_job(self, job: SchedJob) -> SchedStat:
        """``job`` ran longer than its timeout: recover (reset, cancel, resubmit).

        The default is the common recovery: stop the hardware part of the job
        (:meth:`cancel_job`), which completes it with ``-ETIMEDOUT``.
        """
        job.scheduler.cancel(job, -errno.ETIMEDOUT)
        return SchedStat.RESET

    def free_job(self, job: SchedJob) -> None:
        """``job``'s finished fence signalled: release what the driver holds for it."""

    def cancel_job(self, job: SchedJob) -> None:
        """Stop ``job`` on the hardware (context teardown, reset): cancel its
        timers and hardware work. Do not signal its fences; the scheduler does."""


class SchedJob:
    """One submission (``struct drm_sched_job``).

    Args:
        entity: The entity it will be pushed to.
        credits: Credits it takes on the queue while running (at least 1).
        priv: The driver's data for the job (the submission).
        timeout_ns: This job's timeout instead of the scheduler's (``None``:
            the scheduler's; ``0``: none).

    Raises:
        InvalidArgument: ``credits`` is 0 (``drm_sched_job_init``: ``EINVAL``).
        NoEntry: the entity was torn down (``ENOENT``).

    Attributes:
        scheduled: Signals when the job is handed to the hardware.
        finished: Signals when it is done, with its error; the out-fence.
        parent: The hardware fence ``run_job`` returned.
        dependencies: Fences still to wait for before it runs.
        error: The error it completed with (negative errno), 0 on success.
    """

    def __init__(
        self,
        entity: SchedEntity,
        *,
        credits: int = 1,
        priv: Any = None,
        timeout_ns: int | None = None,
    ) -> None:
        if credits <= 0:
            raise InvalidArgument(f"job credits {credits} must be at least 1")
        if entity.stopped:
            raise NoEntry(f"entity {entity.name} was torn down; no new jobs")
        self.entity = entity
        self.scheduler = entity.scheduler
        self.credits = min(credits, self.scheduler.credit_limit)
        self.priv = priv
        self.timeout_ns = timeout_ns
        self.scheduled = entity.scheduled_ctx.create()
        self.finished = entity.finished_ctx.create()
        self.parent: Fence | None = None
        self.dependencies: list[Fence] = []
        self.error = 0
        self._buffers: list[tuple[Reservable, bool]] = []
        self._order = 0
        self._timer: Timer | None = None
        self._freed = False

    # -- dependencies ----------------------------------------------------------------
    def add_dependency(self, fence: Fence) -> None:
        """Wait for ``fence`` before running (``drm_sched_job_add_dependency``).

        Fences of the job's own entity are ignored (the entity runs in order);
        of several fences of one timeline only the latest is kept.
        """
        if fence.context in (self.entity.scheduled_ctx, self.entity.finished_ctx):
            return
        if fence.signalled:
            return
        for i, f in enumerate(self.dependencies):
            if f.context is fence.context:
                if fence.seqno > f.seqno:
                    self.dependencies[i] = fence
                return
        self.dependencies.append(fence)

    def add_dependencies(self, fences: Iterable[Fence]) -> None:
        """:meth:`add_dependency` for each fence."""
        for f in fences:
            self.add_dependency(f)

    def add_buffer(self, bo: Reservable, *, write: bool) -> None:
        """The job uses ``bo`` (implicit sync): it waits for the buffer's fences
        (a writer for readers and writers, a reader for writers —
        ``drm_sched_job_add_implicit_dependencies``) and, once pushed, its
        finished fence joins ``bo.resv`` with ``WRITE`` or ``READ`` usage, so
        the next user, a dma-buf importer, ``poll`` and ``EXPORT_SYNC_FILE`` see it.
        """
        self.add_dependencies(bo.resv.fences(usage_rw(write)))
        self._buffers.append((bo, write))

    @property
    def ready(self) -> bool:
        """Whether every dependency has signalled."""
        self.dependencies = [f for f in self.dependencies if not f.signalled]
        return not self.dependencies

    def __repr__(self) -> str:
        return f"<SchedJob {self.entity.name} seq {self.finished.seqno}>"


class SchedEntity:
    """A queue of jobs for one context on one scheduler (``drm_sched_entity``).

    Args:
        scheduler: The queue its jobs run on.
        name: A label (``ctx3-compute``).
    """

    def __init__(self, scheduler: Scheduler, name: str) -> None:
        self.scheduler = scheduler
        self.name = name
        clock = scheduler.clock
        drv = scheduler.driver
        oops = scheduler.oops
        self.scheduled_ctx = FenceContext(clock, drv, f"{name}-scheduled", oops=oops)
        self.finished_ctx = FenceContext(clock, drv, f"{name}-finished", oops=oops)
        self.queue: deque[SchedJob] = deque()
        #: Jobs of this entity on the hardware.
        self.running: list[SchedJob] = []
        self.stopped = False
        #: Set when one of its jobs hung (``drm_sched_increase_karma``); a
        #: :meth:`Scheduler.resubmit` cancels its jobs instead of re-running them.
        self.guilty = False
        scheduler.entities.append(self)

    def push_job(self, job: SchedJob) -> Fence:
        """Queue ``job`` (``drm_sched_entity_push_job``); returns its finished fence.

        Raises:
            NoEntry: the entity was torn down (the kernel drops the job with a
                warning; accelcore refuses it so the caller can tell).
            InvalidArgument: the job belongs to another entity.
        """
        if job.entity is not self:
            raise InvalidArgument(f"{job!r} belongs to entity {job.entity.name}, not {self.name}")
        if self.stopped:
            raise NoEntry(f"entity {self.name} was torn down; job dropped")
        job._order = next(_push_order)
        for bo, write in job._buffers:
            bo.resv.add_fence(job.finished, Usage.WRITE if write else Usage.READ)
        self.queue.append(job)
        for dep in job.dependencies:
            if not dep.signalled:
                dep.add_callback(self.scheduler._wake)
        self.scheduler.schedule()
        return job.finished

    @property
    def idle(self) -> bool:
        """Whether no job is queued or running."""
        return not self.queue and not self.running

    def fini(self, error: int = -errno.ECANCELED) -> None:
        """Tear the entity down (context teardown): no new jobs; every queued
        and running job completes with ``error`` (a negative errno), running ones
        after :meth:`SchedulerOps.cancel_job` stopped them."""
        self.stopped = True
        sched = self.scheduler
        for job in list(self.running):
            sched.cancel(job, error)
        while self.queue:
            job = self.queue.popleft()
            job.scheduled.signal()
            sched._complete(job, error)
        if self in sched.entities:
            sched.entities.remove(self)


class Scheduler:
    """One hardware queue's scheduler (``drm_gpu_scheduler``).

    Args:
        clock: The device clock.
        ops: The driver's callbacks.
        name: The queue's name (fences' timeline names derive from entities).
        driver: The driver's name (``dma_fence_ops.get_driver_name``).
        timeout_ns: How long a job may run before :meth:`SchedulerOps.timedout_job`;
            ``None`` for no timeout.
        credit_limit: Credits the hardware queue holds (jobs in flight).
        oops: Where an exception escaping a callback of the jobs' fences is
            recorded (the owning device's ``record_oops``); ``None``: the
            clock's handler (the subsystem's record).

    Raises:
        InvalidArgument: ``credit_limit`` < 1 or a negative timeout.
    """

    def __init__(
        self,
        clock: Clock,
        ops: SchedulerOps,
        name: str,
        *,
        driver: str = "accel",
        timeout_ns: int | None = None,
        credit_limit: int = 1,
        oops: Callable[[str, BaseException], object] | None = None,
    ) -> None:
        if credit_limit < 1:
            raise InvalidArgument(f"scheduler {name}: credit_limit {credit_limit} must be >= 1")
        if timeout_ns is not None and timeout_ns < 0:
            raise InvalidArgument(f"scheduler {name}: timeout {timeout_ns} ns is negative")
        self.clock = clock
        self.ops = ops
        self.name = name
        self.driver = driver
        self.timeout_ns = timeout_ns
        self.credit_limit = credit_limit
        self.oops = oops
        self.credit_count = 0
        self.entities: list[SchedEntity] = []
        #: Jobs on the hardware, oldest first (``pending_list``).
        self.pending: list[SchedJob] = []
        #: Paused by :meth:`stop` until :meth:`start`.
        self.paused = False
        self.ready = True
        self.jobs_run = 0
        self.timeouts = 0
        self._scheduling = False
        self._again = False

    # -- running jobs -------------------------------------------------------------
    def _wake(self, _fence: Fence) -> None:
        self.schedule()

    def schedule(self) -> None:
        """Run every job that can run now (called on push, dependency signal,
        completion; drivers need not call it)."""
        if self._scheduling:
            self._again = True
            return
        self._scheduling = True
        try:
            self._again = True
            while self._again:
                self._again = False
                while (job := self._pick()) is not None:
                    self._run(job)
        finally:
            self._scheduling = False

    def _pick(self) -> SchedJob | None:
        if self.paused or not self.ready:
            return None
        best: SchedJob | None = None
        for entity in self.entities:
            if entity.stopped or not entity.queue:
                continue
            head = entity.queue[0]
            if not head.ready or self.credit_count + head.credits > self.credit_limit:
                continue
            if best is None or head._order < best._order:
                best = head
        return best

    def _run(self, job: SchedJob) -> None:
        job.entity.queue.popleft()
        job.entity.running.append(job)
        self.pending.append(job)
        self.credit_count += job.credits
        self.jobs_run += 1
        job.scheduled.signal()
        if job.entity.guilty:
            job.error = -errno.ECANCELED
        try:
            parent = self.ops.run_job(job)
        except OSError as exc:
            self._complete(job, -(exc.errno or errno.EIO))
            return
        self._attach(job, parent)

    def _attach(self, job: SchedJob, parent: Fence | None) -> None:
        job.parent = parent
        if parent is None:
            self._complete(job, job.error)
            return
        try:
            parent.add_callback(partial(self._parent_done, job))
        except NoEntry:
            self._parent_done(job, parent)
            return
        timeout = job.timeout_ns if job.timeout_ns is not None else self.timeout_ns
        if timeout:
            job._timer = self.clock.call_later(timeout, lambda: self._timed_out(job))

    def _parent_done(self, job: SchedJob, parent: Fence) -> None:
        if job in self.pending:
            self._complete(job, parent.error or job.error)

    def _complete(self, job: SchedJob, error: int) -> None:
        if job._timer is not None:
            job._timer.cancel()
            job._timer = None
        if job in self.pending:
            self.pending.remove(job)
            self.credit_count -= job.credits
        if job in job.entity.running:
            job.entity.running.remove(job)
        if not job.finished.signalled:
            job.error = error
            if error:
                job.finished.set_error(error)
            job.finished.signal()
        if not job._freed:
            job._freed = True
            self.ops.free_job(job)
        self.schedule()

    # -- timeout and recovery -------------------------------------------------------
    def _timed_out(self, job: SchedJob) -> None:
        job._timer = None
        if job not in self.pending:
            return
        self.timeouts += 1
        job.entity.guilty = True
        stat = self.ops.timedout_job(job)
        if stat is SchedStat.NO_HANG and job in self.pending:
            job.entity.guilty = False
            timeout = job.timeout_ns if job.timeout_ns is not None else self.timeout_ns
            if timeout:
                job._timer = self.clock.call_later(timeout, lambda: self._timed_out(job))
        elif stat is SchedStat.ENODEV:
            self.ready = False

    def cancel(self, job: SchedJob, error: int) -> None:
        """Stop a running ``job`` through :meth:`SchedulerOps.cancel_job` and
        complete it with ``error`` (a negative errno)."""
        if job in self.pending:
            self.ops.cancel_job(job)
            self._complete(job, error)

    def stop(self) -> None:
        """Pause the queue for a reset (``drm_sched_stop``): nothing new runs,
        running jobs' timeouts are disarmed. Then reset the hardware and call
        :meth:`resubmit` and/or :meth:`start`."""
        self.paused = True
        for job in self.pending:
            if job._timer is not None:
                job._timer.cancel()
                job._timer = None

    def resubmit(self) -> None:
        """Run the jobs that were on the hardware again, after a reset
        (``drm_sched_resubmit_jobs``; deprecated in the kernel, offered here for
        drivers whose hardware can replay). Jobs of a guilty entity are
        cancelled with ``-ECANCELED`` instead."""
        for job in list(self.pending):
            if job.entity.guilty:
                self.ops.cancel_job(job)
                self._complete(job, -errno.ECANCELED)
                continue
            try:
                parent = self.ops.run_job(job)
            except OSError as exc:
                self._complete(job, -(exc.errno or errno.EIO))
                continue
            job._timer = None
            self._attach(job, parent)

    def start(self, error: int = 0) -> None:
        """Resume after :meth:`stop` (``drm_sched_start``): jobs whose hardware
        fence is gone or signalled complete (with ``error`` if they had none);
        running ones get their timeout armed again; queued ones run."""
        self.paused = False
        for job in list(self.pending):
            if job.parent is None or job.parent.signalled:
                err = job.parent.error if job.parent is not None else 0
                self._complete(job, err or error or -errno.ECANCELED)
            elif job._timer is None:
                timeout = job.timeout_ns if job.timeout_ns is not None else self.timeout_ns
                if timeout:
                    job._timer = self.clock.call_later(timeout, partial(self._timed_out, job))
        self.schedule()

    def fini(self, error: int = -errno.ECANCELED) -> None:
        """Tear the scheduler down (``drm_sched_fini``): every entity is torn
        down with ``error``; nothing runs afterwards."""
        for entity in list(self.entities):
            entity.fini(error)
        self.ready = False

    # -- listings -----------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Jobs pushed and not yet run."""
        return sum(len(e.queue) for e in self.entities)

    def __repr__(self) -> str:
        return (
            f"<Scheduler {self.name} pending={len(self.pending)} queued={self.queued} "
            f"entities={len(self.entities)}>"
        )
