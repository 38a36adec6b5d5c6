/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * kfd_like: an amdkfd-shaped compute driver on accelcore.
 *
 * One node, /dev/kfd, serves every GPU of the machine; each GPU also has an
 * ordinary accel node (/dev/accel/accelN) whose file provides the GPU VM that
 * ACQUIRE_VM binds to the calling process. Struct layouts follow
 * include/uapi/linux/kfd_ioctl.h (v1.12); the numbers are DRM-style
 * (type 'd', DRM_COMMAND_BASE + the KFD number) so the core can check them.
 */
#ifndef _KFD_LIKE_H
#define _KFD_LIKE_H

#include "accel.h"

#define KFD_IOCTL_MAJOR_VERSION			1
#define KFD_IOCTL_MINOR_VERSION			12

/* cffi:begin */
struct kfd_ioctl_get_version_args {
	__u32 major_version;	/* from KFD */
	__u32 minor_version;	/* from KFD */
};

struct kfd_ioctl_create_queue_args {
	__u64 ring_base_address;	/* to KFD: user address of the ring */
	__u64 write_pointer_address;	/* to KFD: user address of the 64-bit write index */
	__u64 read_pointer_address;	/* to KFD: user address of the 64-bit read index */
	__u64 doorbell_offset;		/* from KFD: mmap offset of the doorbell on /dev/kfd */
	__u32 ring_size;		/* to KFD: bytes, a power of two */
	__u32 gpu_id;			/* to KFD */
	__u32 queue_type;		/* to KFD: KFD_IOC_QUEUE_TYPE_* */
	__u32 queue_percentage;		/* to KFD */
	__u32 queue_priority;		/* to KFD */
	__u32 queue_id;			/* from KFD */
	__u64 eop_buffer_address;	/* to KFD */
	__u64 eop_buffer_size;		/* to KFD */
	__u64 ctx_save_restore_address;	/* to KFD */
	__u32 ctx_save_restore_size;	/* to KFD */
	__u32 ctl_stack_size;		/* to KFD */
};

struct kfd_ioctl_destroy_queue_args {
	__u32 queue_id;		/* to KFD */
	__u32 pad;
};

struct kfd_process_device_apertures {
	__u64 lds_base;
	__u64 lds_limit;
	__u64 scratch_base;
	__u64 scratch_limit;
	__u64 gpuvm_base;
	__u64 gpuvm_limit;
	__u32 gpu_id;
	__u32 pad;
};

struct kfd_ioctl_get_process_apertures_args {
	struct kfd_process_device_apertures process_apertures[7];	/* from KFD */
	__u32 num_of_nodes;	/* from KFD, at most 7 */
	__u32 pad;
};

struct kfd_ioctl_get_process_apertures_new_args {
	__u64 kfd_process_device_apertures_ptr;	/* to KFD: array of apertures */
	__u32 num_of_nodes;	/* to KFD: array length (0 asks); from KFD: GPUs */
	__u32 pad;
};

struct kfd_ioctl_create_event_args {
	__u64 event_page_offset;	/* from KFD (no event page in this model: 0) */
	__u32 event_trigger_data;	/* from KFD: signal events only */
	__u32 event_type;		/* to KFD: KFD_IOC_EVENT_* */
	__u32 auto_reset;		/* to KFD */
	__u32 node_id;			/* to KFD: only for hardware events */
	__u32 event_id;			/* from KFD */
	__u32 event_slot_index;		/* from KFD */
};

struct kfd_ioctl_destroy_event_args {
	__u32 event_id;		/* to KFD */
	__u32 pad;
};

struct kfd_ioctl_set_event_args {
	__u32 event_id;		/* to KFD */
	__u32 pad;
};

struct kfd_ioctl_reset_event_args {
	__u32 event_id;		/* to KFD */
	__u32 pad;
};

struct kfd_memory_exception_failure {
	__u32 NotPresent;	/* page not present or supervisor privilege */
	__u32 ReadOnly;		/* write access to a read-only page */
	__u32 NoExecute;	/* execute access to a page marked NX */
	__u32 imprecise;	/* can't determine the exact fault address */
};

