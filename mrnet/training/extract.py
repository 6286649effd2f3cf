"""Per-exam probabilities of the trained CNNs on every train and valid exam."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mrnet import PLANES, TASKS
from mrnet.config import Params
from mrnet.core.runtime import cpu_threads, fast_layout, select_device, use_bf16
from mrnet.core.stats import sigmoid
from mrnet.core.tables import make_probs, write_probs
from mrnet.model import exam_logits, load_checkpoint, require_checkpoint
from mrnet.training.cnn import load_exam_set, tune_case_ids

log = logging.getLogger(__name__)


def extract_probs(params: Params, task: str, plane: str) -> Path:
    """Write ``{extract.out}/{task}-{plane}.csv`` from ``{train.out}/{task}-{plane}.pt``.

    Rows of train exams held out for tuning (``data.tune_fraction`` > 0) get split ``tune``,
    the same hold-out the training stage used.
    """
    cfg = params.train_for(task)
    device = select_device(cfg.device)
    model, ckpt = load_checkpoint(Path(cfg.out) / f"{task}-{plane}.pt", device)
    bf16 = use_bf16(cfg.precision, device)
    fast_layout(model, device, bf16)
    case_ids, splits, labels, probs = [], [], [], []
    for split in ("train", "valid"):
        data = load_exam_set(params.prepare.out, params.data.root, plane, split, task, device)
        logits = exam_logits(model, data, device, max(cfg.exams_per_batch, 8), bf16,
                                desc=f"extract {task}-{plane} {split}")
        names = [split] * len(data)
        if split == "train" and params.data.tune_fraction > 0:
            tune = tune_case_ids(data.case_ids, data.labels, params.data, task)
            names = ["tune" if c in tune else "train" for c in data.case_ids]
        case_ids += data.case_ids
        splits += names
        labels += data.labels.numpy().astype(int).tolist()
        probs += sigmoid(logits).tolist()
    out = Path(params.extract.out) / f"{task}-{plane}.csv"
    write_probs(out, make_probs(case_ids, splits, labels, probs))
    log.info("%s-%s: %d probabilities -> %s", task, plane, len(case_ids), out)
    return out


def extract_all(params: Params, tasks: Sequence[str] = TASKS,
                planes: Sequence[str] = PLANES) -> list[Path]:
    """:func:`extract_probs` for every (task, plane) CNN, in one process.

    Every checkpoint is looked for before the first is scored, so a missing one stops the
    stage before it writes anything. Each CNN is scored on ``train.eval_threads`` CPU threads
    (its task's value).
    """
    pairs = [(task, plane) for task in tasks for plane in planes]
    for task, plane in pairs:
        require_checkpoint(Path(params.train_for(task).out) / f"{task}-{plane}.pt")
    written = []
    for task, plane in pairs:
        with cpu_threads(params.train_for(task).eval_threads):
            written.append(extract_probs(params, task, plane))
    return written
