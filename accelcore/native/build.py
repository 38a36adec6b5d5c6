"""Build the ``LD_PRELOAD`` library (``shim.c``) with the system C compiler.

The library is compiled at first use into a per-user cache directory
(``$XDG_CACHE_HOME/accelcore/native``, else ``~/.cache/accelcore/native``), named
by a hash of its source and the compiler, so an upgrade rebuilds it and
concurrent first uses do not clash (the result is renamed into place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import AccelError

__all__ = [
    "SHIM_SOURCE",
    "CompilerMissing",
    "ShimBuildFailed",
    "cache_dir",
    "find_compiler",
    "shim_library",
]

#: The library's C source, shipped in the package.
SHIM_SOURCE = Path(__file__).with_name("shim.c")
#: The public headers for C programs (``accel_drm.h`` combines with libdrm).
INCLUDE_DIR = Path(__file__).with_name("include")


class CompilerMissing(AccelError):
    """``ENOENT``: no C compiler to build the preload library with."""

    errno_value = 2


class ShimBuildFailed(AccelError):
    """``EIO``: the compiler rejected the preload library (its output is the message)."""

    errno_value = 5


def find_compiler() -> str | None:
    """``$CC``, else ``cc``, else ``gcc``, else ``clang`` on ``PATH``; ``None`` if none."""
    env = os.environ.get("CC")
    if env and shutil.which(env.split()[0]):
        return env
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return name
    return None


def cache_dir() -> Path:
    """The per-user directory the library is built into."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "accelcore" / "native"


def shim_library(*, compiler: str | None = None) -> Path:
    """The path of the built preload library, building it if needed.

    Raises:
        CompilerMissing: no C compiler (install gcc or clang, or set ``$CC``).
        ShimBuildFailed: the compiler failed; the message has its output.
    """
    cc = compiler or find_compiler()
    if cc is None:
        raise CompilerMissing(
            "accelctl run needs a C compiler to build its preload library "
            f"({SHIM_SOURCE.name}); none of $CC, cc, gcc, clang is on PATH: "
            "install one (e.g. apt-get install gcc)"
        )
    source = SHIM_SOURCE.read_bytes()
    digest = hashlib.sha256(source + cc.encode()).hexdigest()[:16]
    out = cache_dir() / f"libaccelshim-{digest}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        cmd = [
            *cc.split(),
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-o",
            tmp,
            str(SHIM_SOURCE),
            "-ldl",
            "-lpthread",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ShimBuildFailed(
                f"building {SHIM_SOURCE.name} with {' '.join(cmd)} failed:\n{res.stderr.strip()}"
            )
        os.chmod(tmp, 0o755)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
