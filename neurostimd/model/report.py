"""Classification metrics and the evaluation report's figures (matplotlib, Agg backend, files only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m


def per_class(cm: np.ndarray, class_names: list[str]) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(class_names):
        tp = float(cm[i, i])
        pred = float(cm[:, i].sum())
        true = float(cm[i, :].sum())
        precision = tp / pred if pred else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(true)}
    return out


def macro_f1(pc: dict[str, dict[str, float]]) -> float:
    supported = [v["f1"] for v in pc.values() if v["support"] > 0]
    return float(np.mean(supported)) if supported else 0.0


def agreement(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Balanced accuracy (the mean recall over the classes present: chance is 1 / n_classes whatever the class
    balance) and Cohen's kappa (agreement beyond chance: 0 at chance, 1 perfect), by scikit-learn."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a predicted class absent from y_true: still well defined
        balanced = float(balanced_accuracy_score(y_true, y_pred))
        kappa = float(cohen_kappa_score(y_true, y_pred)) if len(set(np.asarray(y_true).tolist())
                                                                 | set(np.asarray(y_pred).tolist())) > 1 else 1.0
    return {"balanced_accuracy": balanced, "kappa": kappa if np.isfinite(kappa) else 0.0}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def best_epoch(h: dict[str, Any]) -> int | None:
    """The epoch whose weights the model kept (1-based): early stopping restores the lowest validation loss."""
    val = h.get("val_loss")
    if not val:
        return None
    arr = np.asarray(val, dtype=float)
    return int(np.nanargmin(arr)) + 1 if np.isfinite(arr).any() else None


def plot_learning_curves(history: dict[str, Any], path: Path, n_classes: int | None = None) -> None:
    """One model's curves, or (a searched ensemble's history: {member: history}) each member's, side by side; the
    epoch each kept is marked, and chance (1 / n_classes) on the accuracy panel."""
    plt = _plt()
    runs = history if history and all(isinstance(v, dict) for v in history.values()) else {"": history}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for name, h in runs.items():
            tag = f"{name} " if name else ""
            if key in h:
                ax.plot(np.arange(1, len(h[key]) + 1), h[key], label=f"{tag}train {key}")
            if f"val_{key}" in h:
                line, = ax.plot(np.arange(1, len(h[f"val_{key}"]) + 1), h[f"val_{key}"], "--" if name else "-",
                                label=f"{tag}validation {key}")
                best = best_epoch(h)
                if best is not None:
                    ax.axvline(best, color=line.get_color(), ls=":", lw=1,
                               label=f"{tag}kept: epoch {best} (lowest validation loss)" if key == "loss" else None)
        if key == "accuracy" and n_classes:
            ax.axhline(1.0 / n_classes, color="0.5", ls="-.", lw=1,
                       label=f"chance with balanced classes (1/{n_classes})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Learning curves (validation = held-out whole segments)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion_panel(fig: Any, ax: Any, cm: np.ndarray, class_names: list[str], title: str) -> None:
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.1%}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("fraction of the true class (row)")


def plot_confusion(cm: np.ndarray, class_names: list[str], path: Path, title: str,
                   segment_cm: np.ndarray | None = None, segment_title: str = "") -> None:
    """The per-decision confusion matrix, and beside it the per-segment one (each segment judged by its mean
    probability) when given; counts and row fractions in each cell."""
    plt = _plt()
    panels = [(cm, title)] + ([(segment_cm, segment_title)] if segment_cm is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 4.3), squeeze=False)
    for ax, (m, t) in zip(axes[0], panels, strict=True):
        _confusion_panel(fig, ax, m, class_names, t)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_probabilities(probs: np.ndarray, labels: np.ndarray, segment: np.ndarray, class_names: list[str],
                       cadence_ms: float, path: Path, max_segments: int = 6,
                       segment_names: dict[int, str] | None = None) -> None:
    """Per-decision class probabilities over time for a few held-out segments, true class shaded underneath;
    `segment_names` labels each segment (its recording and where it starts) instead of its number."""
    plt = _plt()
    n_cls = len(class_names)
    # Round-robin over the segments' first true class, so every class shows up among the traces.
    by_class: dict[int, list[int]] = {}
    for s in dict.fromkeys(segment.tolist()):
        by_class.setdefault(int(labels[segment == s][0]), []).append(s)
    segs: list[int] = []
    while len(segs) < max_segments and any(by_class.values()):
        for c in sorted(by_class):
            if by_class[c] and len(segs) < max_segments:
                segs.append(by_class[c].pop(0))
    colors = plt.get_cmap("tab10")(np.arange(n_cls))
    fig, axes = plt.subplots(len(segs) + 1, 1, figsize=(10, 1.6 * len(segs) + 2.6), squeeze=False)
    for ax, s in zip(axes[:-1, 0], segs, strict=False):
        sel = segment == s
        t_s = np.arange(sel.sum()) * cadence_ms / 1000.0
        for c in range(n_cls):
            ax.plot(t_s, probs[sel, c], color=colors[c], lw=1, label=class_names[c])
            ax.fill_between(t_s, 0, 1, where=labels[sel] == c, color=colors[c], alpha=0.12, step="post")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel((segment_names or {}).get(s, f"segment {s}"), fontsize=7, rotation=0, ha="right",
                      va="center")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=n_cls)
    axes[-2, 0].set_xlabel("time in segment (s) — one decision per tick; shading = true class")
    # The notebook's per-sample bar plots: mean probability per true class.
    ax = axes[-1, 0]
    width = 0.8 / n_cls
    for c in range(n_cls):
        means = [float(probs[labels == t, c].mean()) if np.any(labels == t) else 0.0 for t in range(n_cls)]
        ax.bar(np.arange(n_cls) + (c - (n_cls - 1) / 2) * width, means, width, color=colors[c], label=class_names[c])
    ax.set_xticks(range(n_cls), [f"true {n}" for n in class_names])
    ax.set_ylabel("mean prob.")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