struct kfd_hsa_memory_exception_data {
	struct kfd_memory_exception_failure failure;
	__u64 va;
	__u32 gpu_id;
	__u32 ErrorType;	/* KFD_MEM_ERR_* */
};

struct kfd_event_data {
	struct kfd_hsa_memory_exception_data memory_exception_data;	/* from KFD */
	__u64 kfd_event_data_ext;	/* pointer to an extension structure */
	__u32 event_id;			/* to KFD */
	__u32 pad;
};

struct kfd_ioctl_wait_events_args {
	__u64 events_ptr;	/* to KFD: array of struct kfd_event_data */
	__u32 num_events;	/* to KFD */
	__u32 wait_for_all;	/* to KFD */
	__u32 timeout;		/* to KFD: ms; from KFD: what is left */
	__u32 wait_result;	/* from KFD: KFD_IOC_WAIT_RESULT_* */
};

struct kfd_ioctl_acquire_vm_args {
	__u32 drm_fd;	/* accel:fd - to KFD: an fd of the GPU's accel node */
	__u32 gpu_id;	/* to KFD */
};

struct kfd_ioctl_alloc_memory_of_gpu_args {
	__u64 va_addr;		/* to KFD: GPU VA, the same on every GPU */
	__u64 size;		/* to KFD */
	__u64 handle;		/* from KFD */
	__u64 mmap_offset;	/* to KFD (userptr: CPU address), from KFD (accel node offset) */
	__u32 gpu_id;		/* to KFD */
	__u32 flags;		/* to KFD: KFD_IOC_ALLOC_MEM_FLAGS_* */
};

struct kfd_ioctl_free_memory_of_gpu_args {
	__u64 handle;		/* to KFD */
};

struct kfd_ioctl_map_memory_to_gpu_args {
	__u64 handle;			/* to KFD */
	__u64 device_ids_array_ptr;	/* to KFD: __u32 gpu_id per device */
	__u32 n_devices;		/* to KFD */
	__u32 n_success;		/* to/from KFD: devices done, from the array start */
};

struct kfd_ioctl_unmap_memory_from_gpu_args {
	__u64 handle;			/* to KFD */
	__u64 device_ids_array_ptr;	/* to KFD */
	__u32 n_devices;		/* to KFD */
	__u32 n_success;		/* to/from KFD */
};

struct kfd_ioctl_import_dmabuf_args {
	__u64 va_addr;		/* to KFD */
	__u64 handle;		/* from KFD */
	__u32 gpu_id;		/* to KFD */
	__u32 dmabuf_fd;	/* accel:fd - to KFD */
};

struct kfd_ioctl_export_dmabuf_args {
	__u64 handle;		/* to KFD */
	__u32 flags;		/* to KFD: O_CLOEXEC, O_RDWR */
	__u32 dmabuf_fd;	/* accel:fd-out - from KFD */
};

/* A user-mode queue packet (AQL-like, 64 bytes), read by the GPU from the ring. */
struct kfd_like_dispatch_packet {
	__u16 header;			/* KFD_LIKE_PACKET_* */
	__u16 kernel;			/* KFD_LIKE_KERNEL_* */
	__u32 completion_event;		/* signal event to set when done, 0: none */
	__u64 args[5];			/* kernel arguments (GPU VAs, counts) */
	__u64 completion_signal;	/* GPU VA of an __s64 decremented when done, 0: none */
	__u64 reserved;
};
/* cffi:end */

