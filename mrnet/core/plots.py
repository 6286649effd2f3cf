"""Curves for people and for ``dvc plots``: ROC, precision-recall, reliability, learning.

Each kind of curve is one long table per task (a ``model`` column, an ``i`` column giving the
drawing order, then the axes), written as CSV into a folder that dvc.yaml's top-level
``plots:`` declares with the custom template ``models`` (``.dvc/plots/models.json``: DVC finds
a template there by name from any folder of the repository), which colours by model: whatever
models ran are drawn, and a model that did not run simply has no rows. The ROC
curves are also drawn as a PNG per task.

Figures are built with matplotlib's object API on an Agg canvas, so nothing depends on (or
changes) the global pyplot state or the user's display backend.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from mrnet.core.io import atomic_path

Curve = tuple[np.ndarray, np.ndarray, float]


def roc_points(labels: Sequence[int] | np.ndarray,
               probs: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve points from (0, 0) to (1, 1).

    Args:
        labels: 0/1 ground truth; both classes must be present.
        probs: scores, higher meaning more likely positive.

    Returns:
        (fpr, tpr), both non-decreasing.

    Raises:
        ValueError: when ``labels`` hold a single class (the curve is undefined).
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        raise ValueError("an ROC curve needs both classes in labels")
    fpr, tpr, _ = roc_curve(labels, np.asarray(probs, dtype=np.float64))
    return fpr, tpr


def plot_roc(task: str, curves: Mapping[str, Curve], path: str | os.PathLike) -> None:
    """Draw the ROC curves of one task on one square axes and write a PNG atomically.

    Args:
        task: the diagnosis, shown in the title.
        curves: model name -> (fpr, tpr, auc), drawn in the given order; the AUC is shown in
            the legend, e.g. "sagittal (AUC 0.873)".
        path: the PNG to write.
    """
    fig = Figure(figsize=(5.0, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        label = f"{name} (AUC {auc:.3f})" if np.isfinite(auc) else f"{name} (AUC n/a)"
        # The ensemble is the headline model: draw it heavier than the single planes.
        width = 2.5 if name == "ensemble" else 1.5
        ax.plot(fpr, tpr, linewidth=width, label=label)
    # A small margin keeps a perfect curve, which runs along the frame, visible.
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(f"ROC on valid: {task}")
    ax.grid(True, linewidth=0.5, alpha=0.4)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # The temp file ends in .tmp, so the format cannot be guessed from its name.
        fig.savefig(tmp, format="png")


def _long(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], x: str, y: str) -> pd.DataFrame:
    parts = [pd.DataFrame({"model": name, "i": np.arange(len(xs)), x: xs, y: ys})
             for name, (xs, ys) in curves.items()]
    if not parts:
        return pd.DataFrame(columns=["model", "i", x, y])
    return pd.concat(parts, ignore_index=True)


def roc_table(valid: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """ROC points of every model: ``model, i, fpr, tpr``.

    Args:
        valid: model -> (labels, probs) on the valid split; a model whose labels hold one
            class has no curve and no rows.
    """
    curves = {}
    for name, (labels, probs) in valid.items():
        try:
            curves[name] = roc_points(labels, probs)
        except ValueError:
            continue
    return _long(curves, "fpr", "tpr")


def pr_table(valid: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """Precision-recall points of every model: ``model, i, recall, precision``, recall rising.

    Args:
        valid: model -> (labels, probs); a model without positives has no rows.
    """
    curves = {}
    for name, (labels, probs) in valid.items():
        labels = np.asarray(labels)
        if labels.size == 0 or labels.sum() == 0:
            continue
        precision, recall, _ = precision_recall_curve(labels, np.asarray(probs, np.float64))
        curves[name] = (recall[::-1], precision[::-1])
    return _long(curves, "recall", "precision")


def reliability_table(curves: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Reliability curves of every model: ``model, i, predicted, observed, n``.

    Args:
        curves: model -> :func:`mrnet.core.stats.reliability` output.
    """
    parts = [c.rename(columns={"bin": "i"}).assign(model=name)
             for name, c in curves.items()]
    cols = ["model", "i", "predicted", "observed", "n"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def read_dvclive_series(path: str | os.PathLike, metric: str) -> pd.DataFrame:
    """One metric's per-epoch series from a DVCLive ``.tsv``: columns ``step, value``."""
    df = pd.read_csv(path, sep="\t")
    if "step" not in df.columns or metric not in df.columns:
        raise ValueError(f"{path}: expected columns step and {metric}, got {list(df.columns)}")
    return pd.DataFrame({"step": df["step"].astype(int), "value": df[metric].astype(float)})


def write_table(path: str | os.PathLike, df: pd.DataFrame) -> None:
    """Write a curve table as CSV with a header, atomically (6 significant digits)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
