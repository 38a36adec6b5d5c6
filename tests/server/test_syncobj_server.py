"""Syncobjs through the devfs server: a job's out-syncobj waited on by the
client, and a syncobj fd that another process imports and waits on."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, send_fds
from accelcore.server.client import ClientProcess
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.uapi import CORE

from .conftest import Child, wait_for

pytestmark = [pytest.mark.subprocess, pytest.mark.timeout(60)]

FOREVER = (1 << 63) - 1


def _wait_args(client: ClientProcess, handle: int, timeout: int) -> object:
    arr = client.alloc(4)
    arr.view[:4] = struct.pack("<I", handle)
    return CORE.new(
        "struct drm_syncobj_wait", handles=arr.addr, count_handles=1, timeout_nsec=timeout
    )


def test_job_out_syncobj_is_waited_on_through_the_server(
    server: Server, machine: Machine, client: ClientProcess
) -> None:
    base = machine.subsystem.accounting()
    fd = client.open("/dev/accel/accel0")
    s = CORE.new("struct drm_syncobj_create")
    client.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_CREATE, s)
    src = V.new("struct vaccel_create_bo", size=4096)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, src)
    bo = V.new("struct vaccel_create_bo", size=4096)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    fill = V.new("struct vaccel_submit", handle=src.handle, fill=9, delay_ns=1000)
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, fill)
    job = V.new(
        "struct vaccel_copy",
        src_handle=src.handle,
        dst_handle=bo.handle,
        delay_ns=50_000_000,
        out_syncobj=s.handle,
    )
    client.ioctl(fd, V.DRM_IOCTL_VACCEL_COPY, job)
    with pytest.raises(OSError) as exc:
        client.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_WAIT, _wait_args(client, s.handle, 0))
    assert exc.value.errno == errno.ETIME  # a poll while the job runs
    client.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_WAIT, _wait_args(client, s.handle, FOREVER))
    m = client.mmap(fd, 4096, bo.mmap_offset)
    assert bytes(m.view[:2]) == b"\x09\x09"
    client.munmap(m)
    client.close(fd)
    assert wait_for(lambda: machine.subsystem.accounting()["managed"] == base["managed"])


IMPORTER_SCRIPT = """
sock = socket.socket(fileno=SOCKFD)
proc = connect(RT)
fd = proc.open("/dev/accel/accel0")
_, (sfd,) = recv_fds(sock)
h = CORE.new("struct drm_syncobj_handle", fd=sfd)
proc.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE, h)
arr = proc.alloc(4)
arr.view[:4] = h.handle.to_bytes(4, "little")
w = CORE.new("struct drm_syncobj_wait", handles=arr.addr, count_handles=1,
             timeout_nsec=(1 << 63) - 1)
proc.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_WAIT, w)
say("SIGNALLED", w.first_signaled)
"""


def test_syncobj_fd_passed_to_another_process_is_the_same_syncobj(
    server: Server, client: ClientProcess, children: Callable[..., Child]
) -> None:
    fd = client.open("/dev/accel/accel0")
    s = CORE.new("struct drm_syncobj_create")
    client.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_CREATE, s)
    h = CORE.new("struct drm_syncobj_handle", handle=s.handle)
    client.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD, h)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine:
        child = children(
            IMPORTER_SCRIPT.replace("SOCKFD", str(theirs.fileno())),
            server.runtime_dir,
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        send_fds(mine, [h.fd])
        arr = client.alloc(4)
        arr.view[:4] = struct.pack("<I", s.handle)
        sig = CORE.new("struct drm_syncobj_array", handles=arr.addr, count_handles=1)
        client.ioctl(fd, CORE.DRM_IOCTL_SYNCOBJ_SIGNAL, sig)
        assert child.expect("SIGNALLED") == "SIGNALLED 0"
    assert child.finish() == 0
