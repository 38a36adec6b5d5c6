"""The workload programs of ``accelctl demo``, run as real processes.

``python -m accelcore.demo.workload MODE --runtime-dir DIR [--device NODE]``
connects to the devfs server at ``DIR`` (:func:`accelcore.server.connect`) and
drives a habana_like device with :class:`~drivers.habana_like.userlib.HlkClient`.
It reports to the demo in lines ``WORD {json}`` on stdout:

* ``gemm`` — become the compute owner, copy A and B host→DRAM (LIN_DMA), say
  ``OWNER``; with ``--pause`` wait for a line on stdin (the demo looks at the
  device meanwhile); then KERNEL GEMM, copy C DRAM→host, compare with numpy and
  say ``RESULT``.
* ``hang`` — submit a CS whose FENCE waits for a sync object nobody signals and
  a second CS queued behind it on the same engine, say ``SUBMITTED``, and wait
  for both: the driver's CS timeout hard-resets the device, so the second one's
  waiter sees ``ABORTED`` (``EIO``) and the first ``TIMEDOUT``; say ``WAITED``.
* ``share`` — two processes share a dma-buf: this one (the exporter) copies a and
  b into habana DRAM (``--device``) and exports it (``EXPORT_DMABUF_FD``); it
  forks an importer and passes it the descriptor over a Unix socket
  (``SCM_RIGHTS``). The importer acquires a VM on the kfd GPU (``--gpu
  ID:NODE``: ``ACQUIRE_VM`` takes the GPU's accel fd), imports the dma-buf by fd
  (``IMPORT_DMABUF``), runs VECTOR_ADD c = a + b on it and tells the exporter,
  which says ``SHARED`` (with the importer's report) and waits for a line on
  stdin (the demo looks at bufinfo meanwhile), copies c back, and says
  ``RESULT``.

Exit status 0 when the program ran to its end (the demo checks the results).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..server import connect, recv_fds, send_fds
from ..server.client import ClientProcess

__all__ = ["main", "run_gemm", "run_hang", "run_share"]

HOST_BYTES = 1 << 18
B_OFF, C_OFF = 0x10000, 0x20000
#: The shared buffer (a, b and c of VECTOR_ADD fill three quarters of it), and
#: where the kfd GPU maps it.
SHARE_BYTES = 64 * 1024
GPU_VA = 0x70_0000_0000


def say(word: str, data: dict[str, Any]) -> None:
    """One report line for the demo."""
    print(word, json.dumps(data), flush=True)


def _client(proc: ClientProcess, device: str) -> Any:
    from drivers.habana_like.userlib import HlkClient

    # ClientProcess has accelcore.Process's API (HlkClient is typed for the latter).
    proc_any: Any = proc
    return HlkClient(proc_any, proc.open(device))


def run_gemm(proc: ClientProcess, device: str, size: int, pause: bool) -> None:
    """GEMM C = A @ B on the device, checked against numpy (see the module doc)."""
    from drivers.habana_like import HLK
    from drivers.habana_like.packets import encode_kernel, encode_lin_dma

    m = n = k = size
    hl = _client(proc, device)
    rng = np.random.default_rng(2024)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    host = proc.alloc(HOST_BYTES)
    host.view[: a.nbytes] = a.tobytes()
    host.view[B_OFF : B_OFF + b.nbytes] = b.tobytes()
    hva = hl.map_host(host.addr, HOST_BYTES)
    dva = hl.map_device(hl.mem_alloc(HOST_BYTES))  # the first compute ioctl: owner
    copy_in = hl.cb_with(
        encode_lin_dma(hva, dva, a.nbytes, HLK.HLK_DMA_HOST_TO_DRAM)
        + encode_lin_dma(hva + B_OFF, dva + B_OFF, b.nbytes, HLK.HLK_DMA_HOST_TO_DRAM)
    )
    s1 = hl.submit([(copy_in, HLK.HLK_QUEUE_ID_DMA_0)])
    st1 = hl.wait(s1)
    usage = hl.info(HLK.HLK_INFO_DRAM_USAGE, "struct hlk_info_dram_usage")
    say(
        "OWNER",
        {"pid": proc.pid, "copy_in": st1, "ctx_dram": int(usage.ctx_dram_mem), "m": m},
    )
    if pause:
        sys.stdin.readline()
    gemm = hl.cb_with(
        encode_kernel(HLK.HLK_KERNEL_GEMM_F32, m=m, n=n, k=k, a=dva, b=dva + B_OFF, c=dva + C_OFF)
    )
    s2 = hl.submit([(gemm, HLK.HLK_QUEUE_ID_COMPUTE_0)])
    st2 = hl.wait(s2)
    copy_out = hl.cb_with(
        encode_lin_dma(dva + C_OFF, hva + C_OFF, m * n * 4, HLK.HLK_DMA_DRAM_TO_HOST)
    )
    s3 = hl.submit([(copy_out, HLK.HLK_QUEUE_ID_DMA_1)])
    st3 = hl.wait(s3)
    c = np.frombuffer(bytes(host.view[C_OFF : C_OFF + m * n * 4]), np.float32).reshape(m, n)
    err = float(np.max(np.abs(c - a @ b)))
    say(
        "RESULT",
        {
            "seqs": [s1, s2, s3],
            "statuses": [st1, st2, st3],
            "max_abs_err": err,
            "ok": bool(np.allclose(c, a @ b, rtol=1e-4, atol=1e-4)),
        },
    )


def _wait_outcome(hl: Any, seq: int) -> dict[str, Any]:
    from drivers.habana_like import HLK

    a = HLK.new("union hlk_wait_cs_args")
    a.input.seq, a.input.timeout_us = seq, 20_000_000
    try:
        hl.proc.ioctl(hl.fd, HLK.DRM_IOCTL_HLK_WAIT_CS, a)
        code = "OK"
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    names = {
        HLK.HLK_WAIT_CS_STATUS_COMPLETED: "COMPLETED",
        HLK.HLK_WAIT_CS_STATUS_BUSY: "BUSY",
        HLK.HLK_WAIT_CS_STATUS_TIMEDOUT: "TIMEDOUT",
        HLK.HLK_WAIT_CS_STATUS_ABORTED: "ABORTED",
    }
    return {"seq": seq, "errno": code, "status": names.get(int(a.output.status), "?")}


def run_hang(proc: ClientProcess, device: str) -> None:
    """A CS that can never finish, and one queued behind it (see the module doc)."""
    from drivers.habana_like import HLK
    from drivers.habana_like.packets import encode_fence, encode_lin_dma

    hl = _client(proc, device)
    dva = hl.map_device(hl.mem_alloc(4096))
    stuck = hl.cb_with(encode_fence(sob=0, target=1))  # SOB 0 is never incremented
    behind = hl.cb_with(encode_lin_dma(0x77, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    s1 = hl.submit([(stuck, HLK.HLK_QUEUE_ID_DMA_0)])
    s2 = hl.submit([(behind, HLK.HLK_QUEUE_ID_DMA_0)])
    say("SUBMITTED", {"pid": proc.pid, "hung": s1, "queued": s2})
    queued = _wait_outcome(hl, s2)
    hung = _wait_outcome(hl, s1)
    say("WAITED", {"queued": queued, "hung": hung})


def _import_and_add(proc: ClientProcess, sock: socket.socket, gid: int, node: str) -> int:
    """The importer (a forked process): VECTOR_ADD on the received dma-buf."""
    from drivers.kfd_like import KFD_UAPI as U
    from drivers.kfd_like.thunk import Kfd

    _, (fd,) = recv_fds(sock, 1)
    kfd = Kfd(None, proc, {gid: node})
    kfd.acquire_all()  # ACQUIRE_VM: the GPU's accel fd goes to the server with the call
    handle = kfd.ioctl(
        "DRM_IOCTL_KFD_IMPORT_DMABUF", va_addr=GPU_VA, gpu_id=gid, dmabuf_fd=fd
    ).handle
    proc.close(fd)  # the import holds the buffer now
    kfd.map(kfd.map_args(handle, [gid]))
    n = SHARE_BYTES // 16
    stride = n * 4
    queue, event = kfd.create_queue(gid), kfd.create_event()
    queue.submit(
        U.KFD_LIKE_KERNEL_VECTOR_ADD, [GPU_VA, GPU_VA + stride, GPU_VA + 2 * stride, n], event=event
    )
    waited = kfd.wait([event], timeout_ms=10_000)
    complete = waited == U.KFD_IOC_WAIT_RESULT_COMPLETE
    # Reported through the exporter, so that the demo reads one line at a time.
    report = {"pid": os.getpid(), "waited": waited, "complete": complete, "n": n}
    sock.sendall(json.dumps(report).encode())
    sock.recv(1)  # the exporter has read c back
    kfd.map(kfd.map_args(handle, [gid], unmap=True), unmap=True)
    kfd.ioctl("DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU", handle=handle)
    kfd.close()
    return 0 if complete else 1


def run_share(proc: ClientProcess, device: str, gpu: str) -> None:
    """A dma-buf of habana DRAM used by a kfd GPU in another process (see the module doc)."""
    from drivers.habana_like import HLK
    from drivers.habana_like.packets import encode_lin_dma

    gid_text, _, node = gpu.partition(":")
    n = SHARE_BYTES // 16  # float32 elements per operand
    a = np.arange(n, dtype=np.float32)
    b = np.full(n, 0.5, dtype=np.float32)
    hl = _client(proc, device)
    host = proc.alloc(SHARE_BYTES)
    host.view[: 2 * a.nbytes] = a.tobytes() + b.tobytes()
    hva = hl.map_host(host.addr, SHARE_BYTES)
    dva = hl.map_device(hl.mem_alloc(SHARE_BYTES))
    cb = hl.cb_with(encode_lin_dma(hva, dva, 2 * a.nbytes, HLK.HLK_DMA_HOST_TO_DRAM))
    hl.wait(hl.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)]))
    fd = hl.export(dva, SHARE_BYTES)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the importer: a new session of the server (ClientProcess reconnects)
        ours.close()
        code = 1
        try:
            code = _import_and_add(proc, theirs, int(gid_text), node)
        finally:
            sys.stdout.flush()
            os._exit(code)
    theirs.close()
    send_fds(ours, [fd])
    proc.close(fd)  # only the importer holds it now
    computed = json.loads(ours.recv(4096) or b"{}")
    say("SHARED", {"exporter": os.getpid(), "importer": pid, "computed": computed})
    sys.stdin.readline()
    stride = a.nbytes
    out = hl.cb_with(
        encode_lin_dma(dva + 2 * stride, hva + 2 * stride, stride, HLK.HLK_DMA_DRAM_TO_HOST)
    )
    hl.wait(hl.submit([(out, HLK.HLK_QUEUE_ID_DMA_1)]))
    c = np.frombuffer(bytes(host.view[2 * stride : 3 * stride]), np.float32)
    ours.sendall(b"d")
    _, status = os.waitpid(pid, 0)
    ours.close()
    hl.unmap(hva)
    proc.free(host)
    say(
        "RESULT",
        {
            "importer_exit": os.waitstatus_to_exitcode(status),
            "ok": bool(np.array_equal(c, a + b)),
        },
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one workload; 0 when it ran to the end."""
    ap = argparse.ArgumentParser(prog="python -m accelcore.demo.workload")
    ap.add_argument("mode", choices=["gemm", "hang", "share"])
    ap.add_argument("--runtime-dir", required=True)
    ap.add_argument("--device", default="/dev/accel/accel0")
    ap.add_argument("--size", type=int, default=64, help="GEMM dimension (m = n = k)")
    ap.add_argument("--pause", action="store_true", help="gemm: wait for stdin after OWNER")
    ap.add_argument("--gpu", default="", help="share: the kfd GPU, as GPU_ID:ACCEL_NODE")
    opts = ap.parse_args(argv)
    proc = connect(opts.runtime_dir)
    try:
        if opts.mode == "gemm":
            run_gemm(proc, opts.device, opts.size, opts.pause)
        elif opts.mode == "share":
            run_share(proc, opts.device, opts.gpu)
        else:
            run_hang(proc, opts.device)
    finally:
        proc.exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
