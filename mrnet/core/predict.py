"""The one prediction loop: a model's outputs over batches of inputs, in eval mode, in order.

Training selects on it, the extract stages and every command that scores new cases call it;
it holds no training code.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mrnet.core.runtime import autocast


def n_batches(n: int, per_batch: int) -> int:
    """Batches of at most ``per_batch`` over ``n`` cases."""
    return -(-n // max(1, per_batch))


def iterate_batches(n: int, per_batch: int) -> list[torch.Tensor]:
    """Consecutive index batches over ``n`` cases, in order (evaluation never shuffles)."""
    return list(torch.arange(n).split(max(1, per_batch)))


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[tuple], device: torch.device,
            bf16: bool = False, desc: str | None = None,
            total: int | None = None) -> np.ndarray:
    """The model's float outputs over ``batches`` of inputs (``model(*inputs)``), concatenated
    in order, in eval mode and without augmentation."""
    model.eval()
    out = []
    if desc:
        batches = tqdm(batches, desc=desc, total=total, unit="batch", leave=False)
    for inputs in batches:
        with autocast(device, bf16):
            out.append(model(*inputs).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
