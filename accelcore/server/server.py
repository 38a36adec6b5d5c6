"""The devfs server: a simulated machine's device nodes as Unix sockets.

Every path in ``machine.subsystem.nodes`` (``/dev/accel/accelN``, control nodes,
``/dev/udmabuf``, ``/dev/kfd``…) is a listening ``SOCK_SEQPACKET`` socket at the
same path under the runtime directory; ``<runtime>/control`` is the control
endpoint (sessions, enumeration, status, sysfs walks and stores, reset,
trigger, open files and dma-bufs with their holders, uevents).

Opening a node is connecting to its socket: the connection *is* the open file.
The client's descriptor is its end of the connection, so ``dup``, ``fork`` and
``SCM_RIGHTS`` share it as they share any file, and the server sees end of file
on its end exactly when the last copy is closed in every process — also when
the process is killed. Then the server drops the open file's reference. Files
the engine hands out (dma-bufs, sync files) are socket pairs made the same way.

Threads: one selector thread accepts connections and watches the server ends of
open files for end of file; each new connection has a thread of its own until
it says HELLO (control connections keep it), then one dispatcher thread
(:mod:`~accelcore.server.dispatch`) takes every session's records in turn; calls
that may sleep run on per-session workers, so a slow or blocked client never
holds up another. The engine is entered only under ``clock.lock``, which waits
release.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import select
import selectors
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import AccelError, AlreadyExists, NotPermitted, TooManyFiles
from ..machine import Machine
from ..vfs import OpenFile
from . import protocol as p
from .control_ops import CONTROL_OPS
from .dispatch import Dispatcher
from .limits import DEFAULT_LIMITS, Ledger, ServerLimits
from .rundir import (
    UnsafeRuntimeDir,
    check_entry,
    ensure_dir,
    ensure_runtime_dir,
    open_private,
    remove_if_ours,
)
from .session import Session
from .wire import close_all, pass_credentials, peer_credentials, recv_record_creds, send_record

__all__ = [
    "CONTROL_NAME",
    "PID_NAME",
    "FileEnd",
    "Server",
    "default_runtime_dir",
    "prepare_runtime_dir",
    "raise_nofile_limit",
]

log = logging.getLogger("accelcore.server")

CONTROL_NAME = "control"
#: The server's pid file in the runtime directory (``accelctl sim stop`` reads it).
PID_NAME = "server.pid"
#: How long a new node connection may take to send its OPEN (the default
#: :attr:`~.limits.ServerLimits.hello_timeout`).
OPEN_TIMEOUT = DEFAULT_LIMITS.hello_timeout
#: How long a refused connection is given to read its refusal and close.
REFUSAL_LINGER = 1.0
#: Default cap on the control connections (sessions) one client process may hold.
MAX_SESSIONS_PER_CLIENT = DEFAULT_LIMITS.sessions_per_client
#: Default cap on the open files (node connections and files the engine handed out)
#: one client process may hold; like ``RLIMIT_NOFILE``, ``EMFILE`` past it.
MAX_FILES_PER_CLIENT = DEFAULT_LIMITS.files_per_client


def _fallback_runtime_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"accelcore-{os.geteuid()}"


def default_runtime_dir() -> Path:
    """``$ACCEL_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/accelcore``, else
    ``accelcore-UID`` under the temporary directory (which must then be a ``0700``
    directory of this uid: see :mod:`~accelcore.server.rundir`)."""
    env = os.environ.get("ACCEL_RUNTIME_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "accelcore"
    return _fallback_runtime_dir()


def prepare_runtime_dir(path: Path) -> Path:
    """Create or check runtime directory ``path`` (the shared-temp-dir fallback must
    be ``0700``; see :mod:`~accelcore.server.rundir`).

    Raises:
        UnsafeRuntimeDir: another user could have planted or could change it.
    """
    return ensure_runtime_dir(path, private=path == _fallback_runtime_dir())


def raise_nofile_limit() -> int:
    """Raise this process's ``RLIMIT_NOFILE`` soft limit to the hard limit (the
    server holds descriptors for every client); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft)


