"""Deliberately broken drivers: vaccel with one wrong behaviour each.

Each class is the smallest change to :class:`VAccelDriver` that a conforming
driver must not have, and ``BROKEN`` says which check must catch it and what
its failure message must say. ``test_suite_catches.py`` runs the shipped suite
on each with pytester (``--accel-driver broken_drivers:Class``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from accelcore import AccelDevice, AccelFile, IoctlCall
from accelcore.driver import IoctlFlags, ioctl
from accelcore.errors import InvalidArgument, NoDevice, NoEntry, NoMemory, NoSpace
from accelcore.gem import BufferObject
from accelcore.resources import context_scope
from accelcore.sysfs import Attribute, AttributeGroup
from accelcore.testing.vaccel import VACCEL_UAPI, VAccelDriver
from accelcore.uapi import CORE, load_uapi


def _vaccel_header_with(old: str, new: str) -> str:
    """vaccel's header text with one edit (the broken variants are one-line mutations)."""
    text = VACCEL_UAPI.text
    assert old in text, f"vaccel.h no longer contains {old!r}"
    return text.replace(old, new, 1)


class FlagsIgnored(VAccelDriver):
    """CREATE_BO accepts any ``flags`` (unknown bits must be EINVAL)."""

    name = "broken_flags"

    @ioctl("DRM_IOCTL_VACCEL_CREATE_BO", IoctlFlags.OWNER)
    def create_bo(self, call: IoctlCall) -> None:
        call.args.flags = 0
        super().create_bo(call)


class PadIgnored(VAccelDriver):
    """Its NOP struct has ``flags`` and ``pad`` that the handler never checks."""

    name = "broken_pad"
    uapi = load_uapi(
        "broken_pad.h",
        include=[CORE],
        text=_vaccel_header_with(
            "\t__u64 result;\t\t/* out: value + 1 */\n",
            "\t__u64 result;\t\t/* out: value + 1 */\n"
            "\t__u32 flags;\t\t/* must be 0 */\n"
            "\t__u32 pad;\t\t/* must be 0: the broken driver ignores both */\n",
        ),
    )


class LeaksAtClose(VAccelDriver):
    """Every open allocates a buffer object that postclose forgets to free."""

    name = "broken_leak"

    def open(self, file: AccelFile) -> None:
        file.driver_priv = BufferObject(file.device, 4096, name="per-file scratch")

    def postclose(self, file: AccelFile) -> None:
        pass  # forgets file.driver_priv.put()


class LeaksContextResource(VAccelDriver):
    """Each compute context takes a managed ID (a "widget") that context_destroy
    forgets to free: the core names the table in the leak it reports."""

    name = "broken_ctx_leak"

    def context_create(self, file: AccelFile) -> Any:
        ctx = super().context_create(file)
        widgets = context_scope(file).ids("widgets")
        widgets.alloc(object())
        return ctx


class OopsOnZeroSize(VAccelDriver):
    """CREATE_BO divides by the size before checking it: size 0 is an oops."""

    name = "broken_oops"

    @ioctl("DRM_IOCTL_VACCEL_CREATE_BO", IoctlFlags.OWNER)
    def create_bo(self, call: IoctlCall) -> None:
        pages = (call.args.size + 4095) // call.args.size  # ZeroDivisionError on 0
        del pages
        super().create_bo(call)


class DoubleApplyOnRestart(VAccelDriver):
    """NOP accumulates into ``result`` before an interruptible wait: a restart
    re-runs it on the copied-out args and applies it twice."""

    name = "broken_restart"
    examples = {**VAccelDriver.examples}

    @ioctl("DRM_IOCTL_VACCEL_NOP", IoctlFlags.CONTROL_ALLOW, waits=True)
    def nop(self, call: IoctlCall) -> None:
        call.args.result = call.args.result + call.args.value + 1
        call.wait(lambda: False, 1000)  # a 1 µs interruptible sleep


class BotchedHeader(VAccelDriver):
    """vaccel_create_bo has an implicit 4-byte hole (no explicit pad)."""

    name = "broken_header"
    uapi = load_uapi(
        "botched.h",
        include=[CORE],
        # handle moves up next to size: a 4-byte hole opens before mmap_offset.
        text=_vaccel_header_with(
            "\t__u64 size;\t\t/* in: bytes, rounded up to pages */\n"
            "\t__u32 handle;\t\t/* out */\n"
            "\t__u32 flags;\t\t/* must be 0 */\n",
            "\t__u32 handle;\t\t/* out: BOTCHED, a hole of 4 bytes follows */\n"
            "\t__u64 size;\t\t/* in: bytes, rounded up to pages */\n"
            "\t__u32 flags;\t\t/* must be 0 */\n",
        ),
    )


