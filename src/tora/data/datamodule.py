"""WebDataset shards of the shard schema -> training batches (one LightningDataModule).

Each batch is a dict (see the project contracts):

- ``video`` float ``[B, 3, T, H, W]`` in [-1, 1]
- ``flow`` float ``[B, T-1, H, W, 2]`` forward flow in pixels of the output resolution
- ``tracks`` float ``[B, max_tracks, T, 2]`` and ``track_mask`` bool ``[B, max_tracks]``
- ``caption`` list[str], ``key`` list[str], ``fps`` float ``[B]``

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

**Bad data never stops an epoch and is never lost silently.** An unreadable or
truncated shard, or a sample that does not decode or follow the schema, is
skipped with a logged warning and counted in a :class:`DataIssueCounter`: one
row per DataLoader worker in shared memory, so counts made inside worker
processes are visible to the main process at once. ``datamodule.skipped`` sums
them as a loggable dict (``{"data/skipped_samples": n, ...}``, e.g. for
``self.log_dict(self.trainer.datamodule.skipped)``); the counts are events on
this rank since the DataModule was made: a bad sample read in two epochs
counts twice. Clips with
more than ``max_tracks`` tracks keep their first ``max_tracks`` and are counted
as ``data/clips_over_max_tracks``.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import random
import tarfile
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import braceexpand
import lightning as L
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from tora.data.schema import decode_sample
from tora.data.transforms import frame_window_start, resize_center_crop, take_frame_window

log = logging.getLogger(__name__)


class DataIssueCounter:
    """Counts of skipped shards and samples, shared between a DataLoader's workers.

    ``counts[row, field]`` lives in shared memory; row 0 is the main process
    (``num_workers=0``), row ``i + 1`` DataLoader worker ``i``, so no two
    processes ever write the same cell.
    """

    FIELDS = ("skipped_samples", "skipped_shards", "clips_over_max_tracks")

    def __init__(self, num_workers: int, shards: Sequence[str]):
        self.counts = torch.zeros(num_workers + 1, len(self.FIELDS), dtype=torch.int64)
        self.counts.share_memory_()
        self.shards = frozenset(shards)

    def add(self, field: str, count: int = 1) -> None:
        worker = get_worker_info()
        self.counts[0 if worker is None else worker.id + 1, self.FIELDS.index(field)] += count

    def totals(self) -> dict[str, int]:
        return dict(zip(self.FIELDS, self.counts.sum(dim=0).tolist(), strict=True))

    def shard_error(self, error: Exception) -> bool:
        """``WebDataset(handler=...)``: log, count and continue after a tar-reading error.

        webdataset appends the shard URL to errors that end a shard (open failure,
        truncated or corrupt tar); a failed member read inside a shard names the
        shard only in its message and is always followed by such an error, so it
        is logged but not counted twice. Other errors (e.g. a duplicate member
        name) lose one sample.
        """
        named = [*error.args[-1:], getattr(error, "filename", None)]
        shard = next(
            (name for name in named if isinstance(name, str) and name in self.shards), None
        )
        if shard is not None:
            log.warning("skipping the rest of shard %s: %r", shard, error)
            self.add("skipped_shards")
        elif any(name in str(error) for name in self.shards):
            log.warning("shard read error: %r", error)
        else:
            log.warning("skipping a sample: %r", error)
            self.add("skipped_samples")
        return True

    def sample_error(self, error: Exception) -> bool:
        """``.map(..., handler=...)``: log, count and continue after an undecodable sample."""
        log.warning("skipping a sample: %s", error)
        self.add("skipped_samples")
        return True


class ClipBatches(IterableDataset):
    """Exactly ``sum(worker_batches)`` collated batches per epoch for one rank.

    Iterated inside each DataLoader worker: worker ``i`` builds its own
    WebDataset pipeline seeded from the worker's ``random`` state (torch reseeds
    it every epoch from the main process generator, so ``seed_everything`` makes
    epochs reproducible) and yields ``worker_batches[i]`` batches.
    """

    def __init__(
        self,
        shards: list[str],
        *,
        worker_batches: list[int],
        batch_size: int,
        num_frames: int,
        resolution: tuple[int, int],
        max_tracks: int,
        rank: int,
        world_size: int,
        train: bool,
        resampled: bool,
        shard_shuffle: int,
        shuffle_buffer: int,
        counter: DataIssueCounter,
    ):
        super().__init__()
        self.shards = shards
        self.worker_batches = worker_batches
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.resolution = resolution
        self.max_tracks = max_tracks
        self.rank = rank
        self.world_size = world_size
        self.train = train
        self.resampled = resampled
        self.shard_shuffle = shard_shuffle
        self.shuffle_buffer = shuffle_buffer
        self.counter = counter

    def __len__(self) -> int:
        return sum(self.worker_batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        if num_workers != len(self.worker_batches):
            raise RuntimeError(
                f"ClipBatches planned for {len(self.worker_batches)} workers, "
                f"iterated by {num_workers}"
            )
        share = self.worker_batches[worker_id]
        if share == 0:
            return
        seed = random.randrange(2**32)
        samples = self.sample_pipeline(seed).with_epoch(share * self.batch_size)
        batches = wds.batched(self.batch_size, collation_fn=self.collate, partial=False)(samples)
        produced = 0
        for batch in batches:
            produced += 1
            yield batch
        if produced < share:
            raise RuntimeError(
                f"rank {self.rank} worker {worker_id}: a whole pass over its shards gave no "
                f"decodable sample ({produced} of {share} batches made); shards: {self.shards}"
            )

    def sample_pipeline(self, seed: int) -> wds.WebDataset:
        """Shards -> decoded, windowed, resized samples for this rank and worker."""
        split_shards = len(self.shards) >= self.world_size
        if self.resampled:
            nodesplitter = workersplitter = None
        else:
            nodesplitter = (
                functools.partial(split_by_rank, rank=self.rank, world_size=self.world_size)
                if split_shards
                else None
            )
            workersplitter = wds.split_by_worker
        # Without a per-rank shard split every rank must read the shards in one
        # order for the sample split to be disjoint, so they are not shuffled.
        shard_shuffle = (
            self.shard_shuffle if self.train and split_shards and not self.resampled else False
        )
        dataset = wds.WebDataset(
            self.shards,
            handler=self.counter.shard_error,
            resampled=self.resampled,
            shardshuffle=shard_shuffle,
            nodesplitter=nodesplitter,
            workersplitter=workersplitter,
            empty_check=False,
            seed=seed,
        )
        if not self.resampled and not split_shards:
            dataset = dataset.slice(self.rank, None, self.world_size)
        if self.train and self.shuffle_buffer > 1:
            dataset = dataset.shuffle(self.shuffle_buffer, seed=seed)
        generator = np.random.default_rng(seed) if self.train else None
        load = functools.partial(self.load_clip, generator=generator)
        return dataset.map(load, handler=self.counter.sample_error)

    def load_clip(
        self, raw: dict[str, Any], generator: np.random.Generator | None
    ) -> dict[str, Any]:
        """One WebDataset sample -> tensors at the configured length and resolution."""
        clip = decode_sample(raw)
        start = frame_window_start(len(clip.frames), self.num_frames, generator)
        frames, flow, tracks = take_frame_window(clip, start, self.num_frames)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        video, flow, tracks = resize_center_crop(
            video, torch.from_numpy(flow), torch.from_numpy(tracks), self.resolution
        )
        return {
            "video": (video / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3),
            "flow": flow,
            "tracks": tracks,
            "caption": clip.caption,
            "key": clip.key,
            "frame_start": start,  # with the key, identifies the clip (latent cache)
            "fps": clip.fps,
        }

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack samples; pad (or cut, counted) tracks to ``max_tracks`` with a mask."""
        tracks = torch.zeros(len(samples), self.max_tracks, self.num_frames, 2)
        track_mask = torch.zeros(len(samples), self.max_tracks, dtype=torch.bool)
        for index, sample in enumerate(samples):
            if len(sample["tracks"]) > self.max_tracks:
                self.counter.add("clips_over_max_tracks")
            kept = sample["tracks"][: self.max_tracks]
            tracks[index, : len(kept)] = kept
            track_mask[index, : len(kept)] = True
        return {
            "video": torch.stack([sample["video"] for sample in samples]),
            "flow": torch.stack([sample["flow"] for sample in samples]),
            "tracks": tracks,
            "track_mask": track_mask,
            "caption": [sample["caption"] for sample in samples],
            "key": [sample["key"] for sample in samples],
            "frame_start": torch.tensor([sample["frame_start"] for sample in samples]),
            "fps": torch.tensor([sample["fps"] for sample in samples], dtype=torch.float32),
        }


