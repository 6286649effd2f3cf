"""Packed exam batches, one training epoch and evaluation; no file I/O here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mrnet.augment import AffineParams, apply_affine, draw_params
from mrnet.config import AugmentConfig
from mrnet.model import normalize


@dataclass
class ExamSet:
    """Exams whose slices live in one uint8 tensor (host or device), addressed by offsets."""

    slices: torch.Tensor  # (total, H, W) uint8
    offsets: torch.Tensor  # (N,) int64, CPU
    counts: torch.Tensor  # (N,) int64, CPU
    case_ids: list[str]
    labels: torch.Tensor | None = None  # (N,) float32, CPU

    def __len__(self) -> int:
        return len(self.case_ids)

    def subset(self, index: np.ndarray | list[int]) -> "ExamSet":
        """The exams at ``index``, sharing the slice storage."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return ExamSet(self.slices, self.offsets[idx], self.counts[idx],
                       [self.case_ids[i] for i in idx.tolist()],
                       None if self.labels is None else self.labels[idx])

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed slices (sum of counts, H, W) of the exams at ``index`` and their counts."""
        parts = [self.slices[o:o + c] for o, c in
                 zip(self.offsets[index].tolist(), self.counts[index].tolist())]
        counts = self.counts[index]
        return torch.cat(parts) if len(parts) > 1 else parts[0], counts


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when asked for, else a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present (never a made-up 0.5)."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def compute_pos_weight(labels: np.ndarray | torch.Tensor) -> float:
    """neg/pos of the training labels: the positive-class weight of the BCE loss."""
    labels = np.asarray(labels)
    pos = float((labels == 1).sum())
    neg = float((labels == 0).sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"training labels need both classes, got {int(pos)} positive "
                         f"and {int(neg)} negative")
    return neg / pos


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Mean over exams of the BCE with the positive class weighted by ``pos_weight``."""
    weight = torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weight)


def constant_output_loss(labels: np.ndarray | torch.Tensor) -> float:
    """The weighted BCE (positives weighted by neg/pos) of the best constant output.

    With that weight both classes weigh the same, so the best constant is p = 0.5 and the
    loss is 2 · (share of negatives) · ln 2 (1.13 at ACL's 18% prevalence): a train loss that
    stays there is a model that has learned nothing but the class balance.
    """
    labels = np.asarray(labels)
    return float(2.0 * np.mean(labels == 0) * np.log(2.0))


def output_collapsed(train_losses: list[float] | np.ndarray, logits: np.ndarray,
                     train_labels: np.ndarray, loss_tol: float = 0.01,
                     min_spread: float = 0.05) -> bool:
    """Whether training collapsed to a constant output.

    True when every epoch's train loss stayed within ``loss_tol`` (relative) of
    :func:`constant_output_loss` and the model's ``logits`` on held-out exams have a standard
    deviation below ``min_spread``. A model that learned the findings fails both: its loss
    falls and its logits separate the classes by whole units.
    """
    flat = constant_output_loss(train_labels)
    losses = np.asarray(train_losses, dtype=np.float64)
    if losses.size == 0:
        raise ValueError("train_losses is empty")
    loss_flat = bool(np.all(np.abs(losses - flat) <= loss_tol * flat))
    return loss_flat and float(np.std(logits)) < min_spread


def train_one_epoch(model: nn.Module, data: ExamSet, optimizer: torch.optim.Optimizer,
                    pos_weight: float, exams_per_batch: int, aug: AugmentConfig,
                    generator: torch.Generator, device: torch.device, bf16: bool = False,
                    desc: str = "train", rank: int = 0, world: int = 1) -> dict[str, float]:
    """One pass over ``data`` in a seeded random order, augmenting each exam on the device.

    Under data parallelism (``world`` > 1) every process draws the same order and the same
    augmentation for the global batch of ``exams_per_batch × world`` exams and trains on its
    own share, so N processes with k exams each take the steps of one process with N·k.
    The loss is scaled so that the averaged gradients are those of the global batch mean.

    Returns:
        {"loss": mean over exams of the weighted BCE, "auc": AUC of the training logits}.
    """
    model.train()
    order = torch.randperm(len(data), generator=generator)
    total, n_seen = 0.0, 0
    logits_all, labels_all = [], []
    chunks = order.split(exams_per_batch * world)
    bar = tqdm(chunks, desc=desc, unit="batch", leave=False, disable=rank != 0 or None)
    for chunk in bar:
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
        with autocast(device, bf16):
            logits = model(x, on_device)
        loss = weighted_bce(logits.float(), y, pos_weight)
        optimizer.zero_grad(set_to_none=True)
        (loss * (len(index) * world / len(chunk))).backward()
        optimizer.step()
        total += loss.item() * len(index)
        n_seen += len(index)
        logits_all.append(logits.detach().float().cpu())
        labels_all.append(y.cpu())
        if rank == 0:
            bar.set_postfix(loss=f"{total / n_seen:.4f}")
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    if world > 1:  # every process reports the epoch over all exams
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (total, n_seen, logits, labels))
        total = sum(g[0] for g in gathered)
        n_seen = sum(g[1] for g in gathered)
        logits = torch.cat([g[2] for g in gathered])
        labels = torch.cat([g[3] for g in gathered])
    return {"loss": total / n_seen, "auc": safe_auc(labels.numpy(), logits.numpy())}


def iterate_batches(n: int, exams_per_batch: int) -> Iterator[torch.Tensor]:
    """Consecutive index batches over ``n`` exams, in order (evaluation never shuffles)."""
    return iter(torch.arange(n).split(max(1, exams_per_batch)))


@torch.inference_mode()
def predict_logits(model: nn.Module, data: ExamSet, device: torch.device,
                   exams_per_batch: int = 8, bf16: bool = False,
                   desc: str | None = None) -> np.ndarray:
    """Logits (N,) of every exam of ``data``, in order, in eval mode, without augmentation."""
    model.eval()
    out = []
    batches = iterate_batches(len(data), exams_per_batch)
    if desc:
        batches = tqdm(list(batches), desc=desc, unit="batch", leave=False)
    for index in batches:
        x, counts = data.batch(index)
        counts = counts.to(device)
        x = normalize(x.to(device, non_blocking=True), counts)
        with autocast(device, bf16):
            out.append(model(x, counts).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: nn.Module, data: ExamSet, pos_weight: float, device: torch.device,
             exams_per_batch: int = 8, bf16: bool = False) -> dict[str, float]:
    """Loss and AUC of ``model`` on labelled ``data``."""
    logits = predict_logits(model, data, device, exams_per_batch, bf16)
    labels = data.labels.numpy()
    loss = weighted_bce(torch.from_numpy(logits), data.labels, pos_weight).item()
    return {"loss": float(loss), "auc": safe_auc(labels, logits)}
