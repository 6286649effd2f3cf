"""Per-exam probability tables: ``case_id,split,label,prob``, keyed by (split, case id)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from mrnet.errors import UserError
from mrnet.io import atomic_path

HEADER = ["case_id", "split", "label", "prob"]
SPLIT_NAMES = ("train", "tune", "valid")


class ProbTable(NamedTuple):
    """One model's probabilities; rows in file order."""

    case_ids: list[str]
    splits: list[str]
    labels: np.ndarray  # (N,) int
    probs: np.ndarray  # (N,) float64

    def select(self, split: str) -> "ProbTable":
        """Rows of one split."""
        keep = [i for i, s in enumerate(self.splits) if s == split]
        return ProbTable([self.case_ids[i] for i in keep], [split] * len(keep),
                         self.labels[keep], self.probs[keep])

    def by_id(self) -> dict[tuple[str, str], tuple[int, float]]:
        """{(split, case_id): (label, prob)}."""
        return {(s, c): (int(lab), float(p)) for c, s, lab, p in
                zip(self.case_ids, self.splits, self.labels, self.probs)}


def write_probs(path: str | Path, case_ids: Sequence[str], splits: Sequence[str],
                labels: Sequence[int], probs: Sequence[float]) -> None:
    """Write a probability table atomically."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for c, s, lab, p in zip(case_ids, splits, labels, probs):
            w.writerow([c, s, int(lab), f"{float(p):.8f}"])


def read_probs(path: str | Path) -> ProbTable:
    """Read and check a probability table.

    Raises:
        UserError: missing file, wrong header, bad split/label/prob, or a duplicated
            (split, case id); the message names the file and row.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: probability table not found; run `dvc repro`")
    case_ids, splits, labels, probs = [], [], [], []
    seen: set[tuple[str, str]] = set()
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header != HEADER:
            raise UserError(f"{path}: header is {header}, expected {','.join(HEADER)}")
        for lineno, row in enumerate(reader, start=2):
            if len(row) != 4:
                raise UserError(f"{path}:{lineno}: expected 4 columns, got {len(row)}")
            cid, split, lab, p = row
            if split not in SPLIT_NAMES:
                raise UserError(f"{path}:{lineno}: split {split!r} is not one of "
                                f"{', '.join(SPLIT_NAMES)}")
            if lab not in ("0", "1"):
                raise UserError(f"{path}:{lineno}: label {lab!r} for case {cid} is not 0/1")
            try:
                prob = float(p)
            except ValueError:
                prob = math.nan
            if not (math.isfinite(prob) and 0.0 <= prob <= 1.0):
                raise UserError(f"{path}:{lineno}: prob {p!r} for case {cid} is not in [0, 1]")
            if (split, cid) in seen:
                raise UserError(f"{path}:{lineno}: case {cid} appears twice in split {split}")
            seen.add((split, cid))
            case_ids.append(cid)
            splits.append(split)
            labels.append(int(lab))
            probs.append(prob)
    return ProbTable(case_ids, splits, np.array(labels, dtype=int), np.array(probs, dtype=float))
