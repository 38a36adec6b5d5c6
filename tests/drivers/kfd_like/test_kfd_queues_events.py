"""User-mode queues, doorbells and events."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from drivers.kfd_like import KFD_UAPI as U
from drivers.kfd_like.thunk import GTT, Kfd, driver_of, make_machine

VA = 0x60_0000_0000
MEMSET = U.KFD_LIKE_KERNEL_MEMSET


def setup_buffer(k: Kfd, gid: int):
    a = k.alloc(gid, 4096, VA, GTT)
    k.map(k.map_args(a.handle, [gid]))
    return k.cpu_map(gid, a, 4096)


def test_doorbell_write_runs_packets_without_ioctl(kfd_both):
    gid = kfd_both.gpu_ids[0]
    cpu = setup_buffer(kfd_both, gid)
    q = kfd_both.create_queue(gid)
    for i in range(3):
        q.submit(MEMSET, [VA + 64 * i, 16, i + 1])
    kfd_both.m.clock.advance(1_000_000)
    assert q.read_index == 3
    assert [int.from_bytes(cpu[64 * i : 64 * i + 4], "little") for i in range(3)] == [1, 2, 3]


def test_packets_wait_for_the_doorbell(kfd):
    gid = kfd.gpu_ids[0]
    cpu = setup_buffer(kfd, gid)
    q = kfd.create_queue(gid)
    pkt = U.new(
        "struct kfd_like_dispatch_packet",
        header=U.KFD_LIKE_PACKET_KERNEL_DISPATCH,
        kernel=MEMSET,
        args=[VA, 4, 7],
    )
    q.ring.view[:64] = U.to_bytes(pkt)
    kfd.m.clock.advance(1_000_000)
    assert q.read_index == 0 and bytes(cpu[:4]) == bytes(4)


def test_doorbell_write_to_destroyed_queue_is_ignored(leak_check):
    m = make_machine(5_000, 5_000)
    check = leak_check(m)
    k, other = Kfd(m), Kfd(m)
    k.acquire_all()
    other.acquire_all()
    gid = k.gpu_ids[0]
    cpu = setup_buffer(k, gid)
    other_cpu = setup_buffer(other, gid)
    q, oq = k.create_queue(gid), other.create_queue(gid)
    k.ioctl("DRM_IOCTL_KFD_DESTROY_QUEUE", queue_id=q.queue_id)
    q.submit(MEMSET, [VA, 4, 9])
    oq.submit(MEMSET, [VA, 4, 5])
    m.clock.advance(1_000_000)
    assert q.read_index == 0 and bytes(cpu[:4]) == bytes(4)
    assert oq.read_index == 1 and int.from_bytes(other_cpu[:4], "little") == 5
    del cpu, other_cpu
    k.close()
    other.close()
    check()


def test_vm_fault_stops_queue_and_signals_memory_event(kfd):
    gid = kfd.gpu_ids[1]
    q = kfd.create_queue(gid)
    mem_ev = kfd.create_event(U.KFD_IOC_EVENT_MEMORY, auto_reset=0)
    q.submit(MEMSET, [0x7_0000_0000, 4, 1])
    args = kfd.wait_args([mem_ev], 100)
    kfd.p.ioctl(kfd.fd, U.DRM_IOCTL_KFD_WAIT_EVENTS, args)
    assert args.wait_result == U.KFD_IOC_WAIT_RESULT_COMPLETE
    data = U.from_bytes("struct kfd_event_data", kfd.p.task.mm.copy_from_user(args.events_ptr, 48))
    assert data.memory_exception_data.va == 0x7_0000_0000
    assert data.memory_exception_data.gpu_id == gid
    assert data.memory_exception_data.failure.NotPresent == 1
    assert q.read_index == 0


def test_set_event_completes_a_wait(kfd_both):
    ev = kfd_both.create_event()
    kfd_both.ioctl("DRM_IOCTL_KFD_SET_EVENT", event_id=ev)
    assert kfd_both.wait([ev], timeout_ms=0) == U.KFD_IOC_WAIT_RESULT_COMPLETE


def test_auto_reset_event_is_consumed_by_a_wait(kfd_both):
    ev = kfd_both.create_event(auto_reset=1)
    kfd_both.ioctl("DRM_IOCTL_KFD_SET_EVENT", event_id=ev)
    kfd_both.wait([ev], timeout_ms=0)
    assert kfd_both.wait([ev], timeout_ms=0) == U.KFD_IOC_WAIT_RESULT_TIMEOUT


def test_reset_event_clears_it(kfd_both):
    ev = kfd_both.create_event(auto_reset=0)
    kfd_both.ioctl("DRM_IOCTL_KFD_SET_EVENT", event_id=ev)
    kfd_both.ioctl("DRM_IOCTL_KFD_RESET_EVENT", event_id=ev)
    assert kfd_both.wait([ev], timeout_ms=0) == U.KFD_IOC_WAIT_RESULT_TIMEOUT


def test_wait_times_out_in_virtual_time(kfd_both):
    ev = kfd_both.create_event()
    start = kfd_both.m.clock.now()
    assert kfd_both.wait([ev], timeout_ms=5) == U.KFD_IOC_WAIT_RESULT_TIMEOUT
    assert kfd_both.m.clock.now() - start == 5_000_000


def test_wait_any_completes_on_one_event(kfd_both):
    a, b = kfd_both.create_event(), kfd_both.create_event()
    kfd_both.ioctl("DRM_IOCTL_KFD_SET_EVENT", event_id=b)
    assert kfd_both.wait([a, b], timeout_ms=0, wait_all=0) == U.KFD_IOC_WAIT_RESULT_COMPLETE


def test_interrupted_wait_returns_eintr_with_remaining_timeout(kfd):
    gid = kfd.gpu_ids[0]
    q = kfd.create_queue(gid)  # keeps the GPU polling: time passes in the wait
    ev = kfd.create_event()
    args = kfd.wait_args([ev], 10)
    kfd.m.clock.advance(0)
    kfd.m.clock.call_later(3_000_000, kfd.p.task.post_signal)
    with pytest.raises(OSError) as exc:
        kfd.p.ioctl(kfd.fd, U.DRM_IOCTL_KFD_WAIT_EVENTS, args)
    assert exc.value.errno == errno.EINTR
    assert args.timeout == 7
    assert q.read_index == 0


def test_destroyed_event_is_gone(kfd):
    ev = kfd.create_event()
    kfd.ioctl("DRM_IOCTL_KFD_DESTROY_EVENT", event_id=ev)
    with pytest.raises(OSError) as exc:
        kfd.ioctl("DRM_IOCTL_KFD_SET_EVENT", event_id=ev)
    assert exc.value.errno == errno.EINVAL


def test_process_exit_tears_everything_down(leak_check):
    m = make_machine(5_000, 5_000)
    check = leak_check(m)
    k = Kfd(m)
    k.acquire_all()
    cpu = setup_buffer(k, k.gpu_ids[0])
    q = k.create_queue(k.gpu_ids[0])
    k.create_event()
    q.submit(MEMSET, [VA, 1024, 3])
    assert driver_of(m).accounting()["hw_queues"] == 1
    del cpu
    k.close()  # with a packet still in flight
    m.clock.advance(1_000_000)
    check()


def test_kernel_results_match_numpy_on_second_gpu(kfd):
    gid = kfd.gpu_ids[1]
    cpu = setup_buffer(kfd, gid)
    a = np.arange(64, dtype=np.float32)
    cpu[:256] = a.tobytes()
    cpu[256:512] = (a * 3).tobytes()
    q = kfd.create_queue(gid)
    ev = kfd.create_event()
    q.submit(U.KFD_LIKE_KERNEL_VECTOR_ADD, [VA, VA + 256, VA + 512, 64], event=ev)
    assert kfd.wait([ev]) == U.KFD_IOC_WAIT_RESULT_COMPLETE
    np.testing.assert_array_equal(np.frombuffer(cpu[512:768], np.float32), a * 4)
