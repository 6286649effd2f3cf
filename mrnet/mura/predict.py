"""Use the trained MURA model: probability tables for the pipeline, and new studies.

New studies (a folder of PNG views each)::

    python -m mrnet.mura.predict STUDY_DIR [STUDY_DIR ...] [--json OUT] [--viewer OUT.html]

prints, per study, the mean probability over its views, the call (abnormal when above the
threshold, 0.5 as in the paper) and each view's probability; ``--json OUT`` writes the same as
JSON (``-``: stdout); ``--viewer`` writes a self-contained HTML page of one study with each
view's class activation map.

The MURA evaluation format::

    python -m mrnet.mura.predict --csv INPUT_CSV OUTPUT_CSV

INPUT_CSV has one image path per line, no header (like ``valid_image_paths.csv``, paths relative
to the current directory); a study is the folder of its images. OUTPUT_CSV gets one row per
study, in order of first appearance: the study folder with a trailing slash and the 0/1 call.

The model is ``{train.out}/model.pt`` of ``mura/params.yaml`` (``--model`` to point elsewhere).
Views go through the pipeline's own code (grey, resized to the training resolution, ImageNet
normalisation, one forward pass per group of studies), so a study in the dataset gets the
probability the extract stage wrote for it. Every input is checked before anything is written;
a bad one ends in one ``error:`` line naming the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from mrnet.core.errors import DatasetError, UserError, cli
from mrnet.core.io import write_text
from mrnet.core.packed import PackedSet
from mrnet.core.runtime import cpu_threads, fast_layout, select_device, use_bf16
from mrnet.core.stats import sigmoid
from mrnet.core.tables import read_table
from mrnet.mura.config import PARAMS_FILE, MuraParams, load_params
from mrnet.mura.data import load_view, study_view_files
from mrnet.mura.model import CHECKPOINT, MuraNet, load_model, study_probs, view_logits
from mrnet.mura.prepare import PreparedStudies, load_prepared, resize_view, study_set
from mrnet.mura.viewer import study_viewer

log = logging.getLogger(__name__)

PAPER_THRESHOLD = 0.5
STUDY_COLUMNS = ("study_id", "split", "study_type", "label", "n_views", "prob")


def prepared_tables(model: MuraNet, prepared: PreparedStudies, device: torch.device,
                    bf16: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-study and per-view probabilities of one prepared split.

    Returns:
        (studies: study_id, split, study_type, label, n_views, prob;
         views: study_id, split, view, prob), in cache order.
    """
    data = study_set(prepared, device)
    logits = view_logits(model, data, device, 64, bf16)
    s = prepared.studies
    counts = data.counts.numpy()
    studies = s[["study_id", "split", "study_type", "label", "n_views"]].copy()
    studies["prob"] = study_probs(logits, counts)
    views = pd.DataFrame({"study_id": np.repeat(s["study_id"].to_numpy(), counts),
                          "split": prepared.studies["split"].iloc[0] if len(s) else "",
                          "view": prepared.view_names, "prob": sigmoid(logits)})
    return studies, views


def extract(params: MuraParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Probabilities of every train and valid study and view from the trained model, on
    ``train.eval_threads`` CPU threads."""
    device = select_device(params.train.device, "train.device of mura/params.yaml")
    model, _ = load_model(Path(params.train.out) / CHECKPOINT, device)
    bf16 = use_bf16(params.train.precision, device)
    fast_layout(model, device, bf16)
    with cpu_threads(params.train.eval_threads):
        parts = [prepared_tables(model, load_prepared(params.prepare.out, split), device, bf16)
                 for split in ("train", "valid")]
    return (pd.concat([p[0] for p in parts], ignore_index=True),
            pd.concat([p[1] for p in parts], ignore_index=True))


def read_study_table(path: str | Path) -> pd.DataFrame:
    """A per-study probability table written by the extract stage (study ids as strings)."""
    return read_table(path, STUDY_COLUMNS, text=("study_id", "split", "study_type"),
                      rerun="dvc repro mura/dvc.yaml:extract")


# ------------------------------------------------------------------ new studies

def load_views(files: Sequence[Path]) -> list[np.ndarray]:
    """Every view of a study as uint8 grey (errors name the file)."""
    return [load_view(f) for f in files]


def predict_studies(model: MuraNet, image_size: int, studies: Sequence[Sequence[np.ndarray]],
                    device: torch.device | str = "cpu") -> list[np.ndarray]:
    """View probabilities of each study (views at any size), packed as in training."""
    device = torch.device(device)
    views = np.stack([resize_view(v, image_size) for s in studies for v in s])
    counts = torch.tensor([len(s) for s in studies], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)[:-1]])
    data = PackedSet(torch.from_numpy(views).to(device), offsets, counts,
                     [str(i) for i in range(len(studies))])
    probs = sigmoid(view_logits(model, data, device, 64))
    return np.split(probs, np.cumsum(counts.numpy())[:-1])


def study_report(name: str, files: Sequence[Path], probs: np.ndarray, threshold: float,
                 ckpt: dict) -> dict[str, Any]:
    """What a user sees about one study: the probability with its call and threshold, each
    view's probability, and what the model was trained on."""
    prob = float(np.mean(probs))
    return {"study": name, "prob": prob, "call": "abnormal" if prob > threshold else "normal",
            "threshold": threshold, "n_views": len(files),
            "views": [{"file": str(f), "prob": float(p)} for f, p in zip(files, probs)],
            "model": {"backbone": ckpt["config"]["model"]["backbone"],
                      "image_size": ckpt["config"]["image_size"], "epoch": ckpt["epoch"],
                      **ckpt["config"]["trained_on"]}}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"study {report['study']}: P(abnormal) {report['prob']:.3f} -> {report['call']} "
             f"(threshold {report['threshold']:g}; mean over {report['n_views']} views)"]
    lines += [f"  {Path(v['file']).name}: {v['prob']:.3f}" for v in report["views"]]
    return "\n".join(lines)


