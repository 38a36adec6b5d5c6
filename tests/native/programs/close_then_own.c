/* The last close() releases the file before it returns: after closing the
 * owner's descriptor, another file of the same device may become owner at once,
 * with no retry. The test stalls the server's selector thread between READY and
 * the close, so only a synchronous release can let SET_MASTER succeed. */
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
	int owner = open("/dev/accel/accel0", O_RDWR);
	int next = open("/dev/accel/accel0", O_RDWR);
	char go;
	int r;

	if (owner < 0 || next < 0)
		return 2;
	r = ioctl(owner, DRM_IOCTL_SET_MASTER, 0);
	printf("owner_set_master=%d\n", r);
	errno = 0;
	r = ioctl(next, DRM_IOCTL_SET_MASTER, 0);
	printf("busy=%d errno=%s\n", r, strerrorname_np(errno));
	printf("READY\n");
	fflush(stdout);
	if (read(0, &go, 1) != 1)
		return 3;
	printf("close=%d\n", close(owner));
	errno = 0;
	r = ioctl(next, DRM_IOCTL_SET_MASTER, 0);
	printf("next_set_master=%d errno=%d\n", r, errno);
	return 0;
}
