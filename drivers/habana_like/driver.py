"""The habana_like driver: a habanalabs-shaped accel driver on the simulated ASIC.

Semantics (seed 000, habanalabs 2019):

* **Lazy single owner.** Any number of processes may open the device and ask INFO
  (the core's ``ACCEL_IOCTL_INFO`` with the driver queries ``HLK_INFO_*``, also
  on ``/dev/accel/accel_controlD<N>``). CB, CS, WAIT_CS and MEMORY need the
  compute context: the first such ioctl creates it and makes the file the owner;
  a second would-be owner gets ``EBUSY`` until the owner's file is released. The
  control node refuses them with ``EACCES``.
* **Command submission.** User command buffers (CB ioctl, mmap'ed) are copied,
  validated and patched by :mod:`.parser`; only kernel-owned patched copies reach
  the engines. A CS returns a sequence number (unique per file, from 1). Each
  job completes with an MSI-X interrupt whose handler signals the CS fence.
* **WAIT_CS** follows ``hl_cs_wait_ioctl``: ``timeout_us == 0`` polls; expiry is
  rc 0 with status ``BUSY``; a CS that timed out fails with ``ETIMEDOUT``
  (status ``TIMEDOUT``); one aborted by a reset or close fails with ``EIO``
  (status ``ABORTED``). A sequence number that was never issued on this file is
  ``EINVAL`` (habanalabs' choice, not ``ENOENT``); one issued long ago and
  forgotten is ``COMPLETED`` with ``HLK_WAIT_CS_STATUS_FLAG_GONE``.
* **Scheduling.** A CS is a job of the device's scheduler (:mod:`accelcore.sched`),
  queued on its context's entity: its fence is the job's finished fence, and it
  waits for the fences of the device memory it uses (implicit sync); the CS's
  fence joins those buffers' reservations, so importers of an exported range,
  ``poll`` and ``EXPORT_SYNC_FILE`` on the dma-buf wait for the CS.
* **Hang and reset.** Each CS has a timeout of ``cs_timeout_ms`` device time (a
  device-model option, or ``HLK_CS_FLAGS_CUSTOM_TIMEOUT``). When it fires the CS
  completes with ``-ETIMEDOUT`` and the device is hard-reset
  (``dev.reset("cs timeout")``): every context is aborted through
  :meth:`HabanaLikeDriver.context_destroy` (pending fences ``-EIO``), the ASIC is
  re-initialised, ``reset_count`` goes up and a uevent is sent.
* **Policy for the owner after a reset:** the owner keeps its file and its
  ownership; its old context (CBs, device memory, mappings) is gone — device
  memory exported as dma-buf stays allocated until the last importer lets go —
  and its next compute ioctl gets a fresh context. Sequence numbers continue
  where they were, and the old ones answer WAIT_CS with ``EIO``/``ABORTED``.
  (Upstream habanalabs kills the owner process instead; accelcore keeps it.)
* **Bad handles** (CB, device memory) are ``EINVAL``, as in habanalabs.
"""

from __future__ import annotations

import errno
import logging
from functools import partial
from typing import Any

from accelcore import (
    NSEC_PER_MSEC,
    NSEC_PER_USEC,
    PAGE_SIZE,
    AccelDevice,
    AccelDriver,
    AccelError,
    AccelFile,
    DeviceIOError,
    DeviceStatus,
    DriverFeature,
    Fence,
    FenceContext,
    InvalidArgument,
    IoctlCall,
    IoctlFlags,
    Mapping,
    NoDevice,
    OwnershipPolicy,
    SchedEntity,
    SchedJob,
    SchedStat,
    Scheduler,
    SchedulerOps,
    SharedMemory,
    TimedOut,
    TryAgain,
    context_scope,
    ioctl,
    page_align,
)
from accelcore.pci import IrqType, PciDeviceId, PciFunction
from accelcore.testing.conformance.steps import Call, Fails, Setup, UserArray, Write

