/* The preload library's session handles (protocol v2): a descriptor's file is
 * named by its handle once the server has seen it, and a descriptor number that
 * stops naming a file forgets it.  argv[1] is the scenario, argv[2] and argv[3]
 * the nodes of two devices.  Each ioctl is the core INFO DEVICE, which answers
 * the minor of the device the call reached; lines are key=value. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include "accel.h"

/* The minor of the device fd's call reached, or -errno. */
static int minor_of(int fd)
{
	struct accel_info_device dev;
	struct accel_info q;
	memset(&dev, 0, sizeof(dev));
	memset(&q, 0, sizeof(q));
	q.op = ACCEL_INFO_DEVICE;
	q.return_pointer = (__u64)(unsigned long)&dev;
	q.return_size = sizeof(dev);
	if (ioctl(fd, ACCEL_IOCTL_INFO, &q) < 0)
		return -errno;
	return (int)dev.minor;
}

/* A copy of fd received with SCM_RIGHTS through a socket pair: a descriptor
 * the library did not see being made (it must learn its file's handle). */
static int passed_copy(int fd)
{
	int sv[2], got = -1;
	char byte = 'x', cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {&byte, 1};
	struct msghdr mh;
	struct cmsghdr *c;
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) < 0)
		return -1;
	memset(&mh, 0, sizeof(mh));
	memset(cbuf, 0, sizeof(cbuf));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf;
	mh.msg_controllen = sizeof(cbuf);
	c = CMSG_FIRSTHDR(&mh);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sv[0], &mh, 0) == 1) {
		mh.msg_controllen = sizeof(cbuf);
		if (recvmsg(sv[1], &mh, 0) == 1 && (c = CMSG_FIRSTHDR(&mh)) &&
		    c->cmsg_type == SCM_RIGHTS)
			memcpy(&got, CMSG_DATA(c), sizeof(int));
	}
	close(sv[0]);
	close(sv[1]);
	return got;
}

/* race: a thread's first calls on a passed copy while the main thread closes
 * the file's last proven descriptor (its CLOSE forgets the handle the thread's
 * first answer may name). */
static int race_fd, race_bad;
static void *race_thread(void *arg)
{
	int m1 = minor_of(race_fd), m2 = minor_of(race_fd);
	if (m1 != *(int *)arg || m2 != *(int *)arg)
		__atomic_add_fetch(&race_bad, 1, __ATOMIC_RELAXED);
	return NULL;
}

