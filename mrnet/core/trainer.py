"""The one trainer of every model in the project: one epoch loop, one prediction loop, the fit
loop with model selection and early stopping, resume, checkpoints and DVCLive tracking.

A dataset brings its batches and its :class:`Objective`; the loops here do the rest:

- :func:`train_one_epoch` runs the optimiser over the :class:`Step` objects a dataset yields
  (each draws its own augmentation from the run's generator, in order);
- :func:`evaluate` turns a model's outputs over a selection split
  (:func:`mrnet.core.predict.predict`) into its loss and AUC;
- :func:`run_training` wraps :func:`fit_loop` with the optimiser, scheduler, resume file,
  DVCLive and the checkpoint ``{"model", "config", "epoch", ...}`` (weights only, never a
  pickled model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mrnet.core.distributed import dist_info
from mrnet.core.io import atomic_path
from mrnet.core.predict import predict
from mrnet.core.runtime import autocast, cpu_threads
from mrnet.core.stats import auc

log = logging.getLogger(__name__)


class TrainSettings(Protocol):
    """What the fit loop reads of a dataset's training config (each dataset's ``train``
    section has these keys)."""

    epochs: int
    patience: int
    lr: float
    weight_decay: float
    lr_factor: float
    lr_patience: int
    eval_threads: int


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after`` test hook once an epoch's resume state is on disk."""


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from params values and names (e.g. seed, task, plane)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1



def better(auc: float, loss: float, best_auc: float, best_loss: float,
           select: str = "auc") -> bool:
    """With ``select`` "auc": higher AUC wins, equal AUC (or both undefined) → lower loss wins.
    With "loss": lower loss wins, equal loss → higher AUC wins."""
    a = -math.inf if math.isnan(auc) else auc
    b = -math.inf if math.isnan(best_auc) else best_auc
    if select == "loss":
        return loss < best_loss or (loss == best_loss and a > b)
    return a > b or (a == b and loss < best_loss)


@dataclass
class FitState:
    """Everything needed to continue training after the last finished epoch."""

    epoch: int = 0  # epochs finished
    best_epoch: int = 0
    best_auc: float = float("nan")
    best_loss: float = math.inf
    bad_epochs: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False


# The columns of a history row, in their order.
HISTORY_KEYS = ("epoch", "train_loss", "train_auc", "val_loss", "val_auc", "lr")


def canonical_history(history: Iterable[dict[str, float]]) -> list[dict[str, float]]:
    """The history rows with :data:`HISTORY_KEYS` as their keys, in that order, and plain
    int/float values.

    pickle writes a string once and refers back to it wherever the same object recurs. Rows
    built in this process share the key strings of the code; rows loaded back from a resume
    file hold their own copies, so without this a resumed run would save the same history in
    other bytes (and DVC would see a new checkpoint).
    """
    return [{key: int(row[key]) if key == "epoch" else float(row[key]) for key in HISTORY_KEYS}
            for row in history]


EpochFn = Callable[[int], dict[str, float]]


def fit_loop(model: torch.nn.Module, cfg: TrainSettings, optimizer: torch.optim.Optimizer,
             scheduler: Any, state: FitState, run_train: EpochFn, run_eval: Callable[[], dict],
             on_epoch: Callable[[FitState], None] | None = None, desc: str = "",
             select: str = "auc") -> FitState:
    """Epochs until ``cfg.epochs`` or early stopping; keep the best weights by val AUC
    (``select`` "auc", the default) or by val loss (``select`` "loss").

    ``run_train(epoch)`` trains one epoch and ``run_eval()`` scores the selection split, each
    returning {"loss", "auc"}. ``state``, ``optimizer`` and ``scheduler`` may come from a
    resume file; the run then continues exactly where it stopped. Under data parallelism every
    process evaluates the full selection split, so all take the same decisions.
    """
    rank, _ = dist_info()
    while state.epoch < cfg.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        tr = run_train(epoch)
        with cpu_threads(cfg.eval_threads):
            va = run_eval()
        scheduler.step(va["loss"])
        lr = optimizer.param_groups[0]["lr"]
        row = dict(zip(HISTORY_KEYS, (epoch, tr["loss"], tr["auc"], va["loss"], va["auc"], lr)))
        state.history.append(row)
        state.epoch = epoch
        if better(va["auc"], va["loss"], state.best_auc, state.best_loss, select):
            state.best_auc, state.best_loss, state.best_epoch = va["auc"], va["loss"], epoch
            state.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= cfg.patience
        if rank == 0:
            log.info("%s epoch %d/%d  train loss %.4f auc %.4f  val loss %.4f auc %.4f  lr %.2g%s",
                     desc, epoch, cfg.epochs, tr["loss"], tr["auc"], va["loss"], va["auc"], lr,
                     "  (best)" if state.best_epoch == epoch else "")
        if on_epoch is not None:
            on_epoch(state)
    if state.stopped_early and rank == 0:
        log.info("%s early stop after epoch %d: no val %s gain for %d epochs",
                 desc, state.epoch, "loss" if select == "loss" else "AUC", cfg.patience)
    return state


