"""What a model was trained on and with: recorded in every checkpoint and ensemble file.

A model trained on the synthetic phantoms must never score a real exam without a word, and a
number must be traceable to its data and code. :func:`provenance` gives the record:

- ``data_root`` as given in params.yaml, ``dataset_fingerprint`` (the dataset's own, e.g.
  :func:`mrnet.data.reader.dataset_fingerprint`) and ``synthetic`` (whether ``data.root`` holds phantoms, see :func:`is_synthetic`);
- ``precision`` as resolved on the machine (``bf16`` or ``fp32``, never ``auto``) and
  ``device_type``;
- ``torch_version`` and ``git_commit`` (the commit checked out when the model was made; None
  outside a git repository).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Mapping

# Written into the root of every phantom dataset by mrnet.data.synthetic.generate (kept here so
# that reading provenance does not import the phantom generator).
PHANTOM_MARKER = "SYNTHETIC-PHANTOMS.txt"


def is_synthetic(data_root: str | Path) -> bool:
    """Whether ``data.root`` holds phantoms: :func:`mrnet.data.synthetic.generate` marks every
    dataset it writes with a ``SYNTHETIC-PHANTOMS.txt`` in its root, wherever it was written
    or copied to."""
    return (Path(data_root) / PHANTOM_MARKER).is_file()


def git_commit(cwd: str | Path = ".") -> str | None:
    """The commit checked out in ``cwd``; None outside a git repository or without git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(data_root: str | Path, fingerprint: str, precision: str | None = None,
               device_type: str | None = None) -> dict[str, Any]:
    """The record stored in a model file (see the module docstring).

    Args:
        fingerprint: the dataset's fingerprint, computed by its reader.
    """
    import torch  # only for its version; the ensemble stage has no other use for it

    return {"data_root": str(data_root),
            "dataset_fingerprint": fingerprint,
            "synthetic": is_synthetic(data_root),
            "precision": precision, "device_type": device_type,
            "torch_version": str(torch.__version__), "git_commit": git_commit()}


def describe(record: Mapping[str, Any] | None) -> str:
    """One line saying what a model was trained on, for logs and reports."""
    if not record:
        return "unknown data (the file records no provenance)"
    kind = "synthetic phantoms" if record.get("synthetic") else "data"
    return (f"{kind} at {record.get('data_root')} (fingerprint "
            f"{str(record.get('dataset_fingerprint'))[:12]}), {record.get('precision')} on "
            f"{record.get('device_type')}, torch {record.get('torch_version')}, commit "
            f"{str(record.get('git_commit'))[:12]}")
