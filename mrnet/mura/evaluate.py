"""Study-level metrics of MURA predictions: AUC and Cohen's kappa with bootstrap CIs,
accuracy, sensitivity and specificity, overall and per study type.

A study is called abnormal when its probability (the mean over its views) is above the
threshold (the paper: 0.5). The paper compares the model with radiologists by Cohen's kappa of
the calls against the reference labels; here kappa is between the model's calls and the
labels of the dataset. Everything here is pure: tables in, numbers out. Undefined values (an
AUC with one class, a kappa where chance agreement is 1) are NaN, never a made-up number.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from mrnet.core.stats import auc, bootstrap_aucs, percentile_ci, rounded, task_seed
from mrnet.mura import STUDY_TYPES

# Rows of the per-type table: every study type, then all studies together.
ALL = "all"
_BOOT_CHUNK_ELEMENTS = 1 << 22


def binary_kappa(labels: Sequence[int] | np.ndarray, calls: Sequence[int] | np.ndarray) -> float:
    """Cohen's kappa of two 0/1 raters; NaN when chance agreement is 1 (both constant, equal)."""
    return float(_kappa_from_counts(*_confusion(np.asarray(labels, bool)[None],
                                                np.asarray(calls, bool)[None]))[0])


def _confusion(labels: np.ndarray, calls: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, fn, tn of each row of (k, n) boolean arrays."""
    tp = (labels & calls).sum(1)
    fp = (~labels & calls).sum(1)
    fn = (labels & ~calls).sum(1)
    tn = (~labels & ~calls).sum(1)
    return tp, fp, fn, tn


def _kappa_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                       tn: np.ndarray) -> np.ndarray:
    n = (tp + fp + fn + tn).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        po = (tp + tn) / n
        pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
        kappa = (po - pe) / (1.0 - pe)
    return np.where((n > 0) & (pe < 1.0), kappa, np.nan)


def bootstrap_kappas(labels: Sequence[int] | np.ndarray, calls: Sequence[int] | np.ndarray,
                     n: int, seed: int | Sequence[int]) -> np.ndarray:
    """Kappas of ``n`` study resamples with replacement (a private generator; NaN where undefined)."""
    labels = np.asarray(labels, bool)
    calls = np.asarray(calls, bool)
    m = labels.size
    rng = np.random.default_rng(seed)
    if m == 0:
        return np.full(n, np.nan)
    out = np.empty(n)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // m)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        idx = rng.integers(0, m, size=(k, m))
        out[start:start + k] = _kappa_from_counts(*_confusion(labels[idx], calls[idx]))
    return out


def study_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                  threshold: float, n_boot: int, ci: float,
                  seed: int | Sequence[int]) -> dict[str, float]:
    """Metrics of one group of studies.

    Returns:
        {auc, auc_ci_low, auc_ci_high, kappa, kappa_ci_low, kappa_ci_high, accuracy,
        sensitivity, specificity, n_studies, n_abnormal}; calls are prob > threshold.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    calls = probs > threshold
    truth = labels.astype(bool)
    tp, fp, fn, tn = (int(v[0]) for v in _confusion(truth[None], calls[None]))
    nan = float("nan")
    auc_lo, auc_hi = percentile_ci(bootstrap_aucs(labels, probs, n_boot, seed), ci)
    k_lo, k_hi = percentile_ci(bootstrap_kappas(labels, calls, n_boot, seed), ci)
    return {"auc": auc(labels, probs), "auc_ci_low": auc_lo, "auc_ci_high": auc_hi,
            "kappa": binary_kappa(labels, calls), "kappa_ci_low": k_lo, "kappa_ci_high": k_hi,
            "accuracy": (tp + tn) / labels.size if labels.size else nan,
            "sensitivity": tp / (tp + fn) if tp + fn else nan,
            "specificity": tn / (tn + fp) if tn + fp else nan,
            "n_studies": int(labels.size), "n_abnormal": int(truth.sum())}


def per_type_table(studies: pd.DataFrame, threshold: float = 0.5, n_boot: int = 1000,
                   ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Study metrics per study type and over all studies.

    Args:
        studies: one row per study with ``study_type``, ``label`` (0/1) and ``prob``.
    Returns:
        A DataFrame indexed by study type (those present, in STUDY_TYPES order) then "all",
        with the columns of :func:`study_metrics`.
    """
    rows = {}
    for name in [t for t in STUDY_TYPES if (studies["study_type"] == t).any()] + [ALL]:
        sub = studies if name == ALL else studies[studies["study_type"] == name]
        rows[name] = study_metrics(sub["label"].to_numpy(), sub["prob"].to_numpy(), threshold,
                                   n_boot, ci, task_seed(seed, name))
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "study_type"
    return table


def metrics_json(table: pd.DataFrame, view_auc: float, threshold: float) -> dict[str, Any]:
    """metrics.json: the "all" row as ``study``, each type under ``per_type``, the view-level
    AUC for comparison, the threshold; floats to 4 decimals, NaN as null."""
    records = table.to_dict(orient="index")
    study = dict(records.pop(ALL))
    return rounded({"study": study, "per_type": records,
                     "view": {"auc": view_auc}, "threshold": threshold})


def format_table(table: pd.DataFrame) -> str:
    """The per-type table as Markdown-style text for logs and the README."""
    def cell(v: float) -> str:
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

    lines = ["| study type | studies | abnormal | AUC [95% CI] | kappa [95% CI] | accuracy | "
             "sensitivity | specificity |", "|---|---|---|---|---|---|---|---|"]
    for name, r in table.iterrows():
        lines.append(f"| {name} | {int(r.n_studies)} | {int(r.n_abnormal)} | "
                     f"{cell(r.auc)} [{cell(r.auc_ci_low)}, {cell(r.auc_ci_high)}] | "
                     f"{cell(r.kappa)} [{cell(r.kappa_ci_low)}, {cell(r.kappa_ci_high)}] | "
                     f"{cell(r.accuracy)} | {cell(r.sensitivity)} | {cell(r.specificity)} |")
    return "\n".join(lines)
