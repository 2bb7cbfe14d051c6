"""Small helpers shared by the Hydra entry points: instantiating callback and
logger groups, printing the config, summarising a run."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from torch import nn

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None, kind: str) -> list:
    if not group:
        return []
    objects = []
    for name, node in group.items():
        if node is None:  # switched off with `callbacks.<name>=null`
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(f"{kind} {name!r}: a config with _target_ expected, got {node!r}")
        objects.append(hydra.utils.instantiate(node))
    return objects


def instantiate_callbacks(group: DictConfig | None) -> list[Callback]:
    return _instantiate_group(group, "callback")


def instantiate_loggers(group: DictConfig | None) -> list[Logger] | bool:
    loggers = _instantiate_group(group, "logger")
    return loggers if loggers else False


def print_config(cfg: DictConfig) -> None:
    yaml = OmegaConf.to_yaml(cfg, resolve=False)
    Console().print(Syntax(yaml, "yaml", theme="ansi_dark", line_numbers=False))


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and frozen parameter counts of a module."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def log_run_summary(
    trainer: L.Trainer,
    model: L.LightningModule,
    datamodule: L.LightningDataModule,
    metrics: dict[str, float],
) -> None:
    """Print a table of the final metrics, parameter counts and the rows of callbacks
    that have a ``run_summary()`` (e.g. the skipped-data totals of ``DataHealth``)."""
    if not trainer.is_global_zero:
        return
    table = Table(title="run summary")
    table.add_column("name")
    table.add_column("value", justify="right")
    for name, value in parameter_counts(model).items():
        table.add_row(f"params/{name}", f"{value:,}")
    # Set by Lightning's callback connector, not declared on Trainer. e.g. DataHealth:
    # skipped data, all ranks.
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if hasattr(callback, "run_summary"):
            for name, value in callback.run_summary().items():
                table.add_row(name, f"{value}")
    for name, metric in sorted(metrics.items()):
        table.add_row(name, f"{metric:.5g}")
    table.add_row("global_step", str(trainer.global_step))
    Console().print(table)
