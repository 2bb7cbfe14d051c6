"""A DataLoader over :class:`~tora.data.clips.ClipBatches` that resumes mid-epoch exactly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from tora.data.clips import ClipBatches


class ResumableLoader(DataLoader):
    """Batches of one rank, epoch after epoch, with a position that survives a restart.

    Each ``iter()`` starts the next epoch (Lightning calls it once per epoch);
    ``state_dict()`` is ``{"seed", "epoch", "batches_read"}``, the stream seed, the
    epoch being read and the batches handed out of it. Lightning's fit loop saves
    the state of a stateful train loader in its checkpoints and, on resume, loads
    it before the first ``iter()``, which then re-creates the epoch's worker streams
    from the same seeds and drops the batches already trained on. The drop re-reads
    them (every worker stream, shuffle buffer and skip count must reach the same
    place); the next batch is the one the uninterrupted run took. Batches come from
    the workers in a fixed round-robin order, so the count on this rank fixes every
    worker's position, and all ranks read the same number of batches per epoch.

    Worker seeds are not used by the streams (their seeds are explicit); the
    loader's own generator keeps ``iter()`` from drawing on the global torch RNG
    the model trains with.
    """

    dataset: ClipBatches

    def __init__(self, dataset: ClipBatches, num_workers: int, pin_memory: bool):
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(dataset.seed),
        )
        self.epoch = -1
        self.batches_read = 0
        self._resume_at: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]  # torch types DataLoader.__iter__ as its own iterator class; Lightning only iterates it
        if self._resume_at is None:
            epoch, skip = self.epoch + 1, 0
        else:
            (epoch, skip), self._resume_at = self._resume_at, None
        self.epoch, self.batches_read = epoch, 0
        self.dataset.set_epoch(epoch)
        return self._batches(super().__iter__(), skip)

    def _batches(self, batches: Iterator[dict[str, Any]], skip: int) -> Iterator[dict[str, Any]]:
        for index, batch in enumerate(batches):
            if index >= skip:
                self.batches_read = index + 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.dataset.seed, "epoch": self.epoch, "batches_read": self.batches_read}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` was saved: the next ``iter()`` reads the rest of its
        epoch (or, if the epoch was finished, the next one) with its seed."""
        self.dataset.seed = state["seed"]
        epoch, read = state["epoch"], state["batches_read"]
        self._resume_at = (epoch + 1, 0) if read >= len(self) else (epoch, read)
