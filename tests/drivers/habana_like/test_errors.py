"""Error paths, one per test, with the exact errno (leak-checked by the fixtures)."""

from __future__ import annotations

import errno

import pytest

from accelcore import CORE
from accelcore.memory import PAGE_SIZE
from drivers.habana_like import HLK
from drivers.habana_like.packets import (
    encode_kernel,
    encode_lin_dma,
    encode_msg_long,
    encode_nop,
    encode_stop,
    encode_wreg32,
)

DMA0 = HLK.HLK_QUEUE_ID_DMA_0


def _errno(fn, *args, **kwargs):
    with pytest.raises(OSError) as exc:
        fn(*args, **kwargs)
    return exc.value.errno


@pytest.fixture
def owner(client):
    return client()


@pytest.fixture
def dram(owner):
    return owner.map_device(owner.mem_alloc(1 << 16))


def _submit(owner, data, queue=DMA0):
    return owner.submit([(owner.cb_with(data), queue)])


# -- CS parser --------------------------------------------------------------------------
def test_forbidden_stop_packet_is_einval(owner, dram):
    assert _errno(_submit, owner, encode_stop()) == errno.EINVAL


def test_wreg32_to_protected_register_is_einval(owner, dram):
    assert _errno(_submit, owner, encode_wreg32(0x4, 1)) == errno.EINVAL


def test_wreg32_to_sync_object_is_allowed(owner, dram):
    assert owner.wait(_submit(owner, encode_wreg32(HLK.HLK_SOB_BASE, 3))) == 0


def test_msg_long_to_unmapped_address_is_efault(owner, dram):
    assert _errno(_submit, owner, encode_msg_long(dram + (1 << 16), 1)) == errno.EFAULT


def test_dma_from_unmapped_address_is_efault(owner, dram):
    bad = encode_lin_dma(dram + (1 << 20), dram, 64, HLK.HLK_DMA_DRAM_TO_DRAM)
    assert _errno(_submit, owner, bad) == errno.EFAULT


def test_dma_past_end_of_mapping_is_efault(owner, dram):
    bad = encode_lin_dma(dram, dram + (1 << 16) - 8, 64, HLK.HLK_DMA_DRAM_TO_DRAM)
    assert _errno(_submit, owner, bad) == errno.EFAULT


def test_dma_direction_mismatch_is_efault(owner, dram):
    bad = encode_lin_dma(dram, dram + 4096, 64, HLK.HLK_DMA_HOST_TO_DRAM)
    assert _errno(_submit, owner, bad) == errno.EFAULT


def test_dma_size_zero_is_einval(owner, dram):
    bad = encode_lin_dma(dram, dram + 4096, 0, HLK.HLK_DMA_DRAM_TO_DRAM)
    assert _errno(_submit, owner, bad) == errno.EINVAL


def test_dma_address_overflow_is_einval(owner, dram):
    bad = encode_lin_dma(dram, (1 << 64) - 16, 64, HLK.HLK_DMA_DRAM_TO_DRAM)
    assert _errno(_submit, owner, bad) == errno.EINVAL


def test_kernel_on_dma_queue_is_einval(owner, dram):
    bad = encode_kernel(HLK.HLK_KERNEL_MEMSET_F32, m=1, n=4, c=dram)
    assert _errno(_submit, owner, bad) == errno.EINVAL


def test_kernel_operand_in_host_memory_is_efault(owner, dram):
    host = owner.proc.alloc(4096)
    hva = owner.map_host(host.addr, 4096)
    bad = encode_kernel(HLK.HLK_KERNEL_MEMSET_F32, m=1, n=4, c=hva)
    assert _errno(_submit, owner, bad, HLK.HLK_QUEUE_ID_COMPUTE_0) == errno.EFAULT
    owner.unmap(hva)
    owner.proc.free(host)


def test_truncated_packet_is_einval(owner, dram):
    data = encode_lin_dma(dram, dram + 4096, 64, HLK.HLK_DMA_DRAM_TO_DRAM)
    cb = owner.cb_with(data)
    assert _errno(owner.submit, [((cb[0], 16), DMA0)]) == errno.EINVAL


def test_failed_cs_returns_ullong_max_seq(owner, dram):
    raw = HLK.new("struct hlk_cs_chunk", cb_handle=999, queue_index=0, cb_size=8)
    arr = owner.proc.alloc(64)
    arr.view[:64] = HLK.to_bytes(raw)
    a = HLK.new("union hlk_cs_args")
    a.input.chunks_execute, a.input.num_chunks_execute = arr.addr, 1
    assert _errno(owner.proc.ioctl, owner.fd, HLK.DRM_IOCTL_HLK_CS, a) == errno.EINVAL
    assert a.output.seq == (1 << 64) - 1
    owner.proc.free(arr)


def test_cs_with_bad_queue_is_einval(owner, dram):
    assert _errno(_submit, owner, encode_nop(), HLK.HLK_QUEUE_ID_SIZE) == errno.EINVAL


def test_cs_with_zero_chunks_is_einval(owner):
    assert _errno(owner.submit, []) == errno.EINVAL


def test_cs_chunk_array_fault_is_efault(owner):
    a = HLK.new("union hlk_cs_args")
    a.input.chunks_execute, a.input.num_chunks_execute = 0x10, 1
    assert _errno(owner.proc.ioctl, owner.fd, HLK.DRM_IOCTL_HLK_CS, a) == errno.EFAULT


