"""Paper-scale rehearsal: the pipeline's first steps on a dataset of MRNet's full size.

Writes a dataset in the MRNet-v1.0 layout at the real scale (default 1,130 train + 120 valid
exams, three planes, 256 x 256 uint8 slices, 17-61 slices per series drawn per exam and plane,
header-less label CSVs at MRNet's prevalences), then runs, each in a fresh process so that its
peak memory is its own:

1. validate -- :func:`mrnet.data.validate.validate_dataset` on the whole dataset;
2. prepare  -- :func:`mrnet.data.prepare.prepare_plane` of one plane (both splits);
3. train    -- :func:`mrnet.training.cnn.train_model` of one task and plane for one epoch (training
   pass and the valid evaluation), with the training settings of ``params.yaml``.

It prints each step's wall time and peak resident memory (``getrusage`` ``ru_maxrss``, which
includes the ~1 GiB that importing torch costs), the size of the prepared plane, and whether
training stayed under twice that size (its budget: the cache of both splits in memory plus
the model and one batch). The image content is random texture, not anatomy: the time of every
step depends on the shape of the data, not on what it shows.

At full size it needs about 10 GB of disk and 6 GB of memory and takes 15 minutes or more on
a 2-core CPU; ``--train/--valid/--size/--slices-*`` shrink it (the test suite runs it tiny).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import multiprocessing
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:  # run as a script from anywhere without an install
    sys.path.insert(0, str(PROJECT))

from mrnet import PLANES, SPLITS, TASKS  # noqa: E402
from mrnet.core.params import load_yaml  # noqa: E402
from mrnet.data.synthetic import draw_labels  # noqa: E402

MRNET_VALID_START = 1130
GIB = 2**30
MIB = 2**20


# ---------------------------------------------------------------- the dataset


def write_dataset(root: Path, n_train: int, n_valid: int, size: int, slices_min: int,
                  slices_max: int, seed: int = 0) -> dict[str, Any]:
    """A dataset in the MRNet-v1.0 layout with random texture of the real shape.

    Returns:
        {"bytes": total bytes of the series, "slices": {plane: total slices}}.
    """
    rng = np.random.default_rng(seed)
    # One random block per plane, varied per exam by a cheap XOR: fast to write at full size.
    base = {p: rng.integers(0, 256, (slices_max, size, size), dtype=np.uint8) for p in PLANES}
    ids = {"train": [f"{i:04d}" for i in range(n_train)],
           "valid": [f"{i:04d}" for i in range(max(MRNET_VALID_START, n_train),
                                               max(MRNET_VALID_START, n_train) + n_valid)]}
    total, slices = 0, {p: 0 for p in PLANES}
    for split in SPLITS:
        labels = draw_labels(len(ids[split]), rng, split)
        for task in TASKS:
            text = "".join(f"{c},{int(v)}\n" for c, v in zip(ids[split], labels[task]))
            (root / f"{split}-{task}.csv").parent.mkdir(parents=True, exist_ok=True)
            (root / f"{split}-{task}.csv").write_text(text)
        for plane in PLANES:
            folder = root / split / plane
            folder.mkdir(parents=True, exist_ok=True)
            for k, case in enumerate(ids[split]):
                n = int(rng.integers(slices_min, slices_max + 1))
                np.save(folder / f"{case}.npy", base[plane][:n] ^ np.uint8(k % 256))
                total += n * size * size
                slices[plane] += n
    return {"bytes": total, "slices": slices}


# ---------------------------------------------------------------- steps (in child processes)


def _rss_now() -> int:
    """Resident bytes of this process now (Linux), 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _measure(work: Callable[[], Any]) -> dict[str, Any]:
    start_rss = _rss_now()
    start = time.perf_counter()
    result = work()
    return {"wall_s": time.perf_counter() - start, "start_rss": start_rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "result": result}


def step_validate(root: str) -> dict[str, Any]:
    from mrnet.data.validate import validate_dataset

    return _measure(lambda: validate_dataset(root)["train"]["exams"])


def step_prepare(root: str, plane: str, out: str, size: int) -> dict[str, Any]:
    from mrnet.data.prepare import prepare_plane  # imports torch before the clock starts

    return _measure(lambda: prepare_plane(root, plane, out, size))


def step_train(raw_params: dict, task: str, plane: str) -> dict[str, Any]:
    import torch

    from mrnet.config import params_from_dict
    from mrnet.training.cnn import train_model

    torch.use_deterministic_algorithms(True, warn_only=True)  # as the train stage runs
    params = params_from_dict(raw_params)
    return _measure(lambda: train_model(params, task, plane, live_dir=False))


