"""One row of the bench: a random batch of a clip shape, its FLOPs, the median
step time over timed steps, and the peak memory."""

from __future__ import annotations

import math
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tora.bench.flops import count_step_flops
from tora.bench.step import apply_gradients, forward_loss, synchronize
from tora.models.stdit3 import STDiT3, STDiT3Config
from tora.training.diffusion_module import VideoDiffusionModule

CAPTION = "a red circle moves from the left to the right on a striped background"


@dataclass
class ClipShape:
    """A batch of clips ``[batch_size, 3, num_frames, height, width]``."""

    batch_size: int
    num_frames: int
    height: int
    width: int


def random_batch(
    shape: ClipShape, max_tracks: int, fps: float, generator: torch.Generator, device: torch.device
) -> dict[str, Any]:
    """A batch of the DataModule's contract filled with noise: shapes, not values, set the cost."""
    b, t, h, w = shape.batch_size, shape.num_frames, shape.height, shape.width
    scale = torch.tensor([w - 1, h - 1], dtype=torch.float32)
    batch: dict[str, Any] = {
        "video": torch.rand(b, 3, t, h, w, generator=generator) * 2 - 1,
        "flow": torch.randn(b, t - 1, h, w, 2, generator=generator) * 2,
        "tracks": torch.rand(b, max_tracks, t, 2, generator=generator) * scale,
        "track_mask": torch.ones(b, max_tracks, dtype=torch.bool),
        "fps": torch.full((b,), fps),
    }
    batch = {name: value.to(device) for name, value in batch.items()}
    batch["caption"] = [CAPTION] * b
    batch["key"] = [f"bench-{index}" for index in range(b)]
    batch["frame_start"] = torch.zeros(b, dtype=torch.long)
    return batch


def stdit3_config(module: VideoDiffusionModule) -> STDiT3Config:
    """The backbone's config: the bench reads its patch size and default fps."""
    backbone = module.model.backbone
    if not isinstance(backbone, STDiT3):
        raise TypeError(
            f"bench: an STDiT3 backbone expected, the config builds {type(backbone).__name__}"
        )
    return backbone.config


def tokens_per_clip(module: VideoDiffusionModule, shape: ClipShape) -> int:
    """DiT tokens of one clip: latent ``(T, H, W)`` divided by the patch, rounded up."""
    latent = module.vae.latent_shape(shape.num_frames, shape.height, shape.width)
    patch = stdit3_config(module).patch_size
    return math.prod(-(-size // p) for size, p in zip(latent, patch))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA: tensors allocated since the row started; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return {
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device),
            "memory_kind": "cuda max allocated",
        }
    # ru_maxrss is in KiB on Linux.
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "memory_kind": "process peak RSS",
    }


def measure(
    module: VideoDiffusionModule,
    optimizer: torch.optim.Optimizer,
    shape: ClipShape,
    *,
    warmup_steps: int,
    steps: int,
    precision: str,
    peak_flops_per_s: float,
    max_tracks: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """One row: the first warm-up step counts FLOPs, then ``steps`` timed steps."""
    if warmup_steps < 1 or steps < 1:
        raise ValueError(
            f"bench: warmup_steps >= 1 and steps >= 1 expected, got {warmup_steps} and {steps}"
        )
    device = module.device
    fps = stdit3_config(module).default_fps
    batch = random_batch(shape, max_tracks, fps, generator, device)
    if module.latent_cache.max_clips:
        # The steady state of a run with model.latent_cache: every clip (and every dense
        # motion condition) is a hit.
        module.step_inputs(batch)
    reset_peak_memory(device)
    flops = count_step_flops(module, optimizer, batch, precision)
    for _ in range(warmup_steps - 1):
        apply_gradients(forward_loss(module, batch, precision), optimizer)
    step_times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        apply_gradients(forward_loss(module, batch, precision), optimizer)
        synchronize(device)
        step_times.append(time.perf_counter() - start)
    step_time = statistics.median(step_times)
    tokens = tokens_per_clip(module, shape)
    achieved = flops["flops"] / step_time
    return {
        **asdict(shape),
        "precision": precision,
        "latent_shape": list(module.vae.latent_shape(shape.num_frames, shape.height, shape.width)),
        "tokens_per_clip": tokens,
        "step_time_s": step_time,
        "step_times_s": step_times,
        "clips_per_s": shape.batch_size / step_time,
        "tokens_per_s": shape.batch_size * tokens / step_time,
        **flops,
        "flops_per_s": achieved,
        "fraction_of_peak": achieved / peak_flops_per_s,
        **peak_memory(device),
    }
