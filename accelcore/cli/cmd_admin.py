"""Administration commands: ``reset``, ``version``, ``demo``."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING

import click

from .. import __version__
from ..machine import installed_drivers
from .model import to_json
from .options import complete_devices, emit, get_state, json_option, resolve_one

if TYPE_CHECKING:
    from ..demo import StepReport

__all__ = ["demo_cmd", "reset_cmd", "version_cmd"]


@click.command("reset")
@click.argument("device", shell_complete=complete_devices)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--reason",
    default="accelctl",
    show_default=True,
    help="The reason recorded in the reset uevent.",
)
@json_option
@click.pass_context
def reset_cmd(ctx: click.Context, device: str, yes: bool, reason: str, as_json: bool) -> None:
    """Hard-reset one device: every client's in-flight work is aborted.

    DEVICE must be given explicitly (not taken from $ACCEL_DEVICE) and must
    select exactly one device.
    """
    source = get_state(ctx).source(changes="reset")
    dev = resolve_one(ctx, device)
    if not yes:
        click.confirm(
            f"Reset {dev.name} ({dev.driver}, {dev.pci_address or 'virtual'})? "
            "In-flight work of every client is aborted",
            abort=True,
            err=True,
        )
    source.reset(dev.name, reason)
    info = source.info(dev.name)
    data = {
        "device": dev.name,
        "reason": reason,
        "status": info.status.status,
        "reset_count": info.status.reset_count,
    }
    emit(
        data,
        as_json,
        lambda: click.echo(
            f"{dev.name}: reset ({reason}); status {info.status.status}, "
            f"reset count {info.status.reset_count}"
        ),
    )


@click.command("version")
@json_option
@click.pass_context
def version_cmd(ctx: click.Context, as_json: bool) -> None:
    """Versions of accelctl, accelcore, Python, click, and the source's drivers."""
    source = get_state(ctx).source()
    data = {
        "accelctl": __version__,
        "accelcore": __version__,
        "python": platform.python_version(),
        "click": _click_version(),
        "source": source.kind,
        "drivers": source.drivers(),
        "installed_drivers": installed_drivers(),
    }

    def human() -> None:
        click.echo(
            f"accelctl {data['accelctl']} (accelcore {data['accelcore']}, "
            f"Python {data['python']}, click {data['click']})"
        )
        for d in source.drivers():
            click.echo(f"  driver {d['name']} {d['version']}: {d['desc']}")

    emit(data, as_json, human)


def _click_version() -> str:
    from importlib.metadata import version

    return version("click")


class _Printer:
    """The human :class:`~accelcore.demo.Progress`: a header as each step
    starts, its notes as they come, then its lines and checks."""

    def begin(self, index: int, count: int, title: str) -> None:
        click.echo(f"[{index + 1}/{count}] {title}")

    def note(self, text: str) -> None:
        click.echo(f"      ... {text}")

    def end(self, index: int, count: int, report: StepReport) -> None:
        for line in report.lines:
            click.echo(f"      {line}")
        for check in report.checks:
            tick = "+" if check.ok else "x"
            detail = f" ({check.detail})" if check.detail and not check.ok else ""
            click.echo(f"    {tick} {check.name}{detail}")
        if report.error:
            click.echo(f"    x error: {report.error}")
        mark = "ok" if report.ok else "FAIL"
        click.echo(f"    => {mark} ({report.elapsed_ms / 1e3:.2f} s)")


_STORY_DRIVERS = ("habana_like", "kfd_like")


@click.command("demo")
@click.option(
    "--quick",
    is_flag=True,
    help="The short in-process demo on two virtual vaccel devices (virtual time, no server).",
)
@json_option
@click.pass_context
def demo_cmd(ctx: click.Context, quick: bool, as_json: bool) -> None:
    """Run the end-to-end demo; exit 0 only if every check passes.

    A devfs server on the default machine (2 habana_like, 2 kfd_like) in a
    temporary directory; workload processes computing a GEMM, a second process
    reading INFO, a dma-buf shared between habana and kfd, a hang and its reset.
    """
    # Imported here: the demo pulls in numpy and both drivers, which no other
    # command needs (accelcore.demo imports accelctl's sources, never the reverse).
    from ..demo import run_demo

    progress = None if as_json else _Printer()
    if quick:
        report = run_demo(progress=progress)
    else:
        missing = [d for d in _STORY_DRIVERS if d not in installed_drivers()]
        if missing:
            raise click.ClickException(
                f"the demo needs the {', '.join(missing)} driver(s); try 'accelctl demo --quick'"
            )
        from ..demo.story import run_story

        report = run_story(progress=progress)
    checks = sum(len(s.checks) for s in report.steps)
    passed = sum(c.ok for s in report.steps for c in s.checks)
    steps_ok = sum(s.ok for s in report.steps)
    emit(
        to_json(report),
        as_json,
        lambda: click.echo(
            f"demo: {'PASSED' if report.ok else 'FAILED'} — {steps_ok}/{len(report.steps)} steps, "
            f"{passed}/{checks} checks in {report.elapsed_ms / 1e3:.2f} s"
        ),
    )
    if not report.ok:
        ctx.exit(1)
