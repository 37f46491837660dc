"""`[device] kind = "stimjim"`: its settings parse, build the driver, feed the config's dead-man checks, and its
errors say what is wrong and what to do."""

from __future__ import annotations

import tomllib

import pytest

from neurostimd.config import parse_config
from neurostimd.devices import DeviceContext, StimJimDeviceConfig
from neurostimd.drivers.stimjim.driver import StimJimDriver
from neurostimd.errors import ConfigError
from neurostimd.registry import DEVICES

SOURCE = {"kind": "replay", "path": "x.npz"}


def config(device: str) -> dict:  # type: ignore[type-arg]
    return {**tomllib.loads(device), "source": SOURCE}


def test_a_stimjim_device_table_parses_and_builds_its_driver() -> None:
    cfg = parse_config(config('[device]\nkind = "stimjim"\nport = "/dev/ttyACM1"\nchannel = 2\ndeadman_ms = 200\n'))
    dev = cfg.device
    assert isinstance(dev, StimJimDeviceConfig) and DEVICES.model("stimjim") is StimJimDeviceConfig
    assert dev.port == "/dev/ttyACM1" and dev.channel == 2 and dev.mode == "current" and dev.max_amplitude_ma == 3.33
    assert dev.heartbeat_interval_ms() == 100.0 and dev.watchdog_bound()[0] == 200.0
    assert dev.longest_watchdog_ms() == 200.0
    assert dev.with_port("/dev/pts/9").port == "/dev/pts/9"
    drv = dev.build(DeviceContext())
    assert isinstance(drv, StimJimDriver) and not drv.is_open and drv.deadman_ms == 200 and drv.channel == 2


def test_defaults_are_the_250_ms_dead_man() -> None:
    dev = parse_config(config('[device]\nkind = "stimjim"\n')).device
    assert isinstance(dev, StimJimDeviceConfig) and dev.deadman_ms == 250 and dev.baudrate == 115200


@pytest.mark.parametrize(("table", "message"), [
    ('baudrate = 1200', "reboots or erases a Teensy-based StimJim; use 115200"),
    ('baudrate = 134', "reboots or erases"),
    ('mode = "voltage"', "current mode only"),
    ('max_amplitude_ma = 5.0', "max_amplitude_ma"),
    ('deadman_ms = 2000', "deadman_ms"),
    ('channel = 3', "channel"),
    ('watchdog_ms = 250', "watchdog_ms"),  # a neighbour's setting: strict models name the unknown key
])
def test_its_errors_name_the_setting_and_the_fix(table: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(config(f'[device]\nkind = "stimjim"\n{table}\n'))
    assert any(message in line for line in exc.value.errors), exc.value.errors


def test_a_loop_too_slow_for_the_dead_man_train_is_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**config('[device]\nkind = "stimjim"\ndeadman_ms = 100\n'), "loop": {"cadence_ms": 100}})
    assert any("dead-man train length ([device] deadman_ms) is 100 ms" in line for line in exc.value.errors), \
        exc.value.errors