int main(int argc, char **argv)
{
	const char *what = argc > 3 ? argv[1] : "";
	int a, b, i;

	printf("pid=%d\n", (int)getpid());
	if (!strcmp(what, "repeat")) {
		/* Opened: the handle comes with OPEN's answer.  Passed: learned from
		 * the first call's answer. */
		a = open(argv[2], O_RDWR);
		b = passed_copy(a);
		printf("fds=%d %d\n", a, b);
		for (i = 0; i < 5; i++)
			printf("opened_%d=%d\n", i, minor_of(a));
		for (i = 0; i < 5; i++)
			printf("passed_%d=%d\n", i, minor_of(b));
		printf("close=%d %d\n", close(b), close(a));
	} else if (!strcmp(what, "reuse")) {
		/* A number that names another file after close (or dup2 onto it)
		 * reaches the new file. */
		int other;
		a = open(argv[2], O_RDWR);
		printf("opened_before=%d\n", minor_of(a));
		close(a);
		other = open(argv[3], O_RDWR); /* the lowest free number: a's */
		printf("opened_same_number=%d\n", other == a);
		printf("opened_after_close=%d\n", minor_of(other));
		a = open(argv[2], O_RDWR);
		b = passed_copy(a);
		printf("passed_before=%d\n", minor_of(b)); /* b's handle is learned */
		close(b);
		i = passed_copy(other); /* the socket pair takes the numbers below b's */
		printf("passed_same_number=%d\n", i == b);
		printf("passed_after_close=%d\n", minor_of(i));
		printf("dup2=%d\n", dup2(a, i) == i); /* i: other's file, then a's */
		printf("after_dup2=%d\n", minor_of(i));
		printf("close=%d %d %d\n", close(i), close(a), close(other));
	} else if (!strcmp(what, "range")) {
		/* close_range and closefrom close as close() does (and leave the
		 * library's own session socket alone). */
		int other = open(argv[3], O_RDWR);
		a = open(argv[2], O_RDWR);
		b = passed_copy(a);
		printf("before=%d\n", minor_of(b));
		printf("close_range=%d\n", close_range((unsigned)b, ~0U, 0));
		i = passed_copy(other);
		printf("range_same_number=%d\n", i == b);
		printf("after_close_range=%d\n", minor_of(i));
		dup2(a, i);
		printf("before_closefrom=%d\n", minor_of(i));
		closefrom(i);
		i = passed_copy(other);
		printf("closefrom_same_number=%d\n", i == b);
		printf("after_closefrom=%d\n", minor_of(i));
		printf("session_alive=%d\n", minor_of(a));
		printf("close=%d %d %d\n", close(i), close(a), close(other));
	} else if (!strcmp(what, "race")) {
		int want, n;
		a = open(argv[2], O_RDWR);
		want = minor_of(a);
		close(a);
		for (n = 0; n < 200; n++) {
			pthread_t t;
			a = open(argv[2], O_RDWR);
			race_fd = passed_copy(a);
			if (pthread_create(&t, NULL, race_thread, &want))
				return 3;
			close(a); /* the last descriptor with a's handle: CLOSE forgets it */
			pthread_join(t, NULL);
			close(race_fd);
		}
		printf("race_minor=%d\nrace_bad=%d\n", want, race_bad);
	} else if (!strcmp(what, "dup")) {
		/* Copies share the handle; only the last one's CLOSE forgets it. */
		int c, d;
		a = open(argv[2], O_RDWR);
		b = dup(a);
		c = fcntl(a, F_DUPFD_CLOEXEC, 20);
		d = dup3(a, 30, O_CLOEXEC);
		printf("fds=%d %d %d %d\n", a, b, c, d);
		printf("close_original=%d\n", close(a));
		printf("dup=%d\nfdupfd=%d\ndup3=%d\n", minor_of(b), minor_of(c), minor_of(d));
		printf("close_copies=%d %d\n", close(b), close(c));
		printf("last=%d\n", minor_of(d));
		printf("close_last=%d\n", close(d));
	} else if (!strcmp(what, "fork")) {
		/* The child's session is its own: the handles it inherited in memory
		 * are the parent's session's, and must not be used on its own.  It
		 * opens another device first, so that its session's first handle is
		 * that device's. */
		int status = -1;
		pid_t child;
		a = open(argv[2], O_RDWR);
		printf("parent_before=%d\n", minor_of(a));
		fflush(stdout);
		child = fork();
		if (child == 0) {
			int other = open(argv[3], O_RDWR);
			printf("child_pid=%d\n", (int)getpid());
			printf("child_other=%d\n", minor_of(other));
			printf("child_inherited=%d\n", minor_of(a));
			printf("child_inherited_again=%d\n", minor_of(a));
			close(other);
			close(a);
			fflush(stdout);
			_exit(0);
		}
		waitpid(child, &status, 0);
		printf("child_status=%d\n", status);
		printf("parent_after=%d\n", minor_of(a));
		close(a);
	} else if (!strcmp(what, "far")) {
		/* A number past the library's handle cache keeps sending its
		 * descriptor, and works. */
		struct rlimit rl;
		a = open(argv[2], O_RDWR);
		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 9000 && rl.rlim_max >= 9000) {
			rl.rlim_cur = 9000;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
		b = fcntl(a, F_DUPFD, 8000);
		printf("far_fd=%d\n", b);
		if (b >= 0) {
			close(a);
			for (i = 0; i < 3; i++)
				printf("far_%d=%d\n", i, minor_of(b));
			printf("close=%d\n", close(b));
		}
	} else {
		fprintf(stderr, "usage: handles repeat|reuse|range|race|dup|fork|far NODE OTHER_NODE\n");
		return 2;
	}
	return 0;
}
