/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * tinynpu: an ivpu-shaped NPU for accelcore. Buffer objects, one engine that
 * fills or copies buffers, job completion reported through syncobjs.
 */
#ifndef _TINYNPU_H
#define _TINYNPU_H

#include "accel.h"

/* cffi:begin */
struct drm_tinynpu_get_param {
	__u32 param;		/* in: DRM_TINYNPU_PARAM_* */
	__u32 pad;		/* must be 0 */
	__u64 value;		/* out */
};

struct drm_tinynpu_bo_create {
	__u64 size;		/* in: bytes, rounded up to pages */
	__u32 handle;		/* out */
	__u32 flags;		/* must be 0 */
	__u64 mmap_offset;	/* out: where to mmap it on this file */
};

struct drm_tinynpu_submit {
	__u32 dst_handle;	/* in: the buffer the job writes */
	__u32 src_handle;	/* in: a buffer to copy from, or 0 to fill with `fill` */
	__u32 fill;		/* in: the byte, when src_handle is 0 */
	__u32 out_syncobj;	/* in: a syncobj that gets the job's fence (0: none) */
	__u64 duration_ns;	/* in: how long the engine works */
};
/* cffi:end */

#define DRM_TINYNPU_PARAM_DEVICE_ID	0
#define DRM_TINYNPU_PARAM_ENGINES	1

#define DRM_TINYNPU_GET_PARAM		0x00
#define DRM_TINYNPU_BO_CREATE		0x01
#define DRM_TINYNPU_SUBMIT		0x02

#define DRM_IOCTL_TINYNPU_GET_PARAM	DRM_IOWR(DRM_COMMAND_BASE + DRM_TINYNPU_GET_PARAM, struct drm_tinynpu_get_param)
#define DRM_IOCTL_TINYNPU_BO_CREATE	DRM_IOWR(DRM_COMMAND_BASE + DRM_TINYNPU_BO_CREATE, struct drm_tinynpu_bo_create)
#define DRM_IOCTL_TINYNPU_SUBMIT	DRM_IOW(DRM_COMMAND_BASE + DRM_TINYNPU_SUBMIT, struct drm_tinynpu_submit)

#endif
