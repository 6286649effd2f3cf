"""Use the trained models on new exams: the MRNet evaluation interface and a one-exam report.

Evaluation interface (the official MRNet format)::

    python -m mrnet.inference.predict INPUT_CSV OUTPUT_CSV [--params P | --models DIR] [--device D]

INPUT_CSV has no header and one ``.npy`` path per line, three lines per case (MRNet lists
sagittal, coronal, axial). A line's plane is its file's parent folder name (``axial``,
``coronal`` or ``sagittal``) and its case id the file stem, so the lines of a case may come in
any order. Relative paths are relative to the current directory. OUTPUT_CSV gets one row per
case, in the order of each case's first line: ``abnormal,acl,meniscus`` probabilities, no
header. Every line and every file is checked before anything is computed; on a problem the
command prints one ``error:`` line naming the case or file, exits non-zero and writes nothing.
An output (OUTPUT_CSV, ``--calls``, ``--json``, ``--viewer``) that names a file the command
reads -- the input CSV, the params file or the ``--models`` files, a series of an exam -- is
such a problem.

One exam, readable::

    python -m mrnet.inference.predict --exam EXAM [--json OUT] [--viewer OUT.html] [--task T]

EXAM is one of
  - a folder holding ``axial.npy``, ``coronal.npy`` and ``sagittal.npy`` (case id: the folder's
    name);
  - a folder holding ``axial/``, ``coronal/`` and ``sagittal/``, each with one ``.npy``
    (case id: the file stem; hidden files such as macOS's ``._1130.npy`` are not series);
  - three ``.npy`` paths, each in a folder named after its plane (MRNet's own layout, e.g.
    ``valid/axial/1130.npy valid/coronal/1130.npy valid/sagittal/1130.npy``) or named after
    its plane (``axial.npy``).
  - a folder of one exam's DICOM files, as a scanner exports them: imported into a temporary
    folder by :func:`mrnet.data.dicom.import_exam` (series chosen automatically; case id: the
    folder's name).
It prints each task's ensemble probability, its call (positive or negative) at the ensemble's
operating point with that threshold, and each plane CNN's probability with its term
(coef x prob) in the ensemble's logit; ``--json OUT`` writes the same as JSON (``-``: stdout);
``--viewer OUT.html`` writes a self-contained HTML viewer with CAM overlays.

Calls and probabilities: each ensemble ships its operating point, the Youden threshold chosen
on its fit split (train, or the tune hold-out), never on valid exams. Its probabilities are
calibrated to that split's prevalence (``ensemble.prevalence`` in params.yaml may have moved
them to another); ``--prevalence P`` or ``--prevalence acl=P ...`` moves them to the
prevalence of the population being scored by the prior-shift correction of the logit, and the
threshold with them, so the calls do not change. ``--calls OUT`` (with INPUT_CSV OUTPUT_CSV)
writes a second CSV, ``case_id,abnormal,acl,meniscus`` with 1 for positive, while OUTPUT_CSV
stays exactly the MRNet format.

Provenance: every model file records what it was trained on. Models trained on the synthetic
phantoms are refused unless ``--allow-synthetic`` is given: their numbers mean nothing for a
real exam.

Models: the nine ``{task}-{plane}.pt`` of ``train.out`` and the three ``ensemble-{task}.json``
of ``ensemble.out`` in params.yaml (paths relative to the params file's folder), or all twelve
from ``--models DIR``.

Each series goes through the pipeline's own code: resized to its checkpoint's training
resolution by :func:`mrnet.core.packed.resize_volume`, then :func:`mrnet.model.exam_logits`
(per-exam scaling and normalisation, eval mode, inference mode, several exams per forward
pass), so the probabilities equal those the extract and ensemble stages write.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from mrnet import PLANES, TASKS
from mrnet.config import Params, ViewerConfig, load_params
from mrnet.core.errors import DatasetError, UserError, cli
from mrnet.core.io import write_text
from mrnet.core.packed import PackedSet, resize_volume
from mrnet.core.provenance import describe
from mrnet.core.runtime import fast_layout, select_device, use_bf16
from mrnet.core.stats import ensemble_probs, sigmoid, with_prevalence
from mrnet.data.reader import load_series
from mrnet.model import MRNet, exam_logits, load_checkpoint

log = logging.getLogger(__name__)

# Cases read from disk at once: bounds memory on large inputs (120 MRNet exams at 256 px
# are ~1 GB of uint8) while keeping forward passes full.
CASES_PER_CHUNK = 32


class CaseFiles(NamedTuple):
    """One exam's series files."""

    case_id: str
    paths: dict[str, Path]  # plane -> .npy path


