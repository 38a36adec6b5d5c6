"""accelctl reset, version and demo through CliRunner."""

from __future__ import annotations

import pytest
from cli_helpers import Invoke, check_json

from accelcore.cli.sources import EmbeddedSource
from accelcore.demo import quick as demo
from accelcore.demo import story as demo_story
from accelcore.demo.quick import Check, Step, StepResult, run_demo, run_steps
from accelcore.server.daemon import server_status


def test_reset_with_yes_resets_the_device(invoke: Invoke, sim: EmbeddedSource) -> None:
    res = invoke("reset", "accel1", "--yes", "--reason", "test", "--json")
    assert res.exit_code == 0, res.stderr
    assert check_json("reset", res.stdout) == {
        "device": "accel1",
        "reason": "test",
        "status": "operational",
        "reset_count": 1,
    }
    assert sim.subsystem.device("accel1").reset_count == 1


def test_reset_asks_and_proceeds_on_yes(invoke: Invoke, sim: EmbeddedSource) -> None:
    res = invoke("reset", "accel0", input="y\n")
    assert res.exit_code == 0
    assert "Reset accel0" in res.stderr
    assert sim.subsystem.device("accel0").reset_count == 1


def test_reset_declined_is_aborted(invoke: Invoke, sim: EmbeddedSource) -> None:
    res = invoke("reset", "accel0", input="n\n")
    assert res.exit_code == 1
    assert res.stderr.endswith("Aborted!\n")
    assert sim.subsystem.device("accel0").reset_count == 0


def test_reset_needs_explicit_device(invoke: Invoke) -> None:
    res = invoke("reset", "--yes", env={"ACCEL_DEVICE": "accel0"})
    assert res.exit_code == 2


def test_reset_refuses_several_devices(invoke: Invoke) -> None:
    res = invoke("reset", "all", "--yes")
    assert res.exit_code == 2
    assert "reset needs one device" in res.stderr


def test_reset_unknown_device_is_exit_6_not_found(invoke: Invoke) -> None:
    res = invoke("reset", "accel7", "--yes")
    assert (res.exit_code, res.stderr) == (6, "Error: no accel device 'accel7'\n")


def test_version_json(invoke: Invoke) -> None:
    data = check_json("version", invoke("version", "--json").stdout)
    assert data["source"] == "sim"
    assert [d["name"] for d in data["drivers"]] == ["vaccel"]
    assert "vaccel" in data["installed_drivers"]


def test_version_option(invoke: Invoke) -> None:
    assert invoke("--version").stdout == "accelctl, version 0.1.0\n"


def test_quick_demo_passes(invoke: Invoke) -> None:
    res = invoke("demo", "--quick")
    assert res.exit_code == 0, res.stdout
    assert "[7/7]" in res.stdout
    assert "demo: PASSED" in res.stdout


def test_quick_demo_json_reports_every_check(invoke: Invoke) -> None:
    res = invoke("demo", "--quick", "--json")
    assert res.exit_code == 0
    data = check_json("demo", res.stdout)
    assert data["ok"] is True
    assert [s["name"] for s in data["steps"]] == [s.name for s in demo.STEPS]
    assert all(c["ok"] for s in data["steps"] for c in s["checks"])


def test_demo_fails_when_a_check_fails(invoke: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = Step("bad", "a failing check", lambda run: StepResult([], [Check("x", False)]))
    monkeypatch.setattr(demo, "STEPS", [*demo.STEPS[:1], bad])
    res = invoke("demo", "--quick")
    assert res.exit_code == 1
    assert "demo: FAILED" in res.stdout


def test_story_json_reports_every_step_and_check(invoke: Invoke) -> None:
    res = invoke("demo", "--json")
    assert res.exit_code == 0, res.stdout
    data = check_json("demo", res.stdout)
    assert [s["name"] for s in data["steps"]] == [s.name for s in demo_story.STORY]
    assert all(c["ok"] for s in data["steps"] for c in s["checks"])
    assert data["elapsed_ms"] < 30_000


def test_story_shows_progress_notes(invoke: Invoke) -> None:
    res = invoke("demo")
    assert res.exit_code == 0, res.stdout
    assert "[8/8]" in res.stdout
    assert "... kernel: accel0: hard reset (cs timeout)" in res.stdout


def test_failed_story_step_still_stops_the_server() -> None:
    def boom(run: demo_story.StoryRun) -> StepResult:
        raise AssertionError("workload said nothing")

    world = demo_story.StoryRun()
    report = run_steps([demo_story.STORY[0], Step("boom", "raises", boom)], world)
    assert [(s.name, s.error) for s in report.steps] == [
        ("server", None),
        ("boom", "AssertionError: workload said nothing"),
    ]
    assert server_status(world.rt) is None and not world.rt.exists()


def test_run_demo_stops_at_a_raising_step() -> None:
    def boom(run: demo.DemoRun) -> StepResult:
        raise KeyError("missing")

    never = Step("never", "not reached", lambda run: StepResult())
    report = run_demo([demo.STEPS[0], Step("boom", "raises", boom), never])
    assert [s.name for s in report.steps] == ["machine", "boom"]
    assert report.steps[1].error == "KeyError: 'missing'"
    assert report.ok is False
