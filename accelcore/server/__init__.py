"""The devfs server and its client: the accel subsystem across real processes.

A :class:`Server` runs a simulated :class:`~accelcore.machine.Machine` and serves
each of its device nodes as a Unix socket under a runtime directory
(``$ACCEL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/accelcore``): opening
``<runtime>/dev/accel/accel0`` opens ``/dev/accel/accel0``. The client
(:func:`~accelcore.server.client.connect`) has the API of
:class:`accelcore.Process`, with real descriptors: ``dup``, ``fork`` and fd
passing share open files as the kernel does, and a killed process's files are
released. Memory is shared, not copied: user memory is a memfd arena the server
maps, and ``mmap`` maps the server's own memfds.

Modules: :mod:`~accelcore.server.protocol` (the sans-I/O wire codec),
:mod:`~accelcore.server.wire` (records and descriptors on sockets),
:mod:`~accelcore.server.server` and :mod:`~accelcore.server.session` (the
server), :mod:`~accelcore.server.client`, :mod:`~accelcore.server.daemon`
(``python -m accelcore.server``, :func:`spawn_server`, :func:`stop_server`,
:func:`server_status`).

Example — a workload process (start a server first:
``python -m accelcore.server --config vaccel.toml --runtime-dir /tmp/acc``)::

    from accelcore.server.client import connect
    from accelcore.testing.vaccel import VACCEL_UAPI as V

    proc = connect("/tmp/acc")
    fd = proc.open("/dev/accel/accel0")
    bo = V.new("struct vaccel_create_bo", size=4096)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)        # becomes the owner
    job = V.new("struct vaccel_submit", handle=bo.handle, fill=0xAB, delay_ns=10**6)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_SUBMIT, job)
    wait = V.new("struct vaccel_wait", seqno=job.seqno, timeout_ns=-1)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_WAIT, wait)           # sleeps in the server
    m = proc.mmap(fd, 4096, bo.mmap_offset)                 # the server's pages
    assert bytes(m.view[:4]) == b"\\xab" * 4
    proc.exit()
"""

from __future__ import annotations

from .client import ClientMapping, ClientProcess, connect, recv_fds, send_fds
from .daemon import (
    ServerUnavailable,
    control_request,
    server_status,
    spawn_server,
    stop_server,
    uevents,
)
from .protocol import PROTOCOL_VERSION, ProtocolError
from .server import Server, default_runtime_dir

__all__ = [
    "PROTOCOL_VERSION",
    "ClientMapping",
    "ClientProcess",
    "ProtocolError",
    "Server",
    "ServerUnavailable",
    "connect",
    "control_request",
    "default_runtime_dir",
    "recv_fds",
    "send_fds",
    "server_status",
    "spawn_server",
    "stop_server",
    "uevents",
]
