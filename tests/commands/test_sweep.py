"""`neurostimd sweep`: every config on every recording and plant seed, each cell the same pipeline as `replay` and
`closed-loop-eval`, a failed cell a row rather than the end, the same rows on Ray as one by one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neurostimd.commands.cli import main
from neurostimd.firmware_sim.generate import generate_recording

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("recs")
    out = []
    for i, dur in enumerate((12.0, 8.0)):
        p = d / f"session{i}.npz"
        np.savez(p, **generate_recording(dur, 32, 1000.0, seed=20 + i))
        out.append(p)
    return out


def _strict_config(tmp_path: Path) -> Path:
    """config/replay.toml with a confidence threshold no decision reaches: the policy never leaves the safe state."""
    text = (REPO / "config" / "replay.toml").read_text()
    text = text.replace("confidence_threshold = 0.6", "confidence_threshold = 1.0")
    text = text.replace('bundle = "models/default"', f'bundle = "{REPO / "models" / "default"}"')
    p = tmp_path / "never.toml"
    p.write_text(text)
    return p


def _rows(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "sweep.json").read_text())["cells"]


def test_replay_metrics_count_charge_agreement_and_the_safe_state() -> None:
    from neurostimd.commands.sweep import replay_metrics

    on = {"frequency_hz": 100.0, "amplitude_ma": 2.0, "pulse_width_us": 50.0}
    decisions = [
        {"t_data_s": 0.05, "state": 0, "applied": None, "safe_state": True},
        {"t_data_s": 0.10, "state": 1, "applied": on, "safe_state": False},
        {"t_data_s": 0.15, "state": 1, "applied": on, "safe_state": False},
        {"t_data_s": 0.20, "state": 2, "applied": {**on, "amplitude_ma": 0.0}, "safe_state": False},
    ]
    audit = [{"event": "state_change"}, {"event": "fault", "raised": ["low_confidence", "startup"]},
             {"event": "stim_command"}]
    labels = np.array([0] * 6 + [1] * 10 + [-1] * 10, dtype=np.int64)  # fs 100: the ticks' newest samples 5, 10, 15, 20
    m = replay_metrics(decisions, audit, 0.05, labels, 100.0)
    assert m["decisions"] == 4
    assert m["stim_on_pct"] == 50.0 and m["safe_state_pct"] == 25.0
    assert m["charge_uc"] == pytest.approx(2 * (2.0 * 50.0 * 1e-3 * 100.0 * 0.05))  # I·pw·f·t, two ticks on
    assert m["faults"] == 2
    assert m["state_changes_per_hour"] == pytest.approx(1 / (4 * 0.05 / 3600))
    assert m["label_agreement_pct"] == 100.0  # samples 5, 10 and 15 agree; sample 20 is unlabelled
    # a recording that skips samples 8-11: position 15 is array index 11; positions 10 has no sample at all
    positions = np.concatenate([np.arange(8), np.arange(12, 30)])
    skip_labels = np.array([0] * 8 + [1] * 18, dtype=np.int64)  # index 11 (position 15) is 1
    m = replay_metrics(decisions, audit, 0.05, skip_labels, 100.0, positions)
    # position 5 -> label 0 (state 0: agrees), 10 has no sample, 15 -> 1 (state 1: agrees), 20 -> 1 (state 2: not)
    assert m["label_agreement_pct"] == pytest.approx(200 / 3)
    m = replay_metrics(decisions, audit, 0.05, np.array([1] * 25, dtype=np.int64), 100.0)
    assert m["label_agreement_pct"] == 50.0  # the two state-1 ticks of four
    assert replay_metrics(decisions, audit, 0.05, None, 100.0)["label_agreement_pct"] is None


@pytest.mark.slow
def test_a_sweep_replays_every_config_on_every_recording_as_replay_does(tmp_path: Path,
                                                                        recordings: list[Path]) -> None:
    """2 configs × 2 recordings + 1 plant seed: each replay cell's decisions.jsonl is byte-identical to `neurostimd
    replay` of the same config and recording; the config that never leaves the safe state delivers no charge; the
    plant cells run each config's law; the table, csv, markdown and figure are written."""
    never = _strict_config(tmp_path)
    shipped = REPO / "config" / "replay.toml"
    out = tmp_path / "sweep"
    args = ["sweep", "--config", str(shipped), "--config", str(never), "--out", str(out), "--no-ray"]
    for r in recordings:
        args += ["--recording", str(r)]
    assert main([*args, "--plant", "markov", "--plant-seeds", "3", "--duration", "5"]) == 0
    rows = _rows(out)
    assert [(r["kind"], r["config"], r["target"]) for r in rows] == [
        ("replay", "replay", "session0"), ("replay", "replay", "session1"), ("plant", "replay", "markov seed 3"),
        ("replay", "never", "session0"), ("replay", "never", "session1"), ("plant", "never", "markov seed 3")]
    assert all(r["error"] is None for r in rows)
    direct = tmp_path / "direct"
    assert main(["replay", str(recordings[0]), "--config", str(shipped), "--out", str(direct)]) == 0
    assert (Path(rows[0]["out"]) / "decisions.jsonl").read_bytes() == (direct / "decisions.jsonl").read_bytes()
    by = {(r["config"], r["target"]): r for r in rows}
    assert by[("replay", "session0")]["charge_uc"] > 0 and by[("replay", "session0")]["stim_on_pct"] > 0
    assert by[("never", "session0")]["charge_uc"] == 0 and by[("never", "session0")]["safe_state_pct"] == 100.0
    assert by[("replay", "session0")]["decisions"] == len((direct / "decisions.jsonl").read_text().splitlines())
    assert by[("replay", "markov seed 3")]["law"] == "table" and by[("replay", "markov seed 3")]["charge_uc"] >= 0
    summary = json.loads((out / "sweep.json").read_text())["by_config"]
    rep = next(e for e in summary if e["kind"] == "replay" and e["config"] == "replay")
    assert rep["n"] == 2
    assert rep["charge_uc"]["mean"] == pytest.approx((by[("replay", "session0")]["charge_uc"]
                                                       + by[("replay", "session1")]["charge_uc"]) / 2)
    assert len((out / "sweep.csv").read_text().splitlines()) == 1 + len(rows)
    assert "| never | 2 |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").stat().st_size > 10_000


def test_a_cell_that_fails_is_a_row_with_its_error_and_the_rest_still_run(tmp_path: Path,
                                                                          recordings: list[Path]) -> None:
    """The beta config's 8-channel bundle does not fit a 32-channel recording: that cell's row names the mismatch
    and what to do, the other config's cell has its metrics, and the exit status is 1."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(REPO / "config" / "replay.toml"), "--config",
                 str(REPO / "config" / "sim-beta.toml"), "--recording", str(recordings[1]), "--out", str(out),
                 "--no-plot"]) == 1
    ok, failed = _rows(out)
    assert ok["error"] is None and ok["decisions"] > 100
    assert "BundleError" in failed["error"] and "channels" in failed["error"] and "Fix:" in failed["error"]
    md = (out / "sweep.md").read_text()
    assert "## Failed cells" in md and "sim-beta on session1" in md


@pytest.mark.parametrize(("extra", "code", "message"), [
    ([], 2, "give at least one --recording or a --plant"),
    (["--plant", "beta", "--plant-seeds", "a,b"], 2, "--plant-seeds"),
    (["--plant", "beta", "--duration", "0"], 2, "--duration must be a positive"),
    (["--recording", "/nonexistent/rec.npz"], 78, "not found: /nonexistent/rec.npz"),
])
def test_bad_sweep_arguments_are_refused_before_any_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         extra: list[str], code: int, message: str) -> None:
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(REPO / "config" / "replay.toml"), "--out", str(out), *extra]) == code
    assert message in capsys.readouterr().err
    assert not (out / "sweep.json").exists()


def test_a_config_that_does_not_load_stops_the_sweep_before_any_cell(tmp_path: Path, recordings: list[Path],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "config" / "replay.toml").read_text().replace("cadence_ms = 50", "cadence_ms = -5"))
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(REPO / "config" / "replay.toml"), "--config", str(bad), "--recording",
                 str(recordings[1]), "--out", str(out)]) == 78
    assert "cadence_ms" in capsys.readouterr().err
    assert not (out / "cells").exists()


def test_without_ray_a_cluster_is_refused_with_69(tmp_path: Path, recordings: list[Path],
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["sweep", "--config", str(REPO / "config" / "replay.toml"), "--recording", str(recordings[1]),
                 "--address", "ray://127.0.0.1:10001", "--out", str(tmp_path / "s")]) == 69
    assert "--address needs Ray" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_on_a_local_ray_instance_gives_the_rows_it_gives_one_by_one(tmp_path: Path,
                                                                            recordings: list[Path]) -> None:
    pytest.importorskip("ray", reason="the scale extra (Ray) is not installed")
    common = ["sweep", "--config", str(REPO / "config" / "replay.toml"), "--config", str(_strict_config(tmp_path)),
              "--recording", str(recordings[1]), "--plant", "markov", "--plant-seeds", "4", "--duration", "5",
              "--jobs", "2", "--no-plot"]
    assert main([*common, "--out", str(tmp_path / "ray")]) == 0
    assert main([*common, "--no-ray", "--out", str(tmp_path / "serial")]) == 0
    timing = ("wall_s", "x_realtime", "out")
    on_ray = [{k: v for k, v in r.items() if k not in timing} for r in _rows(tmp_path / "ray")]
    serial = [{k: v for k, v in r.items() if k not in timing} for r in _rows(tmp_path / "serial")]
    assert len(on_ray) == 4 and on_ray == serial
    assert "local Ray instance" in json.loads((tmp_path / "ray" / "sweep.json").read_text())["runner"]
