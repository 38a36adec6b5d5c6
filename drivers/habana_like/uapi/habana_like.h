/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * habana_like: a habanalabs (Goya/Gaudi)-shaped accelerator for accelcore.
 *
 * INFO is the core's common ACCEL_IOCTL_INFO; this header adds driver queries
 * from ACCEL_INFO_DRIVER_BASE (HLK_INFO_*).  The other ioctls follow
 * include/uapi/drm/habanalabs_accel.h: CB (command buffers, mmap'ed by the
 * user), CS (command submission of chunks to queues, returns a sequence
 * number), WAIT_CS and MEMORY (device memory, host userptr mappings, dma-buf
 * export).  Every ioctl argument is a union of an "in" and an "out" struct, as
 * in habanalabs; the members are called "input" and "output" here.
 *
 * Command buffers hold packets (little-endian, 8-byte aligned).  Every packet
 * starts with two 32-bit words: the payload word (value/tsize/cfg) and ctl.
 * ctl[28:24] is the opcode (so the opcode is bits 60:56 of the first u64),
 * ctl[29] EB, ctl[30] RB, ctl[31] MB:
 *
 *   WREG32   0x01   8 B  value; ctl[15:0] = register offset (only the SOB window)
 *   MSG_LONG 0x03  16 B  value; ctl; addr  (writes value to a device VA)
 *   MSG_PROT 0x07  16 B  kernel only (completion write)
 *   FENCE    0x08   8 B  cfg: dec[3:0] target[23:16] id[31:30] (sync object id)
 *   LIN_DMA  0x09  24 B  tsize; ctl; src_addr; dst_addr; ctl[6] MEMSET
 *                        (src_addr is then the fill byte), ctl[22:20] direction
 *   NOP      0x0A   8 B
 *   STOP     0x0B   8 B  kernel only
 *   KERNEL   0x10  48 B  kernel id; ctl; m; n; k; imm; a; b; c (float32 operands
 *                        in device memory, row-major)
 *
 * Addresses in packets are device virtual addresses returned by MEMORY MAP
 * (device memory or pinned host memory) of the submitting context.
 */
#ifndef _HABANA_LIKE_H
#define _HABANA_LIKE_H

#include "accel.h"

/* cffi:begin */

/* ---- INFO answers (ops from ACCEL_INFO_DRIVER_BASE) ---- */
struct hlk_info_hw_ip_info {
	__u64 dram_base_address;	/* first device VA of device memory mappings */
	__u64 dram_size;		/* bytes usable by user space */
	__u64 dram_page_size;		/* allocation granularity */
	__u32 device_id;		/* PCI device id */
	__u32 num_of_events;		/* entries of HLK_INFO_HW_EVENTS */
	__u32 num_dma_engines;
	__u32 num_compute_engines;
	__u32 max_jobs_per_cs;
	__u32 max_pending_cs;
	__u8 cpucp_version[64];
	__u8 card_name[16];
};

struct hlk_info_dram_usage {
	__u64 dram_free_mem;
	__u64 ctx_dram_mem;		/* the caller's context; 0 without one */
};

struct hlk_info_hw_idle {
	__u32 is_idle;
	__u32 busy_engines_mask;	/* bit per engine (HLK_ENGINE_ID_*) */
	__u64 busy_engines_mask_ext[4];
};

struct hlk_info_device_status {
	__u32 status;			/* HLK_DEVICE_STATUS_* */
	__u32 pad;
};

struct hlk_open_stats_info {
	__u64 open_counter;
	__u64 last_open_period_ms;
	__u8 is_compute_ctx_active;
	__u8 compute_ctx_in_release;
	__u8 pad[6];
};

struct hlk_info_clk_rate {
	__u32 cur_clk_rate_mhz;
	__u32 max_clk_rate_mhz;
};

struct hlk_info_reset_count {
	__u32 hard_reset_cnt;
	__u32 soft_reset_cnt;
};

/* ---- CB ioctl ---- */
struct hlk_cb_in {
	__u64 cb_handle;		/* DESTROY, INFO */
	__u32 op;			/* HLK_CB_OP_* */
	__u32 cb_size;			/* CREATE: bytes, 8..HLK_MAX_CB_SIZE (rounded to pages) */
	__u32 flags;			/* must be 0 */
	__u32 pad;
};

struct hlk_cb_out {
	__u64 cb_handle;		/* CREATE */
	__u64 mmap_offset;		/* CREATE, INFO: mmap the CB at this offset */
	__u32 usage_cnt;		/* INFO: jobs that used it */
	__u32 size;			/* CREATE, INFO: bytes */
};

union hlk_cb_args {
	struct hlk_cb_in input;
	struct hlk_cb_out output;
};

/* ---- CS ioctl ---- */
struct hlk_cs_chunk {			/* fixed to 64 bytes, like hl_cs_chunk */
	__u64 cb_handle;
	__u32 queue_index;		/* HLK_QUEUE_ID_* */
	__u32 cb_size;			/* bytes of the CB to execute */
	__u32 cs_chunk_flags;		/* must be 0 */
	__u32 pad[11];
};

