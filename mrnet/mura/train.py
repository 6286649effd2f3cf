"""Training the per-view MURA CNN: per-type loss weights, study-packed batches, one epoch,
evaluation, on the core trainer (:mod:`mrnet.core.trainer`: one epoch loop, checkpoint, resume,
DVCLive).

The loss is the paper's: binary cross entropy of each view against its study's label, weighted
by study type T with w1 = |N_T| / (|A_T| + |N_T|) for abnormal and w0 = |A_T| / (|A_T| + |N_T|)
for normal, A_T and N_T the abnormal and normal *images* of type T in train. Batches hold whole
studies, all their views in one forward pass, up to ``train.views_per_batch`` views.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mrnet.core.augment import apply_affine, draw_params
from mrnet.core.errors import DatasetError
from mrnet.core.packed import PackedSet
from mrnet.core.runtime import fast_layout, select_device, use_bf16
from mrnet.core.trainer import (Objective, Step, derive_seed, evaluate, fingerprint, run_training,
                                slices_checksum, train_one_epoch)
from mrnet.mura import STUDY_TYPES
from mrnet.mura.config import AugmentConfig, MuraParams
from mrnet.mura.model import (CHECKPOINT, MuraNet, imagenet_normalize, study_mean, study_probs,
                              view_batches, view_inputs)
from mrnet.mura.prepare import load_prepared, study_set

log = logging.getLogger(__name__)

# Loss of a study-level probability is clamped away from 0 and 1 (log(0) is -inf).
_EPS = 1e-6


def type_weights(study_types: Sequence[str], labels: Sequence[int],
                 n_views: Sequence[int]) -> pd.DataFrame:
    """The paper's per-type loss weights from the training studies.

    Args:
        study_types, labels, n_views: one entry per training study.
    Returns:
        A DataFrame indexed by study type (types present in train, in STUDY_TYPES order) with
        abnormal_images (A_T), normal_images (N_T), w_abnormal = N_T / (A_T + N_T) and
        w_normal = A_T / (A_T + N_T).
    """
    df = pd.DataFrame({"study_type": list(study_types), "label": np.asarray(labels, int),
                       "n_views": np.asarray(n_views, int)})
    rows = {}
    for t in STUDY_TYPES:
        sub = df[df["study_type"] == t]
        if sub.empty:
            continue
        a = int(sub.loc[sub["label"] == 1, "n_views"].sum())
        n = int(sub.loc[sub["label"] == 0, "n_views"].sum())
        rows[t] = {"abnormal_images": a, "normal_images": n,
                   "w_abnormal": n / (a + n), "w_normal": a / (a + n)}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "study_type"
    return out


def study_loss_weights(weights: pd.DataFrame, study_types: Sequence[str],
                       labels: torch.Tensor) -> torch.Tensor:
    """Each study's weight: its type's w_abnormal if abnormal, else its w_normal.

    Raises:
        DatasetError: a study type absent from the training split has no weights.
    """
    missing = sorted(set(study_types) - set(weights.index))
    if missing:
        raise DatasetError(f"study type {missing[0]} has no training studies, so it has no "
                           "loss weights; the train split must hold every type it is scored on")
    w1 = torch.tensor(weights.loc[list(study_types), "w_abnormal"].to_numpy(np.float32))
    w0 = torch.tensor(weights.loc[list(study_types), "w_normal"].to_numpy(np.float32))
    return torch.where(labels > 0.5, w1, w0)


def mura_loss(logits: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor,
              weights: torch.Tensor, level: str = "view") -> torch.Tensor:
    """Weighted BCE of view logits (V,) of studies with ``counts``, ``labels``, ``weights`` (B,).

    ``level`` "view": the mean over views of each view's BCE against its study's label, weighted
    by its study's weight (the paper). "study": the mean over studies of the weighted BCE of
    the study's mean probability.
    """
    if level == "view":
        y = torch.repeat_interleave(labels, counts)
        w = torch.repeat_interleave(weights, counts)
        return F.binary_cross_entropy_with_logits(logits, y, weight=w)
    p = study_mean(torch.sigmoid(logits), counts).clamp(_EPS, 1 - _EPS)
    return F.binary_cross_entropy(p, labels, weight=weights)


def mura_objective(level: str) -> Objective:
    """The paper's weighted loss (``aux`` of a step: the studies' view counts and weights),
    with the study AUC of the mean view probabilities as the epoch's AUC."""
    return Objective(
        loss=lambda logits, step: mura_loss(logits, step.aux[0], step.target, step.aux[1],
                                            level),
        scores=lambda logits, step: study_mean(torch.sigmoid(logits), step.aux[0]),
        eval_scores=lambda logits, step: study_probs(logits, step.aux[0].numpy()))


