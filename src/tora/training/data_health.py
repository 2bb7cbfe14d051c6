"""Skipped training data made visible: the DataModule's skip counts in the loggers and run log."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class DataHealth(Callback):
    """Logs ``trainer.datamodule.skipped`` (counts per reason, e.g.
    ``data/skipped_bad_samples``) summed over ranks and DataLoader workers, every
    ``every_n_steps`` optimizer steps and when training ends, with a warning in the
    run log whenever a count grew; :meth:`run_summary` gives the latest totals.

    The counts are cumulative events since training started, carried over a resume
    by the checkpoint (a bad sample read in two epochs counts twice), as read by
    the loaders, which may run a few batches ahead of the step. A DataModule
    without ``skipped`` is ignored.
    """

    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 1:
            raise ValueError(
                f"callbacks.data_health.every_n_steps: >= 1 expected, got {every_n_steps}"
            )
        self.every_n_steps = every_n_steps
        self.totals: dict[str, int] = {}
        self._resumed_totals: dict[str, int] = {}
        self._reported_step = -1

    def state_dict(self) -> dict[str, Any]:
        return {"totals": dict(self.totals)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_totals = dict(state_dict["totals"])
        self.totals = dict(self._resumed_totals)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._reported_step:
            self.report(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report(trainer)

    def report(self, trainer: L.Trainer) -> None:
        """Sum the counts over ranks (a collective: every rank calls it at the same step)
        and log them on rank 0."""
        local = getattr(trainer.datamodule, "skipped", None)  # type: ignore[attr-defined]  # Lightning sets Trainer.datamodule in its DataConnector, undeclared on the class
        if local is None:
            return
        names = sorted(local)
        counts = torch.tensor([local[name] for name in names], device=trainer.strategy.root_device)
        summed = trainer.strategy.reduce(counts, reduce_op="sum")
        totals = {
            name: count + self._resumed_totals.get(name, 0)
            for name, count in zip(names, summed.tolist(), strict=True)
        }
        if trainer.global_step == self._reported_step and totals == self.totals:
            return
        self._reported_step = trainer.global_step
        grew = any(count > self.totals.get(name, 0) for name, count in totals.items())
        self.totals = totals
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(totals, step=trainer.global_step)
        if grew:
            issues = ", ".join(f"{name}={count}" for name, count in totals.items() if count)
            log.warning("data issues by step %d, all ranks: %s", trainer.global_step, issues)

    def run_summary(self) -> dict[str, int]:
        """The latest totals, for the run summary table."""
        return dict(self.totals)
