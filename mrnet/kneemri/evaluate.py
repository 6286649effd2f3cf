"""Evaluation of the KneeMRI external validation: AUC with bootstrap CIs of every model and
task on the test folders, and ROC points for ``dvc plots``. Nothing here trains or scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from mrnet.core.errors import UserError
from mrnet.core.io import atomic_path
from mrnet.core.stats import auc, bootstrap_aucs, percentile_ci, rounded, task_seed


def evaluate_external(tables: Mapping[str, Mapping[str, pd.DataFrame]], n_boot: int,
                      ci: float, seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """AUC with a percentile-bootstrap CI of every model and task on the test split.

    Every model of a task gets the same resamples (same seed, cases in case-id order), so
    zero-shot and retrained intervals come from the same case draws.

    Args:
        tables: model -> task -> probability table (rows of other splits are ignored).

    Returns:
        model -> task -> {auc, auc_ci_low, auc_ci_high, n, n_pos}; None where undefined.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, per_task in tables.items():
        out[model] = {}
        for task, df in per_task.items():
            test = df[df["split"] == "test"].sort_values("case_id")
            if test.empty:
                raise UserError(f"{model}/{task}: no test rows to evaluate")
            y = test["label"].to_numpy(dtype=int)
            p = test["prob"].to_numpy(dtype=float)
            lo, hi = percentile_ci(bootstrap_aucs(y, p, n_boot,
                                                  task_seed(seed, f"kneemri-{task}")), ci)
            out[model][task] = {"auc": auc(y, p), "auc_ci_low": lo, "auc_ci_high": hi,
                                "n": int(y.size), "n_pos": int(y.sum())}
    return rounded(out)


def write_roc(path: str | Path, fpr: np.ndarray, tpr: np.ndarray) -> None:
    """ROC points as an ``fpr,tpr`` CSV with a header, atomically (for ``dvc plots``)."""
    df = pd.DataFrame({"fpr": np.asarray(fpr, dtype=float), "tpr": np.asarray(tpr, dtype=float)})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