def read_image_csv(path: str | Path) -> list[tuple[str, list[Path]]]:
    """(study folder as written + "/", its image paths) per study of a header-less image CSV,
    in order of first appearance."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: input CSV not found")
    studies: dict[str, list[Path]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if "," in line:
            raise DatasetError(f"{path}:{lineno}: expected one image path per line, got {line!r}")
        if not line.lower().endswith(".png"):
            raise DatasetError(f"{path}:{lineno}: {line!r} is not a .png path")
        file = Path(line)
        if not file.is_file():
            raise DatasetError(f"{path}:{lineno}: image file {file} not found")
        folder = line.replace("\\", "/").rpartition("/")[0] + "/"
        studies.setdefault(folder, []).append(file)
    if not studies:
        raise DatasetError(f"{path}: input CSV is empty")
    return list(studies.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mrnet.mura.predict",
                                description="MURA study-level abnormality from a folder of views.")
    p.add_argument("studies", nargs="*", help="study folders, each holding the .png views")
    p.add_argument("--csv", nargs=2, metavar=("INPUT_CSV", "OUTPUT_CSV"),
                   help="MURA evaluation format: image paths in, study,call rows out")
    p.add_argument("--params", default=PARAMS_FILE, help="mura params file (default %(default)s)")
    p.add_argument("--model", help="checkpoint (default: {train.out}/model.pt of --params)")
    p.add_argument("--threshold", type=float, default=PAPER_THRESHOLD,
                   help="call abnormal above this mean probability (default %(default)s, the paper's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", metavar="OUT", help="write the reports as JSON ('-': stdout)")
    p.add_argument("--viewer", metavar="OUT.html", help="HTML viewer with CAMs of one study")
    return p


def model_path(args: argparse.Namespace) -> Path:
    if args.model:
        return Path(args.model)
    params_path = Path(args.params)
    params = load_params(params_path)
    # Paths in mura/params.yaml are relative to the project root, the folder above mura/.
    base = params_path.resolve().parent.parent
    return base / params.train.out / CHECKPOINT


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if bool(args.csv) == bool(args.studies):
        raise UserError("give study folders or --csv INPUT_CSV OUTPUT_CSV (one of the two)")
    if not 0.0 < args.threshold < 1.0:
        raise UserError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.viewer and len(args.studies) != 1:
        raise UserError("--viewer takes exactly one study folder")
    if args.csv:
        studies = read_image_csv(args.csv[0])
    else:
        studies = [(str(folder), study_view_files(folder)) for folder in args.studies]
    pixels = [load_views(files) for _, files in studies]  # every file checked before any output
    device = select_device(args.device, "--device")
    model, ckpt = load_model(model_path(args), device)
    size = int(ckpt["config"]["image_size"])
    probs = predict_studies(model, size, pixels, device)
    log.info("%d studies, %d views, model %s at %d px", len(studies),
             sum(len(p) for p in pixels), ckpt["config"]["model"]["backbone"], size)
    if args.csv:
        rows = [f"{name},{int(np.mean(p) > args.threshold)}" for (name, _), p in zip(studies, probs)]
        write_text(args.csv[1], "\n".join(rows) + "\n")
        log.info("wrote %d study calls (threshold %g) to %s", len(rows), args.threshold,
                 args.csv[1])
        return
    reports = [study_report(Path(name).name, files, p, args.threshold, ckpt)
               for (name, files), p in zip(studies, probs)]
    for r in reports:
        print(format_report(r))
    if args.json:
        text = json.dumps(reports if len(reports) > 1 else reports[0], indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_text(args.json, text)
    if args.viewer:
        write_text(args.viewer, study_viewer(model, reports[0], pixels[0], size, device))
        log.info("wrote %s", args.viewer)


if __name__ == "__main__":
    main()