struct hlk_cs_in {
	__u64 chunks_execute;		/* user pointer to struct hlk_cs_chunk[] */
	__u32 num_chunks_execute;	/* 1..HLK_MAX_JOBS_PER_CS */
	__u32 cs_flags;			/* HLK_CS_FLAGS_* */
	__u32 timeout_ms;		/* with HLK_CS_FLAGS_CUSTOM_TIMEOUT, device ms */
	__u32 pad;
};

struct hlk_cs_out {
	__u64 seq;			/* never 0; ULLONG_MAX when the CS was refused */
	__u32 status;			/* HLK_CS_STATUS_SUCCESS */
	__u32 pad;
};

union hlk_cs_args {
	struct hlk_cs_in input;
	struct hlk_cs_out output;
};

/* ---- WAIT_CS ioctl ---- */
struct hlk_wait_cs_in {
	__u64 seq;
	__u64 timeout_us;		/* relative; 0 = do not sleep */
	__u32 flags;			/* must be 0 */
	__u32 pad;
};

struct hlk_wait_cs_out {
	__u32 status;			/* HLK_WAIT_CS_STATUS_* */
	__u32 flags;			/* HLK_WAIT_CS_STATUS_FLAG_* */
	__s64 timestamp_nsec;		/* completion time (device clock) */
};

union hlk_wait_cs_args {
	struct hlk_wait_cs_in input;
	struct hlk_wait_cs_out output;
};

/* ---- MEMORY ioctl ---- */
struct hlk_mem_alloc_in {
	__u64 mem_size;
	__u64 page_size;		/* 0 = default; else must equal it */
	__u64 reserved;
};

struct hlk_mem_free_in {
	__u64 handle;
	__u64 reserved[2];
};

struct hlk_mem_map_device_in {
	__u64 hint_addr;
	__u64 handle;
	__u64 reserved;
};

struct hlk_mem_map_host_in {
	__u64 host_virt_addr;
	__u64 hint_addr;
	__u64 mem_size;
};

struct hlk_mem_unmap_in {
	__u64 device_virt_addr;
	__u64 reserved[2];
};

struct hlk_mem_export_in {
	__u64 addr;			/* device VA of a device-memory MAP */
	__u64 mem_size;
	__u64 offset;			/* start inside that mapping */
};

union hlk_mem_op_args {
	struct hlk_mem_alloc_in alloc;
	struct hlk_mem_free_in free;
	struct hlk_mem_map_device_in map_device;
	struct hlk_mem_map_host_in map_host;
	struct hlk_mem_unmap_in unmap;
	struct hlk_mem_export_in export_dmabuf_fd;
};

struct hlk_mem_in {
	union hlk_mem_op_args args;
	__u32 op;			/* HLK_MEM_OP_* */
	__u32 flags;			/* HLK_MEM_*; EXPORT: DRM_CLOEXEC | DRM_RDWR */
	__u32 ctx_id;			/* ignored (one context per file) */
	__u32 pad;
};

struct hlk_mem_out {
	__u64 handle;			/* ALLOC */
	__u64 device_virt_addr;		/* MAP */
	__s32 fd;			/* accel:fd-out - EXPORT_DMABUF_FD */
	__u32 pad;
};

union hlk_mem_args {
	struct hlk_mem_in input;
	struct hlk_mem_out output;
};

/* ---- packets (documented layout; see the comment at the top) ---- */
struct hlk_packet_hdr {
	__u32 value;
	__u32 ctl;
};

struct hlk_packet_msg_long {
	__u32 value;
	__u32 ctl;
	__u64 addr;
};

struct hlk_packet_lin_dma {
	__u32 tsize;
	__u32 ctl;
	__u64 src_addr;
	__u64 dst_addr;
};

struct hlk_packet_kernel {
	__u32 kernel;			/* HLK_KERNEL_* */
	__u32 ctl;
	__u32 m;
	__u32 n;
	__u32 k;
	__u32 imm;			/* MEMSET: the float32 bit pattern */
	__u64 a;
	__u64 b;
	__u64 c;
};
/* cffi:end */

/* INFO queries */
#define HLK_INFO_HW_IP_INFO		0x100
#define HLK_INFO_HW_EVENTS		0x101
#define HLK_INFO_DRAM_USAGE		0x102
#define HLK_INFO_HW_IDLE		0x103
#define HLK_INFO_DEVICE_STATUS		0x104
#define HLK_INFO_OPEN_STATS		0x105
#define HLK_INFO_CLK_RATE		0x106
#define HLK_INFO_RESET_COUNT		0x107

/* device status (enum hl_device_status) */
#define HLK_DEVICE_STATUS_OPERATIONAL	0
#define HLK_DEVICE_STATUS_IN_RESET	1
#define HLK_DEVICE_STATUS_MALFUNCTION	2
#define HLK_DEVICE_STATUS_NEEDS_RESET	3

/* HW events counted by HLK_INFO_HW_EVENTS (since the last hard reset) */
#define HLK_EVENT_CS_TIMEOUT		0
#define HLK_EVENT_DMA_FAULT		1
#define HLK_EVENT_ENGINE_ERROR		2
#define HLK_EVENT_ECC_SERR		3
#define HLK_EVENT_ECC_DERR		4
#define HLK_NUM_EVENTS			5

