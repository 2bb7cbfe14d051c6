"""Optimiser + scheduler from Hydra partials, over the trainable parameters only."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig


def build_optimizers(
    module: L.LightningModule, optimizer: DictConfig | dict, scheduler: DictConfig | dict | None
) -> dict:
    """``optimizer`` / ``scheduler`` are ``_partial_: true`` configs (lightning-hydra-template)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__}: no trainable parameters to optimise")
    opt = hydra.utils.instantiate(optimizer)(params=params)
    if not scheduler:
        return {"optimizer": opt}
    sched = hydra.utils.instantiate(scheduler)(optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LinearWarmup:
    """``lr_lambda`` for LambdaLR: linear warm-up over ``warmup_steps``, then 1 (picklable)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / max(1, self.warmup_steps))