class RaisingAttribute(VAccelDriver):
    """A sysfs attribute whose show raises instead of returning text."""

    name = "broken_sysfs"

    def attribute_groups(self, dev: AccelDevice) -> Sequence[AttributeGroup]:
        def temperature() -> str:
            raise ZeroDivisionError("sensor read divided by zero")

        extra = AttributeGroup((Attribute.ro("temperature", temperature),))
        return [*super().attribute_groups(dev), extra]


class RemoveOopses(VAccelDriver):
    """remove() dereferences state it already freed (an oops at hot-unplug)."""

    name = "broken_remove"

    def remove(self, dev: AccelDevice) -> None:
        state: Any = None
        state.stop()


class ResetFails(VAccelDriver):
    """reset() always fails: the device stays malfunctioning."""

    name = "broken_reset"

    def reset(self, dev: AccelDevice, reason: str) -> None:
        raise NoDevice(f"{dev.name}: firmware did not come back after reset ({reason})")


class MultiDevice(VAccelDriver):
    """A *conforming* multi-device NOP (one step per device of the driver) that
    records its progress in ``result`` (KFD's ``n_success``), with the optional
    ``inject_failure(dev, position)`` hook the partial-failure checker uses."""

    name = "multi_device"
    fail_at: int | None = None

    def inject_failure(self, dev: AccelDevice, position: int) -> None:
        self.fail_at = position

    def _devices(self, call: IoctlCall) -> list[AccelDevice]:
        return [d for d in call.device.subsystem.registered_devices() if d.driver is self]

    def _step(self, i: int) -> None:
        if self.fail_at == i:
            self.fail_at = None
            raise NoMemory(f"injected failure at device position {i}")

    @ioctl("DRM_IOCTL_VACCEL_NOP", IoctlFlags.CONTROL_ALLOW, multi_device=True)
    def nop(self, call: IoctlCall) -> None:
        done = int(call.args.result)
        for i in range(done, len(self._devices(call))):
            self._step(i)
            call.args.result = i + 1


class RetryRedoesDevices(MultiDevice):
    """The multi-device NOP counts every device again when it is retried."""

    name = "broken_multi"

    @ioctl("DRM_IOCTL_VACCEL_NOP", IoctlFlags.CONTROL_ALLOW, multi_device=True)
    def nop(self, call: IoctlCall) -> None:
        for i in range(len(self._devices(call))):
            self._step(i)
            call.args.result += 1


class HandleBeforeFlags(VAccelDriver):
    """CREATE_BO makes the handle, then validates ``flags``: each refused call
    leaves a handle (and its buffer) in the file until it closes."""

    name = "broken_handle_leak"

    @ioctl("DRM_IOCTL_VACCEL_CREATE_BO", IoctlFlags.OWNER)
    def create_bo(self, call: IoctlCall) -> None:
        a = call.args
        bo = BufferObject(call.device, max(int(a.size), 1), name="early")
        a.handle = call.file.handles.create(bo)
        bo.put()
        if a.flags:
            raise InvalidArgument(f"vaccel_create_bo.flags is {a.flags:#x}, must be 0")
        super().create_bo(call)


class SubmitLeaksReference(VAccelDriver):
    """SUBMIT takes the buffer's reference before validating ``fill``, and its
    error path forgets to drop it: the buffer outlives every handle and file."""

    name = "broken_ref_leak"

    @ioctl("DRM_IOCTL_VACCEL_SUBMIT", IoctlFlags.OWNER)
    def submit(self, call: IoctlCall) -> None:
        bo = call.file.handles.lookup(call.args.handle)
        bo.get()  # the job's reference, taken too early
        if call.args.fill > 0xFF:
            raise InvalidArgument(f"fill value {call.args.fill} is not a byte")  # leaks it
        bo.put()
        super().submit(call)


class JobTwiceOnRestart(VAccelDriver):
    """WAIT kicks the engine with a flush job each time it is entered: a
    restarted WAIT runs it twice. The arguments are identical; only the engine
    counters (INFO, sysfs) show it."""

    name = "broken_job_twice"

    @ioctl("DRM_IOCTL_VACCEL_WAIT", IoctlFlags.OWNER, waits=True)
    def wait(self, call: IoctlCall) -> None:
        st = self.state(call.device)
        st.submitted += 1  # the flush job, run again on every restart
        st.completed += 1
        super().wait(call)


