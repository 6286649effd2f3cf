"""Probability tables, the one reader and writer for every dataset: ``case_id,split,label,prob``,
one row per case and split (MURA's tables add columns of their own).

MRNet's extract, ensemble and multitask stages and the KneeMRI stages write them; the ensemble
and evaluate stages read them. In memory a table is a pandas DataFrame with exactly these columns (case ids as strings,
never numbers) and the file it came from in ``df.attrs["source"]``, which errors name. Tables
are joined by case id with pandas merges, never by row order.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mrnet.core.errors import UserError
from mrnet.core.io import atomic_path

HEADER: tuple[str, ...] = ("case_id", "split", "label", "prob")
PROB_SPLITS: tuple[str, ...] = ("train", "tune", "valid")


def make_probs(case_ids: Sequence[str], splits: Sequence[str], labels: Sequence[int],
               probs: Sequence[float], source: str = "") -> pd.DataFrame:
    """A probability table from parallel sequences (no checks; :func:`read_probs` checks files).

    Args:
        source: where the table came from, named in error messages.
    """
    df = pd.DataFrame({"case_id": pd.Series(list(case_ids), dtype=object).astype(str),
                       "split": pd.Series(list(splits), dtype=object).astype(str),
                       "label": np.asarray(list(labels), dtype=np.int64),
                       "prob": np.asarray(list(probs), dtype=np.float64)})
    df.attrs["source"] = str(source)
    return df


def source(df: pd.DataFrame) -> str:
    """The file a table came from (or the name it was given)."""
    return str(df.attrs.get("source", "probability table"))


def rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of ``split`` sorted by case id, so tables of one task line up row for row."""
    out = df[df["split"] == split].sort_values("case_id", kind="stable").reset_index(drop=True)
    out.attrs["source"] = source(df)
    return out


def fit_split(df: pd.DataFrame) -> str:
    """The split choices are fitted on: "tune" when the table has one, else "train".

    The ensemble is fitted and every operating point is chosen on this split, never on valid.
    """
    return "tune" if bool((df["split"] == "tune").any()) else "train"


def read_probs(path: str | Path, splits: Sequence[str] = PROB_SPLITS,
               require: str = "valid") -> pd.DataFrame:
    """Read and check a probability table written by :func:`write_probs`.

    Args:
        path: CSV with header ``case_id,split,label,prob``.
        splits: the splits its rows may belong to.
        require: the split that must have rows (the one to evaluate).

    Returns:
        The table, case ids kept as strings, ``attrs["source"]`` the path.

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
    try:
        # dtype=str and no NA parsing: "0000" stays "0000" and an empty cell stays ""; a cell
        # missing from a short row is NaN, which is how fields are counted. One spare column
        # catches a row with one field too many; more than that is a parser error.
        # utf-8-sig: a BOM left by a spreadsheet tool must not break the header check.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, header=None,
                          encoding="utf-8-sig", skip_blank_lines=False, engine="python",
                          names=range(len(HEADER) + 1))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text CSV ({exc.reason})") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: line 1: expected header {','.join(HEADER)!r}, got ''") from None
    except pd.errors.ParserError as exc:
        found = re.search(r"Expected \d+ fields in line (\d+), saw (\d+)", str(exc))
        if found:
            raise UserError(f"{path}: line {found.group(1)}: expected {len(HEADER)} fields "
                            f"({','.join(HEADER)}), got {found.group(2)}") from None
        raise UserError(f"{path}: malformed CSV ({exc})") from None
    raw.index = raw.index + 1  # file line numbers
    n_fields = raw.notna().sum(axis=1)
    raw = raw.fillna("").apply(lambda col: col.str.strip())
    header = raw.iloc[0, :n_fields.iloc[0]].tolist() if len(raw) else []
    if tuple(header) != HEADER:
        raise UserError(f"{path}: line 1: expected header {','.join(HEADER)!r}, "
                        f"got {','.join(header)!r}")
    body = raw.iloc[1:]
    keep = (body != "").any(axis=1)  # a trailing blank line is harmless
    body, n_fields = body[keep], n_fields.iloc[1:][keep]
    bad = n_fields[n_fields != len(HEADER)]
    if len(bad):
        line, n = int(bad.index[0]), int(bad.iloc[0])
        cells = body.loc[line].tolist()[:n]
        raise UserError(f"{path}: line {line}: expected {len(HEADER)} fields "
                        f"({','.join(HEADER)}), got {n}: {','.join(cells)!r}")
    body = body.iloc[:, :len(HEADER)]
    body.columns = list(HEADER)
    _check_rows(path, body, splits)
    df = make_probs(body["case_id"], body["split"], body["label"].astype(int),
                    body["prob"].astype(float), str(path))
    if not (df["split"] == require).any():
        raise UserError(f"{path}: no rows with split {require!r}; nothing to evaluate")
    return df


def _check_rows(path: Path, body: pd.DataFrame, splits: Sequence[str]) -> None:
    """One error naming the first bad line of a table's body (index = file line numbers)."""
    first_line: dict[str, tuple[str, int]] = {}
    for line, case_id, split, label, prob in body.itertuples(name=None):
        where = f"{path}: line {line}"
        if not case_id:
            raise UserError(f"{where}: empty case_id")
        if split not in splits:
            raise UserError(f"{where}: case {case_id}: split must be one of "
                            f"{', '.join(splits)}, got {split!r}")
        if label not in ("0", "1"):
            raise UserError(f"{where}: case {case_id}: label must be 0 or 1, got {label!r}")
        try:
            p = float(prob)
        except ValueError:
            raise UserError(f"{where}: case {case_id}: prob is not a number: {prob!r}") from None
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise UserError(f"{where}: case {case_id}: prob must be a finite number "
                            f"in [0, 1], got {prob!r}")
        if case_id in first_line:
            first_split, first = first_line[case_id]
            what = "repeated" if first_split == split else f"also in split {first_split!r}"
            raise UserError(f"{where}: case {case_id} in split {split!r} is {what} "
                            f"(line {first}); each case has one row")
        first_line[case_id] = (split, line)


