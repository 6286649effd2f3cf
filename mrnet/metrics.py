"""Valid-split metrics of per-exam probability tables: AUC with bootstrap CI, sensitivity,
specificity and accuracy at 0.5 and at a Youden threshold chosen on the fit split.

A probability table (``case_id,split,label,prob``, one row per exam and split) is what the
extract and ensemble stages write. Tables of one task are joined by case id, never by row
order, and must agree on which valid cases exist and on their labels.

Everything here is pure (tables are read by :mod:`mrnet.probs`); undefined values (an AUC with one
class, a sensitivity without positives) are NaN in memory and ``null`` in metrics.json, never
a made-up 0.5.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from mrnet.errors import UserError
from mrnet.probs import ProbTable

log = logging.getLogger(__name__)

# metrics.json precision: enough to compare runs, short enough to read in `dvc metrics show`.
DECIMALS = 4
# Cap on the resample × case matrix of one bootstrap chunk, so 10k cases × 10k resamples
# still fits in a few hundred MB.
_BOOT_CHUNK_ELEMENTS = 1 << 22



def auc(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (never a made-up 0.5).

    Args:
        labels: 0/1 ground truth.
        probs: scores, higher meaning more likely positive.
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(probs, dtype=np.float64)))


def bootstrap_aucs(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                   n: int, seed: int | Sequence[int]) -> np.ndarray:
    """AUCs of ``n`` case resamples (with replacement); NaN for a resample with one class.

    The resample indices are ``numpy.random.default_rng(seed).integers(0, m, (n, m))`` in
    row order, so two models with the same seed and their cases in the same order are
    resampled identically (a paired bootstrap). The AUC of every resample is computed at once
    from per-case multiplicities (Mann-Whitney with ties counted half), which is exact and
    O(n·m): 1000 resamples of 120 cases take milliseconds.

    Args:
        labels: 0/1 ground truth per case.
        probs: score per case.
        n: number of resamples.
        seed: seed of a private ``numpy.random.Generator`` (the global RNG is untouched).

    Returns:
        Array of shape (n,).
    """
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.shape != probs.shape or labels.ndim != 1:
        raise ValueError(f"labels and probs must be 1-D of one length, got {labels.shape} "
                         f"and {probs.shape}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    m = labels.size
    rng = np.random.default_rng(seed)
    if m == 0:
        return np.full(n, np.nan)
    # Cases sorted by score and grouped by tied score: within a resample, a positive beats
    # every negative in a lower group and ties with the negatives of its own group.
    order = np.argsort(probs, kind="stable")
    _, group_start = np.unique(probs[order], return_index=True)
    pos_sorted = labels[order]
    out = np.empty(n)
    chunk = max(1, _BOOT_CHUNK_ELEMENTS // m)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        idx = rng.integers(0, m, size=(k, m))
        # Multiplicity of each case in each resample, via one bincount over offset indices.
        counts = np.bincount((idx + m * np.arange(k)[:, None]).ravel(),
                             minlength=k * m).reshape(k, m)[:, order]
        pos = np.add.reduceat(np.where(pos_sorted, counts, 0), group_start, axis=1)
        neg = np.add.reduceat(np.where(pos_sorted, 0, counts), group_start, axis=1)
        neg_below = np.cumsum(neg, axis=1) - neg
        wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
        n_pos = pos.sum(axis=1)
        n_neg = neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + k] = np.where((n_pos > 0) & (n_neg > 0),
                                            wins / (n_pos * n_neg), np.nan)
    return out


def percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float]:
    """Central ``ci`` percentile interval of the finite ``samples``; (NaN, NaN) if none."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                 n: int, ci: float, seed: int | Sequence[int]) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the AUC over cases.

    Resamples that hold a single class have no AUC; they are skipped (and counted in a log
    message) rather than scored 0.5.

    Args:
        labels: 0/1 ground truth per case.
        probs: score per case.
        n: number of resamples.
        ci: coverage, e.g. 0.95.
        seed: seed of a private ``numpy.random.Generator``.

    Returns:
        (low, high); (NaN, NaN) when no resample has both classes.
    """
    samples = bootstrap_aucs(labels, probs, n, seed)
    skipped = int(np.isnan(samples).sum())
    if skipped:
        log.info("bootstrap: %d of %d resamples had one class and were skipped", skipped, n)
    return percentile_ci(samples, ci)


def youden_threshold(labels: Sequence[int] | np.ndarray,
                     probs: Sequence[float] | np.ndarray) -> float:
    """The score threshold that maximises Youden's J = TPR − FPR.

    The threshold is one of the observed scores (an exam is positive when prob >= threshold);
    sklearn's leading ``inf`` threshold, which calls nothing positive, is never chosen. On a
    tie the highest threshold wins.

    Returns:
        The threshold, or NaN when ``labels`` hold a single class.
    """
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return float("nan")
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(probs, dtype=np.float64))
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])


def binary_metrics(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                   threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and accuracy when prob >= ``threshold`` means positive.

    Returns:
        ``{"sensitivity", "specificity", "accuracy"}``; a rate without cases to count (no
        positives, no negatives, or a NaN threshold) is NaN.
    """
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, dtype=np.float64)
    nan = float("nan")
    if math.isnan(threshold) or labels.size == 0:
        return {"sensitivity": nan, "specificity": nan, "accuracy": nan}
    pred = probs >= threshold
    n_pos = int(labels.sum())
    n_neg = int((~labels).sum())
    tp = int((pred & labels).sum())
    tn = int((~pred & ~labels).sum())
    return {"sensitivity": tp / n_pos if n_pos else nan,
            "specificity": tn / n_neg if n_neg else nan,
            "accuracy": (tp + tn) / labels.size}