def split_in_proportion(total: int, weights: Sequence[int]) -> list[int]:
    """Non-negative integers summing to ``total`` in proportion to ``weights``
    (largest remainder; equal weights if all are zero)."""
    if sum(weights) == 0:
        weights = [1] * len(weights)
    exact = [total * weight / sum(weights) for weight in weights]
    shares = [int(value) for value in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: exact[i] - shares[i], reverse=True)
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    return shares


def split_by_rank(urls: Iterator[Any], rank: int, world_size: int) -> Iterator[Any]:
    """WebDataset node splitter for a rank fixed in the main process.

    ``wds.split_by_node`` asks torch.distributed for the rank inside the
    DataLoader worker, which answers rank 0 in workers that were spawned
    rather than forked (unless ``RANK`` is set in the environment).
    """
    yield from islice(urls, rank, None, world_size)


def expand_shards(pattern: str | Sequence[str], name: str) -> list[str]:
    """Brace patterns, globs or lists -> sorted shard paths (URLs are kept as they are)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    shards: list[str] = []
    for item in patterns:
        for path in braceexpand.braceexpand(str(item)):
            if "://" in path or path.startswith("pipe:"):
                shards.append(path)
            elif glob.has_magic(path):
                shards.extend(sorted(glob.glob(path)))
            elif os.path.exists(path):
                shards.append(path)
            else:
                raise FileNotFoundError(f"{name}: shard {path} does not exist")
    if not shards:
        raise FileNotFoundError(f"{name}: {pattern!r} matched no shards")
    return shards


def count_samples(shard: str) -> int | None:
    """Samples in a local tar shard, from its headers; None for a remote URL.

    A shard that cannot be read to the end counts the samples before the damage.
    """
    if "://" in shard or shard.startswith("pipe:"):
        return None
    keys = set()
    try:
        with tarfile.open(shard, "r:") as archive:
            for member in archive:
                prefix, _ = base_plus_ext(member.name)
                if member.isreg() and prefix is not None and not prefix.startswith("__"):
                    keys.add(prefix)
    except (tarfile.TarError, OSError) as error:
        log.warning("shard %s is damaged after %d samples: %r", shard, len(keys), error)
    return len(keys)


class ShardDataModule(L.LightningDataModule):
    """Train/val DataLoaders over WebDataset shards of the shard schema.

    Args:
        train_shards, val_shards: brace pattern, glob or list of shard paths/URLs
            (``val_shards=None``: no validation loader).
        resolution: output ``[H, W]``; clips are resized to cover it and centre-cropped.
        num_frames: clip length ``T = 4k + 1``; a window of ``T`` consecutive
            frames is taken (random start in training, centred in validation).
        frame_stride: only 1 (consecutive frames: the stored flow is frame to frame).
        shuffle_buffer: samples in the training shuffle buffer (0 or 1: no shuffle).
        shard_shuffle: shards in the training shard shuffle buffer (0: none).
        resampled: draw training shards with replacement, ``epoch_length``
            samples per epoch per rank (needed for remote shards, which cannot be counted).
        max_tracks: tracks per clip in a batch (padded with ``track_mask``).
        val_batches: cap on validation batches per rank (None: all full batches).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None,
        resolution: Sequence[int],
        num_frames: int,
        frame_stride: int = 1,
        batch_size: int = 2,
        num_workers: int = 2,
        shuffle_buffer: int = 64,
        shard_shuffle: int = 100,
        resampled: bool = False,
        epoch_length: int | None = None,
        max_tracks: int = 8,
        val_batches: int | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        if num_frames < 1 or (num_frames - 1) % 4:
            raise ValueError(
                f"data.num_frames: 4k+1 frames expected (the causal VAE), got {num_frames}"
            )
        if frame_stride != 1:
            raise ValueError(
                f"data.frame_stride: only 1 is supported (flow is stored frame to frame), "
                f"got {frame_stride}"
            )
        if len(resolution) != 2 or any(int(v) < 1 for v in resolution):
            raise ValueError(f"data.resolution: [H, W] positive expected, got {list(resolution)}")
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
        self._shards: dict[str, list[str]] = {}
        self._shard_sizes: dict[str, list[int | None]] = {}
        self._counters: list[DataIssueCounter] = []

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader | list:
        return self._dataloader("val") if self.val_shards is not None else []

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped shards/samples and over-long track lists so far, for ``log_dict``."""
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
            return self.epoch_length // self.batch_size
        sizes = self._split_shard_sizes(split)
        if None in sizes:
            if split == "val" and self.val_batches is not None:
                return self.val_batches
            raise ValueError(
                f"data.{split}_shards: remote shards cannot be counted; use resampled=true with "
                "epoch_length (train) or set val_batches (val)"
            )
        total = sum(sizes)
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

    def _dataloader(self, split: str) -> DataLoader:
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
        )
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=self.pin_memory,
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