def in_fresh_process(fn: Callable[..., dict], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a newly spawned process, so its peak memory is its own."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------- report


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def train_params(params_file: Path, root: Path, work: Path, size: int,
                 exams_per_batch: int | None, precision: str | None) -> dict:
    """params.yaml with the data, caches and models in ``work`` and one epoch of training."""
    raw = copy.deepcopy(load_yaml(params_file))
    raw["data"]["root"] = str(root)
    raw["prepare"].update(out=str(work / "prepared"), image_size=size)
    raw["train"].update(out=str(work / "models"), epochs=1, processes=1)
    if exams_per_batch is not None:
        raw["train"]["exams_per_batch"] = exams_per_batch
    if precision is not None:
        raw["train"]["precision"] = precision
    raw["model"]["pretrained"] = False  # the time of a step does not depend on the weights
    return raw


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", type=int, default=1130, help="train exams")
    p.add_argument("--valid", type=int, default=120, help="valid exams")
    p.add_argument("--size", type=int, default=256, help="image size in pixels")
    p.add_argument("--slices-min", type=int, default=17, help="fewest slices of a series")
    p.add_argument("--slices-max", type=int, default=61, help="most slices of a series")
    p.add_argument("--task", default="acl", choices=TASKS, help="the model trained")
    p.add_argument("--plane", default="sagittal", choices=PLANES, help="the plane prepared")
    p.add_argument("--exams-per-batch", type=int, default=None,
                   help="training exams per step (default: params.yaml)")
    p.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16"),
                   help="training precision (default: params.yaml)")
    p.add_argument("--params", default=str(PROJECT / "params.yaml"),
                   help="params file whose training settings are used")
    p.add_argument("--workdir", default=None,
                   help="where the dataset is written (default: the system's temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the dataset and caches")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.train < 4 or args.valid < 4:
        p.error("--train and --valid must be at least 4")
    if args.size < 64:
        p.error("--size must be at least 64 (AlexNet needs it)")
    if not 1 <= args.slices_min <= args.slices_max:
        p.error("need 1 <= --slices-min <= --slices-max")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the dataset, run validate, prepare and one epoch of training, print the table."""
    args = parse_args(argv)
    params_file = Path(args.params)
    if not params_file.is_file():
        print(f"error: {params_file}: params file not found (--params)", file=sys.stderr)
        return 2
    n = args.train + args.valid
    mean_slices = (args.slices_min + args.slices_max) / 2
    need = 3 * n * mean_slices * args.size**2 * 1.4  # three planes, plus one prepared plane
    base = Path(args.workdir or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(base).free
    if free < need:
        print(f"error: {base}: {free / GIB:.1f} GiB free, the rehearsal needs about "
              f"{need / GIB:.1f} GiB; pass --workdir on a larger disk", file=sys.stderr)
        return 2
    os.environ["TQDM_DISABLE"] = "1"  # the steps' progress bars would garble the report
    work = Path(tempfile.mkdtemp(prefix="mrnet-rehearsal-", dir=base))
    try:
        root = work / "MRNet-v1.0"
        import torch  # for the report only; each step imports it in its own process

        print(f"machine:   {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), "
              f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}")
        print(f"data:      {args.train} train + {args.valid} valid exams, three planes, "
              f"{args.size}x{args.size} uint8, {args.slices_min}-{args.slices_max} slices per "
              f"series; model {args.task}-{args.plane}; workdir {work}")
        sys.stdout.flush()
        start = time.perf_counter()
        info = write_dataset(root, args.train, args.valid, args.size, args.slices_min,
                             args.slices_max, args.seed)
        rows = [("write data", time.perf_counter() - start, None,
                 f"{info['bytes'] / GIB:.2f} GiB of series (not a pipeline step)")]
        print(f"{rows[0][0]:<10} {rows[0][1]:8.2f} s  {rows[0][3]}")
        sys.stdout.flush()

        r = in_fresh_process(step_validate, str(root))
        rows.append(("validate", r["wall_s"], r["peak_rss"], f"{r['result']} train exams"))
        print(f"validate   {r['wall_s']:8.2f} s  peak {r['peak_rss'] / MIB:,.0f} MiB")
        sys.stdout.flush()

        prepared = work / "prepared"
        r = in_fresh_process(step_prepare, str(root), args.plane, str(prepared), args.size)
        plane_bytes = folder_bytes(prepared / args.plane)
        rows.append(("prepare", r["wall_s"], r["peak_rss"],
                     f"{args.plane}: {plane_bytes / MIB:,.0f} MiB cached"))
        print(f"prepare    {r['wall_s']:8.2f} s  peak {r['peak_rss'] / MIB:,.0f} MiB")
        sys.stdout.flush()

        raw = train_params(params_file, root, work, args.size, args.exams_per_batch,
                           args.precision)
        r = in_fresh_process(step_train, raw, args.task, args.plane)
        ratio = r["peak_rss"] / plane_bytes
        rows.append(("train", r["wall_s"], r["peak_rss"],
                     f"1 epoch of {args.task}-{args.plane} (train pass + valid evaluation), "
                     f"{raw['train']['exams_per_batch']} exams per step, precision "
                     f"{raw['train']['precision']}; peak = {ratio:.2f}x the prepared plane "
                     f"(above the process's start: "
                     f"{(r['peak_rss'] - r['start_rss']) / plane_bytes:.2f}x)"))
    finally:
        if args.keep:
            print(f"kept:      {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'step':<10} {'wall s':>8} {'peak RSS MiB':>13}  notes")
    for name, wall, peak, note in rows:
        peak_text = "-" if peak is None else f"{peak / MIB:,.0f}"
        print(f"{name:<10} {wall:>8.2f} {peak_text:>13}  {note}")
    if plane_bytes >= 2 * GIB:
        verdict = "within" if ratio < 2 else "OVER"
        print(f"train memory: {verdict} the budget of 2x the prepared plane ({ratio:.2f}x)")
    else:  # torch (~0.8 GiB) and one batch's activations (~1.3 GiB) dwarf a small cache
        print(f"train memory: not judged below 2 GiB of prepared plane ({ratio:.2f}x; peak "
              f"minus the cache: {(r['peak_rss'] - plane_bytes) / GIB:.2f} GiB)")
    print(f"epoch: {rows[-1][1]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