@dataclass
class Predictor:
    """The nine plane CNNs and three ensembles, ready on a device."""

    models: dict[tuple[str, str], MRNet]  # (task, plane) -> model in eval mode
    image_size: dict[tuple[str, str], int]  # training resolution of each model
    bf16: dict[tuple[str, str], bool]  # the precision each model was evaluated in
    ensembles: dict[str, dict]  # task -> ensemble JSON (with its operating point)
    device: torch.device
    trained_on: str = ""  # what the models were trained on, in words


class Prediction(NamedTuple):
    """Probabilities of a list of exams."""

    case_ids: list[str]
    plane_probs: dict[tuple[str, str], np.ndarray]  # (task, plane) -> (N,) CNN probabilities
    probs: dict[str, np.ndarray]  # task -> (N,) ensemble probabilities

    def table(self) -> np.ndarray:
        """(N, 3) ensemble probabilities, columns in ``TASKS`` order."""
        return np.stack([self.probs[t] for t in TASKS], axis=1)


# ---------------------------------------------------------------- models


def model_files(checkpoints: Mapping[str, Path], ensembles: Path
                ) -> tuple[dict[tuple[str, str], Path], dict[str, Path]]:
    """Checkpoint path of each (task, plane) and ensemble path of each task.

    Args:
        checkpoints: the folder holding each task's checkpoints (``train.out`` may differ
            per task).
        ensembles: the folder holding ``ensemble-{task}.json``.
    """
    ckpts = {(t, p): Path(checkpoints[t]) / f"{t}-{p}.pt" for t in TASKS for p in PLANES}
    return ckpts, {t: Path(ensembles) / f"ensemble-{t}.json" for t in TASKS}


def _read_ensemble(path: Path) -> dict:
    try:
        ens = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable ensemble JSON ({exc})") from None
    ok = (isinstance(ens, dict) and isinstance(ens.get("planes"), list)
          and set(ens["planes"]) == set(PLANES) and isinstance(ens.get("coef"), dict)
          and set(ens["coef"]) >= set(PLANES)
          and isinstance(ens.get("intercept"), (int, float))
          and isinstance(ens.get("operating_point"), dict)
          and "threshold" in ens["operating_point"]
          and isinstance(ens.get("fit_prevalence"), (int, float)))
    if not ok:
        raise UserError(f"{path}: not an ensemble of the planes {', '.join(PLANES)} "
                        "(expected keys planes, coef, intercept, operating_point, "
                        "fit_prevalence); rerun `dvc repro`")
    return ens


def check_provenance(records: Mapping[Path, Mapping[str, Any] | None],
                     allow_synthetic: bool) -> str:
    """Check what the model files were trained on; returns it in words.

    Raises:
        UserError: a file records no provenance (made before it was recorded), or one was
            trained on the synthetic phantoms and ``allow_synthetic`` is False.
    """
    for path, record in records.items():
        if not record:
            raise UserError(f"{path}: the model records no provenance (what data it was trained "
                            "on); retrain it with `dvc repro`")
        if record.get("synthetic") and not allow_synthetic:
            raise UserError(f"{path}: trained on the synthetic phantoms ({record.get('data_root')}),"
                            " not on real exams, so its probabilities mean nothing for a real "
                            "exam; train on real data, or pass --allow-synthetic to use it anyway")
    return describe(next(iter(records.values()), None))


