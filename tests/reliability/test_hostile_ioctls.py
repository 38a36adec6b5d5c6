"""Hostile ioctl payloads and command buffers, in process: zero oopses, no leaks.

Every ioctl of vaccel, habana_like and kfd_like (and the core's, on accel files,
dma-bufs and ``/dev/udmabuf``) is called with random argument bytes — some fully
random, some with 64-bit words aimed at the caller's real user memory and 32-bit
words set to small numbers (likely handles, descriptors, counts) so calls get past
the first checks — and with the size field of the command shrunk or grown.
habana_like command buffers are filled with random bytes and random packets.
Each call may fail with any errno; none may oops (``subsystem.oopses == []``), and
when every process has exited all resources are back to the baseline.
"""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from accelcore import CORE, Process, VirtualClock
from accelcore.clock import Deadlock
from accelcore.machine import Machine
from accelcore.memory import PAGE_SIZE
from accelcore.testing.vaccel import VACCEL_UAPI as V
from accelcore.testing.vaccel import VAccelDriver
from accelcore.uapi.ioc import IOC_SIZEMASK
from drivers.habana_like import HLK, HabanaLikeDriver
from drivers.habana_like.packets import PACKET_SIZES
from drivers.habana_like.userlib import HlkClient
from drivers.kfd_like.abi import KFD_UAPI as U
from drivers.kfd_like.thunk import Kfd

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

Summary = Callable[[str], None]


def _payload(rng: random.Random, size: int, user: Any) -> bytes:
    """Random bytes; often with words pointing at real user memory or small ints."""
    data = bytearray(rng.randbytes(size))
    style = rng.random()
    if style < 0.15:
        return bytes(size)
    if style < 0.6:
        for off in range(0, size - 7, 8):
            r = rng.random()
            if r < 0.3:
                struct.pack_into("<Q", data, off, user.addr + rng.randrange(0, len(user), 8))
            elif r < 0.6:
                struct.pack_into("<II", data, off, rng.randint(0, 4), rng.randint(0, 4))
            elif r < 0.7:
                struct.pack_into("<Q", data, off, rng.choice([0, 1, PAGE_SIZE, (1 << 64) - 1]))
    return bytes(data)


U64_MAX = (1 << 64) - 1


def _cmd_with_size(cmd: int, size: int) -> int:
    return (cmd & ~(IOC_SIZEMASK << 16)) | ((size & IOC_SIZEMASK) << 16)


def _fuzz(
    rng: random.Random,
    proc: Process,
    targets: Iterable[tuple[int, int, int]],
    rounds: int,
    user: Any,
) -> tuple[int, dict[int, int]]:
    """Call each ``(fd, cmd, size)`` ``rounds`` times with hostile payloads."""
    calls, errnos = 0, {}  # type: ignore[var-annotated]
    for fd, cmd, size in targets:
        for _ in range(rounds):
            real = size
            r = rng.random()
            if r < 0.1:
                real = rng.randint(0, size)
            elif r < 0.2:
                real = size + rng.choice([8, 64, 200])
            arg = proc.alloc(max(real, 8))
            arg.view[:real] = _payload(rng, real, user)
            code = 0
            try:
                proc.ioctl(fd, _cmd_with_size(cmd, real), arg.addr)
            except Deadlock:
                code = -1  # waited forever in virtual time: the harness's verdict, not an oops
            except OSError as exc:
                code = exc.errno or 0
                assert code != errno.EIO or "oops" not in str(exc), exc
            proc.free(arg)
            errnos[code] = errnos.get(code, 0) + 1
            calls += 1
    return calls, errnos


def _targets(fd: int, defs: Iterable[Any]) -> list[tuple[int, int, int]]:
    return [(fd, d.cmd, d.size) for d in defs]


def _machine() -> Machine:
    m = Machine(VirtualClock())
    m.bus.populate(
        [
            {"model": "habana_like", "count": 2, "options": {"dram_mb": 1}},
            {"model": "kfd_like", "count": 2},
        ]
    )
    m.add_driver(HabanaLikeDriver())
    m.add_driver("kfd_like")
    vdrv = m.add_driver(VAccelDriver())
    m.subsystem.create_device(vdrv)
    return m


