/* xf86drm.h and a driver's uAPI header in one program: the DRM core definitions
 * come from drm.h once, the driver's ioctls build on them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xf86drm.h>
#include "habana_like.h"

int main(void)
{
	int fd = open("/dev/accel/accel0", O_RDWR | O_CLOEXEC);
	drmVersionPtr v;
	union hlk_cb_args cb;
	struct accel_info_device dev;
	struct accel_info q = {.op = ACCEL_INFO_DEVICE, .return_size = sizeof(dev)};
	char name[64] = {0};
	struct drm_version ver = {.name_len = sizeof(name) - 1, .name = name};

	if (fd < 0)
		return 2;
	v = drmGetVersion(fd);
	printf("libdrm_name=%s\n", v ? v->name : "-");
	drmFreeVersion(v);
	printf("kernel_struct_version=%d name=%s\n", drmIoctl(fd, DRM_IOCTL_VERSION, &ver), name);
	memset(&cb, 0, sizeof(cb));
	cb.input.op = HLK_CB_OP_CREATE;
	cb.input.cb_size = 4096;
	printf("cb_create=%d\n", drmIoctl(fd, DRM_IOCTL_HLK_CB, &cb));
	q.return_pointer = (__u64)(unsigned long)&dev;
	printf("info=%d driver=%s\n", drmIoctl(fd, ACCEL_IOCTL_INFO, &q), dev.driver);
	printf("cloexec_is_drm_h=%d\n", DRM_CLOEXEC == O_CLOEXEC);
	return close(fd) == 0 ? 0 : 3;
}
