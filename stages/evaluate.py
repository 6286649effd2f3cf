"""Stage evaluate: valid-split metrics and ROC curves of every model of every task.

Reads ``{extract.out}/{task}-{plane}.csv``, ``{extract.out}/ensemble-{task}.csv`` and, where
present, ``{multitask.out}/multitask-{task}.csv``; writes

- ``metrics/metrics.json``: per task and model the AUC with bootstrap CI, sensitivity,
  specificity and accuracy (at 0.5 and at a Youden threshold from the fit split), and the mean
  AUC over tasks per model;
- ``plots/roc-{task}.png``: all models of a task on one ROC axes;
- ``plots/roc/{task}/{model}.csv``: ``fpr,tpr`` points for dvc.yaml's top-level ``plots:``.

Every input is read and checked, and every number computed, before the first file is written,
so bad input ends in one ``error:`` line and leaves the previous outputs untouched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrnet import PLANES, TASKS
from mrnet.config import load_params
from mrnet.errors import cli
from mrnet.io import write_json
from mrnet.metrics import evaluate_all
from mrnet.probs import ProbTable, read_probs
from mrnet.plots import Curve, plot_roc, roc_points, write_roc_csv

log = logging.getLogger("stages.evaluate")

METRICS = Path("metrics/metrics.json")
PLOTS = Path("plots")
def model_files(probs_dir: Path, task: str,
                extra: Mapping[str, Path] | None = None) -> dict[str, Path]:
    """The probability table of each model of ``task``, in plot and report order.

    Args:
        probs_dir: ``extract.out``.
        task: the diagnosis.
        extra: optional models beyond the planes and the ensemble, name -> folder; a model is
            included when ``{folder}/{name}-{task}.csv`` exists (a disabled one has none).

    Returns:
        model name -> CSV path: the planes and "ensemble" always (a missing one is an error
        when read), then each extra model that has a table.
    """
    files = {plane: probs_dir / f"{task}-{plane}.csv" for plane in PLANES}
    files["ensemble"] = probs_dir / f"ensemble-{task}.csv"
    for name, folder in (extra or {}).items():
        path = Path(folder) / f"{name}-{task}.csv"
        if path.is_file():
            files[name] = path
    return files


def _split_sizes(table: ProbTable) -> str:
    names, counts = np.unique(table.split.astype(str), return_counts=True)
    return ", ".join(f"{n} {c}" for n, c in zip(names, counts))


def _roc_curves(tables: Mapping[str, ProbTable],
                metrics: Mapping[str, Any]) -> dict[str, Curve]:
    """Valid ROC curve of each model of one task; a task with one valid class has none."""
    curves: dict[str, Curve] = {}
    for name, table in tables.items():
        _, labels, probs = table.select("valid")
        try:
            fpr, tpr = roc_points(labels, probs)
        except ValueError:
            log.warning("%s: valid split has a single class; no ROC curve", table.source)
            continue
        auc = metrics[name]["auc"]
        curves[name] = (fpr, tpr, float("nan") if auc is None else auc)
    return curves


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _results_table(metrics: Mapping[str, Any], models: list[str]) -> str:
    """Task × model valid AUC with CI, one line per task, for the log."""
    width = 22
    lines = [f"{'task':<10}" + "".join(f"{m:>{width}}" for m in models)]
    for task in TASKS:
        cells = []
        for m in models:
            r = metrics[task].get(m)
            cells.append("-" if r is None else
                         f"{_fmt(r['auc'])} [{_fmt(r['auc_ci_low'])}, {_fmt(r['auc_ci_high'])}]")
        lines.append(f"{task:<10}" + "".join(f"{c:>{width}}" for c in cells))
    mean = metrics["mean_auc"]
    lines.append(f"{'mean':<10}" + "".join(
        f"{(_fmt(mean[m]) if m in mean else '-'):>{width}}" for m in models))
    return "\n".join(lines)


@cli
def main() -> None:
    """Evaluate every model of every task on the valid split; write metrics and ROC plots."""
    params = load_params()
    cfg = params.evaluate
    probs_dir = Path(params.extract.out)
    log.info("evaluate: bootstrap=%d ci=%.3g seed=%d; tables from extract.out=%s",
             cfg.bootstrap, cfg.ci, cfg.seed, probs_dir)

    extra = {"multitask": Path(params.multitask.out)}
    tables: dict[str, dict[str, ProbTable]] = {}
    for task in TASKS:
        tables[task] = {name: read_probs(path)
                        for name, path in model_files(probs_dir, task, extra).items()}
        for name, table in tables[task].items():
            log.info("%s/%s: %s rows (%s)", task, name, len(table), _split_sizes(table))

    metrics = evaluate_all(tables, cfg.bootstrap, cfg.ci, cfg.seed)
    curves = {task: _roc_curves(tables[task], metrics[task]) for task in TASKS}

    # Metrics last: a run killed while plotting leaves the old metrics.json, not new numbers
    # next to old plots.
    for task in TASKS:
        for name in tables[task]:
            fpr, tpr, _ = curves[task].get(name, (np.empty(0), np.empty(0), float("nan")))
            write_roc_csv(PLOTS / "roc" / task / f"{name}.csv", fpr, tpr)
        plot_roc(task, curves[task], PLOTS / f"roc-{task}.png")
    write_json(METRICS, metrics)
    log.info("wrote %s, %s/roc-{%s}.png and %s/roc/", METRICS, PLOTS, ",".join(TASKS), PLOTS)

    models = list(dict.fromkeys(m for task in TASKS for m in tables[task]))
    log.info("valid AUC [%g%% CI]:\n%s", 100 * cfg.ci, _results_table(metrics, models))


if __name__ == "__main__":
    main()
