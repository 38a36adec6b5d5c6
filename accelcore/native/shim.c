/* SPDX-License-Identifier: MIT */
/*
 * accelcore's LD_PRELOAD library: unmodified native programs on the simulated
 * devices of an accelcore devfs server (`accelctl run -- PROG`).
 *
 * It intercepts open/openat/close/close_range/closefrom/dup/dup2/dup3/fcntl/
 * ioctl/mmap/munmap/read/poll on the server's device nodes (/dev/accel/accelN,
 * /dev/udmabuf, /dev/kfd, ...: whatever the server serves, a socket under its
 * runtime directory) and on the
 * files the server hands out (dma-bufs), and speaks the server's protocol
 * (accelcore/server/protocol.py) in native client mode: the server reads and
 * writes this process's memory itself (process_vm_readv/writev), so an ioctl is
 * one request and one reply, whatever pointers its argument holds, and once the
 * server has named a descriptor's file by a session handle (protocol v2) the
 * request carries the handle instead of the descriptor (the handle cache below).
 * Everything else goes to libc (dlsym(RTLD_NEXT)).
 *
 * Descriptors are real: a device fd is the connection to the node's socket, a
 * dma-buf fd the socket the server passed; dup, fork and SCM_RIGHTS share them.
 * mmap maps the memfd the server passes (shared with the server, not copied).
 *
 * Threads: requests carry ids; one waiting thread reads replies for all and
 * hands each to its caller (per-thread request matching).  libc only.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

/* --- the protocol (accelcore/server/protocol.py) --------------------------- */
#define PROTO_VERSION 2
#define MAX_MESSAGE 65536
#define MAX_FDS 16
#define TOKEN_SIZE 16
#define PLACEHOLDER_BASE 0x7ACC0000
#define HEADER_SIZE 24
enum {
	T_HELLO = 1, T_ADD_ARENA = 2, T_OPEN = 3, T_IOCTL = 4, T_MMAP = 5, T_MUNMAP = 6, T_READ = 7,
	T_POLL = 8, T_SIGNAL = 9, T_CLOSE = 11, T_WELCOME = 64, T_RESULT = 65, T_MAPPED = 66, T_DATA = 67,
};
#define HELLO_NATIVE 2u
#define ARENA_BIT (1ULL << 63)
/* RESULT: ret i64, errno i32, nfds u32, mlen u32, handle u32; nfds i32; message. */
#define RESULT_FIXED 24

struct hdr {
	char magic[4];
	uint16_t version;
	uint16_t type;
	uint32_t flags;
	uint32_t length;
	uint64_t rid;
} __attribute__((packed));

/* --- libc ------------------------------------------------------------------- */
static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);
static ssize_t (*real_read)(int, void *, size_t);
static int (*real_poll)(struct pollfd *, nfds_t, int);
static int (*real_close_range)(unsigned int, unsigned int, int);
static void (*real_closefrom)(int);

#define RESOLVE(name) (real_##name = dlsym(RTLD_NEXT, #name))
static void resolve_all(void)
{
	RESOLVE(open); RESOLVE(openat); RESOLVE(close); RESOLVE(dup); RESOLVE(dup2);
	RESOLVE(dup3); RESOLVE(fcntl); RESOLVE(ioctl); RESOLVE(mmap); RESOLVE(munmap);
	RESOLVE(read); RESOLVE(poll); RESOLVE(close_range); RESOLVE(closefrom);
}
static pthread_once_t resolve_once = PTHREAD_ONCE_INIT;
#define REAL(name) (real_##name ? real_##name : (pthread_once(&resolve_once, resolve_all), real_##name))

/* --- state ------------------------------------------------------------------ */
static char rt_dir[PATH_MAX];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* session setup, mappings */
static int sess_fd = -1;
static pid_t server_pid;
static unsigned char token[TOKEN_SIZE];
static unsigned generation; /* bumped in a forked child: the parent's session is not ours */
static int warned;

/* fd kinds: what each descriptor number is, learned once (no per-call fstat). */
#define FD_TABLE 65536
enum { K_UNKNOWN = 0, K_OURS = 1, K_OTHER = 2, K_MASK = 3, K_NONBLOCK = 4 };
static unsigned char fdk[FD_TABLE];

/* Session handles (protocol v2): once the server has seen a descriptor's file
 * (OPEN's RESULT, or the first request that carried the descriptor), requests
 * name it by the handle the RESULT gave, and the descriptor no longer travels.
 * Per descriptor number below HANDLE_SLOTS (a number above just keeps sending
 * its descriptor): the handle of its file, 0 if not known; and a sequence
 * number bumped whenever the number stops naming its file (close, dup2/dup3
 * onto it), so that a handle learned by a call that raced with such a change
 * is not stored (it would name the old file).  copies made by dup share their
 * file's handle; the process's last descriptor of a file going sends CLOSE
 * with forget, and its handle lapses in the server.  h_forgets counts CLOSEs
 * with forget in flight and h_epoch is bumped as each starts and ends: a handle
 * learned while one was in flight may be the one being forgotten, so it is not
 * stored either.  All under h_lock (never held across I/O); emptied in a forked
 * child, whose session is a new one. */
#define HANDLE_SLOTS 4096
struct hslot {
	uint32_t handle;
	uint32_t seq;
};
static pthread_mutex_t h_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hslot hslots[HANDLE_SLOTS];
static int h_top; /* every slot with a handle is below it (the scan for other copies) */
static unsigned h_forgets, h_epoch;
/* What a request read before it was sent: its target's handle and the state it
 * must find unchanged to store the handle its RESULT names. */
struct hsnap {
	uint32_t handle, seq;
	unsigned epoch;
};

