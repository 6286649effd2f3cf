"""Training throughput: our packed, in-memory training path against the original MRNet loop.

On synthetic exams of the real shape (uint8 (slices, size, size), random slice counts) it
times, in one run on one machine:

- reference: the loop of the public MRNet code (stanfordmlgroup / ahmedbesbes): a Dataset that
  ``np.load``s every exam from disk on every access, per-exam affine augmentation, scaling and
  normalisation on the CPU, slices repeated to 3 float32 channels, ``DataLoader(batch_size=1)``,
  one Adam step per exam;
- ours: :func:`mrnet.training.cnn.exam_epoch` (the core's ``train_one_epoch`` over the
  pipeline's exam batches) itself on the prepared uint8 cache
  (:func:`mrnet.data.prepare.prepare_split` + :func:`mrnet.training.cnn.load_exam_set`) with packed
  batches, device augmentation and the requested precision.

Each loop runs in a fresh process so that its peak resident memory (``getrusage``
``ru_maxrss``) is its own. The last line printed is ``speedup: N.NN`` (ours ÷ reference).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# tqdm reads TQDM_* variables when it is imported; progress bars would only add noise here.
os.environ.setdefault("TQDM_DISABLE", "1")

PROJECT = Path(__file__).resolve().parents[1]
if str(PROJECT) not in sys.path:  # run as a script from a checkout, the package not installed
    sys.path.insert(0, str(PROJECT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision.transforms.v2.functional as TF  # noqa: E402
from torch import nn  # noqa: E402

from mrnet.config import AugmentConfig, load_params
from mrnet.core.backbones import make_backbone, use_channels_last
from mrnet.core.errors import UserError  # noqa: E402
from mrnet.core.params import DEVICES, PRECISIONS
from mrnet.core.runtime import select_device, use_bf16, wants_channels_last
from mrnet.core.trainer import compute_pos_weight
from mrnet.core.weights import BACKBONES  # noqa: E402
from mrnet.data.prepare import prepare_split  # noqa: E402
from mrnet.data.reader import read_labels  # noqa: E402
from mrnet.model import PIXEL_MEAN, PIXEL_STD, MRNet, MRNetConfig
from mrnet.training.cnn import exam_epoch, load_exam_set  # noqa: E402

PLANE, SPLIT, TASK = "sagittal", "train", "acl"


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark child process needs (plain values: it crosses a process spawn)."""

    root: str
    prepared: str
    size: int
    backbone: str
    device: str
    exams_per_batch: int
    precision: str
    channels_last: bool
    compile: bool
    repeats: int
    warmup: int
    ref_workers: int
    seed: int
    augment: dict[str, float] = field(default_factory=lambda: asdict(AugmentConfig()))


# ---------------------------------------------------------------- synthetic data

def synthetic_exam(rng: np.random.Generator, slices: int, size: int) -> np.ndarray:
    """A uint8 (slices, size, size) volume: noisy background with one bright ellipsoid blob."""
    z, y, x = np.ogrid[:slices, :size, :size]
    cz, cy, cx = rng.uniform(0.3, 0.7, 3) * (slices, size, size)
    rz, ry, rx = rng.uniform(0.15, 0.35, 3) * (slices, size, size)
    inside = ((z - cz) / rz) ** 2 + ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    vol = rng.normal(rng.uniform(40, 80), rng.uniform(10, 25), (slices, size, size))
    vol += inside * rng.uniform(60, 140)
    return np.clip(vol, 0, 255).astype(np.uint8)


def write_dataset(root: Path, n: int, size: int, slices_min: int, slices_max: int,
                  seed: int) -> np.ndarray:
    """Write ``n`` exams of one plane and their labels in the MRNet-v1.0 layout.

    Returns:
        The slice count of each exam.
    """
    rng = np.random.default_rng(seed)
    folder = root / SPLIT / PLANE
    folder.mkdir(parents=True)
    counts = rng.integers(slices_min, slices_max + 1, n)
    labels = rng.permutation(np.arange(n) % 2)  # balanced, so the loss weight is 1
    for i, s in enumerate(counts):
        np.save(folder / f"{i:04d}.npy", synthetic_exam(rng, int(s), size))
    (root / f"{SPLIT}-{TASK}.csv").write_text(
        "".join(f"{i:04d},{int(y)}\n" for i, y in enumerate(labels)))
    return counts


# ---------------------------------------------------------------- the original loop

