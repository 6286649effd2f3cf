"""Readable reports the evaluate stage writes beside the metrics: Markdown pages a person opens.

- :func:`metrics_markdown`: every model of every task, one table per task, with what each
  threshold-dependent figure is measured at.
- :func:`errors_markdown`: per task, the valid exams the ensemble gets most wrong at its
  operating point, each linked to its viewer page.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from mrnet.core.errors import UserError


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def metrics_markdown(table: pd.DataFrame, ci: float) -> str:
    """The full per-model report as Markdown.

    Args:
        table: :func:`mrnet.evaluation.metrics.metrics_table` of the rounded report.
        ci: coverage of the intervals, for the column title.
    """
    pct = f"{100 * ci:g}%"
    lines = ["# Valid metrics of every model", "",
             f"AUC with its {pct} bootstrap CI; AP is average precision; Brier and ECE "
             "(10 equal-width bins) measure calibration. *op* is each model's operating "
             "point: the Youden threshold chosen on its fit split (named in the table), never "
             "on valid. Sensitivity/specificity are given at that threshold and at 0.5. "
             "'vs ensemble' is the AUC difference to the ensemble with a paired bootstrap CI "
             "(the same resampled exams for both).", ""]
    for task, rows in table.groupby("task", sort=False):
        lines += [f"## {task}", "",
                  f"| model | AUC [{pct} CI] | vs ensemble | AP | Brier | ECE | op (split) "
                  "| sens / spec at op | sens / spec at 0.5 | valid (pos) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows.to_dict("records"):
            diff = r.get("auc_minus_ensemble")
            vs = ("" if diff is None or (isinstance(diff, float) and math.isnan(diff)) else
                  f"{diff:+.3f} [{_num(r['auc_minus_ensemble_ci_low'])}, "
                  f"{_num(r['auc_minus_ensemble_ci_high'])}]")
            lines.append(
                f"| {r['model']} | {_num(r['auc'])} [{_num(r['auc_ci_low'])}, "
                f"{_num(r['auc_ci_high'])}] | {vs} | {_num(r['average_precision'])} "
                f"| {_num(r['brier'])} | {_num(r['ece'])} "
                f"| {_num(r['operating_point'])} ({r['operating_point_split']}) "
                f"| {_num(r['sensitivity_at_operating_point'])} / "
                f"{_num(r['specificity_at_operating_point'])} "
                f"| {_num(r['sensitivity_at_0.5'])} / {_num(r['specificity_at_0.5'])} "
                f"| {r['n_valid']} ({r['n_pos']}) |")
        lines.append("")
    return "\n".join(lines)


def errors_markdown(errors: Mapping[str, pd.DataFrame], thresholds: Mapping[str, tuple[float, str]],
                    viewer_href: str, model: str = "ensemble") -> str:
    """The error report: per task the largest false positives and negatives at the operating point.

    Args:
        errors: task -> :func:`mrnet.evaluation.metrics.largest_errors` of ``model``.
        thresholds: task -> (operating point, split it was chosen on).
        viewer_href: the viewer folder relative to the report, e.g. ``../plots/viewer``; each
            exam links to ``{viewer_href}/{case_id}.html``.
    """
    lines = ["# Largest errors on valid", "",
             f"Per task, the valid exams the {model} gets most wrong at its operating point "
             "(chosen without valid exams): false positives with the highest probability, "
             "false negatives with the lowest. Each exam links to its viewer (slices, class "
             "activation maps, every model's probability).", ""]
    for task, table in errors.items():
        threshold, split = thresholds[task]
        lines += [f"## {task}", "",
                  f"Operating point {_num(threshold, 4)} (Youden threshold on {split}).", ""]
        if table.empty:
            lines += ["No errors at the operating point." if not math.isnan(threshold) else
                      "No operating point (the fit split has a single class).", ""]
            continue
        lines += ["| exam | label | probability | error |", "|---|---|---|---|"]
        for r in table.to_dict("records"):
            lines.append(f"| [{r['case_id']}]({viewer_href}/{r['case_id']}.html) | {r['label']} "
                         f"| {r['prob']:.3f} | {r['error']} |")
        lines.append("")
    return "\n".join(lines)


# Where the evaluate stage writes its reports; the viewer stage reads the error list from here.
REPORTS = Path("reports")
ERRORS_JSON = REPORTS / "errors.json"
# The validate stage's description of the dataset.
DATASET_REPORT = REPORTS / "dataset.json"


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file a stage depends on; missing or unreadable is one error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def error_cases(path: str | Path = ERRORS_JSON) -> set[str]:
    """The case ids an error report lists (``reports/errors.json``: task -> rows)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: error report not found (run the evaluate stage first)")
    try:
        report = json.loads(path.read_text())
        return {str(row["case_id"]) for task_rows in report.values() for row in task_rows}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}: not an error report written by the evaluate stage "
                        f"({exc.__class__.__name__}: {exc})") from None


def _ci(r: Mapping[str, Any], key: str) -> str:
    return f"{_num(r[key])} [{_num(r[key + '_ci_low'])}, {_num(r[key + '_ci_high'])}]"


