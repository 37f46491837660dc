"""The kind tables (neurostimd.registry): built-in kinds, kinds from other packages' entry points, and the config
that composes them. Plugins are real installed-distribution metadata (a .dist-info folder on sys.path), read by
importlib.metadata exactly as for a pip-installed package."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from neurostimd.config import parse_config
from neurostimd.devices import DeviceContext, NoDeviceConfig, SerialDeviceConfig
from neurostimd.errors import ConfigError
from neurostimd.registry import DEVICES, POLICIES, SOURCES, Registry

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
from typing import Literal

from neurostimd.devices import DeviceContext, DeviceSettings


class BenchSupplyConfig(DeviceSettings):
    """A stand-in third-party device: builds nothing (decide-and-audit only), feeds no watchdog."""

    kind: Literal["bench_supply"]
    volts: float = 1.0

    def build(self, ctx: DeviceContext) -> None:
        return None


class WrongKindConfig(DeviceSettings):
    kind: Literal["something_else"]

    def build(self, ctx: DeviceContext) -> None:
        return None


class StealsSerialConfig(DeviceSettings):
    kind: Literal["serial"]

    def build(self, ctx: DeviceContext) -> None:
        return None
'''


def _plugin(tmp_path: Path, entries: dict[str, str]) -> Path:
    """A distribution `labplugin` installed into tmp_path: its module and its entry points."""
    (tmp_path / "labplugin.py").write_text(PLUGIN)
    info = tmp_path / "labplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labplugin\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[neurostimd.drivers]\n{lines}\n")
    return tmp_path


def test_the_built_in_kinds_are_the_ones_the_config_accepts() -> None:
    assert DEVICES.kinds()[:3] == ["serial", "virtual", "none"]
    assert SOURCES.kinds()[:3] == ["board", "lsl", "replay"]
    assert POLICIES.kinds()[0] == "table"
    cfg = parse_config({"device": {"kind": "none"}, "source": {"kind": "replay", "path": "x.npz"}})
    assert isinstance(cfg.device, NoDeviceConfig) and cfg.device.build(DeviceContext()) is None
    assert cfg.policy.kind == "table"  # [policy] without a kind is the stimulation table


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"device": {"kind": "pulsepal9"}})
    assert any(line.startswith("device: ") and "unknown device kind 'pulsepal9'; known: serial, virtual, none" in line
               for line in exc.value.errors), exc.value.errors
    with pytest.raises(KeyError, match="known: serial, virtual, none"):
        DEVICES.model("pulsepal9")


def test_port_override_needs_a_device_with_a_port() -> None:
    assert SerialDeviceConfig().with_port("/dev/ttyUSB3").port == "/dev/ttyUSB3"
    with pytest.raises(ConfigError, match='--port needs \\[device\\] kind = "serial"'):
        NoDeviceConfig(kind="none").with_port("/dev/ttyUSB3")


def test_an_entry_point_adds_a_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, {"bench_supply": "labplugin:BenchSupplyConfig"})))
    reg = Registry("device", "neurostimd.drivers", DEVICES.builtin)
    assert reg.kinds() == [*DEVICES.builtin, "bench_supply"]  # the built-in kinds first, then the plugin's
    assert reg.model("bench_supply").__name__ == "BenchSupplyConfig"


def test_a_plugin_cannot_replace_a_built_in_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in serial driver is the tested one: a plugin that names it is refused, loudly."""
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, {"serial": "labplugin:StealsSerialConfig"})))
    reg = Registry("device", "neurostimd.drivers", DEVICES.builtin)
    with pytest.warns(RuntimeWarning, match="names the built-in device kind 'serial'; the built-in one is kept"):
        models = reg.models()
    assert models["serial"] is SerialDeviceConfig


@pytest.mark.parametrize(("target", "why"), [
    ("labplugin:WrongKindConfig", "must declare `kind: Literal\\['broken'\\]`"),
    ("labplugin:NoSuchClass", "has no attribute 'NoSuchClass'"),
    ("no_such_module:X", "No module named 'no_such_module'"),
    ("labplugin", "is not \"module:Class\""),
    ("labplugin:DeviceContext", "is not a pydantic settings model"),
])
def test_a_broken_plugin_is_left_out_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str,
                                                    why: str) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, {"broken": target})))
    reg = Registry("device", "neurostimd.drivers", DEVICES.builtin)
    with pytest.warns(RuntimeWarning, match=why):
        assert "broken" not in reg.kinds()


def test_the_config_of_a_fresh_process_takes_a_plugin_kind(tmp_path: Path) -> None:
    """`neurostimd check-config` in a process where the plugin is installed accepts `[device] kind` of the plugin
    and checks its fields like a built-in one's."""
    (tmp_path / "site").mkdir()
    site = _plugin(tmp_path / "site", {"bench_supply": "labplugin:BenchSupplyConfig"})
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    body = textwrap.dedent("""
        [source]
        kind = "replay"
        path = "rec.npz"
        [device]
        kind = "bench_supply"
        """)
    good.write_text(body + "volts = 2.5\n")
    bad.write_text(body + "volts = \"high\"\n")
    env = {"PYTHONPATH": f"{site}:{ROOT}", "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "neurostimd", "check-config", str(good)], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    no = subprocess.run([sys.executable, "-m", "neurostimd", "check-config", str(bad)], capture_output=True,
                        text=True, env=env, timeout=120)
    assert no.returncode == 78 and "device.bench_supply.volts" in no.stderr


@pytest.mark.parametrize(("table", "what", "known"), [
    ("policy", "policy", "table"), ("device", "device", "serial, virtual, none"),
    ("source", "source", "board, lsl, replay")])
def test_an_unknown_kind_is_named_with_the_known_ones_in_every_table(table: str, what: str, known: str) -> None:
    """Also where the table has one kind only ([policy]: pydantic alone said "Input should be 'table'")."""
    with pytest.raises(ConfigError) as exc:
        parse_config({table: {"kind": "mylaw"}})
    assert any(f"unknown {what} kind 'mylaw'; known: {known}" in line for line in exc.value.errors), exc.value.errors
