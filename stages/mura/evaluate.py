"""Stage evaluate (MURA): study-level metrics on valid, overall and per study type, and ROCs.

Writes ``mura/metrics/headline.json`` (study AUC with CI, kappa, and sensitivity and
specificity at ``evaluate.threshold``, the operating point, fixed by params as in the paper:
abnormal when the mean probability is above it), ``mura/metrics/metrics.json`` (study AUC and Cohen's kappa with bootstrap CIs,
accuracy, sensitivity, specificity at ``evaluate.threshold``, the same per study type, and the
view-level AUC), ``mura/metrics/per_type.csv`` (the per-type table), ``mura/plots/roc.png`` and
``mura/plots/roc/{all,XR_*}.csv`` for ``dvc plots``. Everything is computed before the first file
is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mrnet.core.errors import UserError, cli
from mrnet.core.io import atomic_path, write_json
from mrnet.core.plots import plot_roc, roc_points
from mrnet.core.stats import auc
from mrnet.mura import STUDY_TYPES
from mrnet.mura.config import load_params
from mrnet.mura.evaluate import ALL, format_table, metrics_json, per_type_table
from mrnet.mura.predict import read_study_table

log = logging.getLogger("stages.mura.evaluate")

METRICS = Path("mura/metrics/metrics.json")
# What `dvc metrics show` and `dvc exp show` display: the study-level headline, under the same
# key names as the MRNet headline so the two share columns.
HEADLINE = Path("mura/metrics/headline.json")
TABLE = Path("mura/metrics/per_type.csv")
PLOTS = Path("mura/plots")


@cli
def main() -> None:
    params = load_params()
    cfg = params.evaluate
    probs_dir = Path(params.extract.out)
    studies = read_study_table(probs_dir / "studies.csv")
    valid = studies[studies["split"] == "valid"]
    if valid.empty:
        raise UserError(f"{probs_dir / 'studies.csv'}: no valid studies")
    views = read_views(probs_dir / "views.csv", valid)
    log.info("evaluate: %d valid studies, %d views; threshold %g, bootstrap %d, ci %g",
             len(valid), len(views), cfg.threshold, cfg.bootstrap, cfg.ci)
    table = per_type_table(valid, cfg.threshold, cfg.bootstrap, cfg.ci, cfg.seed)
    view_auc = auc(views["label"], views["prob"])
    metrics = metrics_json(table, view_auc, cfg.threshold)

    curves = {}
    for name in [ALL, *STUDY_TYPES]:
        sub = valid if name == ALL else valid[valid["study_type"] == name]
        try:
            fpr, tpr = roc_points(sub["label"], sub["prob"])
        except ValueError:  # a type with one class (or none) in valid has no curve
            fpr, tpr = np.empty(0), np.empty(0)
        curves[name] = (fpr, tpr, table.loc[name, "auc"] if name in table.index else np.nan)
    for name, (fpr, tpr, _) in curves.items():
        with atomic_path(PLOTS / "roc" / f"{name}.csv") as tmp:
            pd.DataFrame({"fpr": fpr, "tpr": tpr}).to_csv(tmp, index=False, float_format="%.6g")
    plot_roc("MURA studies", {("all studies" if n == ALL else n): c
                              for n, c in curves.items() if len(c[0])}, PLOTS / "roc.png")
    with atomic_path(TABLE) as tmp:
        table.to_csv(tmp, float_format="%.4f")
    write_json(METRICS, metrics)
    study = metrics["study"]
    write_json(HEADLINE, {"auc": study["auc"], "auc_ci_low": study["auc_ci_low"],
                          "auc_ci_high": study["auc_ci_high"], "kappa": study["kappa"],
                          "operating_point": metrics["threshold"],
                          "sensitivity_at_operating_point": study["sensitivity"],
                          "specificity_at_operating_point": study["specificity"]})
    log.info("valid, study level (threshold %g):\n%s", cfg.threshold, format_table(table))
    log.info("view-level AUC %.3f; wrote %s, %s, %s", view_auc, METRICS, TABLE, PLOTS)


def read_views(path: Path, valid_studies: pd.DataFrame) -> pd.DataFrame:
    """Valid views with their study's label, joined by study id (checked)."""
    if not path.is_file():
        raise UserError(f"{path}: view probabilities not found; run "
                        "`dvc repro mura/dvc.yaml:extract`")
    views = pd.read_csv(path, dtype={"study_id": str, "split": str, "view": str})
    views = views[views["split"] == "valid"]
    merged = views.merge(valid_studies[["study_id", "label"]], on="study_id", how="left",
                         validate="many_to_one")
    if merged["label"].isna().any():
        missing = merged.loc[merged["label"].isna(), "study_id"].iloc[0]
        raise UserError(f"{path}: valid view of study {missing}, which studies.csv lacks")
    return merged


if __name__ == "__main__":
    main()