/* Replies are matched to callers by request id. */
struct waiter {
	uint64_t rid;
	struct waiter *next;
	int done;
	int err;          /* transport error (errno) */
	uint16_t type;
	char *body;       /* caller's buffer */
	size_t cap;
	size_t len;
	int fds[MAX_FDS];
	int nfds;
};
static pthread_mutex_t ch_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ch_cond = PTHREAD_COND_INITIALIZER;
static struct waiter *waiters;
static int ch_reading, ch_dead;
static uint64_t next_rid = 1;
static char *rbuf;

struct mapping {
	char *user;
	char *base;
	size_t total;
	uint64_t id;
	unsigned gen;
	struct mapping *next;
};
static struct mapping *mappings;

static void warn_once(const char *fmt, const char *detail)
{
	if (!warned) {
		warned = 1;
		fprintf(stderr, "accelcore shim: ");
		fprintf(stderr, fmt, detail);
		fputc('\n', stderr);
	}
}

static void set_kind(int fd, unsigned char k)
{
	if (fd >= 0 && fd < FD_TABLE)
		fdk[fd] = k;
}

/* --- the handle cache ------------------------------------------------------- */
static void handle_snap(int fd, struct hsnap *s)
{
	s->handle = 0;
	s->seq = 0;
	s->epoch = 0;
	if (fd < 0 || fd >= HANDLE_SLOTS)
		return;
	pthread_mutex_lock(&h_lock);
	s->handle = hslots[fd].handle;
	s->seq = hslots[fd].seq;
	s->epoch = h_epoch;
	pthread_mutex_unlock(&h_lock);
}

static void put_handle(int fd, uint32_t h)
{
	hslots[fd].handle = h;
	if (h && fd >= h_top)
		h_top = fd + 1;
}

/* Store the handle a RESULT named for fd, if fd still names the file the request
 * was sent for (s taken before the request) and no CLOSE with forget was in
 * flight meanwhile. */
static void learn_handle(int fd, uint32_t h, const struct hsnap *s)
{
	if (!h || fd < 0 || fd >= HANDLE_SLOTS)
		return;
	pthread_mutex_lock(&h_lock);
	if (hslots[fd].seq == s->seq && h_epoch == s->epoch && !h_forgets &&
	    (fdk[fd] & K_MASK) == K_OURS)
		put_handle(fd, h);
	pthread_mutex_unlock(&h_lock);
}

/* The handle of a file just opened at fd (OPEN's RESULT): a new file. */
static void set_handle(int fd, uint32_t h)
{
	if (fd < 0 || fd >= HANDLE_SLOTS)
		return;
	pthread_mutex_lock(&h_lock);
	hslots[fd].seq++;
	put_handle(fd, h);
	pthread_mutex_unlock(&h_lock);
}

/* dup: to names from's file (s taken from from before the copy was made). */
static void copy_handle(int from, int to, const struct hsnap *s)
{
	if (to < 0 || to >= HANDLE_SLOTS)
		return;
	pthread_mutex_lock(&h_lock);
	hslots[to].seq++;
	put_handle(to, from >= 0 && from < HANDLE_SLOTS && from != sess_fd &&
			       hslots[from].seq == s->seq ? hslots[from].handle : 0);
	pthread_mutex_unlock(&h_lock);
}

/* fd stops naming its file (it is being closed, or replaced by dup2/dup3).
 * Returns 1 if it was the process's last descriptor with that file's handle:
 * the caller then sends CLOSE with forget and calls forget_done() after. */
static int untrack_handle(int fd)
{
	uint32_t h;
	int i, last = 0;
	if (fd < 0 || fd >= HANDLE_SLOTS)
		return 0;
	pthread_mutex_lock(&h_lock);
	h = hslots[fd].handle;
	hslots[fd].handle = 0;
	hslots[fd].seq++;
	while (h_top > 0 && !hslots[h_top - 1].handle)
		h_top--;
	if (h) {
		last = 1;
		for (i = 0; i < h_top; i++)
			if (hslots[i].handle == h) {
				last = 0;
				break;
			}
		if (last) {
			h_forgets++;
			h_epoch++;
		}
	}
	pthread_mutex_unlock(&h_lock);
	return last;
}

static void forget_done(void)
{
	pthread_mutex_lock(&h_lock);
	h_forgets--;
	h_epoch++;
	pthread_mutex_unlock(&h_lock);
}

/* fork: the table is consistent while the child copies it, and the child's is
 * emptied (its session will be a new one: the parent's handles are not its). */
static void before_fork(void)
{
	pthread_mutex_lock(&h_lock);
}

static void after_fork_parent(void)
{
	pthread_mutex_unlock(&h_lock);
}

static void after_fork_child(void)
{
	memset(hslots, 0, sizeof(hslots));
	h_top = 0;
	h_forgets = 0;
	h_epoch++;
	pthread_mutex_unlock(&h_lock);
	/* The child does not speak on its parent's session: it starts its own at its
	 * first call.  Inherited descriptors and mappings stay (they are shared). */
	pthread_mutex_init(&g_lock, NULL);
	pthread_mutex_init(&ch_lock, NULL);
	pthread_cond_init(&ch_cond, NULL);
	if (sess_fd >= 0) {
		REAL(close)(sess_fd);
		set_kind(sess_fd, K_UNKNOWN);
	}
	sess_fd = -1;
	waiters = NULL;
	ch_reading = ch_dead = 0;
	generation++;
}

