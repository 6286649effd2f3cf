"""Where and how a model runs: the device, the precision (bf16 autocast or float32) and the
memory layout, chosen the same way for training, extraction and prediction."""

from __future__ import annotations

import contextlib

import torch

from mrnet.core.backbones import use_channels_last
from mrnet.core.errors import UserError


def select_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a user error.

    Args:
        key: the params key or command-line option ``name`` came from, named in the error.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA device is available "
                        f"(set {key} to auto or cpu)")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), where bf16 convolutions
    run about twice as fast as float32; elsewhere bf16 is emulated and slower."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for ``precision``; ``auto`` means bf16 where the hardware has it (CUDA
    with bf16, or a CPU with native bf16 instructions), float32 elsewhere."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and cpu_has_bf16()
    return precision == "bf16"


def wants_channels_last(device: torch.device, bf16: bool) -> bool:
    """channels_last on CUDA and under bf16, where it speeds convolutions up; fp32 on CPU keeps
    the default layout (its convolutions gain little from it)."""
    return device.type == "cuda" or bf16


@contextlib.contextmanager
def cpu_threads(n: int):
    """torch's intra-op CPU threads set to ``n`` inside the block (0: leave them as they are),
    restored after it."""
    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fast_layout(model: torch.nn.Module, device: torch.device, bf16: bool) -> torch.nn.Module:
    """The model in the memory layout the pipeline trains and evaluates it in."""
    if wants_channels_last(device, bf16):
        use_channels_last(model)
    return model


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when asked for, else a no-op."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
