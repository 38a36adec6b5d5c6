"""Unmodified C programs on the simulated devices, under ``accelctl run``.

Each program is compiled with the system C compiler in the test run and run
through the CLI against a server on a private runtime directory; what it prints
is checked against the engine (through accelcore's Python client where a value
is the engine's to choose), and the server's accounting returns to its baseline
once the program has exited.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from accelcore.machine import Machine
from accelcore.server import Server, connect
from accelcore.uapi import CORE

from .conftest import Run, compile_c, has_header, settled

needs_libdrm = pytest.mark.skipif(
    not has_header("xf86drm.h"), reason="libdrm headers not installed (libdrm-dev)"
)


@needs_libdrm
def test_libdrm_version_getcap_and_drmioctl(
    run_native: Callable[..., Run], server: Server, machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    res = run_native("drm_version.c", libs=("drm",))
    assert res.returncode == 0, res.stderr
    out = res.lines()
    # The same answers the Python client gets through the same server.
    proc = connect(server.runtime_dir)
    try:
        fd = proc.open("/dev/accel/accel0")
        cap = CORE.new("struct drm_get_cap", capability=CORE.DRM_CAP_PRIME)
        proc.ioctl(fd, CORE.DRM_IOCTL_GET_CAP, cap)
        proc.close(fd)
    finally:
        proc.exit()
    dev = machine.subsystem.devices[0]
    assert out["name"] == dev.driver.name == "habana_like"
    assert out["getcap_prime"] == "0"
    assert out["prime_value"] == str(cap.value)
    assert out["getcap_bad"] == "-1 errno=EINVAL"
    assert out["drmioctl_getcap"] == f"0 value={cap.value}"
    assert out["gem_close_unknown"].startswith("-1 errno=E")  # an errno from the engine
    assert out["devnull_ioctl"] == "-1 errno=ENOTTY"  # not ours: the kernel's answer
    assert out["close"] == "0"
    assert settled(machine, baseline) == baseline


def test_core_info_return_pointer_and_efault(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    res = run_native("core_info.c")
    assert res.returncode == 0, res.stderr
    out = res.lines()
    dev = next(d for d in machine.subsystem.devices if d.minor == 0)
    assert out["info"] == "0"
    assert int(out["actual_size"]) == CORE.ffi.sizeof("struct accel_info_device")
    assert out["driver"] == dev.driver.name
    assert out["minor"] == "0"
    assert out["short"] == f"0 driver4={dev.driver.name[:4]} after=0x5a"
    assert out["bad_return"] == "-1 errno=EFAULT"
    assert out["bad_arg"] == "-1 errno=EFAULT"
    assert out["readonly_return"] == "-1 errno=EFAULT"
    assert out["bad_fd"] == "-1 errno=EBADF"
    assert out["read_nonblock"] == "-1 errno=EAGAIN"
    assert settled(machine, baseline) == baseline


def test_habana_like_memory_userptr_cb_cs_wait(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    res = run_native("habana_flow.c")
    assert res.returncode == 0, res.stderr
    out = res.lines()
    for key in ("alloc", "map_device", "map_host", "cb_create", "cb_mmap", "cs", "wait"):
        assert out[key] == "0", (key, res.stdout)
    assert out["map_private"] == "-1 errno=EFAULT"  # private memory cannot be pinned
    assert out["seq_nonzero"] == "1"
    assert out["wait_status"] == "0"  # HLK_WAIT_CS_STATUS_COMPLETED
    assert out["host_filled"] == "1"  # the device's DMA reached this process's pages
    assert out["cb_munmap"] == out["unmap_host"] == out["host_munmap"] == "0"
    assert settled(machine, baseline) == baseline


def test_without_a_server_node_opens_fall_through(tmp_path: Path, shim: Path) -> None:
    """No socket for the node in the runtime directory: open() is libc's (ENOENT
    here), and nothing else in the program changes."""
    exe = compile_c("core_info.c", tmp_path / "core_info")
    env = dict(os.environ, ACCEL_RUNTIME_DIR=str(tmp_path), LD_PRELOAD=str(shim))
    res = subprocess.run([str(exe)], env=env, capture_output=True, text=True, check=False)
    assert res.returncode == 2  # its open() failed


def test_dmabufs_are_real_fds_across_dup_fork_and_poll(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    res = run_native("dmabuf_fork.c")
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = res.lines()
    assert out["export"] == "0"
    assert out["fd_is_open"] == out["fd_cloexec"] == "1"
    assert out["hlk_dmabuf_mmap_errno"] == "EOPNOTSUPP"  # device memory: no CPU mapping
    # UDMABUF_CREATE read the memfd's number from the program's argument (the
    # server took its own copy with pidfd_getfd) and returned a real dma-buf fd.
    assert out["udmabuf_create_is_fd"] == "1"
    assert out["udmabuf_mmap"] == "0"
    assert out["memfd_sees_write"] == "1"  # the mapping is the memfd's pages
    assert out["dup_close_original"] == "0"
    assert out["poll_dmabuf"] == "1 revents_in=1"
    assert out["poll_device_idle"] == "0"  # no event: poll times out
    assert out["poll_mixed"] == "1 device=0 pipe=1"
    assert out["child_status"] == "0"  # mapped, saw the parent's bytes, made an ioctl
    assert out["child_wrote"] == "1"
    assert out["munmap"] == out["close_copy"] == out["close_udmabuf"] == "0"
    assert settled(machine, baseline) == baseline


def test_kfd_like_acquire_vm_and_map_on_two_gpus(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    drv = next(d.driver for d in machine.subsystem.devices if d.driver.name == "kfd_like")
    gpus = sorted(drv.gpus)
    args = [f"{g}:{drv.gpus[g].dev.node_path}" for g in gpus]
    res = run_native("kfd_two_gpus.c", *args)
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = res.lines()
    assert out["version"] == "0 1.12"
    assert out["nodes"] == "0 2"
    assert out["apertures"] == "0 " + " ".join(map(str, gpus))  # through an embedded pointer
    # ACQUIRE_VM's drm_fd is a descriptor number of the program: the server takes
    # its own copy (pidfd_getfd), so no table of fd fields is needed.
    assert out["acquire_vm0"] == out["acquire_vm1"] == "0 ok"
    assert out["acquire_vm_bad_fd"] == "-1 EINVAL"  # kfd: drm_fd not open → EINVAL
    assert out["alloc_gtt"] == "0"
    assert out["map_two"] == "0 n_success=2"
    assert out["alloc_vram"] == out["vram_mmap"] == "0"
    assert out["alloc_userptr"] == "0 ok"
    assert settled(machine, baseline) == baseline


@pytest.mark.skipif(shutil.which("umockdev-run") is None, reason="umockdev-run not installed")
@pytest.mark.skipif(not has_header("libudev.h"), reason="libudev headers not installed")
def test_libudev_enumeration_under_udev(run_native: Callable[..., Run], machine: Machine) -> None:
    baseline = machine.subsystem.accounting()
    res = run_native("udev_enum.c", libs=("udev",), udev=True)
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = res.lines()
    found = {v.split()[0]: v.split()[1:] for k, v in out.items() if k.startswith("dev")}
    for dev in machine.subsystem.devices:
        # libudev finds each node, and the node it names opens on the simulated device.
        node, driver, major = found[dev.name]
        assert node == dev.node_path
        assert driver == dev.driver.name
        assert major == "261"
    assert int(out["count"]) == len(found)
    assert settled(machine, baseline) == baseline


@needs_libdrm
def test_xf86drm_and_a_driver_header_in_one_program(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    """accel.h takes the DRM core from drm.h when the program has it, so xf86drm.h
    and habana_like.h compile together (-Werror) and the kernel's struct drm_version
    (with its char pointers) works as well as the driver's ioctls."""
    baseline = machine.subsystem.accounting()
    res = run_native("drm_with_driver_header.c", libs=("drm",))
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = res.lines()
    assert out["libdrm_name"] == "habana_like"
    assert out["kernel_struct_version"] == "0 name=habana_like"
    assert out["cb_create"] == "0"
    assert out["info"] == "0 driver=habana_like"
    assert out["cloexec_is_drm_h"] == "1"
    assert settled(machine, baseline) == baseline


