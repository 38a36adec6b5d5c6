"""One client process's session: its task, its user memory, its calls.

A session is a connection to ``<runtime>/control`` that said HELLO. The peer's
pid, uid and gid (``SO_PEERCRED``) become a :class:`~accelcore.task.Task`; the
memfd arenas the client sends are mapped into the task's address space at the
client's own addresses, so user pointers in ioctl arguments need no copying.
A request names its target file by a *handle* the session proved once (at OPEN,
or the first time the client sent that descriptor), and carries the descriptors
its arguments name; the session resolves them to the server's files and makes
the call through the system-call layer (:class:`~accelcore.syscalls.Syscalls`),
with the task's descriptor table holding those files for the length of the
call. A BATCH runs its calls in order, each as if it had come alone. Calls
that may sleep (as the layer answers) run on the session's worker threads, so
a blocked call never stops the session from taking a ``SIGNAL`` that
interrupts it.

When the connection ends (the process exited or was killed) every wait of the
task is interrupted, its mappings are dropped and the task exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import secrets
import select
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AccelError, BadFd, NoMemory
from ..memory import PAGE_SIZE, SharedMemory, charge_to
from ..syscalls import Syscalls, fd_offsets, ioctl_may_sleep, read_may_sleep
from ..sysfs import Uevent as SysUevent
from ..task import Task
from ..udmabuf import WRITE_SEALS, MemfdFile
from ..vfs import Mapping, OpenFile
from . import protocol as p
from .dispatch import OUTBOX_MAX
from .fdtable import PLACEHOLDER_BASE, CallFds, ServerFdTable, backing_memory
from .wire import RecordReader, close_all, pass_credentials, peer_credentials, send_record

if TYPE_CHECKING:
    from .server import FileEnd, Server

__all__ = ["Session"]

log = logging.getLogger("accelcore.server")

#: Calls one session may have sleeping at once; more queue behind them.
WORKERS_PER_SESSION = 32
#: How long teardown waits for interrupted calls to return.
TEARDOWN_TIMEOUT = 10.0


def _groups_of(pid: int) -> tuple[int, ...]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


#: A task name's bytes at most (``TASK_COMM_LEN`` 16, with its NUL).
COMM_MAX = 15


def task_comm(name: str) -> str:
    """A client's task name as the server keeps it: at most :data:`COMM_MAX` bytes
    of UTF-8 (``set_task_comm`` truncates the same way; a character cut in half is
    dropped) with every non-printable character replaced by ``?``, so that a name
    from HELLO or ``/proc`` cannot inject escape sequences or lines into what
    ``accelctl`` and fdinfo print. An empty name becomes ``"?"``."""
    cut = name.encode("utf-8", "replace")[:COMM_MAX].decode("utf-8", "ignore")
    return "".join(c if c.isprintable() else "?" for c in cut) or "?"


def _comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    except OSError:
        return "?"


class Session:
    """A control connection, and the task behind it once it says HELLO.

    Args:
        server: The server.
        sock: The accepted connection (blocking).
    """

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.clock = server.machine.clock
        self.syscalls = Syscalls(server.machine.subsystem)
        self.pid, self.uid, self.gid = peer_credentials(sock)
        # Every record carries its sender's (pid, uid, gid) (SCM_CREDENTIALS): a
        # socket inherited or passed to another process must not act as this one.
        pass_credentials(sock)
        #: The credentials of this session's records: those of its first record,
        #: which must come from the process that connected (SO_PEERCRED pid).
        self.record_creds: tuple[int, int, int] | None = None
        self.task: Task | None = None
        self.token = secrets.token_bytes(p.TOKEN_SIZE)
        self._send_lock = threading.Lock()
        #: Held while a reply hands out descriptors and our copies are closed.
        self._handing_out = threading.Lock()
        self._workers: ThreadPoolExecutor | None = None
        self._inflight: set[Future[None]] = set()
        self._arenas: dict[int, SharedMemory] = {}
        self._mappings: dict[int, Mapping] = {}
        self._next_mapping = 1
        self._charge = _BufferCharge(server, self.pid, self.uid)
        self._unwatch: Any = None
        self._reader = RecordReader(sock, creds=True)
        #: Handles this session proved: handle -> the server end of the file, and
        #: the file's key -> handle (guarded by ``clock.lock``).
        self._handles: dict[int, FileEnd] = {}
        self._handle_of: dict[tuple[int, int], int] = {}
        self._next_handle = 1
        self._first = True
        #: Called once the session has ended (its teardown done), on that thread.
        self.on_end: Callable[[], None] | None = None
        #: Replies waiting for the client to read (only the dispatcher's thread
        #: queues them): ``(record, descriptors, what to do once sent)``.
        self._outbox: deque[tuple[bytes, list[int], Callable[[], None] | None]] = deque()
        self._dispatcher: threading.Thread | None = None
        #: The native client's pidfd said it exited: nothing more is served.
        self.process_gone = False
        self.closing = False
        #: The server closed the connection (a protocol violation, an internal
        #: error): the files served for this session are released with it.
        self.refused = False

    # -- plumbing ----------------------------------------------------------------
    def send(
        self,
        message: p.Message,
        rid: int = 0,
        fds: list[int] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """Send a reply; a client that went away is not an error. ``on_sent`` runs
        once the record is gone (or failed): at once, or — once the session is
        dispatched and the client's socket is full — when :meth:`flush` sends it.

        A dispatched session's replies never wait for the client: a worker's
        reply the socket cannot take now is queued by the dispatcher thread
        behind the others. A worker blocked in ``sendmsg`` would hold the send
        lock (and, with descriptors, ``_handing_out``), which the dispatcher
        takes: a client that stops reading would stop every session."""
        if type(message) is p.Result and not (message.errno or message.placeholders):
            data = p.encode_result(rid, message.ret, message.handle)  # the common reply
        else:
            data = p.encode(message, rid)
        dispatcher = self._dispatcher
        if dispatcher is not None:
            if dispatcher is threading.current_thread():
                self._queue(data, fds or [], on_sent)
            else:
                self._send_from_worker(data, fds or [], on_sent)
            return
        try:
            with self._send_lock:
                send_record(self.sock, data, fds or [])
        except OSError as exc:
            log.debug("pid %d: reply %s not sent: %s", self.pid, message.TYPE.name, exc)
        finally:
            if on_sent is not None:
                on_sent()

    def _send_from_worker(
        self, data: bytes, fds: list[int], on_sent: Callable[[], None] | None
    ) -> None:
        """(A worker of a dispatched session) send without blocking, or have the
        dispatcher queue the reply."""
        try:
            with self._send_lock:
                send_record(self.sock, data, fds, socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.server.dispatcher_post(lambda: self._queue(data, fds, on_sent))
            return
        except OSError as exc:
            log.debug("pid %d: reply not sent: %s", self.pid, exc)
        if on_sent is not None:
            on_sent()

    def _queue(self, data: bytes, fds: list[int], on_sent: Callable[[], None] | None) -> None:
        """(Dispatcher thread) send without blocking, or queue behind earlier replies."""
        if not self._outbox:
            try:
                with self._send_lock:
                    send_record(self.sock, data, fds, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            except OSError as exc:
                log.debug("pid %d: reply not sent: %s", self.pid, exc)
                if on_sent is not None:
                    on_sent()
                return
            else:
                if on_sent is not None:
                    on_sent()
                return
        with self._send_lock:
            # Checked and queued under the send lock, which teardown holds to
            # empty the outbox once ``closing`` is set: nothing is left behind.
            queued = not self.closing and len(self._outbox) < OUTBOX_MAX
            if queued:
                self._outbox.append((data, fds, on_sent))
        if queued:
            self.server.dispatcher_want_write(self)
            return
        if self.closing:  # teardown empties the outbox: nothing more goes in
            if on_sent is not None:
                on_sent()
            return
        if len(self._outbox) >= OUTBOX_MAX:
            log.warning(
                "pid %d does not read its replies (%d queued); closing its session",
                self.pid,
                len(self._outbox),
            )
            self.refused = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            if on_sent is not None:
                on_sent()
            return

    def flush(self) -> bool:
        """(Dispatcher thread) send queued replies while the socket takes them;
        whether the queue is empty."""
        while self._outbox:
            data, fds, on_sent = self._outbox[0]
            try:
                with self._send_lock:
                    send_record(self.sock, data, fds, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError as exc:
                log.debug("pid %d: reply not sent: %s", self.pid, exc)
            self._outbox.popleft()
            if on_sent is not None:
                on_sent()
        return True

    def _fail(self, rid: int, exc: BaseException) -> None:
        self.send(self._error_result(exc), rid)

    def _error_result(self, exc: BaseException) -> p.Result:
        """The RESULT a failed call answers with."""
        # (An interrupted call reaches here as EINTR: the system-call layer
        # turns RestartSyscall into Interrupted or restarts the call.)
        if self.closing and isinstance(exc, OSError) and exc.errno == errno.EINTR:
            # Interrupted by the server's own stop, not by a signal of the client:
            # the device is going away, as after a hot-unplug.
            return p.Result(errno=errno.ENODEV, message="the devfs server is stopping")
        if isinstance(exc, OSError):
            code = exc.errno if exc.errno and 0 < exc.errno < 4096 else errno.EIO
            return p.Result(errno=code, message=str(exc.strerror or exc))
        log.error("pid %d: internal error serving a request", self.pid, exc_info=exc)
        return p.Result(errno=errno.EIO, message=f"server error: {exc!r}")

    def run(self) -> None:
        """Serve the connection on this thread until it has said HELLO — then the
        server's dispatcher (:mod:`~accelcore.server.dispatch`), if it has one,
        serves it — or until it ends; never raises."""
        try:
            # A connection that says nothing within the timeout is closed: silent
            # connects must not hold a thread and a descriptor for ever.
            self.sock.settimeout(self.server.limits.hello_timeout)
        except OSError:
            self.end()
            return
        # What the session's calls allocate is charged to its client (workers and
        # the dispatcher do the same around each call).
        with charge_to(self._charge):
            while self.step(nonblock=False):
                if self.task is not None:
                    # Set first: the dispatcher may serve a record (and reply)
                    # before dispatch() returns.
                    self._dispatcher = self.server.dispatcher_thread
                    if self.server.dispatch(self):
                        return
                    self._dispatcher = None
        self.end()

    def end(self) -> None:
        """The session is over: tear it down, then tell the server (``on_end``)."""
        try:
            self.teardown()
        finally:
            if self.on_end is not None:
                self.on_end()

    def step(self, *, nonblock: bool) -> bool:
        """Receive and handle one record (``nonblock``: only if one is there, as the
        dispatcher asks); whether the session goes on. Never raises."""
        if self.closing:
            return False
        try:
            try:
                data, fds, creds = self._reader.recv(socket.MSG_DONTWAIT if nonblock else 0)
            except BlockingIOError:
                return True
            if self._first:
                self._first = False
                self.sock.settimeout(None)
            if (not data and not fds) or self.process_gone:
                close_all(fds)
                return False
            try:
                try:
                    frame = p.decode(data)
                except p.VersionMismatch as exc:
                    if self.task is None:  # say why before closing
                        self.send(p.Result(errno=errno.EPROTONOSUPPORT, message=str(exc)))
                    raise
                if frame.message.fd_count() != len(fds):
                    raise p.ProtocolError(
                        f"{frame.message.TYPE.name} needs {frame.message.fd_count()} "
                        f"descriptors, got {len(fds)}"
                    )
            except p.ProtocolError:
                close_all(fds)
                raise
            if not self._sender_ok(frame.rid, frame.message, creds):
                close_all(fds)
                return True
            if nonblock:
                with charge_to(self._charge):
                    return self._handle(frame.rid, frame.message, fds)
            return self._handle(frame.rid, frame.message, fds)
        except p.ProtocolError as exc:
            self.refused = True
            log.warning(
                "refused a record from pid %d on the control endpoint: %s; closing that connection",
                self.pid,
                exc,
            )
        except TimeoutError:
            log.warning(
                "pid %d sent nothing within %g s of connecting; closing that connection",
                self.pid,
                self.server.limits.hello_timeout,
            )
        except OSError as exc:
            if not self.closing:
                log.debug("pid %d: connection error: %s", self.pid, exc)
        except Exception:
            self.refused = True
            log.exception("pid %d: internal error; closing its connection", self.pid)
        return False

    # -- requests ----------------------------------------------------------------
    def _sender_ok(self, rid: int, msg: p.Message, creds: tuple[int, int, int] | None) -> bool:
        """Whether the record was sent by this session's process with its credentials.

        The kernel checks the *current* task at every system call; ``SO_PEERCRED``
        names only the process that connected. So each record's ``SCM_CREDENTIALS``
        (the kernel fills in the sender's tgid, real uid and real gid) must equal
        those of the session's first record, itself sent by the connecting pid. A
        record from another process (a fork child, or any process the socket was
        inherited by or passed to) or from this process after it changed its uid or
        gid is not executed: it is answered ``EPERM`` naming both pids (a ``SIGNAL``,
        which has no reply, is dropped).
        """
        if self.record_creds is None:
            if creds is not None and creds[0] == self.pid:
                self.record_creds = creds
                return True
        elif creds == self.record_creds:
            return True
        got = (
            "no credentials"
            if creds is None
            else f"pid {creds[0]} (uid {creds[1]}, gid {creds[2]})"
        )
        want = self.record_creds or (self.pid, self.uid, self.gid)
        why = (
            f"{msg.TYPE.name} refused: it was sent by {got}, but this session belongs to "
            f"pid {self.pid} (uid {want[1]}, gid {want[2]}); a process must open its own "
            "session (connect) to use the device"
        )
        log.warning("pid %d: %s", self.pid, why)
        if isinstance(msg, p.Control):
            self.send(p.ControlReply({"ok": False, "errno": errno.EPERM, "error": why}), rid)
        elif not isinstance(msg, p.Signal):
            self.send(p.Result(errno=errno.EPERM, message=why), rid)
        return False

    def _handle(self, rid: int, msg: p.Message, fds: list[int]) -> bool:
        kind = type(msg)
        if self.task is not None:
            # The hot requests first: one type test each.
            if kind is p.Ioctl:
                assert isinstance(msg, p.Ioctl)
                self._ioctl(rid, msg, fds)
                return True
            if kind is p.Batch:
                assert isinstance(msg, p.Batch)
                self._batch(rid, msg, fds)
                return True
        if kind is p.Control:
            assert isinstance(msg, p.Control)
            return self._control(rid, msg)
        if kind is p.Hello:
            if self.task is not None:
                raise p.ProtocolError("second HELLO on one session")
            assert isinstance(msg, p.Hello)
            self._hello(rid, msg)
            return True
        if self.task is None:
            close_all(fds)
            raise p.ProtocolError(f"{msg.TYPE.name} before HELLO")
        if isinstance(msg, p.Signal):
            self.syscalls.signal(self.task)
        elif isinstance(msg, p.Read):
            self._read(rid, msg, fds)
        elif isinstance(msg, p.AddArena):
            self._guard(rid, self._add_arena, msg, fds)
        elif isinstance(msg, p.Mmap):
            self._guard(rid, self._mmap, msg, fds)
        elif isinstance(msg, p.Munmap):
            self._guard(rid, self._munmap, msg, fds)
        elif isinstance(msg, p.Poll):
            self._guard(rid, self._poll, msg, fds)
        elif isinstance(msg, p.Close):
            self._guard(rid, self._close, msg, fds)
        else:
            close_all(fds)
            raise p.ProtocolError(f"{msg.TYPE.name} is not a request")
        return True

    def _guard(self, rid: int, fn: Any, msg: p.Message, fds: list[int]) -> None:
        try:
            fn(rid, msg, fds)
        except Exception as exc:
            self._fail(rid, exc)

    def _hello(self, rid: int, msg: p.Hello) -> None:
        mm = None
        if msg.native:  # the client's own memory and descriptors (accelcore.native)
            from ..native.remote import NativeFdTable, open_native

            try:
                mm = open_native(self.pid)
            except OSError as exc:
                self._fail(rid, exc)
                return
        with self.clock.lock:
            sub = self.server.machine.subsystem
            # A session is a task (its own descriptor table and memory). A second
            # session of one client process gets an engine-allocated pid, so the
            # two tasks neither replace each other in ``sub.tasks`` nor pass the
            # opener checks as one process (tests drive several through one server).
            task = sub.new_task(
                uid=self.uid,
                gid=self.gid,
                groups=_groups_of(self.pid),
                comm=task_comm(msg.comm or _comm_of(self.pid)),
                pid=self.pid if self.pid not in sub.tasks else None,
                restart_syscalls=msg.restart,
            )
            task.files = ServerFdTable(self._room)
            if mm is not None:
                task.mm = mm
                task.files = NativeFdTable(
                    self._room, mm.pidfd, lambda fd: self._resolve([fd])[0], self._put
                )
            self.task = task
        if mm is not None:
            # The session ends when the process does, even if a child keeps its
            # socket: its pid may then name another process (fix for pid reuse).
            self._unwatch = self.server.watch_exit(mm.pidfd, self._process_exited)
        self.server.add_session(self)
        from .. import __version__

        with self.clock.lock:
            table = fd_offsets(self.server.machine.subsystem)
        pairs = tuple((cmd, off) for cmd, offs in sorted(table.items()) for off in offs)
        self.send(p.Welcome(self.token, os.getpid(), task.pid, __version__, pairs), rid)

    def _room(self) -> int:
        """Files this client may still be given (the server's per-client cap)."""
        return self.server.file_room(self.pid, self.uid)

    def _control(self, rid: int, msg: p.Control) -> bool:
        op = msg.request["op"]
        if op == "subscribe":
            self._stream_uevents(rid)
            return False
        reply: dict[str, Any]
        try:
            result = self.server.control(op, msg.request, self.uid)
            reply = {"ok": True, "result": result}
        except OSError as exc:
            code = exc.errno if exc.errno and 0 < exc.errno < 4096 else errno.EIO
            reply = {"ok": False, "errno": code, "error": str(exc.strerror or exc)}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "errno": errno.EINVAL, "error": str(exc)}
        except Exception as exc:
            # A bug in an op must cost this request, not the session or the server.
            log.exception("pid %d: internal error in control op %r", self.pid, op)
            reply = {"ok": False, "errno": errno.EIO, "error": f"server error in {op}: {exc!r}"}
        self.send(p.ControlReply(reply), rid)
        return True

    def _stream_uevents(self, rid: int) -> None:
        """Stream uevents until the client closes or the server stops. At most
        ``limits.uevent_queue`` events wait for a client that does not read; later
        ones are dropped and counted, and one overflow marker
        (:func:`overflow_marker`) goes out before the next event, as the kernel's
        uevent socket reports ``ENOBUFS``."""
        limit = self.server.limits.uevent_queue
        events: queue.Queue[SysUevent] = queue.Queue(maxsize=max(1, limit))
        dropped = [0]
        drop_lock = threading.Lock()
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)

        def listener(ev: SysUevent) -> None:
            try:
                events.put_nowait(ev)
            except queue.Full:
                with drop_lock:
                    dropped[0] += 1
            with contextlib.suppress(OSError):  # a full wake socket already wakes us
                wake_w.send(b"x")

        # Subscribed before the reply: whatever the client does after reading it
        # (a trigger, a reset) is seen on this stream.
        with self.clock.lock:
            unsubscribe = self.server.machine.sysfs.subscribe(listener)
        try:
            self.send(p.ControlReply({"ok": True, "result": None}), rid)
            poller = select.poll()  # not select(): descriptors may be above FD_SETSIZE
            poller.register(self.sock, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            while not self.closing:
                ready = dict(poller.poll(100))
                if ready.get(wake_r.fileno()):
                    with contextlib.suppress(OSError):
                        wake_r.recv(4096)
                if ready.get(self.sock.fileno()) and not self.sock.recv(1):
                    return
                while not self.closing:
                    with drop_lock:
                        lost, dropped[0] = dropped[0], 0
                    if lost:
                        self.send(p.Uevent(overflow_marker(lost)))
                    try:
                        ev = events.get_nowait()
                    except queue.Empty:
                        break
                    self.send(
                        p.Uevent(
                            {
                                "action": ev.action,
                                "devpath": ev.devpath,
                                "subsystem": ev.subsystem,
                                "seqnum": ev.seqnum,
                                "env": dict(ev.env),
                            }
                        )
                    )
        finally:
            with self.clock.lock:
                unsubscribe()
            wake_r.close()
            wake_w.close()

    # -- descriptors and handles ---------------------------------------------------
    def _resolve(self, fds: list[int]) -> list[OpenFile]:
        """The files behind received descriptors, each with a reference for the call
        (the descriptors are closed).

        Our sockets resolve through the server's registry; a memfd becomes a
        :class:`MemfdFile` over the same pages; anything else is an opaque file
        (so ``PRIME_FD_TO_HANDLE`` on it is ``EINVAL``, as for any non-dma-buf).
        """
        out: list[OpenFile] = []
        try:
            for fd in fds:
                file = (
                    self.server.lookup_fd(fd)
                    or _adopt_memfd(fd, self._address_room())
                    or OpenFile()
                )
                out.append(file)
                os.close(fd)
        except BaseException:
            self._put(out)
            close_all(fds[len(out) :])
            raise
        return out

    def add_handle(self, end: FileEnd) -> int:
        """This session's handle for the file of ``end`` (the one it has, or a new
        one); 0 if the session holds as many handles as it may (the client then
        keeps sending that descriptor with each call). Call under ``clock.lock``."""
        h = self._handle_of.get(end.key)
        if h is not None and self._handles.get(h) is end:
            return h
        cap = max(64, 2 * self.server.limits.files_per_client)
        if len(self._handles) >= cap:
            for old, e in list(self._handles.items()):
                if e.closed:
                    del self._handles[old]
                    if self._handle_of.get(e.key) == old:
                        del self._handle_of[e.key]
            if len(self._handles) >= cap:
                return 0
        h = self._next_handle
        if h > 0xFFFF_FFFF:
            return 0
        self._next_handle += 1
        self._handles[h] = end
        self._handle_of[end.key] = h
        return h

    def _forget(self, key: tuple[int, int]) -> None:
        """The client closed its last descriptor of the file ``key``: its handle lapses."""
        with self.clock.lock:
            h = self._handle_of.pop(key, None)
            if h is not None:
                self._handles.pop(h, None)

    def _target(self, handle: int, fd: int, fds: list[int]) -> tuple[OpenFile, int]:
        """The target of a request, with a reference: the file of session handle
        ``handle``; or, with ``handle`` 0, of the descriptor ``fds[0]`` (taken off the
        list and closed), which is given a handle if it is one of ours.

        Returns:
            ``(file, handle proven by this request or 0)``.

        Raises:
            BadFd: ``handle`` is not a handle of this session, or its file was
                released (``EBADF``).
        """
        if handle:
            with self.clock.lock:
                end = self._handles.get(handle)
                if end is None or end.closed or end.file.released:
                    raise BadFd(
                        f"file descriptor {fd} (handle {handle}) is not open in this session"
                    )
                return end.file.get(), 0
        sent = fds.pop(0)
        end = self.server.lookup_end(sent)
        if end is None:
            return self._resolve([sent])[0], 0
        os.close(sent)
        with self.clock.lock:
            return end.file, self.add_handle(end)

    def _files(
        self, handle: int, fd: int, numbers: tuple[int, ...], fds: list[int]
    ) -> tuple[CallFds, int]:
        """The descriptor table of one call: its target under ``fd`` and the files
        of the argument descriptors (``fds``, consumed) under their ``numbers``,
        each with a reference; and the handle proven for the target (or 0)."""
        target, proven = self._target(handle, fd, fds)
        if not numbers:
            return CallFds({fd: target}, held=[target]), proven
        try:
            args = self._resolve([fds.pop(0) for _ in numbers])
        except BaseException:
            self._put([target])
            raise
        files = {fd: target}
        files.update(zip(numbers, args, strict=True))
        return CallFds(files, held=[target, *args]), proven

    def _put(self, files: list[OpenFile]) -> None:
        with self.clock.lock:
            for f in files:
                f.put()

    # -- calls ---------------------------------------------------------------------
    def _ioctl(self, rid: int, msg: p.Ioctl, fds: list[int]) -> None:
        with self.clock.lock:  # one hold for all of it (an RLock: inner holds nest)
            try:
                ctx, proven = self._files(msg.handle, msg.fd, msg.fd_numbers, fds)
            except Exception as exc:
                close_all(fds)
                reply: tuple[p.Message, list[int]] | None = (self._error_result(exc), [])
            else:
                # Most ioctls (INFO, submissions, every core ioctl) never sleep: run
                # them here, saving the hand-off to a worker thread and back, which
                # costs more than the call. Only declared waits need a worker.
                sleeps = ioctl_may_sleep(ctx.files[msg.fd], msg.cmd)
                reply = None if sleeps else self._execute(msg, ctx, proven)
        if reply is not None:
            self._reply(rid, reply)
        else:
            self._on_worker(lambda: self._reply(rid, self._execute(msg, ctx, proven)))

    def _batch(self, rid: int, msg: p.Batch, fds: list[int]) -> None:
        calls: list[tuple[p.Ioctl, CallFds | BaseException, int]] = []
        lock = self.clock.lock
        try:
            lock.acquire()  # one hold for the batch's lookups (an RLock: they nest)
            for call in msg.calls:
                mine = fds[: call.fd_count()]
                del fds[: call.fd_count()]
                try:
                    ctx, proven = self._files(call.handle, call.fd, call.fd_numbers, mine)
                    calls.append((call, ctx, proven))
                except Exception as exc:
                    close_all(mine)
                    calls.append((call, exc, 0))
        except BaseException:
            for _, done, _ in calls:
                if isinstance(done, CallFds):
                    self._put(done.held)
            close_all(fds)
            raise
        finally:
            lock.release()

        def run() -> tuple[p.Message, list[int]]:
            # After a call that returned descriptors the rest are not run (their
            # results are left off, and the client sends them again): each call
            # may return as many descriptors as a reply carries, as when alone.
            results: list[p.Result] = []
            ends: list[int] = []
            for i, (call, done, proven) in enumerate(calls):
                if ends:
                    self._put(
                        [f for _, d, _ in calls[i:] if isinstance(d, CallFds) for f in d.held]
                    )
                    break
                if not isinstance(done, CallFds):
                    results.append(self._error_result(done))
                    continue
                res, ends = self._execute(call, done, proven)
                results.append(res)
            return p.BatchResult(tuple(results)), ends

        with lock:  # one hold for the whole batch unless a call sleeps
            sleeps = any(
                isinstance(done, CallFds) and ioctl_may_sleep(done.files[call.fd], call.cmd)
                for call, done, _ in calls
            )
            reply = None if sleeps else run()
        if reply is not None:
            self._reply(rid, reply)
        else:
            self._on_worker(lambda: self._reply(rid, run()))

    def _on_worker(self, fn: Any) -> None:
        """Run a call that may sleep on one of the session's workers, so that the
        session goes on taking requests (a SIGNAL must reach the sleeper)."""
        if self._workers is None:
            self._workers = ThreadPoolExecutor(
                WORKERS_PER_SESSION, thread_name_prefix=f"accel-pid{self.pid}"
            )

        def charged() -> None:
            with charge_to(self._charge):
                fn()

        fut = self._workers.submit(charged)
        self._inflight.add(fut)
        fut.add_done_callback(self._inflight.discard)

    def _execute(self, msg: p.Ioctl, ctx: CallFds, proven: int) -> tuple[p.Result, list[int]]:
        """Make one ioctl with the descriptor table ``ctx`` (whose references it
        drops); returns its RESULT and the descriptors to send with it (client ends
        of the files the call installed)."""
        task = self.task
        assert task is not None and isinstance(task.files, ServerFdTable)
        table = task.files
        with self.clock.lock:  # re-entered by the call: one hold for all of it
            prev = table.enter(ctx)
            try:
                try:
                    ret = self.syscalls.ioctl(task, msg.fd, msg.cmd, msg.argp)
                finally:
                    table.leave(ctx, prev)
                    for f in ctx.held:
                        f.put()
            except Exception as exc:
                for f, _ in ctx.installed:
                    f.put()
                result = self._error_result(exc)
                result.handle = proven
                return result, []
            if not ctx.installed:
                return p.Result(ret, 0, (), "", proven), []
            ends = [
                self.server.export_file(f, self.pid, self.uid, self.token) for f, _ in ctx.installed
            ]
        placeholders = tuple(PLACEHOLDER_BASE + i for i in range(len(ends)))
        return p.Result(ret, 0, placeholders, "", proven), ends

    def _reply(self, rid: int, reply: tuple[p.Message, list[int]]) -> None:
        message, ends = reply
        if not ends:
            self.send(message, rid)
            return
        # Our copies of the client ends go before a CLOSE of this session is
        # served, so that the client's last close() finds the end hung up.
        with self._handing_out:
            self.send(message, rid, ends, lambda: self.server.handed_out(ends))

    def _read(self, rid: int, msg: p.Read, fds: list[int]) -> None:
        try:
            ctx, _ = self._files(msg.handle, msg.fd, (), fds)
        except Exception as exc:
            close_all(fds)
            self._fail(rid, exc)
            return

        def run() -> None:
            task = self.task
            assert task is not None and isinstance(task.files, ServerFdTable)
            try:
                with task.files.call(ctx):
                    data = self.syscalls.read(task, msg.fd, msg.size, nonblock=msg.nonblock)
            except Exception as exc:
                self._fail(rid, exc)
                return
            finally:
                self._put(ctx.held)
            self.send(p.Data(data), rid)

        if read_may_sleep(ctx.files[msg.fd], nonblock=msg.nonblock):
            self._on_worker(run)
        else:
            run()

    # -- quick requests ------------------------------------------------------------
    def _add_arena(self, rid: int, msg: p.AddArena, fds: list[int]) -> None:
        fd = fds[0]
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if not seals & fcntl.F_SEAL_SHRINK:
                raise OSError(errno.EINVAL, "arena memfd must be sealed with F_SEAL_SHRINK")
            if os.fstat(fd).st_size < msg.size:
                raise OSError(errno.EINVAL, f"arena memfd is smaller than {msg.size:#x} bytes")
            if msg.addr % PAGE_SIZE:
                raise OSError(errno.EINVAL, f"arena address {msg.addr:#x} is not page-aligned")
            self._charge_arena(msg.size)
        except OSError:
            os.close(fd)
            raise
        try:
            mem = SharedMemory(msg.size, f"arena-{self.pid}", fd=fd)
        except BaseException:
            self._uncharge_arena(msg.size)
            raise
        try:
            with self.clock.lock:
                assert self.task is not None
                self.task.mm.map(mem.view(), addr=msg.addr, name="arena")
        except BaseException:
            mem.close()
            self._uncharge_arena(msg.size)
            raise
        self._arenas[msg.addr] = mem
        self.send(p.Result(), rid)

    # -- caps (the server's ledger) --------------------------------------------------
    def _charge_arena(self, size: int) -> None:
        """Charge one arena of ``size`` bytes to this process and its uid.

        Raises:
            NoMemory: past ``arenas_per_client`` or the address-space caps.
        """
        lim, ledger = self.server.limits, self.server.ledger
        if size <= 0:
            raise OSError(errno.EINVAL, f"arena size {size} must be positive")
        ledger.charge(
            "arenas", 1, self.pid, self.uid, (lim.arenas_per_client, -1), NoMemory, "arenas"
        )
        try:
            ledger.charge(
                "address_space",
                size,
                self.pid,
                self.uid,
                (lim.address_space_per_client, lim.address_space_per_uid),
                NoMemory,
                "bytes of address space in the server",
            )
        except BaseException:
            ledger.uncharge("arenas", 1, self.pid, self.uid)
            raise

    def _uncharge_arena(self, size: int) -> None:
        self.server.ledger.uncharge("arenas", 1, self.pid, self.uid)
        self.server.ledger.uncharge("address_space", size, self.pid, self.uid)

    def _address_room(self) -> int:
        """Bytes this process may still have the server map."""
        lim, ledger = self.server.limits, self.server.ledger
        return min(
            lim.address_space_per_client - ledger.used("address_space", pid=self.pid),
            lim.address_space_per_uid - ledger.used("address_space", uid=self.uid),
        )

    def _charge_mapping(self) -> None:
        """Raises:
        NoMemory: the process has ``mappings_per_client`` mappings."""
        self.server.ledger.charge(
            "mappings",
            1,
            self.pid,
            self.uid,
            (self.server.limits.mappings_per_client, -1),
            NoMemory,
            "mappings",
        )

    def _uncharge_mapping(self, n: int = 1) -> None:
        if n:
            self.server.ledger.uncharge("mappings", n, self.pid, self.uid)

    def _mmap(self, rid: int, msg: p.Mmap, fds: list[int]) -> None:
        assert self.task is not None
        try:
            self._charge_mapping()
        except BaseException:
            close_all(fds)
            raise
        try:
            ctx, _ = self._files(msg.handle, msg.fd, (), fds)
        except BaseException:
            self._uncharge_mapping()
            raise
        file = ctx.files[msg.fd]
        assert isinstance(self.task.files, ServerFdTable)
        charged = True
        try:
            with self.clock.lock, self.task.files.call(ctx):
                mapping = self.syscalls.mmap(
                    self.task, msg.fd, msg.offset, msg.length, write=msg.writable
                )
                try:
                    mem, offset = backing_memory(file, mapping)
                    # A client must not be able to shrink memory the server touches.
                    with contextlib.suppress(OSError):
                        mem.seal()
                    # A read-only request gets a read-only open of the memfd.
                    memfd = os.dup(mem.fd) if msg.writable else mem.open_readonly()
                except BaseException:
                    mapping.unmap()
                    raise
                mid = self._next_mapping
                self._next_mapping += 1
                self._mappings[mid] = mapping
                charged = False  # now the mapping's, given back when it goes
        finally:
            self._put(ctx.held)
            if charged:
                self._uncharge_mapping()
        try:
            self.send(p.Mapped(mid, offset, mapping.length), rid, [memfd])
        finally:
            os.close(memfd)

    def _munmap(self, rid: int, msg: p.Munmap, fds: list[int]) -> None:
        if msg.mapping_id & p.ARENA_BIT:
            addr = msg.mapping_id & ~p.ARENA_BIT
            mem = self._arenas.pop(addr, None)
            if mem is None:
                raise OSError(errno.EINVAL, f"no arena at {addr:#x}")
            with self.clock.lock:
                assert self.task is not None
                with contextlib.suppress(AccelError):
                    self.task.mm.unmap(addr)
                mem.close()  # pages a device pinned stay alive with its view
            self.send(p.Result(), rid)
            return
        mapping = self._mappings.pop(msg.mapping_id, None)
        if mapping is None:
            raise OSError(errno.EINVAL, f"no mapping {msg.mapping_id}")
        assert self.task is not None
        self.syscalls.munmap(self.task, mapping)
        self._uncharge_mapping()
        self.send(p.Result(), rid)

    def _poll(self, rid: int, msg: p.Poll, fds: list[int]) -> None:
        ctx, proven = self._files(msg.handle, msg.fd, (), fds)
        assert self.task is not None and isinstance(self.task.files, ServerFdTable)
        try:
            with self.task.files.call(ctx):
                mask = self.syscalls.poll(self.task, msg.fd)
        finally:
            self._put(ctx.held)
        self.send(p.Result(ret=mask, handle=proven), rid)

    def _close(self, rid: int, msg: p.Close, fds: list[int]) -> None:
        # The client closed its descriptor before sending this: if that was the
        # last copy, the server end has hung up and the file is released now.
        # A barrier, not a critical section: a worker that is handing out a
        # descriptor holds this lock until its own copy is closed, so taking and
        # dropping it waits for that copy to go before the hang-up is checked.
        self._handing_out.acquire()
        self._handing_out.release()
        if msg.forget:
            self._forget((msg.dev, msg.ino))
        self.server.release_if_closed((msg.dev, msg.ino))
        self.send(p.Result(), rid)

    # -- the end -------------------------------------------------------------------
    def interrupt(self) -> None:
        """Interrupt every wait of the task, for good (it is exiting)."""
        if self.task is None:
            return
        with self.clock.lock:
            self.task.restart_syscalls = False
            self.task.post_signal()
            self.clock.notify()

    def _process_exited(self) -> None:
        """Selector thread: the native client's pidfd says it exited; end the
        session (its socket may live on in a child, but the task is gone)."""
        log.info("pid %d exited; ending its native session", self.pid)
        self.process_gone = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def teardown(self) -> None:
        """Process exit: interrupt calls, drop mappings and arenas, exit the task."""
        self.closing = True
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.server.remove_session(self)
        task = self.task
        if task is not None:
            done = threading.Event()
            for _ in range(int(TEARDOWN_TIMEOUT / 0.05)):
                if not self._inflight:
                    done.set()
                    break
                self.interrupt()
                done.wait(0.05)
            if not done.is_set():
                log.warning(
                    "pid %d: %d calls did not return after exit", self.pid, len(self._inflight)
                )
        if self._workers is not None:
            self._workers.shutdown(wait=False)
        if self.refused:
            n = self.server.release_session_files(self.token)
            if n:
                log.warning("pid %d: released %d files of the session closed", self.pid, n)
        if task is not None:
            with self.clock.lock:
                for mapping in self._mappings.values():
                    mapping.unmap()
                self._uncharge_mapping(len(self._mappings))
                self._mappings.clear()
                for addr, mem in self._arenas.items():
                    with contextlib.suppress(AccelError):
                        task.mm.unmap(addr)
                    self._uncharge_arena(mem.size)
                    mem.close()
                self._arenas.clear()
                sub = self.server.machine.subsystem
                if sub.tasks.get(task.pid) is task:
                    sub.exit_task(task)
                else:
                    task.exit()
        with self._send_lock:  # (closing is set: _queue adds nothing after this)
            unread = list(self._outbox)
            self._outbox.clear()
        for _, _, on_sent in unread:  # replies the client never read: our copies go
            if on_sent is not None:
                on_sent()
        with contextlib.suppress(OSError):
            self.sock.close()


class _BufferCharge:
    """The memory a client's calls allocate, charged to it and its uid in the
    server's ledger (:func:`~accelcore.memory.charge_to`), until it is freed —
    also after the session ended, if another process still holds the buffer."""

    def __init__(self, server: Server, pid: int, uid: int) -> None:
        self.ledger, self.limits, self.pid, self.uid = server.ledger, server.limits, pid, uid

    def charge(self, nbytes: int) -> None:
        lim = self.limits
        self.ledger.charge(
            "buffers",
            1,
            self.pid,
            self.uid,
            (lim.buffers_per_client, lim.buffers_per_uid),
            NoMemory,
            "buffers",
        )
        try:
            self.ledger.charge(
                "buffer_bytes",
                nbytes,
                self.pid,
                self.uid,
                (lim.buffer_bytes_per_client, lim.buffer_bytes_per_uid),
                NoMemory,
                "bytes of buffers",
            )
        except BaseException:
            self.ledger.uncharge("buffers", 1, self.pid, self.uid)
            raise

    def uncharge(self, nbytes: int) -> None:
        self.ledger.uncharge("buffers", 1, self.pid, self.uid)
        self.ledger.uncharge("buffer_bytes", nbytes, self.pid, self.uid)


def overflow_marker(dropped: int) -> dict[str, Any]:
    """The uevent a subscription gets in place of ``dropped`` uevents it was too slow
    to read: action ``overflow``, ``env["ERRNO"]`` ``"ENOBUFS"``, ``env["DROPPED"]``
    the count (the kernel's uevent socket fails a ``recv`` with ``ENOBUFS``)."""
    return {
        "action": "overflow",
        "devpath": "",
        "subsystem": "",
        "seqnum": 0,
        "env": {"ERRNO": "ENOBUFS", "DROPPED": str(dropped)},
    }


def _adopt_memfd(fd: int, room: int) -> MemfdFile | None:
    """A :class:`MemfdFile` over the pages of a received memfd, or ``None``.

    It keeps the descriptor's access mode, and a write-sealed memfd (which
    cannot be mapped writable) is mapped read-only, so udmabuf sees its seals.

    Raises:
        NoMemory: the memfd is larger than ``room``, the bytes the sender may still
            have the server map (``address_space_per_client``/``_per_uid``).
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        size = os.fstat(fd).st_size
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return None
    if size <= 0:
        return None
    if size > room:
        raise NoMemory(
            f"memfd of {size} bytes exceeds the {max(room, 0)} bytes of address space "
            "this client may still have the server map"
        )
    readonly = bool(seals & WRITE_SEALS) or (flags & os.O_ACCMODE) == os.O_RDONLY
    try:
        memory = SharedMemory(size, "memfd", fd=os.dup(fd), readonly=readonly)
    except (AccelError, OSError):
        return None
    return MemfdFile(memory, flags=flags & os.O_ACCMODE)
