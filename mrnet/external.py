"""External validation on KneeMRI as the MRNet paper did it: zero-shot and retrained.

- Zero-shot: the trained ACL sagittal CNN scores the KneeMRI test folders (vol01, vol02; the
  paper's 183 external validation exams) at the training resolution. The ACL ensemble needs
  all three planes and KneeMRI has only sagittal, so the ensemble is applied with the axial and
  coronal probabilities fixed at their mean over the exams the ensemble was fitted on: a
  monotone function of the sagittal probability (when its coefficient is positive) with the
  same AUC, which shows where the ensemble's calibration and threshold would put the exams.
- Retrained: the same training code (:func:`mrnet.train.run_training`) trains one CNN per
  KneeMRI task on the train folders, selects the epoch on the valid folders and scores the test
  folders.

Probability tables are DataFrames ``case_id,split,label,prob`` with case ids as strings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from mrnet.config import Params
from mrnet.engine import ExamSet, compute_pos_weight, evaluate, predict_logits, train_one_epoch
from mrnet.errors import DatasetError, UserError
from mrnet.io import atomic_path
from mrnet.kneemri import KNEEMRI_TASKS, PLANE, read_labels_table
from mrnet.model import MRNet, MRNetConfig
from mrnet.prepare import load_prepared
from mrnet.train import (derive_seed, fast_layout, fingerprint, load_checkpoint, run_training,
                         select_device, slices_checksum, use_bf16)

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("case_id", "split", "label", "prob")
# The MRNet model that is scored zero-shot and that retraining starts from (kneemri.init).
SOURCE_TASK = "acl"


def prepared_dir(params: Params) -> Path:
    """The KneeMRI cache written by the kneemri_prepare stage."""
    return Path(params.kneemri.out) / "prepared"


def table_path(folder: str | Path, task: str, model: str) -> Path:
    """Path of one probability table, ``{folder}/{task}-{model}.csv``."""
    return Path(folder) / f"{task}-{model}.csv"


def write_table(path: str | Path, df: pd.DataFrame) -> None:
    """Write a probability table atomically."""
    out = df.loc[:, list(TABLE_COLUMNS)]
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format="%.8f", lineterminator="\n")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a probability table written by :func:`write_table` (case ids as strings)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: KneeMRI probability table not found; run `dvc repro`")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(df.columns) != TABLE_COLUMNS:
        raise UserError(f"{path}: expected columns {','.join(TABLE_COLUMNS)}, got "
                        f"{','.join(df.columns)}")
    df["label"] = df["label"].astype(int)
    df["prob"] = df["prob"].astype(float)
    return df


def load_kneemri_set(prepared: str | Path, split: str, labels: pd.DataFrame,
                     task: str | None, device: torch.device) -> ExamSet:
    """One split of the KneeMRI cache with its ``task`` labels joined by case id."""
    base = Path(prepared) / PLANE
    for name in (f"{split}.json", f"{split}.npy"):
        if not (base / name).is_file():
            raise DatasetError(f"{base / name}: KneeMRI cache not found; run "
                               "`dvc repro kneemri_prepare`")
    ps = load_prepared(prepared, PLANE, split)
    by_id = labels.set_index("case_id")
    missing = [c for c in ps.case_ids if c not in by_id.index]
    if missing:
        raise DatasetError(f"{Path(prepared) / 'labels.csv'}: no label for case {missing[0]} "
                           f"of the {split} cache ({len(missing)} unlabelled)")
    y = None
    if task is not None:
        y = torch.from_numpy(by_id.loc[ps.case_ids, task].astype(np.float32).to_numpy())
    slices = torch.from_numpy(np.array(ps.slices)).to(device)
    return ExamSet(slices, torch.from_numpy(ps.offsets), torch.from_numpy(ps.counts),
                   ps.case_ids, y)


def _labels_of(labels: pd.DataFrame, case_ids: list[str], task: str) -> np.ndarray:
    return labels.set_index("case_id").loc[case_ids, task].astype(int).to_numpy()


def _probs(model: torch.nn.Module, data: ExamSet, device: torch.device, bf16: bool,
           batch: int) -> np.ndarray:
    logits = predict_logits(model, data, device, batch, bf16)
    return torch.sigmoid(torch.from_numpy(logits).double()).numpy()


def _tables(case_ids: list[str], split: str, labels: pd.DataFrame,
            probs: np.ndarray) -> dict[str, pd.DataFrame]:
    """One table per KneeMRI task for the same scores."""
    return {task: pd.DataFrame({"case_id": pd.Series(case_ids, dtype=str), "split": split,
                                "label": _labels_of(labels, case_ids, task), "prob": probs})
            for task in KNEEMRI_TASKS}


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
    from mrnet.ensemble import ensemble_probs

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
    probs = _probs(model, data, device, bf16, max(cfg.exams_per_batch, 8))

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
    return {PLANE: _tables(data.case_ids, "test", labels, probs),
            "ensemble": _tables(data.case_ids, "test", labels, ens)}


def _init_model(params: Params, device: torch.device) -> tuple[MRNet, str]:
    """The network retraining starts from (kneemri.init) and a note saying which."""
    if params.kneemri.init == "mrnet":
        path = Path(params.train_for(SOURCE_TASK).out) / f"{SOURCE_TASK}-{PLANE}.pt"
        model, _ = load_checkpoint(path, device)
        return model, f"weights of {path}"
    cfg = MRNetConfig(params.model.backbone, params.model.slice_pool,
                      params.model.spatial_pool)
    model = MRNet(cfg, pretrained=params.model.pretrained, init=params.model.init).to(device)
    return model, "ImageNet weights" if params.model.pretrained else "random init"


def retrain(params: Params) -> dict[str, pd.DataFrame]:
    """Train one CNN per KneeMRI task on the train folders, selected on the valid folders.

    Writes ``{kneemri.out}/retrained/{task}.pt`` (the training code's checkpoint format).

    Returns:
        {task: table of the valid and test splits}.
    """
    cfg = params.kneemri_train()
    device = select_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    prepared = prepared_dir(params)
    labels = read_labels_table(prepared / "labels.csv")
    out = Path(params.kneemri.out) / "retrained"
    tables = {}
    for task in KNEEMRI_TASKS:
        name = f"kneemri-{task}"
        fit_set = load_kneemri_set(prepared, "train", labels, task, device)
        sel_set = load_kneemri_set(prepared, "valid", labels, task, device)
        test_set = load_kneemri_set(prepared, "test", labels, task, device)
        try:
            pw = compute_pos_weight(fit_set.labels.numpy())
        except ValueError as exc:
            raise DatasetError(f"{prepared / 'labels.csv'}: KneeMRI train folders, task "
                               f"{task}: {exc}") from None
        seed = derive_seed(cfg.seed, "kneemri", task)
        torch.manual_seed(seed)  # model init only (scratch); later draws use the generator
        model, init = _init_model(params, device)
        fast_layout(model, device, bf16)
        log.info("%s: %d train series (%d positive), %d valid, %d test; from %s; config %s",
                 name, len(fit_set), int(fit_set.labels.sum()), len(sel_set), len(test_set),
                 init, dataclasses.asdict(cfg))

        def make_epoch(generator: torch.Generator, optimizer: torch.optim.Optimizer,
                       model=model, fit_set=fit_set, sel_set=sel_set, pw=pw, name=name):
            def run_train(epoch: int) -> dict[str, float]:
                return train_one_epoch(model, fit_set, optimizer, pw, cfg.exams_per_batch,
                                       cfg.augment, generator, device, bf16,
                                       desc=f"{name} epoch {epoch}")

            def run_eval() -> dict[str, float]:
                return evaluate(model, sel_set, pw, device, max(cfg.exams_per_batch, 8), bf16)

            return run_train, run_eval

        fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                         params.kneemri.init, task, fit_set.case_ids, sel_set.case_ids,
                         fit_set.labels.tolist(), [len(fit_set.slices),
                                                   slices_checksum(fit_set.slices)])
        config = {"model": dataclasses.asdict(model.config), "train": dataclasses.asdict(cfg), "task": task, "plane": PLANE,
                  "dataset": "KneeMRI", "init": init,
                  "image_size": int(fit_set.slices.shape[-1])}
        state = run_training(name, model, cfg, seed, make_epoch, fp, out / f"{task}.pt",
                             config, "valid", live_dir=False)
        model.load_state_dict(state.best_model)
        batch = max(cfg.exams_per_batch, 8)
        parts = []
        for split, data in (("valid", sel_set), ("test", test_set)):
            parts.append(_tables(data.case_ids, split, labels,
                                 _probs(model, data, device, bf16, batch))[task])
        tables[task] = pd.concat(parts, ignore_index=True)
    return tables


# ----------------------------------------------------------------------------- evaluation


def evaluate_external(tables: Mapping[str, Mapping[str, pd.DataFrame]], n_boot: int,
                      ci: float, seed: int) -> dict[str, dict[str, dict[str, Any]]]:
    """AUC with a percentile-bootstrap CI of every model and task on the test split.

    Every model of a task gets the same resamples (same seed, cases in case-id order), so
    zero-shot and retrained intervals come from the same case draws.

    Args:
        tables: model -> task -> probability table (rows of other splits are ignored).

    Returns:
        model -> task -> {auc, auc_ci_low, auc_ci_high, n, n_pos}; None where undefined.
    """
    from mrnet.metrics import auc, bootstrap_aucs, percentile_ci, rounded, task_seed

    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, per_task in tables.items():
        out[model] = {}
        for task, df in per_task.items():
            test = df[df["split"] == "test"].sort_values("case_id")
            if test.empty:
                raise UserError(f"{model}/{task}: no test rows to evaluate")
            y = test["label"].to_numpy(dtype=int)
            p = test["prob"].to_numpy(dtype=float)
            lo, hi = percentile_ci(bootstrap_aucs(y, p, n_boot,
                                                  task_seed(seed, f"kneemri-{task}")), ci)
            out[model][task] = {"auc": auc(y, p), "auc_ci_low": lo, "auc_ci_high": hi,
                                "n": int(y.size), "n_pos": int(y.sum())}
    return rounded(out)


def write_roc(path: str | Path, fpr: np.ndarray, tpr: np.ndarray) -> None:
    """ROC points as an ``fpr,tpr`` CSV with a header, atomically (for ``dvc plots``)."""
    df = pd.DataFrame({"fpr": np.asarray(fpr, dtype=float), "tpr": np.asarray(tpr, dtype=float)})
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n")
