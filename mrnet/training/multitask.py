"""The multitask network: all three planes in, all three diagnoses out, trained as one model.

Same augmentation, optimiser, scheduler, early stopping (on the mean AUC over tasks) and
checkpoint rules as the per-plane CNNs; its per-task probabilities go into tables that the
evaluate stage compares with the planes and the ensembles.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mrnet import PLANES, TASKS
from mrnet.config import Params
from mrnet.core.augment import augment
from mrnet.core.errors import DatasetError
from mrnet.core.packed import PackedSet
from mrnet.core.predict import iterate_batches, n_batches, predict
from mrnet.core.provenance import provenance
from mrnet.core.runtime import fast_layout, select_device, use_bf16
from mrnet.core.stats import auc, sigmoid
from mrnet.core.tables import make_probs, write_probs
from mrnet.core.trainer import (EpochFn, Objective, Step, compute_pos_weight, derive_seed,
                                evaluate, fingerprint, run_training, slices_checksum,
                                train_one_epoch, weighted_bce)
from mrnet.data.reader import dataset_fingerprint
from mrnet.model import MRNetConfig, MultitaskMRNet, normalize
from mrnet.training.cnn import labels_for, load_exam_set, selection_sets

log = logging.getLogger(__name__)

NAME = "multitask"


@dataclasses.dataclass
class MultiSet:
    """The same exams in every plane (aligned by case id) with their labels of every task."""

    planes: dict[str, PackedSet]
    labels: torch.Tensor  # (N, tasks) float32
    case_ids: list[str]

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: list[int]) -> "MultiSet":
        """The exams at ``index`` in every plane."""
        return MultiSet({p: s.subset(index) for p, s in self.planes.items()},
                        self.labels[torch.as_tensor(index, dtype=torch.long)],
                        [self.case_ids[i] for i in index])


def load_multiset(prepared: str | Path, root: str | Path, split: str,
                  device: torch.device) -> MultiSet:
    """All planes of a split from the prepared cache, checked to hold the same case ids."""
    planes = {p: load_exam_set(prepared, root, p, split, None, device) for p in PLANES}
    ids = planes[PLANES[0]].case_ids
    for p, s in planes.items():
        if s.case_ids != ids:
            other = sorted(set(ids) ^ set(s.case_ids))
            raise DatasetError(f"{split}: the {p} cache and the {PLANES[0]} cache hold different "
                               f"exams (e.g. case {other[0] if other else '?'})")
    labels = np.stack([labels_for(root, split, t, ids) for t in TASKS], axis=1)
    return MultiSet(planes, torch.from_numpy(labels), list(ids))


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor,
                   pos_weights: list[float]) -> torch.Tensor:
    """Mean over tasks of each task's positive-weighted BCE (itself a mean over exams)."""
    return torch.stack([weighted_bce(logits[:, t], labels[:, t], w)
                        for t, w in enumerate(pos_weights)]).mean()


def mean_auc(labels: np.ndarray, logits: np.ndarray) -> float:
    """The mean over tasks (columns) of each task's AUC; NaN when none is defined."""
    aucs = [auc(labels[:, t], logits[:, t]) for t in range(labels.shape[1])]
    return float(np.nanmean(aucs)) if not all(np.isnan(aucs)) else float("nan")


def multitask_objective(pos_weights: list[float]) -> Objective:
    """The multitask loss, with the mean AUC over tasks as the epoch's AUC."""
    return Objective(loss=lambda logits, step: multitask_loss(logits, step.target, pos_weights),
                     auc=mean_auc)


def _inputs(data: MultiSet, index: torch.Tensor, device: torch.device,
            aug: Any = None, generator: torch.Generator | None = None) -> dict:
    out = {}
    for plane, s in data.planes.items():
        x, counts = s.batch(index)
        c = counts.to(device)
        warp = None if aug is None else (
            lambda v, counts=counts: augment(v, counts, aug.rotation, aug.translation, aug.flip,
                                             generator))
        out[plane] = (normalize(x.to(device), c, warp), c)
    return out


def multitask_steps(data: MultiSet, exams_per_batch: int, aug: Any,
                    generator: torch.Generator, device: torch.device) -> Iterator[Step]:
    """One epoch's batches in a seeded random order; augmentation drawn per exam and plane."""
    order = torch.randperm(len(data), generator=generator)
    for index in order.split(exams_per_batch):
        inputs = _inputs(data, index, device, aug, generator)
        yield Step((inputs,), data.labels[index].to(device), len(index))


