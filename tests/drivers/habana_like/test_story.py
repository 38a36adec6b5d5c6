"""The "done when" story: a GEMM job end to end while a monitor watches, a hang
that resets the device, and a next owner that works."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from accelcore.pci import FaultKind
from drivers.habana_like import HLK
from drivers.habana_like.packets import encode_kernel, encode_lin_dma, encode_nop

M, K, N = 32, 48, 16


def _status(mon):
    return mon.info(HLK.HLK_INFO_DEVICE_STATUS, "struct hlk_info_device_status").status


def test_gemm_round_trip_with_monitor(machine, client_both):
    owner = client_both()
    mon = client_both("/dev/accel/accel_controlD0")
    rng = np.random.default_rng(7)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    free0 = mon.info(HLK.HLK_INFO_DRAM_USAGE, "struct hlk_info_dram_usage").dram_free_mem

    host = owner.proc.alloc(1 << 16)
    host.view[: a.nbytes] = a.tobytes()
    host.view[0x4000 : 0x4000 + b.nbytes] = b.tobytes()
    hva = owner.map_host(host.addr, len(host))
    handle = owner.mem_alloc(1 << 16)
    dva = owner.map_device(handle)
    usage = mon.info(HLK.HLK_INFO_DRAM_USAGE, "struct hlk_info_dram_usage")
    assert usage.dram_free_mem == free0 - (1 << 16)
    assert usage.ctx_dram_mem == 0  # the monitor has no context

    copy_in = owner.cb_with(
        encode_lin_dma(hva, dva, a.nbytes, HLK.HLK_DMA_HOST_TO_DRAM)
        + encode_lin_dma(hva + 0x4000, dva + 0x4000, b.nbytes, HLK.HLK_DMA_HOST_TO_DRAM)
    )
    s1 = owner.submit([(copy_in, HLK.HLK_QUEUE_ID_DMA_0)])
    stats = mon.info(HLK.HLK_INFO_OPEN_STATS, "struct hlk_open_stats_info")
    assert stats.is_compute_ctx_active == 1 and stats.open_counter == 2
    idle = mon.info(HLK.HLK_INFO_HW_IDLE, "struct hlk_info_hw_idle")
    assert idle.is_idle == 0 and idle.busy_engines_mask == 1 << HLK.HLK_ENGINE_ID_DMA_0
    assert owner.wait(s1) == HLK.HLK_WAIT_CS_STATUS_COMPLETED

    gemm = owner.cb_with(
        encode_kernel(HLK.HLK_KERNEL_GEMM_F32, m=M, n=N, k=K, a=dva, b=dva + 0x4000, c=dva + 0x8000)
    )
    s2 = owner.submit([(gemm, HLK.HLK_QUEUE_ID_COMPUTE_0)])
    assert owner.wait(s2) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
    copy_out = owner.cb_with(
        encode_lin_dma(dva + 0x8000, hva + 0x8000, M * N * 4, HLK.HLK_DMA_DRAM_TO_HOST)
    )
    s3 = owner.submit([(copy_out, HLK.HLK_QUEUE_ID_DMA_1)])
    assert owner.wait(s3) == HLK.HLK_WAIT_CS_STATUS_COMPLETED

    c = np.frombuffer(bytes(host.view[0x8000 : 0x8000 + M * N * 4]), np.float32).reshape(M, N)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5)
    assert _status(mon) == HLK.HLK_DEVICE_STATUS_OPERATIONAL
    assert mon.info(HLK.HLK_INFO_HW_IDLE, "struct hlk_info_hw_idle").is_idle == 1
    assert (s1, s2, s3) == (1, 2, 3)
    owner.unmap(hva)
    owner.proc.free(host)


def test_engine_time_passes_in_device_time(machine, client_both):
    owner = client_both()
    handle = owner.mem_alloc(1 << 20)
    dva = owner.map_device(handle)
    t0 = machine.clock.now()
    cb = owner.cb_with(encode_lin_dma(0, dva, 1 << 20, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    owner.wait(owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)]))
    assert machine.clock.now() - t0 >= (1 << 20) // 10


def test_hang_resets_device_and_next_owner_works(machine, client_both):
    owner = client_both()
    mon = client_both("/dev/accel/accel_controlD0")
    dev = machine.subsystem.device(0)
    fn = dev.parent
    handle = owner.mem_alloc(4096)
    dva = owner.map_device(handle)
    cb = owner.cb_with(encode_lin_dma(0x5A, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    seq = owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])
    machine.bus.inject_fault(fn, FaultKind.HANG)
    with pytest.raises(OSError) as exc:
        owner.wait_args(seq, timeout_us=5_000_000)
    assert exc.value.errno == errno.ETIMEDOUT
    assert machine.clock.now() >= 1_000_000_000  # cs_timeout_ms default, in device time
    assert dev.reset_count == 1
    assert _status(mon) == HLK.HLK_DEVICE_STATUS_OPERATIONAL
    counts = mon.info(HLK.HLK_INFO_RESET_COUNT, "struct hlk_info_reset_count")
    assert counts.hard_reset_cnt == 1
    events = mon.info(HLK.HLK_INFO_HW_EVENTS, size=4 * HLK.HLK_NUM_EVENTS)
    assert events == bytes(4 * HLK.HLK_NUM_EVENTS)  # cleared by the hard reset

    # The owner keeps its file; its old sequence number is gone (TIMEDOUT), new work runs.
    with pytest.raises(OSError) as exc:
        owner.wait_args(seq)
    assert exc.value.errno == errno.ETIMEDOUT
    handle = owner.mem_alloc(4096)
    dva = owner.map_device(handle)
    cb = owner.cb_with(encode_lin_dma(0x33, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    assert owner.wait(owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])) == 0
    assert seq < owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])


def test_reset_aborts_other_pending_cs(machine, client_both):
    owner = client_both()
    dev = machine.subsystem.device(0)
    handle = owner.mem_alloc(4096)
    dva = owner.map_device(handle)
    cb = owner.cb_with(encode_lin_dma(1, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    seq = owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])
    dev.reset("test")
    with pytest.raises(OSError) as exc:
        owner.wait_args(seq)
    assert exc.value.errno == errno.EIO


def test_aborted_wait_reports_status_aborted(machine, client_both):
    owner = client_both()
    handle = owner.mem_alloc(4096)
    dva = owner.map_device(handle)
    cb = owner.cb_with(encode_lin_dma(1, dva, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    seq = owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])
    machine.subsystem.device(0).reset("test")
    args = HLK.new("union hlk_wait_cs_args")
    args.input.seq, args.input.timeout_us = seq, 1000
    with pytest.raises(OSError):
        owner.proc.ioctl(owner.fd, HLK.DRM_IOCTL_HLK_WAIT_CS, args)
    assert args.output.status == HLK.HLK_WAIT_CS_STATUS_ABORTED


def test_next_owner_after_close_works(machine, client_both):
    first = client_both()
    first.mem_alloc(4096)
    first.proc.close(first.fd)
    second = client_both()
    handle = second.mem_alloc(4096)
    assert handle == 1


def test_machine_description_builds_devices():
    from accelcore.machine import Machine

    m = Machine.from_description(
        {
            "machine": {"drivers": ["habana_like"]},
            "pci": [{"model": "habana_like", "count": 2, "options": {"dram_mb": 16}}],
        }
    )
    devs = m.subsystem.registered_devices()
    assert [d.driver.name for d in devs] == ["habana_like", "habana_like"]
    assert devs[0].private.allocator.size == 16 << 20


def test_cb_info_counts_usage(client_both):
    owner = client_both()
    nop = owner.cb_create(64)
    owner.cb_write(nop, encode_nop())
    owner.wait(owner.submit([((nop, 8), HLK.HLK_QUEUE_ID_DMA_0)]))
    a = HLK.new("union hlk_cb_args")
    a.input.op, a.input.cb_handle = HLK.HLK_CB_OP_INFO, nop.handle
    owner.proc.ioctl(owner.fd, HLK.DRM_IOCTL_HLK_CB, a)
    assert a.output.usage_cnt == 1 and a.output.size == 4096


def test_signal_interrupts_wait_with_eintr(client_both):
    owner = client_both()
    dva = owner.map_device(owner.mem_alloc(1 << 16))
    cb = owner.cb_with(encode_lin_dma(0, dva, 1 << 16, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    seq = owner.submit([(cb, HLK.HLK_QUEUE_ID_DMA_0)])
    owner.proc.signal()
    with pytest.raises(OSError) as exc:
        owner.wait(seq)
    assert exc.value.errno == errno.EINTR
    assert owner.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED
