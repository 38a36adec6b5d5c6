"""Managed resources (drmm_*, xa_alloc): ID tables counted in accounting and
checked when their device, file or context goes."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from accelcore import AccelFile, Subsystem, VirtualClock
from accelcore.device import AccelDevice
from accelcore.resources import IdTable, context_scope, device_scope, file_scope
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver

from .conftest import Rig


def _table(rig: Rig, **kw: Any) -> IdTable[Any]:
    return device_scope(rig.dev).ids("things", **kw)


def test_ids_start_at_one_and_reuse_the_lowest_free(rig: Rig) -> None:
    t = _table(rig)
    a, b, c = (t.alloc(x) for x in "abc")
    assert (a, b, c) == (1, 2, 3)
    assert t.erase(2) == "b"
    assert t.alloc("d") == 2
    assert t.load(2) == "d" and t.load(9) is None
    t.clear()


def test_cyclic_ids_do_not_reuse_until_they_wrap(rig: Rig) -> None:
    t = _table(rig, cyclic=True, last=3)
    assert [t.alloc(x) for x in "ab"] == [1, 2]
    t.erase(1)
    assert t.alloc("c") == 3
    assert t.alloc("d") == 1  # wrapped
    t.clear()


def test_full_table_is_ebusy_naming_the_table(rig: Rig) -> None:
    t = _table(rig, first=5, last=6)
    t.alloc("a")
    t.alloc("b")
    with pytest.raises(OSError) as exc:
        t.alloc("c")
    assert exc.value.errno == errno.EBUSY
    assert "things" in str(exc.value)
    t.clear()


def test_two_tables_of_one_name_in_a_scope_are_refused(rig: Rig) -> None:
    _table(rig)
    with pytest.raises(OSError) as exc:
        _table(rig)
    assert exc.value.errno == errno.EINVAL


def test_live_entries_appear_in_accounting_without_driver_code(rig: Rig) -> None:
    before = rig.sub.accounting()
    t = _table(rig)
    t.alloc("x")
    t.alloc("y")
    after = rig.sub.accounting()
    assert after["managed"] == before["managed"] + 2
    assert after["managed.vaccel.device.things"] == 2
    t.clear()
    assert rig.sub.accounting()["managed"] == before["managed"]


class _PerFile(VAccelDriver):
    """Keeps one managed "session" per open file; frees it at postclose unless told not to."""

    name = "perfile"
    forget = False

    def open(self, file: AccelFile) -> None:
        file.driver_priv = file_scope(file).ids("sessions")
        file.driver_priv.alloc(object())

    def postclose(self, file: AccelFile) -> None:
        if not self.forget:
            file.driver_priv.clear()


class _PerContext(VAccelDriver):
    name = "perctx"
    forget = False

    def context_create(self, file: AccelFile) -> Any:
        ctx = super().context_create(file)
        ctx.queues = context_scope(file).ids("queues")
        ctx.queues.alloc(object())
        return ctx

    def context_destroy(self, file: AccelFile, context: Any) -> None:
        super().context_destroy(file, context)
        if not self.forget:
            context.queues.clear()


def _machine(driver: VAccelDriver) -> tuple[Subsystem, AccelDevice]:
    sub = Subsystem(VirtualClock())
    sub.register_driver(driver)
    return sub, sub.create_device(driver)


def _own(proc: Any, fd: int) -> None:
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, V.new("struct vaccel_create_bo", size=4096))


def test_per_file_resource_freed_at_postclose_leaves_no_trace() -> None:
    from accelcore import Process

    sub, dev = _machine(_PerFile())
    base = sub.accounting()
    proc = Process(sub)
    fd = proc.open(dev.node_path)
    assert sub.accounting()["managed.perfile.file.sessions"] == 1
    proc.close(fd)
    assert sub.accounting() == base and sub.oopses == []


def test_per_file_resource_leaked_at_close_is_an_oops_naming_it() -> None:
    from accelcore import Process

    drv = _PerFile()
    drv.forget = True
    sub, dev = _machine(drv)
    proc = Process(sub)
    proc.close(proc.open(dev.node_path))
    (oops,) = sub.oopses
    assert "1 live sessions" in oops.exception and "postclose" in oops.exception
    assert sub.accounting()["managed.perfile.file.sessions"] == 1  # still counted


def test_per_context_resource_leaked_is_caught_at_context_teardown() -> None:
    from accelcore import Process

    drv = _PerContext()
    drv.forget = True
    sub, dev = _machine(drv)
    proc = Process(sub)
    fd = proc.open(dev.node_path)
    _own(proc, fd)
    assert sub.oopses == []
    proc.close(fd)
    (oops,) = sub.oopses
    assert oops.exception.startswith("ResourceLeak: perctx context accel0 context of client")
    assert "1 live queues (ids 1)" in oops.exception and "context_destroy" in oops.exception
    assert dev.tainted


def test_per_context_resource_freed_in_context_destroy_passes_a_reset() -> None:
    from accelcore import Process

    sub, dev = _machine(_PerContext())
    base = sub.accounting()
    proc = Process(sub)
    fd = proc.open(dev.node_path)
    _own(proc, fd)
    dev.reset("test")  # tears the context down; a fresh scope comes with the next one
    _own(proc, fd)
    proc.exit()  # also frees its ioctl scratch memory
    assert sub.oopses == [] and sub.accounting() == base


def test_device_scope_actions_run_and_are_checked_at_final_release() -> None:
    sub, dev = _machine(VAccelDriver())
    scope = device_scope(dev)
    ran: list[str] = []
    table = scope.ids("rings")
    table.alloc("ring0")
    scope.add_action(lambda: ran.append("first"))
    scope.add_action(lambda: (ran.append("second"), table.clear()))
    sub.remove_device(dev)
    assert ran == ["second", "first"] and sub.oopses == []


def test_habana_like_context_tables_are_managed() -> None:
    from accelcore import Process
    from accelcore.machine import Machine
    from drivers.habana_like import HabanaLikeDriver
    from drivers.habana_like.userlib import HlkClient

    m = Machine(VirtualClock())
    m.bus.populate([{"model": "habana_like", "count": 1}])
    m.add_driver(HabanaLikeDriver())
    base = m.subsystem.accounting()
    proc = Process(m.subsystem)
    client = HlkClient(proc, proc.open("/dev/accel/accel0"))
    client.cb_create(4096)
    client.mem_alloc(1 << 21)
    counts = m.subsystem.accounting()
    assert counts["managed.habana_like.context.cbs"] == 1
    assert counts["managed.habana_like.context.dram_allocs"] == 1
    proc.exit()
    assert m.subsystem.accounting() == base and m.subsystem.oopses == []
