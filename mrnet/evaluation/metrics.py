"""Valid-split metrics of per-exam probability tables: AUC with bootstrap CI, calibration, and
sensitivity, specificity and accuracy at 0.5 and at the operating point.

The operating point of a model is the Youden threshold chosen on its fit split (the tune
hold-out when there is one, else train), never on valid; every threshold-dependent figure
names its threshold in its key (``*_at_0.5``, ``*_at_operating_point``).

A probability table (``case_id,split,label,prob``, one row per exam and split) is what the
extract and ensemble stages write. Tables of one task are joined by case id, never by row
order, and must agree on which valid cases exist and on their labels.

Everything here is pure (tables are read by :mod:`mrnet.core.tables`); undefined values (an AUC with one
class, a sensitivity without positives) are NaN in memory and ``null`` in the JSON reports, never
a made-up 0.5.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from mrnet.core.stats import (auc, binary_metrics, bootstrap_aucs, brier,
                              expected_calibration_error, percentile_ci, rounded, task_seed,
                              wilson_interval, youden_threshold)
from mrnet.core.tables import fit_split, join_tables, rows, source

log = logging.getLogger(__name__)

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
