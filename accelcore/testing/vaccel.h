/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vaccel: a vgem-sized virtual accelerator, the core's own test driver.
 *
 * Buffer objects in system memory, a no-op ioctl, and one engine that fills a
 * buffer with a byte after a delay in device time, completing a fence.
 */
#ifndef _VACCEL_H
#define _VACCEL_H

#include "accel.h"

/* cffi:begin */
struct vaccel_create_bo {
	__u64 size;		/* in: bytes, rounded up to pages */
	__u32 handle;		/* out */
	__u32 flags;		/* must be 0 */
	__u64 mmap_offset;	/* out: where to mmap it on this file */
};

struct vaccel_nop {
	__u64 value;		/* in */
	__u64 result;		/* out: value + 1 */
};

struct vaccel_submit {
	__u32 handle;		/* in: buffer to fill */
	__u32 fill;		/* in: the byte (0..255) */
	__u64 delay_ns;		/* in: how long the engine takes */
	__u64 seqno;		/* out: the job's sequence number */
};

struct vaccel_wait {
	__u64 seqno;		/* in */
	__s64 timeout_ns;	/* in: relative; < 0 waits forever */
	__u32 status;		/* out: VACCEL_WAIT_* */
	__u32 pad;		/* must be 0 */
};

struct vaccel_copy {
	__u32 src_handle;	/* in: buffer read (waits for its writers) */
	__u32 dst_handle;	/* in: buffer written (waits for readers and writers) */
	__u64 delay_ns;		/* in: how long the engine takes */
	__u64 seqno;		/* out: the job's sequence number */
	__u32 in_syncobj;	/* in: a syncobj to wait for first (0: none) */
	__u32 out_syncobj;	/* in: a syncobj that gets the job's fence (0: none) */
};

struct vaccel_wait_bo {
	__u32 handle;		/* in: buffer object */
	__u32 flags;		/* in: VACCEL_WAIT_BO_* */
	__s64 timeout_ns;	/* in: relative, < 0 forever; out: time left after a signal */
};

struct vaccel_info_counters {
	__u64 submitted;
	__u64 completed;
};
/* cffi:end */

#define VACCEL_WAIT_COMPLETED		0
#define VACCEL_WAIT_ABORTED		1

/* Wait for readers too (before writing); without it only writers (before reading). */
#define VACCEL_WAIT_BO_WRITE		(1 << 0)

#define VACCEL_INFO_COUNTERS		0x100

#define DRM_VACCEL_CREATE_BO		0x00
#define DRM_VACCEL_NOP			0x01
#define DRM_VACCEL_SUBMIT		0x02
#define DRM_VACCEL_WAIT			0x03
#define DRM_VACCEL_COPY			0x04
#define DRM_VACCEL_WAIT_BO		0x05

#define DRM_IOCTL_VACCEL_CREATE_BO	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_CREATE_BO, struct vaccel_create_bo)
#define DRM_IOCTL_VACCEL_NOP		DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_NOP, struct vaccel_nop)
#define DRM_IOCTL_VACCEL_SUBMIT		DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_SUBMIT, struct vaccel_submit)
#define DRM_IOCTL_VACCEL_WAIT		DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_WAIT, struct vaccel_wait)
#define DRM_IOCTL_VACCEL_COPY		DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_COPY, struct vaccel_copy)
#define DRM_IOCTL_VACCEL_WAIT_BO	DRM_IOWR(DRM_COMMAND_BASE + DRM_VACCEL_WAIT_BO, struct vaccel_wait_bo)

#endif