__attribute__((constructor)) static void shim_init(void)
{
	const char *env = getenv("ACCEL_RUNTIME_DIR");
	pthread_once(&resolve_once, resolve_all);
	if (env && *env) {
		snprintf(rt_dir, sizeof(rt_dir), "%s", env);
	} else if ((env = getenv("XDG_RUNTIME_DIR")) && *env) {
		snprintf(rt_dir, sizeof(rt_dir), "%s/accelcore", env);
	} else {
		const char *tmp = getenv("TMPDIR");
		snprintf(rt_dir, sizeof(rt_dir), "%s/accelcore-%u", tmp && *tmp ? tmp : "/tmp",
			 (unsigned)getuid());
	}
	pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

/* --- records ---------------------------------------------------------------- */
static int send_rec(int sock, uint16_t type, uint64_t rid, const void *body, uint32_t blen,
		    const int *fds, int nfds)
{
	struct hdr h;
	struct iovec iov[2];
	struct msghdr mh;
	char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	memcpy(h.magic, "ACSV", 4);
	h.version = PROTO_VERSION;
	h.type = type;
	h.flags = 0;
	h.length = blen;
	h.rid = rid;
	iov[0].iov_base = &h;
	iov[0].iov_len = HEADER_SIZE;
	iov[1].iov_base = (void *)body;
	iov[1].iov_len = blen;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = iov;
	mh.msg_iovlen = blen ? 2 : 1;
	if (nfds) {
		struct cmsghdr *c;
		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	for (;;) {
		ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (n >= 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

/* One record; returns its length (header included), 0 at end of file, -1 on error.
 * Descriptors land in fds (close-on-exec). */
static ssize_t recv_rec(int sock, char *buf, size_t cap, int *fds, int *nfds)
{
	struct iovec iov = {buf, cap};
	struct msghdr mh;
	char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
	ssize_t n;
	struct cmsghdr *c;
	memset(&mh, 0, sizeof(mh));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf;
	mh.msg_controllen = sizeof(cbuf);
	n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	*nfds = 0;
	if (n < 0)
		return -1;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			int i;
			for (i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (*nfds < MAX_FDS)
					fds[(*nfds)++] = fd;
				else
					REAL(close)(fd);
			}
		}
	}
	if ((mh.msg_flags & MSG_TRUNC) || (size_t)n < (n ? HEADER_SIZE : 0)) {
		int i;
		for (i = 0; i < *nfds; i++)
			REAL(close)(fds[i]);
		*nfds = 0;
		errno = EPROTO;
		return -1;
	}
	return n;
}

static void close_fds(const int *fds, int n)
{
	int i;
	for (i = 0; i < n; i++)
		REAL(close)(fds[i]);
}

/* --- the session -------------------------------------------------------------- */
static int ensure_session(void)
{
	struct sockaddr_un sa;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	char buf[4096 + 64];
	int fds[MAX_FDS], nfds, s, hi;
	uint32_t flags = HELLO_NATIVE;
	ssize_t n;
	struct hdr h;

	if (sess_fd >= 0)
		return 0;
	pthread_mutex_lock(&g_lock);
	if (sess_fd >= 0) {
		pthread_mutex_unlock(&g_lock);
		return 0;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/control", rt_dir) >=
	    (int)sizeof(sa.sun_path)) {
		warn_once("runtime directory %s is too long for a socket path", rt_dir);
		errno = ENAMETOOLONG;
		goto fail;
	}
	s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (s < 0)
		goto fail;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		warn_once("no accelcore server at %s (start one: accelctl sim start)", rt_dir);
		REAL(close)(s);
		errno = ENODEV;
		goto fail;
	}
	/* Out of the way of the program's own descriptor numbers. */
	hi = REAL(fcntl)(s, F_DUPFD_CLOEXEC, 1000);
	if (hi >= 0) {
		REAL(close)(s);
		s = hi;
	}
	if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
		server_pid = cred.pid;
	/* Yama ptrace_scope 1: let the server read our memory (process_vm_readv). */
	prctl(PR_SET_PTRACER, (unsigned long)server_pid, 0, 0, 0);
	if (send_rec(s, T_HELLO, 1, &flags, sizeof(flags), NULL, 0) < 0)
		goto fail_close;
	for (;;) {
		n = recv_rec(s, buf, sizeof(buf), fds, &nfds);
		if (n < 0 && errno == EINTR)
			continue;
		break;
	}
	close_fds(fds, nfds);
	if (n < HEADER_SIZE) {
		errno = n < 0 ? errno : ECONNRESET;
		goto fail_close;
	}
	memcpy(&h, buf, HEADER_SIZE);
	if (h.type == T_RESULT && n >= HEADER_SIZE + RESULT_FIXED) {
		int32_t err;
		uint32_t nph;
		memcpy(&err, buf + HEADER_SIZE + 8, 4);
		memcpy(&nph, buf + HEADER_SIZE + 12, 4);
		buf[n < (ssize_t)sizeof(buf) ? n : (ssize_t)sizeof(buf) - 1] = 0;
		warn_once("the server refused native client mode: %s",
			  nph <= MAX_FDS && HEADER_SIZE + RESULT_FIXED + 4 * nph <= (size_t)n
				  ? buf + HEADER_SIZE + RESULT_FIXED + 4 * nph
				  : "(malformed reply)");
		REAL(close)(s);
		errno = err ? err : EPERM;
		goto fail;
	}
	if (h.type != T_WELCOME || n < HEADER_SIZE + TOKEN_SIZE + 8) {
		errno = EPROTO;
		goto fail_close;
	}
	memcpy(token, buf + HEADER_SIZE, TOKEN_SIZE);
	if (!rbuf)
		rbuf = malloc(MAX_MESSAGE + 1);
	if (!rbuf) {
		errno = ENOMEM;
		goto fail_close;
	}
	ch_dead = 0;
	set_kind(s, K_OTHER);
	sess_fd = s;
	pthread_mutex_unlock(&g_lock);
	return 0;
fail_close:
	{
		int e = errno;
		REAL(close)(s);
		errno = e;
	}
fail:
	pthread_mutex_unlock(&g_lock);
	return -1;
}

/* Send a request and wait for its reply; 0 or -1 with errno (transport failure).
 * On success w holds the reply (type, body, descriptors). */
static int call(uint16_t type, const void *body, uint32_t blen, const int *fds, int nfds,
		struct waiter *w)
{
	int s;
	if (ensure_session() < 0)
		return -1;
	s = sess_fd;
	pthread_mutex_lock(&ch_lock);
	w->rid = ++next_rid;
	w->done = 0;
	w->err = 0;
	w->nfds = 0;
	w->len = 0;
	w->next = waiters;
	waiters = w;
	pthread_mutex_unlock(&ch_lock);
	if (send_rec(s, type, w->rid, body, blen, fds, nfds) < 0) {
		w->err = errno;
		w->done = 1;
	}
	pthread_mutex_lock(&ch_lock);
	while (!w->done) {
		if (ch_dead) {
			w->err = ECONNRESET;
			break;
		}
		if (!ch_reading) {
			int rfds[MAX_FDS], rn;
			ssize_t n;
			struct hdr h;
			struct waiter *it;
			ch_reading = 1;
			pthread_mutex_unlock(&ch_lock);
			n = recv_rec(s, rbuf, MAX_MESSAGE + 1, rfds, &rn);
			if (n < 0 && errno == EINTR) {
				/* A signal: interrupt the wait in the server too (EINTR). */
				send_rec(s, T_SIGNAL, 0, NULL, 0, NULL, 0);
				pthread_mutex_lock(&ch_lock);
				ch_reading = 0;
				continue;
			}
			pthread_mutex_lock(&ch_lock);
			ch_reading = 0;
			if (n <= 0) {
				ch_dead = 1;
				pthread_cond_broadcast(&ch_cond);
				continue;
			}
			memcpy(&h, rbuf, HEADER_SIZE);
			for (it = waiters; it; it = it->next)
				if (it->rid == h.rid && !it->done)
					break;
			if (!it || h.length + HEADER_SIZE != (size_t)n) {
				close_fds(rfds, rn);
			} else {
				it->type = h.type;
				if (h.length > it->cap) {
					it->err = EPROTO;
					close_fds(rfds, rn);
				} else {
					memcpy(it->body, rbuf + HEADER_SIZE, h.length);
					it->len = h.length;
					memcpy(it->fds, rfds, sizeof(int) * rn);
					it->nfds = rn;
				}
				it->done = 1;
			}
			pthread_cond_broadcast(&ch_cond);
			continue;
		}
		pthread_cond_wait(&ch_cond, &ch_lock);
	}
	/* unlink */
	{
		struct waiter **pp;
		for (pp = &waiters; *pp; pp = &(*pp)->next)
			if (*pp == w) {
				*pp = w->next;
				break;
			}
	}
	pthread_mutex_unlock(&ch_lock);
	if (w->err) {
		close_fds(w->fds, w->nfds);
		w->nfds = 0;
		errno = w->err;
		return -1;
	}
	return 0;
}

/* A RESULT body: ret, errno, placeholders, the target's handle. Returns 0, or
 * -1 if malformed. */
struct result {
	int64_t ret;
	int32_t err;
	uint32_t n;
	uint32_t handle;
	int32_t ph[MAX_FDS];
};
static int parse_result(const struct waiter *w, struct result *r)
{
	uint32_t mlen;
	if (w->type != T_RESULT || w->len < RESULT_FIXED)
		return -1;
	memcpy(&r->ret, w->body, 8);
	memcpy(&r->err, w->body + 8, 4);
	memcpy(&r->n, w->body + 12, 4);
	memcpy(&mlen, w->body + 16, 4);
	memcpy(&r->handle, w->body + 20, 4);
	if (r->n > MAX_FDS || mlen > MAX_MESSAGE ||
	    w->len != RESULT_FIXED + 4 * (size_t)r->n + mlen || (int)r->n != w->nfds)
		return -1;
	memcpy(r->ph, w->body + RESULT_FIXED, 4 * r->n);
	return 0;
}

/* --- which descriptors are ours ----------------------------------------------------- */
/* Whether a server serves the runtime directory (without connecting to it, so a
 * program that never touches a device never starts a session). */
static int server_running(void)
{
	char path[PATH_MAX];
	struct stat st;
	if (sess_fd >= 0)
		return 1;
	if (snprintf(path, sizeof(path), "%s/control", rt_dir) >= (int)sizeof(path))
		return 0;
	return stat(path, &st) == 0 && S_ISSOCK(st.st_mode);
}

static int is_ours(int fd)
{
	unsigned char k;
	struct stat st;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	int ours;
	if (fd < 0)
		return 0;
	k = fd < FD_TABLE ? fdk[fd] & K_MASK : K_UNKNOWN;
	if (k != K_UNKNOWN)
		return k == K_OURS;
	/* Learned once per descriptor number: inherited across exec or received with
	 * SCM_RIGHTS.  Ours are sockets whose peer is the server. */
	ours = 0;
	if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) &&
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && fd != sess_fd &&
	    server_running() && ensure_session() == 0 && cred.pid == server_pid)
		ours = 1;
	set_kind(fd, ours ? K_OURS : K_OTHER);
	return ours;
}