# -- handles, sizes, memory -----------------------------------------------------------
def test_destroy_unknown_cb_is_einval(owner):
    assert _errno(owner.cb_destroy, 42) == errno.EINVAL


def test_cb_size_zero_is_einval(owner):
    assert _errno(owner.cb_create, 0) == errno.EINVAL


def test_free_unknown_memory_handle_is_einval(owner):
    assert _errno(owner.mem_free, 7) == errno.EINVAL


def test_free_mapped_memory_is_einval(owner):
    handle = owner.mem_alloc(4096)
    owner.map_device(handle)
    assert _errno(owner.mem_free, handle) == errno.EINVAL


def test_alloc_zero_bytes_is_einval(owner):
    assert _errno(owner.mem_alloc, 0) == errno.EINVAL


def test_alloc_nonzero_reserved_is_einval(owner):
    # Found by the conformance suite: the reserved field was not checked.
    assert _errno(owner.memory, HLK.HLK_MEM_OP_ALLOC, mem_size=4096, reserved=1) == errno.EINVAL


def test_over_allocation_is_enomem_and_harmless(machine, owner, client):
    handle = owner.mem_alloc(1 << 20)
    assert _errno(owner.mem_alloc, 64 << 20) == errno.ENOMEM
    mon = client("/dev/accel/accel_controlD0")
    usage = mon.info(HLK.HLK_INFO_DRAM_USAGE, "struct hlk_info_dram_usage")
    assert usage.dram_free_mem == (63 << 20)
    va = owner.map_device(handle)
    cb = owner.cb_with(encode_lin_dma(7, va, 4096, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    assert owner.wait(owner.submit([(cb, DMA0)])) == 0


def test_unmap_unknown_address_is_einval(owner):
    assert _errno(owner.unmap, HLK.HLK_DRAM_VA_BASE) == errno.EINVAL


def test_map_unmapped_host_memory_is_efault(owner):
    assert _errno(owner.map_host, 0x1000, 4096) == errno.EFAULT


def test_export_unaligned_size_is_einval(owner, dram):
    assert _errno(owner.export, dram, PAGE_SIZE + 1) == errno.EINVAL


def test_export_unaligned_offset_is_einval(owner, dram):
    assert _errno(owner.export, dram, PAGE_SIZE, offset=8) == errno.EINVAL


def test_export_past_mapping_is_einval(owner, dram):
    assert _errno(owner.export, dram, 1 << 16, offset=PAGE_SIZE) == errno.EINVAL


def test_export_unknown_address_is_einval(owner, dram):
    assert _errno(owner.export, dram + PAGE_SIZE, PAGE_SIZE) == errno.EINVAL


# -- WAIT_CS -------------------------------------------------------------------------------
def test_wait_on_never_submitted_seq_is_einval(owner):
    assert _errno(owner.wait, 5) == errno.EINVAL


def test_wait_on_seq_zero_is_einval(owner):
    assert _errno(owner.wait, 0) == errno.EINVAL


def test_wait_with_zero_timeout_reports_busy(owner, dram):
    cb = owner.cb_with(encode_lin_dma(0, dram, 1 << 16, HLK.HLK_DMA_DRAM_TO_DRAM, memset=True))
    seq = owner.submit([(cb, DMA0)])
    assert owner.wait(seq, timeout_us=0) == HLK.HLK_WAIT_CS_STATUS_BUSY
    assert owner.wait(seq) == HLK.HLK_WAIT_CS_STATUS_COMPLETED


# -- ownership and the control node --------------------------------------------------------
def test_second_owner_is_ebusy(owner, client):
    owner.mem_alloc(4096)
    other = client()
    assert _errno(other.mem_alloc, 4096) == errno.EBUSY


def test_info_only_opener_can_still_ask_info(owner, client):
    owner.mem_alloc(4096)
    other = client()
    stats = other.info(HLK.HLK_INFO_OPEN_STATS, "struct hlk_open_stats_info")
    assert stats.is_compute_ctx_active == 1


def test_info_only_opener_upgrades_when_free(client):
    first = client()
    first.info(HLK.HLK_INFO_DEVICE_STATUS, "struct hlk_info_device_status")
    assert first.mem_alloc(4096) == 1


def test_control_node_refuses_compute_ioctls(client):
    ctl = client("/dev/accel/accel_controlD0")
    assert _errno(ctl.mem_alloc, 4096) == errno.EACCES


def test_control_node_answers_driver_info(client):
    ctl = client("/dev/accel/accel_controlD0")
    ip = ctl.info(HLK.HLK_INFO_HW_IP_INFO, "struct hlk_info_hw_ip_info")
    assert ip.dram_size == 64 << 20 and ip.num_of_events == HLK.HLK_NUM_EVENTS


def test_unknown_info_op_is_einval(client):
    ctl = client()
    assert _errno(ctl.info, HLK.HLK_INFO_RESET_COUNT + 1, size=8) == errno.EINVAL


def test_control_node_cannot_mmap(client):
    ctl = client("/dev/accel/accel_controlD0")
    assert _errno(ctl.proc.mmap, ctl.fd, 4096, 0x1000_0000) == errno.EINVAL


def test_export_flags_unknown_bits_is_einval(owner, dram):
    assert _errno(owner.export, dram, PAGE_SIZE, flags=CORE.DRM_RDWR | 0x1) == errno.EINVAL
