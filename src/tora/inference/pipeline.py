"""Trajectory-conditioned generation: prompts plus tracks (plus an optional first frame)
-> videos. The pipeline owns the denoising loop and the guidance arithmetic; the
diffusion process only gives timesteps and a ``step``; the motion condition goes
through the function training uses (``tora.motion.tracks_to_motion_rgb``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import track
from torch import nn

from tora.inference.loading import load_components
from tora.models.build import ToraComponents
from tora.motion import tracks_to_motion_rgb
from tora.utils.video import as_uint8_frames


@dataclass
class GenerationRequest:
    """One video to generate. ``tracks``: ``[N, T, 2]`` pixels at the output size."""

    prompt: str
    tracks: torch.Tensor | None = None
    negative_prompt: str | None = None
    image: np.ndarray | None = None  # uint8 [H, W, 3], the first frame (image-to-video)


@dataclass
class GenerationConfig:
    """The sampling settings shared by ``tora.sample``, ``tora.evaluate`` and validation.

    ``motion_in_guidance``: the unconditional CFG branch has no motion either, so
    ``cfg_scale`` amplifies motion together with the text (False: motion in both
    branches, CFG on the text only, as the Tora release).
    ``motion_guidance_scale``: guide the motion with its own scale from a third,
    text-only branch (InstructPix2Pix's two scales; implies ``motion_in_guidance``).
    ``dynamic_cfg``: the Tora release's CFG schedule for the CogVideoX DPM sampler,
    see :func:`guidance_scale`.
    """

    steps: int = 30
    cfg_scale: float = 7.0
    motion_in_guidance: bool = True
    motion_guidance_scale: float | None = None
    dynamic_cfg: bool = False
    seed: int = 0
    fps: float = 8.0

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> GenerationConfig:
        """The settings out of a larger config (``sample.yaml``, ``evaluate.yaml``)."""
        return cls(**{f.name: config[f.name] for f in fields(cls)})


def guidance_scale(config: GenerationConfig, model_timestep: float) -> float:
    """``cfg_scale``, or with ``dynamic_cfg`` the release's schedule at the backbone's
    timestep ``tau`` (0 .. 999) of an ``N``-step run, ``1 + s (1 - cos(pi ((N - tau) / N)^5)) / 2``,
    written as diffusers' ``CogVideoXPipeline`` and the SAT ``DynamicCFG`` write it."""
    if not config.dynamic_cfg:
        return config.cfg_scale
    phase = ((config.steps - model_timestep) / config.steps) ** 5
    return 1 + config.cfg_scale * (1 - math.cos(math.pi * phase)) / 2


@dataclass
class TextCondition:
    """Caption features ``y [B, 1, L, C]`` and ``mask [B, L]`` (None: every token real)."""

    y: torch.Tensor
    mask: torch.Tensor | None = None


@dataclass
class Conditioning:
    """Everything one denoising run conditions on besides the text: further model inputs
    (``fps``), the motion features (one per fused block, or None), and for
    image-to-video the frames held clean (``frame_mask`` False) at ``x_given``."""

    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    motion_features: list[torch.Tensor] | None = None
    frame_mask: torch.Tensor | None = None
    x_given: torch.Tensor | None = None


def duplicate_for_cfg(value: Any) -> Any:
    """Repeat every tensor along dim 0 (``[x, x]``), through lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value]) if value.ndim > 0 else value
    if isinstance(value, (list, tuple)):
        return type(value)(duplicate_for_cfg(item) for item in value)
    if isinstance(value, dict):
        return {key: duplicate_for_cfg(item) for key, item in value.items()}
    return value


class ToraPipeline:
    """Built components in, uint8 videos out; no training wrapper involved.

    ``dtype``: cast every component (e.g. ``torch.bfloat16`` for CogVideoX-5B; the latents
    and the sampler stay float32). ``cpu_offload``: keep the text encoder and the VAEs on the
    CPU except while they run, so that only the denoiser stays on the device.
    """

    def __init__(
        self,
        components: ToraComponents,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cpu_offload: bool = False,
    ) -> None:
        self.components = components
        self.device = torch.device(device)
        self.cpu_offload = cpu_offload
        modules = components.modules()
        if dtype is not None:
            modules.to(dtype)
        (components.model if cpu_offload else modules).to(self.device)
        modules.eval()

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | Path,
        base_ckpt: str | Path | None = None,
        device: str | torch.device = "cpu",
        model_config: Mapping[str, Any] | None = None,
        dtype: torch.dtype | None = None,
        cpu_offload: bool = False,
    ) -> ToraPipeline:
        """A pipeline over :func:`load_components` (``model_config``: the components to
        use with released Tora weights)."""
        components = load_components(ckpt, base_ckpt, model_config)
        return cls(components, device, dtype, cpu_offload)

    @contextlib.contextmanager
    def placed(self, module: nn.Module | None) -> Iterator[None]:
        """``module`` on the device while the block runs, back on the CPU after, under
        ``cpu_offload``; otherwise it is on the device already."""
        if not self.cpu_offload or module is None:
            yield
            return
        module.to(self.device)
        try:
            yield
        finally:
            module.to("cpu")

    @property
    def uses_motion(self) -> bool:
        return self.components.model.motion_guidance is not None

    def check_request(
        self, request: GenerationRequest, num_frames: int, height: int, width: int
    ) -> None:
        self.components.vae.latent_shape(num_frames, height, width)  # raises naming the bad size
        if request.tracks is None:
            return
        if request.tracks.ndim != 3 or request.tracks.shape[1:] != (num_frames, 2):
            raise ValueError(
                f"tracks for {request.prompt!r}: shape [N, {num_frames}, 2] expected, "
                f"got {list(request.tracks.shape)}"
            )
        x, y = request.tracks[..., 0], request.tracks[..., 1]
        if (x < 0).any() or (y < 0).any() or (x > width - 1).any() or (y > height - 1).any():
            raise ValueError(
                f"tracks for {request.prompt!r} leave the {width}x{height} frame "
                f"(x in [{float(x.min()):.1f}, {float(x.max()):.1f}], "
                f"y in [{float(y.min()):.1f}, {float(y.max()):.1f}])"
            )

    def encode_prompts(
        self, requests: list[GenerationRequest]
    ) -> tuple[TextCondition, TextCondition]:
        """The captions and the unconditional branch's (:meth:`null_text`)."""
        encoder = self.components.text_encoder
        y, mask = (t.to(self.device) for t in encoder.encode([r.prompt for r in requests]))
        text = TextCondition(y, mask)
        return text, self.null_text(text, [r.negative_prompt for r in requests])

    def null_text(self, text: TextCondition, negative_prompts: list[str | None]) -> TextCondition:
        """The unconditional branch's caption: the negative prompts where given, else the
        backbone's learned null caption with the captions' mask (OpenSora), or for a
        backbone without one the encoded empty caption (CogVideoX)."""
        backbone = self.components.model.backbone
        if any(negative_prompts) or not hasattr(backbone, "null_caption"):
            encoder = self.components.text_encoder
            null_y, null_mask = encoder.encode([p or "" for p in negative_prompts])
            return TextCondition(null_y.to(text.y), null_mask.to(self.device))
        return TextCondition(backbone.null_caption(len(negative_prompts)).to(text.y), text.mask)

    @torch.no_grad()
    def generate(
        self,
        requests: list[GenerationRequest],
        num_frames: int,
        height: int,
        width: int,
        config: GenerationConfig | None = None,
        use_motion: bool = True,
        progress: bool = True,
        step_callback: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Generate a batch; returns uint8 videos ``[B, T, H, W, 3]``.

        ``use_motion=False`` runs the same weights without the motion condition (the
        no-control baseline with identical prompts and seeds). ``step_callback(done,
        total)`` is called after each sampling step (a page's progress bar).
        """
        config = config or GenerationConfig()
        for request in requests:
            self.check_request(request, num_frames, height, width)
        vae = self.components.vae
        with self.placed(self.components.text_encoder):
            text, null_text = self.encode_prompts(requests)
        latent_frames, latent_h, latent_w = vae.latent_shape(num_frames, height, width)
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn(
            len(requests),
            vae.latent_channels,
            latent_frames,
            latent_h,
            latent_w,
            generator=generator,
        ).to(self.device)

        conditioning = Conditioning(
            extra={"fps": torch.full((len(requests),), float(config.fps), device=self.device)}
        )
        guidance = self.components.model.motion_guidance  # None: no motion (uses_motion)
        if use_motion and guidance is not None and any(r.tracks is not None for r in requests):
            with self.placed(self.components.motion_encoder):
                latents = self.motion_latents(requests, num_frames, height, width)
            conditioning.motion_features = guidance.extract(latents)
        with self.placed(vae):
            if any(r.image is not None for r in requests) and self.takes_image_latents:
                conditioning.extra["image_latents"] = self.image_latents(requests, noise)
            elif any(r.image is not None for r in requests):
                conditioning.frame_mask, conditioning.x_given = self.first_frame_condition(
                    requests, latent_frames, noise
                )
        latents = self.denoise(
            noise, text, null_text, conditioning, config, progress, step_callback, generator
        )
        with self.placed(vae):
            decoded = vae.decode_latents(latents, num_frames)
            return np.stack([as_uint8_frames(video) for video in decoded])

    @torch.no_grad()
    def denoise(
        self,
        noise: torch.Tensor,
        text: TextCondition,
        null_text: TextCondition,
        conditioning: Conditioning,
        config: GenerationConfig,
        progress: bool = False,
        step_callback: Callable[[int, int], None] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Euler integration from t = 1 (``noise [B, C, T, h, w]``) to t = 0 with
        classifier-free guidance; returns the latents at t = 0.

        Motion in both branches (or no motion): one doubled batch per step,
        ``v = v_null + s (v_text - v_null)``. ``motion_in_guidance``: the unconditional
        branch runs without the motion, so ``s`` scales text and motion together.
        ``motion_guidance_scale`` ``m``: a third, text-only branch and
        ``v = v_null + s (v_text_only - v_null) + m (v_text - v_text_only)``.
        ``s`` is :func:`guidance_scale` at each step; a diffusion process whose ``step`` takes
        a ``generator`` (a stochastic sampler) draws its noise from ``generator``.
        """
        flow, predict = self.components.flow, self.components.predict
        accepts_generator = "generator" in inspect.signature(flow.step).parameters
        step_kwargs = {"generator": generator} if accepts_generator else {}
        channels = noise.shape[1]
        motion = conditioning.motion_features
        separate_scales = motion is not None and config.motion_guidance_scale is not None
        motion_in_guidance = motion is not None and (config.motion_in_guidance or separate_scales)

        extra = dict(conditioning.extra)
        if conditioning.frame_mask is not None:
            if conditioning.x_given is None:
                raise ValueError("denoise: a frame_mask needs x_given (the given frames)")
            extra["x_mask"] = conditioning.frame_mask
        with_motion = extra if motion is None else {**extra, "motion_features": motion}
        doubled = None
        if not motion_in_guidance:
            doubled = duplicate_for_cfg(with_motion)
            y_in = torch.cat([text.y, null_text.y])
            mask_in = None
            if text.mask is not None:
                if null_text.mask is None:
                    raise ValueError(
                        "denoise: text has a mask, null_text none; give both or neither"
                    )
                mask_in = torch.cat([text.mask, null_text.mask])

        def hold_given_frames(x: torch.Tensor) -> torch.Tensor:
            if conditioning.frame_mask is None:
                return x
            assert conditioning.x_given is not None  # checked with frame_mask above
            return torch.where(
                conditioning.frame_mask[:, None, :, None, None], x, conditioning.x_given
            )

        x = hold_given_frames(noise)
        times = flow.sampling_timesteps(noise.shape, config.steps)
        intervals = list(zip(times[:-1], times[1:]))
        for step, (t_now, t_next) in enumerate(
            track(intervals, description="sampling", disable=not progress), start=1
        ):
            scale = guidance_scale(config, float(flow.model_timestep(torch.tensor(t_now))))
            if doubled is not None:
                timestep = torch.full((2 * x.shape[0],), t_now, device=x.device)
                output = predict(torch.cat([x, x]), timestep, y=y_in, mask=mask_in, **doubled)
                v_text, v_null = output[:, :channels].chunk(2)
                v = v_null + scale * (v_text - v_null)
            else:
                timestep = torch.full((x.shape[0],), t_now, device=x.device)
                v_text = predict(x, timestep, y=text.y, mask=text.mask, **with_motion)[:, :channels]
                v_null = predict(x, timestep, y=null_text.y, mask=null_text.mask, **extra)
                v_null = v_null[:, :channels]
                if separate_scales:
                    assert config.motion_guidance_scale is not None  # separate_scales
                    v_text_only = predict(x, timestep, y=text.y, mask=text.mask, **extra)
                    v_text_only = v_text_only[:, :channels]
                    v = (
                        v_null
                        + scale * (v_text_only - v_null)
                        + config.motion_guidance_scale * (v_text - v_text_only)
                    )
                else:
                    v = v_null + scale * (v_text - v_null)
            x = hold_given_frames(flow.step(x, v, t_now, t_next, **step_kwargs))
            if step_callback is not None:
                step_callback(step, len(intervals))
        return x

    def motion_latents(
        self, requests: list[GenerationRequest], num_frames: int, height: int, width: int
    ) -> torch.Tensor:
        """Tracks -> flow-RGB -> motion latents, as in training (padded, masked)."""
        encoder, motion_rgb = self.components.motion_encoder, self.components.motion_rgb
        if encoder is None or motion_rgb is None:
            raise ValueError("motion_latents: these components have no motion encoder (base model)")
        max_tracks = max(1, max(len(r.tracks) for r in requests if r.tracks is not None))
        tracks = torch.zeros(len(requests), max_tracks, num_frames, 2)
        track_mask = torch.zeros(len(requests), max_tracks, dtype=torch.bool)
        for i, request in enumerate(requests):
            if request.tracks is not None:
                tracks[i, : len(request.tracks)] = request.tracks
                track_mask[i, : len(request.tracks)] = True
        rgb = tracks_to_motion_rgb(tracks, track_mask, height, width, motion_rgb)
        return encoder.encode(rgb.to(self.device))

    @property
    def takes_image_latents(self) -> bool:
        """Image-to-video by image latents beside the noisy ones (CogVideoX-I2V), rather
        than by frames held clean (STDiT3)."""
        backbone = self.components.model.backbone
        return backbone.in_channels == 2 * self.components.vae.latent_channels

    def image_latents(self, requests: list[GenerationRequest], noise: torch.Tensor) -> torch.Tensor:
        """The first frames' latents at latent frame 0, zeros after (diffusers'
        ``CogVideoXImageToVideoPipeline``), ``[B, C, T, h, w]`` like ``noise``."""
        latents = torch.zeros_like(noise)
        latents[:, :, :1] = self.components.vae.encode_latents(self.first_frames(requests))
        return latents

    def first_frames(self, requests: list[GenerationRequest]) -> torch.Tensor:
        """The requests' images as one-frame clips ``[B, 3, 1, H, W]`` in [-1, 1]."""
        images = []
        for request in requests:
            if request.image is None:
                raise ValueError(
                    "image-to-video: give an image for every prompt of a batch, or none"
                )
            images.append(torch.from_numpy(request.image).permute(2, 0, 1).float() / 127.5 - 1)
        return torch.stack(images)[:, :, None].to(self.device)

    def first_frame_condition(
        self, requests: list[GenerationRequest], latent_frames: int, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent frame 0 from the given image, held clean during sampling."""
        x_given = noise.clone()
        x_given[:, :, :1] = self.components.vae.encode_latents(self.first_frames(requests))
        frame_mask = torch.ones(noise.shape[0], latent_frames, dtype=torch.bool, device=self.device)
        frame_mask[:, 0] = False
        return frame_mask, x_given
