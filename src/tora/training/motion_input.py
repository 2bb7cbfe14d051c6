"""Batch -> flow-RGB motion condition, shared by the motion-VAE stage, stage 1,
stage 2, sampling and evaluation (one path, one normalisation)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from tora.motion import (
    MotionRGBConfig,
    flow_to_displacement_map,
    motion_maps_to_rgb,
    sample_tracks_from_flow,
    tracks_to_motion_rgb,
)


@dataclass
class MotionSourceConfig:
    """Where the motion condition of a training clip comes from.

    ``kind``: ``dense`` (stage 1: the clip's optical flow), ``sparse`` (stage 2:
    1..``max_tracks`` tracks), ``mixed`` (motion VAE: dense or sparse with
    probability ``dense_probability`` per clip), or ``two_stage`` (dense for the
    first ``dense_steps`` optimiser steps, then sparse: the paper's two-stage
    recipe in one run, used by the training ablation).
    ``sparse_from``: ``flow`` samples tracks where motion is strong and chains
    them through the flow (the Tora port); ``tracks`` uses the clip's stored
    tracks (exact object tracks for the synthetic world), a random subset of
    1..max_tracks.
    """

    kind: str = "dense"
    sparse_from: str = "flow"
    max_tracks: int = 8
    min_tracks: int = 1
    grid_stride: int = 8
    dense_probability: float = 0.5
    smooth_dense: bool = False
    dense_steps: int = 0


KINDS = ("dense", "sparse", "mixed", "two_stage")
SPARSE_SOURCES = ("flow", "tracks")


def validate_source(source: MotionSourceConfig) -> None:
    if source.kind not in KINDS:
        raise ValueError(f"motion source kind {source.kind!r}: one of {KINDS} expected")
    if source.sparse_from not in SPARSE_SOURCES:
        raise ValueError(
            f"motion source sparse_from {source.sparse_from!r}: one of {SPARSE_SOURCES} expected"
        )


def at_step(source: MotionSourceConfig, step: int) -> MotionSourceConfig:
    """The source in force at optimiser step ``step`` (resolves ``two_stage``)."""
    if source.kind != "two_stage":
        return source
    return replace(source, kind="dense" if step < source.dense_steps else "sparse")


def choose_tracks(
    batch: dict, source: MotionSourceConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse tracks per clip: ``([B, N, T, 2], track_mask [B, N])``.

    The number of tracks per clip is drawn in ``[min_tracks, max_tracks]``.
    """
    flow = batch["flow"]
    batch_size, num_steps, height, width, _ = flow.shape
    num_frames = num_steps + 1
    tracks = flow.new_zeros(batch_size, source.max_tracks, num_frames, 2)
    mask = torch.zeros(batch_size, source.max_tracks, dtype=torch.bool, device=flow.device)
    for i in range(batch_size):
        if source.sparse_from == "flow":
            clip_tracks = sample_tracks_from_flow(
                flow[i].float().cpu(),
                max_tracks=source.max_tracks,
                stride=source.grid_stride,
                generator=generator,
                min_tracks=source.min_tracks,
            ).to(flow)
        else:
            available = batch["tracks"][i][batch["track_mask"][i]]
            upper = min(source.max_tracks, available.shape[0])
            lower = min(source.min_tracks, upper)
            count = int(torch.randint(lower, upper + 1, (1,), generator=generator))
            order = torch.randperm(available.shape[0], generator=generator)[:count]
            clip_tracks = available[order.to(available.device)]
        tracks[i, : clip_tracks.shape[0]] = clip_tracks
        mask[i, : clip_tracks.shape[0]] = True
    return tracks, mask


def motion_condition(
    batch: dict,
    source: MotionSourceConfig,
    rgb: MotionRGBConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Build the motion condition of a batch.

    Returns ``motion_rgb [B, 3, T, H, W]`` in [-1, 1], ``dense [B]`` (True where the
    clip's whole flow made it: the same clip always gives the same map) and, for sparse
    clips, the tracks that made it (``tracks [B, N, T, 2]``, ``track_mask [B, N]``; all
    False for dense clips).
    """
    validate_source(source)
    if source.kind == "two_stage":
        raise ValueError(
            "motion source kind 'two_stage': resolve it with at_step(source, step) first"
        )
    flow = batch["flow"].float()
    batch_size, _, height, width, _ = flow.shape
    if source.kind == "dense":
        use_dense = torch.ones(batch_size, dtype=torch.bool)
    elif source.kind == "sparse":
        use_dense = torch.zeros(batch_size, dtype=torch.bool)
    else:
        use_dense = torch.rand(batch_size, generator=generator) < source.dense_probability

    dense_rgb = motion_maps_to_rgb(flow_to_displacement_map(flow), rgb, smooth=source.smooth_dense)
    if use_dense.all():  # stage 1: no tracks to sample (and no host sync on a GPU)
        tracks = flow.new_zeros(batch_size, 0, flow.shape[1] + 1, 2)
        return {
            "motion_rgb": dense_rgb,
            "dense": use_dense.to(flow.device),
            "tracks": tracks,
            "track_mask": tracks.new_zeros(batch_size, 0, dtype=torch.bool),
        }
    tracks, track_mask = choose_tracks(batch, source, generator)
    track_mask = track_mask & ~use_dense.to(track_mask.device)[:, None]
    sparse_rgb = tracks_to_motion_rgb(tracks, track_mask, height, width, rgb)
    choose = use_dense.to(flow.device)[:, None, None, None, None]
    return {
        "motion_rgb": torch.where(choose, dense_rgb, sparse_rgb),
        "dense": use_dense.to(flow.device),
        "tracks": tracks,
        "track_mask": track_mask,
    }
