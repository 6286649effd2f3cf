"""Retraining on KneeMRI, as the MRNet paper did it: the same trainer as the nine CNNs
(:func:`mrnet.training.cnn.train_exam_cnn`) trains one CNN per KneeMRI task on the train
folders, selects the epoch on the valid folders and scores the valid and test folders.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pandas as pd
import torch

from mrnet.config import Params
from mrnet.core.errors import DatasetError
from mrnet.core.runtime import fast_layout, select_device, use_bf16
from mrnet.core.trainer import compute_pos_weight, derive_seed, fingerprint, slices_checksum
from mrnet.kneemri.prepare import exam_probs, load_kneemri_set, prepared_dir, task_tables
from mrnet.kneemri.reader import KNEEMRI_TASKS, PLANE, read_labels_table
from mrnet.kneemri.zero_shot import SOURCE_TASK
from mrnet.model import MRNet, MRNetConfig, load_checkpoint
from mrnet.training.cnn import train_exam_cnn

log = logging.getLogger(__name__)


def initial_model(params: Params, device: torch.device) -> tuple[MRNet, str]:
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

    Writes ``{kneemri.out}/retrained/{task}.pt`` (the trainer's checkpoint format).

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
        model, init = initial_model(params, device)
        fast_layout(model, device, bf16)
        log.info("%s: %d train series (%d positive), %d valid, %d test; from %s; config %s",
                 name, len(fit_set), int(fit_set.labels.sum()), len(sel_set), len(test_set),
                 init, dataclasses.asdict(cfg))

        fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                         params.kneemri.init, task, fit_set.case_ids, sel_set.case_ids,
                         fit_set.labels.tolist(), [len(fit_set.slices),
                                                   slices_checksum(fit_set.slices)])
        config = {"model": dataclasses.asdict(model.config), "train": dataclasses.asdict(cfg),
                  "task": task, "plane": PLANE,
                  "dataset": "KneeMRI", "init": init,
                  "image_size": int(fit_set.slices.shape[-1])}
        state = train_exam_cnn(name, model, cfg, fit_set, sel_set, seed, fp, out / f"{task}.pt",
                               config, "valid", device, bf16, pos_weight=pw, live_dir=False)
        model.load_state_dict(state.best_model)
        batch = max(cfg.exams_per_batch, 8)
        parts = []
        for split, data in (("valid", sel_set), ("test", test_set)):
            parts.append(task_tables(data.case_ids, split, labels,
                                     exam_probs(model, data, device, bf16, batch))[task])
        tables[task] = pd.concat(parts, ignore_index=True)
    return tables
