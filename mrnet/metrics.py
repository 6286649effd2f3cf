"""Valid-split metrics of per-exam probability tables: AUC with bootstrap CI, calibration, and
sensitivity, specificity and accuracy at 0.5 and at the operating point.

The operating point of a model is the Youden threshold chosen on its fit split (the tune
hold-out when there is one, else train), never on valid; every threshold-dependent figure
names its threshold in its key (``*_at_0.5``, ``*_at_operating_point``).

A probability table (``case_id,split,label,prob``, one row per exam and split) is what the
extract and ensemble stages write. Tables of one task are joined by case id, never by row
order, and must agree on which valid cases exist and on their labels.

Everything here is pure (tables are read by :mod:`mrnet.probs`); undefined values (an AUC with one
class, a sensitivity without positives) are NaN in memory and ``null`` in the JSON reports, never
a made-up 0.5.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mrnet.probs import fit_split, join_tables, rows, source

log = logging.getLogger(__name__)

# Precision of the JSON reports: enough to compare runs, short enough to read in `dvc metrics show`.
DECIMALS = 4
# Cap on the resample × case matrix of one bootstrap chunk, so 10k cases × 10k resamples
# still fits in a few hundred MB.
_BOOT_CHUNK_ELEMENTS = 1 << 22
# Equal-width probability bins of the reliability curve and the ECE.
RELIABILITY_BINS = 10



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


def wilson_interval(successes: int, n: int, ci: float) -> tuple[float, float]:
    """Wilson score interval of a proportion (sensitivity, specificity); (NaN, NaN) if n is 0."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + ci / 2.0))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


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


