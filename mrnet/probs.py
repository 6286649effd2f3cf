"""Per-exam probability tables: ``case_id,split,label,prob``, one row per exam and split.

The extract, ensemble (and multitask) stages write them; the ensemble and evaluate stages read
them. Tables are joined by case id, never by row order.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mrnet.errors import UserError
from mrnet.io import atomic_path

HEADER: tuple[str, ...] = ("case_id", "split", "label", "prob")
PROB_SPLITS: tuple[str, ...] = ("train", "tune", "valid")


@dataclass(frozen=True)
class ProbTable:
    """Per-exam probabilities of one model: parallel arrays, one entry per (split, case).

    Attributes:
        source: where the table came from (a file path), named in error messages.
        case_id: case ids as strings ("0000"), never numbers.
        split: "train", "tune" or "valid" per row.
        label: 0/1 ground truth per row.
        prob: predicted probability of the positive class per row.
    """

    source: str
    case_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    prob: np.ndarray

    @classmethod
    def from_rows(cls, source: str, case_ids: Iterable[str], splits: Iterable[str],
                  labels: Iterable[int], probs: Iterable[float]) -> "ProbTable":
        """Build a table from parallel sequences (no checks; :func:`read_probs` checks files)."""
        return cls(source=str(source),
                   case_id=np.asarray(list(case_ids), dtype=object),
                   split=np.asarray(list(splits), dtype=object),
                   label=np.asarray(list(labels), dtype=np.int64),
                   prob=np.asarray(list(probs), dtype=np.float64))

    def __len__(self) -> int:
        return len(self.case_id)

    def has_split(self, split: str) -> bool:
        """Whether any row belongs to ``split``."""
        return bool(np.any(self.split == split))

    def select(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows of ``split`` sorted by case id.

        Returns:
            (case_ids, labels, probs), each in case-id order, so that tables of one task line
            up row for row.
        """
        rows = np.flatnonzero(self.split == split)
        rows = rows[np.argsort(self.case_id[rows].astype(str), kind="stable")]
        return self.case_id[rows], self.label[rows], self.prob[rows]


def read_probs(path: str | Path) -> ProbTable:
    """Read and check a probability table written by the extract or ensemble stage.

    Args:
        path: CSV with header ``case_id,split,label,prob``.

    Returns:
        The table, case ids kept as strings.

    Raises:
        UserError: naming the file (and the line) when the file is missing, the header differs,
            a row is malformed, a split is unknown, a label is not 0/1, a probability is not a
            finite number in [0, 1], a (split, case_id) repeats, a case is in two splits, or
            there are no valid rows.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: probability table not found (run the extract and ensemble "
                        f"stages first, or check extract.out in params.yaml)")
    ids: list[str] = []
    splits: list[str] = []
    labels: list[int] = []
    probs: list[float] = []
    split_of: dict[str, tuple[str, int]] = {}
    try:
        # utf-8-sig: a BOM left by a spreadsheet tool must not break the header check.
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != HEADER:
                raise UserError(f"{path}: line 1: expected header {','.join(HEADER)!r}, "
                                f"got {','.join(header or [])!r}")
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue  # a trailing blank line is harmless
                where = f"{path}: line {line}"
                if len(row) != len(HEADER):
                    raise UserError(f"{where}: expected {len(HEADER)} fields "
                                    f"({','.join(HEADER)}), got {len(row)}: {','.join(row)!r}")
                case_id, split, label, prob = (cell.strip() for cell in row)
                if not case_id:
                    raise UserError(f"{where}: empty case_id")
                if split not in PROB_SPLITS:
                    raise UserError(f"{where}: case {case_id}: split must be one of "
                                    f"{', '.join(PROB_SPLITS)}, got {split!r}")
                if label not in ("0", "1"):
                    raise UserError(f"{where}: case {case_id}: label must be 0 or 1, "
                                    f"got {label!r}")
                try:
                    p = float(prob)
                except ValueError:
                    raise UserError(f"{where}: case {case_id}: prob is not a number: "
                                    f"{prob!r}") from None
                if not (math.isfinite(p) and 0.0 <= p <= 1.0):
                    raise UserError(f"{where}: case {case_id}: prob must be a finite number "
                                    f"in [0, 1], got {prob!r}")
                if case_id in split_of:
                    first_split, first_line = split_of[case_id]
                    what = ("repeated" if first_split == split
                            else f"also in split {first_split!r}")
                    raise UserError(f"{where}: case {case_id} in split {split!r} is {what} "
                                    f"(line {first_line}); each case has one row")
                split_of[case_id] = (split, line)
                ids.append(case_id)
                splits.append(split)
                labels.append(int(label))
                probs.append(p)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV ({exc})") from None
    if "valid" not in splits:
        raise UserError(f"{path}: no rows with split 'valid'; nothing to evaluate")
    return ProbTable.from_rows(str(path), ids, splits, labels, probs)


def write_probs(path: str | Path, case_ids: Sequence[str], splits: Sequence[str],
                labels: Sequence[int], probs: Sequence[float]) -> None:
    """Write a probability table atomically (probabilities with 8 decimals)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for c, s, lab, p in zip(case_ids, splits, labels, probs):
            w.writerow([c, s, int(lab), f"{float(p):.8f}"])