/* queues and engines */
#define HLK_QUEUE_ID_DMA_0		0	/* host <-> device memory */
#define HLK_QUEUE_ID_DMA_1		1
#define HLK_QUEUE_ID_COMPUTE_0		2	/* kernels */
#define HLK_QUEUE_ID_SIZE		3
#define HLK_ENGINE_ID_DMA_0		0
#define HLK_ENGINE_ID_DMA_1		1
#define HLK_ENGINE_ID_COMPUTE_0		2

/* CB */
#define HLK_CB_OP_CREATE		0
#define HLK_CB_OP_DESTROY		1
#define HLK_CB_OP_INFO			2
#define HLK_MAX_CB_SIZE			(0x200000 - 32)

/* CS */
#define HLK_CS_FLAGS_CUSTOM_TIMEOUT	0x200
#define HLK_CS_FLAGS_SKIP_RESET_ON_TIMEOUT 0x400
#define HLK_CS_STATUS_SUCCESS		0
#define HLK_MAX_JOBS_PER_CS		512
#define HLK_MAX_PENDING_CS		64

/* WAIT_CS */
#define HLK_WAIT_CS_STATUS_COMPLETED	0
#define HLK_WAIT_CS_STATUS_BUSY		1
#define HLK_WAIT_CS_STATUS_TIMEDOUT	2
#define HLK_WAIT_CS_STATUS_ABORTED	3
#define HLK_WAIT_CS_STATUS_FLAG_GONE	0x1

/* MEMORY */
#define HLK_MEM_OP_ALLOC		0
#define HLK_MEM_OP_FREE			1
#define HLK_MEM_OP_MAP			2
#define HLK_MEM_OP_UNMAP		3
#define HLK_MEM_OP_EXPORT_DMABUF_FD	5
#define HLK_MEM_USERPTR			0x4	/* MAP: map_host instead of map_device */
#define HLK_MEM_FORCE_HINT		0x8

/* device VA layout */
#define HLK_DRAM_VA_BASE		0x100000000000
#define HLK_HOST_VA_BASE		0x800000000000
#define HLK_VA_RANGE_SIZE		0x100000000000

/* packets */
#define HLK_PACKET_WREG_32		0x01
#define HLK_PACKET_WREG_BULK		0x02
#define HLK_PACKET_MSG_LONG		0x03
#define HLK_PACKET_MSG_SHORT		0x04
#define HLK_PACKET_CP_DMA		0x05
#define HLK_PACKET_MSG_PROT		0x07
#define HLK_PACKET_FENCE		0x08
#define HLK_PACKET_LIN_DMA		0x09
#define HLK_PACKET_NOP			0x0A
#define HLK_PACKET_STOP			0x0B
#define HLK_PACKET_KERNEL		0x10
#define HLK_CTL_OPCODE_SHIFT		24
#define HLK_CTL_OPCODE_MASK		0x1F000000
#define HLK_CTL_EB			(1 << 29)
#define HLK_CTL_RB			(1 << 30)
#define HLK_CTL_MB			(1 << 31)
#define HLK_LIN_DMA_CTL_MEMSET		(1 << 6)
#define HLK_LIN_DMA_DIR_SHIFT		20
#define HLK_LIN_DMA_DIR_MASK		0x00700000
#define HLK_DMA_HOST_TO_DRAM		0
#define HLK_DMA_DRAM_TO_HOST		5
#define HLK_DMA_DRAM_TO_DRAM		6
#define HLK_WREG32_REG_MASK		0xFFFF
#define HLK_SOB_BASE			0x2000	/* user-writable sync objects */
#define HLK_SOB_COUNT			64
#define HLK_KERNEL_MEMSET_F32		1	/* c[m*n] = imm */
#define HLK_KERNEL_VADD_F32		2	/* c[n] = a[n] + b[n] */
#define HLK_KERNEL_GEMM_F32		3	/* c[m][n] = a[m][k] @ b[k][n] */
#define HLK_KERNEL_MAX_DIM		4096

/* ioctls (HL_IOCTL_INFO's number 0 is taken by the core INFO) */
#define DRM_HLK_CB			0x01
#define DRM_HLK_CS			0x02
#define DRM_HLK_WAIT_CS			0x03
#define DRM_HLK_MEMORY			0x04

#define DRM_IOCTL_HLK_CB	DRM_IOWR(DRM_COMMAND_BASE + DRM_HLK_CB, union hlk_cb_args)
#define DRM_IOCTL_HLK_CS	DRM_IOWR(DRM_COMMAND_BASE + DRM_HLK_CS, union hlk_cs_args)
#define DRM_IOCTL_HLK_WAIT_CS	DRM_IOWR(DRM_COMMAND_BASE + DRM_HLK_WAIT_CS, union hlk_wait_cs_args)
#define DRM_IOCTL_HLK_MEMORY	DRM_IOWR(DRM_COMMAND_BASE + DRM_HLK_MEMORY, union hlk_mem_args)

#endif
