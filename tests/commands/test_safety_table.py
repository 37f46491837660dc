"""docs/safety.md's worked table is the output of the code, and the notebook's state 2 is cut as the doc says."""

from __future__ import annotations

from pathlib import Path

import pytest

from neurostimd.commands.safety_table import main
from neurostimd.core.safety import SafetyConfig, evaluate_table, table_markdown, table_warnings
from neurostimd.core.stimtable import notebook_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "safety.md"


def test_doc_table_matches_generated_table(capsys: pytest.CaptureFixture[str]) -> None:
    """The table in docs/safety.md is exactly what `python -m neurostimd.commands.safety_table --table` prints."""
    assert main(["--table"]) == 0
    generated = capsys.readouterr().out
    text = DOC.read_text()
    start = text.index("<!-- BEGIN GENERATED TABLE -->\n") + len("<!-- BEGIN GENERATED TABLE -->\n")
    end = text.index("<!-- END GENERATED TABLE -->")
    assert text[start:end] == generated


def test_notebook_state_2_is_cut_on_small_contact() -> None:
    """State 2 (5 mA, 500 µs) breaks Q, Q/A and k on 0.06 cm² and is sent at 3 mA; states 0 and 1 pass unchanged."""
    rows = {r.state: r for r in evaluate_table(SafetyConfig.model_validate({}), notebook_table(), areas_cm2=[0.06])}
    s2 = rows[2]
    assert s2.charge_uc == pytest.approx(2.5) and s2.k == pytest.approx(2.02, abs=0.01)
    assert s2.breaks == ["charge_per_phase", "charge_density", "shannon_k"]
    assert s2.sent is not None and s2.sent.amplitude_ma == pytest.approx(3.0)
    assert rows[0].limited_by == [] and rows[1].limited_by == []
    warnings = table_warnings(SafetyConfig.model_validate({}), notebook_table())
    assert len(warnings) == 1 and warnings[0].startswith("state 2 (high)")


def test_markdown_marks_refused_states() -> None:
    """A state the gate refuses is shown as refused in the table."""
    cfg = SafetyConfig.model_validate({"min_frequency_hz": 30.0})
    md = table_markdown(evaluate_table(cfg, notebook_table()))
    assert "refused (off)" in md and "frequency_min" in md


def test_bad_areas_are_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Non-numeric or non-positive electrode areas exit 2 with a message naming --areas."""
    assert main(["--table", "--areas", "0.06,abc"]) == 2
    assert main(["--table", "--areas", "-1"]) == 2
    assert "--areas" in capsys.readouterr().err
