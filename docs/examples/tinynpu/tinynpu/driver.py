"""The tinynpu driver: probe with managed release, buffer objects, jobs on the
core scheduler with implicit sync, completion through syncobjs."""

from __future__ import annotations

import errno
import itertools
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from accelcore import (
    CORE,
    AccelDevice,
    AccelDriver,
    AccelFile,
    BufferObject,
    DriverFeature,
    Fence,
    FenceContext,
    InvalidArgument,
    IoctlCall,
    IoctlFlags,
    NoDevice,
    SchedEntity,
    SchedJob,
    Scheduler,
    SchedulerOps,
    ioctl,
    load_uapi,
    lookup_syncobj,
)
from accelcore.pci import IrqType, PciDeviceId, PciFunction

from .device import TinyNpuDevice

TINYNPU_UAPI = load_uapi(str(resources.files(__package__) / "tinynpu.h"), include=[CORE])
U = TINYNPU_UAPI


@dataclass
class NpuState:
    """Per device: the model, the engine's scheduler, jobs on the engine by tag."""

    model: TinyNpuDevice
    fences: FenceContext
    sched: Scheduler = field(init=False)
    running: dict[int, Fence] = field(default_factory=dict)
    tags: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class _Engine(SchedulerOps):
    """What the scheduler calls: run a job on the engine, stop it, free it."""

    def __init__(self, st: NpuState) -> None:
        self.st = st

    def run_job(self, job: SchedJob) -> Fence:
        dst, src, fill, duration = job.priv
        hw = self.st.fences.create()
        tag = next(self.st.tags)
        self.st.running[tag] = hw

        def work() -> None:
            if src is None:
                dst.view()[:] = bytes([fill]) * dst.size
            else:
                n = min(src.size, dst.size)
                dst.view(0, n)[:] = src.view(0, n)

        self.st.model.execute(tag, duration, work)
        return hw

    def cancel_job(self, job: SchedJob) -> None:
        for tag, fence in list(self.st.running.items()):
            if fence is job.parent:
                del self.st.running[tag]  # its completion will be ignored

    def free_job(self, job: SchedJob) -> None:
        dst, src, _, _ = job.priv
        dst.put()
        if src is not None:
            src.put()


class TinyNpuDriver(AccelDriver):
    """tinynpu (see the module docstring)."""

    name = "tinynpu"
    desc = "tiny NPU, an out-of-tree example"
    version = (0, 1, 0)
    uapi = TINYNPU_UAPI
    pci_ids = (PciDeviceId(0x8086, 0x7D1D),)
    features = DriverFeature.GEM | DriverFeature.PRIME | DriverFeature.SYNCOBJ
    # What the conformance suite needs: the device model and valid arguments.
    device_model = "tinynpu"
    examples = {
        "DRM_IOCTL_TINYNPU_GET_PARAM": {"param": 0},
        "DRM_IOCTL_TINYNPU_BO_CREATE": {"size": 4096},
    }
    bo_create = ("DRM_IOCTL_TINYNPU_BO_CREATE", {"size": 4096}, "handle")

    # -- device lifetime: every step undone by a managed release action ----------------
    def probe(self, dev: AccelDevice) -> None:
        fn = dev.parent
        if not isinstance(fn, PciFunction) or not isinstance(fn.device_model, TinyNpuDevice):
            raise NoDevice(f"{dev.name}: tinynpu binds only to tinynpu PCI functions")
        fn.enable_device()
        dev.add_action(fn.disable_device, "pci_disable_device")
        fn.set_master()
        dev.add_action(fn.clear_master, "pci_clear_master")
        fn.alloc_irq_vectors(1, 1, IrqType.MSIX)
        dev.add_action(fn.free_irq_vectors, "pci_free_irq_vectors")
        clock = dev.subsystem.clock
        st = NpuState(fn.device_model, FenceContext(clock, self.name, f"{dev.name}-engine"))
        st.sched = Scheduler(clock, _Engine(st), f"{dev.name}-engine", driver=self.name)
        dev.add_action(st.sched.fini, "drm_sched_fini")
        fn.request_irq(0, lambda vector: self._irq(st))
        dev.private = st

    def _irq(self, st: NpuState) -> None:
        while st.model.completed:
            fence = st.running.pop(st.model.completed.popleft(), None)
            if fence is not None:
                fence.signal()

    # -- contexts: one scheduler entity each ------------------------------------------
    def context_create(self, file: AccelFile) -> Any:
        st: NpuState = file.device.private
        return SchedEntity(st.sched, f"client{file.client_id}")

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        context.fini(-errno.ECANCELED)  # revoke the context's queued and running jobs

    # -- ioctls -------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_TINYNPU_GET_PARAM", IoctlFlags.CONTROL_ALLOW)
    def get_param(self, call: IoctlCall) -> None:
        a = call.args
        if a.pad:
            raise InvalidArgument(f"drm_tinynpu_get_param.pad is {a.pad:#x}, must be 0")
        st: NpuState = call.device.private
        if a.param == U.DRM_TINYNPU_PARAM_DEVICE_ID:
            a.value = st.model.device_id
        elif a.param == U.DRM_TINYNPU_PARAM_ENGINES:
            a.value = st.model.engines
        else:
            raise InvalidArgument(f"unknown tinynpu param {a.param}")

    @ioctl("DRM_IOCTL_TINYNPU_BO_CREATE", IoctlFlags.OWNER)
    def bo_create_ioctl(self, call: IoctlCall) -> None:
        a = call.args
        if a.flags:
            raise InvalidArgument(f"drm_tinynpu_bo_create.flags is {a.flags:#x}, must be 0")
        if not 0 < a.size <= 1 << 30:
            raise InvalidArgument(f"buffer size {a.size:#x} must be in (0, 1 GiB]")
        bo = BufferObject(call.device, a.size, name="tinynpu")
        try:
            a.handle = call.file.handles.create(bo)
        finally:
            bo.put()
        a.mmap_offset = call.device.mmap_offset(bo)

    @ioctl("DRM_IOCTL_TINYNPU_SUBMIT", IoctlFlags.OWNER)
    def submit(self, call: IoctlCall) -> None:
        a = call.args
        if a.fill > 0xFF:
            raise InvalidArgument(f"fill {a.fill} is not a byte")
        dst = call.file.handles.lookup(a.dst_handle)
        src = call.file.handles.lookup(a.src_handle) if a.src_handle else None
        out = lookup_syncobj(call.file, a.out_syncobj) if a.out_syncobj else None
        job = SchedJob(
            call.file.context,
            priv=(dst.get(), src.get() if src else None, int(a.fill), int(a.duration_ns)),
        )
        if src is not None:
            job.add_buffer(src, write=False)  # waits for src's writers, on any device
        job.add_buffer(dst, write=True)  # waits for dst's readers and writers
        fence = call.file.context.push_job(job)
        if out is not None:
            out.replace_fence(fence)