static int node_socket_path(const char *path, char *out, size_t cap)
{
	struct stat st;
	if (!path || strncmp(path, "/dev/", 5) != 0)
		return 0;
	if (snprintf(out, cap, "%s%s", rt_dir, path) >= (int)cap)
		return 0;
	return stat(out, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* open(2) of a node the server serves: connect, OPEN with our end and the token. */
static int open_node(const char *sockpath, const char *path, int flags)
{
	struct sockaddr_un sa;
	struct {
		uint32_t flags, pad;
		unsigned char token[TOKEN_SIZE];
	} __attribute__((packed)) body;
	char buf[4096 + 64];
	int s, fds[MAX_FDS], nfds;
	ssize_t n;
	struct hdr h;
	int32_t err;
	uint32_t handle;

	if (ensure_session() < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (strlen(sockpath) >= sizeof(sa.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa.sun_path, sockpath);
	s = socket(AF_UNIX, SOCK_SEQPACKET | ((flags & O_CLOEXEC) ? SOCK_CLOEXEC : 0), 0);
	if (s < 0)
		return -1;
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		REAL(close)(s);
		errno = (e == EACCES || e == EPERM) ? EACCES : ENOENT;
		return -1;
	}
	body.flags = (uint32_t)(flags & ~O_CLOEXEC);
	body.pad = 0;
	memcpy(body.token, token, TOKEN_SIZE);
	if (send_rec(s, T_OPEN, 1, &body, sizeof(body), &s, 1) < 0)
		goto fail;
	do
		n = recv_rec(s, buf, sizeof(buf), fds, &nfds);
	while (n < 0 && errno == EINTR);
	close_fds(fds, nfds);
	if (n < HEADER_SIZE + RESULT_FIXED) {
		errno = ENODEV;
		goto fail;
	}
	memcpy(&h, buf, HEADER_SIZE);
	memcpy(&err, buf + HEADER_SIZE + 8, 4);
	memcpy(&handle, buf + HEADER_SIZE + 20, 4);
	if (h.type != T_RESULT) {
		errno = EPROTO;
		goto fail;
	}
	if (err) {
		errno = err;
		goto fail;
	}
	(void)path;
	set_kind(s, K_OURS | ((flags & O_NONBLOCK) ? K_NONBLOCK : 0));
	set_handle(s, handle);
	return s;
fail:
	{
		int e = errno;
		REAL(close)(s);
		errno = e;
	}
	return -1;
}

/* --- interposed calls ------------------------------------------------------------- */
static int do_open(int dirfd, const char *path, int flags, mode_t mode, int at)
{
	char sp[PATH_MAX];
	if (path && path[0] == '/' && node_socket_path(path, sp, sizeof(sp)))
		return open_node(sp, path, flags);
	if (at)
		return REAL(openat)(dirfd, path, flags, mode);
	return REAL(open)(path, flags, mode);
}

static mode_t mode_arg(int flags, va_list ap)
{
	if (flags & (O_CREAT | __O_TMPFILE))
		return (mode_t)va_arg(ap, int);
	return 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;
	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	return do_open(AT_FDCWD, path, flags, mode, 0);
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;
	va_start(ap, flags);
	mode = mode_arg(flags, ap);
	va_end(ap);
	return do_open(dirfd, path, flags, mode, 1);
}
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int __open_2(const char *path, int flags)
{
	return do_open(AT_FDCWD, path, flags, 0, 0);
}
int __open64_2(const char *path, int flags) __attribute__((alias("__open_2")));

/* Whether fd is a descriptor already known to be ours (no server check: close
 * and dup2 need no session); its file's identity in st. */
static int known_ours(int fd, struct stat *st)
{
	return fd >= 0 && fd < FD_TABLE && (fdk[fd] & K_MASK) == K_OURS && fstat(fd, st) == 0;
}

/* CLOSE after a descriptor of ours (file st) was closed: if that was the last
 * copy anywhere, the server releases the file before replying, so close()
 * returns after the release, as the kernel's.  forget: it was this process's
 * last descriptor with the file's handle (the handle lapses). */
static void send_close(const struct stat *st, int forget)
{
	struct {
		uint64_t dev, ino;
		uint32_t forget, pad;
	} __attribute__((packed)) body;
	char reply[4096 + 128];
	struct waiter w;
	int saved = errno;
	body.dev = (uint64_t)st->st_dev;
	body.ino = (uint64_t)st->st_ino;
	body.forget = forget ? 1 : 0;
	body.pad = 0;
	w.body = reply;
	w.cap = sizeof(reply);
	if (call(T_CLOSE, &body, sizeof(body), NULL, 0, &w) == 0)
		close_fds(w.fds, w.nfds);
	errno = saved;
}

int close(int fd)
{
	struct stat st;
	int ours, r, last;
	if (fd >= 0 && fd == sess_fd) {
		errno = EBADF; /* the program never opened it */
		return -1;
	}
	ours = known_ours(fd, &st);
	set_kind(fd, K_UNKNOWN);
	last = untrack_handle(fd);
	r = REAL(close)(fd);
	/* Linux frees the number whatever close returns, but for EBADF. */
	if (ours && (r == 0 || errno != EBADF))
		send_close(&st, last);
	if (last)
		forget_done();
	return r;
}

/* close_range/closefrom: every number in [lo, hi] stops naming its file, as
 * with close() (the server's are CLOSEd after), but the session's socket,
 * which the program never opened, stays: the range is closed around it. */
struct gone {
	struct stat st;
	int last;
};

static int sys_close_range(unsigned lo, unsigned hi, unsigned flags)
{
	if (real_close_range)
		return real_close_range(lo, hi, (int)flags);
#ifdef SYS_close_range
	return (int)syscall(SYS_close_range, lo, hi, flags);
#else
	errno = ENOSYS;
	return -1;
#endif
}

static int range_close(unsigned lo, unsigned hi, unsigned flags, int from)
{
	struct gone *gone = NULL;
	size_t n = 0, cap = 0, i;
	unsigned fd, top = hi < FD_TABLE - 1 ? hi : FD_TABLE - 1;
	int r = 0, s = sess_fd;

	if (lo > hi) {
		errno = EINVAL;
		return -1;
	}
	if (!(flags & CLOSE_RANGE_CLOEXEC)) {
		for (fd = lo; fd <= top; fd++) {
			struct stat st;
			int ours;
			if ((int)fd == s || !fdk[fd])
				continue;
			ours = known_ours((int)fd, &st);
			set_kind((int)fd, K_UNKNOWN);
			if (!ours) {
				untrack_handle((int)fd);
				continue;
			}
			if (n == cap) {
				size_t more_cap = cap ? 2 * cap : 16;
				struct gone *more = realloc(gone, more_cap * sizeof(*gone));
				if (!more) { /* no CLOSE: released when the server sees it go */
					untrack_handle((int)fd);
					continue;
				}
				gone = more;
				cap = more_cap;
			}
			gone[n].st = st;
			gone[n].last = untrack_handle((int)fd);
			n++;
		}
	}
	if (s >= 0 && (unsigned)s >= lo && (unsigned)s <= hi) {
		if ((unsigned)s > lo)
			r = sys_close_range(lo, (unsigned)s - 1, flags);
		if (r == 0 && (unsigned)s < hi)
			r = sys_close_range((unsigned)s + 1, hi, flags);
	} else {
		r = sys_close_range(lo, hi, flags);
	}
	if (r < 0 && from) {
		/* closefrom without close_range(2): glibc's own (it scans /proc). */
		if (!REAL(closefrom)) {
			errno = ENOSYS;
			return -1;
		}
		if (s < 0 || (unsigned)s < lo) {
			real_closefrom((int)lo);
		} else {
			for (fd = lo; fd < (unsigned)s; fd++)
				REAL(close)((int)fd);
			real_closefrom(s + 1);
		}
		r = 0;
	}
	for (i = 0; i < n; i++) {
		if (r == 0)
			send_close(&gone[i].st, gone[i].last);
		if (gone[i].last)
			forget_done();
	}
	free(gone);
	return r;
}

int close_range(unsigned int lo, unsigned int hi, int flags)
{
	return range_close(lo, hi, (unsigned)flags, 0);
}

void closefrom(int lo)
{
	if (lo < 0)
		lo = 0;
	range_close((unsigned)lo, ~0U, 0, 1);
}

static void copy_kind(int from, int to)
{
	if (to >= 0 && to < FD_TABLE)
		fdk[to] = (from >= 0 && from < FD_TABLE && from != sess_fd) ? fdk[from] : K_UNKNOWN;
}

int dup(int fd)
{
	struct hsnap s;
	int r;
	handle_snap(fd, &s);
	r = REAL(dup)(fd);
	if (r >= 0) {
		copy_kind(fd, r);
		copy_handle(fd, r, &s);
	}
	return r;
}

/* dup2/dup3 onto `to`: whatever `to` named is closed (as close() would). */
static int dup_onto(int fd, int to, int flags, int three)
{
	struct stat st;
	struct hsnap s;
	int r, ours, last;
	ours = known_ours(to, &st);
	handle_snap(fd, &s);
	last = untrack_handle(to);
	r = three ? REAL(dup3)(fd, to, flags) : REAL(dup2)(fd, to);
	if (r >= 0) {
		copy_kind(fd, r);
		copy_handle(fd, r, &s);
		if (ours)
			send_close(&st, last);
	}
	if (last)
		forget_done();
	return r;
}

int dup2(int fd, int to)
{
	if (to >= 0 && to == sess_fd && fd != to) {
		errno = EBUSY;
		return -1;
	}
	if (fd == to)
		return REAL(dup2)(fd, to);
	return dup_onto(fd, to, 0, 0);
}

int dup3(int fd, int to, int flags)
{
	if (to >= 0 && to == sess_fd) {
		errno = EBUSY;
		return -1;
	}
	if (fd == to)
		return REAL(dup3)(fd, to, flags); /* EINVAL */
	return dup_onto(fd, to, flags, 1);
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;
	struct hsnap s;
	int r;
	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		handle_snap(fd, &s);
	r = REAL(fcntl)(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
		copy_kind(fd, r);
		copy_handle(fd, r, &s);
	} else if (r >= 0 && cmd == F_SETFL && fd >= 0 && fd < FD_TABLE && (fdk[fd] & K_MASK) == K_OURS)
		fdk[fd] = K_OURS | (((long)arg & O_NONBLOCK) ? K_NONBLOCK : 0);
	return r;
}
int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *argp;
	/* cmd u32, handle u32, argp u64, fd i32, nargs u32 (0: in native mode the
	 * server fetches the descriptors the arguments name itself). */
	struct {
		uint32_t cmd, handle;
		uint64_t argp;
		int32_t fd;
		uint32_t nargs;
	} __attribute__((packed)) body;
	char reply[4096 + 128];
	struct waiter w;
	struct result r;
	struct hsnap s;
	uint32_t i;
	int64_t ret;

	va_start(ap, request);
	argp = va_arg(ap, void *);
	va_end(ap);
	if (!is_ours(fd))
		return REAL(ioctl)(fd, request, argp);
	handle_snap(fd, &s);
	body.cmd = (uint32_t)request;
	body.handle = s.handle;
	body.argp = (uint64_t)(uintptr_t)argp;
	body.fd = fd;
	body.nargs = 0;
	w.body = reply;
	w.cap = sizeof(reply);
	/* The target travels only until the server has named its handle. */
	if (call(T_IOCTL, &body, sizeof(body), &fd, s.handle ? 0 : 1, &w) < 0)
		return -1;
	if (parse_result(&w, &r) < 0) {
		close_fds(w.fds, w.nfds);
		errno = EPROTO;
		return -1;
	}
	if (!s.handle)
		learn_handle(fd, r.handle, &s);
	if (r.err) {
		close_fds(w.fds, w.nfds);
		errno = r.err;
		return -1;
	}
	/* Descriptors the call installed: write our numbers where the engine put
	 * its placeholders (in the argument, or the return value). */
	ret = r.ret;
	for (i = 0; i < r.n; i++) {
		set_kind(w.fds[i], K_OURS);
		set_handle(w.fds[i], 0); /* a new file: proven at its first call */
	}
	if (r.n) {
		size_t size = (request >> 16) & 0x3FFF, off;
		for (off = 0; argp && off + 4 <= size; off += 4) {
			int32_t v;
			memcpy(&v, (char *)argp + off, 4);
			for (i = 0; i < r.n; i++)
				if (v == r.ph[i]) {
					memcpy((char *)argp + off, &w.fds[i], 4);
					break;
				}
		}
		for (i = 0; i < r.n; i++)
			if (ret == r.ph[i])
				ret = w.fds[i];
	}
	return (int)ret;
}

static void remember(char *user, char *base, size_t total, uint64_t id)
{
	struct mapping *m = malloc(sizeof(*m));
	if (!m)
		return;
	m->user = user;
	m->base = base;
	m->total = total;
	m->id = id;
	m->gen = generation;
	pthread_mutex_lock(&g_lock);
	m->next = mappings;
	mappings = m;
	pthread_mutex_unlock(&g_lock);
}

/* MAP_SHARED|MAP_ANONYMOUS memory made while a session is open is a memfd the
 * server maps too (an arena), so a driver can pin it (USERPTR) without copies.
 * Private memory (malloc) can be read and written by the server, not pinned. */
static void *shared_anon(void *addr, size_t len, int prot, int flags)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t size = (len + page - 1) / page * page;
	uint64_t body[2];
	struct waiter w;
	struct result r;
	char reply[4096 + 128];
	void *p;
	int mfd = memfd_create("accel-shared", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0)
		return REAL(mmap)(addr, len, prot, flags, -1, 0);
	if (ftruncate(mfd, (off_t)size) < 0 ||
	    REAL(fcntl)(mfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) < 0) {
		REAL(close)(mfd);
		return REAL(mmap)(addr, len, prot, flags, -1, 0);
	}
	p = REAL(mmap)(addr, size, prot, flags & ~MAP_ANONYMOUS, mfd, 0);
	if (p == MAP_FAILED) {
		REAL(close)(mfd);
		return p;
	}
	body[0] = (uint64_t)(uintptr_t)p;
	body[1] = size;
	w.body = reply;
	w.cap = sizeof(reply);
	if (call(T_ADD_ARENA, body, sizeof(body), &mfd, 1, &w) == 0) {
		close_fds(w.fds, w.nfds);
		w.nfds = 0;
		if (parse_result(&w, &r) == 0 && !r.err)
			remember(p, p, size, ARENA_BIT | (uint64_t)(uintptr_t)p);
	}
	REAL(close)(mfd);
	return p;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct {
		uint64_t offset, length;
		uint32_t writable, handle;
		int32_t fd;
		uint32_t pad;
	} __attribute__((packed)) body;
	char reply[4096 + 128];
	struct waiter w;
	struct hsnap s;
	uint64_t mid, moff, mlen;
	long page = sysconf(_SC_PAGESIZE);
	size_t delta;
	char *p;
	struct mapping *m;

	if ((flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_SHARED && sess_fd >= 0 && len)
		return shared_anon(addr, len, prot, flags);
	if (fd < 0 || (flags & MAP_ANONYMOUS) || !is_ours(fd))
		return REAL(mmap)(addr, len, prot, flags, fd, off);
	if (len == 0) {
		errno = EINVAL;
		return MAP_FAILED;
	}
	handle_snap(fd, &s);
	body.offset = (uint64_t)off;
	body.length = len;
	body.writable = (prot & PROT_WRITE) ? 1 : 0;
	body.handle = s.handle;
	body.fd = fd;
	body.pad = 0;
	w.body = reply;
	w.cap = sizeof(reply);
	if (call(T_MMAP, &body, sizeof(body), &fd, s.handle ? 0 : 1, &w) < 0)
		return MAP_FAILED;
	if (w.type != T_MAPPED || w.len != 24 || w.nfds != 1) {
		struct result r;
		int e = (parse_result(&w, &r) == 0 && r.err) ? r.err : EPROTO;
		close_fds(w.fds, w.nfds);
		errno = e;
		return MAP_FAILED;
	}
	memcpy(&mid, w.body, 8);
	memcpy(&moff, w.body + 8, 8);
	memcpy(&mlen, w.body + 16, 8);
	if (len > mlen)
		len = mlen;
	delta = moff % (uint64_t)page;
	if (delta && (flags & MAP_FIXED)) {
		p = MAP_FAILED;
		errno = EINVAL;
	} else {
		p = REAL(mmap)(delta ? NULL : addr, len + delta, prot, flags, w.fds[0],
			       (off_t)(moff - delta));
	}
	REAL(close)(w.fds[0]);
	m = p == MAP_FAILED ? NULL : malloc(sizeof(*m));
	if (!m) {
		int e = p == MAP_FAILED ? errno : ENOMEM;
		struct waiter w2;
		char r2[4096 + 128];
		if (p != MAP_FAILED)
			REAL(munmap)(p, len + delta);
		w2.body = r2;
		w2.cap = sizeof(r2);
		if (call(T_MUNMAP, &mid, 8, NULL, 0, &w2) == 0)
			close_fds(w2.fds, w2.nfds);
		errno = e;
		return MAP_FAILED;
	}
	free(m);
	remember(p + delta, p, len + delta, mid);
	return p + delta;
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
	__attribute__((alias("mmap")));

int munmap(void *addr, size_t len)
{
	struct mapping **pp, *m = NULL;
	int r;
	if (mappings) {
		pthread_mutex_lock(&g_lock);
		for (pp = &mappings; *pp; pp = &(*pp)->next)
			if ((*pp)->user == addr) {
				m = *pp;
				*pp = m->next;
				break;
			}
		pthread_mutex_unlock(&g_lock);
	}
	if (!m)
		return REAL(munmap)(addr, len);
	r = REAL(munmap)(m->base, m->total);
	if (m->gen == generation && sess_fd >= 0) {
		struct waiter w;
		char reply[4096 + 128];
		w.body = reply;
		w.cap = sizeof(reply);
		if (call(T_MUNMAP, &m->id, 8, NULL, 0, &w) == 0)
			close_fds(w.fds, w.nfds);
	}
	free(m);
	return r;
}

ssize_t read(int fd, void *buf, size_t count)
{
	struct {
		uint32_t size, nonblock, handle;
		int32_t fd;
	} __attribute__((packed)) body;
	struct waiter w;
	struct result r;
	struct hsnap s;
	char *reply;
	size_t cap;

	if (fd < 0 || (fd < FD_TABLE && (fdk[fd] & K_MASK) == K_OTHER) || !is_ours(fd))
		return REAL(read)(fd, buf, count);
	if (count > MAX_MESSAGE - HEADER_SIZE)
		count = MAX_MESSAGE - HEADER_SIZE;
	handle_snap(fd, &s);
	body.size = (uint32_t)count;
	body.nonblock = (fd < FD_TABLE && (fdk[fd] & K_NONBLOCK)) ? 1 : 0;
	body.handle = s.handle;
	body.fd = fd;
	cap = count > 4200 ? count : 4200;
	reply = malloc(cap);
	if (!reply) {
		errno = ENOMEM;
		return -1;
	}
	w.body = reply;
	w.cap = cap;
	if (call(T_READ, &body, sizeof(body), &fd, s.handle ? 0 : 1, &w) < 0) {
		free(reply);
		return -1;
	}
	close_fds(w.fds, w.nfds);
	if (w.type == T_DATA) {
		size_t n = w.len < count ? w.len : count;
		memcpy(buf, reply, n);
		free(reply);
		return (ssize_t)n;
	}
	w.nfds = 0;
	errno = (parse_result(&w, &r) == 0 && r.err) ? r.err : EPROTO;
	free(reply);
	return -1;
}

static int poll_ours(int fd, short *mask)
{
	struct {
		uint32_t handle;
		int32_t fd;
	} __attribute__((packed)) body;
	struct waiter w;
	struct result r;
	struct hsnap s;
	char reply[4096 + 128];
	handle_snap(fd, &s);
	body.handle = s.handle;
	body.fd = fd;
	w.body = reply;
	w.cap = sizeof(reply);
	if (call(T_POLL, &body, sizeof(body), &fd, s.handle ? 0 : 1, &w) < 0)
		return -1;
	close_fds(w.fds, w.nfds);
	w.nfds = 0;
	if (parse_result(&w, &r) < 0) {
		errno = EPROTO;
		return -1;
	}
	if (!s.handle)
		learn_handle(fd, r.handle, &s);
	if (r.err) {
		errno = r.err;
		return -1;
	}
	*mask = (short)r.ret;
	return 0;
}

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* poll(2) with device descriptors among the set: their readiness is the
 * server's (a POLL request); the others are polled by the kernel, in slices. */
int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
	nfds_t i;
	int any = 0;
	long deadline;
	for (i = 0; i < nfds; i++)
		if (fds[i].fd >= 0 && is_ours(fds[i].fd)) {
			any = 1;
			break;
		}
	if (!any)
		return REAL(poll)(fds, nfds, timeout);
	deadline = timeout < 0 ? -1 : now_ms() + timeout;
	for (;;) {
		int count = 0, slice;
		short *ours = calloc(nfds, sizeof(short));
		int *isours = calloc(nfds, sizeof(int));
		if (!ours || !isours) {
			free(ours);
			free(isours);
			errno = ENOMEM;
			return -1;
		}
		for (i = 0; i < nfds; i++) {
			short mask;
			if (fds[i].fd < 0 || !is_ours(fds[i].fd))
				continue;
			isours[i] = 1;
			fds[i].fd = ~fds[i].fd; /* the kernel skips negative descriptors */
			if (poll_ours(~fds[i].fd, &mask) < 0)
				mask = POLLERR;
			ours[i] = mask & (fds[i].events | POLLERR | POLLHUP | POLLNVAL);
			if (ours[i])
				count++;
		}
		slice = count ? 0 : 2;
		if (!count && deadline >= 0) {
			long left = deadline - now_ms();
			if (left < slice)
				slice = left < 0 ? 0 : (int)left;
		}
		{
			int r = REAL(poll)(fds, nfds, slice);
			for (i = 0; i < nfds; i++)
				if (isours[i]) {
					fds[i].fd = ~fds[i].fd;
					fds[i].revents = ours[i];
				}
			free(ours);
			free(isours);
			if (r < 0)
				return -1;
			count += r;
		}
		if (count || (deadline >= 0 && now_ms() >= deadline))
			return count;
	}
}
