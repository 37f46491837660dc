"""The daemon refuses to start on a stream whose units or montage it cannot trust (exit 78, the reason logged), and
`neurostimd replay` takes the replay config's units for a file that declares none."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pylsl
import pytest
from structlog.testing import capture_logs

from neurostimd.commands.replay import run_replay
from neurostimd.config import Config, parse_config
from neurostimd.errors import DataFormatError
from neurostimd.firmware_sim.generate import generate_recording
from neurostimd.service.daemon import EX_CONFIG, Daemon
from neurostimd.service.notify import SystemdNotifier
from tests.sources.test_readers import write_xdf

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"ch{i:02d}" for i in range(32)]


def lsl_daemon_cfg(tmp_path: Path, name: str, n: int, **source: Any) -> Config:
    return parse_config({
        "source": {"kind": "lsl", "source_id": name, "n_channels": n, "sample_rate_hz": 1000.0,
                   "resolve_timeout_s": 5.0, **source},
        "device": {"kind": "none"},
        "model": {"bundle": str(ROOT / "models" / "default")},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
        "runtime": {"state_file": str(tmp_path / "state.json")},
    })


def outlet(name: str, labels: list[str], unit: str | None) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(name, "EEG", len(labels), 1000.0, "float32", name)
    chans = info.desc().append_child("channels")
    for lab in labels:
        ch = chans.append_child("channel").append_child_value("label", lab)
        if unit is not None:
            ch.append_child_value("unit", unit)
    return pylsl.StreamOutlet(info)


def refusal(cfg: Config) -> str:
    with capture_logs() as logs:
        code = Daemon(cfg, None, notifier=SystemdNotifier({})).run(duration_s=5.0)
    assert code == EX_CONFIG
    return next(e["error"] for e in logs if e["event"] == "startup_refused")


def test_a_stream_without_units_refuses_the_start(tmp_path: Path) -> None:
    """An LSL stream that declares no units: exit 78, the log naming the missing units and [source] units."""
    name = f"nounits-{uuid.uuid4().hex[:8]}"
    out = outlet(name, NAMES, None)
    msg = refusal(lsl_daemon_cfg(tmp_path, name, 32))
    assert "no unit declared" in msg and "[source] units" in msg
    del out


def test_a_wider_stream_refuses_the_start_naming_the_channels_fix(tmp_path: Path) -> None:
    """An LSL stream with two channels more than the model: exit 78, the log naming them and `channels`."""
    name = f"wide-{uuid.uuid4().hex[:8]}"
    out = outlet(name, [*NAMES, "EOG1", "EOG2"], "microvolts")
    msg = refusal(lsl_daemon_cfg(tmp_path, name, 34))
    assert "'EOG1'" in msg and "[source] channels = ['ch00'" in msg
    del out


def test_replay_takes_the_configs_units_for_a_file_without_them(tmp_path: Path) -> None:
    """`neurostimd replay` of an XDF without units is refused, and replays once the replay config states them."""
    rec = generate_recording(3.0, 32, 1000.0, seed=2)
    xdf = tmp_path / "r.xdf"
    write_xdf(xdf, rec["data"], 1000.0, NAMES)
    base = {"device": {"kind": "virtual", "n_channels": 32, "sample_rate_hz": 1000.0},
            "model": {"bundle": str(ROOT / "models" / "default")}}
    plain = parse_config({**base, "source": {"kind": "replay", "path": str(xdf)}})
    with pytest.raises(DataFormatError, match="no unit declared"):
        run_replay(plain, xdf, tmp_path / "a", progress=False, plot=False)
    stated = parse_config({**base, "source": {"kind": "replay", "path": str(xdf), "units": "uV"}})
    summary = run_replay(stated, xdf, tmp_path / "b", progress=False, plot=False)
    assert summary["ticks"] >= 55
    assert np.isfinite(summary["recording_s"])
