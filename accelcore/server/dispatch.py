"""One thread that reads every session's requests and runs the calls that never sleep.

A session's own thread serves it until it says HELLO; then the session moves
here. Every ioctl runs under the engine lock, so calls of different sessions
never ran at the same time anyway — but with a thread per session, each call
also had to hand the interpreter's lock (the GIL) from thread to thread, and a
waiting session thread could wait a scheduler slice or more to get it: the tail
of the server's latency under many clients. Here one thread takes each ready
session's next record in turn. Calls that may sleep still go to the session's
workers (so a blocked call never stops the others, and a SIGNAL reaches it),
and a session whose client does not read its replies gets them queued, not
waited for (its workers' replies too: a worker never blocks in a send; the
session flushes them as the socket drains); past
:data:`OUTBOX_MAX` queued replies the session is closed.

The dispatcher thread never blocks but in ``select`` and in the engine lock.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import Server
    from .session import Session

__all__ = ["OUTBOX_MAX", "Dispatcher"]

log = logging.getLogger("accelcore.server")

#: Replies a session may have queued for a client that does not read them.
OUTBOX_MAX = 1024


class Dispatcher:
    """The sessions' request loop (see the module docstring).

    Args:
        server: The server whose sessions it serves (their ends run on threads
            the server joins when it stops).
    """

    def __init__(self, server: Server) -> None:
        self._server = server
        # epoll itself, not ``selectors``: its per-wakeup bookkeeping is Python
        # code that every call would pay for.
        self._ep = select.epoll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._ep.register(self._wake_r.fileno(), select.EPOLLIN)
        self._posted: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        #: The sessions served, by the descriptor number of their socket.
        self._sessions: dict[int, Session] = {}
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="accel-dispatch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def add(self, session: Session) -> None:
        """Take over ``session`` (from its own thread, after HELLO)."""
        self.post(lambda: self._register(session))

    def want_write(self, session: Session) -> None:
        """(Dispatcher thread) ``session`` has queued replies: flush them when its
        socket takes more."""
        with contextlib.suppress(OSError, ValueError):  # (ValueError: stopped)
            self._ep.modify(session.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def stop(self) -> None:
        """End every session it serves (each on a thread of the server) and stop."""
        with self._lock:
            self._stopping = True
        self._wake()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(15)
        # What was posted but not run (a worker's reply, a session to register)
        # runs here: a reply's descriptors must not be left unsent and open.
        with self._lock:
            posted, self._posted = self._posted, []
        for fn in posted:
            fn()
        self._ep.close()
        self._wake_r.close()
        self._wake_w.close()

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the dispatcher thread, soon; once it is stopping, on the
        caller's thread, now."""
        with self._lock:
            queued = not self._stopping
            if queued:
                self._posted.append(fn)
        if queued:
            self._wake()
        else:
            fn()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _register(self, session: Session) -> None:
        if self._stopping:
            self._end(session)
            return
        try:
            fd = session.sock.fileno()
            self._ep.register(fd, select.EPOLLIN)
        except (ValueError, OSError):  # closed meanwhile
            self._end(session)
            return
        self._sessions[fd] = session

    def _run(self) -> None:
        wake = self._wake_r.fileno()
        sessions = self._sessions
        try:
            while not self._stopping:
                try:
                    events = self._ep.poll()
                except InterruptedError:
                    continue
                except OSError:
                    return
                for fd, mask in events:
                    if fd == wake:
                        self._drain()
                        continue
                    session = sessions.get(fd)
                    if session is None:
                        continue  # dropped by an earlier event of this round
                    try:
                        if mask & select.EPOLLOUT and session.flush():
                            self._ep.modify(fd, select.EPOLLIN)
                        if mask & ~select.EPOLLOUT and not session.step(nonblock=True):
                            self._drop(fd, session)
                    except Exception:
                        log.exception("pid %d: internal error in the dispatcher", session.pid)
                        self._drop(fd, session)
        finally:
            for fd, session in list(sessions.items()):
                self._drop(fd, session)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        with self._lock:
            posted, self._posted = self._posted, []
        for fn in posted:
            fn()

    def _drop(self, fd: int, session: Session) -> None:
        del self._sessions[fd]
        with contextlib.suppress(ValueError, OSError):
            self._ep.unregister(fd)
        self._end(session)

    def _end(self, session: Session) -> None:
        """The session's end (teardown may wait for its interrupted calls) runs on
        a thread of its own, off this loop."""
        self._server.spawn(session.end, name="accel-session-end")
