"""Data parallelism on CPU: 2 gloo processes × 1 exam equal 1 process × 2 exams per step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mrnet.config import AugmentConfig
from mrnet.core.packed import PackedSet
from mrnet.model import MRNet
from mrnet.training.cnn import exam_epoch

pytestmark = [pytest.mark.slow]

N_EXAMS = 4


def _exams() -> PackedSet:
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 2, 4, 3])
    slices = torch.randint(0, 256, (int(counts.sum()), 64, 64), generator=g, dtype=torch.uint8)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    return PackedSet(slices, offsets, counts, [f"{i:04d}" for i in range(N_EXAMS)],
                   torch.tensor([1.0, 0.0, 0.0, 1.0]))


def _train(exams_per_batch: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = MRNet()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # 2 epochs × 2 steps
        exam_epoch(net, _exams(), opt, 1.0, exams_per_batch, AugmentConfig(), gen,
                        torch.device("cpu"), rank=rank, world=world)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        state = _train(1, rank, world)
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_with_double_batch(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    ddp = torch.load(out, weights_only=True)
    single = _train(2)
    init = _init_state()
    moved = False
    for k in single:
        assert torch.allclose(ddp[k], single[k], atol=1e-5, rtol=1e-4), k
        moved |= not torch.allclose(single[k], init[k])
    assert moved  # the comparison is between trained weights, not two untouched inits


def _init_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return MRNet().state_dict()
