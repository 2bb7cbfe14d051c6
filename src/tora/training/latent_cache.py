"""The frozen video VAE's latents of training clips, kept in memory across epochs.

The diffusion stages encode every clip with a frozen VAE (posterior mode: the
same clip always gives the same latent), and on the tiny world that encode is
most of a stage-1 step (docs/results.md, training-step benchmark). A clip is
identified by its sample key and the start of its frame window, so clips cut from
longer videos at random starts are cached per window.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


class LatentCache:
    """Latents by clip, on the CPU, for at most ``max_clips`` clips (later clips are
    encoded every time once it is full; nothing is evicted).

    Args:
        max_clips: how many clips' latents to keep (0: the cache is off).
    """

    def __init__(self, max_clips: int) -> None:
        if max_clips < 0:
            raise ValueError(f"latent cache: max_clips >= 0 expected, got {max_clips}")
        self.max_clips = max_clips
        self.latents: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def clip_ids(keys: Sequence[str], frame_starts: torch.Tensor | Sequence[int]) -> list[str]:
        return [f"{key}@{int(start)}" for key, start in zip(keys, frame_starts, strict=True)]

    @classmethod
    def batch_clip_ids(cls, batch: Mapping[str, Any]) -> list[str] | None:
        """The clip ids of a DataModule batch (``key`` and ``frame_start``); None for a
        batch without them, whose clips are then always encoded."""
        if "key" not in batch or "frame_start" not in batch:
            return None
        return cls.clip_ids(batch["key"], batch["frame_start"])

    def encode(
        self,
        video: torch.Tensor,
        clip_ids: Sequence[str],
        encode: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Latents of the ``[B, C, T, H, W]`` batch ``video``: cached ones looked up,
        the rest encoded with ``encode`` in one call and stored while there is room."""
        if len(clip_ids) != len(video):
            raise ValueError(
                f"latent cache: one clip id per clip expected, got {len(clip_ids)} for {len(video)}"
            )
        clip_ids = self.keys(clip_ids, video.shape[1:])
        missing = [i for i, clip in enumerate(clip_ids) if clip not in self.latents]
        self.hits += len(video) - len(missing)
        self.misses += len(missing)
        fresh = dict(zip(missing, encode(video[missing]), strict=True)) if missing else {}
        self.add([clip_ids[i] for i in fresh], list(fresh.values()))
        return torch.stack(
            [
                fresh[index] if index in fresh else self.latents[clip].to(video.device)
                for index, clip in enumerate(clip_ids)
            ]
        )

    def store(
        self, clip_ids: Sequence[str], latents: torch.Tensor, clip_shape: Sequence[int]
    ) -> None:
        """Keep ``latents`` encoded elsewhere, of clips ``clip_shape`` ``[C, T, H, W]``,
        while there is room."""
        if len(clip_ids) != len(latents):
            raise ValueError(
                f"latent cache: one latent per clip id expected, got {len(latents)} "
                f"for {len(clip_ids)}"
            )
        self.add(self.keys(clip_ids, clip_shape), list(latents))

    @staticmethod
    def keys(clip_ids: Sequence[str], clip_shape: Sequence[int]) -> list[str]:
        # The clip's [C, T, H, W] is part of its identity: a run that changes the clip
        # length or resolution (the bench's frame sweep) never reads another size's latents.
        size = "x".join(map(str, clip_shape))
        return [f"{clip}/{size}" for clip in clip_ids]

    def add(self, keys: Sequence[str], latents: Sequence[torch.Tensor]) -> None:
        for key, latent in zip(keys, latents, strict=True):
            if len(self.latents) < self.max_clips and key not in self.latents:
                self.latents[key] = latent.detach().to("cpu", copy=True)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
