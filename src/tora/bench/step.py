"""One training step as the bench runs it: forward under the training precision,
backward, optimiser step; and the device synchronisation around timed work."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from tora.training.diffusion_module import VideoDiffusionModule

# Training precision -> the dtype of the matmul peak it is compared with.
PRECISION_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16}


def check_precision(precision: object, name: str) -> str:
    precision = str(precision)
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"{name}: one of {tuple(PRECISION_DTYPES)} expected, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_loss(module: VideoDiffusionModule, batch: dict, precision: str) -> torch.Tensor:
    device = batch["video"].device
    with autocast(device, precision):
        return module.model_step(batch)["loss"].mean()


def apply_gradients(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
