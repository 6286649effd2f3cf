"""Training the nine MRNet CNNs, one per (task, plane), on the core trainer.

:func:`train_model` does the I/O around :func:`mrnet.core.trainer.run_training` for one
(task, plane): the prepared cache, the labels, the tune hold-out, the checkpoint's config and
provenance. :func:`exam_steps` and :func:`exam_objective` are how any exam-level CNN (these
nine, and the KneeMRI retraining) is fed and scored in training; :func:`train_exam_cnn` is the run that
both share.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mrnet import PLANES, TASKS
from mrnet.config import AugmentConfig, DataConfig, Params, TrainConfig
from mrnet.core.augment import AffineParams, apply_affine, draw_params
from mrnet.core.distributed import dist_info, init_from_env
from mrnet.core.packed import PackedSet, join_labels
from mrnet.core.predict import n_batches
from mrnet.core.provenance import provenance
from mrnet.core.runtime import fast_layout, select_device, use_bf16
from mrnet.core.trainer import (EpochFn, FitState, Objective, Step, compute_pos_weight,
                                derive_seed, evaluate, fingerprint, run_training, slices_checksum,
                                train_one_epoch, weighted_bce)
from mrnet.data.prepare import load_prepared
from mrnet.data.reader import dataset_fingerprint, label_csv, read_labels, tune_split
from mrnet.model import MRNet, MRNetConfig, exam_batches, normalize

log = logging.getLogger(__name__)


def labels_for(root: str | Path, split: str, task: str, case_ids: list[str]) -> np.ndarray:
    """Labels of ``task`` for ``case_ids``, joined by case id."""
    path = label_csv(root, split, task)
    return join_labels(case_ids, read_labels(path), path)


def load_exam_set(prepared: str | Path, root: str | Path, plane: str, split: str,
                  task: str | None, device: torch.device) -> PackedSet:
    """A prepared split × plane with its labels of ``task``, slices moved to ``device``."""
    ps = load_prepared(prepared, plane, split)
    labels = None if task is None else labels_for(root, split, task, ps.case_ids)
    return PackedSet.from_split(ps, labels, device)


def tune_case_ids(case_ids: list[str], labels: torch.Tensor | np.ndarray,
                  data_cfg: DataConfig, task: str) -> set[str]:
    """The train exams held out for model selection of ``task`` (the same for every plane),
    stratified by that task's ``labels``."""
    return tune_split(case_ids, np.asarray(labels).astype(int).tolist(),
                      data_cfg.tune_fraction, derive_seed(data_cfg.split_seed, task))


def selection_sets(train_all: Any, valid: Any, data_cfg: DataConfig, task: str,
                   labels: torch.Tensor | None = None) -> tuple[Any, Any, str]:
    """(fit set, model-selection set, name of the selection split).

    With ``data.tune_fraction`` 0 the valid split selects, as in the MRNet code; otherwise a
    stratified, seeded part of train (the same for every plane of ``task``) does. Works on any
    set with ``case_ids`` and ``subset()``; ``labels`` (default ``train_all.labels``) are the
    ``task`` labels the hold-out is stratified by.
    """
    if data_cfg.tune_fraction <= 0:
        return train_all, valid, "valid"
    labels = train_all.labels if labels is None else labels
    tune = tune_case_ids(train_all.case_ids, labels, data_cfg, task)
    fit_idx = [i for i, c in enumerate(train_all.case_ids) if c not in tune]
    tune_idx = [i for i, c in enumerate(train_all.case_ids) if c in tune]
    return train_all.subset(fit_idx), train_all.subset(tune_idx), "tune"


# ------------------------------------------------------------- exam-level CNNs

def exam_steps(data: PackedSet, exams_per_batch: int, aug: AugmentConfig,
               generator: torch.Generator, device: torch.device, rank: int = 0,
               world: int = 1) -> Iterator[Step]:
    """One epoch's batches of ``data`` in a seeded random order, each exam augmented on the
    device with parameters drawn once per exam.

    Under data parallelism (``world`` > 1) every process draws the same order and the same
    augmentation for the global batch of ``exams_per_batch × world`` exams and trains on its
    own share, so N processes with k exams each take the steps of one process with N·k; the
    loss is scaled so that the averaged gradients are those of the global batch mean.
    """
    order = torch.randperm(len(data), generator=generator)
    for chunk in order.split(exams_per_batch * world):
        params = draw_params(len(chunk), data.slices.shape[-1], aug.rotation, aug.translation,
                             aug.flip, generator)
        if len(chunk) < world:  # a last global batch too small to give every process an exam
            continue
        mine = torch.arange(len(chunk))[rank::world]
        index = chunk[mine]
        x, counts = data.batch(index)
        on_device = counts.to(device)
        mine_params = AffineParams(*(p[mine] for p in params))
        x = normalize(x.to(device, non_blocking=True), on_device,
                      lambda v: apply_affine(v, counts, mine_params))
        y = data.labels[index].to(device)
        yield Step((x, on_device), y, len(index), len(index) * world / len(chunk))


def exam_objective(pos_weight: float) -> Objective:
    """The MRNet loss: BCE with logits, positives weighted by ``pos_weight``."""
    return Objective(loss=lambda logits, step: weighted_bce(logits, step.target, pos_weight))


