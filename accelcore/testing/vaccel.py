"""vaccel: the vgem-sized in-tree driver the core's tests (and driver authors) use.

It has everything a driver needs and nothing more: buffer objects with handles
and mmap, a no-op ioctl, a one-engine job queue whose jobs fill a buffer after a
delay in device time and signal a fence, an interruptible wait, a driver INFO
query, sysfs attributes, and the lazy single-owner policy. Read it as the
smallest complete example of the driver API.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..clock import Timer
from ..device import AccelDevice, DeviceStatus
from ..dispatch import IoctlCall
from ..driver import AccelDriver, EngineInfo, IoctlFlags, MemoryRegionInfo, info_query, ioctl
from ..errors import AccelError, InvalidArgument, NoEntry, TimedOut
from ..fence import Fence, FenceContext
from ..gem import BufferObject
from ..sysfs import Attribute, AttributeGroup
from ..uapi import CORE, load_uapi
from .conformance.steps import Call, Fails, Setup

if TYPE_CHECKING:
    from ..file import AccelFile

__all__ = ["VACCEL_UAPI", "VAccelDriver"]

VACCEL_UAPI = load_uapi(str(resources.files(__package__) / "vaccel.h"), include=[CORE])


@dataclass
class VAccelState:
    """Per-device state: the engine's timeline and counters."""

    fences: FenceContext
    submitted: int = 0
    completed: int = 0
    busy_ns: int = 0


@dataclass
class VAccelContext:
    """Per-file compute context: the jobs by sequence number, and the engine timer
    and buffer of each job still in flight (revoked at once when the context goes)."""

    jobs: dict[int, Fence] = field(default_factory=dict)
    inflight: dict[int, tuple[Timer, BufferObject]] = field(default_factory=dict)


class VAccelDriver(AccelDriver):
    """A virtual accelerator with buffer objects and a fill engine."""

    name = "vaccel"
    desc = "virtual accelerator"
    version = (1, 0, 0)
    uapi = VACCEL_UAPI
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

    def probe(self, dev: AccelDevice) -> None:
        fences = FenceContext(dev.subsystem.clock, self.name, "fill", oops=dev.record_oops)
        dev.private = VAccelState(fences)

    def state(self, dev: AccelDevice) -> VAccelState:
        st: VAccelState = dev.private
        return st

    def context_create(self, file: AccelFile) -> Any:
        return VAccelContext()

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        dev = file.device
        err = (
            -errno.ENODEV
            if dev.status == DeviceStatus.UNPLUGGED
            else -errno.EIO
            if dev.status == DeviceStatus.IN_RESET
            else -errno.ECANCELED
        )
        for timer, bo in context.inflight.values():
            timer.cancel()
            bo.put()
        context.inflight.clear()
        for fence in context.jobs.values():
            if not fence.signalled:
                fence.set_error(err)
                fence.signal()
        context.jobs.clear()

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
        a = call.args
        if a.fill > 0xFF:
            raise InvalidArgument(f"fill value {a.fill} is not a byte")
        bo = call.file.handles.lookup(a.handle)
        st = self.state(call.device)
        ctx: VAccelContext = call.file.context
        fence = st.fences.create()
        ctx.jobs[fence.seqno] = fence
        bo.get()
        st.submitted += 1
        delay = int(a.delay_ns)

        def complete() -> None:
            ctx.inflight.pop(fence.seqno, None)
            try:
                bo.view()[:] = bytes([a_fill]) * bo.size
            except AccelError as exc:  # the memory is gone: the job fails, it does not crash
                fence.set_error(-(exc.errno or errno.EIO))
            else:
                st.completed += 1
                st.busy_ns += delay
                call_file.engine_time_ns += delay
            # The job's reference goes before the signal (drm_sched frees a job's
            # resources whatever its fence's callbacks do); a callback that raises
            # is the fence core's oops to record, not this job's to leak.
            bo.put()
            fence.signal()

        a_fill, call_file = int(a.fill), call.file
        ctx.inflight[fence.seqno] = (call.clock.call_later(delay, complete), bo)
        a.seqno = fence.seqno

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
