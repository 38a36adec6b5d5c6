"""vaccel: the vgem-sized in-tree driver the core's tests (and driver authors) use.

It has everything a driver needs and nothing more: buffer objects with handles
and mmap, a no-op ioctl, a one-engine job queue on the core's scheduler
(:mod:`accelcore.sched`) whose jobs fill or copy buffers after a delay in device
time, implicit sync through the buffers' reservation objects, an interruptible
wait for a job and one for a buffer, a driver INFO query, sysfs attributes, and
the lazy single-owner policy. Read it as the smallest complete example of the
driver API.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..clock import NSEC_PER_SEC, Timer
from ..device import AccelDevice, DeviceStatus
from ..dispatch import IoctlCall
from ..driver import (
    AccelDriver,
    DriverFeature,
    EngineInfo,
    IoctlFlags,
    MemoryRegionInfo,
    info_query,
    ioctl,
)
from ..errors import AccelError, InvalidArgument, NoEntry, TimedOut
from ..fence import Fence, FenceContext
from ..gem import BufferObject, dma_resv_wait
from ..memory import copy_chunked, fill_chunked
from ..sched import SchedEntity, SchedJob, SchedStat, Scheduler, SchedulerOps
from ..syncobj import lookup_syncobj, syncobj_find_fence
from ..sysfs import Attribute, AttributeGroup
from ..uapi import CORE, load_uapi
from .conformance.steps import Call, Fails, Setup

if TYPE_CHECKING:
    from ..file import AccelFile

__all__ = ["VACCEL_UAPI", "VAccelDriver"]

VACCEL_UAPI = load_uapi(str(resources.files(__package__) / "vaccel.h"), include=[CORE])


@dataclass
class VAccelState:
    """Per-device state: the engine's scheduler and hardware timeline, and counters."""

    fences: FenceContext
    sched: Scheduler
    submitted: int = 0
    completed: int = 0
    busy_ns: int = 0


@dataclass
class VAccelContext:
    """Per-file compute context: its queue on the engine (a scheduler entity) and
    the finished fence of each of its jobs by sequence number."""

    entity: SchedEntity
    jobs: dict[int, Fence] = field(default_factory=dict)


@dataclass(eq=False)
class VAccelJob:
    """What the engine does for one job: fill ``dst`` with a byte, or copy
    ``src`` into it, ``delay`` ns after the job starts."""

    file: AccelFile
    dst: BufferObject
    delay: int
    fill: int = 0
    src: BufferObject | None = None
    timer: Timer | None = None


class _Engine(SchedulerOps):
    """The scheduler's callbacks: the fill engine of one device."""

    def __init__(self, driver: VAccelDriver, dev: AccelDevice) -> None:
        self.driver = driver
        self.dev = dev

    def run_job(self, job: SchedJob) -> Fence | None:
        st = self.driver.state(self.dev)
        work: VAccelJob = job.priv
        hw = st.fences.create()

        def complete() -> None:
            work.timer = None
            # In chunks, letting other threads into the engine between them: a
            # 512 MiB fill or copy must not stall every other device's ioctls.
            resched = self.dev.subsystem.clock.cond_resched
            try:
                if work.src is not None:
                    n = min(work.src.size, work.dst.size)
                    copy_chunked(work.dst.view(0, n), work.src.view(0, n), resched)
                else:
                    fill_chunked(work.dst.view(), work.fill, resched)
            except AccelError as exc:  # the memory is gone: the job fails, it does not crash
                if not hw.signalled:
                    hw.set_error(-(exc.errno or errno.EIO))
            else:
                if not hw.signalled:  # not ended meanwhile (timeout, reset)
                    st.completed += 1
                    st.busy_ns += work.delay
                    work.file.engine_time_ns += work.delay
            if not hw.signalled:
                hw.signal()

        work.timer = self.dev.subsystem.clock.call_later(work.delay, complete)
        return hw

    def cancel_job(self, job: SchedJob) -> None:
        work: VAccelJob = job.priv
        if work.timer is not None:
            work.timer.cancel()
            work.timer = None

    def timedout_job(self, job: SchedJob) -> SchedStat:
        # The engine hung: fail the job, then reset the device, which aborts
        # every context's work (context_destroy tears their entities down).
        job.scheduler.cancel(job, -errno.ETIMEDOUT)
        try:
            self.dev.reset("job timeout")
        except AccelError:
            return SchedStat.ENODEV
        return SchedStat.RESET

    def free_job(self, job: SchedJob) -> None:
        work: VAccelJob = job.priv
        work.dst.put()
        if work.src is not None:
            work.src.put()


