"""Zero-shot external validation on KneeMRI, as the MRNet paper did it: the trained ACL
sagittal CNN scores the KneeMRI test folders (vol01, vol02; the paper's 183 external
validation exams) at the training resolution.

The ACL ensemble needs all three planes and KneeMRI has only sagittal, so the ensemble is
applied with the axial and coronal probabilities fixed at their mean over the exams the
ensemble was fitted on: a monotone function of the sagittal probability (when its coefficient
is positive) with the same AUC, which shows where the ensemble's calibration and threshold
would put the exams. Nothing here trains.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from mrnet.config import Params
from mrnet.core.errors import UserError
from mrnet.core.runtime import fast_layout, select_device, use_bf16
from mrnet.core.stats import ensemble_probs
from mrnet.kneemri.prepare import exam_probs, load_kneemri_set, prepared_dir, task_tables
from mrnet.kneemri.reader import PLANE, read_labels_table
from mrnet.model import load_checkpoint

log = logging.getLogger(__name__)

# The MRNet model that is scored zero-shot and that retraining starts from (kneemri.init).
SOURCE_TASK = "acl"


def impute_planes(ensemble: Mapping[str, Any], extract_out: str | Path,
                  task: str = SOURCE_TASK) -> dict[str, float]:
    """Mean probability of each non-sagittal plane over the ensemble's fit split.

    Args:
        ensemble: the ensemble JSON (``planes``, ``coef``, ``intercept``, ``fit_split``).
        extract_out: folder of the per-plane probability tables (``extract.out``).
    """
    means = {}
    for plane in ensemble["planes"]:
        if plane == PLANE:
            continue
        path = Path(extract_out) / f"{task}-{plane}.csv"
        if not path.is_file():
            raise UserError(f"{path}: probability table not found; run `dvc repro`")
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        rows = df[df["split"] == ensemble["fit_split"]]
        if rows.empty:
            raise UserError(f"{path}: no {ensemble['fit_split']} rows to impute the {plane} "
                            "probability from")
        means[plane] = float(rows["prob"].astype(float).mean())
    return means


def zero_shot(params: Params) -> dict[str, dict[str, pd.DataFrame]]:
    """Score the KneeMRI test folders with the trained ACL sagittal CNN and the ACL ensemble.

    Returns:
        {"sagittal" | "ensemble": {task: table of the test split}}, plus the imputation used
        in ``attrs["imputed"]`` of each ensemble table.
    """
    cfg = params.train_for(SOURCE_TASK)
    device = select_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    ckpt_path = Path(cfg.out) / f"{SOURCE_TASK}-{PLANE}.pt"
    model, ckpt = load_checkpoint(ckpt_path, device)
    fast_layout(model, device, bf16)
    prepared = prepared_dir(params)
    labels = read_labels_table(prepared / "labels.csv")
    data = load_kneemri_set(prepared, "test", labels, None, device)
    trained_size, size = ckpt["config"].get("image_size"), int(data.slices.shape[-1])
    if trained_size != size:
        raise UserError(f"{ckpt_path} was trained at {trained_size} px but the KneeMRI cache "
                        f"is at {size} px; rerun `dvc repro` so both follow prepare.image_size")
    log.info("zero-shot: %s on %d KneeMRI test series, device %s", ckpt_path, len(data), device)
    probs = exam_probs(model, data, device, bf16, max(cfg.exams_per_batch, 8))

    ens_path = Path(params.ensemble.out) / f"ensemble-{SOURCE_TASK}.json"
    if not ens_path.is_file():
        raise UserError(f"{ens_path}: ensemble not found; run `dvc repro`")
    ensemble = json.loads(ens_path.read_text())
    means = impute_planes(ensemble, params.extract.out)
    features = np.column_stack([probs if p == PLANE else np.full(len(probs), means[p])
                                for p in ensemble["planes"]])
    ens = ensemble_probs(ensemble, features)
    log.info("zero-shot ensemble: %s fixed at their %s means %s (sagittal coefficient %.3f)",
             "/".join(means), ensemble["fit_split"], {p: round(m, 4) for p, m in means.items()},
             ensemble["coef"][PLANE])
    return {PLANE: task_tables(data.case_ids, "test", labels, probs),
            "ensemble": task_tables(data.case_ids, "test", labels, ens)}
