"""WebDataset shards of the shard schema -> training batches (one LightningDataModule).

Each batch is a dict:

- ``video`` float ``[B, 3, T, H, W]`` in [-1, 1]
- ``flow`` float ``[B, T-1, H, W, 2]`` forward flow in pixels of the output resolution
- ``tracks`` float ``[B, max_tracks, T, 2]`` and ``track_mask`` bool ``[B, max_tracks]``
- ``caption`` list[str], ``key`` list[str], ``fps`` float ``[B]``
- ``frame_start`` int ``[B]``: the window's first frame in the stored clip
  (with ``key`` it identifies the clip, e.g. for the latent cache)

**Equal batch counts on every rank.** Every rank yields exactly ``num_batches``
batches per epoch, split over its DataLoader workers, so DDP never waits on a
rank that ran out of data:

- ``resampled=True``: shards are drawn with replacement (``WebDataset(resampled=True)``)
  and ``num_batches = epoch_length // batch_size``.
- ``resampled=False``: the samples of every (local) shard are counted from the
  tar headers (once, when the first loader is made) and
  ``num_batches = total // world_size // batch_size`` (for validation capped by
  ``val_batches``). A rank reads its own shards (``shards[rank::world_size]``),
  or, when there are fewer shards than ranks, all shards keeping every
  ``world_size``-th sample. The rank's batches are split over its workers in
  proportion to the samples in each worker's shards, and each worker repeats
  its stream (``.with_epoch``) until it has made its share, so uneven shards and
  skipped samples never shorten an epoch; a rank whose shards hold more
  samples than its share leaves the rest for a later epoch.

**Reproducible and resumable.** The batches of an epoch depend only on
``seed``, the epoch, the rank and the worker (:func:`~tora.data.clips.stream_seed`),
and every loader is a :class:`~tora.data.loader.ResumableLoader`: the train
loader's seed, epoch and batches read go into Lightning checkpoints, and a run
resumed from one continues with the batch the uninterrupted run would have taken.

**Bad data never stops an epoch and is never lost silently.** An unreadable or
truncated shard, a sample that does not decode or follow the schema, or one
with a track point more than half a pixel outside the video (the points
``tora.sample`` refuses) is skipped with a logged warning and counted per reason
in a :class:`~tora.data.issues.DataIssueCounter`: one row per DataLoader worker
in shared memory, so counts made inside worker processes are visible to the main
process at once. ``datamodule.skipped`` sums them over this rank's loaders as a
loggable dict (``{"data/skipped_bad_samples": n, ...}``); the counts are events
since the DataModule was made: a bad sample read in two epochs counts twice.
Clips with more than ``max_tracks`` tracks keep their first ``max_tracks`` and
are counted as ``data/clips_over_max_tracks``. During training
:class:`tora.training.data_health.DataHealth` logs the counts summed over ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import lightning as L
import numpy as np
import torch

from tora.data.clips import ClipBatches
from tora.data.issues import DataIssueCounter
from tora.data.loader import ResumableLoader
from tora.data.shards import count_samples, expand_shards, split_in_proportion

log = logging.getLogger(__name__)


class ShardDataModule(L.LightningDataModule):
    """Train/val DataLoaders over WebDataset shards of the shard schema.

    Args:
        train_shards, val_shards: brace pattern, glob or list of shard paths/URLs
            (``val_shards=None``: no validation loader).
        resolution: output ``[H, W]``; clips are resized to cover it and centre-cropped.
        num_frames: clip length ``T = 4k + 1``; a window of ``T`` consecutive
            frames is taken (random start in training, centred in validation).
        shuffle_buffer: samples in the training shuffle buffer (0 or 1: no shuffle).
        shard_shuffle: shards in the training shard shuffle buffer (0: none).
        resampled: draw training shards with replacement, ``epoch_length``
            samples per epoch per rank (needed for remote shards, which cannot be counted).
        max_tracks: tracks per clip in a batch (padded with ``track_mask``).
        val_batches: cap on validation batches per rank (None: all full batches).
        seed: seed of the sample streams (shard and sample order, frame windows) of
            every epoch, rank and worker (None: a fresh one, kept in checkpoints).
        buckets: ``[[H, W], ...]``: each clip is resized and cropped to the bucket nearest
            its aspect ratio instead of ``resolution`` (:mod:`tora.data.buckets`), and each
            batch holds clips of one bucket (None: every clip at ``resolution``).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None,
        resolution: Sequence[int],
        num_frames: int,
        batch_size: int = 2,
        num_workers: int = 2,
        shuffle_buffer: int = 64,
        shard_shuffle: int = 100,
        resampled: bool = False,
        epoch_length: int | None = None,
        max_tracks: int = 8,
        val_batches: int | None = None,
        pin_memory: bool = False,
        seed: int | None = None,
        buckets: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        # Which frame counts work is the VAE's rule, checked by the model before training.
        if num_frames < 1:
            raise ValueError(f"data.num_frames: a positive frame count expected, got {num_frames}")
        if len(resolution) != 2 or any(int(v) < 1 for v in resolution):
            raise ValueError(f"data.resolution: [H, W] positive expected, got {list(resolution)}")
        if buckets is not None and (
            not buckets or any(len(b) != 2 or int(min(b)) < 1 for b in buckets)
        ):
            raise ValueError(f"data.buckets: a list of [H, W] positive expected, got {buckets}")
        if batch_size < 1 or num_workers < 0 or max_tracks < 0:
            raise ValueError(
                "data.batch_size >= 1, data.num_workers >= 0 and data.max_tracks >= 0 expected, "
                f"got {batch_size}, {num_workers}, {max_tracks}"
            )
        if resampled and (epoch_length is None or epoch_length < batch_size):
            raise ValueError(
                f"data.epoch_length: samples per epoch per rank >= batch_size ({batch_size}) "
                f"expected with resampled=true, got {epoch_length}"
            )
        self.save_hyperparameters(logger=False)
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.buckets = [(int(h), int(w)) for h, w in buckets] if buckets else None
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.shard_shuffle = shard_shuffle
        self.resampled = resampled
        self.epoch_length = epoch_length
        self.max_tracks = max_tracks
        self.val_batches = val_batches
        self.pin_memory = pin_memory
        # SeedSequence() draws its entropy as one int (typed int | Sequence[int] | None).
        self.seed = (
            int(cast(int, np.random.SeedSequence().entropy) % 2**32) if seed is None else seed
        )
        self._shards: dict[str, list[str]] = {}
        self._shard_sizes: dict[str, list[int | None]] = {}
        self._counters: list[DataIssueCounter] = []

    def train_dataloader(self) -> ResumableLoader:
        return self._dataloader("train")

    def val_dataloader(self) -> ResumableLoader | list:
        return self._dataloader("val") if self.val_shards is not None else []

    @property
    def skipped(self) -> dict[str, int]:
        """This rank's skipped shards/samples per reason and over-long track lists so far."""
        totals = dict.fromkeys(DataIssueCounter.FIELDS, 0)
        for counter in self._counters:
            for field, count in counter.totals().items():
                totals[field] += count
        return {f"data/{field}": count for field, count in totals.items()}

    def num_batches(self, split: str) -> int:
        """Batches per epoch per rank for ``split`` ("train" or "val")."""
        _, world_size = self._rank_and_world_size()
        shards = self._split_shards(split)
        if split == "train" and self.resampled:
            assert self.epoch_length is not None  # required with resampled (__init__)
            return self.epoch_length // self.batch_size
        sizes = self._split_shard_sizes(split)
        if None in sizes:
            if split == "val" and self.val_batches is not None:
                return self.val_batches
            raise ValueError(
                f"data.{split}_shards: remote shards cannot be counted; use resampled=true with "
                "epoch_length (train) or set val_batches (val)"
            )
        total = sum(cast(list[int], sizes))  # no None left (checked above)
        batches = total // world_size // self.batch_size
        if batches == 0:
            raise ValueError(
                f"data.{split}_shards: {total} samples in {len(shards)} shards make no full batch "
                f"of {self.batch_size} on each of {world_size} ranks"
            )
        if split == "val" and self.val_batches is not None:
            batches = min(batches, self.val_batches)
        return batches

    def _split_shards(self, split: str) -> list[str]:
        if split not in self._shards:
            pattern = self.train_shards if split == "train" else self.val_shards
            if pattern is None:
                raise ValueError(f"data.{split}_shards: none configured")
            self._shards[split] = expand_shards(pattern, f"data.{split}_shards")
        return self._shards[split]

    def _split_shard_sizes(self, split: str) -> list[int | None]:
        if split not in self._shard_sizes:
            self._shard_sizes[split] = [count_samples(shard) for shard in self._split_shards(split)]
        return self._shard_sizes[split]

    def _worker_batches(
        self, split: str, num_batches: int, num_workers: int, resampled: bool
    ) -> list[int]:
        """This rank's batches per DataLoader worker, in proportion to the samples
        each worker reads (the worker split of ``wds.split_by_worker``)."""
        workers = max(num_workers, 1)
        if resampled:
            return split_in_proportion(num_batches, [1] * workers)
        rank, world_size = self._rank_and_world_size()
        sizes = self._split_shard_sizes(split)
        if len(sizes) >= world_size:
            sizes = sizes[rank::world_size]
        available = [sum(size or 0 for size in sizes[worker::workers]) for worker in range(workers)]
        return split_in_proportion(num_batches, available)

    def _dataloader(self, split: str) -> ResumableLoader:
        rank, world_size = self._rank_and_world_size()
        shards = self._split_shards(split)
        resampled = self.resampled and split == "train"
        if resampled:
            num_workers = self.num_workers
        else:
            # Every worker needs at least one shard of its own to fill its share.
            shards_per_rank = (
                len(shards) // world_size if len(shards) >= world_size else len(shards)
            )
            num_workers = min(self.num_workers, shards_per_rank)
            if num_workers < self.num_workers:
                log.warning(
                    "data.%s_shards: %d shards for %d ranks; using %d DataLoader workers "
                    "instead of %d",
                    split,
                    len(shards),
                    world_size,
                    num_workers,
                    self.num_workers,
                )
        counter = DataIssueCounter(num_workers, shards)
        self._counters.append(counter)
        dataset = ClipBatches(
            shards,
            worker_batches=self._worker_batches(
                split, self.num_batches(split), num_workers, resampled
            ),
            batch_size=self.batch_size,
            num_frames=self.num_frames,
            resolution=self.resolution,
            max_tracks=self.max_tracks,
            rank=rank,
            world_size=world_size,
            train=split == "train",
            resampled=resampled,
            shard_shuffle=self.shard_shuffle,
            shuffle_buffer=self.shuffle_buffer,
            counter=counter,
            seed=self.seed,
            buckets=self.buckets,
        )
        return ResumableLoader(dataset, num_workers, self.pin_memory)

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
