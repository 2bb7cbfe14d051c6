"""Optimiser + scheduler from Hydra partials, over the trainable parameters only."""

from __future__ import annotations

import logging
import math

import hydra
import lightning as L
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities.types import OptimizerConfig, OptimizerLRSchedulerConfig
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def build_optimizers(
    module: L.LightningModule, optimizer: DictConfig | dict, scheduler: DictConfig | dict | None
) -> OptimizerConfig | OptimizerLRSchedulerConfig:
    """``optimizer`` / ``scheduler`` are ``_partial_: true`` configs (lightning-hydra-template)."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__}: no trainable parameters to optimise")
    overrides = {}
    if optimizer.get("fused") and not fused_step_allowed(module):
        log.info(
            "optimizer: fused off (mixed precision with gradient clipping, which Lightning "
            "refuses for a fused optimizer); the per-tensor step computes the same update"
        )
        overrides["fused"] = False
    opt = hydra.utils.instantiate(optimizer)(params=params, **overrides)
    if not scheduler:
        return {"optimizer": opt}
    sched = hydra.utils.instantiate(scheduler)(optimizer=opt)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fused_step_allowed(module: L.LightningModule) -> bool:
    """Lightning's mixed-precision plugin refuses gradient clipping with an optimizer that
    unscales gradients itself, as a fused one does, even in bf16 where no scaler runs."""
    trainer = module._trainer  # None when the optimizer is built outside a fit
    return trainer is None or not (
        isinstance(trainer.precision_plugin, MixedPrecision) and trainer.gradient_clip_val
    )


class LinearWarmup:
    """``lr_lambda`` for LambdaLR: linear warm-up over ``warmup_steps``, then 1 (picklable)."""

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / max(1, self.warmup_steps))


class WarmupCosine:
    """``lr_lambda`` for LambdaLR: linear warm-up over ``warmup_steps``, then a
    half cosine from 1 down to ``min_ratio`` at ``total_steps`` (held there after)."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> None:
        if total_steps <= warmup_steps or not 0.0 <= min_ratio <= 1.0:
            raise ValueError(
                "WarmupCosine: total_steps > warmup_steps and 0 <= min_ratio <= 1 expected, got "
                f"warmup_steps={warmup_steps}, total_steps={total_steps}, min_ratio={min_ratio}"
            )
        self.warmup = LinearWarmup(warmup_steps)
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup(step)
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