def study_steps(data: PackedSet, weights: torch.Tensor, views_per_batch: int,
                aug: AugmentConfig, generator: torch.Generator, device: torch.device,
                level: str = "view") -> Iterator[Step]:
    """One epoch's batches of whole studies in a seeded random order, each view augmented
    with its own parameters.

    Args:
        weights: (B,) loss weight of every study of ``data``.
    """
    order = torch.randperm(len(data), generator=generator).tolist()
    for index in view_batches(order, data.counts.tolist(), views_per_batch):
        x, counts = data.batch(index)
        n_views = int(counts.sum())
        params = draw_params(n_views, x.shape[-1], aug.rotation, 0.0, aug.flip, generator)
        ones = torch.ones(n_views, dtype=torch.int64)
        x = imagenet_normalize(x.to(device, non_blocking=True),
                               lambda v: apply_affine(v, ones, params))
        on_device = counts.to(device)
        idx = torch.as_tensor(index)
        y, w = data.labels[idx].to(device), weights[idx].to(device)
        yield Step((x,), y, n_views if level == "view" else len(index), aux=(on_device, w))


def study_evaluate(model: torch.nn.Module, data: PackedSet, weights: torch.Tensor,
                   device: torch.device, views_per_batch: int = 64, bf16: bool = False,
                   level: str = "view") -> dict[str, float]:
    """Loss (as in training, same weights) and study AUC of ``model`` on ``data``."""
    return evaluate(model, view_inputs(data, device, views_per_batch), mura_objective(level),
                    Step((), data.labels, len(data), aux=(data.counts, weights)), device, bf16)


def train_mura(params: MuraParams, *, live_dir: str | Path | None | bool = None,
               stop_after: int | None = None) -> dict[str, Any]:
    """Train the per-view CNN from params; write ``{train.out}/model.pt``; return a summary.

    Args:
        live_dir: DVCLive directory (default ``mura/dvclive``); False to skip tracking.
        stop_after: test hook, stop after this many epochs (see
            :func:`mrnet.core.trainer.run_training`).
    """
    cfg = params.train
    device = select_device(cfg.device, "train.device of mura/params.yaml")
    train_p = load_prepared(params.prepare.out, "train")
    valid_p = load_prepared(params.prepare.out, "valid")
    train_set, valid_set = study_set(train_p, device), study_set(valid_p, device)
    ts = train_p.studies
    weights = type_weights(ts["study_type"], ts["label"], ts["n_views"])
    w_train = study_loss_weights(weights, train_set.groups, train_set.labels)
    w_valid = study_loss_weights(weights, valid_set.groups, valid_set.labels)
    log.info("mura: %d train studies (%d abnormal, %d views), %d valid studies (%d views), "
             "device %s, config %s", len(train_set), int(train_set.labels.sum()),
             len(train_set.slices), len(valid_set), len(valid_set.slices), device,
             dataclasses.asdict(cfg))
    log.info("per-type loss weights from train images:\n%s", weights.to_string())

    seed = derive_seed(cfg.seed, "mura")
    torch.manual_seed(seed)  # model init only; every later draw uses the run's generator
    model = MuraNet(params.model.backbone, pretrained=params.model.pretrained,
                    init=params.model.init, spatial_pool=params.model.spatial_pool).to(device)
    bf16 = use_bf16(cfg.precision, device)
    fast_layout(model, device, bf16)
    eval_batch = max(cfg.views_per_batch, 64)

    objective = mura_objective(cfg.loss)

    def make_epoch(generator: torch.Generator, optimizer: torch.optim.Optimizer
                   ) -> tuple[Callable[[int], dict], Callable[[], dict]]:
        def run_train(epoch: int) -> dict[str, float]:
            steps = study_steps(train_set, w_train, cfg.views_per_batch, cfg.augment,
                                generator, device, cfg.loss)
            return train_one_epoch(model, steps, optimizer, objective, device, bf16,
                                   f"mura epoch {epoch}")

        def run_eval() -> dict[str, float]:
            return study_evaluate(model, valid_set, w_valid, device, eval_batch, bf16, cfg.loss)

        return run_train, run_eval

    fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                     params.data.root, train_set.case_ids, valid_set.case_ids,
                     train_set.labels.tolist(), valid_set.labels.tolist(),
                     [len(train_set.slices), slices_checksum(train_set.slices)])
    config = {"model": {"backbone": params.model.backbone,
                        "spatial_pool": params.model.spatial_pool},
              "train": dataclasses.asdict(cfg),
              "image_size": int(train_set.slices.shape[-1]),
              "type_weights": weights.to_dict(orient="index"),
              "trained_on": {"data_root": params.data.root, "train_studies": len(train_set),
                             "train_views": int(len(train_set.slices)),
                             "valid_studies": len(valid_set)}}
    state = run_training("mura", model, cfg, seed, make_epoch, fp,
                         Path(cfg.out) / CHECKPOINT, config, "valid",
                         live_dir=Path("mura/dvclive") if live_dir is None else live_dir,
                         stop_after=stop_after, select=cfg.select)
    return {"best_epoch": state.best_epoch, "val_auc": state.best_auc,
            "val_loss": state.best_loss, "epochs_run": state.epoch,
            "stopped_early": state.stopped_early}


def weights_table(ckpt: Mapping[str, Any]) -> pd.DataFrame:
    """The per-type loss weights stored in a checkpoint, as in :func:`type_weights`."""
    out = pd.DataFrame.from_dict(ckpt["config"]["type_weights"], orient="index")
    out.index.name = "study_type"
    return out
