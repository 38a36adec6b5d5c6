/* libdrm on a simulated accel node: drmGetVersion, drmGetCap, drmIoctl. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <xf86drm.h>

int main(int argc, char **argv)
{
	const char *node = argc > 1 ? argv[1] : "/dev/accel/accel0";
	int fd = open(node, O_RDWR | O_CLOEXEC);
	drmVersionPtr v;
	int r;
	uint64_t value = 0;
	struct drm_get_cap cap = {.capability = DRM_CAP_PRIME};
	struct drm_gem_close gc = {.handle = 0x7777};

	if (fd < 0) {
		printf("open_errno=%d\n", errno);
		return 2;
	}
	v = drmGetVersion(fd);
	if (!v)
		return 3;
	printf("name=%s\nversion=%d.%d.%d\ndesc=%s\n", v->name, v->version_major,
	       v->version_minor, v->version_patchlevel, v->desc);
	drmFreeVersion(v);
	printf("getcap_prime=%d\n", drmGetCap(fd, DRM_CAP_PRIME, &value));
	printf("prime_value=%llu\n", (unsigned long long)value);
	r = drmGetCap(fd, 0xdead, &value);
	printf("getcap_bad=%d errno=%s\n", r, strerrorname_np(errno));
	printf("drmioctl_getcap=%d value=%llu\n", drmIoctl(fd, DRM_IOCTL_GET_CAP, &cap),
	       (unsigned long long)cap.value);
	r = drmIoctl(fd, DRM_IOCTL_GEM_CLOSE, &gc);
	printf("gem_close_unknown=%d errno=%s\n", r, strerrorname_np(errno));
	/* Not a device node: the kernel answers. */
	r = ioctl(open("/dev/null", O_RDONLY), DRM_IOCTL_GET_CAP, &cap);
	printf("devnull_ioctl=%d errno=%s\n", r, strerrorname_np(errno));
	printf("close=%d\n", close(fd));
	return 0;
}