def multitask_batches(data: MultiSet, device: torch.device,
                      exams_per_batch: int = 8) -> Iterator[tuple[dict]]:
    """Model inputs of every exam, in order, without augmentation."""
    for index in iterate_batches(len(data), exams_per_batch):
        yield (_inputs(data, index, device),)


def train_multitask(params: Params, *, stop_after: int | None = None,
                    live_dir: str | Path | None | bool = None) -> dict[str, Any]:
    """Train the multitask network; write its checkpoint and per-task probability tables.

    With ``data.tune_fraction`` > 0 it selects on the abnormal task's tune hold-out (a
    stratified part of train), so valid stays untouched.
    """
    cfg = params.multitask_train()
    out = Path(params.multitask.out)
    device = select_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    root, prepared = params.data.root, params.prepare.out
    train_all = load_multiset(prepared, root, "train", device)
    valid = load_multiset(prepared, root, "valid", device)
    fit_set, sel_set, selection = selection_sets(train_all, valid, params.data, TASKS[0],
                                                 labels=train_all.labels[:, 0])
    tune = set(sel_set.case_ids) if selection == "tune" else set()
    pws = [compute_pos_weight(fit_set.labels[:, t].numpy()) for t in range(len(TASKS))]
    log.info("%s: %d fit exams, %d %s exams for selection, device %s, pos weights %s, "
             "config %s", NAME, len(fit_set), len(sel_set), selection, device,
             [round(w, 3) for w in pws], dataclasses.asdict(cfg))

    seed = derive_seed(cfg.seed, NAME)
    torch.manual_seed(seed)
    model_cfg = MRNetConfig(params.model.backbone, params.model.slice_pool,
                            params.model.spatial_pool)
    model = MultitaskMRNet(model_cfg, PLANES, len(TASKS), params.model.pretrained,
                           params.model.init).to(device)
    fast_layout(model, device, bf16)

    objective = multitask_objective(pws)
    eval_batch = max(cfg.exams_per_batch, 8)

    def make_epoch(generator: torch.Generator,
                   optimizer: torch.optim.Optimizer) -> tuple[EpochFn, Callable[[], dict]]:
        def run_train(epoch: int) -> dict[str, float]:
            steps = multitask_steps(fit_set, cfg.exams_per_batch, cfg.augment, generator, device)
            return train_one_epoch(model, steps, optimizer, objective, device, bf16,
                                   f"{NAME} epoch {epoch}",
                                   n_batches(len(fit_set), cfg.exams_per_batch))

        def run_eval() -> dict[str, float]:
            return evaluate(model, multitask_batches(sel_set, device, eval_batch), objective,
                            Step((), sel_set.labels, len(sel_set)), device, bf16)

        return run_train, run_eval

    fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                     dataclasses.asdict(params.data), fit_set.case_ids, sel_set.case_ids,
                     fit_set.labels.tolist(), sel_set.labels.tolist(),
                     [slices_checksum(s.slices) for s in fit_set.planes.values()])
    config = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg),
              "planes": list(PLANES), "tasks": list(TASKS),
              "image_size": int(train_all.planes[PLANES[0]].slices.shape[-1]),
              "provenance": provenance(root, dataset_fingerprint(root), "bf16" if bf16 else "fp32", device.type)}
    state = run_training(NAME, model, cfg, seed, make_epoch, fp, out / "model.pt", config,
                         selection, live_dir=live_dir if live_dir is not None else out / "live",
                         stop_after=stop_after)

    model.load_state_dict(state.best_model)
    rows: dict[str, list] = {t: [[], [], [], []] for t in TASKS}
    for split, data in (("train", train_all), ("valid", valid)):
        probs = sigmoid(predict(model, multitask_batches(data, device, eval_batch), device,
                                bf16))
        names = [("tune" if c in tune else "train") if split == "train" else split
                 for c in data.case_ids]
        for t, task in enumerate(TASKS):
            r = rows[task]
            r[0] += data.case_ids
            r[1] += names
            r[2] += data.labels[:, t].numpy().astype(int).tolist()
            r[3] += probs[:, t].tolist()
    for task in TASKS:
        write_probs(out / f"{NAME}-{task}.csv", make_probs(*rows[task]))
    return {"best_epoch": state.best_epoch, "val_auc": state.best_auc,
            "epochs_run": state.epoch, "selection": selection}