def model_card(report: Mapping[str, Any], dataset: Mapping[str, Any],
               ensembles: Mapping[str, Mapping[str, Any]], tune_fraction: float,
               ci: float) -> str:
    """The model card: what the models are for, what they were trained on, how they were
    chosen, how well they do on valid (with uncertainty), and what they cannot tell.

    Args:
        report: the rounded full report (:func:`mrnet.evaluation.metrics.evaluate_all`).
        dataset: the validate stage's report (``reports/dataset.json``).
        ensembles: task -> the ensemble's JSON (coefficients, operating point, prevalence,
            provenance).
        tune_fraction: ``data.tune_fraction`` (0: valid selects, as published).
        ci: coverage of the intervals.
    """
    pct = f"{100 * ci:g}%"
    tasks = [t for t in report if t != "mean_auc"]
    record = next(iter(ensembles.values())).get("provenance") or {}
    synthetic = bool(dataset.get("synthetic"))
    lines = ["# Model card: MRNet knee-MRI ensembles", "",
             "## Intended use", "",
             "Research on knee-MRI classification (abnormality, ACL tear, meniscal tear) and "
             "reproduction of the MRNet study. **Not for diagnosis**: no regulatory clearance, "
             "no prospective validation, and the figures below come from one public split.", ""]
    if synthetic:
        lines += ["**These models were trained on synthetic knee phantoms**, not patient data: "
                  "their figures say that the pipeline works, nothing about knees. `predict` "
                  "refuses them unless `--allow-synthetic` is given.", ""]
    lines += ["## Training data", "",
              f"- data.root: `{record.get('data_root', '?')}` "
              f"({'synthetic phantoms' if synthetic else 'not the synthetic phantoms'}), "
              f"fingerprint `{str(dataset.get('fingerprint', '?'))[:16]}`",
              f"- code: commit `{str(record.get('git_commit'))[:12]}`, torch "
              f"{record.get('torch_version', '?')}", "",
              "| split | exams | " + " | ".join(f"{t} prevalence" for t in tasks) + " |",
              "|---|---|" + "---|" * len(tasks)]
    for split in ("train", "valid"):
        if split in dataset:
            d = dataset[split]
            lines.append(f"| {split} | {d['exams']} | "
                         + " | ".join(f"{d[t]['prevalence']:.3f}" for t in tasks) + " |")
    protocol = ("a stratified hold-out of train (`data.tune_fraction` "
                f"{tune_fraction:g}): valid took no part in any choice, so its figures are "
                "honest estimates" if tune_fraction > 0 else
                "**valid**, as the MRNet code did: each CNN keeps the epoch with the best valid "
                "AUC, so valid AUCs are optimistic. Set `data.tune_fraction` for a hold-out "
                "that leaves valid untouched")
    lines += ["", "## Selection protocol", "",
              f"Checkpoints were selected on {protocol}. Each ensemble (logistic regression "
              "over the three planes' CNN probabilities) was fitted on the "
              f"{next(iter(ensembles.values()))['fit_split']} split, and its operating point "
              "is the Youden threshold on that split, never on valid.", "",
              f"## Valid performance ({pct} intervals)", "",
              "AUC with a bootstrap interval; sensitivity and specificity at the operating "
              "point with Wilson intervals.", "",
              "| task | ensemble AUC | multitask AUC | ensemble − multitask (paired) "
              "| operating point | sensitivity | specificity |",
              "|---|---|---|---|---|---|---|"]
    for task in tasks:
        r = report[task]["ensemble"]
        mt = report[task].get("multitask")
        diff = ("n/a" if mt is None or mt.get("auc_minus_ensemble") is None else
                f"{-mt['auc_minus_ensemble']:+.3f} [{-mt['auc_minus_ensemble_ci_high']:+.3f}, "
                f"{-mt['auc_minus_ensemble_ci_low']:+.3f}]")
        lines.append(f"| {task} | {_ci(r, 'auc')} | "
                     f"{_ci(mt, 'auc') if mt else 'not trained'} | {diff} "
                     f"| {_num(r['operating_point'], 4)} ({r['operating_point_split']}) "
                     f"| {_ci(r, 'sensitivity_at_operating_point')} "
                     f"| {_ci(r, 'specificity_at_operating_point')} |")
    lines += ["", "## Calibration", "",
              "Probabilities are calibrated to the prevalence of the split the ensemble was "
              "fitted on; where the population scored has another prevalence (MRNet's valid "
              "split is enriched for tears), move them with `ensemble.prevalence` in "
              "params.yaml or `predict --prevalence` (prior-shift correction of the logit; the "
              "calls do not change).", "",
              "| task | calibrated to prevalence | valid prevalence | Brier | ECE |",
              "|---|---|---|---|---|"]
    for task in tasks:
        ens, r = ensembles[task], report[task]["ensemble"]
        target = ens.get("target_prevalence")
        prevalence = target if target is not None else ens["fit_prevalence"]
        lines.append(f"| {task} | {prevalence:.3f} | {r['n_pos'] / r['n_valid']:.3f} "
                     f"| {_num(r['brier'])} | {_num(r['ece'])} |")
    lines += ["", "## Known limits", "",
              "- MRNet's public valid split is the set the paper tuned on; its test set is "
              "hidden, so no figure here is a test result.",
              "- Patients may repeat across splits in MRNet (exams, not patients, were split).",
              "- One centre, one vendor's protocols: performance elsewhere is unknown until "
              "measured (external validation on KneeMRI is one such measurement).",
              "- With about a hundred valid exams, the intervals above are wide; differences "
              "within them are not evidence.", ""]
    return "\n".join(lines)
