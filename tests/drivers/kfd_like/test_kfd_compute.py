"""Done-when: one buffer mapped on every GPU in one call, kernels on user-mode queues."""

from __future__ import annotations

import numpy as np

from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import GTT, VRAM, Kfd, driver_of, make_machine

N = 1024
VA_IN = 0x10_0000_0000
VA_OUT = 0x20_0000_0000


def test_vector_add_on_every_gpu(leak_check, accel_process_factory):
    m = make_machine(5_000, 5_000, 5_000)
    check = leak_check(m)
    k = Kfd(m, accel_process_factory(m))
    k.acquire_all()
    rng = np.random.default_rng(6)
    a, b = rng.random(N, dtype=np.float32), rng.random(N, dtype=np.float32)
    gpus = k.gpu_ids
    inp = k.alloc(gpus[0], 2 * N * 4, VA_IN, GTT)
    out = k.alloc(gpus[0], len(gpus) * N * 4, VA_OUT, VRAM)
    cpu_in = k.cpu_map(gpus[0], inp, 2 * N * 4)
    cpu_in[:] = a.tobytes() + b.tobytes()
    for alloc in (inp, out):
        args = k.map(k.map_args(alloc.handle, gpus))
        assert args.n_success == len(gpus)
    tables = driver_of(m).page_tables(k.p.pid)
    assert [len(t) for t in tables.values()] == [2] * len(gpus)
    events = []
    for i, gid in enumerate(gpus):
        q = k.create_queue(gid)
        ev = k.create_event()
        events.append(ev)
        q.submit(
            U.KFD_LIKE_KERNEL_VECTOR_ADD, [VA_IN, VA_IN + N * 4, VA_OUT + i * N * 4, N], event=ev
        )
    assert k.wait(events, timeout_ms=100) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    cpu_out = np.frombuffer(k.cpu_map(gpus[0], out, len(gpus) * N * 4), np.float32)
    for i in range(len(gpus)):
        np.testing.assert_array_equal(cpu_out[i * N : (i + 1) * N], a + b)
    del cpu_out
    assert all(q.read_index == 1 for q in k.queues)
    k.close()
    accel_process_factory.close()  # every process exits (a server session too)
    check()


def test_gemm_and_memset_with_completion_signal(kfd_both: Kfd):
    gid = kfd_both.gpu_ids[1]
    m_, n_, k_ = 8, 4, 16
    A = np.arange(m_ * k_, dtype=np.float32).reshape(m_, k_)
    B = np.ones((k_, n_), np.float32) / 2
    buf = kfd_both.alloc(gid, 4 * 4096, VA_IN, GTT)
    kfd_both.map(kfd_both.map_args(buf.handle, [gid]))
    cpu = kfd_both.cpu_map(gid, buf, 4 * 4096)
    cpu[: A.nbytes] = A.tobytes()
    cpu[4096 : 4096 + B.nbytes] = B.tobytes()
    cpu[3 * 4096 : 3 * 4096 + 8] = (2).to_bytes(8, "little")
    q = kfd_both.create_queue(gid)
    ev = kfd_both.create_event()
    sig = VA_IN + 3 * 4096
    q.submit(
        U.KFD_LIKE_KERNEL_GEMM,
        [VA_IN, VA_IN + 4096, VA_IN + 2 * 4096, m_ | n_ << 32, k_],
        signal=sig,
    )
    q.submit(
        U.KFD_LIKE_KERNEL_MEMSET, [VA_IN + 3 * 4096 + 64, 16, 0xDEADBEEF], event=ev, signal=sig
    )
    assert kfd_both.wait([ev]) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    C = np.frombuffer(cpu[2 * 4096 : 2 * 4096 + m_ * n_ * 4], np.float32).reshape(m_, n_)
    np.testing.assert_allclose(C, A @ B)
    words = np.frombuffer(cpu[3 * 4096 + 64 : 3 * 4096 + 128], np.uint32)
    assert (words == 0xDEADBEEF).all()
    assert int.from_bytes(cpu[3 * 4096 : 3 * 4096 + 8], "little", signed=True) == 0
    del C, words
