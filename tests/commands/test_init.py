"""`neurostimd init DIR`: a configuration that works from anywhere, written from what the package carries; the
daemon runs on it and writes only under DIR; the wheel carries the same files."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from neurostimd.commands.cli import main
from neurostimd.commands.simulator import SimulatorProcess
from neurostimd.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_init_writes_configs_that_load_with_paths_under_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "lab"
    assert main(["init", str(d)]) == 0
    assert "neurostimd check-config" in capsys.readouterr().out
    shipped = sorted(p.name for p in (ROOT / "config").glob("*.toml"))
    assert sorted(p.name for p in (d / "config").glob("*.toml")) == shipped
    for name in shipped:
        cfg = load_config(d / "config" / name)
        given = tomllib.loads((ROOT / "config" / name).read_text())["model"]["bundle"]
        if Path(given).is_absolute():  # serial.toml's system install path (/opt/neurostimd/...) stays as written
            assert cfg.model.bundle == Path(given), name
        else:
            assert cfg.model.bundle == d / given and (cfg.model.bundle / "manifest.json").is_file(), name
        raw = tomllib.loads((d / "config" / name).read_text())
        audit = raw.get("audit", {}).get("path")
        assert audit is None or audit.startswith("/"), (name, audit)  # absolute: not the package, not the cwd
    assert (d / "systemd" / "neurostimd.service").is_file()
    assert (d / "models" / "default" / "model.tflite").read_bytes() == \
        (ROOT / "models" / "default" / "model.tflite").read_bytes()


def test_init_never_replaces_a_file_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "lab"
    assert main(["init", str(d)]) == 0
    mine = d / "config" / "serial.toml"
    mine.write_text("# my edits\n")
    capsys.readouterr()
    assert main(["init", str(d)]) == 73
    assert "pass --force" in capsys.readouterr().err
    assert mine.read_text() == "# my edits\n"
    assert main(["init", str(d), "--force"]) == 0
    assert "my edits" not in mine.read_text()


def test_the_daemon_runs_on_an_init_config_and_writes_only_under_dir(tmp_path: Path) -> None:
    d = tmp_path / "lab"
    assert main(["init", str(d)]) == 0
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    with SimulatorProcess(["--channels", "32"], stderr=tmp_path / "sim.stderr") as sim:
        res = subprocess.run([sys.executable, "-m", "neurostimd", "run", "--config", str(d / "config" / "sim.toml"),
                              "--port", sim.port, "--duration", "2"], cwd=elsewhere, capture_output=True, text=True,
                             timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (d / "runs" / "sim" / "audit.jsonl").is_file()
    assert list(elsewhere.iterdir()) == []


@pytest.mark.slow
def test_the_wheel_carries_the_configs_bundles_and_systemd_files(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                          str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    [whl] = tmp_path.glob("neurostimd-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for want in ("neurostimd/share/config/sim.toml", "neurostimd/share/config/eval/beta.toml",
                 "neurostimd/share/models/default/model.tflite", "neurostimd/share/models/default/manifest.json",
                 "neurostimd/share/systemd/neurostimd.service"):
        assert want in names, want
    assert not any(n.startswith(("runs/", "neurostimd/share/runs")) for n in names)


def test_a_folder_name_with_quotes_and_backslashes_stays_itself(tmp_path: Path) -> None:
    d = tmp_path / 'lab "x" \\t'
    assert main(["init", str(d)]) == 0
    cfg = load_config(d / "config" / "sim.toml")
    assert cfg.model.bundle == d / "models" / "default" and cfg.audit.path == d / "runs" / "sim" / "audit.jsonl"


def test_init_into_the_project_itself_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    before = (ROOT / "config" / "sim.toml").read_text()
    assert main(["init", str(ROOT), "--force"]) == 73
    assert "is the project itself" in capsys.readouterr().err
    assert (ROOT / "config" / "sim.toml").read_text() == before
