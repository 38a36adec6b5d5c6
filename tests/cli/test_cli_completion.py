"""Shell completion of accelctl (bash protocol through CliRunner)."""

from __future__ import annotations

from click.testing import CliRunner

from accelcore.cli import main
from accelcore.cli.options import CliState
from accelcore.cli.sources import EmbeddedSource


def _complete(runner: CliRunner, words: str, source: EmbeddedSource | None = None) -> list[str]:
    cword = str(len(words.split()) - (0 if words.endswith(" ") else 1))
    env = {"_ACCELCTL_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    obj = CliState(source=source) if source is not None else None
    res = runner.invoke(main, [], prog_name="accelctl", env=env, obj=obj)
    assert res.exit_code == 0, res.output
    return res.stdout.splitlines()


def test_device_names_complete(runner: CliRunner, sim: EmbeddedSource) -> None:
    assert _complete(runner, "accelctl info acc", sim) == ["plain,accel0", "plain,accel1"]


def test_empty_word_offers_all_and_devices(runner: CliRunner, sim: EmbeddedSource) -> None:
    out = _complete(runner, "accelctl list ", sim)
    assert "plain,all" in out and "plain,/dev/accel/accel1" in out


def test_pci_addresses_complete(runner: CliRunner, pci_sim: EmbeddedSource) -> None:
    assert _complete(runner, "accelctl attrs 0000:00:1", pci_sim) == [
        "plain,0000:00:10.0",
        "plain,0000:00:11.0",
    ]


def test_reset_completes_devices(runner: CliRunner, sim: EmbeddedSource) -> None:
    assert _complete(runner, "accelctl reset accel1", sim) == ["plain,accel1"]


def test_default_machine_completes_without_injection(runner: CliRunner) -> None:
    assert "plain,accel0" in _complete(runner, "accelctl info acc")


def test_subcommands_complete(runner: CliRunner) -> None:
    assert _complete(runner, "accelctl to") == ["plain,top", "plain,topology"]


def test_bash_source_script_is_printed(runner: CliRunner) -> None:
    res = runner.invoke(main, [], prog_name="accelctl", env={"_ACCELCTL_COMPLETE": "bash_source"})
    assert "_accelctl_completion" in res.stdout


def test_completion_without_a_server_prints_no_note(runner: CliRunner, tmp_path: object) -> None:
    env = {
        "_ACCELCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": "accelctl info accel",
        "COMP_CWORD": "2",
        "ACCEL_RUNTIME_DIR": str(tmp_path),
    }
    res = runner.invoke(main, [], prog_name="accelctl", env=env)
    assert (res.exit_code, res.stderr) == (0, "")
    assert "plain,accel0" in res.stdout.splitlines()
