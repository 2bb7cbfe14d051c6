"""Optimiser + scheduler from Hydra partials, over the trainable parameters only."""

from __future__ import annotations

import hydra
import lightning as L
from omegaconf import DictConfig


def configure_optimizers(
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
