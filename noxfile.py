"""Developer sessions: ``nox -s tests lint typecheck docs benchmarks``.

Each session installs the project into its own virtualenv (reused between runs),
so they work the same on a laptop and in CI.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite (pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the core and the reference drivers."""
    session.install("-e", ".[lint,test]")
    session.run("mypy", "--strict", "accelcore", "drivers")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The subsystem guide: HTML with every reference checked, then its examples run."""
    session.install("-e", ".[docs]")
    common = ["-W", "--keep-going", "-n"]
    session.run("sphinx-build", *common, "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", *common, "-b", "doctest", "docs", "docs/_build/doctest")


@nox.session(python=PYTHON)
def benchmarks(session: nox.Session) -> None:
    """A quick benchmark run: ratios to baselines measured in the same run."""
    session.install("-e", ".")
    session.run("python", "-m", "benchmarks", "--quick", *session.posargs)