class ReferenceDataset(torch.utils.data.Dataset):
    """The public MRNet Dataset: every access reads the exam's .npy and preprocesses it on CPU."""

    def __init__(self, root: Path, augment: dict[str, float], seed: int) -> None:
        labels = read_labels(root / f"{SPLIT}-{TASK}.csv")
        self.paths = [root / SPLIT / PLANE / f"{c}.npy" for c in labels.index]
        self.labels = labels.tolist()
        self.aug = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        vol = torch.from_numpy(np.load(self.paths[index])).float()
        lo, hi = vol.min(), vol.max()
        vol = (vol - lo) / (hi - lo).clamp_min(1e-6) * 255.0
        # One affine per exam, applied to all its slices (torchsample's RandomRotate /
        # RandomTranslate / RandomFlip in the ahmedbesbes code).
        size = vol.shape[-1]
        t = self.aug["translation"] * size / 256
        angle = float(self.rng.uniform(-1, 1) * self.aug["rotation"])
        shift = [float(self.rng.uniform(-t, t)), float(self.rng.uniform(-t, t))]
        if self.rng.random() < self.aug["flip"]:
            vol = TF.horizontal_flip(vol)
        vol = TF.affine(vol, angle=angle, translate=shift, scale=1.0, shear=[0.0, 0.0],
                        interpolation=TF.InterpolationMode.BILINEAR)
        vol = (vol - PIXEL_MEAN) / PIXEL_STD
        vol = vol.unsqueeze(1).repeat(1, 3, 1, 1)  # np.stack((vol,) * 3, axis=1)
        return vol, torch.tensor([float(self.labels[index])])


class ReferenceMRNet(nn.Module):
    """The public MRNet module: AlexNet features, average pool, max over slices, linear."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.features, width = make_backbone(backbone)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.squeeze(x, dim=0)  # the DataLoader's batch of one exam
        feats = self.pool(self.features(x)).flatten(1)
        return self.classifier(torch.max(feats, 0, keepdim=True)[0])


def reference_epoch(model: nn.Module, loader: torch.utils.data.DataLoader,
                    optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    device: torch.device) -> None:
    """One epoch of the original loop: one exam per optimizer step."""
    model.train()
    for vol, label in loader:
        vol, label = vol.to(device), label.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(vol.float()), label)
        loss.backward()
        optimizer.step()
        loss.item()  # the original logs every step's loss, which synchronises


# ---------------------------------------------------------------- timing (in child processes)

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Any, n_exams: int, cfg: BenchConfig,
           device: torch.device) -> dict[str, list[float]]:
    """Time ``cfg.repeats`` epochs of ``run()`` after ``cfg.warmup`` untimed ones.

    Returns:
        {"rates": exams/s by the wall clock, "cpu": host CPU seconds per exam} of each epoch.
    """
    for _ in range(cfg.warmup):
        run()
    rates, cpu = [], []
    for _ in range(cfg.repeats):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        _sync(device)
        rates.append(n_exams / (time.perf_counter() - start))
        cpu.append((time.process_time() - start_cpu) / n_exams)
    return {"rates": rates, "cpu": cpu}


def _peaks(device: torch.device) -> dict[str, float | None]:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mib": rss_kib / 1024, "peak_gpu_mib": gpu}


def bench_reference(cfg: BenchConfig) -> dict[str, Any]:
    """Time the original loop (always float32, batch size 1, the model's default layout)."""
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = ReferenceMRNet(cfg.backbone).to(device)
    data = ReferenceDataset(Path(cfg.root), cfg.augment, cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=1, shuffle=True,
                                         num_workers=cfg.ref_workers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=0.01)
    pos = sum(data.labels)
    loss_fn = nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor([(len(data) - pos) / pos], device=device))
    times = _timed(lambda: reference_epoch(model, loader, optimizer, loss_fn, device),
                   len(data), cfg, device)
    return {**times, **_peaks(device)}


def bench_ours(cfg: BenchConfig) -> dict[str, Any]:
    """Time :func:`mrnet.training.cnn.exam_epoch` on the prepared cache, as the pipeline runs it."""
    device = select_device(cfg.device)
    bf16 = use_bf16(cfg.precision, device)
    data = load_exam_set(cfg.prepared, cfg.root, PLANE, SPLIT, TASK, device)
    torch.manual_seed(cfg.seed)
    model = MRNet(MRNetConfig(cfg.backbone)).to(device)
    if cfg.channels_last:
        use_channels_last(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=0.01)
    net = torch.compile(model) if cfg.compile else model
    pw = compute_pos_weight(data.labels.numpy())
    generator = torch.Generator().manual_seed(cfg.seed)
    aug = AugmentConfig(**cfg.augment)
    times = _timed(lambda: exam_epoch(net, data, optimizer, pw, cfg.exams_per_batch, aug,
                                           generator, device, bf16), len(data), cfg, device)
    return {**times, **_peaks(device)}


