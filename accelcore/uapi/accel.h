/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * accelcore core uAPI: the ioctls every accel node answers, whatever its driver.
 *
 * The layouts of the DRM core structs (drm_version, drm_gem_close, drm_get_cap,
 * drm_prime_handle, drm_set_client_name, drm_event, the drm_syncobj_* structs)
 * and of dma-buf and udmabuf
 * are the kernel's (LP64).  accel_info and its answers are accelcore's common
 * INFO ioctl, modelled on habanalabs' HL_INFO: one query id, a user buffer and
 * its size, the answer cut to that size.
 *
 * Ownership: on a real accel node SET_MASTER/DROP_MASTER return -EACCES or
 * -EINVAL (accel files never become DRM master).  accelcore gives the two
 * numbers the meaning of the drm_master-style single compute owner: acquire
 * and release the device's compute context.
 *
 * The region between the cffi markers is what accelcore's loader hands to
 * cffi; it holds no macros, only #if guards (the loader drops preprocessor
 * lines, so it always sees every layout).  Everything else is plain C for C
 * programs.
 *
 * A field whose comment says accel:fd carries a file descriptor the kernel
 * reads (transports whose descriptors live in another process send it with
 * the call); accel:fd-out marks one the kernel returns.
 */
#ifndef _ACCELCORE_ACCEL_H
#define _ACCELCORE_ACCEL_H

#include <linux/types.h>
#include <linux/ioctl.h>

/*
 * The DRM core definitions come from drm.h when the program has it -- the
 * kernel's <drm/drm.h>, or libdrm's copy (on -I/usr/include/libdrm, as
 * xf86drm.h is used), both guarded by _DRM_H_ -- so that a program can include
 * xf86drm.h and this header (or a driver's) together, as with the kernel's
 * accel headers.  Without drm.h the same layouts (LP64) are defined here.
 */
#if !defined(_DRM_H_) && defined(__has_include)
#if __has_include(<drm.h>)
#include <drm.h>
#elif __has_include(<drm/drm.h>)
#include <drm/drm.h>
#endif
#endif
#ifdef _DRM_H_
#define ACCEL_DRM_CORE_FROM_DRM_H	1
#endif

#ifndef ACCEL_DRM_CORE_FROM_DRM_H
#define DRM_IOCTL_BASE			'd'
#define DRM_IO(nr)			_IO(DRM_IOCTL_BASE, nr)
#define DRM_IOR(nr, type)		_IOR(DRM_IOCTL_BASE, nr, type)
#define DRM_IOW(nr, type)		_IOW(DRM_IOCTL_BASE, nr, type)
#define DRM_IOWR(nr, type)		_IOWR(DRM_IOCTL_BASE, nr, type)

/* The driver-specific range; generic ioctls restart at DRM_COMMAND_END. */
#define DRM_COMMAND_BASE		0x40
#define DRM_COMMAND_END			0xA0
#endif

#define ACCEL_MAJOR			261
#define ACCEL_MAX_MINORS		256

/* cffi:begin */
#ifndef ACCEL_DRM_CORE_FROM_DRM_H
struct drm_version {
	int version_major;
	int version_minor;
	int version_patchlevel;
	__u64 name_len;		/* size_t on LP64 */
	__u64 name;		/* char __user * */
	__u64 date_len;
	__u64 date;
	__u64 desc_len;
	__u64 desc;
};

struct drm_gem_close {
	__u32 handle;
	__u32 pad;
};

struct drm_get_cap {
	__u64 capability;
	__u64 value;
};

struct drm_prime_handle {
	__u32 handle;
	__u32 flags;		/* DRM_CLOEXEC | DRM_RDWR, handle to fd only */
	__s32 fd;		/* accel:fd - FD_TO_HANDLE reads it, HANDLE_TO_FD writes it */
};

#endif

#ifndef DRM_IOCTL_SET_CLIENT_NAME	/* newer than some libdrm copies of drm.h */
struct drm_set_client_name {
	__u64 name_len;
	__u64 name;
};

#endif

#ifndef ACCEL_DRM_CORE_FROM_DRM_H
struct drm_event {
	__u32 type;
	__u32 length;
};
#endif