def load_predictor(checkpoints: Mapping[str, Path], ensembles: Path,
                   device: torch.device | str = "cpu", allow_synthetic: bool = False,
                   prevalence: Mapping[str, float] | None = None) -> Predictor:
    """Load the nine CNNs and three ensembles.

    Args:
        allow_synthetic: accept models trained on the synthetic phantoms.
        prevalence: task -> target prevalence the ensemble's probabilities (and its
            operating threshold) are moved to; a task not named keeps its file's.

    Raises:
        UserError: a file is missing (the message names it and says how to train), a
            checkpoint holds another task/plane than its name says, or a model's provenance
            is missing or synthetic (see :func:`check_provenance`).
    """
    device = torch.device(device)
    ckpts, ens_paths = model_files(checkpoints, ensembles)
    missing = [p for p in [*ckpts.values(), *ens_paths.values()] if not p.is_file()]
    if missing:
        folder = missing[0].parent
        where = "" if folder.is_dir() else f" (folder {folder} does not exist)"
        raise UserError(f"{missing[0]}: trained model not found{where}; {len(missing)} of the "
                        "12 model files are missing. Train them with `dvc repro` or point "
                        "--models at a folder holding {task}-{plane}.pt and ensemble-{task}.json")
    models, sizes, bf16 = {}, {}, {}
    records: dict[Path, Any] = {}
    for (task, plane), path in ckpts.items():
        try:
            model, ckpt = load_checkpoint(path, device)
            config = ckpt["config"]
            found = (config["task"], config["plane"])
            size = int(config["image_size"])
            precision = config["train"]["precision"]
            records[path] = config.get("provenance")
        except (EOFError, pickle.UnpicklingError):
            raise UserError(f"{path}: not a readable torch checkpoint (truncated or another "
                            "kind of file); rerun `dvc repro`") from None
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            # torch's messages run over many lines; the first says what broke.
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"{path}: not a usable MRNet checkpoint ({reason}); rerun "
                            "`dvc repro`") from None
        if found != (task, plane):
            raise UserError(f"{path}: holds the {found[0]}-{found[1]} model, "
                            f"expected {task}-{plane}")
        models[task, plane], sizes[task, plane] = model, size
        bf16[task, plane] = use_bf16(precision, device)
        fast_layout(model, device, bf16[task, plane])
    ensembles_ = {t: _read_ensemble(p) for t, p in ens_paths.items()}
    records.update({ens_paths[t]: e.get("provenance") for t, e in ensembles_.items()})
    trained_on = check_provenance(records, allow_synthetic)
    for task, target in (prevalence or {}).items():
        ensembles_[task] = with_prevalence(ensembles_[task], target)
    return Predictor(models, sizes, bf16, ensembles_, device, trained_on)


def predictor_for(params: Params, device: torch.device, base: str | Path = ".",
                  allow_synthetic: bool = False,
                  prevalence: Mapping[str, float] | None = None) -> Predictor:
    """A :class:`Predictor` from the models that ``params`` names (``train.out``,
    ``ensemble.out``), with relative paths taken from ``base`` (the project root)."""
    base = Path(base)
    checkpoints = {t: base / params.train_for(t).out for t in TASKS}
    ensembles = base / params.ensemble.out
    log.info("models from %s (train.out) and %s (ensemble.out)",
             ", ".join(sorted({str(p) for p in checkpoints.values()})), ensembles)
    return load_predictor(checkpoints, ensembles, device, allow_synthetic, prevalence)


def predictor_from_args(params_path: str | Path = "params.yaml",
                        models_dir: str | Path | None = None,
                        device: str = "auto", allow_synthetic: bool = False,
                        prevalence: Mapping[str, float] | None = None) -> Predictor:
    """A :class:`Predictor` from ``--models DIR``, else from the params file's model paths.

    Paths in the params file are relative to its folder (the project root), so the command
    works from any directory.
    """
    dev = select_device(device, "--device")
    if models_dir is not None:
        folder = Path(models_dir)
        return load_predictor({t: folder for t in TASKS}, folder, dev, allow_synthetic,
                              prevalence)
    params_path = Path(params_path)
    if not params_path.is_file():
        raise UserError(f"{params_path}: params file not found; run from the project root, "
                        "pass --params, or give the models folder with --models DIR")
    return predictor_for(load_params(params_path), dev, params_path.parent, allow_synthetic,
                         prevalence)