def in_fresh_process(fn: Any, cfg: BenchConfig) -> dict[str, Any]:
    """Run ``fn(cfg)`` in a new spawned process, so its peak memory is measured alone."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, cfg).result()


# ---------------------------------------------------------------- report

def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A readable name of ``device``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _row(name: str, result: dict[str, Any]) -> str:
    rates, gpu = result["rates"], result["peak_gpu_mib"]
    runs = " ".join(f"{r:.2f}" for r in rates)
    return (f"{name:<10} {statistics.median(rates):>8.2f}  {runs:<20} "
            f"{statistics.median(result['cpu']):>9.2f} {result['peak_rss_mib']:>8.0f} "
            f"{'-' if gpu is None else f'{gpu:.0f}':>8}")


def pipeline_defaults() -> dict[str, Any]:
    """Defaults from ./params.yaml when run from the project root, else the fallbacks."""
    defaults: dict[str, Any] = {"exams_per_batch": 8, "precision": "auto", "device": "auto",
                                "backbone": "alexnet", "augment": asdict(AugmentConfig())}
    if Path("params.yaml").is_file():
        params = load_params("params.yaml")
        defaults.update(exams_per_batch=params.train.exams_per_batch,
                        precision=params.train.precision, device=params.train.device,
                        backbone=params.model.backbone, augment=asdict(params.train.augment))
    return defaults


def parse_args(argv: list[str] | None, defaults: dict[str, Any]) -> argparse.Namespace:
    """Command-line flags; defaults of the training settings come from params.yaml."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="image size in pixels")
    p.add_argument("--slices-min", type=int, default=17, help="fewest slices of an exam")
    p.add_argument("--slices-max", type=int, default=61, help="most slices of an exam")
    p.add_argument("--backbone", default=defaults["backbone"],
                   choices=BACKBONES, help="CNN backbone of both loops")
    p.add_argument("--exams", type=int, default=8,
                   help="synthetic exams; each timed run is one epoch over them")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs before the timed ones")
    p.add_argument("--device", default=defaults["device"], choices=DEVICES,
                   help="device of both loops (auto: CUDA when present)")
    p.add_argument("--exams-per-batch", type=int, default=defaults["exams_per_batch"],
                   help="exams packed into one optimizer step (ours)")
    p.add_argument("--precision", default=defaults["precision"], choices=PRECISIONS,
                   help="autocast precision of ours (auto: bf16 on CUDA and on CPUs with bf16 "
                        "instructions); the reference is fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last weights for ours (default: as the pipeline, on under "
                        "bf16 or CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model of ours")
    p.add_argument("--ref-workers", type=int, default=0,
                   help="DataLoader worker processes of the reference")
    p.add_argument("--seed", type=int, default=0, help="seed of data, init and augmentation")
    args = p.parse_args(argv)
    if args.size < 64:
        p.error(f"--size must be at least 64 (AlexNet needs it), got {args.size}")
    if not 1 <= args.slices_min <= args.slices_max:
        p.error(f"need 1 <= --slices-min <= --slices-max, got {args.slices_min}, "
                f"{args.slices_max}")
    for name in ("exams", "repeats", "exams_per_batch"):
        if getattr(args, name) < (2 if name == "exams" else 1):
            p.error(f"--{name.replace('_', '-')} must be at least "
                    f"{2 if name == 'exams' else 1}, got {getattr(args, name)}")
    if args.warmup < 0 or args.ref_workers < 0:
        p.error("--warmup and --ref-workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Write the synthetic exams, time both loops, print the report."""
    try:
        defaults = pipeline_defaults()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, defaults)
    try:
        device = select_device(args.device, "--device")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bf16 = use_bf16(args.precision, device)
    if args.channels_last is None:
        args.channels_last = wants_channels_last(device, bf16)

    with tempfile.TemporaryDirectory(prefix="mrnet-bench-") as tmp:
        root, prepared = Path(tmp) / "MRNet-v1.0", Path(tmp) / "prepared"
        counts = write_dataset(root, args.exams, args.size, args.slices_min, args.slices_max,
                               args.seed)
        prepare_split(root, SPLIT, PLANE, prepared / PLANE, args.size)  # a pipeline stage, untimed
        cfg = BenchConfig(str(root), str(prepared), args.size, args.backbone, str(device),
                          args.exams_per_batch, args.precision, args.channels_last, args.compile,
                          args.repeats, args.warmup, args.ref_workers, args.seed,
                          defaults["augment"])
        print(f"device:    {device.type} ({device_name(device)}), torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"data:      {args.exams} synthetic exams, {args.size}x{args.size} px, "
              f"{counts.min()}-{counts.max()} slices (mean {counts.mean():.1f}), "
              f"{args.backbone}, random init")
        print("reference: np.load per exam, CPU affine + scaling per exam, 3-channel float32, "
              f"DataLoader(batch_size=1, num_workers={args.ref_workers}), fp32")
        print(f"ours:      train_one_epoch on the uint8 cache, {args.exams_per_batch} exams per "
              f"batch, device augmentation, {'bf16' if bf16 else 'fp32'}"
              f"{', channels_last' if args.channels_last else ''}"
              f"{', torch.compile' if args.compile else ''}")
        print(f"timing:    median of {args.repeats} epochs after {args.warmup} warm-up "
              "(wall clock); CPU s/ex = host CPU seconds per exam (process_time, all "
              "threads); RSS = peak host memory, getrusage ru_maxrss of each loop's own process")
        sys.stdout.flush()
        ref = in_fresh_process(bench_reference, cfg)
        ours = in_fresh_process(bench_ours, cfg)

    print(f"{'loop':<10} {'exams/s':>8}  {'runs (exams/s)':<20} {'CPU s/ex':>9} {'RSS MiB':>8} "
          f"{'GPU MiB':>8}")
    print(_row("reference", ref))
    print(_row("ours", ours))
    speedup = statistics.median(ours["rates"]) / statistics.median(ref["rates"])
    print(f"speedup: {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
