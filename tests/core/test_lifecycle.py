"""Minors, device lifecycle, managed release, files, hot-unplug."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from accelcore import CORE, NoDevice, NoSpace, Process, Subsystem, VirtualClock
from accelcore.minors import MinorAllocator
from accelcore.testing import VAccelDriver, make_driver
from accelcore.testing.vaccel import VACCEL_UAPI as V

from .conftest import Rig


def test_minors_lowest_free_first_and_enospc() -> None:
    m: MinorAllocator[str] = MinorAllocator(limit=3)
    assert [m.reserve() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(NoSpace):
        m.reserve()
    m.release(1)
    assert m.reserve() == 1


def test_minor_reserved_is_not_visible_until_published() -> None:
    m: MinorAllocator[str] = MinorAllocator()
    n = m.reserve()
    with pytest.raises(NoDevice):
        m.lookup(n)
    m.publish(n, "dev")
    assert m.lookup(n) == "dev"
    m.hide(n)
    with pytest.raises(NoDevice):
        m.lookup(n)


def test_minor_allocator_is_thread_safe() -> None:
    m: MinorAllocator[str] = MinorAllocator()
    got: list[int] = []
    threads = [
        threading.Thread(target=lambda: got.extend(m.reserve() for _ in range(32)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(256))


def test_256_devices_then_enospc() -> None:
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    for _ in range(256):
        sub.create_device(drv)
    with pytest.raises(NoSpace):
        sub.create_device(drv)
    assert sub.minors.in_use == 256


def test_managed_actions_run_in_reverse_at_final_release() -> None:
    order: list[str] = []

    def probe(dev: object) -> None:
        dev.add_action(lambda: order.append("first"), "first")  # type: ignore[attr-defined]
        dev.add_action(lambda: order.append("second"), "second")  # type: ignore[attr-defined]

    sub = Subsystem(VirtualClock())
    drv = make_driver("managed", probe=probe)
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    p = Process(sub)
    fd = p.open(dev.node_path)
    sub.remove_device(dev)
    assert order == []  # an open file keeps the device alive
    p.close(fd)
    assert order == ["second", "first"]
    assert sub.minors.in_use == 0


def test_failed_probe_leaves_nothing_behind() -> None:
    released: list[bool] = []

    def probe(dev: object) -> None:
        dev.add_action(lambda: released.append(True))  # type: ignore[attr-defined]
        raise OSError(errno.EIO, "firmware did not load")

    sub = Subsystem(VirtualClock())
    drv = make_driver("failing", probe=probe)
    sub.register_driver(drv)
    with pytest.raises(OSError) as e:
        sub.create_device(drv)
    assert e.value.errno == errno.EIO
    assert released == [True]
    assert sub.accounting()["minors"] == 0 and "/dev/accel/accel0" not in sub.nodes
    assert sub.sysfs.nodes("accel") == []


def test_probe_oops_is_eio_and_cleaned() -> None:
    sub = Subsystem(VirtualClock())

    def probe(dev: object) -> None:
        raise KeyError("missing firmware table")

    drv = make_driver("buggy", probe=probe)
    sub.register_driver(drv)
    with pytest.raises(OSError) as e:
        sub.create_device(drv)
    assert e.value.errno == errno.EIO and sub.minors.in_use == 0


def test_registration_refuses_botched_uapi() -> None:
    drv = make_driver(
        "botched",
        header="""
        /* cffi:begin */
        struct b_args { __u32 flags; __u64 addr; };
        /* cffi:end */
        #define DRM_IOCTL_B_GO DRM_IOW(DRM_COMMAND_BASE, struct b_args)
    """,
        ioctls={"DRM_IOCTL_B_GO": lambda call: None},
    )
    with pytest.raises(OSError) as e:
        Subsystem(VirtualClock()).register_driver(drv)
    assert e.value.errno == errno.EINVAL
    assert "struct b_args.addr" in str(e.value)


def test_driver_ioctl_outside_driver_range_is_refused() -> None:
    drv = make_driver(
        "range",
        header="""
        /* cffi:begin */
        struct r_args { __u64 v; };
        /* cffi:end */
        #define DRM_IOCTL_R_X DRM_IOW(0x20, struct r_args)
    """,
        ioctls={"DRM_IOCTL_R_X": lambda call: None},
    )
    with pytest.raises(OSError, match="outside the driver range"):
        Subsystem(VirtualClock()).register_driver(drv)


def test_open_after_unplug_is_enodev_and_files_survive(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    _h, off = rig.create_bo(p, fd)
    m = p.mmap(fd, 4096, off)
    m.view[:4] = b"data"
    rig.sub.remove_device(rig.dev)
    rig.expect.update(minors=-1, devices=-1)
    with pytest.raises(OSError) as e:
        p.open("/dev/accel/accel0")
    assert e.value.errno == errno.ENOENT  # the node is gone from /dev
    assert m.zapped and bytes(m.view[:4]) == b"\0\0\0\0"  # no SIGBUS, undefined contents
    p.munmap(m)
    p.close(fd)
    assert rig.sub.minors.in_use == 1


def test_pending_work_aborted_with_enodev_on_unplug(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    s = V.new("struct vaccel_submit", handle=h, fill=1, delay_ns=10**9)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    fence = rig.dev.files[0].context.jobs[s.seqno]
    rig.sub.remove_device(rig.dev)
    rig.expect.update(minors=-1, devices=-1)
    assert fence.signalled and fence.error == -errno.ENODEV


def test_dup_and_fork_share_the_file_description(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    fd2 = p.dup(fd)
    child = p.fork()
    rig.create_bo(p, fd)
    file = p.task.files.get(fd)
    assert file is p.task.files.get(fd2) is child.task.files.get(fd)
    p.close(fd)
    p.close(fd2)
    assert file.is_owner  # the child still holds it
    child.exit()
    assert not file.is_owner and rig.dev.ownership.owner is None


def test_close_of_unknown_fd_is_ebadf(rig: Rig) -> None:
    p = rig.process()
    with pytest.raises(OSError) as e:
        p.close(99)
    assert e.value.errno == errno.EBADF


def test_node_mode_refuses_other_users() -> None:
    class Private(VAccelDriver):
        name = "private"
        node_mode = 0o660
        node_gid = 44

    sub = Subsystem(VirtualClock())
    drv = Private()
    sub.register_driver(drv)
    sub.create_device(drv)
    with pytest.raises(OSError) as e:
        Process(sub, uid=1000, gid=1000).open("/dev/accel/accel0")
    assert e.value.errno == errno.EACCES
    Process(sub, uid=1000, gid=1000, groups=(44,)).open("/dev/accel/accel0")


def test_o_excl_is_ebusy(rig: Rig) -> None:
    with pytest.raises(OSError) as e:
        rig.process().open("/dev/accel/accel0", os.O_RDWR | os.O_EXCL)
    assert e.value.errno == errno.EBUSY


def test_events_read_and_poll(rig: Rig) -> None:
    from accelcore.vfs import POLLIN

    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    file = rig.dev.files[0]
    assert not p.poll(fd) & POLLIN
    file.send_event(0x80000001, b"payload!")
    assert p.poll(fd) & POLLIN
    data = p.read(fd, 4096)
    assert data[:8] == (0x80000001).to_bytes(4, "little") + (16).to_bytes(4, "little")
    with pytest.raises(OSError) as e:
        p.read(fd, 4096, nonblock=True)
    assert e.value.errno == errno.EAGAIN


def test_event_space_is_capped(rig: Rig) -> None:
    p = rig.process()
    p.open("/dev/accel/accel0")
    file = rig.dev.files[0]
    with pytest.raises(OSError) as e:
        for _ in range(1000):
            file.send_event(1, b"x" * 64)
    assert e.value.errno == errno.ENOMEM


def test_reset_aborts_work_and_counts(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    s = V.new("struct vaccel_submit", handle=h, fill=1, delay_ns=10**9)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    events: list[str] = []
    rig.sub.sysfs.subscribe(lambda ev: events.append(ev.env.get("RESET", "")))
    rig.dev.reset("test")
    assert rig.dev.reset_count == 1 and "1" in events
    info = CORE.new("struct accel_info", op=CORE.ACCEL_INFO_STATUS)
    st = p.alloc(64)
    info.return_pointer, info.return_size = st.addr, 64
    p.ioctl(fd, CORE.ACCEL_IOCTL_INFO, info)
    status = CORE.from_bytes("struct accel_info_status", bytes(st.view[:32]))
    assert (status.status, status.reset_count) == (0, 1)
    rig.create_bo(p, fd)  # the owner gets a fresh context


def test_blocking_read_interrupted_is_eintr(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    rig.clock.call_later(1000, lambda: None)  # something scheduled, so the wait can end
    p.task.inject_interrupts(0)
    with pytest.raises(OSError) as e:
        p.read(fd, 4096)
    assert e.value.errno == errno.EINTR


def test_owner_exit_revokes_job_and_frees_buffer_at_once(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    h, _ = rig.create_bo(p, fd)
    s = V.new("struct vaccel_submit", handle=h, fill=1, delay_ns=10**12)
    p.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, s)
    p.exit()
    assert rig.sub.accounting()["buffers"] == 0 and rig.clock.pending() == 0


def test_process_exit_unmaps_its_mappings(rig: Rig) -> None:
    p = rig.process()
    fd = p.open("/dev/accel/accel0")
    _h, off = rig.create_bo(p, fd)
    m = p.mmap(fd, 4096, off)
    p.exit()
    assert not m.mapped and rig.sub.accounting()["files"] == 0


def test_raising_sysfs_show_is_an_oops_with_eio() -> None:
    from accelcore import Attribute, AttributeGroup

    class Hot(VAccelDriver):
        name = "hot"

        def attribute_groups(self, dev: object) -> list[AttributeGroup]:
            return [AttributeGroup((Attribute.ro("temperature", lambda: str(1 // 0)),))]

    sub = Subsystem(VirtualClock())
    drv = Hot()
    sub.register_driver(drv)
    dev = sub.create_device(drv)
    with pytest.raises(OSError) as e:
        sub.sysfs.read("/sys/class/accel/accel0/temperature")
    assert e.value.errno == errno.EIO and "ZeroDivisionError" in dev.oopses[0].exception


def test_shared_memory_traces_a_view_to_its_memfd_and_offset() -> None:
    from accelcore import SharedMemory

    mem = SharedMemory(3 * 4096, "traced")
    view = mem.view(4096, 4096).toreadonly()
    found = SharedMemory.backing(view)
    assert found is not None and found[0] is mem and found[1] == 4096
    assert SharedMemory.backing(memoryview(bytearray(16))) is None
    mem.close()


def test_release_action_runs_now_and_is_forgotten() -> None:
    ran: list[str] = []
    sub = Subsystem(VirtualClock())
    drv = VAccelDriver()
    sub.register_driver(drv)
    dev = sub.create_device(drv)

    def early() -> None:
        ran.append("early")

    dev.add_action(early, "early")
    dev.add_action(lambda: ran.append("late"), "late")
    assert dev.managed_actions[:2] == ["late", "early"]
    dev.release_action(early)
    assert ran == ["early"] and "early" not in dev.managed_actions
    with pytest.raises(OSError) as e:
        dev.release_action(early)
    assert e.value.errno == errno.EINVAL