from .context import (
    CommandBuffer,
    CommandSubmission,
    Context,
    DeviceState,
    FileState,
    outcome,
)
from .device import CQ_ADDR_BASE, HabanaLikeDevice
from .info import InfoMixin
from .memops import MemoryMixin
from .memory import VaSpace
from .packets import encode_msg_prot, encode_nop
from .parser import ParsedJob, parse_cb
from .uapi import HLK

__all__ = ["HabanaLikeDriver"]

log = logging.getLogger("accelcore.habana_like")

U64_MAX = (1 << 64) - 1
DMA_MASK_BITS = 48
_CS_FLAGS = HLK.HLK_CS_FLAGS_CUSTOM_TIMEOUT | HLK.HLK_CS_FLAGS_SKIP_RESET_ON_TIMEOUT
_CHUNK = HLK.sizeof("struct hlk_cs_chunk")


def device_state(dev: AccelDevice) -> DeviceState:
    """The driver's state of ``dev``."""
    st: DeviceState = dev.private
    return st


class _CsOps(SchedulerOps):
    """The CS scheduler's callbacks: queue a CS's jobs on the engines, stop them,
    and handle a CS timeout with a hard reset (habanalabs' TDR)."""

    def __init__(self, driver: HabanaLikeDriver, dev: AccelDevice) -> None:
        self.driver = driver
        self.dev = dev

    def run_job(self, job: SchedJob) -> Fence | None:
        st = device_state(self.dev)
        cs: CommandSubmission = job.priv
        cs.hw = st.fences.create()
        for queue, patched in cs.parsed:
            tag = next(st.tags)
            st.jobs[tag] = (cs, queue)
            cs.tags.add(tag)
            st.model.submit(queue, patched + encode_msg_prot(CQ_ADDR_BASE + queue, tag), tag)
        cs.parsed.clear()
        return cs.hw

    def cancel_job(self, job: SchedJob) -> None:
        self.driver._stop_cs(device_state(self.dev), job.priv)

    def timedout_job(self, job: SchedJob) -> SchedStat:
        st = device_state(self.dev)
        cs: CommandSubmission = job.priv
        st.model.events[HLK.HLK_EVENT_CS_TIMEOUT] += 1
        st.cs_timeouts += 1
        log.warning(
            "%s: command submission %d has not finished in %d ms!",
            st.dev.name,
            cs.seq,
            cs.limit_ms,
        )
        if cs.skip_reset:
            return SchedStat.NO_HANG
        cs.timed_out = True
        job.scheduler.cancel(job, -errno.ETIMEDOUT)
        try:
            st.dev.reset("cs timeout")
        except AccelError as exc:
            log.error("%s: reset after CS timeout failed: %s", st.dev.name, exc)
            return SchedStat.ENODEV
        except Exception as exc:  # a timer must not die; record it as an oops
            st.dev.record_oops("reset after CS timeout", exc)
            return SchedStat.ENODEV
        return SchedStat.RESET


#: Conformance setup for a CS: a command buffer holding one NOP packet, and the
#: chunk array that executes it.
_CS_STEPS = (
    Call("cb", "DRM_IOCTL_HLK_CB", {"input.op": 0, "input.cb_size": 4096}),
    Write("accel", "cb.output.mmap_offset", encode_nop()),
    UserArray(
        "chunks",
        "struct hlk_cs_chunk",
        [{"cb_handle": "cb.output.cb_handle", "queue_index": 0, "cb_size": 8}],
    ),
)


