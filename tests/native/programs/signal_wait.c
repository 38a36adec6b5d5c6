/* A signal interrupts a wait ioctl blocked in the server: the library passes the
 * signal on, the server ends the wait, and the ioctl fails with EINTR, as a
 * handler without SA_RESTART makes it in the kernel. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "kfd_like.h"

static int kfd;
static uint32_t event_id;
static volatile sig_atomic_t handled;
static int wait_ret, wait_errno;
static volatile int done;

static void on_usr1(int sig)
{
	(void)sig;
	handled = 1;
}

static void *waiter(void *arg)
{
	struct kfd_event_data ev;
	struct kfd_ioctl_wait_events_args w;
	(void)arg;
	memset(&ev, 0, sizeof(ev));
	ev.event_id = event_id;
	memset(&w, 0, sizeof(w));
	w.events_ptr = (uint64_t)(uintptr_t)&ev;
	w.num_events = 1;
	w.wait_for_all = 1;
	w.timeout = KFD_EVENT_TIMEOUT_INFINITE;
	wait_ret = ioctl(kfd, DRM_IOCTL_KFD_WAIT_EVENTS, &w);
	wait_errno = errno;
	done = 1;
	return NULL;
}

int main(void)
{
	struct sigaction sa;
	struct kfd_ioctl_create_event_args ce;
	pthread_t t;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1; /* no SA_RESTART */
	sigaction(SIGUSR1, &sa, NULL);
	kfd = open("/dev/kfd", O_RDWR | O_CLOEXEC);
	if (kfd < 0)
		return 2;
	memset(&ce, 0, sizeof(ce));
	ce.event_type = KFD_IOC_EVENT_SIGNAL;
	if (ioctl(kfd, DRM_IOCTL_KFD_CREATE_EVENT, &ce))
		return 3;
	event_id = ce.event_id;
	pthread_create(&t, NULL, waiter, NULL);
	/* Signal until the wait returns: whenever a signal lands (before the server
	 * starts waiting or during the wait), the wait ends with EINTR. */
	while (!done) {
		pthread_kill(t, SIGUSR1);
		usleep(50000);
	}
	pthread_join(t, NULL);
	printf("handled=%d\n", (int)handled);
	printf("wait=%d errno=%s\n", wait_ret, strerrorname_np(wait_errno));
	return close(kfd) == 0 ? 0 : 4;
}