#ifndef ACCEL_DRM_CORE_FROM_DRM_H
/* syncobjs (include/uapi/drm/drm.h) */
struct drm_syncobj_create {
	__u32 handle;
	__u32 flags;
};

struct drm_syncobj_destroy {
	__u32 handle;
	__u32 pad;
};

struct drm_syncobj_handle {
	__u32 handle;
	__u32 flags;

	__s32 fd;		/* accel:fd - FD_TO_HANDLE reads it, HANDLE_TO_FD writes it */
	__u32 pad;

	__u64 point;
};

struct drm_syncobj_transfer {
	__u32 src_handle;
	__u32 dst_handle;
	__u64 src_point;
	__u64 dst_point;
	__u32 flags;
	__u32 pad;
};

struct drm_syncobj_wait {
	__u64 handles;
	/* absolute timeout */
	__s64 timeout_nsec;
	__u32 count_handles;
	__u32 flags;
	__u32 first_signaled; /* only valid when not waiting all */
	__u32 pad;
	/**
	 * @deadline_nsec - fence deadline hint
	 *
	 * Deadline hint, in absolute CLOCK_MONOTONIC, to set on backing
	 * fence(s) if the DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE flag is
	 * set.
	 */
	__u64 deadline_nsec;
};

struct drm_syncobj_timeline_wait {
	__u64 handles;
	/* wait on specific timeline point for every handles*/
	__u64 points;
	/* absolute timeout */
	__s64 timeout_nsec;
	__u32 count_handles;
	__u32 flags;
	__u32 first_signaled; /* only valid when not waiting all */
	__u32 pad;
	/**
	 * @deadline_nsec - fence deadline hint
	 *
	 * Deadline hint, in absolute CLOCK_MONOTONIC, to set on backing
	 * fence(s) if the DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE flag is
	 * set.
	 */
	__u64 deadline_nsec;
};

struct drm_syncobj_array {
	__u64 handles;
	__u32 count_handles;
	__u32 pad;
};

struct drm_syncobj_timeline_array {
	__u64 handles;
	__u64 points;
	__u32 count_handles;
	__u32 flags;
};
#endif

/* The common INFO ioctl. */
struct accel_info {
	__u64 return_pointer;	/* user buffer for the answer */
	__u32 return_size;	/* at most this many bytes are written there */
	__u32 op;		/* ACCEL_INFO_* or a driver query */
	__u32 index;		/* first element of an array answer */
	__u32 flags;		/* must be 0 */
	__u32 actual_size;	/* out: the size of the whole answer */
	__u32 pad;		/* must be 0 */
};

struct accel_info_device {
	char driver[32];
	char bus_id[32];	/* "0000:00:10.0", or "virtual" */
	__u32 version_major;
	__u32 version_minor;
	__u32 version_patchlevel;
	__u32 minor;
	__u16 vendor;
	__u16 device;
	__u16 subsystem_vendor;
	__u16 subsystem_device;
	__u32 class_code;
	__u32 ownership_policy;	/* ACCEL_POLICY_* */
	__u32 features;		/* ACCEL_FEATURE_* */
	__u32 pad;
};

struct accel_info_status {
	__u32 status;		/* ACCEL_STATUS_* */
	__u32 flags;		/* ACCEL_STATUS_FLAG_* */
	__u64 reset_count;
	__u64 oops_count;
	__u64 open_count;	/* files open now */
};

struct accel_info_ownership {
	__u32 state;		/* ACCEL_OWNER_* */
	__u32 policy;		/* ACCEL_POLICY_* */
	__u64 owner_client_id;	/* 0 when nobody owns */
	__u32 owner_pid;
	__u32 pin_count;	/* dma-bufs keeping a released ownership pinned */
	__u64 pinned_bytes;
};

struct accel_info_client {
	__u64 client_id;
	__u32 pid;
	__u32 uid;
	__u32 flags;		/* ACCEL_CLIENT_* */
	__u32 handles;
	__u64 memory_bytes;
	__u64 engine_time_ns;
	char name[64];		/* set with DRM_IOCTL_SET_CLIENT_NAME */
	char comm[16];
};