class HabanaLikeDriver(InfoMixin, MemoryMixin, AccelDriver):
    """habanalabs-like accelerator driver (see the module docstring)."""

    name = "habana_like"
    desc = "habanalabs-like deep-learning accelerator"
    version = (1, 0, 0)
    uapi = HLK
    pci_ids = (PciDeviceId(0x1DA3, 0x1000),)
    ownership = OwnershipPolicy.LAZY_SINGLE
    features = DriverFeature.CONTROL_NODE
    # What the conformance suite needs: the device model, and valid arguments.
    device_model = "habana_like"
    examples = {
        "DRM_IOCTL_HLK_CB": {"input.op": 0, "input.cb_size": 4096},
        "DRM_IOCTL_HLK_MEMORY": {"input.op": 0, "input.args.alloc.mem_size": 1 << 21},
        "DRM_IOCTL_HLK_CS": {"input.num_chunks_execute": 1},
        "DRM_IOCTL_HLK_WAIT_CS": {"input.timeout_us": 1_000_000},
    }
    #: Calls that must fail (after each example's setup) and change nothing.
    failing_examples = {
        "DRM_IOCTL_HLK_CB": (
            Fails({"input.op": 1, "input.cb_handle": 999}, errno.EINVAL, "no such CB"),
        ),
        "DRM_IOCTL_HLK_CS": (
            Fails({"input.num_chunks_execute": 0}, errno.EINVAL, "no chunks"),
            Fails({"input.chunks_execute": 0x10}, errno.EFAULT, "chunk array unmapped"),
        ),
        "DRM_IOCTL_HLK_WAIT_CS": (Fails({"input.seq": 1000}, errno.EINVAL, "never submitted"),),
    }
    #: Stateful examples: a CS needs a command buffer (one NOP packet) and its
    #: chunk array; WAIT_CS waits for such a CS.
    example_setup = {
        "DRM_IOCTL_HLK_CS": Setup(
            steps=_CS_STEPS,
            args={"input.chunks_execute": "chunks.addr"},
        ),
        "DRM_IOCTL_HLK_WAIT_CS": Setup(
            steps=(
                *_CS_STEPS,
                Call(
                    "cs",
                    "DRM_IOCTL_HLK_CS",
                    {"input.chunks_execute": "chunks.addr", "input.num_chunks_execute": 1},
                ),
            ),
            args={"input.seq": "cs.output.seq"},
        ),
    }

    # -- device lifetime ----------------------------------------------------------
    def probe(self, dev: AccelDevice) -> None:
        fn = dev.parent
        if not isinstance(fn, PciFunction) or not isinstance(fn.device_model, HabanaLikeDevice):
            raise NoDevice(f"{dev.name}: habana_like binds only to habana_like PCI functions")
        model = fn.device_model
        fn.enable_device()
        dev.add_action(fn.disable_device, "pci_disable_device")
        fn.set_master()
        dev.add_action(fn.clear_master, "pci_clear_master")
        fn.set_dma_mask(DMA_MASK_BITS)
        fn.alloc_irq_vectors(HLK.HLK_QUEUE_ID_SIZE, HLK.HLK_QUEUE_ID_SIZE, IrqType.MSIX)
        dev.add_action(fn.free_irq_vectors, "pci_free_irq_vectors")
        clock = dev.subsystem.clock
        st = DeviceState(
            dev,
            fn,
            model,
            model.dram,
            FenceContext(clock, self.name, f"{dev.name}-cs", oops=dev.record_oops),
            Scheduler(
                clock,
                _CsOps(self, dev),
                f"{dev.name}-cs",
                driver=self.name,
                credit_limit=HLK.HLK_MAX_PENDING_CS,
                oops=dev.record_oops,
            ),
        )
        dev.add_action(st.sched.fini, "drm_sched_fini")
        for vector in range(HLK.HLK_QUEUE_ID_SIZE):
            fn.request_irq(vector, partial(self._irq, st))
        dev.private = st

    def remove(self, dev: AccelDevice) -> None:
        st = device_state(dev)
        st.model.cancel_timers()
        st.jobs.clear()

    def reset(self, dev: AccelDevice, reason: str) -> None:
        st = device_state(dev)
        log.warning("%s: hard reset (%s)", dev.name, reason)
        st.model.hard_reset()
        st.jobs.clear()

    def open(self, file: AccelFile) -> None:
        file.driver_priv = FileState()
        device_state(file.device).last_open_ns = file.device.subsystem.clock.now()

    # -- contexts ----------------------------------------------------------------------
    def context_create(self, file: AccelFile) -> Any:
        st = device_state(file.device)
        asid = next(st.asids)
        scope = context_scope(file)
        return Context(
            asid,
            file.driver_priv,
            VaSpace(PAGE_SIZE),
            SchedEntity(st.sched, f"asid{asid}"),
            scope.ids("cbs", cyclic=True),
            scope.ids("dram_allocs", cyclic=True),
        )

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        ctx: Context = context
        st = device_state(file.device)
        err = -errno.ENODEV if file.device.status == DeviceStatus.UNPLUGGED else -errno.EIO
        ctx.entity.fini(err)  # queued and running CSs complete with err
        for cs in ctx.submissions.values():
            ctx.file_state.remember(cs.seq, outcome(cs))
        ctx.submissions.clear()
        for cb in ctx.cbs.clear():
            cb.put()
        for m in ctx.space.mappings():
            ctx.space.remove_any(m)
        for block in ctx.allocs.clear():
            block.put()
        self._reset_if_not_idle(file.device, st)

    def _reset_if_not_idle(self, dev: AccelDevice, st: DeviceState) -> None:
        """``hpriv_release``: "device not idle after user context is closed, must
        reset". Work the owner left queued, or an engine stalled on a FENCE it never
        signalled, must not reach the next owner: the device is hard-reset now,
        before anyone can own it again (so the next owner never loses memory to a
        reset its predecessor caused). Not while a reset or unplug is tearing the
        context down: that one already stops the hardware.
        """
        if dev.status != DeviceStatus.OPERATIONAL or st.model.is_idle():
            return
        log.warning("%s: device not idle after user context is closed, must reset", dev.name)
        st.release_resets += 1
        try:
            dev.reset("device not idle after context release")
        except AccelError as exc:
            log.error("%s: reset after context release failed: %s", dev.name, exc)

    def _stop_cs(self, st: DeviceState, cs: CommandSubmission) -> None:
        """Take a CS off the engines (its fences are the scheduler's to signal)."""
        for tag in cs.tags:
            st.jobs.pop(tag, None)
        st.model.cancel(cs.tags)
        cs.tags.clear()
        cs.release_mappings()

    def mmap(self, file: AccelFile, offset: int, length: int, writable: bool) -> Mapping | None:
        ctx: Context | None = file.context
        cb = ctx.cb_at(offset) if ctx is not None else None
        if cb is None:
            return None  # the core answers EINVAL for an unknown offset
        if length > cb.size:
            raise InvalidArgument(
                f"mmap of {length:#x} bytes exceeds CB {cb.handle} of {cb.size:#x} bytes"
            )
        return Mapping(
            file,
            cb.memory.view(0, length),
            offset,
            writable,
            holds=cb,
            object_view=cb.memory.view(),
        )

    # -- CB ---------------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_HLK_CB", IoctlFlags.OWNER)
    def cb(self, call: IoctlCall) -> None:
        """Create, destroy or describe a command buffer (``HL_IOCTL_CB``)."""
        inp = call.args.input
        op, size, flags, handle, pad = inp.op, inp.cb_size, inp.flags, inp.cb_handle, inp.pad
        if flags or pad:
            raise InvalidArgument(f"hlk_cb_in.flags {flags:#x} / pad {pad:#x} must be 0")
        ctx: Context = call.file.context
        out = call.args.output
        if op == HLK.HLK_CB_OP_CREATE:
            if not 8 <= size <= HLK.HLK_MAX_CB_SIZE:
                raise InvalidArgument(f"CB size {size} is outside 8..{HLK.HLK_MAX_CB_SIZE}")
            st = device_state(call.device)
            nbytes = page_align(size)
            cb = CommandBuffer(0, SharedMemory(nbytes, "hlk-cb"), nbytes, st.next_cb_offset)
            try:
                cb.handle = ctx.cbs.alloc(cb)
            except AccelError:
                cb.put()
                raise
            st.next_cb_offset += nbytes
            out.cb_handle, out.mmap_offset, out.size, out.usage_cnt = (
                cb.handle,
                cb.mmap_offset,
                cb.size,
                0,
            )
            return
        found = ctx.cbs.load(handle)
        if found is None:
            raise InvalidArgument(f"no CB with handle {handle} in this context")
        if op == HLK.HLK_CB_OP_DESTROY:
            ctx.cbs.erase(handle)
            found.put()
        elif op == HLK.HLK_CB_OP_INFO:
            out.cb_handle, out.mmap_offset, out.size, out.usage_cnt = (
                found.handle,
                found.mmap_offset,
                found.size,
                found.usage,
            )
        else:
            raise InvalidArgument(f"unknown CB op {op}")

    # -- CS ---------------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_HLK_CS", IoctlFlags.OWNER)
    def cs(self, call: IoctlCall) -> None:
        """Submit chunks to queues; returns the CS sequence number (``HL_IOCTL_CS``)."""
        inp = call.args.input
        args = (
            int(inp.chunks_execute),
            int(inp.num_chunks_execute),
            int(inp.cs_flags),
            int(inp.timeout_ms),
            int(inp.pad),
        )
        out = call.args.output
        try:
            seq = self._submit(call, *args)
        except AccelError:
            out.seq, out.status, out.pad = U64_MAX, 0, 0
            raise
        out.seq, out.status, out.pad = seq, HLK.HLK_CS_STATUS_SUCCESS, 0

    def _submit(
        self, call: IoctlCall, chunks: int, count: int, flags: int, timeout_ms: int, pad: int
    ) -> int:
        if flags & ~_CS_FLAGS or pad:
            raise InvalidArgument(
                f"CS flags {flags:#x} (unknown bits {flags & ~_CS_FLAGS:#x}) or pad {pad:#x}"
            )
        if not 1 <= count <= HLK.HLK_MAX_JOBS_PER_CS:
            raise InvalidArgument(f"CS with {count} chunks; 1..{HLK.HLK_MAX_JOBS_PER_CS} allowed")
        st = device_state(call.device)
        ctx: Context = call.file.context
        if ctx.pending >= HLK.HLK_MAX_PENDING_CS:
            raise TryAgain(
                f"rejecting CS: {ctx.pending} CSs in flight (max {HLK.HLK_MAX_PENDING_CS})"
            )
        raw = call.copy_from_user(chunks, count * _CHUNK)
        jobs: list[tuple[CommandBuffer, ParsedJob]] = []
        for i in range(count):
            chunk = HLK.from_bytes("struct hlk_cs_chunk", raw[i * _CHUNK : (i + 1) * _CHUNK])
            jobs.append(self._parse_chunk(ctx, i, chunk))
        fs: FileState = call.file.driver_priv
        seq = fs.next_seq
        fs.next_seq += 1
        limit_ms = timeout_ms if flags & HLK.HLK_CS_FLAGS_CUSTOM_TIMEOUT else st.model.cs_timeout_ms
        sched_job = SchedJob(ctx.entity, timeout_ns=limit_ms * NSEC_PER_MSEC)
        cs = CommandSubmission(seq, sched_job.finished, ctx)
        cs.limit_ms = limit_ms
        cs.skip_reset = bool(flags & HLK.HLK_CS_FLAGS_SKIP_RESET_ON_TIMEOUT)
        sched_job.priv = cs
        for cb, job in jobs:
            cs.parsed.append((job.queue, job.patched))
            for m in job.mappings:
                m.inflight += 1
                cs.mappings.append(m)
                if m.block is not None:
                    sched_job.add_buffer(m.block, write=True)
            cb.usage += 1
        ctx.submissions[seq] = cs
        ctx.inflight.add(seq)
        cs.fence.add_callback(lambda _fence: ctx.inflight.discard(seq))
        ctx.entity.push_job(sched_job)
        ctx.forget_finished()
        return seq

    def _parse_chunk(self, ctx: Context, i: int, chunk: Any) -> tuple[CommandBuffer, ParsedJob]:
        if chunk.cs_chunk_flags or any(chunk.pad):
            raise InvalidArgument(
                f"chunk {i}: cs_chunk_flags {chunk.cs_chunk_flags:#x} and pad must be 0"
            )
        if chunk.queue_index >= HLK.HLK_QUEUE_ID_SIZE:
            raise InvalidArgument(
                f"chunk {i}: queue index {chunk.queue_index} is invalid "
                f"(0..{HLK.HLK_QUEUE_ID_SIZE - 1})"
            )
        cb = ctx.cbs.load(chunk.cb_handle)
        if cb is None:
            raise InvalidArgument(f"chunk {i}: CB handle {chunk.cb_handle} is invalid")
        if not 8 <= chunk.cb_size <= cb.size:
            raise InvalidArgument(f"chunk {i}: cb_size {chunk.cb_size} is outside 8..{cb.size}")
        # Copy first, then validate the copy: the user can still write its CB.
        user_cb = cb.memory.read(0, chunk.cb_size)
        return cb, parse_cb(ctx.space, chunk.queue_index, user_cb)

    # -- completion, timeout ------------------------------------------------------------
    def _irq(self, st: DeviceState, vector: int) -> None:
        """MSI-X handler of a queue: drain its completion queue, finish CSs."""
        cq = st.model.completions[vector]
        while cq:
            tag, err = cq.popleft()
            entry = st.jobs.pop(tag, None)
            if entry is None:
                continue  # aborted meanwhile
            cs = entry[0]
            cs.tags.discard(tag)
            if err and not cs.error:
                cs.error = err
            if not cs.tags and cs.hw is not None:
                cs.release_mappings()
                if cs.error:
                    cs.hw.set_error(cs.error)
                cs.hw.signal()

    # -- WAIT_CS --------------------------------------------------------------------------
    @ioctl("DRM_IOCTL_HLK_WAIT_CS", IoctlFlags.OWNER, waits=True)
    def wait_cs(self, call: IoctlCall) -> None:
        """Wait for a CS (``HL_IOCTL_WAIT_CS``); see the module docstring for results."""
        inp = call.args.input
        seq, timeout_us, flags, pad = int(inp.seq), int(inp.timeout_us), inp.flags, inp.pad
        if flags or pad:
            raise InvalidArgument(f"hlk_wait_cs_in.flags {flags:#x} / pad {pad:#x} must be 0")
        ctx: Context = call.file.context
        fs: FileState = call.file.driver_priv
        # The output overlays the input (a union): nothing is written before the
        # wait, so an interrupted call leaves the input intact for the restart
        # (hl_wait_ioctl returns -EINTR before its memset of the args).
        out_flags, timestamp = 0, 0
        cs = ctx.submissions.get(seq)
        if cs is None:
            status = fs.outcomes.get(seq)
            if status is None:
                if not 1 <= seq < fs.next_seq:
                    raise InvalidArgument(
                        f"CS sequence number {seq} was never submitted on "
                        f"this file (next is {fs.next_seq})"
                    )
                status, out_flags = (
                    HLK.HLK_WAIT_CS_STATUS_COMPLETED,
                    HLK.HLK_WAIT_CS_STATUS_FLAG_GONE,
                )
        else:
            if not cs.fence.signalled and timeout_us:
                call.wait_fences([cs.fence], timeout_us * NSEC_PER_USEC)
            status = outcome(cs)
            timestamp = cs.fence.timestamp or 0
        out = call.args.output
        out.status, out.flags, out.timestamp_nsec = status, out_flags, timestamp
        if status == HLK.HLK_WAIT_CS_STATUS_TIMEDOUT:
            raise TimedOut(f"CS {seq} timed out on the device")
        if status == HLK.HLK_WAIT_CS_STATUS_ABORTED:
            raise DeviceIOError(f"CS {seq} was aborted (device reset or error)")
