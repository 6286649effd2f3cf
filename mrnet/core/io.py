"""Atomic file writing: a killed stage never leaves a half-written file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

from mrnet.core.errors import ParamsError


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The permission bits ``path`` gets when it is written: those of the file it replaces,
    else what ``open()`` would give a new file (0666 less the umask)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    The file keeps the mode of the one it replaces, or gets the umask's mode when new
    (``mkstemp`` alone would leave every output 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, new_file_mode(path))
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path``; on success it replaces ``path``.

    The folder is renamed onto ``path`` only when the block finishes, so a killed or failed
    run leaves the previous folder (or none) and never a half-written one; files that the new
    folder no longer holds do not linger.

    Raises:
        NotADirectoryError: ``path`` exists and is not a folder (before anything is written).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if path.is_dir():  # the new folder keeps the old one's permissions
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)


def check_output_dir(out: str | os.PathLike, key: str, data_root: str | os.PathLike,
                     synthetic_root: str | os.PathLike, example: str) -> None:
    """Refuse a stage output folder whose replacement would take the project or a user's
    dataset with it.

    Args:
        out: the folder a synthesize stage replaces (params key ``key``).
        data_root: the dataset the pipeline reads; ``synthetic_root``: where the phantoms go.
        example: a folder of its own to suggest.
    Raises:
        ParamsError: naming ``key`` and what it would destroy.
    """
    out, data_root = Path(out).resolve(), Path(data_root).resolve()
    synthetic_root = Path(synthetic_root).resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise ParamsError(f"{key} ({out}) is the project folder or one above it; point it at "
                          f"a folder of its own, e.g. {example}")
    if out in data_root.parents and data_root != synthetic_root:
        raise ParamsError(f"{key} ({out}) contains the dataset ({data_root}), which is not the "
                          "synthetic one; replacing it would delete your data. Point the "
                          f"dataset at {synthetic_root} for the phantoms or move {key}")
    if data_root in out.parents:
        raise ParamsError(f"{key} ({out}) lies inside the dataset ({data_root}); phantoms and "
                          "notes must not be written into a dataset folder")


def replace_with_note(out: str | os.PathLike, text: str) -> Path:
    """Replace folder ``out`` with one holding only ``README.txt`` (``text``), atomically: the
    old contents go only once the note is in place. Returns the note's path."""
    with atomic_dir(out) as tmp:
        (tmp / "README.txt").write_text(text)
    return Path(out) / "README.txt"


def remove_except(folder: str | os.PathLike, keep: str) -> None:
    """Delete every entry of ``folder`` but ``keep`` (what a stage output no longer holds)."""
    for entry in Path(folder).iterdir():
        if entry.name != keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically (diffable in git)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