struct accel_info_memory_region {
	char name[16];
	__u64 total_bytes;
	__u64 used_bytes;
};

struct accel_info_engine {
	char name[16];
	__u32 engine_class;
	__u32 busy;
	__u64 busy_time_ns;
	__u64 submitted;
	__u64 completed;
};

/* dma-buf (include/uapi/linux/dma-buf.h) */
struct dma_buf_sync {
	__u64 flags;
};

struct dma_buf_export_sync_file {
	__u32 flags;
	__s32 fd;		/* accel:fd-out - the sync file */
};

struct dma_buf_import_sync_file {
	__u32 flags;
	__s32 fd;		/* accel:fd - the sync file */
};

/* udmabuf (include/uapi/linux/udmabuf.h) */
struct udmabuf_create {
	__u32 memfd;		/* accel:fd */
	__u32 flags;
	__u64 offset;
	__u64 size;
};
/* cffi:end */

#ifndef ACCEL_DRM_CORE_FROM_DRM_H
#define DRM_CLOEXEC			02000000	/* O_CLOEXEC */
#define DRM_RDWR			02		/* O_RDWR */

#define DRM_CAP_PRIME			0x5
#define DRM_PRIME_CAP_IMPORT		0x1
#define DRM_PRIME_CAP_EXPORT		0x2
#define DRM_CAP_TIMESTAMP_MONOTONIC	0x6
#define DRM_CAP_SYNCOBJ			0x13
#define DRM_CAP_SYNCOBJ_TIMELINE	0x14

#define DRM_SYNCOBJ_CREATE_SIGNALED (1 << 0)
#define DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_IMPORT_SYNC_FILE (1 << 0)
#define DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_TIMELINE         (1 << 1)
#define DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_EXPORT_SYNC_FILE (1 << 0)
#define DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_TIMELINE         (1 << 1)
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_ALL (1 << 0)
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT (1 << 1)
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_AVAILABLE (1 << 2) /* wait for time point to become available */
#define DRM_SYNCOBJ_WAIT_FLAGS_WAIT_DEADLINE (1 << 3) /* set fence deadline to deadline_nsec */
#define DRM_SYNCOBJ_QUERY_FLAGS_LAST_SUBMITTED (1 << 0) /* last available point on timeline syncobj */
#endif

#ifndef DRM_CLIENT_NAME_MAX_LEN
#define DRM_CLIENT_NAME_MAX_LEN		64
#endif

#define ACCEL_INFO_DEVICE		0x00
#define ACCEL_INFO_STATUS		0x01
#define ACCEL_INFO_OWNERSHIP		0x02
#define ACCEL_INFO_CLIENTS		0x03
#define ACCEL_INFO_MEMORY		0x04
#define ACCEL_INFO_ENGINES		0x05
#define ACCEL_INFO_DRIVER_BASE		0x100

#define ACCEL_STATUS_OPERATIONAL	0
#define ACCEL_STATUS_IN_RESET		1
#define ACCEL_STATUS_MALFUNCTION	2
#define ACCEL_STATUS_NEEDS_RESET	3
#define ACCEL_STATUS_UNPLUGGED		4
#define ACCEL_STATUS_FLAG_TAINTED	(1 << 0)

#define ACCEL_OWNER_FREE		0
#define ACCEL_OWNER_OWNED		1
#define ACCEL_OWNER_PINNED		2

#define ACCEL_POLICY_LAZY_SINGLE	0
#define ACCEL_POLICY_EXCLUSIVE_OPEN	1
#define ACCEL_POLICY_PER_PROCESS	2

#define ACCEL_FEATURE_GEM		(1 << 0)
#define ACCEL_FEATURE_PRIME		(1 << 1)
#define ACCEL_FEATURE_CONTROL_NODE	(1 << 2)
#define ACCEL_FEATURE_SYNCOBJ		(1 << 3)
#define ACCEL_FEATURE_SYNCOBJ_TIMELINE	(1 << 4)

