"""kfd_like answers INFO's memory and engine queries (issue 22 §3): VRAM in use,
the command processor's kernels and SDMA's page-table updates, counted as they run."""

from __future__ import annotations

from accelcore.driver import EngineInfo
from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import VRAM, Kfd, driver_of

VA = 0x10_0000_0000


def _engines(kfd: Kfd, gid: int) -> dict[str, EngineInfo]:
    dev = driver_of(kfd.m).gpus[gid].dev
    return {e.name: e for e in dev.driver.engines(dev)}


def test_vram_and_engines_count_what_runs(kfd: Kfd) -> None:
    gid = kfd.gpu_ids[0]
    node = driver_of(kfd.m).gpus[gid]
    (vram,) = node.dev.driver.memory_regions(node.dev)
    assert (vram.name, vram.total_bytes, vram.used_bytes) == ("vram", node.gpu.vram_size, 0)
    assert {n: (e.submitted, e.completed) for n, e in _engines(kfd, gid).items()} == {
        "compute": (0, 0),
        "sdma": (0, 0),
    }

    buf = kfd.alloc(gid, 1 << 20, VA, VRAM)
    (vram,) = node.dev.driver.memory_regions(node.dev)
    assert vram.used_bytes == 1 << 20
    kfd.map(kfd.map_args(buf.handle, [gid]))  # waits for SDMA's page-table update
    sdma = _engines(kfd, gid)["sdma"]
    assert sdma.submitted == sdma.completed >= 1 and not sdma.busy
    assert sdma.busy_time_ns == sdma.completed * node.gpu.pt_update_ns

    q = kfd.create_queue(gid)
    ev = kfd.create_event()
    q.submit(U.KFD_LIKE_KERNEL_MEMSET, [VA, 16, 0x5A5A5A5A], event=ev)
    assert kfd.wait([ev]) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    compute = _engines(kfd, gid)["compute"]
    assert (compute.submitted, compute.completed, compute.busy) == (1, 1, False)
    assert compute.busy_time_ns > 0
