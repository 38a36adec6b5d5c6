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
waited for (the session flushes them as the socket drains); past
:data:`OUTBOX_MAX` queued replies the session is closed.

The dispatcher thread never blocks but in ``select`` and in the engine lock.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
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
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._posted: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._sessions: set[Session] = set()
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="accel-dispatch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def add(self, session: Session) -> None:
        """Take over ``session`` (from its own thread, after HELLO)."""
        self._post(lambda: self._register(session))

    def want_write(self, session: Session) -> None:
        """(Dispatcher thread) ``session`` has queued replies: flush them when its
        socket takes more."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.modify(session.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, session)

    def stop(self) -> None:
        """End every session it serves (each on a thread of the server) and stop."""
        self._stopping = True
        self._wake()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(15)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _post(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._posted.append(fn)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _register(self, session: Session) -> None:
        if self._stopping:
            self._end(session)
            return
        try:
            self._sel.register(session.sock, selectors.EVENT_READ, session)
        except (KeyError, ValueError, OSError):  # closed meanwhile
            self._end(session)
            return
        self._sessions.add(session)

    def _run(self) -> None:
        try:
            while not self._stopping:
                try:
                    events = self._sel.select()
                except OSError:
                    return
                for key, mask in events:
                    session = key.data
                    if session is None:
                        self._drain()
                        continue
                    if session not in self._sessions:
                        continue  # dropped by an earlier event of this round
                    try:
                        if mask & selectors.EVENT_WRITE and session.flush():
                            self._sel.modify(session.sock, selectors.EVENT_READ, session)
                        if mask & selectors.EVENT_READ and not session.step(nonblock=True):
                            self._drop(session)
                    except Exception:
                        log.exception("pid %d: internal error in the dispatcher", session.pid)
                        self._drop(session)
        finally:
            for session in list(self._sessions):
                self._drop(session)

    def _drain(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)
        with self._lock:
            posted, self._posted = self._posted, []
        for fn in posted:
            fn()

    def _drop(self, session: Session) -> None:
        self._sessions.discard(session)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(session.sock)
        self._end(session)

    def _end(self, session: Session) -> None:
        """The session's end (teardown may wait for its interrupted calls) runs on
        a thread of its own, off this loop."""
        self._server.spawn(session.end, name="accel-session-end")