class VAccelDriver(AccelDriver):
    """A virtual accelerator with buffer objects and a fill engine."""

    name = "vaccel"
    desc = "virtual accelerator"
    version = (1, 0, 0)
    uapi = VACCEL_UAPI
    features = (
        DriverFeature.GEM
        | DriverFeature.PRIME
        | DriverFeature.SYNCOBJ
        | DriverFeature.SYNCOBJ_TIMELINE
    )
    examples = {
        "DRM_IOCTL_VACCEL_CREATE_BO": {"size": 4096},
        "DRM_IOCTL_VACCEL_NOP": {"value": 1},
        "DRM_IOCTL_VACCEL_SUBMIT": {"fill": 0x5A, "delay_ns": 1000},
        "DRM_IOCTL_VACCEL_WAIT": {"timeout_ns": -1},
    }
    #: Setup of the examples that need a buffer or a job first (the suite's
    #: stateful examples): SUBMIT fills a buffer, WAIT waits for a 1 ms job.
    example_setup = {
        "DRM_IOCTL_VACCEL_SUBMIT": Setup(
            steps=(Call("bo", "DRM_IOCTL_VACCEL_CREATE_BO", {"size": 4096}),),
            args={"handle": "bo.handle"},
        ),
        "DRM_IOCTL_VACCEL_WAIT": Setup(
            steps=(
                Call("bo", "DRM_IOCTL_VACCEL_CREATE_BO", {"size": 4096}),
                Call(
                    "job",
                    "DRM_IOCTL_VACCEL_SUBMIT",
                    {"handle": "bo.handle", "fill": 1, "delay_ns": 1_000_000},
                ),
            ),
            args={"seqno": "job.seqno"},
        ),
    }
    bo_create = ("DRM_IOCTL_VACCEL_CREATE_BO", {"size": 4096}, "handle")
    #: Calls that must fail (after each example's setup) and change nothing.
    failing_examples = {
        "DRM_IOCTL_VACCEL_CREATE_BO": (Fails({"size": 0}, errno.EINVAL, "empty buffer"),),
        "DRM_IOCTL_VACCEL_SUBMIT": (
            Fails({"fill": 0x100}, errno.EINVAL, "fill is not a byte"),
            Fails({"handle": 0x7777}, errno.ENOENT, "no such buffer"),
        ),
        "DRM_IOCTL_VACCEL_WAIT": (Fails({"seqno": 0xFFFF}, errno.ENOENT, "no such job"),),
    }
    #: How long a job may run before the engine counts as hung and the device
    #: is reset (device time; ``None``: never). Set it on the instance before
    #: its devices are created.
    job_timeout_ns: int | None = 3600 * NSEC_PER_SEC

    def probe(self, dev: AccelDevice) -> None:
        clock = dev.subsystem.clock
        sched = Scheduler(
            clock,
            _Engine(self, dev),
            f"{dev.name}-fill",
            driver=self.name,
            timeout_ns=self.job_timeout_ns,
            oops=dev.record_oops,
        )
        fences = FenceContext(clock, self.name, "fill", oops=dev.record_oops)
        dev.private = VAccelState(fences, sched)
        dev.add_action(sched.fini, "drm_sched_fini")

    def state(self, dev: AccelDevice) -> VAccelState:
        st: VAccelState = dev.private
        return st

    def context_create(self, file: AccelFile) -> Any:
        st = self.state(file.device)
        return VAccelContext(SchedEntity(st.sched, f"client{file.client_id}"))

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        dev = file.device
        err = (
            -errno.ENODEV
            if dev.status == DeviceStatus.UNPLUGGED
            else -errno.EIO
            if dev.status == DeviceStatus.IN_RESET
            else -errno.ECANCELED
        )
        ctx: VAccelContext = context
        ctx.entity.fini(err)
        ctx.jobs.clear()

    @ioctl("DRM_IOCTL_VACCEL_CREATE_BO", IoctlFlags.OWNER)
    def create_bo(self, call: IoctlCall) -> None:
        a = call.args
        if a.flags:
            raise InvalidArgument(f"vaccel_create_bo.flags is {a.flags:#x}, must be 0")
        if a.size == 0 or a.size > 1 << 32:
            raise InvalidArgument(f"buffer size {a.size:#x} must be in (0, 4 GiB]")
        bo = BufferObject(call.device, a.size, name=f"vaccel-{call.file.client_id}")
        try:
            a.handle = call.file.handles.create(bo)
        finally:
            bo.put()
        a.mmap_offset = call.device.mmap_offset(bo)

    @ioctl("DRM_IOCTL_VACCEL_NOP", IoctlFlags.CONTROL_ALLOW)
    def nop(self, call: IoctlCall) -> None:
        call.args.result = (call.args.value + 1) & 0xFFFF_FFFF_FFFF_FFFF  # a __u64 wraps

    @ioctl("DRM_IOCTL_VACCEL_SUBMIT", IoctlFlags.OWNER)
    def submit(self, call: IoctlCall) -> None:
        """Queue a fill job. It writes its buffer, so it runs after the buffer's
        readers and writers, and its fence joins the buffer's fences."""
        a = call.args
        if a.fill > 0xFF:
            raise InvalidArgument(f"fill value {a.fill} is not a byte")
        bo = call.file.handles.lookup(a.handle)
        a.seqno = self._push(call, VAccelJob(call.file, bo.get(), int(a.delay_ns), int(a.fill)))

    @ioctl("DRM_IOCTL_VACCEL_COPY", IoctlFlags.OWNER)
    def copy(self, call: IoctlCall) -> None:
        """Queue a copy job: it reads ``src`` once the writers of ``src`` are done
        (on whatever device: implicit sync through the shared reservation) and
        writes ``dst`` once its readers and writers are done. With
        ``in_syncobj`` it also waits for that syncobj's fence (``ENOENT`` for an
        unknown handle, ``EINVAL`` for an empty syncobj); ``out_syncobj`` gets
        the job's finished fence, as ivpu and amdxdna report completion."""
        a = call.args
        src = call.file.handles.lookup(a.src_handle)
        dst = call.file.handles.lookup(a.dst_handle)
        if src is dst:
            raise InvalidArgument(f"copy of buffer {a.src_handle} onto itself")
        in_fence = syncobj_find_fence(call.file, a.in_syncobj) if a.in_syncobj else None
        out = lookup_syncobj(call.file, a.out_syncobj) if a.out_syncobj else None
        work = VAccelJob(call.file, dst.get(), int(a.delay_ns), src=src.get())
        a.seqno = self._push(call, work, in_fence)
        if out is not None:
            out.replace_fence(call.file.context.jobs[a.seqno])

    def _push(self, call: IoctlCall, work: VAccelJob, in_fence: Fence | None = None) -> int:
        st = self.state(call.device)
        ctx: VAccelContext = call.file.context
        job = SchedJob(ctx.entity, priv=work)
        if in_fence is not None:
            job.add_dependency(in_fence)
        if work.src is not None:
            job.add_buffer(work.src, write=False)
        job.add_buffer(work.dst, write=True)
        ctx.jobs[job.finished.seqno] = job.finished
        st.submitted += 1
        ctx.entity.push_job(job)
        return job.finished.seqno

    @ioctl("DRM_IOCTL_VACCEL_WAIT", IoctlFlags.OWNER, waits=True)
    def wait(self, call: IoctlCall) -> None:
        a = call.args
        if a.pad:
            raise InvalidArgument(f"vaccel_wait.pad is {a.pad:#x}, must be 0")
        ctx: VAccelContext = call.file.context
        fence = ctx.jobs.get(a.seqno)
        if fence is None:
            raise NoEntry(f"no job with sequence number {a.seqno} on this context")
        timeout = None if a.timeout_ns < 0 else int(a.timeout_ns)
        if not call.wait_fences([fence], timeout):
            raise TimedOut(f"job {a.seqno} not done after {a.timeout_ns} ns")
        a.status = self.uapi.VACCEL_WAIT_ABORTED if fence.error else self.uapi.VACCEL_WAIT_COMPLETED

    @ioctl("DRM_IOCTL_VACCEL_WAIT_BO", IoctlFlags.NONE, waits=True)
    def wait_bo(self, call: IoctlCall) -> None:
        """Wait for a buffer's fences (``drm_gem_dma_resv_wait``): an unknown
        handle is ``EINVAL``, still busy at the timeout ``ETIME``. After a signal
        the time left is written back to ``timeout_ns``, so the restarted call
        goes on waiting where it stopped (as ``v3d_wait_bo_ioctl``)."""
        a = call.args
        if a.flags & ~self.uapi.VACCEL_WAIT_BO_WRITE:
            raise InvalidArgument(f"vaccel_wait_bo.flags {a.flags:#x} has unknown bits")
        deadline = None if a.timeout_ns < 0 else call.clock.now() + int(a.timeout_ns)
        try:
            dma_resv_wait(
                call,
                call.file.handles,
                a.handle,
                wait_all=bool(a.flags & self.uapi.VACCEL_WAIT_BO_WRITE),
                deadline=deadline,
            )
        finally:
            if deadline is not None:
                a.timeout_ns = max(0, deadline - call.clock.now())

    @info_query("VACCEL_INFO_COUNTERS", "struct vaccel_info_counters")
    def info_counters(self, call: IoctlCall, dev: AccelDevice) -> Any:
        st = self.state(dev)
        return self.uapi.new(
            "struct vaccel_info_counters", submitted=st.submitted, completed=st.completed
        )

    def memory_regions(self, dev: AccelDevice) -> Sequence[MemoryRegionInfo]:
        used = sum(bo.size for bo in dev.buffers)
        return [MemoryRegionInfo("system", 1 << 30, used)]

    def engines(self, dev: AccelDevice) -> Sequence[EngineInfo]:
        st = self.state(dev)
        return [
            EngineInfo(
                "fill", 0, st.submitted > st.completed, st.busy_ns, st.submitted, st.completed
            )
        ]

    def attribute_groups(self, dev: AccelDevice) -> Sequence[AttributeGroup]:
        st = self.state(dev)
        return [
            AttributeGroup(
                (
                    Attribute.ro("jobs_submitted", lambda: str(st.submitted)),
                    Attribute.ro("jobs_completed", lambda: str(st.completed)),
                    Attribute.wo("reset", lambda value: dev.reset("sysfs")),
                )
            )
        ]

    def fdinfo(self, file: AccelFile) -> dict[str, str]:
        return {"drm-engine-fill": f"{file.engine_time_ns} ns"}