def fit_split(table: ProbTable) -> str:
    """The split a threshold is chosen on: "tune" when the table has one, else "train"."""
    return "tune" if table.has_split("tune") else "train"


def joined_valid(tables: Mapping[str, ProbTable]) -> tuple[np.ndarray, np.ndarray]:
    """Check that every table covers the same valid cases with the same labels.

    Args:
        tables: model name -> table, all of one task.

    Returns:
        (case_ids, labels) of the valid split, in case-id order.

    Raises:
        UserError: naming the table that lacks a case another table scores (and that other
            table), or a case whose label differs between two tables.
    """
    if not tables:
        raise ValueError("no tables to join")
    # The first table that holds a case is the reference for its label, and the witness
    # named when another table lacks it: the error blames the table with the hole.
    label_of: dict[str, int] = {}
    holder: dict[str, str] = {}
    per_table = []
    for table in tables.values():
        ids, labels, _ = table.select("valid")
        per_table.append((table, set(ids.tolist())))
        for case_id, label in zip(ids.tolist(), labels.tolist()):
            if case_id not in label_of:
                label_of[case_id], holder[case_id] = label, table.source
            elif label != label_of[case_id]:
                raise UserError(f"{table.source}: valid case {case_id} has label {label} but "
                                f"{holder[case_id]} says {label_of[case_id]}")
    for table, ids in per_table:
        missing = sorted(set(label_of) - ids)
        if missing:
            raise UserError(f"{table.source}: valid case {missing[0]} (scored in "
                            f"{holder[missing[0]]}) is missing ({len(missing)} missing in "
                            f"all); every model of a task must score the same valid cases")
    case_ids = np.asarray(sorted(label_of), dtype=object)
    return case_ids, np.asarray([label_of[c] for c in case_ids], dtype=np.int64)


def evaluate_model(table: ProbTable, n_boot: int, ci: float,
                   seed: int | Sequence[int]) -> dict[str, float]:
    """Metrics of one model on its valid rows; see :func:`evaluate_task` for the keys."""
    _, labels, probs = table.select("valid")
    split = fit_split(table)
    _, fit_labels, fit_probs = table.select(split)
    threshold = youden_threshold(fit_labels, fit_probs)
    if math.isnan(threshold):
        log.warning("%s: the %s split has %s; no Youden threshold", table.source, split,
                    "no rows" if fit_labels.size == 0 else "a single class")
    samples = bootstrap_aucs(labels, probs, n_boot, seed)
    lo, hi = percentile_ci(samples, ci)
    at_half = binary_metrics(labels, probs, 0.5)
    at_youden = binary_metrics(labels, probs, threshold)
    return {
        "auc": auc(labels, probs),
        "auc_ci_low": lo,
        "auc_ci_high": hi,
        "sensitivity": at_half["sensitivity"],
        "specificity": at_half["specificity"],
        "accuracy": at_half["accuracy"],
        "youden_threshold": threshold,
        "youden_sensitivity": at_youden["sensitivity"],
        "youden_specificity": at_youden["specificity"],
        "youden_accuracy": at_youden["accuracy"],
        "n_valid": int(labels.size),
        "n_pos": int(labels.sum()),
        "boot_skipped": int(np.isnan(samples).sum()),
    }


def evaluate_task(tables: Mapping[str, ProbTable], n_boot: int, ci: float,
                  seed: int | Sequence[int]) -> dict[str, dict[str, float]]:
    """Valid-split metrics of every model of one task.

    All models get the same bootstrap resamples (same seed, cases in case-id order), so their
    CIs come from the same case draws and are comparable.

    Args:
        tables: model name (a plane, "ensemble", …) -> its table, all of one task.
        n_boot: bootstrap resamples.
        ci: coverage of the AUC interval.
        seed: bootstrap seed.

    Returns:
        model -> {auc, auc_ci_low, auc_ci_high, sensitivity, specificity, accuracy (at 0.5),
        youden_threshold (chosen on the "tune" rows if present, else "train"),
        youden_sensitivity, youden_specificity, youden_accuracy (valid at that threshold),
        n_valid, n_pos, boot_skipped}. Values are unrounded; NaN where undefined.

    Raises:
        UserError: when the tables disagree on the valid cases or their labels.
    """
    joined_valid(tables)
    return {name: evaluate_model(table, n_boot, ci, seed) for name, table in tables.items()}


def task_seed(seed: int, task: str) -> list[int]:
    """A bootstrap seed per task derived from ``evaluate.seed`` (stable across runs)."""
    return [seed, zlib.crc32(task.encode())]


def _rounded(value: Any) -> Any:
    """Round floats for metrics.json; NaN becomes null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else round(float(value), DECIMALS)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_all(tables: Mapping[str, Mapping[str, ProbTable]], n_boot: int, ci: float,
                 seed: int) -> dict[str, Any]:
    """metrics.json: every task's metrics and the mean AUC over tasks per model.

    Args:
        tables: task -> model -> table.
        n_boot, ci, seed: bootstrap settings (``evaluate`` in params.yaml); each task's
            bootstrap seed is derived from ``seed`` and the task name.

    Returns:
        ``{"mean_auc": {model: mean valid AUC over tasks}, task: {model: {...}}, ...}`` with
        floats rounded to 4 decimals and NaN as None. ``mean_auc`` lists only the models
        present in every task; it is None for a model with an undefined AUC in some task.
    """
    per_task = {task: evaluate_task(models, n_boot, ci, task_seed(seed, task))
                for task, models in tables.items()}
    common = [m for m in next(iter(per_task.values()), {})
              if all(m in models for models in per_task.values())]
    mean_auc = {m: float(np.mean([per_task[t][m]["auc"] for t in per_task])) for m in common}
    return _rounded({"mean_auc": mean_auc, **per_task})