# ---------------------------------------------------------------- prediction


def _exam_set(volumes: Sequence[np.ndarray], size: int, case_ids: list[str]) -> PackedSet:
    """Volumes resized to ``size`` exactly as the prepare stage does, packed for a model."""
    return PackedSet.from_volumes([resize_volume(v, size) for v in volumes], case_ids)


def predict_volumes(predictor: Predictor, exams: Sequence[Mapping[str, np.ndarray]],
                    case_ids: Sequence[str], exams_per_batch: int = 8) -> Prediction:
    """Probabilities of exams held in memory.

    Args:
        predictor: the loaded models.
        exams: one {plane: uint8 (S, H, W) volume} per exam.
        case_ids: the exams' ids, for the result.
        exams_per_batch: exams per forward pass.
    """
    ids = list(case_ids)
    plane_probs: dict[tuple[str, str], np.ndarray] = {}
    for plane in PLANES:
        volumes = [e[plane] for e in exams]
        by_size: dict[int, PackedSet] = {}
        for task in TASKS:
            size = predictor.image_size[task, plane]
            if size not in by_size:  # the nine models usually share one resolution
                by_size[size] = _exam_set(volumes, size, ids)
            logits = exam_logits(predictor.models[task, plane], by_size[size],
                                    predictor.device, exams_per_batch,
                                    predictor.bf16[task, plane])
            # The same float64 sigmoid as the extract stage.
            plane_probs[task, plane] = sigmoid(logits)
    probs = {}
    for task in TASKS:
        ens = predictor.ensembles[task]
        feats = np.stack([plane_probs[task, p] for p in ens["planes"]], axis=1)
        probs[task] = ensemble_probs(ens, feats)
    return Prediction(ids, plane_probs, probs)


def load_case(case: CaseFiles) -> dict[str, np.ndarray]:
    """The three series of a case, checked against the MRNet contract."""
    out = {}
    for plane in PLANES:
        try:
            out[plane] = load_series(case.paths[plane])
        except DatasetError as exc:
            raise UserError(f"case {case.case_id} ({plane}): {exc}") from None
    return out


def check_cases(cases: Sequence[CaseFiles]) -> None:
    """Check every file's header, dtype, shape and length without reading its data."""
    for case in cases:
        for plane in PLANES:
            try:
                load_series(case.paths[plane], mmap=True)  # a too-short file fails to map
            except DatasetError as exc:
                raise UserError(f"case {case.case_id} ({plane}): {exc}") from None


def predict_cases(predictor: Predictor, cases: Sequence[CaseFiles],
                  exams_per_batch: int = 8) -> Prediction:
    """Probabilities of exams on disk, read a chunk of cases at a time."""
    parts = []
    for start in range(0, len(cases), CASES_PER_CHUNK):
        chunk = cases[start:start + CASES_PER_CHUNK]
        parts.append(predict_volumes(predictor, [load_case(c) for c in chunk],
                                     [c.case_id for c in chunk], exams_per_batch))
        log.info("predicted %d/%d cases", start + len(chunk), len(cases))
    keys = [(t, p) for t in TASKS for p in PLANES]
    return Prediction(
        [c.case_id for c in cases],
        {k: np.concatenate([q.plane_probs[k] for q in parts]) for k in keys},
        {t: np.concatenate([q.probs[t] for q in parts]) for t in TASKS})


# ---------------------------------------------------------------- input forms


def plane_of(path: Path) -> str | None:
    """The plane a series path names: its parent folder, else its stem; None if neither."""
    if path.parent.name in PLANES:
        return path.parent.name
    return path.stem if path.stem in PLANES else None


