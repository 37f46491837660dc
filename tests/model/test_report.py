"""The evaluation report's figures and agreement metrics: scikit-learn's balanced accuracy and Cohen's kappa, the
per-segment confusion matrix beside the per-decision one, the kept epoch on the learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from neurostimd.model import report
from tests.model.test_front_end_bundle import trained  # noqa: F401  (the module's trained bundle fixture)


def test_balanced_accuracy_and_kappa_see_through_class_imbalance() -> None:
    """A classifier that always says the majority class: 90 % accurate, but balanced accuracy at chance (0.5)
    and kappa 0."""
    y = np.array([0] * 90 + [1] * 10)
    lazy = report.agreement(y, np.zeros_like(y))
    assert lazy == {"balanced_accuracy": 0.5, "kappa": 0.0}
    assert report.agreement(y, y) == {"balanced_accuracy": 1.0, "kappa": 1.0}


def test_the_kept_epoch_is_the_lowest_validation_loss() -> None:
    assert report.best_epoch({"val_loss": [0.9, 0.5, 0.7, 0.6]}) == 2
    assert report.best_epoch({"loss": [1.0]}) is None
    assert report.best_epoch({"val_loss": [float("nan")] * 3}) is None


def test_learning_curves_draw_with_the_kept_epoch_and_chance(tmp_path: Path) -> None:
    path = tmp_path / "lc.png"
    report.plot_learning_curves({"loss": [1, 0.8, 0.7], "val_loss": [1, 0.6, 0.9], "accuracy": [0.3, 0.6, 0.7],
                                 "val_accuracy": [0.3, 0.7, 0.6]}, path, n_classes=3)
    assert Image.open(path).size[0] > 800


def test_evaluate_reports_segment_agreement_beside_decisions(trained: tuple[Path, Path],  # noqa: F811
                                                           tmp_path: Path) -> None:
    """metrics.json carries balanced accuracy and kappa per decision and per segment, the per-segment confusion
    matrix (one count per scored segment), and the figure shows both matrices side by side."""
    from neurostimd.model.evaluate import evaluate_bundle

    m: dict[str, Any] = evaluate_bundle(trained[0], trained[1], tmp_path / "r", progress=lambda _: None)
    cm = np.array(m["confusion_matrix"])
    recall = [cm[i, i] / cm[i].sum() for i in range(len(cm)) if cm[i].sum()]
    assert m["balanced_accuracy"] == pytest.approx(float(np.mean(recall)))
    seg = np.array(m["segment_confusion_matrix"])
    assert seg.sum() == m["n_scored_segments"] >= 1
    assert m["segment_accuracy"] == pytest.approx(np.trace(seg) / seg.sum())
    assert -1.0 <= m["kappa"] <= 1.0 and -1.0 <= m["segment_kappa"] <= 1.0
    assert "baseline_balanced_accuracy" in m and "baseline_segment_accuracy" in m
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["segment_kappa"] == m["segment_kappa"]
    width, _ = Image.open(tmp_path / "r" / "confusion_matrix.png").size
    assert width > 900  # two panels (one was 528 px wide)
