"""Trajectory-conditioned generation: a prompt plus tracks (plus an optional first
frame) -> video. Used by ``tora.sample``, ``tora.evaluate`` and the notebooks.

The pipeline wraps a trained :class:`VideoDiffusionModule`; the motion condition
goes through the same function as in training (``tracks_to_motion_rgb``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tora.convert_checkpoint import apply_tora_modules, read_checkpoint
from tora.metrics.base import as_uint8_frames
from tora.training.diffusion_module import VideoDiffusionModule
from tora.training.motion_input import tracks_to_motion_rgb

log = logging.getLogger(__name__)

# Constructor arguments that point at other stages' files: the checkpoint being
# loaded already holds those weights.
PREREQUISITE_PATHS = ("vae_checkpoint", "init_checkpoint", "backbone_checkpoint")


def load_module(ckpt: str | Path, base_ckpt: str | Path | None = None) -> VideoDiffusionModule:
    """Rebuild a trained module from one file, or a Tora-modules file over ``base_ckpt``."""
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(
            f"checkpoint {ckpt} does not exist (train it with `make train-stage2`, or pass ckpt=PATH "
            "to a Lightning .ckpt, a converted .safetensors, or a Tora-modules file with base_ckpt=)"
        )
    full = Path(base_ckpt) if base_ckpt else ckpt
    state_dict, hparams = read_checkpoint(full)
    if "backbone" not in hparams:
        raise ValueError(
            f"checkpoint {full}: no module hyper-parameters stored (a Lightning .ckpt or a full "
            ".safetensors from tora.convert_checkpoint expected); a Tora-modules-only file needs "
            "base_ckpt= (a full checkpoint of the same model) to be applied over"
        )
    for key in PREREQUISITE_PATHS:
        hparams[key] = None
    if hparams.get("motion_encoder"):
        hparams["motion_encoder"] = {**hparams["motion_encoder"], "checkpoint": None}
    module = VideoDiffusionModule(**hparams)
    module.load_state_dict(state_dict, strict=True)
    if base_ckpt:
        loaded = apply_tora_modules(module, ckpt)
        log.info("applied %d Tora-module tensors from %s over %s", len(loaded), ckpt, base_ckpt)
    return module.eval()


@dataclass
class GenerationRequest:
    """One video to generate. ``tracks``: ``[N, T, 2]`` pixels at the output size."""

    prompt: str
    tracks: torch.Tensor | None = None
    negative_prompt: str | None = None
    image: np.ndarray | None = None  # uint8 [H, W, 3], the first frame (image-to-video)


class ToraPipeline:
    def __init__(self, module: VideoDiffusionModule, device: str | torch.device = "cpu") -> None:
        self.module = module.to(device).eval()
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, ckpt, base_ckpt=None, device="cpu") -> ToraPipeline:
        return cls(load_module(ckpt, base_ckpt), device)

    @property
    def uses_motion(self) -> bool:
        return self.module.model.motion_guidance is not None

    def check_request(
        self, request: GenerationRequest, num_frames: int, height: int, width: int
    ) -> None:
        vae = self.module.vae
        vae.latent_shape(num_frames, height, width)  # raises naming the bad size
        if request.tracks is None:
            return
        if request.tracks.ndim != 3 or request.tracks.shape[1:] != (num_frames, 2):
            raise ValueError(
                f"tracks for {request.prompt!r}: shape [N, {num_frames}, 2] expected, got {list(request.tracks.shape)}"
            )
        x, y = request.tracks[..., 0], request.tracks[..., 1]
        if (x < 0).any() or (y < 0).any() or (x > width - 1).any() or (y > height - 1).any():
            raise ValueError(
                f"tracks for {request.prompt!r} leave the {width}x{height} frame "
                f"(x in [{float(x.min()):.1f}, {float(x.max()):.1f}], y in [{float(y.min()):.1f}, {float(y.max()):.1f}])"
            )

    @torch.no_grad()
    def generate(
        self,
        requests: list[GenerationRequest],
        num_frames: int,
        height: int,
        width: int,
        steps: int = 30,
        cfg_scale: float = 7.0,
        seed: int = 0,
        fps: float = 8.0,
        use_motion: bool = True,
        progress: bool = True,
        motion_in_guidance: bool = False,
        motion_guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Generate a batch; returns uint8 videos ``[B, T, H, W, 3]``.

        ``use_motion=False`` runs the same weights without the motion condition
        (the no-control baseline with identical prompts and seeds).
        ``motion_in_guidance=True`` leaves the motion condition out of the
        unconditional CFG branch, so ``cfg_scale`` amplifies motion as well as
        text (default: motion in both branches, CFG on the text only, as Tora).
        ``motion_guidance_scale`` (implies ``motion_in_guidance``) guides the motion
        with its own scale, from a third, text-only branch (1.5x the sampling cost).
        """
        for request in requests:
            self.check_request(request, num_frames, height, width)
        module, device = self.module, self.device
        batch = len(requests)
        y, mask = module.encode_text([r.prompt for r in requests])
        if any(r.negative_prompt for r in requests):
            null_y, null_mask = module.encode_text([r.negative_prompt or "" for r in requests])
        else:
            null_y, null_mask = module.null_text(batch).to(y), mask
        latent_frames, latent_h, latent_w = module.vae.latent_shape(num_frames, height, width)
        channels = module.vae.latent_shift.shape[0]
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(
            batch, channels, latent_frames, latent_h, latent_w, generator=generator
        ).to(device)

        extra = {"fps": torch.full((batch,), float(fps), device=device)}
        null_extra = None  # the unconditional branch gets `extra` too: motion in both
        if use_motion and self.uses_motion and any(r.tracks is not None for r in requests):
            if motion_in_guidance or motion_guidance_scale is not None:
                null_extra = dict(extra)  # the unconditional branch without the motion
            latents = self.motion_latents(requests, num_frames, height, width)
            extra["motion_features"] = module.model.motion_guidance.extract(latents)

        frame_mask = x_given = None
        if any(r.image is not None for r in requests):
            frame_mask, x_given = self.first_frame_condition(requests, latent_frames, noise)

        latents = module.flow.sample(
            module.model_fn,
            noise,
            text_cond=dict(y=y, mask=mask),
            null_text_cond=dict(y=null_y, mask=null_mask),
            guidance_scale=cfg_scale,
            steps=steps,
            extra=extra,
            frame_mask=frame_mask,
            x_given=x_given,
            progress=progress,
            null_extra=null_extra,
            motion_guidance_scale=motion_guidance_scale if null_extra is not None else None,
        )
        decoded = module.vae.decode_latents(latents)
        return np.stack([as_uint8_frames(video) for video in decoded])

    def motion_latents(self, requests, num_frames, height, width) -> torch.Tensor:
        """Tracks -> flow-RGB -> motion latents, as in training (padded, masked)."""
        max_tracks = max(1, max(len(r.tracks) for r in requests if r.tracks is not None))
        tracks = torch.zeros(len(requests), max_tracks, num_frames, 2)
        track_mask = torch.zeros(len(requests), max_tracks, dtype=torch.bool)
        for i, request in enumerate(requests):
            if request.tracks is not None:
                tracks[i, : len(request.tracks)] = request.tracks
                track_mask[i, : len(request.tracks)] = True
        rgb = tracks_to_motion_rgb(tracks, track_mask, height, width, self.module.motion_rgb)
        return self.module.motion_encoder.encode(rgb.to(self.device))

    def first_frame_condition(self, requests, latent_frames, noise):
        """Latent frame 0 from the given image, held clean during sampling."""
        images = []
        for request in requests:
            if request.image is None:
                raise ValueError(
                    "image-to-video: give an image for every prompt of a batch, or none"
                )
            images.append(torch.from_numpy(request.image).permute(2, 0, 1).float() / 127.5 - 1)
        first = torch.stack(images)[:, :, None].to(self.device)  # [B, 3, 1, H, W]
        x_given = noise.clone()
        x_given[:, :, :1] = self.module.vae.encode_latents(first)
        frame_mask = torch.ones(noise.shape[0], latent_frames, dtype=torch.bool, device=self.device)
        frame_mask[:, 0] = False
        return frame_mask, x_given