/* Allocation flags: memory types (exactly one) */
#define KFD_IOC_ALLOC_MEM_FLAGS_VRAM		(1 << 0)
#define KFD_IOC_ALLOC_MEM_FLAGS_GTT		(1 << 1)
#define KFD_IOC_ALLOC_MEM_FLAGS_USERPTR		(1 << 2)
#define KFD_IOC_ALLOC_MEM_FLAGS_DOORBELL	(1 << 3)
#define KFD_IOC_ALLOC_MEM_FLAGS_MMIO_REMAP	(1 << 4)
/* Allocation flags: attributes */
#define KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE	(1 << 31)
#define KFD_IOC_ALLOC_MEM_FLAGS_EXECUTABLE	(1 << 30)
#define KFD_IOC_ALLOC_MEM_FLAGS_PUBLIC		(1 << 29)
#define KFD_IOC_ALLOC_MEM_FLAGS_NO_SUBSTITUTE	(1 << 28)
#define KFD_IOC_ALLOC_MEM_FLAGS_AQL_QUEUE_MEM	(1 << 27)
#define KFD_IOC_ALLOC_MEM_FLAGS_COHERENT	(1 << 26)
#define KFD_IOC_ALLOC_MEM_FLAGS_UNCACHED	(1 << 25)
#define KFD_IOC_ALLOC_MEM_FLAGS_EXT_COHERENT	(1 << 24)
#define KFD_IOC_ALLOC_MEM_FLAGS_CONTIGUOUS_BEST_EFFORT	(1 << 23)

#define KFD_IOC_QUEUE_TYPE_COMPUTE		0x0
#define KFD_IOC_QUEUE_TYPE_SDMA			0x1
#define KFD_IOC_QUEUE_TYPE_COMPUTE_AQL		0x2
#define KFD_IOC_QUEUE_TYPE_SDMA_XGMI		0x3
#define KFD_MAX_QUEUE_PERCENTAGE		100
#define KFD_MAX_QUEUE_PRIORITY			15
#define KFD_MIN_QUEUE_RING_SIZE			1024

#define KFD_IOC_EVENT_SIGNAL			0
#define KFD_IOC_EVENT_NODECHANGE		1
#define KFD_IOC_EVENT_DEVICESTATECHANGE		2
#define KFD_IOC_EVENT_HW_EXCEPTION		3
#define KFD_IOC_EVENT_SYSTEM_EVENT		4
#define KFD_IOC_EVENT_DEBUG_EVENT		5
#define KFD_IOC_EVENT_PROFILE_EVENT		6
#define KFD_IOC_EVENT_QUEUE_EVENT		7
#define KFD_IOC_EVENT_MEMORY			8

#define KFD_IOC_WAIT_RESULT_COMPLETE		0
#define KFD_IOC_WAIT_RESULT_TIMEOUT		1
#define KFD_IOC_WAIT_RESULT_FAIL		2
#define KFD_SIGNAL_EVENT_LIMIT			4096
#define KFD_EVENT_TIMEOUT_IMMEDIATE		0
#define KFD_EVENT_TIMEOUT_INFINITE		0xFFFFFFFF

#define KFD_MEM_ERR_NO_RAS			0
#define KFD_MEM_ERR_SRAM_ECC			1
#define KFD_MEM_ERR_POISON_CONSUMED		2
#define KFD_MEM_ERR_GPU_HANG			3

/* mmap offsets on /dev/kfd: bits 63:62 type, 61:46 gpu_id, 45:0 offset */
#define KFD_MMAP_TYPE_SHIFT			62
#define KFD_MMAP_TYPE_DOORBELL			3
#define KFD_MMAP_TYPE_EVENTS			2
#define KFD_MMAP_GPU_ID_SHIFT			46

/* Queue packets */
#define KFD_LIKE_PACKET_INVALID			1
#define KFD_LIKE_PACKET_KERNEL_DISPATCH		2
#define KFD_LIKE_KERNEL_MEMSET			1	/* args: dst, u32 count, u32 value */
#define KFD_LIKE_KERNEL_VECTOR_ADD		2	/* args: a, b, c, f32 count: c = a + b */
#define KFD_LIKE_KERNEL_GEMM			3	/* args: A, B, C, m | n << 32, k (f32) */

