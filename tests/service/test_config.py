"""Config loading, validation errors with field paths, and the check-config / config-schema commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from neurostimd.config import Config, load_config, parse_config
from neurostimd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "config").glob("*.toml"))


def neurostimd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neurostimd", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path: Path) -> None:
    """Every config the project ships validates and uses the docs/design.md key names."""
    cfg = load_config(path)
    assert cfg.loop.cadence_ms > 0
    assert cfg.safety.k_max <= 1.85
    assert cfg.model.bundle.is_absolute()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_check_config_passes_on_every_shipped_config(path: Path) -> None:
    """`neurostimd check-config` exits 0 on every config/*.toml (what an operator runs before starting one)."""
    res = neurostimd("check-config", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "OK" in res.stdout


def test_shipped_config_set_is_complete() -> None:
    """The configs named in the issues exist (issue 13 adds brainflow.toml)."""
    assert {p.name for p in CONFIGS} >= {"sim.toml", "serial.toml", "lsl.toml", "replay.toml", "brainflow.toml"}


def test_unknown_key_is_rejected_with_its_path() -> None:
    """A misspelt key is an error naming its full path, not silently ignored."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"safety": {"max_amplitude_mA": 3.0}})
    assert any(line.startswith("safety.max_amplitude_mA:") for line in exc.value.errors)


def test_k_max_above_ceiling_rejected() -> None:
    """A Shannon k_max above 1.85 is refused, whatever else the config says."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"safety": {"k_max": 1.9}})
    assert any("safety" in line and "1.85" in line for line in exc.value.errors)


def test_source_union_discriminates_by_kind() -> None:
    """The source table is chosen by `kind`, and a kind's own required fields are enforced."""
    cfg = parse_config({"source": {"kind": "lsl", "type": "EEG", "n_channels": 8, "sample_rate_hz": 250}})
    assert cfg.source.kind == "lsl"
    with pytest.raises(ConfigError) as exc:
        parse_config({"source": {"kind": "lsl", "type": "EEG"}})
    assert any(line.startswith("source.lsl.n_channels") for line in exc.value.errors)
    with pytest.raises(ConfigError) as exc:
        parse_config({"source": {"kind": "carrier-pigeon"}})
    assert any(line.startswith("source") for line in exc.value.errors)


def test_fallback_safe_state_requires_parameters() -> None:
    """safe_state = fallback without fallback parameters is an error, not a silent off."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"safety": {"safe_state": "fallback"}})
    assert any("fallback" in line for line in exc.value.errors)


def test_check_config_exit_codes(tmp_path: Path) -> None:
    """check-config exits 0 for a valid file and 78 with one line per error for an invalid one."""
    ok = neurostimd("check-config", str(ROOT / "config" / "sim.toml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[loop]\ncadence_ms = -5\n[safety]\nk_max = 2.5\nbogus = 1\n')
    res = neurostimd("check-config", str(bad))
    assert res.returncode == 78
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3
    assert any("loop.cadence_ms" in ln for ln in lines)
    assert any("safety.bogus" in ln for ln in lines)
    assert any("safety" in ln and "k_max" in ln for ln in lines)


def test_check_config_unreadable_and_broken_toml(tmp_path: Path) -> None:
    """A missing file or broken TOML is EX_CONFIG with a message, never a traceback."""
    res = neurostimd("check-config", str(tmp_path / "missing.toml"))
    assert res.returncode == 78 and "cannot read" in res.stderr and "Traceback" not in res.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[loop\ncadence_ms = 5")
    res = neurostimd("check-config", str(broken))
    assert res.returncode == 78 and "TOML" in res.stderr and "Traceback" not in res.stderr


def test_config_schema_is_json_schema() -> None:
    """config-schema prints a JSON Schema that forbids unknown keys."""
    res = neurostimd("config-schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert schema["additionalProperties"] is False
    assert "safety" in schema["properties"]
    assert schema == {"$schema": "https://json-schema.org/draft/2020-12/schema", **Config.model_json_schema(),
                      "title": "neurostimd configuration"}


@pytest.mark.parametrize("table,key", [("safety", "ramp_ma_per_s"), ("safety", "max_amplitude_ma"),
                                       ("loop", "stale_after_ms"), ("safety", "max_daily_stim_s")])
def test_infinite_limits_are_rejected(table: str, key: str) -> None:
    """inf (or nan) would switch a limit off; the config refuses it with the field's path."""
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ConfigError) as exc:
            parse_config({table: {key: bad}})
        assert any(line.startswith(f"{table}.{key}") for line in exc.value.errors)


@pytest.mark.parametrize(("section", "key", "value"), [
    ("safety", "k_max", True),
    ("safety", "max_amplitude_ma", "3.0"),
    ("safety", "max_charge_per_phase_uc", "1e9"),
    ("safety", "electrode_area_cm2", False),
    ("loop", "cadence_ms", "50"),
    ("policy", "confidence_threshold", True),
    ("device", "retries", True),
    ("recorder", "enabled", 1),
])
def test_safety_numbers_are_strict(section: str, key: str, value: object) -> None:
    """A bool or a numeric string where a number (or a bool) is due is an error naming the field and the value,
    never coerced (`k_max = true` would have read as 1.0, `"3.0"` as 3.0)."""
    data: dict[str, dict[str, object]] = {section: {key: value}}
    if section == "device":
        data[section]["kind"] = "serial"
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any(key in line and repr(value) in line for line in exc.value.errors), exc.value.errors


def test_integers_are_numbers() -> None:
    """A TOML integer where a float is due is a number like any other (`max_amplitude_ma = 3`)."""
    cfg = parse_config({"safety": {"max_amplitude_ma": 3, "k_max": 1}, "loop": {"cadence_ms": 40}})
    assert cfg.safety.max_amplitude_ma == 3.0 and cfg.safety.k_max == 1.0 and cfg.loop.cadence_ms == 40.0


@pytest.mark.parametrize(("data", "bound"), [
    ({"loop": {"cadence_ms": 1000}}, "2000 ms"),
    ({"device": {"kind": "serial", "heartbeat_ms": 500}}, "at most 450 ms"),
    ({"device": {"kind": "virtual", "watchdog_ms": 100}}, "at most 50 ms"),
])
def test_a_config_that_cannot_feed_the_dead_man_timer_is_refused(data: dict[str, dict[str, object]],
                                                                 bound: str) -> None:
    """The longest gap between the host's frames plus one late tick must fit in the dead-man timeout (the timer the
    virtual board has, or the longest a serial board may have): cadence_ms = 1000 against 250 ms tripped the board
    20 times in 20 s."""
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert any("dead-man timer" in line and bound in line for line in exc.value.errors), exc.value.errors


def test_check_config_refuses_a_cadence_the_watchdog_cannot_take(tmp_path: Path) -> None:
    """check-config exits 78 for `[loop] cadence_ms = 1000` with the default serial board."""
    bad = tmp_path / "slow.toml"
    bad.write_text((ROOT / "config" / "sim.toml").read_text().replace("cadence_ms = 50", "cadence_ms = 1000"))
    res = neurostimd("check-config", str(bad))
    assert res.returncode == 78 and "dead-man timer" in res.stderr


def test_a_virtual_board_with_a_watchdog_above_the_maximum_is_refused() -> None:
    """[device] watchdog_ms above max_watchdog_ms is an error: the daemon would refuse that board."""
    with pytest.raises(ConfigError) as exc:
        parse_config({"device": {"kind": "virtual", "watchdog_ms": 600}})
    assert any("max_watchdog_ms" in line for line in exc.value.errors)


def test_the_feed_interval_is_the_worst_gap_the_loop_leaves() -> None:
    """Heartbeats leave from ticks once heartbeat_ms have passed, so the worst gap is the first tick after that:
    150 ms for 100 ms / 50 ms (measured on the virtual board), a whole cadence when the cadence is longer."""
    from neurostimd.config import watchdog_feed_interval_ms

    assert watchdog_feed_interval_ms(parse_config({})) == 150.0
    assert watchdog_feed_interval_ms(parse_config({"loop": {"cadence_ms": 200}})) == 200.0
    assert watchdog_feed_interval_ms(parse_config({"loop": {"cadence_ms": 40}})) == 120.0


def _errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as ex:
        load_config(path)
    return ex.value.errors


def test_a_misspelt_key_gets_a_did_you_mean_and_its_line(tmp_path: Path) -> None:
    """A misspelt key names the key it looks like and the line it is on; in a union member (a source kind) too,
    whose table is written without the kind."""
    base = (ROOT / "config" / "sim.toml").read_text()
    text = base.replace("[loop]\n", "[loop]\ncadence_mss = 50\n", 1)
    errs = _errors_of(tmp_path, text)
    n = text.splitlines().index("cadence_mss = 50") + 1
    assert f"loop.cadence_mss (line {n}): Extra inputs are not permitted; did you mean 'cadence_ms'?" in errs
    text = base.replace("[policy]\n", "[policy]\nonset_mss = 300\n", 1)
    n = text.splitlines().index("onset_mss = 300") + 1
    assert any(e.startswith(f"policy.table.onset_mss (line {n}):") and e.endswith("did you mean 'onset_ms'?")
               for e in _errors_of(tmp_path, text))


def test_a_key_like_no_other_lists_what_is_allowed_and_a_wrong_type_its_line(tmp_path: Path) -> None:
    base = (ROOT / "config" / "sim.toml").read_text()
    errs = _errors_of(tmp_path, base.replace("[audit]\n", "[audit]\nzzz = 1\n", 1))
    line = next(e for e in errs if e.startswith("audit.zzz"))
    assert "the keys allowed here:" in line and "checkpoint_ms" in line
    text = base.replace("stale_after_ms = 250", 'stale_after_ms = "250"', 1)
    n = text.splitlines().index('stale_after_ms = "250"') + 1
    assert any(e.startswith(f"loop.stale_after_ms (line {n}): ") and "got '250', a str" in e
               for e in _errors_of(tmp_path, text))


def test_no_line_rather_than_a_wrong_one_for_a_stimulation_row(tmp_path: Path) -> None:
    """A bad value in the third [[stimulation.states]] row names no line: every row has the same keys, and the
    first row's line would send a person to edit the wrong row."""
    text = (ROOT / "config" / "sim.toml").read_text()
    rows = []
    for i in range(3):
        amp = '"x"' if i == 2 else "1.0"
        rows.append(f'\n[[stimulation.states]]\nstate = {i}\nname = "s{i}"\nfrequency_hz = 130\n'
                    f"amplitude_ma = {amp}\npulse_width_us = 60\n")
    body = '\n[stimulation]\nclasses = ["quiet", "activated", "pathological"]\n' + "".join(rows)
    errs = _errors_of(tmp_path, text + body)
    bad = [e for e in errs if "amplitude_ma" in e]
    assert bad and all("(line" not in e for e in bad), bad


def test_the_schema_is_a_draft_2020_12_schema_that_carries_the_ceilings_and_units() -> None:
    from neurostimd.config import json_schema

    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    safety = schema["$defs"]["SafetyConfig"]["properties"]
    assert safety["k_max"]["maximum"] == 1.85
    missing = [k for k, v in safety.items() if not v.get("description")]
    assert not missing, f"[safety] keys without a description: {missing}"
    assert "(mA)" in safety["max_amplitude_ma"]["description"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates_against_the_schema(path: Path) -> None:
    """What an editor checks with the schema agrees with the daemon: the shipped configs pass it, and a k_max over
    the ceiling fails it as it fails the daemon."""
    import tomllib

    import jsonschema

    from neurostimd.config import json_schema

    schema = json_schema()
    data = tomllib.loads(path.read_text())
    jsonschema.validate(data, schema)
    bad = {**data, "safety": {**data.get("safety", {}), "k_max": 1.9}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
