"""Issue 16 §2: device memory of fixed device regions (habana_like DRAM, kfd_like
VRAM) is charged per client and per uid like buffer objects: every allocation is a
:class:`~accelcore.memory.MemoryBlock` whose memfd is made under the calling
client's :func:`~accelcore.memory.charge_to`, and freed (uncharged) with the block.
One client or uid cannot take a whole device's memory; another still allocates."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from accelcore.server import Server, connect
from accelcore.server.daemon import load_machine
from accelcore.server.limits import ServerLimits
from drivers.habana_like.userlib import HlkClient
from drivers.kfd_like.thunk import VRAM, Kfd, driver_of

from .conftest import wait_for
from .test_server_caps import _baseline

MiB = 1 << 20
VA = 0x10_0000_0000


def _code(fn) -> int:  # type: ignore[no-untyped-def]
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_kfd_vram_is_capped_per_client_and_uid_and_a_peer_still_allocates(rt: Path) -> None:
    machine = load_machine(
        {"machine": {"drivers": ["kfd_like"]}, "pci": [{"model": "kfd_like"}]}  # 64 MiB VRAM
    )
    # 1 MiB over 3 and 5 allocations: ACQUIRE_VM charges a page of its own.
    limits = ServerLimits(buffer_bytes_per_client=25 * MiB, buffer_bytes_per_uid=41 * MiB)
    server = Server(machine, rt, limits=limits)
    server.start()
    gpu = next(iter(driver_of(machine).gpus.values())).gpu
    gpus = {gid: g.dev.node_path for gid, g in driver_of(machine).gpus.items()}
    (gid,) = gpus
    try:
        back = _baseline(server, machine)
        a = Kfd(None, connect(rt), gpus)
        a.acquire_all()

        def alloc(k: Kfd, i: int) -> int:
            return _code(lambda: k.alloc(gid, 8 * MiB, VA + i * 16 * MiB, VRAM))

        # The client's cap stops it with 40 MiB of VRAM still free.
        assert [alloc(a, i) for i in range(4)] == [0, 0, 0, errno.ENOMEM]
        assert gpu.vram.used == 24 * MiB
        mine = server.ledger.used("buffer_bytes", pid=os.getpid())
        assert 24 * MiB < mine < 25 * MiB
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - same uid, another process
            codes: list[int] = []
            try:
                b = Kfd(None, connect(rt), gpus)
                b.acquire_all()
                codes = [alloc(b, i) for i in range(3)]
                b.close()
            finally:
                os.write(w, repr(codes).encode())
                os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            codes = f.read()
        os.waitpid(pid, 0)
        # A second client allocates the same GPU's VRAM, up to the uid's cap.
        assert codes == repr([0, 0, errno.ENOMEM])
        assert wait_for(lambda: server.ledger.used("buffer_bytes", uid=os.getuid()) == mine)
        assert gpu.vram.used == 24 * MiB  # the peer's VRAM went back with it
        a.close()
        back()
        assert gpu.vram.used == 0
    finally:
        server.stop()
        machine.shutdown()


def test_habana_dram_is_charged_to_its_client(rt: Path) -> None:
    machine = load_machine(
        {
            "machine": {"drivers": ["habana_like"]},
            "pci": [{"model": "habana_like", "options": {"dram_mb": 64}}],
        }
    )
    server = Server(machine, rt, limits=ServerLimits(buffer_bytes_per_client=16 * MiB))
    server.start()
    dram = machine.subsystem.device(0).private.model.dram
    try:
        back = _baseline(server, machine)
        a = connect(rt)
        c = HlkClient(a, a.open("/dev/accel/accel0"))
        handles: list[int] = []
        codes = [_code(lambda: handles.append(c.mem_alloc(6 * MiB))) for _ in range(3)]
        assert codes == [0, 0, errno.ENOMEM] and dram.used == 12 * MiB  # 52 MiB still free
        c.mem_free(handles.pop())
        assert server.ledger.used("buffer_bytes", pid=os.getpid()) == 6 * MiB
        assert _code(lambda: handles.append(c.mem_alloc(8 * MiB))) == 0  # room again
        a.exit()
        back()
        assert dram.used == 0
    finally:
        server.stop()
        machine.shutdown()