def _run_ioctl_fuzz(rounds: int, seed: int) -> tuple[int, dict[int, int]]:
    m = _machine()
    sub = m.subsystem
    base = sub.accounting()
    rng = random.Random(seed)
    calls, errnos = 0, {}  # type: ignore[var-annotated]

    def add(res: tuple[int, dict[int, int]]) -> None:
        nonlocal calls
        calls += res[0]
        for k, v in res[1].items():
            errnos[k] = errnos.get(k, 0) + v

    devs = {d.driver.name: d for d in sub.registered_devices()}
    # vaccel: an owner with a buffer, a dma-buf, and /dev/udmabuf
    vp = Process(sub)
    user = vp.alloc(4 * PAGE_SIZE)
    vfd = vp.open(devs["vaccel"].node_path)
    bo = V.new("struct vaccel_create_bo", size=PAGE_SIZE)
    vp.ioctl(vfd, V.DRM_IOCTL_VACCEL_CREATE_BO, bo)
    ph = CORE.new("struct drm_prime_handle", handle=bo.handle)
    vp.ioctl(vfd, CORE.DRM_IOCTL_PRIME_HANDLE_TO_FD, ph)
    udev = vp.open("/dev/udmabuf")
    core = list(CORE.ioctls.values())
    add(_fuzz(rng, vp, _targets(vfd, V.ioctls.values()), rounds, user))
    add(_fuzz(rng, vp, _targets(ph.fd, core) + _targets(udev, core), rounds, user))
    # habana_like: an owner with device memory, a host mapping and a CB
    hp = Process(sub)
    huser = hp.alloc(4 * PAGE_SIZE)
    hl = HlkClient(hp, hp.open("/dev/accel/accel0"))
    hl.map_device(hl.mem_alloc(PAGE_SIZE))
    hl.map_host(huser.addr, PAGE_SIZE)
    hl.cb_create(PAGE_SIZE)
    ctl = hp.open("/dev/accel/accel_controlD0")
    add(_fuzz(rng, hp, _targets(hl.fd, HLK.ioctls.values()), rounds, huser))
    add(_fuzz(rng, hp, _targets(ctl, HLK.ioctls.values()), max(1, rounds // 4), huser))
    # kfd_like: a process with VMs acquired, memory and a queue
    k = Kfd(m)
    k.acquire_all()
    kuser = k.alloc_user(4 * PAGE_SIZE)
    k.alloc(k.gpu_ids[0], PAGE_SIZE, 0x1_0000_0000)
    k.create_queue(k.gpu_ids[0])
    k.create_event()
    add(_fuzz(rng, k.p, _targets(k.fd, U.ioctls.values()), rounds, kuser))
    afd = next(iter(k.accel_fds.values()))
    add(_fuzz(rng, k.p, _targets(afd, U.ioctls.values()), max(1, rounds // 4), kuser))

    m.clock.run_until_idle()
    assert sub.oopses == [], sub.oopses
    vp.exit()
    hp.exit()
    k.close()
    m.clock.run_until_idle()
    assert sub.oopses == []
    assert sub.accounting() == base, {
        key: (base[key], v) for key, v in sub.accounting().items() if base[key] != v
    }
    m.shutdown()
    return calls, errnos


def test_random_ioctl_payloads_never_oops(summary: Summary) -> None:
    calls, errnos = _run_ioctl_fuzz(rounds=40, seed=2024)
    top = sorted(errnos.items(), key=lambda kv: -kv[1])[:6]
    summary(f"ioctl fuzz: {calls} calls on 3 drivers + core, 0 oopses; errnos {dict(top)}")


@pytest.mark.long
def test_random_ioctl_payloads_soak(summary: Summary) -> None:
    calls = 0
    for seed in range(5):
        calls += _run_ioctl_fuzz(rounds=300, seed=seed)[0]
    summary(f"ioctl fuzz soak: {calls} calls, 0 oopses")


def _random_cb(rng: random.Random, targets: list[int]) -> bytes:
    if rng.random() < 0.3:
        return rng.randbytes(rng.randrange(8, 256, 8))
    out = b""
    for _ in range(rng.randint(1, 6)):
        op = rng.choice([*PACKET_SIZES, 0, 6, 0x0C, 0x1F])
        size = PACKET_SIZES.get(op, 8)
        ctl = (rng.getrandbits(32) & ~HLK.HLK_CTL_OPCODE_MASK) | (op << 24)
        words = [rng.choice([*targets, rng.getrandbits(64)]) for _ in range((size - 8) // 8)]
        out += struct.pack("<II", rng.getrandbits(12), ctl) + b"".join(
            struct.pack("<Q", w) for w in words
        )
    return out


def _run_cb_fuzz(count: int, seed: int) -> int:
    m = _machine()
    sub = m.subsystem
    base = sub.accounting()
    rng = random.Random(seed)
    proc = Process(sub)
    hl = HlkClient(proc, proc.open("/dev/accel/accel0"))
    host = proc.alloc(2 * PAGE_SIZE)
    targets = [hl.map_device(hl.mem_alloc(PAGE_SIZE)), hl.map_host(host.addr, PAGE_SIZE)]
    targets += [t + PAGE_SIZE - 8 for t in targets] + [0x20_0000_0000]
    ran = 0
    for _ in range(count):
        cb = _random_cb(rng, targets)
        try:
            seq = hl.submit([(hl.cb_with(cb), rng.randint(0, HLK.HLK_QUEUE_ID_SIZE))])
        except OSError as exc:
            assert exc.errno in (errno.EINVAL, errno.EFAULT), exc
            continue
        try:
            hl.wait(seq, timeout_us=3_000_000)
            ran += 1
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ETIMEDOUT), exc
        if hl.proc.task.files.get(hl.fd).context is None:  # type: ignore[attr-defined]
            targets[:2] = [
                hl.map_device(hl.mem_alloc(PAGE_SIZE)),
                hl.map_host(host.addr, PAGE_SIZE),
            ]
    m.clock.run_until_idle()
    assert sub.oopses == []
    proc.exit()
    assert sub.accounting() == base
    m.shutdown()
    return ran


def test_random_command_buffers_never_oops(summary: Summary) -> None:
    ran = _run_cb_fuzz(300, seed=7)
    summary(f"cb fuzz: 300 random command buffers submitted, {ran} ran, 0 oopses, 0 leaks")


def test_vaccel_nop_with_u64_max_does_not_oops() -> None:
    sub = _machine().subsystem
    proc = Process(sub)
    vdev = next(d for d in sub.registered_devices() if d.driver.name == "vaccel")
    fd = proc.open(vdev.node_path)
    nop = V.new("struct vaccel_nop", value=U64_MAX)
    proc.ioctl(fd, V.DRM_IOCTL_VACCEL_NOP, nop)
    assert nop.result == 0
    assert sub.oopses == []
