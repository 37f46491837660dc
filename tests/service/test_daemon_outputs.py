"""The daemon's outputs as loop listeners (recorder, metrics, timings file, state file, systemd), a failing output
that the daemon runs through, and the stimulation table at start and on SIGHUP — in process, virtual board."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from neurostimd.config import Config
from neurostimd.core.stimtable import StimulationConfig
from neurostimd.loop import ClosedLoop
from neurostimd.model import bundle as files
from neurostimd.outputs.audit import read_audit
from neurostimd.outputs.metrics import MetricsListener
from neurostimd.outputs.recorder import Recorder
from neurostimd.service.daemon import EX_CONFIG, EX_OK, Daemon
from neurostimd.service.notify import SystemdNotifier
from neurostimd.sources.recordings import read_jsonl, read_recording
from tests.service.inprocess import run_daemon, virtual_config

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["quiet", "activated", "pathological"]
ROWS = [{"state": i, "name": f"row{i}", "frequency_hz": 40.0, "amplitude_ma": 1.0, "pulse_width_us": 150.0}
        for i in range(3)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _edited_bundle(tmp_path: Path, *, class_names: list[str] | None = None,
                   extra_row: bool = False) -> Path:
    """A copy of the default bundle with other class names, or a fourth table row; the manifest hashes updated."""
    d = tmp_path / "bundle"
    shutil.copytree(ROOT / "models" / "default", d)
    manifest = json.loads((d / files.MANIFEST).read_text())
    if class_names is not None:
        (d / files.CLASSES).write_text(json.dumps({"class_names": class_names}))
        manifest["class_names"] = class_names
    if extra_row:
        table = json.loads((d / files.STIM_TABLE).read_text())
        table["states"].append({**table["states"][0], "state": 3, "name": "extra"})
        (d / files.STIM_TABLE).write_text(json.dumps(table))
    for name in (files.CLASSES, files.STIM_TABLE):
        manifest["files"][name] = files.sha256_file(d / name)
    (d / files.MANIFEST).write_text(json.dumps(manifest))
    return d


def _refused(tmp_path: Path, cfg: Config) -> tuple[int, str]:
    with capture_logs() as logs:
        code, _ = run_daemon(cfg, 10.0)
    refused = [e for e in logs if e["event"] == "startup_refused"]
    recs = read_audit(Path(cfg.audit.path)).records
    assert not any(r["event"] in ("stim_command", "model_loaded") for r in recs)
    assert any(r["event"] == "fault" and r["faults"] == ["startup_refused"] for r in recs)
    assert refused, "the refusal is logged"
    return code, refused[0]["error"]


def test_a_table_for_other_classes_refuses_the_start_with_exit_78(tmp_path: Path) -> None:
    """[stimulation] written for the default model, with a bundle whose classes are named otherwise: exit 78, and
    the error names both lists."""
    cfg = virtual_config(tmp_path)
    other = _edited_bundle(tmp_path, class_names=["rest", "task", "ictal"])
    cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"bundle": other}),
        "stimulation": StimulationConfig.model_validate({"classes": CLASSES, "states": ROWS})})
    code, error = _refused(tmp_path, cfg)
    assert code == EX_CONFIG
    assert str(CLASSES) in error and "['rest', 'task', 'ictal']" in error and "[stimulation]" in error


def test_a_bundle_whose_own_table_does_not_fit_its_classes_refuses_the_start(tmp_path: Path) -> None:
    """A bundle whose own table has a fourth row for three classes: exit 78, naming the states and the classes."""
    cfg = virtual_config(tmp_path)
    four_rows = _edited_bundle(tmp_path, extra_row=True)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"bundle": four_rows})})
    code, error = _refused(tmp_path, cfg)
    assert code == EX_CONFIG
    assert "[0, 1, 2, 3]" in error and str(CLASSES) in error and "neurostimd train --table" in error


def test_the_daemons_outputs_are_listeners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorder, metrics, the timings file, the state file and READY all come from the loop's listeners; the
    recording holds every sample the loop saw, every decision and every command with its ACK."""
    cfg = virtual_config(tmp_path)
    cfg = cfg.model_copy(update={
        "recorder": cfg.recorder.model_copy(update={"enabled": True, "dir": tmp_path / "recordings"}),
        "metrics": cfg.metrics.model_copy(update={"enabled": True, "port": _free_port()})})
    (tmp_path / "recordings").mkdir()
    timings = tmp_path / "timings.jsonl"
    seen: dict[str, Any] = {}
    real_run = ClosedLoop.run

    def run(self: ClosedLoop, **kw: Any) -> None:
        seen["loop"] = self
        real_run(self, **kw)
        seen["metrics"] = next(ls for ls in self.listeners if isinstance(ls, MetricsListener)).metrics

    monkeypatch.setattr(ClosedLoop, "run", run)
    daemon = Daemon(cfg, None, notifier=SystemdNotifier({}), timings_path=str(timings))
    with capture_logs() as logs:
        code = daemon.run(duration_s=4.0)
    assert code == EX_OK
    loop = seen["loop"]
    [session] = list((tmp_path / "recordings").iterdir())
    rec = read_recording(session)
    assert rec.data.shape == (loop.ring.total_written, 32)
    assert len(read_jsonl(session / "decisions.jsonl")) == loop.state.ticks
    commands = read_jsonl(session / "commands.jsonl")
    assert len(commands) == loop.state.commands and all(c["ack"] is True and "t_ack_mono_ns" in c for c in commands)
    lines = [json.loads(x) for x in timings.read_text().splitlines()]
    assert len(lines) == loop.state.ticks
    assert list(lines[0]["stages_ms"]) == ["audit", "ingest", "features", "inference", "checks", "policy_safety",
                                           "driver"]
    assert seen["metrics"].registry.get_sample_value("neurostimd_ticks_total") == loop.state.ticks
    state = json.loads(Path(cfg.runtime.state_file).read_text())
    assert state["exited"] is True and state["ticks"] == loop.state.ticks and "listener_failures" not in state
    assert "ready" in [e["event"] for e in logs]