def test_threads_share_the_session_while_one_blocks(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    """A thread blocked in a wait ioctl holds up no other thread's calls: the
    program sets the event only after 1200 INFO calls on other threads returned
    (a program that deadlocked would time out)."""
    baseline = machine.subsystem.accounting()
    gpu = next(d for d in machine.subsystem.devices if d.driver.name == "kfd_like")
    res = run_native("threads.c", gpu.node_path)
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = res.lines()
    assert out["create_event"] == "0"
    assert out["info_good"] == "1200 of 1200"  # every answer reached its own thread
    assert out["waiter_still_blocked"] == "1"
    assert out["set_event"] == "0"
    assert out["wait"] == "0 result=0"  # KFD_IOC_WAIT_RESULT_COMPLETE
    assert settled(machine, baseline) == baseline


def test_a_signal_interrupts_a_wait_blocked_in_the_server(
    run_native: Callable[..., Run], machine: Machine
) -> None:
    baseline = machine.subsystem.accounting()
    res = run_native("signal_wait.c")
    assert res.returncode == 0, (res.stdout, res.stderr)
    out = res.lines()
    assert out["handled"] == "1"
    assert out["wait"] == "-1 errno=EINTR"
    assert settled(machine, baseline) == baseline


def test_last_close_releases_before_returning(
    server: Server, machine: Machine, tmp_path: Path
) -> None:
    exe = compile_c("close_then_own.c", tmp_path / "close_then_own")
    cmd = [sys.executable, "-m", "accelcore.cli", "run", "--runtime-dir", str(server.runtime_dir)]
    proc = subprocess.Popen(
        [*cmd, "--", str(exe)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    gate = threading.Event()
    try:
        lines = []
        while (line := proc.stdout.readline()) and line.strip() != "READY":
            lines.append(line)
        assert line.strip() == "READY", (lines, proc.stderr.read() if proc.stderr else "")

        def stall() -> None:  # the selector thread would notice the hang-up late
            gate.wait(30)

        server.post(stall)
        proc.stdin.write("g")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res = Run(proc.returncode, "".join(lines) + out, err)
    assert res.returncode == 0, (res.stdout, res.stderr)
    got = res.lines()
    assert got["owner_set_master"] == "0"
    assert got["busy"] == "-1 errno=EBUSY"
    assert got["close"] == "0"
    assert got["next_set_master"] == "0 errno=0"