def read_input_csv(path: str | Path) -> list[CaseFiles]:
    """Parse an MRNet evaluation input: one path per line, three planes per case.

    Returns:
        The cases in order of their first line, each with all three planes.
    Raises:
        UserError: naming the line and case when a line is not one path, a path's folder is
            not a plane, a case has a plane twice, or a case lacks a plane.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: input CSV not found")
    cases: dict[str, dict[str, tuple[Path, int]]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            for row in reader:
                line = reader.line_num
                cells = [c.strip() for c in row if c.strip()]
                if not cells:
                    continue
                if len(cells) != 1:
                    raise UserError(f"{path}: line {line}: expected one .npy path per line, "
                                    f"got {len(cells)} fields: {','.join(row)!r}")
                series = Path(cells[0])
                if series.parent.name not in PLANES:
                    raise UserError(
                        f"{path}: line {line}: {series}: cannot tell its plane; the file must "
                        f"be in a folder named {', '.join(PLANES)} "
                        f"(got {series.parent.name or '.'!r})")
                plane, case_id = series.parent.name, series.stem
                seen = cases.setdefault(case_id, {})
                if plane in seen:
                    first, first_line = seen[plane]
                    raise UserError(f"{path}: line {line}: case {case_id} has a second "
                                    f"{plane} series {series} (first: {first}, line "
                                    f"{first_line}); each case needs one file per plane")
                seen[plane] = (series, line)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    if not cases:
        raise UserError(f"{path}: no .npy paths; expected one path per line, "
                        "three lines per case")
    out = []
    for case_id, planes in cases.items():
        missing = [p for p in PLANES if p not in planes]
        if missing:
            have = ", ".join(f"{p} (line {planes[p][1]})" for p in PLANES if p in planes)
            raise UserError(f"{path}: case {case_id} has no {' or '.join(missing)} series "
                            f"(it has {have}); each case needs {', '.join(PLANES)}")
        out.append(CaseFiles(case_id, {p: planes[p][0] for p in PLANES}))
    return out


def exam_files(args: Sequence[str]) -> CaseFiles:
    """The series of one exam from ``--exam`` (see the module docstring for the forms)."""
    forms = ("a folder holding axial.npy, coronal.npy and sagittal.npy; a folder holding "
             "axial/, coronal/ and sagittal/ with one .npy each; three .npy paths in "
             "folders named after their planes; or a folder of one exam's DICOM files")
    if len(args) == 1:
        folder = Path(args[0])
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder; --exam takes {forms}")
        named = {p: folder / f"{p}.npy" for p in PLANES}
        if all(f.is_file() for f in named.values()):
            return CaseFiles(folder.resolve().name, named)
        if all((folder / p).is_dir() for p in PLANES):
            # Hidden files (macOS's ._NAME.npy resource forks, editors' backups) are not series.
            found = {p: sorted(f for f in (folder / p).glob("*.npy") if not f.name.startswith("."))
                     for p in PLANES}
            for p, files in found.items():
                if len(files) != 1:
                    names = ", ".join(f.name for f in files[:5]) + (", ..." if len(files) > 5
                                                                    else "")
                    raise UserError(f"{folder / p}: holds {len(files)} .npy files"
                                    f"{f' ({names})' if files else ''}; --exam needs exactly "
                                    "one per plane folder")
            paths = {p: found[p][0] for p in PLANES}
            stems = {f.stem for f in paths.values()}
            return CaseFiles(stems.pop() if len(stems) == 1 else folder.resolve().name, paths)
        from mrnet.data.dicom import import_to_temp, is_dicom_folder  # pydicom only when needed

        if is_dicom_folder(folder):  # a scanner's export, imported as `mrnet import-dicom` does
            imported = import_to_temp(folder)
            return CaseFiles(folder.resolve().name, {p: imported / f"{p}.npy" for p in PLANES})
        raise UserError(f"{folder}: no exam found; --exam takes {forms}")
    if len(args) == 3:
        paths: dict[str, Path] = {}
        for arg in map(Path, args):
            plane = plane_of(arg)
            if plane is None:
                raise UserError(f"{arg}: cannot tell its plane; --exam takes {forms}")
            if plane in paths:
                raise UserError(f"{arg}: a second {plane} series (first: {paths[plane]})")
            paths[plane] = arg
        stems = {f.stem for f in paths.values()} - set(PLANES)
        case_id = stems.pop() if len(stems) == 1 else Path(args[0]).resolve().parent.name
        return CaseFiles(case_id, {p: paths[p] for p in PLANES})
    raise UserError(f"--exam got {len(args)} paths; it takes {forms}")


# ---------------------------------------------------------------- output


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through links, ``..`` or a second name)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: compare where they would be
        return a.resolve() == b.resolve()


def check_outputs(outputs: Mapping[str, str | Path | None],
                  inputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse an output path that is a folder or one of the files the command reads.

    Args:
        outputs: flag or argument name (``OUTPUT_CSV``, ``--calls``) -> path (None: not given).
        inputs: (what it is, path) of every file read: the input CSV, the params file and each
            series of each exam.
    Raises:
        UserError: naming the output, the argument and the input it would overwrite.
    """
    given = [(name, Path(path)) for name, path in outputs.items() if path not in (None, "-")]
    for i, (name, path) in enumerate(given):
        if path.is_dir():
            raise UserError(f"{path}: is a folder; {name} must be a file path")
        for what, source in inputs:
            if same_file(path, source):
                raise UserError(f"{path}: {name} is {what}; writing it would destroy an input "
                                f"-- choose another file")
        for other, other_path in given[:i]:
            if same_file(path, other_path):
                raise UserError(f"{path}: {name} names the same file as {other}")


