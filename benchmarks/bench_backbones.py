"""Time and memory per exam of each backbone: one training step (forward, backward, Adam).

    python benchmarks/bench_backbones.py [--size 256] [--slices 32] [--repeats 3] [--device cpu]

Each backbone runs in a freshly spawned process, so its peak host memory (ru_maxrss, which
includes the ~1 GiB of the torch import) is its own; on CUDA the peak GPU memory is printed
too. Random init, random uint8 slices: the figures are about cost, not accuracy.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mrnet.core.weights import BACKBONES  # noqa: E402
from mrnet.model import MRNet, MRNetConfig, normalize  # noqa: E402


def _one(backbone: str, size: int, slices: int, repeats: int, device: str, bf16: bool,
         queue: mp.Queue) -> None:
    dev = torch.device(device)
    torch.manual_seed(0)
    model = MRNet(MRNetConfig(backbone)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    counts = torch.tensor([slices], device=dev)
    x = normalize(torch.randint(0, 256, (slices, size, size), dtype=torch.uint8, device=dev),
                  counts)
    times = []
    for i in range(repeats + 1):  # the first step warms up allocators and kernels
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, counts).float().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    queue.put((statistics.median(times), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               gpu, model.width))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="slice size in px")
    parser.add_argument("--slices", type=int, default=32, help="slices per exam")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help="comma-separated subset of " + ", ".join(BACKBONES))
    args = parser.parse_args()
    names = args.backbones.split(",")
    for name in names:
        if name not in BACKBONES:
            parser.error(f"unknown backbone {name!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device is available")
    dev_name = (torch.cuda.get_device_name() if args.device == "cuda" else "cpu")
    print(f"device: {dev_name}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"one exam of {args.slices} slices at {args.size}x{args.size}, {args.precision}")
    print(f"{'backbone':<12} {'width':>5} {'s/exam':>8} {'RSS MiB':>8} {'GPU MiB':>8}")
    ctx = mp.get_context("spawn")
    for name in names:
        queue = ctx.Queue()
        proc = ctx.Process(target=_one, args=(name, args.size, args.slices, args.repeats,
                                              args.device, args.precision == "bf16", queue))
        proc.start()
        sec, rss, gpu, width = queue.get()
        proc.join()
        gpu_text = f"{gpu:8.0f}" if gpu is not None else f"{'-':>8}"
        print(f"{name:<12} {width:>5} {sec:8.3f} {rss:8.0f} {gpu_text}")


if __name__ == "__main__":
    main()