#define ACCEL_CLIENT_OWNER		(1 << 0)
#define ACCEL_CLIENT_CONTROL		(1 << 1)
#define ACCEL_CLIENT_ADMIN		(1 << 2)

/* Core ioctls. */
#ifndef ACCEL_DRM_CORE_FROM_DRM_H
#define DRM_IOCTL_VERSION		DRM_IOWR(0x00, struct drm_version)
#define DRM_IOCTL_GEM_CLOSE		DRM_IOW(0x09, struct drm_gem_close)
#define DRM_IOCTL_GET_CAP		DRM_IOWR(0x0c, struct drm_get_cap)
#define DRM_IOCTL_SET_MASTER		DRM_IO(0x1e)	/* accel: acquire the compute context */
#define DRM_IOCTL_DROP_MASTER		DRM_IO(0x1f)	/* accel: release it */
#define DRM_IOCTL_PRIME_HANDLE_TO_FD	DRM_IOWR(0x2d, struct drm_prime_handle)
#define DRM_IOCTL_PRIME_FD_TO_HANDLE	DRM_IOWR(0x2e, struct drm_prime_handle)
#define DRM_IOCTL_SYNCOBJ_CREATE	DRM_IOWR(0xBF, struct drm_syncobj_create)
#define DRM_IOCTL_SYNCOBJ_DESTROY	DRM_IOWR(0xC0, struct drm_syncobj_destroy)
#define DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD	DRM_IOWR(0xC1, struct drm_syncobj_handle)
#define DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE	DRM_IOWR(0xC2, struct drm_syncobj_handle)
#define DRM_IOCTL_SYNCOBJ_WAIT		DRM_IOWR(0xC3, struct drm_syncobj_wait)
#define DRM_IOCTL_SYNCOBJ_RESET		DRM_IOWR(0xC4, struct drm_syncobj_array)
#define DRM_IOCTL_SYNCOBJ_SIGNAL	DRM_IOWR(0xC5, struct drm_syncobj_array)
#define DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT	DRM_IOWR(0xCA, struct drm_syncobj_timeline_wait)
#define DRM_IOCTL_SYNCOBJ_QUERY		DRM_IOWR(0xCB, struct drm_syncobj_timeline_array)
#define DRM_IOCTL_SYNCOBJ_TRANSFER	DRM_IOWR(0xCC, struct drm_syncobj_transfer)
#define DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL	DRM_IOWR(0xCD, struct drm_syncobj_timeline_array)
#endif
#ifndef DRM_IOCTL_SET_CLIENT_NAME
#define DRM_IOCTL_SET_CLIENT_NAME	DRM_IOWR(0xD1, struct drm_set_client_name)
#endif
#define ACCEL_IOCTL_INFO		DRM_IOWR(0xE0, struct accel_info)

/* dma-buf ioctls (on dma-buf fds). */
#define DMA_BUF_SYNC_READ		(1 << 0)
#define DMA_BUF_SYNC_WRITE		(2 << 0)
#define DMA_BUF_SYNC_RW			(DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE)
#define DMA_BUF_SYNC_START		(0 << 2)
#define DMA_BUF_SYNC_END		(1 << 2)
#define DMA_BUF_SYNC_VALID_FLAGS_MASK	(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END)
#define DMA_BUF_NAME_LEN		32
#define DMA_BUF_BASE			'b'
#define DMA_BUF_IOCTL_SYNC		_IOW(DMA_BUF_BASE, 0, struct dma_buf_sync)
#define DMA_BUF_SET_NAME_B		_IOW(DMA_BUF_BASE, 1, __u64)
#define DMA_BUF_IOCTL_EXPORT_SYNC_FILE	_IOWR(DMA_BUF_BASE, 2, struct dma_buf_export_sync_file)
#define DMA_BUF_IOCTL_IMPORT_SYNC_FILE	_IOW(DMA_BUF_BASE, 3, struct dma_buf_import_sync_file)

/* udmabuf ioctls (on /dev/udmabuf). */
#define UDMABUF_FLAGS_CLOEXEC		0x01
#define UDMABUF_CREATE			_IOW('u', 0x42, struct udmabuf_create)

#endif /* _ACCELCORE_ACCEL_H */
