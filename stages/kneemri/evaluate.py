"""kneemri_evaluate: AUCs with bootstrap CIs on the KneeMRI test folders, and ROC plots.

Writes ``metrics/kneemri.json`` ({"zero_shot", "zero_shot_ensemble", "retrained"} -> task ->
{auc, auc_ci_low, auc_ci_high, n, n_pos}, with the crop), ``plots/kneemri/{zero_shot,
retrained}/{injury,complete}.csv`` (``fpr,tpr``) and ``plots/kneemri/roc-{task}.png``. With
kneemri.enabled false it writes ``{"enabled": false}`` and a note.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mrnet.config import load_params
from mrnet.core.errors import UserError, cli
from mrnet.core.io import write_json

log = logging.getLogger("stages.kneemri_evaluate")

METRICS = Path("metrics/kneemri.json")
PLOTS = Path("plots/kneemri")
# Curves drawn, with their legend names; the zero-shot ensemble has the sagittal CNN's ROC
# curve whenever its sagittal coefficient is positive, so it is in the metrics only.
CURVES = {"zero_shot": "zero-shot (MRNet ACL sagittal)", "retrained": "retrained on KneeMRI"}


@cli
def main() -> None:
    params = load_params()
    cfg = params.kneemri
    if not cfg.enabled:
        from mrnet.kneemri.reader import write_off_note

        write_off_note(PLOTS, "the KneeMRI external validation")
        write_json(METRICS, {"enabled": False})
        log.info("kneemri.enabled is false: wrote %s and %s", METRICS, PLOTS / "README.txt")
        return
    import numpy as np

    from mrnet.core.plots import plot_roc, roc_points
    from mrnet.core.tables import read_probs
    from mrnet.kneemri.evaluate import evaluate_external, write_roc
    from mrnet.kneemri.reader import KNEEMRI_TASKS, TABLE_SPLITS, table_path

    base = Path(cfg.out)
    def read(folder: str, model: str) -> dict:
        return {t: read_probs(table_path(base / folder, t, model), TABLE_SPLITS, require="test")
                for t in KNEEMRI_TASKS}

    tables = {"zero_shot": read("zero_shot", "sagittal"),
              "zero_shot_ensemble": read("zero_shot", "ensemble"),
              "retrained": read("retrained", "retrained")}
    ev = params.evaluate
    metrics = evaluate_external(tables, ev.bootstrap, ev.ci, ev.seed)
    curves: dict[str, dict] = {t: {} for t in KNEEMRI_TASKS}
    for model in CURVES:
        for task, df in tables[model].items():
            test = df[df["split"] == "test"]
            try:
                fpr, tpr = roc_points(test["label"].to_numpy(), test["prob"].to_numpy())
            except ValueError:
                raise UserError(f"{cfg.root}: the test folders (vol01, vol02) hold only one "
                                f"class of {task}; no AUC or ROC curve") from None
            auc = metrics[model][task]["auc"]
            curves[task][model] = (fpr, tpr, np.nan if auc is None else auc)
    if PLOTS.exists():
        shutil.rmtree(PLOTS)
    for task in KNEEMRI_TASKS:
        for model, (fpr, tpr, _) in curves[task].items():
            write_roc(PLOTS / model / f"{task}.csv", fpr, tpr)
        plot_roc(f"KneeMRI test (vol01-02), {task}",
                 {CURVES[m]: c for m, c in curves[task].items()}, PLOTS / f"roc-{task}.png")
    write_json(METRICS, {"enabled": True, "crop": cfg.crop, "init": cfg.init, **metrics})
    for model, per_task in metrics.items():
        log.info("%s: %s", model, ", ".join(
            f"{t} AUC {r['auc']} [{r['auc_ci_low']}, {r['auc_ci_high']}] (n={r['n']})"
            for t, r in per_task.items()))
    log.info("wrote %s and %s", METRICS, PLOTS)


if __name__ == "__main__":
    main()
