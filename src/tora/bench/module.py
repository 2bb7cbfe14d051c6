"""The benchmarked training config and the one place the bench builds its module."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from tora.train import instantiate_module, resolved
from tora.training.diffusion_module import VideoDiffusionModule
from tora.utils.config import CONFIG_DIR


def compose_train_config(experiment: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """``configs/train.yaml`` with ``experiment=...`` and ``overrides``, resolved.

    The bench writes nothing through the training run's paths; pointing them at
    its own output folder lets the config resolve outside a Hydra run too.
    """
    overrides = [
        f"experiment={experiment}",
        f"paths.output_dir={run_dir}",
        f"paths.work_dir={run_dir}",
        *overrides,
    ]
    if GlobalHydra.instance().is_initialized():
        return resolved(hydra.compose("train", overrides=overrides))
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return resolved(hydra.compose("train", overrides=overrides))


def build_module(
    train_cfg: DictConfig, device: torch.device
) -> tuple[VideoDiffusionModule, torch.optim.Optimizer]:
    """The configured LightningModule in training mode and its optimiser (scheduler ignored)."""
    module = instantiate_module(train_cfg.model)
    if not isinstance(module, VideoDiffusionModule):
        raise TypeError(
            f"bench: a VideoDiffusionModule expected (experiment stage1_flow, stage2_traj, "
            f"base_t2v, ...), the config builds {type(module).__name__}"
        )
    module.to(device).train()
    return module, module.configure_optimizers()["optimizer"]
