"""`[device] kind = "pulsepal"`: its settings model, its errors, and what it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurostimd.config import load_config, parse_config
from neurostimd.devices import DeviceContext, PulsePalDeviceConfig
from neurostimd.drivers.pulsepal.driver import PulsePalDriver, shortest_train_ms
from neurostimd.errors import ConfigError
from neurostimd.registry import DEVICES

REPLAY = {"kind": "replay", "path": "x.npz"}


def test_a_pulsepal_config_file_parses_and_builds_its_driver(tmp_path: Path) -> None:
    path = tmp_path / "pulsepal.toml"
    path.write_text('[device]\nkind = "pulsepal"\nport = "/dev/ttyACM1"\nisolator_ma_per_v = 0.5\n'
                    'isolator_max_ma = 4.0\n\n[source]\nkind = "replay"\npath = "x.npz"\n')
    cfg = load_config(path)
    dev = cfg.device
    assert isinstance(dev, PulsePalDeviceConfig) and DEVICES.model("pulsepal") is PulsePalDeviceConfig
    assert (dev.port, dev.deadman_ms, dev.channel, dev.isolator_ma_per_v) == ("/dev/ttyACM1", 250.0, 1, 0.5)
    assert dev.longest_watchdog_ms() == 250.0 and dev.heartbeat_interval_ms() is None
    assert dev.watchdog_bound()[0] == pytest.approx(124.9) == shortest_train_ms(250.0)
    assert dev.with_port("/dev/ttyUSB0").port == "/dev/ttyUSB0"
    driver = dev.build(DeviceContext())
    assert isinstance(driver, PulsePalDriver) and not driver.is_open
    assert driver.port == "/dev/ttyACM1" and driver.max_amplitude_ma == 4.0 and driver.limits().watchdog_ms == 250


@pytest.mark.parametrize("deadman_ms", [100.0, 250.0, 333.3, 500.0])
def test_the_configs_train_bound_is_the_drivers(deadman_ms: float) -> None:
    cfg = PulsePalDeviceConfig(kind="pulsepal", deadman_ms=deadman_ms, isolator_ma_per_v=1.0, isolator_max_ma=1.0)
    assert cfg.shortest_train_ms() == shortest_train_ms(deadman_ms)


def _errors(device: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({"device": {"kind": "pulsepal", **device}, "source": REPLAY})
    return exc.value.errors


def test_a_missing_isolator_gain_is_a_config_error_naming_it() -> None:
    errs = _errors({"isolator_max_ma": 4.0})
    assert any("isolator_ma_per_v is required: the stimulus isolator's gain in mA per volt" in e for e in errs), errs
    errs = _errors({"isolator_ma_per_v": 1.0})
    assert any("isolator_max_ma is required" in e for e in errs), errs


@pytest.mark.parametrize("extra,match", [
    ({"isolator_ma_per_v": 0.0}, "isolator_ma_per_v"),
    ({"baudrate": 1200}, "erases"),
    ({"baudrate": 134}, "reboots"),
    ({"channel": 5}, "channel"),
    ({"deadman_ms": 900}, "deadman_ms"),
    ({"isolator_gain": 1.0}, "isolator_gain"),
])
def test_bad_pulsepal_settings_are_named(extra: dict, match: str) -> None:
    errs = _errors({"isolator_ma_per_v": 1.0, "isolator_max_ma": 4.0, **extra})
    assert any(match in e for e in errs), errs


def test_a_loop_too_slow_to_rearm_the_train_is_refused() -> None:
    """Two ticks must fit in the shortest train (124.9 ms at the default deadman_ms): a 100 ms cadence does not."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"device": {"kind": "pulsepal", "isolator_ma_per_v": 1.0, "isolator_max_ma": 4.0},
                      "source": REPLAY, "loop": {"cadence_ms": 100}})
    assert any("shortest train the Pulse Pal" in e for e in exc.value.errors), exc.value.errors