class ContextTableLeak(VAccelDriver):
    """Contexts take a slot of a fixed table of 32 (like an ASID table) that
    context_destroy never gives back: after 32 opens every new context is refused."""

    name = "broken_context_table"
    SLOTS = 32

    def probe(self, dev: AccelDevice) -> None:
        super().probe(dev)
        dev.private.slots = set(range(self.SLOTS))

    def context_create(self, file: AccelFile) -> Any:
        slots: set[int] = file.device.private.slots
        if not slots:
            raise NoSpace(f"{file.device.name}: all {self.SLOTS} context slots are in use")
        slots.pop()
        return super().context_create(file)  # context_destroy forgets the slot


class WaitNotRestartable(VAccelDriver):
    """WAIT forgets the job before it sleeps: interrupted and re-issued, it
    answers ENOENT for a job that exists."""

    name = "broken_wait_restart"

    @ioctl("DRM_IOCTL_VACCEL_WAIT", IoctlFlags.OWNER, waits=True)
    def wait(self, call: IoctlCall) -> None:
        ctx = call.file.context
        fence = ctx.jobs.pop(call.args.seqno, None)
        if fence is None:
            raise NoEntry(f"no job with sequence number {call.args.seqno} on this context")
        call.wait_fences([fence], None)
        call.args.status = 0


class LegacyDeclarations(VAccelDriver):
    """A *conforming* driver declared the old way: examples of the ioctls that work
    on a fresh file, no ``example_setup``. The suite passes, and says what to
    declare for the waits it could not reach."""

    name = "legacy_declarations"
    examples = {
        "DRM_IOCTL_VACCEL_CREATE_BO": {"size": 4096},
        "DRM_IOCTL_VACCEL_NOP": {"value": 1},
    }
    example_setup = {}


@dataclass(frozen=True, slots=True)
class Broken:
    """What must catch a broken driver: the failing check and words of its message."""

    cls: type[VAccelDriver]
    check: str
    message: tuple[str, ...]


BROKEN: tuple[Broken, ...] = (
    Broken(FlagsIgnored, "test_all_ones_flags_einval", ("flags=~0", "got success", "EINVAL")),
    Broken(PadIgnored, "test_nonzero_pad_einval", ("pad=1", "got success", "EINVAL")),
    Broken(LeaksAtClose, "test_open_close_cycles", ("buffers",)),
    Broken(
        LeaksContextResource,
        "test_second_owner_busy",
        ("broken_ctx_leak context", "1 live widgets", "context_destroy"),
    ),
    Broken(OopsOnZeroSize, "test_fuzz_payloads", ("oops", "ZeroDivisionError")),
    Broken(DoubleApplyOnRestart, "test_restart_at_every_wait_point", ("DRM_IOCTL_VACCEL_NOP",)),
    Broken(
        RetryRedoesDevices,
        "test_multi_device_partial_failure",
        ("failing at device position 1", "differs from the uninterrupted run", "args.result"),
    ),
    Broken(BotchedHeader, "test_register_driver_succeeds", ("vaccel_create_bo.size", "refused")),
    Broken(RaisingAttribute, "test_read_all_attributes", ("temperature", "ZeroDivisionError")),
    Broken(RemoveOopses, "test_unplug_with_open_file", ("oops", "remove", "AttributeError")),
    Broken(
        ResetFails,
        "test_reset_recovery",
        ("reset() failed", "firmware did not come back", "MALFUNCTION"),
    ),
    Broken(
        HandleBeforeFlags,
        "test_all_ones_flags_einval",
        ("DRM_IOCTL_VACCEL_CREATE_BO with flags=~0", "changed the state", "accounting.handles"),
    ),
    Broken(
        SubmitLeaksReference,
        "test_fuzz_payloads",
        ("DRM_IOCTL_VACCEL_SUBMIT", "changed the state", "refs"),
    ),
    Broken(
        JobTwiceOnRestart,
        "test_restart_at_every_wait_point",
        ("DRM_IOCTL_VACCEL_WAIT interrupted", "info_counters.submitted", "jobs_submitted"),
    ),
    Broken(
        ContextTableLeak,
        "test_context_churn",
        ("DRM_IOCTL_VACCEL_CREATE_BO failed in open/ioctl/close cycle", "context slots"),
    ),
    Broken(
        WaitNotRestartable,
        "test_restart_at_every_wait_point",
        ("DRM_IOCTL_VACCEL_WAIT interrupted at wait point 0", "errnos [4, 2"),
    ),
)

__all__ = ["BROKEN", "Broken", "LegacyDeclarations", "MultiDevice"]
