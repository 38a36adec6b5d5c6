/* libudev enumeration of the accel subsystem (under umockdev), then an open of
 * each device node found and an ioctl on it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <libudev.h>
#include "accel.h"

int main(void)
{
	struct udev *udev = udev_new();
	struct udev_enumerate *en = udev_enumerate_new(udev);
	struct udev_list_entry *e;
	int n = 0;

	udev_enumerate_add_match_subsystem(en, "accel");
	udev_enumerate_scan_devices(en);
	udev_list_entry_foreach(e, udev_enumerate_get_list_entry(en)) {
		struct udev_device *d = udev_device_new_from_syspath(udev, udev_list_entry_get_name(e));
		const char *node = udev_device_get_devnode(d);
		struct accel_info_device info;
		struct accel_info q = {.op = ACCEL_INFO_DEVICE, .return_size = sizeof(info)};
		int fd = node ? open(node, O_RDWR | O_CLOEXEC) : -1;
		q.return_pointer = (__u64)(unsigned long)&info;
		memset(&info, 0, sizeof(info));
		printf("dev%d=%s %s %s %s\n", n++, udev_device_get_sysname(d), node ? node : "-",
		       fd >= 0 && ioctl(fd, ACCEL_IOCTL_INFO, &q) == 0 ? info.driver : "-",
		       udev_device_get_property_value(d, "MAJOR"));
		if (fd >= 0)
			close(fd);
		udev_device_unref(d);
	}
	printf("count=%d\n", n);
	udev_enumerate_unref(en);
	udev_unref(udev);
	return 0;
}