def reliability(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray,
                n_bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Reliability (calibration) curve: ``n_bins`` equal-width probability bins.

    Returns:
        One row per non-empty bin: ``bin`` (its index), ``predicted`` (mean probability),
        ``observed`` (fraction of positives) and ``n`` (cases). Bin edges are closed on the
        right, except that 0 falls in the first bin.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    bins = np.clip(np.ceil(probs * n_bins).astype(int) - 1, 0, n_bins - 1)
    df = pd.DataFrame({"bin": bins, "prob": probs, "label": labels})
    out = df.groupby("bin").agg(predicted=("prob", "mean"), observed=("label", "mean"),
                                n=("label", "size")).reset_index()
    return out


def expected_calibration_error(labels: Sequence[int] | np.ndarray,
                               probs: Sequence[float] | np.ndarray,
                               n_bins: int = RELIABILITY_BINS) -> float:
    """ECE: the case-weighted mean of |observed − predicted| over the reliability bins."""
    curve = reliability(labels, probs, n_bins)
    if curve.empty:
        return float("nan")
    return float((curve["n"] * (curve["observed"] - curve["predicted"]).abs()).sum()
                 / curve["n"].sum())


def brier(labels: Sequence[int] | np.ndarray, probs: Sequence[float] | np.ndarray) -> float:
    """Brier score: the mean squared difference between probability and label."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.size == 0:
        return float("nan")
    return float(np.mean((np.asarray(probs, dtype=np.float64) - labels) ** 2))


def operating_point(table: pd.DataFrame) -> tuple[float, str]:
    """The operating threshold of a model and the split it was chosen on.

    The Youden threshold on the table's fit split (tune when present, else train): valid rows
    never take part, so valid figures at this threshold are honest estimates.

    Returns:
        (threshold, split); the threshold is NaN when that split has one class or no rows.
    """
    split = fit_split(table)
    fit = rows(table, split)
    threshold = youden_threshold(fit["label"].to_numpy(), fit["prob"].to_numpy())
    if math.isnan(threshold):
        log.warning("%s: the %s split has %s; no operating point", source(table), split,
                    "no rows" if fit.empty else "a single class")
    return threshold, split


def evaluate_model(table: pd.DataFrame, n_boot: int, ci: float,
                   seed: int | Sequence[int]) -> dict[str, Any]:
    """Metrics of one model on its valid rows; see :func:`evaluate_task` for the keys."""
    valid = rows(table, "valid")
    labels, probs = valid["label"].to_numpy(), valid["prob"].to_numpy()
    threshold, split = operating_point(table)
    samples = bootstrap_aucs(labels, probs, n_boot, seed)
    lo, hi = percentile_ci(samples, ci)
    at_half = binary_metrics(labels, probs, 0.5)
    at_op = binary_metrics(labels, probs, threshold)
    n_pos, n_neg = int(labels.sum()), int(labels.size - labels.sum())
    called = probs >= threshold if not math.isnan(threshold) else None
    sens_ci = spec_ci = (float("nan"), float("nan"))
    if called is not None:
        sens_ci = wilson_interval(int((called & (labels == 1)).sum()), n_pos, ci)
        spec_ci = wilson_interval(int((~called & (labels == 0)).sum()), n_neg, ci)
    return {
        "auc": auc(labels, probs),
        "auc_ci_low": lo,
        "auc_ci_high": hi,
        "average_precision": (float(average_precision_score(labels, probs))
                              if 0 < labels.sum() < labels.size else float("nan")),
        "brier": brier(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        **{f"{k}_at_0.5": v for k, v in at_half.items()},
        "operating_point": threshold,
        "operating_point_split": split,
        **{f"{k}_at_operating_point": v for k, v in at_op.items()},
        "sensitivity_at_operating_point_ci_low": sens_ci[0],
        "sensitivity_at_operating_point_ci_high": sens_ci[1],
        "specificity_at_operating_point_ci_low": spec_ci[0],
        "specificity_at_operating_point_ci_high": spec_ci[1],
        "n_valid": int(labels.size),
        "n_pos": int(labels.sum()),
        "boot_skipped": int(np.isnan(samples).sum()),
    }


def evaluate_task(tables: Mapping[str, pd.DataFrame], n_boot: int, ci: float,
                  seed: int | Sequence[int]) -> dict[str, dict[str, Any]]:
    """Valid-split metrics of every model of one task.

    All models get the same bootstrap resamples (same seed, cases in case-id order), so their
    CIs come from the same case draws, and the AUC difference of each model to the ensemble
    gets a paired bootstrap CI.

    Args:
        tables: model name (a plane, "ensemble", …) -> its table, all of one task.
        n_boot: bootstrap resamples.
        ci: coverage of the AUC intervals.
        seed: bootstrap seed.

    Returns:
        model -> {auc, auc_ci_low, auc_ci_high, average_precision, brier, ece (reliability
        bins of width 0.1), sensitivity_at_0.5, specificity_at_0.5, accuracy_at_0.5,
        operating_point (the Youden threshold on the fit split), operating_point_split
        ("train" or "tune"), sensitivity/specificity/accuracy_at_operating_point (valid at
        that threshold) with Wilson intervals for the sensitivity and specificity
        (``*_at_operating_point_ci_low/high``), n_valid, n_pos, boot_skipped}, and for every
        model but the ensemble
        auc_minus_ensemble with its paired CI (auc_minus_ensemble_ci_low/high). Values are
        unrounded; NaN where undefined.

    Raises:
        UserError: when the tables disagree on the valid cases or their labels.
    """
    join_tables(tables, "valid")
    out = {name: evaluate_model(table, n_boot, ci, seed) for name, table in tables.items()}
    if "ensemble" in tables:
        base = rows(tables["ensemble"], "valid")
        base_samples = bootstrap_aucs(base["label"], base["prob"], n_boot, seed)
        for name, table in tables.items():
            if name == "ensemble":
                continue
            valid = rows(table, "valid")
            diff = bootstrap_aucs(valid["label"], valid["prob"], n_boot, seed) - base_samples
            lo, hi = percentile_ci(diff, ci)
            out[name].update({"auc_minus_ensemble": out[name]["auc"] - out["ensemble"]["auc"],
                              "auc_minus_ensemble_ci_low": lo,
                              "auc_minus_ensemble_ci_high": hi})
    return out


def task_seed(seed: int, task: str) -> list[int]:
    """A bootstrap seed per task (or any named subset) derived from ``evaluate.seed``, stable
    across runs."""
    return [seed, zlib.crc32(task.encode())]


def rounded(value: Any) -> Any:
    """Round floats for the JSON reports; NaN becomes null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else round(float(value), DECIMALS)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_all(tables: Mapping[str, Mapping[str, pd.DataFrame]], n_boot: int, ci: float,
                 seed: int) -> dict[str, Any]:
    """The full metrics report: every task's metrics and the mean AUC over tasks per model.

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
    return rounded({"mean_auc": mean_auc, **per_task})


# The headline: what `dvc metrics show` and `dvc exp show` display, one file per task and one
# for the means. The ensemble is the headline model; figures at a threshold name it.
HEADLINE_KEYS = ("auc", "auc_ci_low", "auc_ci_high", "multitask_auc", "operating_point",
                 "sensitivity_at_operating_point", "specificity_at_operating_point", "brier",
                 "ece")


def headline(report: Mapping[str, Any], model: str = "ensemble",
             other: str = "multitask") -> dict[str, dict[str, Any]]:
    """The headline figures of a full report (:func:`evaluate_all`'s rounded output).

    Returns:
        ``{task: {auc, auc_ci_low, auc_ci_high (of ``model``), multitask_auc (``other``'s AUC,
        only when it ran), operating_point, sensitivity_at_operating_point,
        specificity_at_operating_point (of ``model``, the threshold from its fit split),
        brier, ece (``model``'s calibration on valid)},
        "mean": {auc, multitask_auc}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    tasks = [t for t in report if t != "mean_auc"]
    for task in tasks:
        r = report[task][model]
        row = {k: r[k] for k in ("auc", "auc_ci_low", "auc_ci_high")}
        if other in report[task]:
            row["multitask_auc"] = report[task][other]["auc"]
        row.update({k: r[k] for k in ("operating_point", "sensitivity_at_operating_point",
                                       "specificity_at_operating_point", "brier", "ece")})
        out[task] = row
    out["mean"] = {"auc": report["mean_auc"].get(model)}
    if other in report["mean_auc"]:
        out["mean"]["multitask_auc"] = report["mean_auc"][other]
    return out


def metrics_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """The full report as one table: a row per (task, model), a column per figure."""
    records = [{"task": task, "model": model, **values}
               for task, models in report.items() if task != "mean_auc"
               for model, values in models.items()]
    return pd.DataFrame.from_records(records)


def largest_errors(table: pd.DataFrame, threshold: float, n: int) -> pd.DataFrame:
    """The valid exams a model gets most wrong at ``threshold``.

    Args:
        table: a probability table.
        threshold: prob >= threshold calls an exam positive.
        n: how many of each kind.

    Returns:
        Up to ``n`` false positives (highest probability first) then up to ``n`` false
        negatives (lowest probability first): columns ``case_id, label, prob, error``
        ("false positive" or "false negative"). Empty when the threshold is NaN.
    """
    valid = rows(table, "valid")
    cols = ["case_id", "label", "prob", "error"]
    if math.isnan(threshold):
        return pd.DataFrame(columns=cols)
    called = valid["prob"] >= threshold
    fp = valid[called & (valid["label"] == 0)].sort_values(["prob", "case_id"],
                                                            ascending=[False, True]).head(n)
    fn = valid[~called & (valid["label"] == 1)].sort_values(["prob", "case_id"]).head(n)
    out = pd.concat([fp.assign(error="false positive"), fn.assign(error="false negative")])
    return out.loc[:, cols].reset_index(drop=True)
