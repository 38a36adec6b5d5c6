"""Shell sessions the guide runs when it is built: ``$ accelctl ...`` with its output.

``.. accel-session::`` holds lines ``$ accelctl ARGS`` each followed by the output
it prints (stdout and stderr, as a terminal shows them). When the guide is
built, every command runs as a real process (``python -m accelcore.cli``) and
its output is compared with the text, as doctest compares (``...`` matches
anything, runs of whitespace are one); a command that exits non-zero ends its
output with ``[exit N]``. A difference is a build warning, so ``sphinx -W``
fails, and the reader sees exactly what the code prints: paste the ``$`` lines
into a shell.

All sessions of one page share a runtime directory (``$ACCEL_RUNTIME_DIR``), so
``accelctl sim start`` in one block serves the next; any server a page leaves
running is stopped when the build ends. Lines are run with ``COLUMNS=100``.
"""

from __future__ import annotations

import doctest
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

_CHECKER = doctest.OutputChecker()
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: Runtime directories by document (stopped and removed when the build ends).
_RUNTIME: dict[str, str] = {}


def _runtime_dir(docname: str) -> str:
    if docname not in _RUNTIME:
        _RUNTIME[docname] = tempfile.mkdtemp(prefix="accel-doc-")
    return _RUNTIME[docname]


def run_command(line: str, runtime_dir: str) -> str:
    """Run one ``accelctl ...`` line; its output as a terminal shows it."""
    argv = shlex.split(line)
    if not argv or argv[0] != "accelctl":
        raise ValueError(f"accel-session runs accelctl commands only, not {line!r}")
    env = {k: v for k, v in os.environ.items() if k not in ("ACCEL_DEVICE", "COLUMNS")}
    env.update({"ACCEL_RUNTIME_DIR": runtime_dir, "COLUMNS": "100", "PYTHONIOENCODING": "utf-8"})
    res = subprocess.run(
        [sys.executable, "-m", "accelcore.cli", *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    out = "\n".join(line.rstrip() for line in res.stdout.splitlines())
    if res.returncode:
        out += f"\n[exit {res.returncode}]"
    return out.strip("\n")


def _steps(lines: list[str]) -> list[tuple[str, str]]:
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"accel-session output before any '$ ' line: {line!r}")
    return [(cmd, "\n".join(out).strip("\n")) for cmd, out in steps]


class AccelSession(SphinxDirective):
    """``.. accel-session::``: see the module docstring."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        rt = _runtime_dir(self.env.docname)
        try:
            steps = _steps(list(self.content))
        except ValueError as exc:
            raise self.error(str(exc)) from None
        for cmd, expected in steps:
            got = run_command(cmd, rt)
            if not _CHECKER.check_output(expected + "\n", got + "\n", _FLAGS):
                log.warning(
                    "accel-session: '$ %s' printed\n%s\ninstead of\n%s",
                    cmd,
                    got,
                    expected,
                    location=self.get_location(),
                )
        text = "\n".join(f"$ {cmd}" + (f"\n{out}" if out else "") for cmd, out in steps)
        block = nodes.literal_block(text, text, language="console")
        self.set_source_info(block)
        return [block]


def _cleanup(app: Sphinx, exception: Exception | None) -> None:
    for rt in list(_RUNTIME.values()):
        from accelcore.server.daemon import server_status, stop_server

        if server_status(rt) is not None:
            stop_server(rt)
        shutil.rmtree(rt, ignore_errors=True)
    _RUNTIME.clear()


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("accel-session", AccelSession)
    app.connect("build-finished", _cleanup)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