def read_files(args: argparse.Namespace, cases: Sequence[CaseFiles]) -> list[tuple[str, Path]]:
    """(what, path) of every file the command reads, for :func:`check_outputs`: the models
    (``--models``) or the params file naming them, and each series of ``cases``."""
    out: list[tuple[str, Path]] = []
    if args.models is not None:
        ckpts, ensembles = model_files({t: Path(args.models) for t in TASKS}, Path(args.models))
        out += [(f"the model {p.name}", p) for p in (*ckpts.values(), *ensembles.values())]
    else:
        out.append(("the params file", Path(args.params)))
    out += [(f"the {plane} series of case {c.case_id}", c.paths[plane])
            for c in cases for plane in PLANES]
    return out


def write_output(path: str | Path, text: str) -> None:
    """Write ``text`` atomically; an unwritable path is a user error, not a traceback."""
    try:
        write_text(path, text)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


def write_output_csv(path: str | Path, table: np.ndarray) -> None:
    """Write the evaluation output (one ``abnormal,acl,meniscus`` row per case) atomically."""
    write_output(path, "".join(",".join(f"{v:.8f}" for v in row) + "\n" for row in table))


def call(prob: float, threshold: float | None) -> str | None:
    """"positive" when ``prob`` reaches the operating threshold, else "negative"; None
    when the ensemble has no operating point."""
    if threshold is None:
        return None
    return "positive" if prob >= threshold else "negative"


def write_calls_csv(path: str | Path, predictor: Predictor, prediction: Prediction) -> None:
    """Write ``case_id,abnormal,acl,meniscus`` calls (1 positive, 0 negative) atomically."""
    lines = ["case_id," + ",".join(TASKS)]
    for i, case_id in enumerate(prediction.case_ids):
        cells = []
        for task in TASKS:
            c = call(float(prediction.probs[task][i]),
                     predictor.ensembles[task]["operating_point"]["threshold"])
            cells.append("" if c is None else str(int(c == "positive")))
        lines.append(",".join([case_id, *cells]))
    write_output(path, "\n".join(lines) + "\n")


