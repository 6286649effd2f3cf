"""Training the per-view MURA CNN: per-type loss weights, study-packed batches, one epoch,
evaluation, and the run (checkpoint, resume, DVCLive) through :func:`mrnet.train.run_training`.

The loss is the paper's: binary cross entropy of each view against its study's label, weighted
by study type T with w1 = |N_T| / (|A_T| + |N_T|) for abnormal and w0 = |A_T| / (|A_T| + |N_T|)
for normal, A_T and N_T the abnormal and normal *images* of type T in train. Batches hold whole
studies, all their views in one forward pass, up to ``train.views_per_batch`` views.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mrnet.augment import apply_affine, draw_params
from mrnet.engine import autocast, safe_auc
from mrnet.errors import DatasetError, UserError
from mrnet.mura import STUDY_TYPES
from mrnet.mura.config import AugmentConfig, MuraParams
from mrnet.mura.model import MuraNet, imagenet_normalize, study_mean
from mrnet.mura.prepare import PreparedStudies, load_prepared
from mrnet.train import (derive_seed, fast_layout, fingerprint, run_training, select_device,
                         slices_checksum, use_bf16)

log = logging.getLogger(__name__)

CHECKPOINT = "model.pt"
# Loss of a study-level probability is clamped away from 0 and 1 (log(0) is -inf).
_EPS = 1e-6


@dataclass
class StudySet:
    """Studies whose views live in one uint8 tensor (host or device), addressed by offsets."""

    views: torch.Tensor  # (total, S, S) uint8
    offsets: torch.Tensor  # (B,) int64, CPU
    counts: torch.Tensor  # (B,) int64, CPU
    study_ids: list[str]
    study_types: list[str]
    labels: torch.Tensor  # (B,) float32, CPU

    def __len__(self) -> int:
        return len(self.study_ids)

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed views (sum of counts, S, S) of the studies at ``index`` and their counts."""
        idx = torch.as_tensor(list(index), dtype=torch.int64)
        parts = [self.views[o:o + c] for o, c in
                 zip(self.offsets[idx].tolist(), self.counts[idx].tolist())]
        return (torch.cat(parts) if len(parts) > 1 else parts[0]), self.counts[idx]


def study_set(prepared: PreparedStudies, device: torch.device | str = "cpu") -> StudySet:
    """A prepared split as a :class:`StudySet`, views moved to ``device`` in one read."""
    s = prepared.studies
    return StudySet(torch.from_numpy(np.array(prepared.views)).to(device),
                    torch.tensor(s["offset"].to_numpy(np.int64)),
                    torch.tensor(s["n_views"].to_numpy(np.int64)),
                    s["study_id"].astype(str).tolist(), s["study_type"].tolist(),
                    torch.tensor(s["label"].to_numpy(np.float32)))


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