def test_a_failing_output_does_not_stop_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder raising on every decision (it used to end the daemon with exit 70): the daemon stimulates and
    stops as without it, logs the failure once, and the state file counts the failures."""
    cfg = virtual_config(tmp_path)
    cfg = cfg.model_copy(update={"recorder": cfg.recorder.model_copy(update={"enabled": True,
                                                                           "dir": tmp_path / "recordings"})})
    (tmp_path / "recordings").mkdir()

    def broken(self: Recorder, decision: dict[str, Any]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Recorder, "record_decision", broken)
    with capture_logs() as logs:
        code, daemon = run_daemon(cfg, 4.0)
    assert code == EX_OK
    recs = read_audit(Path(cfg.audit.path)).records
    assert any(r["event"] == "stim_command" and r["applied"] for r in recs), "the daemon stimulated"
    assert [e["listener"] for e in logs if e["event"] == "listener_failed"] == ["RecorderListener"]
    state = json.loads(Path(cfg.runtime.state_file).read_text())
    assert state["listener_failures"] == {"RecorderListener": daemon.loop.state.ticks}


def test_a_sighup_puts_a_new_table_in_force_and_audits_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload that adds [stimulation]: `config_reload` records the table now in force; the commands after it ask
    for the new rows."""
    import tomli_w

    cfg = virtual_config(tmp_path)
    cfg = cfg.model_copy(update={"recorder": cfg.recorder.model_copy(update={"dir": tmp_path / "recordings"})})
    cfg_path = tmp_path / "neurostimd.toml"
    cfg_path.write_text(tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True)))
    with_table = cfg.model_copy(update={"stimulation": StimulationConfig.model_validate(
        {"classes": CLASSES, "states": ROWS})})
    real_tick = ClosedLoop.tick
    box: list[Daemon] = []
    marks: dict[str, float] = {}

    def tick(self: ClosedLoop, deadline_ns: int | None = None) -> Any:
        stats = real_tick(self, deadline_ns)
        if "sighup" not in marks and self.driver.board.stimulating:  # type: ignore[union-attr]
            cfg_path.write_text(tomli_w.dumps(with_table.model_dump(mode="json", exclude_none=True)))
            box[0]._reload.set()  # what SIGHUP does
            marks["sighup"] = time.monotonic()
        elif "sighup" in marks and time.monotonic() - marks["sighup"] > 2.0:
            box[0].request_stop()
        return stats

    monkeypatch.setattr(ClosedLoop, "tick", tick)
    daemon = Daemon(cfg, str(cfg_path), notifier=SystemdNotifier({}))
    box.append(daemon)
    assert daemon.run(duration_s=30.0) == EX_OK
    recs = read_audit(Path(cfg.audit.path)).records
    [loaded] = [r for r in recs if r["event"] == "model_loaded"]
    [reload] = [r for r in recs if r["event"] == "config_reload"]
    assert loaded["stim_table_source"] == "bundle" and reload["ok"] is True and reload["needs_restart"] == []
    assert reload["stim_table_source"] == "config"
    assert reload["stim_table_sha256"] == with_table.stimulation.table().sha256()  # type: ignore[union-attr]
    after = [r for r in recs if r["seq"] > reload["seq"] and r["event"] == "stim_command" and r["requested"]
             and "fallback" not in r.get("faults", [])]
    assert after and all(r["requested"]["amplitude_ma"] == 1.0 for r in after)


def test_a_session_recorded_from_a_fast_replay_reads_back_on_the_signals_time(tmp_path: Path) -> None:
    """A daemon replaying a file at 4 x real time stamps its samples 4 x closer than the file's period; the session
    says so (`replay_speed`), and reading it back spreads the stamps onto the signal's own time, so the session is
    not refused as running at the wrong rate, and it names the bundle by hash."""
    import numpy as np

    from neurostimd.outputs.lsl_meta import bundle_sha256
    from neurostimd.sources.settings import ReplaySourceConfig

    rng = np.random.default_rng(3)
    rec_path = tmp_path / "noise.npz"
    np.savez(rec_path, data=rng.normal(0.0, 20.0, (30_000, 32)).astype(np.float32), fs=1000.0)
    cfg = virtual_config(tmp_path)
    cfg = cfg.model_copy(update={
        "source": ReplaySourceConfig(kind="replay", path=rec_path, speed=4.0),
        "recorder": cfg.recorder.model_copy(update={"enabled": True, "dir": tmp_path / "recordings"})})
    (tmp_path / "recordings").mkdir()
    code, _ = run_daemon(cfg, 2.0)
    assert code == EX_OK
    [session] = list((tmp_path / "recordings").iterdir())
    meta = json.loads((session / "session.json").read_text())
    assert meta["replay_speed"] == 4.0
    assert meta["bundle_sha256"] == bundle_sha256(ROOT / "models" / "default")
    raw_ts = np.fromfile(session / "timestamps.f64", dtype="<f8")
    assert abs(float(np.median(np.diff(raw_ts))) * 1000.0 * 4.0 - 1.0) < 0.02  # on the host: 4 kHz
    rec = read_recording(session)
    assert rec.n_samples > 4000  # about 8 s of signal in 2 s
    assert abs(float(np.median(np.diff(rec.timestamps))) * 1000.0 - 1.0) < 0.02  # read back: the file's 1 kHz
