"""Statistics shared by every dataset: the one sigmoid and the one AUC, bootstrap intervals,
thresholds, calibration, rounding for JSON reports, and logistic models applied to scores.

Everything here is pure and takes arrays; undefined values (an AUC with one class, a
sensitivity without positives) are NaN, never a made-up 0.5.
"""

from __future__ import annotations

import copy
import logging
import math
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mrnet.core.errors import UserError

log = logging.getLogger(__name__)


def sigmoid(logits: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """Probabilities of logits, computed in float64: the one sigmoid of every table, report and
    prediction, so a probability is the same number wherever it is shown. torch is imported
    here, not at the top: the ensemble and report stages need the rest of this module only."""
    import torch

    return torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()


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
    # imported on first use: scikit-learn costs every stage process that imports this module
    # (all of them) a second or more of CPU, and only some compute an AUC
    from sklearn.metrics import roc_auc_score

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
    from sklearn.metrics import roc_curve  # on first use, as in auc()

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


def logistic(z: float | np.ndarray) -> np.ndarray:
    """The inverse of :func:`logit` for the fitted ensemble's linear score, in numpy float64.

    The CNNs' probabilities go through :func:`sigmoid`; the ensemble's operating point and
    probabilities were fitted and stored with this formula, whose last bit can differ from
    torch's, so it stays as it is: a stored threshold must reproduce to the bit.
    """
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logit(p: float | np.ndarray) -> float | np.ndarray:
    """log(p / (1 - p))."""
    return np.log(p) - np.log1p(-np.asarray(p, dtype=float))


def prior_shift(fit_prevalence: float, target: float | None) -> float:
    """The logit offset that moves probabilities calibrated at ``fit_prevalence`` to ``target``.

    Bayes' rule with the class-conditional densities unchanged (prior shift):
    logit(p') = logit(p) + logit(target) - logit(fit_prevalence). 0 when ``target`` is None.
    """
    if target is None:
        return 0.0
    if not 0.0 < target < 1.0:
        raise UserError(f"a target prevalence must be in (0, 1), got {target}")
    return float(logit(target) - logit(fit_prevalence))


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None (JSON's null) when it is NaN or infinite."""
    return float(value) if np.isfinite(value) else None


def with_prevalence(model: Mapping, target: float | None) -> dict:
    """The ensemble with its probabilities moved to prevalence ``target`` (None: the fit's).

    The operating threshold moves with them, so every exam keeps its call: a prior shift
    changes what a probability means, not which exams the ensemble ranks above its threshold.
    """
    out = copy.deepcopy(dict(model))
    shift = prior_shift(model["fit_prevalence"], target)
    op = out["operating_point"]
    if op["threshold"] is not None:
        z = float(logit(op["threshold"])) - float(model["logit_shift"]) + shift
        op["threshold"] = float(logistic(z))
    out.update(target_prevalence=target, logit_shift=shift)
    return out


def ensemble_probs(model: Mapping, features: np.ndarray) -> np.ndarray:
    """Probabilities of the fitted ensemble for (N, planes) plane probabilities."""
    coef = np.array([model["coef"][p] for p in model["planes"]], dtype=float)
    z = (np.asarray(features, dtype=float) @ coef + float(model["intercept"])
         + float(model.get("logit_shift", 0.0)))
    return logistic(z)


