/* dma-bufs: one exported from habana_like device memory (a real descriptor:
 * dup'ed, polled), one made by udmabuf from a memfd (mmap'ed, shared with the
 * memfd); both inherited by a forked child that maps it and makes an
 * ioctl of its own on the inherited device fd; poll mixes device and pipe fds. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "habana_like.h"

#define SIZE 4096

int main(void)
{
	int fd = open("/dev/accel/accel0", O_RDWR | O_CLOEXEC);
	union hlk_mem_args m;
	uint64_t va;
	int buf, copy, udma, pipefd[2], status, r;
	unsigned char *map;
	struct pollfd pfd[2];
	pid_t child;

	if (fd < 0)
		return 2;
	{
		union hlk_mem_args a;
		memset(&a, 0, sizeof(a));
		a.input.op = HLK_MEM_OP_ALLOC;
		a.input.args.alloc.mem_size = SIZE;
		if (ioctl(fd, DRM_IOCTL_HLK_MEMORY, &a))
			return 3;
		memset(&m, 0, sizeof(m));
		m.input.op = HLK_MEM_OP_MAP;
		m.input.args.map_device.handle = a.output.handle;
	}
	if (ioctl(fd, DRM_IOCTL_HLK_MEMORY, &m))
		return 4;
	va = m.output.device_virt_addr;

	memset(&m, 0, sizeof(m));
	m.input.op = HLK_MEM_OP_EXPORT_DMABUF_FD;
	m.input.flags = DRM_CLOEXEC | DRM_RDWR;
	m.input.args.export_dmabuf_fd.addr = va;
	m.input.args.export_dmabuf_fd.mem_size = SIZE;
	r = ioctl(fd, DRM_IOCTL_HLK_MEMORY, &m);
	buf = m.output.fd;
	printf("export=%d\n", r);
	printf("fd_is_open=%d\n", fcntl(buf, F_GETFD) >= 0);
	printf("fd_cloexec=%d\n", (fcntl(buf, F_GETFD) & FD_CLOEXEC) != 0);

	/* Device memory of this device cannot be CPU-mapped through its dma-buf
	 * (as habanalabs); a udmabuf over a memfd can: */
	map = mmap(NULL, SIZE, PROT_READ, MAP_SHARED, buf, 0);
	printf("hlk_dmabuf_mmap_errno=%s\n", map == MAP_FAILED ? strerrorname_np(errno) : "none");
	{
		int memfd = memfd_create("native-test", MFD_ALLOW_SEALING | MFD_CLOEXEC);
		int ub = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
		struct udmabuf_create c = {.flags = UDMABUF_FLAGS_CLOEXEC, .size = SIZE};
		unsigned char check = 0;
		if (memfd < 0 || ub < 0 || ftruncate(memfd, SIZE) ||
		    fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK))
			return 5;
		c.memfd = memfd; /* a descriptor number of this process, in the argument */
		udma = ioctl(ub, UDMABUF_CREATE, &c);
		printf("udmabuf_create_is_fd=%d\n", udma >= 0 && fcntl(udma, F_GETFD) >= 0);
		map = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, udma, 0);
		printf("udmabuf_mmap=%d\n", map == MAP_FAILED ? -errno : 0);
		if (map == MAP_FAILED)
			return 5;
		memset(map, 0x42, SIZE);
		printf("memfd_sees_write=%d\n", pread(memfd, &check, 1, SIZE - 1) == 1 && check == 0x42);
		close(memfd);
		close(ub);
	}

	copy = dup(buf);
	printf("dup_close_original=%d\n", close(buf));

	pfd[0].fd = copy;
	pfd[0].events = POLLIN;
	r = poll(pfd, 1, 1000);
	printf("poll_dmabuf=%d revents_in=%d\n", r, (pfd[0].revents & POLLIN) != 0);

	pfd[0].fd = fd;
	pfd[0].events = POLLIN; /* no event queued: times out */
	r = poll(pfd, 1, 50);
	printf("poll_device_idle=%d\n", r);

	if (pipe(pipefd))
		return 6;
	child = fork();
	if (child == 0) {
		/* The child: its own session; the inherited fds and the mapping are shared. */
		struct accel_info q;
		struct accel_info_status st;
		unsigned char *cmap = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, udma, 0);
		int ok = cmap != MAP_FAILED && cmap[0] == 0x42 && cmap[SIZE - 1] == 0x42;
		memset(&q, 0, sizeof(q));
		q.op = ACCEL_INFO_STATUS;
		q.return_pointer = (__u64)(uintptr_t)&st;
		q.return_size = sizeof(st);
		ok = ok && ioctl(fd, ACCEL_IOCTL_INFO, &q) == 0 && st.open_count >= 1;
		if (cmap != MAP_FAILED)
			memset(cmap, 0x99, SIZE);
		usleep(100000);
		if (write(pipefd[1], "x", 1) != 1)
			ok = 0;
		_exit(ok ? 0 : 1);
	}
	close(pipefd[1]);
	pfd[0].fd = fd;
	pfd[0].events = POLLIN;
	pfd[1].fd = pipefd[0];
	pfd[1].events = POLLIN;
	r = poll(pfd, 2, 5000);
	printf("poll_mixed=%d device=%d pipe=%d\n", r, pfd[0].revents, (pfd[1].revents & POLLIN) != 0);
	waitpid(child, &status, 0);
	printf("child_status=%d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	printf("child_wrote=%d\n", map[0] == 0x99 && map[SIZE - 1] == 0x99);
	printf("munmap=%d\n", munmap(map, SIZE));
	printf("close_copy=%d\n", close(copy));
	printf("close_udmabuf=%d\n", close(udma));
	return close(fd) == 0 ? 0 : 7;
}
