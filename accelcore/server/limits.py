"""The server's caps: what one client process, and one uid, may make it hold.

The engine caps what a task may hold in a device (handles, events, device
memory, the task's descriptor table); these caps bound what the *server process*
holds on behalf of its clients, so that one client (or one user with many
processes) cannot starve the others of the server's descriptors, threads,
address space or memory. Each cap has a default here, an option of
``python -m accelcore.server`` and ``accelctl sim start``, and an errno when hit:

============================  =========  =======================================
cap                           errno      counts
============================  =========  =======================================
``sessions_per_client``       EMFILE     control connections of one pid; also
                                         node connections not yet opened
``sessions_per_uid``          EMFILE     the same, summed over one uid
``files_per_client``          EMFILE     open files served for one pid (nodes,
                                         dma-bufs, sync files; one server fd each)
``files_per_uid``             EMFILE     the same, summed over one uid
``arenas_per_client``         ENOMEM     user-memory arenas of one pid
``address_space_per_client``  ENOMEM     bytes the server maps for one pid
                                         (arenas, memfds passed to ioctls)
``address_space_per_uid``     ENOMEM     the same, summed over one uid
``mappings_per_client``       ENOMEM     live ``mmap`` s of one pid (the kernel's
                                         ``vm.max_map_count``)
``buffers_per_client``        ENOMEM     buffers (memfds: one server descriptor
                                         each) the pid's calls allocated
``buffers_per_uid``           ENOMEM     the same, summed over one uid
``buffer_bytes_per_client``   ENOMEM     bytes of those buffers (device memory
                                         of virtual devices, GTT, allocations
                                         of DRAM/VRAM, …)
``buffer_bytes_per_uid``      ENOMEM     the same, summed over one uid
``uevent_queue``              ENOBUFS    uevents queued for a subscriber that
                                         does not read; then one overflow marker
``hello_timeout``             (closed)   seconds a new connection may take to
                                         send its first record (HELLO, OPEN…)
============================  =========  =======================================
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields

from ..errors import AccelError

__all__ = ["DEFAULT_LIMITS", "Ledger", "ServerLimits"]

GiB = 1 << 30


@dataclass(frozen=True)
class ServerLimits:
    """The server's per-client and per-uid caps (see the module docstring).

    Attributes:
        sessions_per_client: Control connections (and, separately, node connections
            that have not sent OPEN yet) of one process; ``EMFILE`` past it.
        sessions_per_uid: The same, for all processes of one uid; ``EMFILE``.
        files_per_client: Open files served for one process; ``EMFILE``.
        files_per_uid: Open files served for all processes of one uid; ``EMFILE``.
        arenas_per_client: User-memory arenas of one process; ``ENOMEM``.
        address_space_per_client: Bytes of client memory the server maps for one
            process (arenas, memfds passed as ioctl arguments); ``ENOMEM``.
        address_space_per_uid: The same, for all processes of one uid; ``ENOMEM``.
        mappings_per_client: Live ``mmap`` s of one process; ``ENOMEM``.
        buffers_per_client: Buffers (memfds the server holds, one descriptor
            each) allocated by one process's calls and not yet freed; ``ENOMEM``.
        buffers_per_uid: The same, for all processes of one uid; ``ENOMEM``.
        buffer_bytes_per_client: Bytes of those buffers; ``ENOMEM``.
        buffer_bytes_per_uid: The same, for all processes of one uid; ``ENOMEM``.
        uevent_queue: Uevents queued for a subscriber that does not read; past it
            they are dropped and an overflow marker (``ENOBUFS``) is sent.
        hello_timeout: Seconds a new control or node connection may take to send
            its first record; then it is closed.
    """

    sessions_per_client: int = 64
    sessions_per_uid: int = 1024
    files_per_client: int = 1024
    files_per_uid: int = 4096
    arenas_per_client: int = 64
    address_space_per_client: int = 16 * GiB
    address_space_per_uid: int = 64 * GiB
    mappings_per_client: int = 4096
    buffers_per_client: int = 4096
    buffers_per_uid: int = 8192
    buffer_bytes_per_client: int = 16 * GiB
    buffer_bytes_per_uid: int = 64 * GiB
    uevent_queue: int = 1024
    hello_timeout: float = 5.0

    @staticmethod
    def option_name(field: str) -> str:
        """``--max-files-per-client`` for ``files_per_client`` (``--hello-timeout``
        and ``--uevent-queue`` as they are)."""
        flag = field.replace("_", "-")
        return f"--{flag}" if field in ("hello_timeout", "uevent_queue") else f"--max-{flag}"

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser) -> None:
        """Add one option per cap to ``python -m accelcore.server``'s parser."""
        for f in fields(cls):
            ap.add_argument(
                cls.option_name(f.name),
                dest=f"limit_{f.name}",
                type=float if f.type == "float" else int,
                default=None,
                help=f"cap (default {f.default})",
            )

    @classmethod
    def from_arguments(cls, opts: argparse.Namespace) -> ServerLimits:
        """The limits named on the command line, defaults for the rest."""
        given = {
            f.name: getattr(opts, f"limit_{f.name}")
            for f in fields(cls)
            if getattr(opts, f"limit_{f.name}", None) is not None
        }
        return cls(**given)

    def to_arguments(self) -> list[str]:
        """The command-line options that reproduce the non-default caps."""
        out: list[str] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out += [self.option_name(f.name), str(value)]
        return out


DEFAULT_LIMITS = ServerLimits()


class Ledger:
    """Amounts charged per ``(resource, "pid" | "uid", id)``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[tuple[str, str, int], int] = {}

    def used(self, resource: str, *, pid: int | None = None, uid: int | None = None) -> int:
        """What ``pid`` (or ``uid``) holds of ``resource``."""
        who = ("pid", pid) if pid is not None else ("uid", uid if uid is not None else -1)
        with self._lock:
            return self._used.get((resource, *who), 0)

    def charge(
        self,
        resource: str,
        amount: int,
        pid: int,
        uid: int,
        caps: Sequence[int],
        error: type[AccelError],
        what: str,
    ) -> None:
        """Charge ``amount`` of ``resource`` to ``pid`` and ``uid`` (caps
        ``(per_client, per_uid)``; a negative cap is none).

        Raises:
            error: the charge would pass a cap (nothing is charged); the message
                names the process or uid, what it holds and the cap.
        """
        with self._lock:
            keys = [(resource, "pid", pid), (resource, "uid", uid)]
            for key, cap in zip(keys, caps, strict=False):
                held = self._used.get(key, 0)
                if cap >= 0 and held + amount > cap:
                    who = f"{'pid' if key[1] == 'pid' else 'uid'} {key[2]}"
                    raise error(
                        f"{who} holds {held} {what} and asks for {amount} more: "
                        f"the per-{'client' if key[1] == 'pid' else 'uid'} cap is {cap}"
                    )
            for key in keys:
                self._used[key] = self._used.get(key, 0) + amount

    def uncharge(self, resource: str, amount: int, pid: int, uid: int) -> None:
        """Give back what :meth:`charge` took."""
        with self._lock:
            for key in ((resource, "pid", pid), (resource, "uid", uid)):
                left = self._used.get(key, 0) - amount
                if left > 0:
                    self._used[key] = left
                else:
                    self._used.pop(key, None)

    def empty(self) -> bool:
        """Whether nothing is charged (every client gave everything back)."""
        with self._lock:
            return not self._used
