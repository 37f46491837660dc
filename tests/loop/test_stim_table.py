"""The stimulation table in force: `[stimulation]` from the config or the bundle's own, checked against the bundle's
classes, recorded in the audit log, and taken on a reload."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from neurostimd.config import Config, parse_config
from neurostimd.core.stimtable import StimulationConfig
from neurostimd.errors import BundleError, ConfigError
from neurostimd.loop import stim_table_in_force
from neurostimd.outputs.audit import read_audit
from tests.loop.collect import DecisionLog
from tests.loops import board_loop

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["quiet", "activated", "pathological"]


def rows(amplitude_ma: float = 1.0, n: int = 3) -> list[dict[str, Any]]:
    return [{"state": i, "name": f"row{i}", "frequency_hz": 30.0 + i, "amplitude_ma": amplitude_ma,
             "pulse_width_us": 150.0} for i in range(n)]


def with_table(cfg: Config, classes: list[str] = CLASSES, states: list[dict[str, Any]] | None = None) -> Config:
    stim = StimulationConfig.model_validate({"classes": classes, "states": rows() if states is None else states})
    return cfg.model_copy(update={"stimulation": stim})


def _records(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    return [r for r in read_audit(tmp_path / "audit.jsonl").records if r["event"] == event]


def test_a_config_table_replaces_the_bundles_and_the_audit_log_says_so(cfg: Config, bundle: Any,
                                                                      tmp_path: Path) -> None:
    """With [stimulation] the policy asks for its rows, not the bundle's; `model_loaded` names the source, the hash
    and the rows in force."""
    c = with_table(cfg)
    decisions: list[dict[str, Any]] = []
    loop, drv, audit, _ = board_loop(c, bundle, tmp_path)
    loop.listeners.add(DecisionLog(decisions))
    try:
        loop.run(should_stop=lambda: False, duration_s=6.0)
    finally:
        audit.close()
        drv.close()
    asked = [d["requested"] for d in decisions if d["requested"] is not None and not d["safe_state"]]
    assert asked and all(r["amplitude_ma"] == 1.0 and r["pulse_width_us"] == 150.0 for r in asked)
    assert {r["frequency_hz"] for r in asked} <= {30.0, 31.0, 32.0}
    [rec] = _records(tmp_path, "model_loaded")
    assert rec["stim_table_source"] == "config" and rec["classes"] == CLASSES and rec["policy"] == "table"
    assert rec["stim_table"] == [{**r, "duration_min": None, "description": ""} for r in rows()]
    assert rec["stim_table_sha256"] == c.stimulation.table().sha256() == loop.table.sha256  # type: ignore[union-attr]


def test_without_a_config_table_the_bundles_is_in_force(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    audit.close()
    drv.close()
    [rec] = _records(tmp_path, "model_loaded")
    assert rec["stim_table_source"] == "bundle" and rec["stim_table_sha256"] == bundle.table.sha256()
    assert loop.table.table == bundle.table and rec["bundle"] == str(bundle.path)


def test_a_table_written_for_other_classes_is_refused_naming_both_lists(cfg: Config, bundle: Any) -> None:
    """Same count, other names (or order): the rows would stimulate the wrong classes, so the table is refused."""
    for classes in (["a", "b", "c"], ["activated", "quiet", "pathological"]):
        with pytest.raises(ConfigError) as err:
            stim_table_in_force(with_table(cfg, classes), bundle)
        assert str(classes) in str(err.value) and str(CLASSES) in str(err.value)
        assert "remove [stimulation]" in str(err.value)
    with pytest.raises(ConfigError, match=re.escape("['quiet', 'activated']")):
        stim_table_in_force(with_table(cfg, CLASSES[:2], rows(n=2)), bundle)


def test_a_two_class_bundle_with_the_three_state_table_is_refused(cfg: Config, bundle: Any, tmp_path: Path) -> None:
    """A bundle trained on two classes whose own table has the notebook's three rows does not start: the loop
    names the table's states and the classes."""
    two = copy.copy(bundle)
    two.class_names = ["quiet", "seizure"]
    with pytest.raises(BundleError) as err:
        board_loop(cfg, two, tmp_path)
    msg = str(err.value)
    assert "[0, 1, 2]" in msg and "['quiet', 'seizure']" in msg and "state(s) [2], which no class has" in msg
    assert not (tmp_path / "audit.jsonl").exists() or not _records(tmp_path, "stim_command")
    # a [stimulation] table for its two classes lets it start
    assert stim_table_in_force(with_table(cfg, ["quiet", "seizure"], rows(n=2)), two).source == "config"


