"""Training checkpoint files on disk: written whole or not at all, and a resume
that skips a truncated ``last.ckpt`` for the newest checkpoint that still reads."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<path>.tmp`` next to ``path`` and renames it into place.

    Lightning's own save stages the file in ``$TMPDIR`` and moves it: a copy, not
    a rename, when ``$TMPDIR`` is another filesystem, and a kill mid-save leaves a
    checkpoint-sized orphan there. Here a kill leaves at most ``<path>.tmp``, which
    the next save of the same name overwrites; a failed write removes it.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"AtomicCheckpointIO: storage_options are not supported, got {storage_options!r}"
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)


def read_error(path: Path, training_state: bool = False) -> str | None:
    """Why the file ``path`` cannot be resumed from (truncated, not a checkpoint, and
    with ``training_state`` an export without optimizer state), or None."""
    try:
        # The resume loads with weights_only too; mmap leaves the tensors on disk.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    if training_state and "optimizer_states" not in checkpoint:
        return "weights only, no optimizer state"
    return None


def resume_checkpoint(ckpt_path: str | None, trainer: L.Trainer) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from, given the config's ``ckpt_path``.

    ``last`` names ``last.ckpt`` in the ModelCheckpoint folder (none there: a fresh
    start, as Lightning does). A file that exists but does not read is replaced by
    the newest readable training checkpoint (not an export) among the ``*.ckpt`` in
    its folder, with a warning naming both; a missing file, or none readable, is an
    error. Lightning's other special values (``hpc``, ``best``) pass through.
    """
    if ckpt_path is None or ckpt_path in ("hpc", "best"):
        return ckpt_path
    if ckpt_path == "last":
        checkpoint_callback = trainer.checkpoint_callback
        if (
            not isinstance(checkpoint_callback, ModelCheckpoint)
            or checkpoint_callback.dirpath is None
        ):
            raise ValueError(
                "ckpt_path=last: no ModelCheckpoint callback with a dirpath configured"
            )
        path = Path(checkpoint_callback.dirpath) / LAST
        if not path.exists():
            log.warning("ckpt_path=last: no %s yet, training from the start", path)
            return None
    else:
        path = Path(ckpt_path)
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint")
    if path.is_dir():
        # A DeepSpeed checkpoint is a folder of shards; its engine checks them on load.
        return str(path)
    error = read_error(path)
    if error is None:
        return str(path)
    others = sorted(
        (p for p in path.parent.glob("*" + ModelCheckpoint.FILE_EXTENSION) if p != path),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for other in others:
        if read_error(other, training_state=True) is None:
            log.warning(
                "checkpoint %s does not read (%s); resuming from %s, the newest readable "
                "checkpoint in %s",
                path,
                error,
                other,
                path.parent,
            )
            return str(other)
    raise FileNotFoundError(
        f"ckpt_path={ckpt_path}: {path} does not read ({error}) and no other readable "
        f"training checkpoint in {path.parent} (tried {[p.name for p in others]})"
    )