def exam_epoch(model: torch.nn.Module, data: PackedSet, optimizer: torch.optim.Optimizer,
               pos_weight: float, exams_per_batch: int, aug: AugmentConfig,
               generator: torch.Generator, device: torch.device, bf16: bool = False,
               desc: str = "train", rank: int = 0, world: int = 1) -> dict[str, float]:
    """One training epoch of an exam-level CNN (:func:`mrnet.core.trainer.train_one_epoch`
    over :func:`exam_steps`)."""
    steps = exam_steps(data, exams_per_batch, aug, generator, device, rank, world)
    return train_one_epoch(model, steps, optimizer, exam_objective(pos_weight), device, bf16,
                           desc, n_batches(len(data), exams_per_batch * world), rank, world)


def exam_evaluate(model: torch.nn.Module, data: PackedSet, pos_weight: float,
                  device: torch.device, exams_per_batch: int = 8,
                  bf16: bool = False) -> dict[str, float]:
    """Loss and AUC of an exam-level CNN on labelled ``data``."""
    return evaluate(model, exam_batches(data, device, exams_per_batch),
                    exam_objective(pos_weight), Step((), data.labels, len(data)), device, bf16)


def train_exam_cnn(name: str, model: torch.nn.Module, cfg: TrainConfig, fit_set: PackedSet,
                   sel_set: PackedSet, seed: int, fingerprint_of: str, out_path: Path,
                   config: dict[str, Any], selection: str, device: torch.device, bf16: bool,
                   *, train_net: torch.nn.Module | None = None, pos_weight: float | None = None,
                   live_dir: str | Path | None | bool = None,
                   stop_after: int | None = None) -> FitState:
    """Train an exam-level CNN on ``fit_set``, selecting on ``sel_set``, and write its
    checkpoint (:func:`mrnet.core.trainer.run_training`).

    Args:
        train_net: the module the optimiser steps through (a DDP wrapper of ``model``).
        pos_weight: the loss's positive weight (default: from ``fit_set``'s labels).
    """
    rank, world = dist_info()
    net = model if train_net is None else train_net
    pw = compute_pos_weight(fit_set.labels.numpy()) if pos_weight is None else pos_weight

    def make_epoch(generator: torch.Generator,
                   optimizer: torch.optim.Optimizer) -> tuple[EpochFn, Callable[[], dict]]:
        def run_train(epoch: int) -> dict[str, float]:
            return exam_epoch(net, fit_set, optimizer, pw, cfg.exams_per_batch, cfg.augment,
                              generator, device, bf16, desc=f"{name} epoch {epoch}",
                              rank=rank, world=world)

        def run_eval() -> dict[str, float]:
            return exam_evaluate(model, sel_set, pw, device, max(cfg.exams_per_batch, 8), bf16)

        return run_train, run_eval

    return run_training(name, model, cfg, seed, make_epoch, fingerprint_of, out_path, config,
                        selection, live_dir=live_dir, stop_after=stop_after)


def train_model(params: Params, task: str, plane: str, *, stop_after: int | None = None,
                live_dir: str | Path | None | bool = None) -> dict[str, Any]:
    """Train the (task, plane) CNN from params; write its checkpoint; return its summary.

    Args:
        stop_after: test hook, raise :class:`mrnet.core.trainer.TrainingInterrupted` after
            this many epochs.
        live_dir: DVCLive directory (default ``dvclive/{task}-{plane}``); False to skip it.
    """
    if task not in TASKS or plane not in PLANES:
        raise ValueError(f"unknown task/plane {task}/{plane}")
    cfg = params.train_for(task)
    name = f"{task}-{plane}"
    device = init_from_env(cfg.device) or select_device(cfg.device)
    rank, world = dist_info()
    root, prepared = params.data.root, params.prepare.out
    train_all = load_exam_set(prepared, root, plane, "train", task, device)
    valid = load_exam_set(prepared, root, plane, "valid", task, device)
    fit_set, sel_set, selection = selection_sets(train_all, valid, params.data, task)
    log.info("%s: %d fit exams (%d positive), %d %s exams for selection, device %s, "
             "process %d of %d, config %s", name, len(fit_set), int(fit_set.labels.sum()),
             len(sel_set), selection, device, rank, world, dataclasses.asdict(cfg))

    seed = derive_seed(cfg.seed, task, plane)
    torch.manual_seed(seed)  # model init only; every later draw uses the run's generator
    model_cfg = MRNetConfig(params.model.backbone, params.model.slice_pool,
                            params.model.spatial_pool)
    model = MRNet(model_cfg, pretrained=params.model.pretrained,
                  init=params.model.init).to(device)
    bf16 = use_bf16(cfg.precision, device)
    fast_layout(model, device, bf16)
    train_net: torch.nn.Module = model
    if world > 1:
        train_net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    pw = compute_pos_weight(fit_set.labels.numpy())

    fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                     dataclasses.asdict(params.data), task, plane, fit_set.case_ids,
                     sel_set.case_ids, fit_set.labels.tolist(), sel_set.labels.tolist(),
                     [len(fit_set.slices), slices_checksum(fit_set.slices)])
    config = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg),
              "task": task, "plane": plane, "image_size": int(train_all.slices.shape[-1]),
              "provenance": provenance(params.data.root, dataset_fingerprint(params.data.root), "bf16" if bf16 else "fp32",
                                       device.type)}
    state = train_exam_cnn(name, model, cfg, fit_set, sel_set, seed, fp,
                           Path(cfg.out) / f"{name}.pt", config, selection, device, bf16,
                           train_net=train_net, pos_weight=pw, live_dir=live_dir,
                           stop_after=stop_after)
    return {"best_epoch": state.best_epoch, "val_auc": state.best_auc,
            "val_loss": state.best_loss, "epochs_run": state.epoch,
            "stopped_early": state.stopped_early, "selection": selection, "pos_weight": pw}