@dataclass(eq=False)
class FileEnd:
    """The server end of an open file's connection: the file it serves, the
    client end's ``(st_dev, st_ino)``, and who it is charged to."""

    sock: socket.socket
    file: OpenFile
    key: tuple[int, int]
    what: str
    pid: int = 0
    uid: int = -1
    #: The token of the session the file was opened or handed out for.
    session: bytes = b""
    closed: bool = False


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


class Server:
    """Serves a machine's device nodes to real processes.

    Args:
        machine: The machine (use a real-time clock: waits sleep for real).
        runtime_dir: Where the sockets go (:func:`default_runtime_dir` if ``None``).
        description: The machine description, reported by ``status``.
        limits: The per-client and per-uid caps (:class:`~.limits.ServerLimits`).
        max_sessions_per_client: Overrides ``limits.sessions_per_client``:
            control connections one process (peer pid) may hold; more are refused
            with ``EMFILE``, so no client starves the others of the server's
            threads and descriptors.
        max_files_per_client: Overrides ``limits.files_per_client``: open files one
            process may hold (opened nodes and files the engine installed for it);
            ``EMFILE`` past it.
    """

    def __init__(
        self,
        machine: Machine,
        runtime_dir: Path | str | None = None,
        *,
        description: Mapping[str, Any] | None = None,
        limits: ServerLimits | None = None,
        max_sessions_per_client: int | None = None,
        max_files_per_client: int | None = None,
    ) -> None:
        self.machine = machine
        lim = limits if limits is not None else DEFAULT_LIMITS
        if max_sessions_per_client is not None or max_files_per_client is not None:
            lim = ServerLimits(
                **{
                    **lim.__dict__,
                    "sessions_per_client": max_sessions_per_client or lim.sessions_per_client,
                    "files_per_client": max_files_per_client or lim.files_per_client,
                }
            )
        self.limits = lim
        self.max_sessions_per_client = lim.sessions_per_client
        self.max_files_per_client = lim.files_per_client
        #: What each client process and uid holds of the capped resources.
        self.ledger = Ledger()
        self._bound: dict[Path, tuple[int, int]] = {}
        self._pidfile: tuple[int, int] | None = None
        self._reserve: int | None = None
        self._connections: set[Session] = set()
        self._conns: dict[tuple[str, int], int] = {}
        self._uid_conns: dict[tuple[str, int], int] = {}
        self._peer: dict[socket.socket, tuple[int, int]] = {}
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
        self.description = dict(description) if description is not None else None
        self.clock = machine.clock
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        # Never blocks: post() runs under the clock lock, and a full wake socket
        # already wakes the selector (a uevent flood deadlocked a blocking one).
        self._wake_w.setblocking(False)
        self._sync_pending = False
        self._posted: list[Callable[[], None]] = []
        self._post_lock = threading.Lock()
        self._listeners: dict[str, socket.socket] = {}
        self._control: socket.socket | None = None
        self._ends: dict[int, FileEnd] = {}
        #: Ends released by a client's CLOSE whose sockets the selector has yet to forget.
        self._closing_ends: set[FileEnd] = set()
        self._by_key: dict[tuple[int, int], FileEnd] = {}
        #: Our own copies of client ends being handed out (sent, not yet closed):
        #: not holders of the files (guarded by ``clock.lock``).
        self.handing_out: set[int] = set()
        self._sessions: dict[bytes, Session] = {}
        self._threads: set[threading.Thread] = set()
        self._thread: threading.Thread | None = None
        self._dispatcher: Dispatcher | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._stopping = False
        self.stopped = threading.Event()

    # -- paths -------------------------------------------------------------------
    @property
    def control_path(self) -> Path:
        return self.runtime_dir / CONTROL_NAME

    def socket_path(self, node_path: str) -> Path:
        """Where the socket of ``/dev/...`` node ``node_path`` lives."""
        return self.runtime_dir / node_path.lstrip("/")

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        """Bind the control endpoint and every node, and start serving.

        Raises:
            AlreadyExists: another server answers on this runtime directory.
            UnsafeRuntimeDir: the runtime directory, or a path the server would use
                in it, could have been planted by another user (see
                :mod:`~accelcore.server.rundir`); nothing was made or removed.
        """
        try:
            prepare_runtime_dir(self.runtime_dir)
            raise_nofile_limit()
            # Kept free so that EMFILE in accept() can still take (and refuse) the
            # connection instead of leaving it pending, which would spin the selector.
            self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            ctl = self._bind(self.control_path)
            self._control = ctl
            self._write_pidfile()
            self._sel.register(ctl, selectors.EVENT_READ, "control")
            self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._sync_nodes(strict=True)
        except BaseException:
            self._stopping = True
            self._close_endpoints()
            raise
        with self.clock.lock:
            self._unsubscribe = self.machine.sysfs.subscribe(lambda ev: self._node_event())
        self._dispatcher = Dispatcher(self)
        self._dispatcher.start()
        self._thread = threading.Thread(target=self._serve, name="accel-devfs", daemon=True)
        self._thread.start()
        log.info(
            "devfs server pid %d serving %d nodes under %s",
            os.getpid(),
            len(self._listeners),
            self.runtime_dir,
        )

    @property
    def pid_path(self) -> Path:
        return self.runtime_dir / PID_NAME

    def _write_pidfile(self) -> None:
        """``server.pid`` (``O_EXCL|O_NOFOLLOW``); a stale one of ours is replaced
        (the control socket, bound first, proved no server of ours is alive)."""
        path = self.pid_path
        if check_entry(path, stat.S_IFREG) is not None:
            remove_if_ours(path, kind=stat.S_IFREG)
        fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            st = os.fstat(fd)
            self._pidfile = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)

    def _bind(self, path: Path) -> socket.socket:
        """Bind and listen on ``path`` in the runtime directory.

        Raises:
            AlreadyExists: a server answers there.
            UnsafeRuntimeDir: a directory on the way, or the entry there, is a
                symlink or another user's, or not a socket.
        """
        ensure_dir(self.runtime_dir, path.parent.relative_to(self.runtime_dir))
        if check_entry(path, stat.S_IFSOCK) is not None:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(str(path))
            except OSError:
                # A stale socket of ours (a server of this uid that died).
                remove_if_ours(path, kind=stat.S_IFSOCK)
            else:
                raise AlreadyExists(f"a server already listens on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.bind(str(path))
            st = os.lstat(path)
            self._bound[path] = (st.st_dev, st.st_ino)
            # Socket policy: every socket is 0666. Who may reach them at all is the
            # runtime directory's mode (0700: this uid and root); then the engine
            # checks the node's mode and group against the peer's credentials and
            # answers EACCES itself, and control ops check the peer's uid.
            os.chmod(path, 0o666)
            # Accepted connections inherit SO_PASSCRED (unix_sock_inherit_flags), so
            # every record on them, also one sent before the server set it again on
            # the connection, carries its sender's SCM_CREDENTIALS.
            pass_credentials(sock)
            sock.listen(64)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def stop(self) -> None:
        """Stop serving: every session ends, every open file is released, the
        sockets are removed. Idempotent."""
        if self._stopping:
            self.stopped.wait(30)
            return
        self._stopping = True
        if self._unsubscribe is not None:
            with self.clock.lock:
                self._unsubscribe()
        self._wake_w.send(b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        for session in list(self._sessions.values()) + list(self._connections):
            session.closing = True
            session.interrupt()
            with contextlib.suppress(OSError):
                session.sock.shutdown(socket.SHUT_RDWR)
        if self._dispatcher is not None:
            self._dispatcher.stop()  # its sessions' ends run on threads joined below
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(15)
        with self.clock.lock:
            ends = set(self._ends.values()) | set(self._by_key.values()) | set(self._closing_ends)
        for end in ends:
            self._release_end(end)
        self._close_endpoints()
        self.stopped.set()
        log.info("devfs server stopped")

    def _close_endpoints(self) -> None:
        """Close and remove the sockets and the pid file this server made."""
        for path, lsock in list(self._listeners.items()):
            self._close_listener(path, lsock)
        if self._control is not None:
            self._control.close()
            self._control = None
            self._unlink(self.control_path)
        if self._pidfile is not None:
            remove_if_ours(self.pid_path, self._pidfile)
            self._pidfile = None
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the selector thread -----------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the selector thread (safe from any thread, even under the lock)."""
        with self._post_lock:
            self._posted.append(fn)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def watch_exit(self, pidfd: int, on_exit: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_exit`` on the selector thread once the process of ``pidfd`` has
        exited (its pidfd polls readable). The server watches its own duplicate, so
        the caller may close ``pidfd`` at any time. Returns a function that cancels
        the watch (safe from any thread, idempotent)."""
        fd = os.dup(pidfd)
        done = [False]

        def cancel_now() -> None:
            if done[0]:
                return
            done[0] = True
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(fd)
            os.close(fd)

        def fire() -> None:
            cancel_now()
            on_exit()

        def register() -> None:
            if not done[0]:
                self._sel.register(fd, selectors.EVENT_READ, fire)

        self.post(register)
        return lambda: self.post(cancel_now)

    def _serve(self) -> None:
        while not self._stopping:
            try:
                events = self._sel.select()
            except OSError:
                return
            for key, _ in events:
                try:
                    self._event(key.fileobj, key.data)
                except Exception:
                    log.exception("devfs server: error handling %s", key.data)

    def _event(self, sock: Any, what: Any) -> None:
        if what == "wake":
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
            with self._post_lock:
                posted, self._posted = self._posted, []
            for fn in posted:
                if not self._stopping:
                    fn()
        elif what == "control":
            conn = self._accept(sock)
            if conn is not None:
                self.spawn(self._run_session, conn, name="accel-session")
        elif isinstance(what, FileEnd):
            try:
                data = what.sock.recv(p.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                log.warning(
                    "refused %d unexpected bytes on the %s connection; closing it",
                    len(data),
                    what.what,
                )
            self._release_end(what)
        elif callable(what):  # a process watched with watch_exit() exited
            what()
        elif isinstance(what, str):
            conn = self._accept(sock)
            if conn is not None:
                self.spawn(self._opening, conn, what, name="accel-open")

    def _accept(self, lsock: socket.socket) -> socket.socket | None:
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self._refuse_pending(lsock)
            return None
        conn.setblocking(True)
        return conn

    def _refuse_pending(self, lsock: socket.socket) -> None:
        """Out of descriptors: free the reserve, take the pending connection and
        close it at once (its client sees end of file: ``ENODEV``), take the reserve
        back. Without this the connection stays pending and the selector spins."""
        log.error("out of descriptors: refusing a connection on %s", lsock.getsockname())
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        with contextlib.suppress(OSError):
            conn, _ = lsock.accept()
            conn.close()
        with contextlib.suppress(OSError):
            self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        """Run ``target(*args)`` on a new thread that :meth:`stop` joins."""

        def run() -> None:
            try:
                target(*args)
            finally:
                self._threads.discard(threading.current_thread())

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.add(t)
        t.start()

    # -- nodes ---------------------------------------------------------------------
    def _node_event(self) -> None:
        """A uevent: resync the nodes once, however many uevents came meanwhile."""
        with self._post_lock:
            if self._sync_pending:
                return
            self._sync_pending = True
        self.post(self._sync_nodes)

    def _sync_nodes(self, strict: bool = False) -> None:
        """Bind the nodes that appeared, close those that went. With ``strict`` (at
        start) an unsafe path in the runtime directory is raised, else logged."""
        with self._post_lock:
            self._sync_pending = False
        with self.clock.lock:
            paths = set(self.machine.subsystem.nodes)
        for path in sorted(paths - set(self._listeners)):
            try:
                lsock = self._bind(self.socket_path(path))
            except (OSError, AccelError) as exc:
                if strict and isinstance(exc, UnsafeRuntimeDir):
                    raise
                log.error("cannot serve %s: %s", path, exc)
                continue
            self._listeners[path] = lsock
            self._sel.register(lsock, selectors.EVENT_READ, path)
        for path in sorted(set(self._listeners) - paths):
            self._close_listener(path, self._listeners[path])

    def _close_listener(self, path: str, lsock: socket.socket) -> None:
        self._listeners.pop(path, None)
        with contextlib.suppress(KeyError, ValueError, RuntimeError):
            self._sel.unregister(lsock)
        lsock.close()
        self._unlink(self.socket_path(path))

    def _unlink(self, path: Path) -> None:
        """Remove a socket this server bound (the same inode, nothing else)."""
        ident = self._bound.pop(path, None)
        if ident is not None:
            remove_if_ours(path, ident)

    # -- open files --------------------------------------------------------------------
    def _opening(self, conn: socket.socket, path: str) -> None:
        # Node connections that have not sent OPEN yet are capped per client too,
        # so one process cannot tie up the server's threads with silent connects.
        if not self._admit(conn, "opening"):
            return
        try:
            self._open_connection(conn, path)
        finally:
            self._leave(conn, "opening")

    def _open_connection(self, conn: socket.socket, path: str) -> None:
        """Serve a node connection's OPEN; on success it becomes the open file."""
        try:
            conn.settimeout(self.limits.hello_timeout)
            pass_credentials(conn)
            data, fds, creds = recv_record_creds(conn)
            try:
                frame = p.decode(data)
                if not isinstance(frame.message, p.Open) or len(fds) != 1:
                    raise p.ProtocolError(
                        f"first record on {path} must be OPEN with its own descriptor"
                    )
                key = _key(fds[0])
            finally:
                close_all(fds)
            msg = frame.message
            pid = peer_credentials(conn)[0]
            session = self._sessions.get(msg.token)
            try:
                if session is None or session.task is None or session.pid != pid:
                    raise NotPermitted(
                        f"OPEN of {path} by pid {pid} names no session of that process"
                    )
                if creds is None or creds != session.record_creds:
                    # The connection was handed to another process (or its sender
                    # changed credentials) between connect() and OPEN.
                    sender = "no credentials" if creds is None else f"pid {creds[0]}"
                    raise NotPermitted(
                        f"OPEN of {path} was sent by {sender} (uid/gid "
                        f"{creds[1:] if creds else '?'}), not by pid {pid} of the session "
                        f"(uid/gid {session.record_creds[1:] if session.record_creds else '?'})"
                    )
                with self.clock.lock:
                    self.check_file_room(pid, session.uid)
                    file = session.syscalls.open_file(session.task, path, msg.flags)
                    end = FileEnd(
                        conn, file, key, f"{path} (pid {pid})", pid, session.uid, session.token
                    )
                    self._by_key[key] = end
                    handle = session.add_handle(end)
            except OSError as exc:
                code = exc.errno if exc.errno and 0 < exc.errno < 4096 else errno.EIO
                send_record(
                    conn, p.encode(p.Result(errno=code, message=str(exc.strerror)), frame.rid)
                )
                conn.close()
                return
            send_record(conn, p.encode(p.Result(handle=handle), frame.rid))
            conn.setblocking(False)
            self.post(lambda: self._watch(end))
        except p.ProtocolError as exc:
            log.warning("refused a record on %s: %s; closing that connection", path, exc)
            conn.close()
        except OSError as exc:
            log.debug("node connection on %s failed: %s", path, exc)
            conn.close()
        except Exception:
            log.exception("internal error opening %s", path)
            conn.close()

    def _watch(self, end: FileEnd) -> None:
        if self._stopping or end.closed:
            self._release_end(end)
            return
        self._ends[end.sock.fileno()] = end
        self._sel.register(end.sock, selectors.EVENT_READ, end)

    def _release_end(self, end: FileEnd) -> None:
        """Selector thread: release the file (if not yet) and forget its socket."""
        self._release_file(end)
        fileno = end.sock.fileno()
        if fileno >= 0 and self._ends.pop(fileno, None) is not None:
            with contextlib.suppress(KeyError, ValueError, RuntimeError):
                self._sel.unregister(end.sock)
        end.sock.close()
        with self.clock.lock:
            self._closing_ends.discard(end)

    def _release_file(self, end: FileEnd) -> None:
        """Drop the open file's reference once (any thread)."""
        with self.clock.lock:
            if end.closed:
                return
            end.closed = True
            if self._by_key.get(end.key) is end:
                del self._by_key[end.key]
            end.file.put()

    def release_if_closed(self, key: tuple[int, int]) -> bool:
        """Release now the file whose client end is ``key`` if every copy of that
        end is closed (the server end has hung up), instead of when the selector
        thread notices; the socket itself is forgotten on the selector thread.

        A client calls this (through ``CLOSE``) right after closing a descriptor,
        so that its ``close()`` returns after the last reference's release, as the
        kernel's does. Returns whether the file was released by this call.
        """
        with self.clock.lock:
            end = self._by_key.get(key)
        if end is None or end.closed:
            return False
        poller = select.poll()
        try:  # the selector thread may have closed the socket meanwhile
            poller.register(end.sock, select.POLLHUP)
            hung_up = any(ev & select.POLLHUP for _, ev in poller.poll(0))
        except (OSError, ValueError):
            return False
        if not hung_up:
            return False
        with self.clock.lock:
            self._closing_ends.add(end)
        self._release_file(end)
        self.post(lambda: self._release_end(end))
        return True

    def files_of(self, pid: int) -> int:
        """How many open files client process ``pid`` holds (charged to it)."""
        with self.clock.lock:
            return sum(1 for e in self._by_key.values() if e.pid == pid)

    def files_of_uid(self, uid: int) -> int:
        """How many open files the client processes of ``uid`` hold."""
        with self.clock.lock:
            return sum(1 for e in self._by_key.values() if e.uid == uid)

    def file_room(self, pid: int, uid: int) -> int:
        """How many more open files process ``pid`` of ``uid`` may be given."""
        return min(
            self.limits.files_per_client - self.files_of(pid),
            self.limits.files_per_uid - self.files_of_uid(uid),
        )

    def check_file_room(self, pid: int, uid: int) -> None:
        """Raises:
        TooManyFiles: ``pid`` or ``uid`` holds its cap of open files."""
        if self.files_of(pid) >= self.limits.files_per_client:
            raise TooManyFiles(
                f"pid {pid} holds {self.limits.files_per_client} open files (the per-client limit)"
            )
        if self.files_of_uid(uid) >= self.limits.files_per_uid:
            raise TooManyFiles(
                f"uid {uid} holds {self.limits.files_per_uid} open files (the per-uid limit)"
            )

    def release_session_files(self, token: bytes) -> int:
        """Release every open file served for the session ``token`` (the server
        closed that session: its files, and the ownership they carry, must not
        outlive it). Returns how many."""
        with self.clock.lock:
            ends = [e for e in self._by_key.values() if e.session == token and not e.closed]
        for end in ends:
            self.post(lambda end=end: self._release_end(end))  # type: ignore[misc]
        return len(ends)

    def open_ends(self) -> list[tuple[OpenFile, int, int]]:
        """``(file, inode of the client end, pid charged)`` of every open file served
        (call under ``clock.lock``)."""
        return [(e.file, e.key[1], e.pid) for e in self._by_key.values() if not e.closed]

    def session_pids(self) -> set[int]:
        """The pids of the client processes with a session now."""
        return {s.pid for s in list(self._sessions.values())}

    def export_file(self, file: OpenFile, pid: int = 0, uid: int = -1, session: bytes = b"") -> int:
        """Make a socket pair for ``file`` (taking over one reference) and return the
        client end's descriptor, to be sent and then closed by the caller with
        :meth:`handed_out`; the file is charged to client process ``pid`` of ``uid``
        (session ``session``)."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        end = FileEnd(mine, file, _key(theirs.fileno()), f"{file.kind} file", pid, uid, session)
        mine.setblocking(False)
        with self.clock.lock:
            self._by_key[end.key] = end
            self.handing_out.add(theirs.fileno())
        self.post(lambda: self._watch(end))
        return theirs.detach()

    def handed_out(self, fds: list[int]) -> None:
        """Close our copies of client ends made by :meth:`export_file`, once sent."""
        with self.clock.lock:
            self.handing_out.difference_update(fds)
            close_all(fds)

    def lookup_fd(self, fd: int) -> OpenFile | None:
        """The open file behind a received descriptor (with a new reference), if it
        is the client end of one of ours."""
        end = self.lookup_end(fd)
        return end.file if end is not None else None

    def lookup_end(self, fd: int) -> FileEnd | None:
        """The server end of the file behind a received descriptor, with a new
        reference on its file, if the descriptor is the client end of one of ours."""
        try:
            key = _key(fd)
        except OSError:
            return None
        with self.clock.lock:
            end = self._by_key.get(key)
            if end is None or end.closed or end.file.released:
                return None
            end.file.get()
            return end

    # -- sessions ------------------------------------------------------------------------
    def _run_session(self, conn: socket.socket) -> None:
        if not self._admit(conn, "session"):
            return
        try:
            session = Session(self, conn)
        except OSError:
            conn.close()
            self._leave(conn, "session")
            return
        with self._post_lock:
            self._connections.add(session)

        def ended() -> None:
            with self._post_lock:
                self._connections.discard(session)
            self._leave(conn, "session")

        session.on_end = ended
        if self._stopping:
            session.closing = True
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        session.run()

    def dispatch(self, session: Session) -> bool:
        """Hand ``session`` (past HELLO) to the dispatcher thread; whether it took it
        (not when the server is stopping: the session's thread then ends it)."""
        if self._dispatcher is None or self._stopping:
            return False
        self._dispatcher.add(session)
        return True

    @property
    def dispatcher_thread(self) -> threading.Thread | None:
        """The thread that serves the sessions past HELLO (see :meth:`dispatch`)."""
        return self._dispatcher.thread if self._dispatcher is not None else None

    def dispatcher_post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the dispatcher thread (on the caller's once it has stopped)."""
        if self._dispatcher is not None:
            self._dispatcher.post(fn)
        else:
            fn()

    def dispatcher_want_write(self, session: Session) -> None:
        """(Dispatcher thread) ``session`` has replies queued for a slow reader."""
        if self._dispatcher is not None:
            self._dispatcher.want_write(session)

    def _admit(self, conn: socket.socket, kind: str) -> bool:
        """Count a new ``kind`` connection against its peer's caps (per process and
        per uid); refuse it with ``EMFILE`` (and close it) past one."""
        try:
            pid, uid, _ = peer_credentials(conn)
        except OSError:
            conn.close()
            return False
        with self._post_lock:
            held = self._conns.get((kind, pid), 0)
            by_uid = self._uid_conns.get((kind, uid), 0)
            if held < self.max_sessions_per_client and by_uid < self.limits.sessions_per_uid:
                self._conns[(kind, pid)] = held + 1
                self._uid_conns[(kind, uid)] = by_uid + 1
                self._peer[conn] = (pid, uid)
                return True
        # Refused before reading anything: the reply has request id 0, which the
        # client takes as the answer to whatever it sent first.
        if held >= self.max_sessions_per_client:
            why = f"pid {pid} holds {held} {kind} connections (the per-client limit)"
        else:
            why = f"uid {uid} holds {by_uid} {kind} connections (the per-uid limit)"
        log.warning("refused a %s connection: %s", kind, why)
        with contextlib.suppress(OSError):
            refusal = p.Result(errno=errno.EMFILE, message=why)
            send_record(conn, p.encode(refusal))
            # Closing with the client's first record unread would reset the
            # connection and lose the refusal: read until it closes (briefly).
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(REFUSAL_LINGER)
            while conn.recv(p.MAX_MESSAGE):
                pass
        conn.close()
        return False

    def _leave(self, conn: socket.socket, kind: str) -> None:
        with self._post_lock:
            pid, uid = self._peer.pop(conn)
            for table, key in ((self._conns, (kind, pid)), (self._uid_conns, (kind, uid))):
                left = table[key] - 1
                if left:
                    table[key] = left
                else:
                    del table[key]

    def add_session(self, session: Session) -> None:
        self._sessions[session.token] = session

    def remove_session(self, session: Session) -> None:
        self._sessions.pop(session.token, None)

    # -- control -------------------------------------------------------------------------
    def control(self, op: str, request: Mapping[str, Any], peer_uid: int) -> Any:
        """Answer a control request (``status``, ``devices``, ``nodes``, ``accounting``,
        ``shutdown``, and :mod:`~accelcore.server.control_ops`' ``sysfs``,
        ``store_attr``, ``reset``, ``trigger``, ``files`` and ``bufinfo``).

        Raises:
            ValueError: unknown op.
            NotPermitted: ``shutdown`` by a user other than root or the server's.
            AccelError: an op refused the request (its errno says why).
        """
        fn = CONTROL_OPS.get(op)
        if fn is not None:
            return fn(self, request, peer_uid)
        sub = self.machine.subsystem
        if op == "status":
            from .. import __version__

            return {
                "pid": os.getpid(),
                "uid": os.getuid(),
                "version": __version__,
                "protocol": p.PROTOCOL_VERSION,
                "runtime_dir": str(self.runtime_dir),
                "clock": type(self.clock).__name__,
                "machine": self.description,
                "sessions": len(self._sessions),
                "open_files": len(self._by_key),
                "accounting": sub.accounting(),
            }
        if op == "devices":
            with self.clock.lock:
                return [
                    {
                        "name": d.name,
                        "minor": d.minor,
                        "driver": d.driver.name,
                        "bus_id": d.bus_id,
                        "status": d.status.name.lower(),
                        "node": d.node_path,
                        "control_node": d.control_path,
                        "socket": str(self.socket_path(d.node_path)),
                        "ownership": d.ownership.describe(),
                        "open_count": len(d.files),
                        "tainted": d.tainted,
                    }
                    for d in sub.registered_devices()
                ]
        if op == "nodes":
            with self.clock.lock:
                return [
                    {
                        "path": n.path,
                        "mode": n.mode,
                        "uid": n.uid,
                        "gid": n.gid,
                        "kind": n.kind,
                        "socket": str(self.socket_path(n.path)),
                    }
                    for n in sub.nodes.values()
                ]
        if op == "accounting":
            return sub.accounting()
        if op == "shutdown":
            if peer_uid not in (0, os.getuid()):
                raise NotPermitted(f"uid {peer_uid} may not stop a server of uid {os.getuid()}")
            threading.Thread(target=self.stop, name="accel-stop", daemon=True).start()
            return None
        raise ValueError(f"unknown control op {op!r}")
