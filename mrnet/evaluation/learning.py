"""Did every model of a run learn? The bars a trained pipeline is held to.

A model that learned its finding ranks its own (un-augmented) train exams well, has
probabilities that differ between exams, and has a train loss well below the loss of the best
constant output (:func:`mrnet.core.trainer.constant_output_loss`). A model stuck at the
constant output can still reach a valid AUC of 0.6-0.7 by epoch selection on noise, so the
valid AUC alone does not tell the two apart.

The figures come from what the pipeline writes: each CNN's probability table (its train rows
are scored without augmentation by the extract stage) and the ``history`` of its checkpoint
(the per-epoch train loss, which is over augmented exams).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from mrnet import PLANES, TASKS
from mrnet.core.stats import auc
from mrnet.core.tables import read_probs
from mrnet.core.trainer import constant_output_loss

TRAIN_AUC_BAR = 0.85
LOSS_BAR = 0.8
SPREAD_BAR = 0.05


class Learning(NamedTuple):
    """How far one model got on its own train exams."""

    model: str
    train_auc: float
    loss_ratio: float  # best epoch's train loss / constant-output loss
    prob_sd: float  # sd of the probabilities over train exams

    def misses(self) -> list[str]:
        """The bars this model misses, in words (empty when it meets all three)."""
        out = []
        if not self.train_auc >= TRAIN_AUC_BAR:
            out.append(f"train AUC {self.train_auc:.3f} < {TRAIN_AUC_BAR}")
        if not self.loss_ratio <= LOSS_BAR:
            out.append(f"train loss {self.loss_ratio:.2f}x the constant-output loss "
                       f"> {LOSS_BAR}x")
        if not self.prob_sd >= SPREAD_BAR:
            out.append(f"probability sd {self.prob_sd:.3f} < {SPREAD_BAR}")
        return out


def _train_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = read_probs(path, require="train")
    train = table[table["split"] == "train"]
    return train["label"].to_numpy(), train["prob"].to_numpy(dtype=np.float64)


def _best_train_loss(checkpoint: Path) -> float:
    history = torch.load(checkpoint, map_location="cpu", weights_only=True)["history"]
    if not history:
        raise ValueError(f"{checkpoint}: the checkpoint has no training history")
    return min(float(row["train_loss"]) for row in history)


def learning_table(probs_dir: str | Path, models_dir: str | Path,
                   multitask_dir: str | Path | None = None) -> list[Learning]:
    """:class:`Learning` of the nine CNNs (and, given its folder, the multitask network).

    Args:
        probs_dir: the extract stage's folder (``{task}-{plane}.csv``).
        models_dir: the train stage's folder (``{task}-{plane}.pt``).
        multitask_dir: the multitask stage's folder (``model.pt``, ``multitask-{task}.csv``).
            Its loss is the mean of its tasks' losses, so its constant-output loss is the
            mean of theirs; its AUC and spread are per task.
    """
    probs_dir, models_dir = Path(probs_dir), Path(models_dir)
    rows = []
    for task in TASKS:
        for plane in PLANES:
            name = f"{task}-{plane}"
            labels, probs = _train_rows(probs_dir / f"{name}.csv")
            ratio = _best_train_loss(models_dir / f"{name}.pt") / constant_output_loss(labels)
            rows.append(Learning(name, auc(labels, probs), ratio, float(np.std(probs))))
    if multitask_dir is not None:
        multitask_dir = Path(multitask_dir)
        tables = {t: _train_rows(multitask_dir / f"multitask-{t}.csv") for t in TASKS}
        flat = float(np.mean([constant_output_loss(labels) for labels, _ in tables.values()]))
        ratio = _best_train_loss(multitask_dir / "model.pt") / flat
        for task, (labels, probs) in tables.items():
            rows.append(Learning(f"multitask-{task}", auc(labels, probs), ratio,
                                 float(np.std(probs))))
    return rows
