"""tools/law_sweep.py: one setting of one law swept through the evaluation's own evaluate(), with the reference
arms run once and the trade-off written as JSON, Markdown and a figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import law_sweep  # noqa: E402


def test_a_sweep_runs_each_value_and_the_setting_reaches_the_law(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    assert law_sweep.main(["--plant", "beta", "--arm", "table", "--param", "termination_ms", "--values", "0,60000",
                           "--set", "onset_ms=0", "--seed", "300", "--seeds", "1", "--duration", "40",
                           "--out", str(out)]) == 0
    s = json.loads((out / "sweep.json").read_text())
    assert [r["value"] for r in s["rows"]] == [0, 60000] and s["fixed"] == {"onset_ms": 0}
    for r in s["rows"]:  # each value's evaluation ran the law with that setting
        res = json.loads((out / f"termination_ms={r['value']}" / "results.json").read_text())
        assert res["arm_settings"]["table"]["termination_ms"] == r["value"]
        assert res["arm_settings"]["table"]["onset_ms"] == 0
    assert s["continuous"]["charge_uc"]["mean"] > 0
    # a long termination delay keeps stimulation on at least as long, and switches no more often
    short, long_ = s["rows"]
    assert long_["stim_on_pct"]["mean"] >= short["stim_on_pct"]["mean"]
    assert long_["switches_per_hour"]["mean"] <= short["switches_per_hour"]["mean"]
    assert (out / "sweep.png").stat().st_size > 10_000
    assert "| 60000 |" in (out / "sweep.md").read_text()
