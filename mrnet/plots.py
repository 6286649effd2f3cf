"""ROC curves: points, a PNG per task, and CSV data for ``dvc plots show/diff``.

Figures are built with matplotlib's object API on an Agg canvas, so nothing depends on (or
changes) the global pyplot state or the user's display backend.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from mrnet.io import atomic_path, write_text

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


def write_roc_csv(path: str | os.PathLike, fpr: Sequence[float] | np.ndarray,
                  tpr: Sequence[float] | np.ndarray) -> None:
    """Write ROC points as ``fpr,tpr`` CSV with a header, atomically (for DVC plots).

    Args:
        path: the CSV to write.
        fpr, tpr: points of equal length; may be empty (header only).
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1:
        raise ValueError(f"fpr and tpr must be 1-D of one length, got {fpr.shape} and "
                         f"{tpr.shape}")
    lines = ["fpr,tpr"] + [f"{f:.6g},{t:.6g}" for f, t in zip(fpr, tpr)]
    write_text(path, "\n".join(lines) + "\n")
