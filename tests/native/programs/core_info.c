/* The core INFO ioctl: the answer goes to the program's own stack through the
 * return pointer; a bad return pointer, or a bad argument pointer, is EFAULT. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "accel.h"

int main(void)
{
	int fd = open("/dev/accel/accel0", O_RDWR);
	struct accel_info_device dev;
	struct accel_info q;
	int r;

	if (fd < 0)
		return 2;
	memset(&dev, 0, sizeof(dev));
	memset(&q, 0, sizeof(q));
	q.op = ACCEL_INFO_DEVICE;
	q.return_pointer = (__u64)(unsigned long)&dev;
	q.return_size = sizeof(dev);
	r = ioctl(fd, ACCEL_IOCTL_INFO, &q);
	printf("info=%d\nactual_size=%u\ndriver=%s\nbus_id=%s\nminor=%u\n", r, q.actual_size,
	       dev.driver, dev.bus_id, dev.minor);

	/* A short buffer: the answer is cut to it, actual_size says the whole. */
	memset(&dev, 0x5a, sizeof(dev));
	q.return_size = 4;
	r = ioctl(fd, ACCEL_IOCTL_INFO, &q);
	printf("short=%d driver4=%.4s after=%#x\n", r, dev.driver, (unsigned char)dev.driver[4]);

	q.return_pointer = 8; /* unmapped */
	q.return_size = sizeof(dev);
	errno = 0;
	r = ioctl(fd, ACCEL_IOCTL_INFO, &q);
	printf("bad_return=%d errno=%s\n", r, strerrorname_np(errno));

	errno = 0;
	r = ioctl(fd, ACCEL_IOCTL_INFO, (void *)16);
	printf("bad_arg=%d errno=%s\n", r, strerrorname_np(errno));

	/* Read-only memory cannot take an answer either (copy_to_user faults). */
	q.return_pointer = (__u64)(unsigned long)"a string literal in .rodata, long enough";
	q.return_size = 16;
	errno = 0;
	r = ioctl(fd, ACCEL_IOCTL_INFO, &q);
	printf("readonly_return=%d errno=%s\n", r, strerrorname_np(errno));

	errno = 0;
	r = ioctl(fd + 100, ACCEL_IOCTL_INFO, &q);
	printf("bad_fd=%d errno=%s\n", r, strerrorname_np(errno));

	/* read(2) of events: none queued, so a non-blocking file says EAGAIN. */
	{
		char ev[64];
		int nb = open("/dev/accel/accel0", O_RDWR | O_NONBLOCK);
		ssize_t n = read(nb, ev, sizeof(ev));
		printf("read_nonblock=%zd errno=%s\n", n, strerrorname_np(errno));
		close(nb);
	}
	return close(fd) == 0 ? 0 : 4;
}
