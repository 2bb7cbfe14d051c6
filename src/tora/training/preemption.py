"""A SIGTERM'd run (SLURM preemption or time limit, ``kill``) saves ``last.ckpt`` and
exits with 143, so Make and SLURM see a failure and the run resumes where it stopped.

Lightning turns SIGTERM into ``SIGTERMException`` (a ``SystemExit`` with status 0)
at the end of the running step; :class:`SigtermCheckpoint` saves on it, and
``tora.train`` turns it into :data:`SIGTERM_EXIT_CODE`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

# The shell's status for a process ended by SIGTERM.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


class SigtermCheckpoint(Callback):
    """Saves ``last.ckpt`` in the ModelCheckpoint folder when fitting stops on SIGTERM."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.checkpoint_callback, ModelCheckpoint):
            raise ValueError(
                "callbacks.sigterm_checkpoint: a ModelCheckpoint callback expected "
                "(its folder receives last.ckpt), none configured"
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        checkpoint_callback = trainer.checkpoint_callback
        # setup checked the type; ModelCheckpoint.setup resolves dirpath before fitting.
        assert isinstance(checkpoint_callback, ModelCheckpoint)
        assert checkpoint_callback.dirpath is not None
        name = checkpoint_callback.CHECKPOINT_NAME_LAST + checkpoint_callback.FILE_EXTENSION
        path = Path(checkpoint_callback.dirpath) / name
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            log.warning(
                "interrupted at step %d, resume with ckpt_path=%s", trainer.global_step, path
            )
