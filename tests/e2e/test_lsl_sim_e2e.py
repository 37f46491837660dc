"""The daemon on config/lsl.toml against `neurostimd-sim --lsl`, both real processes: the simulated stream is
accepted (32 labelled µV channels at 1 kHz, the default bundle's montage) and the daemon decides on it with no
data fault after start-up."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from neurostimd.commands.simulator import LslSimulatorProcess
from tests.e2e.conftest import BUNDLE, ROOT, wait_for

pytestmark = pytest.mark.usefixtures("need_bundle")

# The faults that say the data is wrong (as opposed to the model being unsure, or the loop starting up).
DATA_FAULTS = {"no_data", "stale_data", "gap", "rate_mismatch", "nan", "inf", "flatline", "saturation",
               "implausible_signal"}


def lsl_config(workdir: Path, stream: str, device: str) -> Path:
    """config/lsl.toml as shipped, but for this test's stream name, `device`, and outputs in workdir."""
    text = (ROOT / "config" / "lsl.toml").read_text()
    for old, new in (('name = "neurostimd-sim"', f'name = "{stream}"'),
                     ('kind = "serial"\nport = "/dev/ttyACM0"', device),
                     ('bundle = "models/default"', f'bundle = "{BUNDLE}"'),
                     ('path = "runs/lsl/audit.jsonl"', f'path = "{workdir / "audit.jsonl"}"'),
                     ('state_file = "runs/lsl/state.json"', f'state_file = "{workdir / "state.json"}"'),
                     ('[decisions_lsl]\nenabled = true', '[decisions_lsl]\nenabled = false')):
        assert old in text, f"config/lsl.toml changed: {old!r} not found"
        text = text.replace(old, new)
    path = workdir / "lsl.toml"
    path.write_text(text + '\n[logging]\nformat = "json"\n')
    return path


@pytest.mark.parametrize("device", ['kind = "none"', 'kind = "virtual"'])
def test_daemon_decides_on_the_simulated_lsl_stream(tmp_path: Path, start_daemon, device: str) -> None:
    """lsl.toml against the simulated stream: decisions (state changes, stimulation commands: shadow without a
    device, acknowledged by the virtual board) in the audit log, no data fault once start-up is over, and SIGTERM
    exits 0."""
    stream = f"e2e-sim-{uuid.uuid4().hex[:10]}"
    with LslSimulatorProcess(stream, stderr=tmp_path / "sim.stderr") as sim:
        d = start_daemon(lsl_config(tmp_path, stream, device))
        wait_for(lambda: any(r["event"] == "fault_cleared" for r in d.audit()), 60.0, "start-up to finish")
        wait_for(lambda: sum(r["event"] == "stim_command" for r in d.audit()) >= 5, 20.0, "stimulation commands")
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=20) == 0
        assert sim.alive()
    audit = d.audit()
    assert any(r["event"] == "state_change" and r.get("state") is not None for r in audit)
    cleared = next(i for i, r in enumerate(audit) if r["event"] == "fault_cleared")
    seen = {f for r in audit[cleared:] for f in r.get("faults") or ()}
    assert not seen & DATA_FAULTS, [r for r in audit[cleared:] if set(r.get("faults") or ()) & DATA_FAULTS]
    assert audit[-1]["event"] == "shutdown" and audit[-1]["exit_code"] == 0
    commands = [r for r in audit if r["event"] == "stim_command"]
    if device == 'kind = "none"':  # no stimulator: decided and audited in shadow mode
        assert all(r["shadow"] for r in commands)
    else:  # the virtual board (it streams nothing here: the samples are the stream's) takes the commands
        assert not any(r["shadow"] for r in commands)
        assert any(r["event"] == "stim_ack" and r["ack"] for r in audit)
    opened = [r for r in d.logs() if r.get("event") == "lsl_source_open"]
    assert opened and opened[0]["channels"][:2] == ["ch00", "ch01"] and opened[0]["scale_uv"] == [1.0]