def exam_report(predictor: Predictor, prediction: Prediction, index: int = 0,
                paths: Mapping[str, Path] | None = None) -> dict[str, Any]:
    """One exam's probabilities and each plane's term in each ensemble, as a JSON-able dict."""
    tasks = {}
    for task in TASKS:
        ens = predictor.ensembles[task]
        planes = {}
        for plane in PLANES:
            prob = float(prediction.plane_probs[task, plane][index])
            coef = float(ens["coef"][plane])
            planes[plane] = {"prob": prob, "coef": coef, "contribution": coef * prob}
        prob = float(prediction.probs[task][index])
        op = ens["operating_point"]
        tasks[task] = {"prob": prob, "call": call(prob, op["threshold"]),
                       "threshold": op["threshold"],
                       "threshold_rule": f"{op['rule']} on {op['split']}",
                       "prevalence": (ens["target_prevalence"]
                                      if ens.get("target_prevalence") is not None
                                      else ens["fit_prevalence"]),
                       "intercept": float(ens["intercept"]), "planes": planes}
    report: dict[str, Any] = {"case_id": prediction.case_ids[index], "tasks": tasks,
                              "trained_on": predictor.trained_on}
    if paths is not None:
        report["files"] = {p: str(paths[p]) for p in PLANES}
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The exam report as a small text table."""
    head = (f"{'task':<10}{'prob':>8}  {'call (threshold)':<22}"
            + "".join(f"{p:>20}" for p in PLANES) + f"{'intercept':>11}")
    lines = [f"exam {report['case_id']}", head]
    for task, r in report["tasks"].items():
        cells = "".join(f"{c['prob']:>10.4f} ({c['contribution']:+7.3f})"
                        for c in r["planes"].values())
        verdict = ("n/a" if r["call"] is None else f"{r['call']} ({r['threshold']:.4f})")
        lines.append(f"{task:<10}{r['prob']:>8.4f}  {verdict:<22}{cells}{r['intercept']:>+11.3f}")
    first = next(iter(report["tasks"].values()))
    lines.append("prob: ensemble probability, calibrated to prevalence "
                 + ", ".join(f"{t} {r['prevalence']:.3f}" for t, r in report["tasks"].items())
                 + f". call: positive when prob >= the operating threshold ({first['threshold_rule']}"
                 ", never chosen on valid exams). Plane columns: that plane CNN's probability and "
                 "(coef x prob), its term in the ensemble logit = intercept + sum of terms.")
    if report.get("trained_on"):
        lines.append(f"models trained on {report['trained_on']}")
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def build_parser(prog: str = "python -m mrnet.inference.predict") -> argparse.ArgumentParser:
    """The command-line interface (its help is the module docstring), named ``prog``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_csv", nargs="?", help="MRNet input: one .npy path per line")
    parser.add_argument("output_csv", nargs="?", help="where to write abnormal,acl,meniscus rows")
    parser.add_argument("--exam", nargs="+", metavar="PATH",
                        help="one exam: a folder or three .npy paths (see above)")
    parser.add_argument("--json", metavar="OUT", help="with --exam: write the report as JSON "
                        "(- for stdout) instead of printing the table")
    parser.add_argument("--viewer", metavar="OUT.html",
                        help="with --exam: write a self-contained HTML viewer with CAM overlays")
    parser.add_argument("--task", choices=TASKS, default=ViewerConfig.task,
                        help="with --viewer: the task whose CAM is shown first "
                             "(default %(default)s)")
    parser.add_argument("--params", default="params.yaml",
                        help="params file naming train.out and ensemble.out "
                             "(default %(default)s)")
    parser.add_argument("--models", metavar="DIR",
                        help="folder with the nine {task}-{plane}.pt and three "
                             "ensemble-{task}.json (instead of the params file's)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA when present (default)")
    parser.add_argument("--batch", type=int, default=8, metavar="N",
                        help="exams per forward pass (default %(default)s)")
    parser.add_argument("--calls", metavar="OUT",
                        help="with INPUT_CSV OUTPUT_CSV: also write case_id,abnormal,acl,meniscus "
                             "calls (1 positive) at each ensemble's operating point")
    parser.add_argument("--prevalence", nargs="+", metavar="[TASK=]P",
                        help="move probabilities (and thresholds) to this prevalence, for all "
                             "tasks or per task (acl=0.45)")
    parser.add_argument("--allow-synthetic", action="store_true",
                        help="accept models trained on the synthetic phantoms (demo, tests)")
    return parser


