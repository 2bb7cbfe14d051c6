"""One rank's training or validation batches: WebDataset pipelines inside DataLoader workers."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from tora.data.buckets import batches_by_size, nearest_bucket
from tora.data.issues import DataIssueCounter
from tora.data.schema import decode_sample
from tora.data.shards import split_by_rank
from tora.data.transforms import frame_window_start, resize_center_crop, take_frame_window


def stream_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The seed of one worker's sample stream in one epoch (shard and sample
    shuffles, frame windows): a function of these four numbers only."""
    return int(np.random.SeedSequence([seed, epoch, rank, worker]).generate_state(1)[0])


class ClipBatches(IterableDataset):
    """Exactly ``sum(worker_batches)`` collated batches per epoch for one rank.

    Iterated inside each DataLoader worker: worker ``i`` builds its own
    WebDataset pipeline seeded by :func:`stream_seed` from ``seed``, the epoch,
    the rank and ``i``, and yields ``worker_batches[i]`` batches, so an epoch's
    batches are the same in every run with the same seed. The epoch lives in
    shared memory: :meth:`set_epoch` in the main process reaches persistent
    workers before their next pass.
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
        seed: int,
        buckets: list[tuple[int, int]] | None = None,
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
        self.seed = seed
        self.buckets = buckets
        self.epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.epoch.fill_(epoch)

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
        seed = stream_seed(self.seed, int(self.epoch), self.rank, worker_id)
        if self.buckets:
            # Enough samples that, however they fall into the buckets, ``share`` fill up.
            spare = (len(self.buckets) - 1) * (self.batch_size - 1)
            samples = self.sample_pipeline(seed).with_epoch(share * self.batch_size + spare)
            batches = itertools.islice(
                batches_by_size(samples, self.batch_size, self.collate), share
            )
        else:
            samples = self.sample_pipeline(seed).with_epoch(share * self.batch_size)
            batches = wds.batched(self.batch_size, collation_fn=self.collate, partial=False)(
                samples
            )
        produced = 0
        for batch in batches:
            produced += 1
            yield batch
        if produced < share:
            raise RuntimeError(
                f"rank {self.rank} worker {worker_id}: a whole pass over its shards gave no "
                f"decodable sample ({produced} of {share} batches made); shards: {self.shards}"
            )

    def sample_pipeline(self, seed: int) -> wds.DataPipeline:
        """Shards -> decoded, windowed, resized samples for this rank and worker."""
        split_shards = len(self.shards) >= self.world_size
        if self.resampled:
            stages = [wds.ResampledShards(self.shards, seed=seed, deterministic=True)]
        else:
            stages = [wds.SimpleShardList(self.shards)]
            if split_shards:
                stages.append(
                    functools.partial(split_by_rank, rank=self.rank, world_size=self.world_size)
                )
            stages.append(wds.split_by_worker)
            # Without a per-rank shard split every rank must read the shards in one
            # order for the sample split to be disjoint, so they are not shuffled.
            if self.train and split_shards and self.shard_shuffle > 1:
                stages.append(wds.shuffle(self.shard_shuffle, seed=seed))
        stages.append(wds.tarfile_to_samples(handler=self.counter.shard_error))
        if not self.resampled and not split_shards:
            stages.append(wds.slice(self.rank, None, self.world_size))
        if self.train and self.shuffle_buffer > 1:
            stages.append(wds.shuffle(self.shuffle_buffer, seed=seed))
        generator = np.random.default_rng(seed) if self.train else None
        load = functools.partial(self.load_clip, generator=generator)
        stages.append(wds.map(load, handler=self.counter.sample_error))
        return wds.DataPipeline(*stages)

    def load_clip(
        self, raw: dict[str, Any], generator: np.random.Generator | None
    ) -> dict[str, Any]:
        """One WebDataset sample -> tensors at the configured length and resolution."""
        clip = decode_sample(raw)
        start = frame_window_start(len(clip.frames), self.num_frames, generator)
        frames, window_flow, window_tracks = take_frame_window(clip, start, self.num_frames)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        height, width = frames.shape[1], frames.shape[2]
        size = nearest_bucket(height, width, self.buckets) if self.buckets else self.resolution
        video, flow, tracks = resize_center_crop(
            video, torch.from_numpy(window_flow), torch.from_numpy(window_tracks), size
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