def write_probs(path: str | Path, df: pd.DataFrame, columns: Sequence[str] = HEADER,
                decimals: int = 8) -> None:
    """Write a probability table atomically, its ``columns`` in order, floats with
    ``decimals`` decimals."""
    out = df.loc[:, list(columns)].copy()
    if "label" in out:
        out["label"] = out["label"].astype(int)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format=f"%.{decimals}f", lineterminator="\n")


def read_table(path: str | Path, columns: Sequence[str], text: Sequence[str] = ("case_id",),
               rerun: str = "dvc repro") -> pd.DataFrame:
    """Read a table written by :func:`write_probs` whose ``columns`` are known but whose rows
    are checked by their user (MURA's study and view tables); ``text`` columns stay strings.

    Raises:
        UserError: the file is missing (run ``rerun``) or lacks one of ``columns``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: table not found; run `{rerun}`")
    table = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=False)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{path}: expected columns {', '.join(columns)}; {missing[0]} is missing")
    return table


def join_tables(tables: Mapping[str, pd.DataFrame], split: str | None = None) -> pd.DataFrame:
    """Tables of one task side by side, merged on (split, case id) and checked.

    Args:
        tables: name (a plane, "ensemble", …) -> its probability table.
        split: only the rows of this split; all splits when None.

    Returns:
        Columns ``case_id, split, label`` and one probability column per name, rows sorted by
        split then case id, whatever the row order of the inputs.

    Raises:
        UserError: naming the table that lacks a case another table scores (and that other
            table), or a case whose label differs between two tables.
    """
    if not tables:
        raise ValueError("no tables to join")
    names = list(tables)
    keys = ["split", "case_id"]
    joined = None
    for name, df in tables.items():
        part = df if split is None else df[df["split"] == split]
        part = part.loc[:, [*keys, "label", "prob"]].rename(
            columns={"label": ("label", name), "prob": name})
        joined = part if joined is None else joined.merge(part, on=keys, how="outer",
                                                          validate="one_to_one")
    joined = joined.sort_values(keys, kind="stable").reset_index(drop=True)
    for name in names:
        missing = joined[joined[name].isna()]
        if len(missing):
            first = missing.iloc[0]
            holders = [source(tables[o]) for o in names if pd.notna(first[o])]
            raise UserError(f"{source(tables[name])}: {first['split']} case {first['case_id']} "
                            f"(scored in {', '.join(holders)}) is missing ({len(missing)} "
                            f"missing in all); every model of a task must score the same exams")
    labels = joined[[("label", n) for n in names]].astype(int)
    differs = labels.ne(labels.iloc[:, 0], axis=0)
    if differs.to_numpy().any():
        row, col = np.argwhere(differs.to_numpy())[0]
        case = joined.iloc[row]
        raise UserError(f"{source(tables[names[col]])}: {case['split']} case {case['case_id']} "
                        f"has label {labels.iat[row, col]} but {source(tables[names[0]])} "
                        f"says {labels.iat[row, 0]}")
    joined["label"] = labels.iloc[:, 0]
    return joined.loc[:, ["case_id", "split", "label", *names]]