def view_batches(order: Sequence[int], counts: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of whole studies from ``order`` with at most ``budget`` views each
    (a study with more views than the budget forms a batch of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    n = 0
    for i in order:
        c = int(counts[i])
        if current and n + c > budget:
            batches.append(current)
            current, n = [], 0
        current.append(int(i))
        n += c
    if current:
        batches.append(current)
    return batches


def _study_probs_np(view_logits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    probs = 1.0 / (1.0 + np.exp(-view_logits.astype(np.float64)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return np.add.reduceat(probs, starts) / counts


def train_one_epoch(model: torch.nn.Module, data: StudySet, optimizer: torch.optim.Optimizer,
                    weights: torch.Tensor, views_per_batch: int, aug: AugmentConfig,
                    generator: torch.Generator, device: torch.device, bf16: bool = False,
                    level: str = "view", desc: str = "train") -> dict[str, float]:
    """One pass over ``data`` in a seeded random order of studies, augmenting each view.

    Args:
        weights: (B,) loss weight of every study of ``data``.
    Returns:
        {"loss": mean loss (per view, or per study with ``level`` "study"), "auc": study AUC of
        the training probabilities}.
    """
    model.train()
    order = torch.randperm(len(data), generator=generator).tolist()
    total, n_seen = 0.0, 0
    probs_all, labels_all = [], []
    bar = tqdm(view_batches(order, data.counts.tolist(), views_per_batch), desc=desc,
               unit="batch", leave=False)
    for index in bar:
        x, counts = data.batch(index)
        n_views = int(counts.sum())
        params = draw_params(n_views, x.shape[-1], aug.rotation, 0.0, aug.flip, generator)
        ones = torch.ones(n_views, dtype=torch.int64)
        x = imagenet_normalize(x.to(device, non_blocking=True),
                               lambda v: apply_affine(v, ones, params))
        on_device = counts.to(device)
        idx = torch.as_tensor(index)
        y, w = data.labels[idx].to(device), weights[idx].to(device)
        with autocast(device, bf16):
            logits = model(x)
        loss = mura_loss(logits.float(), on_device, y, w, level)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        unit = n_views if level == "view" else len(index)
        total += loss.item() * unit
        n_seen += unit
        probs_all.append(study_mean(torch.sigmoid(logits.detach().float()), on_device).cpu())
        labels_all.append(y.cpu())
        bar.set_postfix(loss=f"{total / n_seen:.4f}")
    return {"loss": total / n_seen,
            "auc": safe_auc(torch.cat(labels_all).numpy(), torch.cat(probs_all).numpy())}


@torch.inference_mode()
def predict_view_logits(model: torch.nn.Module, data: StudySet, device: torch.device,
                        views_per_batch: int = 64, bf16: bool = False) -> np.ndarray:
    """Logits (total views,) of every view of ``data`` in cache order; eval mode, no
    augmentation, studies never shuffled."""
    model.eval()
    out = []
    for index in view_batches(range(len(data)), data.counts.tolist(), views_per_batch):
        x, _ = data.batch(index)
        with autocast(device, bf16):
            out.append(model(imagenet_normalize(x.to(device))).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: torch.nn.Module, data: StudySet, weights: torch.Tensor, device: torch.device,
             views_per_batch: int = 64, bf16: bool = False, level: str = "view") -> dict[str, float]:
    """Loss (as in training, same weights) and study AUC of ``model`` on ``data``."""
    logits = predict_view_logits(model, data, device, views_per_batch, bf16)
    loss = mura_loss(torch.from_numpy(logits), data.counts, data.labels, weights, level).item()
    probs = _study_probs_np(logits, data.counts.numpy())
    return {"loss": float(loss), "auc": safe_auc(data.labels.numpy(), probs)}


def train_mura(params: MuraParams, *, live_dir: str | Path | None | bool = None,
               stop_after: int | None = None) -> dict[str, Any]:
    """Train the per-view CNN from params; write ``{train.out}/model.pt``; return a summary.

    Args:
        live_dir: DVCLive directory (default ``mura/dvclive``); False to skip tracking.
        stop_after: test hook, stop after this many epochs (see :func:`mrnet.train.run_training`).
    """
    cfg = params.train
    device = select_device(cfg.device)
    train_p = load_prepared(params.prepare.out, "train")
    valid_p = load_prepared(params.prepare.out, "valid")
    train_set, valid_set = study_set(train_p, device), study_set(valid_p, device)
    ts = train_p.studies
    weights = type_weights(ts["study_type"], ts["label"], ts["n_views"])
    w_train = study_loss_weights(weights, train_set.study_types, train_set.labels)
    w_valid = study_loss_weights(weights, valid_set.study_types, valid_set.labels)
    log.info("mura: %d train studies (%d abnormal, %d views), %d valid studies (%d views), "
             "device %s, config %s", len(train_set), int(train_set.labels.sum()),
             len(train_set.views), len(valid_set), len(valid_set.views), device,
             dataclasses.asdict(cfg))
    log.info("per-type loss weights from train images:\n%s", weights.to_string())

    seed = derive_seed(cfg.seed, "mura")
    torch.manual_seed(seed)  # model init only; every later draw uses the run's generator
    model = MuraNet(params.model.backbone, pretrained=params.model.pretrained,
                    init=params.model.init, spatial_pool=params.model.spatial_pool).to(device)
    bf16 = use_bf16(cfg.precision, device)
    fast_layout(model, device, bf16)
    eval_batch = max(cfg.views_per_batch, 64)

    def make_epoch(generator: torch.Generator, optimizer: torch.optim.Optimizer
                   ) -> tuple[Callable[[int], dict], Callable[[], dict]]:
        def run_train(epoch: int) -> dict[str, float]:
            return train_one_epoch(model, train_set, optimizer, w_train, cfg.views_per_batch,
                                   cfg.augment, generator, device, bf16, cfg.loss,
                                   desc=f"mura epoch {epoch}")

        def run_eval() -> dict[str, float]:
            return evaluate(model, valid_set, w_valid, device, eval_batch, bf16, cfg.loss)

        return run_train, run_eval

    fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                     params.data.root, train_set.study_ids, valid_set.study_ids,
                     train_set.labels.tolist(), valid_set.labels.tolist(),
                     [len(train_set.views), slices_checksum(train_set.views)])
    config = {"model": {"backbone": params.model.backbone,
                        "spatial_pool": params.model.spatial_pool},
              "train": dataclasses.asdict(cfg),
              "image_size": int(train_set.views.shape[-1]),
              "type_weights": weights.to_dict(orient="index"),
              "trained_on": {"data_root": params.data.root, "train_studies": len(train_set),
                             "train_views": int(len(train_set.views)),
                             "valid_studies": len(valid_set)}}
    state = run_training("mura", model, cfg, seed, make_epoch, fp,
                         Path(cfg.out) / CHECKPOINT, config, "valid",
                         live_dir=Path("mura/dvclive") if live_dir is None else live_dir,
                         stop_after=stop_after, select=cfg.select)
    return {"best_epoch": state.best_epoch, "val_auc": state.best_auc,
            "val_loss": state.best_loss, "epochs_run": state.epoch,
            "stopped_early": state.stopped_early}


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MuraNet, dict]:
    """Rebuild the trained per-view CNN from its checkpoint (weights only, no pickle)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: MURA checkpoint not found; train it with "
                        "`dvc repro mura/dvc.yaml`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    arch = ckpt["config"]["model"]
    # Checkpoints written before the pooling was a parameter used the average.
    model = MuraNet(arch["backbone"], spatial_pool=arch.get("spatial_pool", "avg"))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def weights_table(ckpt: Mapping[str, Any]) -> pd.DataFrame:
    """The per-type loss weights stored in a checkpoint, as in :func:`type_weights`."""
    out = pd.DataFrame.from_dict(ckpt["config"]["type_weights"], orient="index")
    out.index.name = "study_type"
    return out
