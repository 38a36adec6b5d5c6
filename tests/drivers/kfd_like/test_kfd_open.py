"""open("/dev/kfd") sleeps while KFD is locked, interruptibly: EINTR (or a restart
under SA_RESTART), as an ioctl's wait; the thunk retries on EINTR as libhsakmt
does. And the driver cannot be unloaded while /dev/kfd is open."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from accelcore import Process
from accelcore.machine import Machine
from drivers.kfd_like.thunk import Kfd, driver_of, make_machine


@pytest.fixture
def m() -> Machine:
    return make_machine(5_000)


def test_signal_interrupts_an_open_waiting_for_kfd_with_eintr(
    m: Machine, leak_check: Callable[[Machine], Callable[[], None]]
) -> None:
    check = leak_check(m)
    drv = driver_of(m)
    drv.lock()
    p = Process(m.subsystem)
    m.clock.call_later(10, p.task.post_signal)
    with pytest.raises(OSError) as e:
        p.open("/dev/kfd")
    assert e.value.errno == errno.EINTR
    assert drv.processes == {}  # nothing was created before the wait
    assert not p.task.signal_pending  # delivered on the way out
    drv.unlock()
    p.exit()
    check()


def test_open_restarts_after_a_signal_under_sa_restart(m: Machine) -> None:
    drv = driver_of(m)
    drv.lock()
    p = Process(m.subsystem, restart=True)
    m.clock.call_later(10, p.task.post_signal)
    m.clock.call_later(100, drv.unlock)
    p.task.inject_interrupts()  # start counting wait points
    fd = p.open("/dev/kfd")
    assert fd >= 0 and m.clock.now() == 100
    assert p.task.wait_points_seen == 2  # interrupted once, waited again
    assert list(drv.processes) == [p.pid]
    p.exit()
    assert drv.processes == {}


def test_thunk_retries_an_interrupted_open(m: Machine) -> None:
    drv = driver_of(m)
    drv.lock()
    p = Process(m.subsystem)
    m.clock.call_later(10, p.task.post_signal)
    m.clock.call_later(20, p.task.post_signal)
    m.clock.call_later(100, drv.unlock)
    k = Kfd(m, p)
    assert k.fd >= 0 and m.clock.now() == 100
    p.exit()


def test_unlock_without_lock_is_einval(m: Machine) -> None:
    with pytest.raises(OSError) as e:
        driver_of(m).unlock()
    assert e.value.errno == errno.EINVAL


def test_driver_with_kfd_open_cannot_be_removed(m: Machine) -> None:
    p = Process(m.subsystem)
    fd = p.open("/dev/kfd")
    with pytest.raises(OSError) as e:
        m.remove_driver("kfd_like")
    assert e.value.errno == errno.EBUSY and "/dev/kfd" in str(e.value)
    assert "/dev/kfd" in m.subsystem.nodes
    p.close(fd)
    m.remove_driver("kfd_like")
    assert "/dev/kfd" not in m.subsystem.nodes
    p.exit()
