"""Does training learn at the paper's resolution? acl-sagittal on 256-px phantoms, per epoch.

    python benchmarks/bench_learn256.py                      # recipes/phantoms-256.yaml
    python benchmarks/bench_learn256.py --recipe none        # the demo's settings, at 256 px
    python benchmarks/bench_learn256.py --epochs 3 --n-train 40 --n-valid 20   # a quick look

Writes the phantoms at ``--size`` px with the demo's other synthesize settings (params.yaml),
prepares the one plane it trains, then trains one CNN with the training code of the pipeline
(``mrnet.training.cnn.train_model``) under params.yaml plus the recipe's keys. It prints, per epoch,
the train loss and AUC, the valid loss and AUC and the seconds the epoch took, then whether
the run collapsed to a constant output (train loss at the constant-output loss and valid
logits without spread) and the best valid AUC. It is a measurement, not a test: nothing is
asserted, and the time depends on the machine. Everything is written into a temporary folder
(``--workdir`` keeps it).
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mrnet.cli import apply_overrides, load_recipe  # noqa: E402
from mrnet.config import SynthesizeConfig, params_from_dict  # noqa: E402
from mrnet.core.errors import UserError  # noqa: E402
from mrnet.core.params import load_yaml  # noqa: E402
from mrnet.core.runtime import select_device, use_bf16
from mrnet.core.trainer import constant_output_loss, output_collapsed
from mrnet.data.prepare import prepare_plane  # noqa: E402
from mrnet.data.synthetic import generate  # noqa: E402
from mrnet.model import exam_logits, load_checkpoint  # noqa: E402
from mrnet.training.cnn import load_exam_set, train_model


class EpochClock(logging.Handler):
    """Notes the time at which the training loop logs each finished epoch."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.times: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if " epoch %d/%d" in str(record.msg):
            self.times.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="phantoms-256",
                        help="a recipe of recipes/ or a recipe file; 'none' for params.yaml")
    parser.add_argument("--size", type=int, default=256, help="phantom and training size (px)")
    parser.add_argument("--task", default="acl")
    parser.add_argument("--plane", default="sagittal")
    parser.add_argument("--n-train", type=int, help="train exams (default: params.yaml)")
    parser.add_argument("--n-valid", type=int, help="valid exams (default: params.yaml)")
    parser.add_argument("--epochs", type=int, help="override the recipe's train.epochs")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                        help="override train.precision")
    parser.add_argument("--device", help="override train.device (auto, cpu, cuda)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workdir", type=Path, help="keep data and model here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = load_yaml(ROOT / "params.yaml")
    pairs: dict = {}
    name = "params.yaml only"
    if args.recipe != "none":
        recipe = load_recipe(args.recipe, ROOT)
        pairs.update(recipe["params"])
        name = f"{recipe['name']} v{recipe['version']}"
    pairs.update({"synthesize.image_size": args.size, "prepare.image_size": args.size})
    for key, value in (("synthesize.n_train", args.n_train), ("synthesize.n_valid", args.n_valid),
                       ("train.epochs", args.epochs), ("train.precision", args.precision),
                       ("train.device", args.device)):
        if value is not None:
            pairs[key] = value

    with tempfile.TemporaryDirectory(prefix="learn256-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pairs.update({"data.root": str(work / "MRNet-v1.0"), "synthesize.out": str(work),
                      "prepare.out": str(work / "prepared"), "train.out": str(work / "models")})
        params = params_from_dict(apply_overrides(raw, pairs))
        cfg = params.train_for(args.task)
        device = select_device(cfg.device)
        print(f"device: {device} ({platform.processor() or platform.machine()}), torch "
              f"{torch.__version__}, {torch.get_num_threads()} threads, precision "
              f"{'bf16' if use_bf16(cfg.precision, device) else 'fp32'}")
        print(f"recipe: {name}; {args.task}-{args.plane}; overrides "
              + " ".join(f"{k}={v}" for k, v in pairs.items() if not k.endswith((".out", "root"))))

        t0 = time.perf_counter()
        synth: SynthesizeConfig = params.synthesize
        generate(params.data.root, synth)
        prepare_plane(params.data.root, args.plane, params.prepare.out, params.prepare.image_size)
        t_data = time.perf_counter() - t0
        print(f"data: {synth.n_train} train / {synth.n_valid} valid phantoms, "
              f"{synth.slices_min}-{synth.slices_max} slices, {synth.image_size} px, written "
              f"and prepared in {t_data:.0f} s")

        clock = EpochClock()
        logging.getLogger("mrnet.core.trainer").addHandler(clock)
        logging.getLogger("mrnet.core.trainer").setLevel(logging.INFO)
        t1 = time.perf_counter()
        summary = train_model(params, args.task, args.plane, live_dir=False)
        t_train = time.perf_counter() - t1

        model, ckpt = load_checkpoint(Path(cfg.out) / f"{args.task}-{args.plane}.pt", device)
        history = ckpt["history"]
        starts = [t1] + clock.times[:-1]
        print("\n| epoch | train loss | train AUC | valid loss | valid AUC | s |")
        print("|---|---|---|---|---|---|")
        for row, start, end in zip(history, starts, clock.times):
            print(f"| {row['epoch']} | {row['train_loss']:.4f} | {row['train_auc']:.3f} | "
                  f"{row['val_loss']:.4f} | {row['val_auc']:.3f} | {end - start:.0f} |")

        valid = load_exam_set(params.prepare.out, params.data.root, args.plane, "valid",
                              args.task, device)
        train_labels = load_exam_set(params.prepare.out, params.data.root, args.plane, "train",
                                     args.task, torch.device("cpu")).labels.numpy()
        logits = exam_logits(model, valid, device)
        flat = constant_output_loss(train_labels)
        losses = np.array([row["train_loss"] for row in history])
        collapsed = output_collapsed(losses, logits, train_labels)
        print(f"\nconstant-output train loss {flat:.4f}; best model's valid logits: std "
              f"{logits.std():.4f}; collapsed to a constant output: {'yes' if collapsed else 'no'}")
        print(f"time: data {t_data:.0f} s, training {t_train:.0f} s "
              f"({t_train / max(1, len(history)):.0f} s/epoch incl. validation)")
        print(f"best valid AUC: {summary['val_auc']:.3f} (epoch {summary['best_epoch']})")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # e.g. a recipe with pretrained weights not in the torch cache
        sys.exit(f"error: {exc}")