def slices_checksum(slices: torch.Tensor, chunk: int = 4096) -> int:
    """CRC32 of a uint8 slice tensor, read a chunk of slices at a time (no full-size copy)."""
    crc = 0
    for part in slices.split(chunk):
        crc = zlib.crc32(part.contiguous().cpu().numpy(), crc)
    return crc


def fingerprint(*parts: Any) -> str:
    """Hash of the inputs a resume file belongs to; a mismatch means start afresh."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def save_torch(obj: Any, path: Path) -> None:
    """torch.save atomically, with the same bytes for the same contents.

    Saved to a path, torch names the archive's records after the file, here a random temporary
    name, so identical checkpoints would differ byte for byte and DVC would rerun what depends
    on them; saved to a buffer, the records get one fixed name.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _log_live(live: Any, row: dict[str, float]) -> None:
    for key in ("train_loss", "train_auc", "val_loss", "val_auc"):
        split, metric = key.split("_")
        live.log_metric(f"{split}/{metric}", row[key], plot=True)
    live.log_metric("lr", row["lr"])
    live.next_step()


def run_training(name: str, model: torch.nn.Module, cfg: TrainSettings, seed: int,
                 make_epoch: Callable[[torch.Generator, torch.optim.Optimizer],
                                      tuple[EpochFn, Callable[[], dict]]],
                 fingerprint_of: str, out_path: Path, config: dict[str, Any], selection: str,
                 live_dir: str | Path | None | bool = None,
                 stop_after: int | None = None, select: str = "auc") -> FitState:
    """Optimiser, scheduler, resume, tracking and checkpoint around :func:`fit_loop`.

    Resume: after every epoch the full training state goes to ``{out}/.resume/{name}.pt``; a
    rerun whose inputs hash to the same ``fingerprint_of`` continues from it, and the finished
    run deletes it. Only process 0 writes files.

    Args:
        make_epoch: given the run's generator and optimiser, returns (run_train, run_eval)
            for fit_loop.
        config: stored in the checkpoint under "config" (what it takes to rebuild the model).
        live_dir: DVCLive directory (default ``dvclive/{name}``); False to skip tracking.
        stop_after: test hook, raise :class:`TrainingInterrupted` after this many epochs.
        select: "auc" (default) or "loss": the validation metric that picks the checkpoint
            and drives early stopping.
    """
    rank, _ = dist_info()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience)
    state = FitState()
    resume_path = out_path.parent / ".resume" / out_path.name
    if resume_path.is_file():
        saved = torch.load(resume_path, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fingerprint_of:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"])
            state = FitState(**saved["state"])
            log.info("%s: resuming after epoch %d from %s", name, state.epoch, resume_path)
        else:
            log.info("%s: ignoring %s (made with other params or data)", name, resume_path)

    live = None
    if live_dir is not False and rank == 0:
        from dvclive import Live  # tracking is optional for library users and tests

        live = Live(dir=str(live_dir or Path("dvclive") / name), dvcyaml=False,
                    save_dvc_exp=False, report=None)
        for row in state.history:  # a resumed run replays the epochs it already has
            _log_live(live, row)

    def on_epoch(st: FitState) -> None:
        if live is not None:
            _log_live(live, st.history[-1])
        if rank == 0:
            save_torch({"fingerprint": fingerprint_of, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                        "state": dataclasses.asdict(st)}, resume_path)
        if stop_after is not None and st.epoch >= stop_after:
            raise TrainingInterrupted(f"stopped after epoch {st.epoch} (test hook)")

    run_train, run_eval = make_epoch(generator, optimizer)
    state = fit_loop(model, cfg, optimizer, scheduler, state, run_train, run_eval, on_epoch,
                     desc=name, select=select)
    if rank != 0:
        return state
    save_torch({"model": state.best_model, "config": config, "epoch": state.best_epoch,
                "val_auc": state.best_auc, "val_loss": state.best_loss, "selection": selection,
                "history": canonical_history(state.history)}, out_path)
    if live is not None:
        # The summary shows the selected (best) epoch, not the last one logged.
        live.summary = {"val_auc": state.best_auc, "val_loss": state.best_loss,
                        "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                        "selected_on_valid": int(selection == "valid")}
        live.end()
    resume_path.unlink(missing_ok=True)
    log.info("%s: best val AUC %.4f at epoch %d (%s split) -> %s", name, state.best_auc,
             state.best_epoch, selection, out_path)
    return state


# ------------------------------------------------------------------ epochs

@dataclass
class Step:
    """One optimiser step's batch: what the model is called with, and what it is scored on.

    Attributes:
        inputs: the model is called as ``model(*inputs)``.
        target: labels of the batch's cases, on the model's device.
        units: the batch's weight in the epoch's mean loss (cases, or views for MURA).
        scale: factor on the loss before backward (data parallelism: the process's share of
            the global batch).
        aux: whatever the objective needs besides (slice counts, loss weights).
    """

    inputs: tuple
    target: torch.Tensor
    units: int
    scale: float = 1.0
    aux: Any = None


def _logits(logits: torch.Tensor, step: Step) -> torch.Tensor:
    return logits


def _logits_np(logits: np.ndarray, step: Step) -> np.ndarray:
    return logits


@dataclass(frozen=True)
class Objective:
    """How a model's outputs are scored.

    Attributes:
        loss: ``loss(logits, step)``, the mean loss of a batch (or of a whole split, with
            the split's labels as ``step.target``).
        scores: per-case scores of a training batch, from detached float logits, whose AUC
            the epoch reports (default: the logits).
        eval_scores: the same for the outputs :func:`predict` returns (numpy).
        auc: AUC of labels and scores (default :func:`mrnet.core.stats.auc`; the multitask
            network averages its tasks').
    """

    loss: Callable[[torch.Tensor, Step], torch.Tensor]
    scores: Callable[[torch.Tensor, Step], torch.Tensor] = _logits
    eval_scores: Callable[[np.ndarray, Step], np.ndarray] = _logits_np
    auc: Callable[[np.ndarray, np.ndarray], float] = auc


def train_one_epoch(model: nn.Module, steps: Iterable[Step], optimizer: torch.optim.Optimizer,
                    objective: Objective, device: torch.device, bf16: bool = False,
                    desc: str = "train", total: int | None = None, rank: int = 0,
                    world: int = 1) -> dict[str, float]:
    """One pass of the optimiser over ``steps``.

    Under data parallelism (``world`` > 1) each process runs its own share of every global
    batch (the steps say how to scale the loss) and the epoch's figures are gathered over all
    processes.

    Args:
        total: the number of steps, for the progress bar.
    Returns:
        {"loss": the mean loss per unit, "auc": the AUC of the epoch's training scores}.
    """
    model.train()
    total_loss, n_seen = 0.0, 0
    scores_all, labels_all = [], []
    bar = tqdm(steps, desc=desc, total=total, unit="batch", leave=False,
               disable=rank != 0 or None)
    for step in bar:
        with autocast(device, bf16):
            logits = model(*step.inputs)
        loss = objective.loss(logits.float(), step)
        optimizer.zero_grad(set_to_none=True)
        (loss * step.scale).backward()
        optimizer.step()
        total_loss += loss.item() * step.units
        n_seen += step.units
        scores_all.append(objective.scores(logits.detach().float(), step).cpu())
        labels_all.append(step.target.cpu())
        if rank == 0:
            bar.set_postfix(loss=f"{total_loss / n_seen:.4f}")
    scores, labels = torch.cat(scores_all), torch.cat(labels_all)
    if world > 1:  # every process reports the epoch over all cases
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (total_loss, n_seen, scores, labels))
        total_loss = sum(g[0] for g in gathered)
        n_seen = sum(g[1] for g in gathered)
        scores = torch.cat([g[2] for g in gathered])
        labels = torch.cat([g[3] for g in gathered])
    return {"loss": total_loss / n_seen, "auc": objective.auc(labels.numpy(), scores.numpy())}


def evaluate(model: nn.Module, batches: Iterable[tuple], objective: Objective, whole: Step,
             device: torch.device, bf16: bool = False) -> dict[str, float]:
    """Loss and AUC of ``model`` on a labelled split.

    Args:
        batches: the split's inputs, as for :func:`predict`.
        whole: the split as one step: its labels as ``target`` (CPU) and the objective's
            ``aux`` of every case.
    """
    logits = predict(model, batches, device, bf16)
    loss = objective.loss(torch.from_numpy(logits), whole).item()
    return {"loss": float(loss),
            "auc": objective.auc(whole.target.numpy(), objective.eval_scores(logits, whole))}


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
