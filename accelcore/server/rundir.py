"""The runtime directory: made and checked so that no other user can plant in it.

The server's sockets, its pid file and its log live in one directory (see
:func:`~accelcore.server.server.default_runtime_dir`). Another local user must not
be able to put something there first (a symlink to a file of ours, a socket of
theirs, a directory they own) and have the server write through it, delete it, or
have our clients talk to it. The policy, enforced here once for the server, the
daemon helpers and ``accelctl sim``:

* The directory is a real directory (``lstat``: not a symlink) owned by the
  effective uid, and writable by no one else (no ``S_IWGRP``/``S_IWOTH``). Mode
  ``0700`` keeps every other user out; ``0750``/``0755`` (group or others may
  traverse, so they may connect to the sockets and the nodes' own modes decide)
  is accepted for an explicitly chosen directory. A missing directory is created
  with ``mkdir(0700)``.
* The fallback in the shared temp dir (no ``$ACCEL_RUNTIME_DIR`` nor
  ``$XDG_RUNTIME_DIR``) is per-uid (``accelcore-UID``) and must be exactly ``0700``.
* Every path the server uses below it (node directories, sockets, ``server.pid``,
  ``server.log``, ``machine.json``) is checked component by component with
  ``lstat``: a symlink, or an entry of another owner, is refused. Files are
  opened with ``O_NOFOLLOW`` (and ``O_EXCL`` where the server creates them).
* The server only removes what it made: the sockets it bound (same inode) and
  its own pid file.

Every refusal is :class:`UnsafeRuntimeDir` (``EPERM``), naming the path, its
owner and its mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..errors import NotPermitted

__all__ = [
    "UnsafeRuntimeDir",
    "check_entry",
    "ensure_dir",
    "ensure_runtime_dir",
    "open_private",
    "remove_if_ours",
]


class UnsafeRuntimeDir(NotPermitted):
    """``EPERM``: a runtime directory, or a path in it, that another user could have
    planted or could change (symlink, foreign owner, writable by others)."""


def _describe(path: Path, st: os.stat_result) -> str:
    kind = "symlink" if stat.S_ISLNK(st.st_mode) else stat.filemode(st.st_mode)
    return f"{path} ({kind} {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid})"


def _check_dir(path: Path, *, private: bool) -> None:
    st = os.lstat(path)
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeRuntimeDir(f"refusing runtime path {_describe(path, st)}: not a directory")
    if st.st_uid != me:
        raise UnsafeRuntimeDir(
            f"refusing runtime directory {_describe(path, st)}: not owned by uid {me}"
        )
    mode = stat.S_IMODE(st.st_mode)
    bad = 0o077 if private else 0o022
    if mode & bad:
        need = "0700" if private else "0700, 0750 or 0755"
        raise UnsafeRuntimeDir(
            f"refusing runtime directory {_describe(path, st)}: mode must be {need}"
        )


def ensure_runtime_dir(path: Path, *, private: bool = False) -> Path:
    """Create ``path`` (``mkdir 0700``, parents too) if missing, then check it.

    Args:
        path: The runtime directory.
        private: Require mode ``0700`` exactly (the shared-temp-dir fallback).

    Returns:
        ``path``.

    Raises:
        UnsafeRuntimeDir: it is a symlink, not a directory, owned by another
            uid, or writable by group or others.
    """
    try:
        os.lstat(path)
    except FileNotFoundError:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # lost a race: checked below
            os.mkdir(path, 0o700)
    _check_dir(path, private=private)
    return path


def ensure_dir(root: Path, rel: Path) -> Path:
    """Directory ``root/rel``, created (``0755``: ``root``'s mode gates access) or
    checked component by component: each must be a real directory owned by us and
    not writable by others.

    Raises:
        UnsafeRuntimeDir: a component is a symlink or another user's.
    """
    cur = root
    for part in rel.parts:
        cur = cur / part
        try:
            os.mkdir(cur, 0o755)
            os.chmod(cur, 0o755)  # no umask surprises
        except FileExistsError:
            pass
        _check_dir(cur, private=False)
    return cur


def check_entry(path: Path, kind: int) -> os.stat_result | None:
    """``lstat`` of an existing entry the server might reuse or remove: ``None`` if
    there is none; its stat if it is of file type ``kind`` (``stat.S_IFSOCK``,
    ``stat.S_IFREG``) and owned by us.

    Raises:
        UnsafeRuntimeDir: something else is there (a symlink, another type, another
            user's entry).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_IFMT(st.st_mode) != kind or st.st_uid != os.geteuid():
        raise UnsafeRuntimeDir(
            f"refusing to reuse {_describe(path, st)}: the server did not make it "
            f"(expected a {'socket' if kind == stat.S_IFSOCK else 'regular file'} "
            f"of uid {os.geteuid()})"
        )
    return st


def open_private(path: Path, flags: int, mode: int = 0o644) -> int:
    """``open(path, flags | O_NOFOLLOW | O_CLOEXEC)`` of a regular file of ours.

    Raises:
        UnsafeRuntimeDir: ``path`` is a symlink, not a regular file, or not ours.
        OSError: the open failed otherwise (``EEXIST`` with ``O_EXCL``).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            check_entry(path, stat.S_IFREG)
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafeRuntimeDir(f"refusing to write {_describe(path, st)}: not our regular file")
    return fd


def remove_if_ours(path: Path, ident: tuple[int, int] | None = None, kind: int = 0) -> bool:
    """Unlink ``path`` only if it is the entry we made: same ``(st_dev, st_ino)``
    as ``ident`` when given, else of file type ``kind`` and owned by us.

    Returns:
        Whether it was removed.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if ident is not None:
        if (st.st_dev, st.st_ino) != ident:
            return False
    elif stat.S_IFMT(st.st_mode) != kind or st.st_uid != os.geteuid():
        return False
    with contextlib.suppress(OSError):
        os.unlink(path)
        return True
    return False
