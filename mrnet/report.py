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

from mrnet.errors import UserError


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def metrics_markdown(table: pd.DataFrame, ci: float) -> str:
    """The full per-model report as Markdown.

    Args:
        table: :func:`mrnet.metrics.metrics_table` of the rounded report.
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
        errors: task -> :func:`mrnet.metrics.largest_errors` of ``model``.
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