#define AMDKFD_GET_VERSION			0x01
#define AMDKFD_CREATE_QUEUE			0x02
#define AMDKFD_DESTROY_QUEUE			0x03
#define AMDKFD_GET_PROCESS_APERTURES		0x06
#define AMDKFD_CREATE_EVENT			0x08
#define AMDKFD_DESTROY_EVENT			0x09
#define AMDKFD_SET_EVENT			0x0A
#define AMDKFD_RESET_EVENT			0x0B
#define AMDKFD_WAIT_EVENTS			0x0C
#define AMDKFD_GET_PROCESS_APERTURES_NEW	0x14
#define AMDKFD_ACQUIRE_VM			0x15
#define AMDKFD_ALLOC_MEMORY_OF_GPU		0x16
#define AMDKFD_FREE_MEMORY_OF_GPU		0x17
#define AMDKFD_MAP_MEMORY_TO_GPU		0x18
#define AMDKFD_UNMAP_MEMORY_FROM_GPU		0x19
#define AMDKFD_IMPORT_DMABUF			0x1D
#define AMDKFD_EXPORT_DMABUF			0x24

#define DRM_IOCTL_KFD_GET_VERSION		DRM_IOR(DRM_COMMAND_BASE + AMDKFD_GET_VERSION, struct kfd_ioctl_get_version_args)
#define DRM_IOCTL_KFD_CREATE_QUEUE		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_CREATE_QUEUE, struct kfd_ioctl_create_queue_args)
#define DRM_IOCTL_KFD_DESTROY_QUEUE		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_DESTROY_QUEUE, struct kfd_ioctl_destroy_queue_args)
#define DRM_IOCTL_KFD_GET_PROCESS_APERTURES	DRM_IOR(DRM_COMMAND_BASE + AMDKFD_GET_PROCESS_APERTURES, struct kfd_ioctl_get_process_apertures_args)
#define DRM_IOCTL_KFD_CREATE_EVENT		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_CREATE_EVENT, struct kfd_ioctl_create_event_args)
#define DRM_IOCTL_KFD_DESTROY_EVENT		DRM_IOW(DRM_COMMAND_BASE + AMDKFD_DESTROY_EVENT, struct kfd_ioctl_destroy_event_args)
#define DRM_IOCTL_KFD_SET_EVENT			DRM_IOW(DRM_COMMAND_BASE + AMDKFD_SET_EVENT, struct kfd_ioctl_set_event_args)
#define DRM_IOCTL_KFD_RESET_EVENT		DRM_IOW(DRM_COMMAND_BASE + AMDKFD_RESET_EVENT, struct kfd_ioctl_reset_event_args)
#define DRM_IOCTL_KFD_WAIT_EVENTS		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_WAIT_EVENTS, struct kfd_ioctl_wait_events_args)
#define DRM_IOCTL_KFD_GET_PROCESS_APERTURES_NEW	DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_GET_PROCESS_APERTURES_NEW, struct kfd_ioctl_get_process_apertures_new_args)
#define DRM_IOCTL_KFD_ACQUIRE_VM		DRM_IOW(DRM_COMMAND_BASE + AMDKFD_ACQUIRE_VM, struct kfd_ioctl_acquire_vm_args)
#define DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU	DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_ALLOC_MEMORY_OF_GPU, struct kfd_ioctl_alloc_memory_of_gpu_args)
#define DRM_IOCTL_KFD_FREE_MEMORY_OF_GPU	DRM_IOW(DRM_COMMAND_BASE + AMDKFD_FREE_MEMORY_OF_GPU, struct kfd_ioctl_free_memory_of_gpu_args)
#define DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_MAP_MEMORY_TO_GPU, struct kfd_ioctl_map_memory_to_gpu_args)
#define DRM_IOCTL_KFD_UNMAP_MEMORY_FROM_GPU	DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_UNMAP_MEMORY_FROM_GPU, struct kfd_ioctl_unmap_memory_from_gpu_args)
#define DRM_IOCTL_KFD_IMPORT_DMABUF		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_IMPORT_DMABUF, struct kfd_ioctl_import_dmabuf_args)
#define DRM_IOCTL_KFD_EXPORT_DMABUF		DRM_IOWR(DRM_COMMAND_BASE + AMDKFD_EXPORT_DMABUF, struct kfd_ioctl_export_dmabuf_args)

#endif