def test_stimulation_rows_must_match_their_classes_at_check_config() -> None:
    """One row per class, state = its index: anything else is refused when the config is read, naming both."""
    base = {"classes": CLASSES}
    for states, why in ((rows(n=2), "no row for state(s) [2] ('pathological')"),
                        (rows(n=4), "rows for state(s) [3], which no class has"),
                        ([*rows(), rows()[0]], "more than one row for state(s) [0]")):
        with pytest.raises(ConfigError) as err:
            parse_config({"stimulation": {**base, "states": states}})
        line = " ".join(err.value.errors)
        assert line.startswith("stimulation: ") and why in line and str(CLASSES) in line


@pytest.mark.parametrize(("key", "value"), [("amplitude_ma", "2.5"), ("frequency_hz", float("inf")),
                                            ("pulse_width_us", float("nan")), ("amplitude_ma", True)])
def test_stimulation_numbers_are_strict(key: str, value: object) -> None:
    """Rows follow the config's rules: TOML numbers only, no NaN or infinity (a typo is reported, not coerced)."""
    states = rows()
    states[1][key] = value
    with pytest.raises(ConfigError) as err:
        parse_config({"stimulation": {"classes": CLASSES, "states": states}})
    assert any(f"stimulation.states.1.{key}" in e for e in err.value.errors)


def test_the_commented_example_in_sim_toml_is_the_default_bundles_table(bundle: Any) -> None:
    """config/sim.toml documents [stimulation]; uncommented, it is valid and matches the default bundle."""
    text = (ROOT / "config" / "sim.toml").read_text()
    block = text[text.index("# [stimulation]"):].split("\n\n[", 1)[0]
    toml = "\n".join(line.removeprefix("# ").removeprefix("#") for line in block.splitlines())
    cfg = parse_config(tomllib.loads(toml))
    table = stim_table_in_force(cfg, bundle)
    assert table.source == "config" and table.sha256 == bundle.table.sha256()


def test_a_reload_takes_a_new_table_and_refuses_one_for_other_classes(cfg: Config, bundle: Any,
                                                                     tmp_path: Path) -> None:
    """[stimulation] is live like [policy]: a reload puts the new table in force (safe state first, as for any
    reload); a table that does not fit the bundle is refused and the running one kept, unchanged."""
    decisions: list[dict[str, Any]] = []
    loop, drv, audit, _ = board_loop(cfg, bundle, tmp_path)
    loop.listeners.add(DecisionLog(decisions))
    try:
        loop.run(should_stop=lambda: False, duration_s=4.0)
        assert loop.table.source == "bundle"
        assert loop.reload(with_table(cfg)) == []
        assert loop.table.source == "config" and loop.cfg.stimulation is not None
        ctl, table = loop.controller, loop.table
        with pytest.raises(ConfigError, match=re.escape(str(["a", "b", "c"]))):
            loop.reload(with_table(cfg, ["a", "b", "c"], rows(0.5)))
        assert loop.controller is ctl and loop.table is table
        n = len(decisions)
        loop.run(should_stop=lambda: False, duration_s=6.0)
    finally:
        audit.close()
        drv.close()
    after = [d["requested"] for d in decisions[n:] if d["requested"] is not None and not d["safe_state"]]
    assert after and all(r["amplitude_ma"] == 1.0 and r["pulse_width_us"] == 150.0 for r in after)
    assert any(r["requested"] and r["requested"]["amplitude_ma"] != 1.0 for r in decisions[:n])
