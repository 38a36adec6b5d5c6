"""Implicit sync across two drivers and two real processes: a writer's job on
one device, a reader's job on another device of another driver, and no fence
passed between them — only the dma-buf, whose reservation carries the fence."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from accelcore import RealClock
from accelcore.machine import Machine
from accelcore.server import Server, connect, recv_fds
from accelcore.testing import VAccelDriver
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE
from accelcore.vfs import POLLIN

from .conftest import Child, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(60)]

#: How long the writer's job runs (device time = real time here).
WRITE_NS = 3_000_000_000

WRITER_SCRIPT = """
sock = socket.socket(fileno=SOCKFD)
proc = connect(RT)
fd = proc.open("/dev/accel/accel0")
bo = V.new("struct vaccel_create_bo", size=4096)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
ph = CORE.new("struct drm_prime_handle", handle=bo.handle, flags=CORE.DRM_CLOEXEC | CORE.DRM_RDWR)
proc.ioctl(fd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
job = V.new("struct vaccel_submit", handle=bo.handle, fill=0x5A, delay_ns=WRITE_NS)
proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
send_fds(sock, [ph.fd])
say("SENT")
sys.stdin.readline()
""".replace("WRITE_NS", str(WRITE_NS))


class OtherAccel(VAccelDriver):
    """A second driver, so the buffer crosses drivers as well as processes."""

    name = "otheraccel"


def test_reader_on_another_driver_and_process_waits_for_the_writer(
    rt: Path, children: Callable[..., Child]
) -> None:
    machine = Machine(RealClock())
    first, second = VAccelDriver(), OtherAccel()
    machine.add_driver(first)
    machine.add_driver(second)
    machine.subsystem.create_device(first)  # accel0: the writer's
    machine.subsystem.create_device(second)  # accel1: the reader's
    with Server(machine, rt) as server:
        base = machine.subsystem.accounting()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with mine:
            writer = children(
                WRITER_SCRIPT.replace("SOCKFD", str(theirs.fileno())),
                server.runtime_dir,
                pass_fds=(theirs.fileno(),),
            )
            theirs.close()
            writer.expect("SENT")
            _, (buf_fd,) = recv_fds(mine)
        reader = connect(server.runtime_dir)
        rfd = reader.open("/dev/accel/accel1")
        src = CORE.new("struct drm_prime_handle", fd=buf_fd)
        reader.ioctl(rfd, CORE.DRM_IOCTL_PRIME_FD_TO_HANDLE, src)
        dst = V.new("struct vaccel_create_bo", size=4096)
        reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_CREATE_BO, dst)
        cp = V.new("struct vaccel_copy", src_handle=src.handle, dst_handle=dst.handle, delay_ns=1)
        reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_COPY, cp)
        assert reader.poll(buf_fd) & POLLIN == 0  # the writer's job is still running
        probe = V.new("struct vaccel_wait", seqno=cp.seqno, timeout_ns=0)
        with pytest.raises(OSError) as exc:
            reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_WAIT, probe)
        assert exc.value.errno == errno.ETIMEDOUT  # the copy waits for it
        done = V.new("struct vaccel_wait", seqno=cp.seqno, timeout_ns=-1)
        reader.ioctl(rfd, V.DRM_IOCTL_VACCEL_WAIT, done)
        assert done.status == V.VACCEL_WAIT_COMPLETED
        m = reader.mmap(rfd, 4096, dst.mmap_offset)
        assert bytes(m.view[:8]) == b"\x5a" * 8  # the writer's bytes, not zeros
        assert reader.poll(buf_fd) & POLLIN
        reader.munmap(m)
        writer.send("DONE")
        assert writer.finish() == 0
        reader.close(buf_fd)
        reader.exit()
        ok = wait_for(lambda: machine.subsystem.accounting() == base)
        after = machine.subsystem.accounting()
        assert ok, {k: (base[k], after[k]) for k in base if base[k] != after[k]}
    machine.shutdown()