def parse_prevalence(values: Sequence[str] | None) -> dict[str, float]:
    """``--prevalence 0.3`` (every task) or ``acl=0.45 meniscus=0.4`` → {task: prevalence}."""
    out: dict[str, float] = {}
    for value in values or []:
        task, _, number = value.rpartition("=")
        tasks = [task] if task else list(TASKS)
        if task and task not in TASKS:
            raise UserError(f"--prevalence {value}: unknown task {task!r} "
                            f"(tasks: {', '.join(TASKS)})")
        try:
            p = float(number)
        except ValueError:
            raise UserError(f"--prevalence {value}: {number!r} is not a number") from None
        if not 0.0 < p < 1.0:
            raise UserError(f"--prevalence {value}: a prevalence is in (0, 1)")
        out.update({t: p for t in tasks})
    return out


@cli
def main(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """``predict`` from the command line; ``prog`` is the name its help and errors give it."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    if args.exam is not None:
        if args.input_csv is not None:
            parser.error("give either INPUT_CSV OUTPUT_CSV or --exam, not both")
        run_exam(args)
        return
    if args.input_csv is None or args.output_csv is None:
        parser.error("give INPUT_CSV and OUTPUT_CSV (or --exam for one exam)")
    if args.json or args.viewer:
        parser.error("--json and --viewer go with --exam")
    # Everything a user can get wrong is checked before the models run.
    cases = read_input_csv(args.input_csv)
    check_outputs({"OUTPUT_CSV": args.output_csv, "--calls": args.calls},
                  [("the input CSV", Path(args.input_csv)), *read_files(args, cases)])
    check_cases(cases)
    predictor = predictor_from_args(args.params, args.models, args.device, args.allow_synthetic,
                                    parse_prevalence(args.prevalence))
    log.info("predicting %d cases from %s on %s with models trained on %s", len(cases),
             args.input_csv, predictor.device, predictor.trained_on)
    prediction = predict_cases(predictor, cases, args.batch)
    write_output_csv(args.output_csv, prediction.table())
    log.info("wrote %d rows (abnormal,acl,meniscus) to %s", len(cases), args.output_csv)
    if args.calls:
        write_calls_csv(args.calls, predictor, prediction)
        log.info("wrote the calls at the operating points to %s", args.calls)


def run_exam(args: argparse.Namespace) -> None:
    """The ``--exam`` form: table or JSON, and optionally the viewer."""
    if args.calls:
        raise UserError("--calls goes with INPUT_CSV OUTPUT_CSV; with --exam the report "
                        "(table, --json, --viewer) shows each call")
    case = exam_files(args.exam)
    check_outputs({"--json": args.json, "--viewer": args.viewer}, read_files(args, [case]))
    check_cases([case])
    predictor = predictor_from_args(args.params, args.models, args.device, args.allow_synthetic,
                                    parse_prevalence(args.prevalence))
    volumes = load_case(case)
    prediction = predict_volumes(predictor, [volumes], [case.case_id], args.batch)
    report = exam_report(predictor, prediction, 0, case.paths)
    if args.viewer:
        from mrnet.inference.viewer import (
            exam_viewer,  # the viewer pulls in CAMs and image encoding
        )

        write_output(args.viewer, exam_viewer(predictor, case.case_id, volumes, report,
                                              args.task))
        log.info("viewer of exam %s -> %s", case.case_id, args.viewer)
    if args.json == "-":
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    elif args.json:
        write_output(args.json, json.dumps(report, indent=2, sort_keys=True) + "\n")
        log.info("report of exam %s -> %s", case.case_id, args.json)
    else:
        sys.stdout.write(format_report(report) + "\n")


if __name__ == "__main__":
    main()
