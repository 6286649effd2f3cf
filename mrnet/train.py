"""Training one MRNet CNN for one (task, plane): model selection, checkpoints, resume, tracking.

The pure loop is :func:`fit`; :func:`train_model` does the I/O around it (prepared cache,
labels, DVCLive, checkpoint and resume files).
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
from typing import Any, Callable

import numpy as np
import torch

from mrnet import PLANES, TASKS
from mrnet.config import DataConfig, Params, TrainConfig
from mrnet.distributed import dist_info, init_from_env
from mrnet.data import label_csv, read_labels, tune_split
from mrnet.engine import (ExamSet, compute_pos_weight, evaluate, train_one_epoch)
from mrnet.errors import DatasetError, UserError
from mrnet.io import atomic_path
from mrnet.model import MRNet, MRNetConfig, use_channels_last
from mrnet.provenance import provenance
from mrnet.prepare import load_prepared

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after`` test hook once an epoch's resume state is on disk."""


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from params values and names (e.g. seed, task, plane)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def select_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available "
                        "(set train.device: auto or cpu)")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 convolutions
    run about twice as fast as float32; elsewhere bf16 is emulated and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for ``precision``; ``auto`` means bf16 where the hardware has it (CUDA
    with bf16, or a CPU with native bf16 instructions), float32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and cpu_has_bf16()
    return precision == "bf16"


def wants_channels_last(device: torch.device, bf16: bool) -> bool:
    """channels_last on CUDA and under bf16, where it speeds convolutions up; fp32 on CPU keeps
    the default layout (its convolutions gain little from it)."""
    return device.type == "cuda" or bf16


def fast_layout(model: torch.nn.Module, device: torch.device, bf16: bool) -> torch.nn.Module:
    """The model in the memory layout the pipeline trains and evaluates it in."""
    if wants_channels_last(device, bf16):
        use_channels_last(model)
    return model


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


EpochFn = Callable[[int], dict[str, float]]


def fit_loop(model: torch.nn.Module, cfg: TrainConfig, optimizer: torch.optim.Optimizer,
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
        va = run_eval()
        scheduler.step(va["loss"])
        lr = optimizer.param_groups[0]["lr"]
        row = {"epoch": epoch, "train_loss": tr["loss"], "train_auc": tr["auc"],
               "val_loss": va["loss"], "val_auc": va["auc"], "lr": lr}
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


# ---------------------------------------------------------------- I/O around fit()

def labels_for(root: str | Path, split: str, task: str, case_ids: list[str]) -> np.ndarray:
    """Labels of ``task`` for ``case_ids``, joined by case id."""
    path = label_csv(root, split, task)
    labels = read_labels(path).reindex(case_ids)
    missing = labels.index[labels.isna()]
    if len(missing):
        raise DatasetError(f"{path}: no label for case {missing[0]} "
                           f"({len(missing)} prepared exams unlabelled)")
    return labels.to_numpy(dtype=np.float32)


def load_exam_set(prepared: str | Path, root: str | Path, plane: str, split: str,
                  task: str | None, device: torch.device) -> ExamSet:
    """A prepared split × plane with its labels of ``task``, slices moved to ``device``."""
    ps = load_prepared(prepared, plane, split)
    # One plain read (epochs reuse it): copying through the memory map would keep every page
    # mapped as well and double the peak resident memory.
    slices = torch.from_numpy(np.load(ps.slices.filename, allow_pickle=False)).to(device)
    labels = None if task is None else torch.from_numpy(labels_for(root, split, task, ps.case_ids))
    return ExamSet(slices, torch.from_numpy(ps.offsets), torch.from_numpy(ps.counts),
                   ps.case_ids, labels)


def tune_case_ids(case_ids: list[str], labels: torch.Tensor | np.ndarray,
                  data_cfg: DataConfig,
                  task: str) -> set[str]:
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


def run_training(name: str, model: torch.nn.Module, cfg: TrainConfig, seed: int,
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
                "history": state.history}, out_path)
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


def train_model(params: Params, task: str, plane: str, *, stop_after: int | None = None,
                live_dir: str | Path | None | bool = None) -> dict[str, Any]:
    """Train the (task, plane) CNN from params; write its checkpoint; return its summary.

    Args:
        stop_after: test hook, raise :class:`TrainingInterrupted` after this many epochs.
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

    def make_epoch(generator: torch.Generator,
                   optimizer: torch.optim.Optimizer) -> tuple[EpochFn, Callable[[], dict]]:
        def run_train(epoch: int) -> dict[str, float]:
            return train_one_epoch(train_net, fit_set, optimizer, pw,
                                   cfg.exams_per_batch, cfg.augment, generator, device, bf16,
                                   desc=f"{name} epoch {epoch}", rank=rank, world=world)

        def run_eval() -> dict[str, float]:
            return evaluate(model, sel_set, pw, device, max(cfg.exams_per_batch, 8), bf16)

        return run_train, run_eval

    fp = fingerprint(dataclasses.asdict(cfg), dataclasses.asdict(params.model),
                     dataclasses.asdict(params.data), task, plane, fit_set.case_ids,
                     sel_set.case_ids, fit_set.labels.tolist(), sel_set.labels.tolist(),
                     [len(fit_set.slices), slices_checksum(fit_set.slices)])
    config = {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(cfg),
              "task": task, "plane": plane, "image_size": int(train_all.slices.shape[-1]),
              "provenance": provenance(params.data.root, "bf16" if bf16 else "fp32",
                                       device.type)}
    state = run_training(name, model, cfg, seed, make_epoch, fp, Path(cfg.out) / f"{name}.pt",
                         config, selection, live_dir=live_dir, stop_after=stop_after)
    return {"best_epoch": state.best_epoch, "val_auc": state.best_auc,
            "val_loss": state.best_loss, "epochs_run": state.epoch,
            "stopped_early": state.stopped_early, "selection": selection, "pos_weight": pw}


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[MRNet, dict]:
    """Rebuild a trained model from its checkpoint (weights only, no pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model checkpoint not found; train it with `dvc repro`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MRNet(MRNetConfig(**ckpt["config"]["model"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
