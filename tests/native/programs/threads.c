/* Threads share the session: one blocks in a kfd WAIT_EVENTS with no timeout
 * while four others make INFO ioctls with their own answer buffers; only after
 * they all finish is the event set, which ends the wait.  If a blocked call held
 * the others up, this program would never finish. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "kfd_like.h"

#define THREADS 4
#define CALLS 300

static int accel, kfd;
static uint32_t event_id;
static int good[THREADS];
static int wait_ret = -1;
static uint32_t wait_result = 99;

static void *info_loop(void *arg)
{
	int t = (int)(intptr_t)arg, i;
	for (i = 0; i < CALLS; i++) {
		struct accel_info_device dev;
		struct accel_info q = {.op = ACCEL_INFO_DEVICE, .return_size = sizeof(dev)};
		memset(&dev, 0, sizeof(dev));
		q.return_pointer = (__u64)(uintptr_t)&dev;
		if (ioctl(accel, ACCEL_IOCTL_INFO, &q) == 0 && q.actual_size == sizeof(dev) &&
		    strcmp(dev.driver, "kfd_like") == 0)
			good[t]++;
	}
	return NULL;
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
	wait_result = w.wait_result;
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th[THREADS], wt;
	struct kfd_ioctl_create_event_args ce;
	struct kfd_ioctl_set_event_args se;
	int i, total = 0;

	if (argc != 2)
		return 2;
	kfd = open("/dev/kfd", O_RDWR | O_CLOEXEC);
	accel = open(argv[1], O_RDWR | O_CLOEXEC);
	if (kfd < 0 || accel < 0)
		return 3;
	memset(&ce, 0, sizeof(ce));
	ce.event_type = KFD_IOC_EVENT_SIGNAL;
	ce.auto_reset = 1;
	printf("create_event=%d\n", ioctl(kfd, DRM_IOCTL_KFD_CREATE_EVENT, &ce));
	event_id = ce.event_id;
	pthread_create(&wt, NULL, waiter, NULL);
	usleep(20000); /* let it block (not needed for correctness) */
	for (i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, info_loop, (void *)(intptr_t)i);
	for (i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		total += good[i];
	}
	printf("info_good=%d of %d\n", total, THREADS * CALLS);
	printf("waiter_still_blocked=%d\n", wait_ret == -1 && wait_result == 99);
	memset(&se, 0, sizeof(se));
	se.event_id = event_id;
	printf("set_event=%d\n", ioctl(kfd, DRM_IOCTL_KFD_SET_EVENT, &se));
	pthread_join(wt, NULL);
	printf("wait=%d result=%u\n", wait_ret, wait_result);
	close(accel);
	return close(kfd) == 0 ? 0 : 4;
}
