"""Rectified flow: training loss, timestep sampling and shift, the Euler step.

Sign convention (used everywhere in this package):

    x_t = (1 - t) * x0 + t * noise,   t in [0, 1], t = 1 is pure noise,
    v   = dx_t/dt = noise - x0        (what the model predicts by default),

so sampling integrates from t = 1 down to t = 0 with ``x <- x - dt * v``.
OpenSora v1.2 (``opensora/schedulers/rf``) uses the same x_t but trains its
STDiT3 to predict ``x0 - noise``; pass ``prediction="data_minus_noise"`` when
sampling from or fine-tuning its pretrained checkpoints.

Model calling convention: ``model_fn(x, t, y=..., mask=..., **extra)`` with
``t`` of shape ``[B]`` in [0, 1] (a wrapper around STDiT3 scales it to
OpenSora's [0, 1000]). If the output has more channels than x (STDiT3 with
pred_sigma returns 2 * in_channels), only the first ``in_channels`` are the
velocity.
"""

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from einops import reduce

ModelFn = Callable[..., torch.Tensor]

TimeT = TypeVar("TimeT", torch.Tensor, float)
PREDICTIONS = {"noise_minus_data": 1.0, "data_minus_noise": -1.0}
SAMPLE_METHODS = ("logit-normal", "uniform")


def shift_timesteps(t: TimeT, shift: float) -> TimeT:
    """``t' = shift * t / (1 + (shift - 1) * t)``: monotone, fixes 0 and 1, identity at shift 1.

    shift > 1 moves t towards 1 (more noise), which larger and longer videos
    need (OpenSora v1.2 ``timestep_transform``; SD3, Esser et al. 2024, Sec. 5.3.2).
    """
    return shift * t / (1 + (shift - 1) * t)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B] -> [B, 1, 1, 1, 1]`` to broadcast against ``[B, C, T, H, W]``."""
    return t.reshape(-1, *([1] * (like.ndim - 1)))


class RectifiedFlow:
    """Rectified-flow scheduler (OpenSora v1.2 ``RFLOW`` semantics, our sign convention).

    Args:
        use_timestep_transform: apply the resolution- and length-dependent shift.
        sample_method: training timesteps, ``"logit-normal"`` (sigmoid of N(0, 1))
            or ``"uniform"``.
        transform_scale: extra factor on the shift.
        base_resolution, base_num_frames: pixels and latent frames at which the
            shift is 1 (OpenSora: 512 * 512 and 1).
        spatial_compression: VAE spatial factor, to recover pixels from latents.
        prediction: ``"noise_minus_data"`` (v = noise - x0) or
            ``"data_minus_noise"`` (OpenSora v1.2 checkpoints).
        timestep_scale: the backbone's timestep for t in [0, 1] is ``t * timestep_scale``
            (OpenSora's STDiT3 embeds 0..1000).
    """

    def __init__(
        self,
        use_timestep_transform: bool = True,
        sample_method: str = "logit-normal",
        transform_scale: float = 1.0,
        base_resolution: int = 512 * 512,
        base_num_frames: int = 1,
        spatial_compression: int = 8,
        prediction: str = "noise_minus_data",
        timestep_scale: float = 1000.0,
    ):
        if sample_method not in SAMPLE_METHODS:
            raise ValueError(
                f"unknown sample_method {sample_method!r}; valid options: {', '.join(SAMPLE_METHODS)}"
            )
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown prediction {prediction!r}; valid options: {', '.join(PREDICTIONS)}"
            )
        self.use_timestep_transform = use_timestep_transform
        self.sample_method = sample_method
        self.transform_scale = transform_scale
        self.base_resolution = base_resolution
        self.base_num_frames = base_num_frames
        self.spatial_compression = spatial_compression
        self.timestep_scale = timestep_scale
        self.velocity_sign = PREDICTIONS[prediction]

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in [0, 1] as the backbone's timestep input."""
        return t * self.timestep_scale

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t = (1 - t) x0 + t noise``; x0, noise ``[B, C, T, H, W]``, t ``[B]``."""
        t = _per_sample(t, x0)
        return ((1 - t) * x0 + t * noise).to(x0.dtype)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The regression target: ``noise - x0`` (or its negative, see ``prediction``)."""
        return self.velocity_sign * (noise - x0)

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Training timesteps ``[batch]`` in (0, 1), before any shift."""
        if self.sample_method == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        return torch.sigmoid(torch.randn(batch, generator=generator, device=device))

    def timestep_shift(self, latent_shape: torch.Size | tuple[int, ...]) -> float:
        """The shift for latents ``[B, C, T, h, w]``.

        OpenSora v1.2 ``timestep_transform``: ``shift = sqrt(pixels / 512^2) *
        sqrt(latent_frames / 1) * transform_scale``, pixels = H * W of the video.
        OpenSora estimates the latent frames as ``num_frames // 17 * 5`` (its VAE
        turns 17 frames into 5) and uses 1 for images; we read T off the latents.
        """
        _, _, frames, height, width = latent_shape
        pixels = height * width * self.spatial_compression**2
        ratio_space = math.sqrt(pixels / self.base_resolution)
        ratio_time = math.sqrt(frames / self.base_num_frames)
        return ratio_space * ratio_time * self.transform_scale

    def sampling_timesteps(
        self, latent_shape: torch.Size | tuple[int, ...], steps: int
    ) -> list[float]:
        """``steps + 1`` decreasing times from 1 to 0: ``1 - i / steps``, shifted."""
        times = [1 - i / steps for i in range(steps + 1)]
        if self.use_timestep_transform:
            shift = self.timestep_shift(latent_shape)
            times = [shift_timesteps(t, shift) for t in times]
        return times

    def training_losses(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        condition_kwargs: dict | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        frame_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Velocity MSE per sample.

        Args:
            model_fn: called as ``model_fn(x_t, t, **condition_kwargs)``.
            x0: clean latents ``[B, C, T, H, W]``.
            condition_kwargs: ``y``, ``mask`` and any other model inputs.
            t: ``[B]`` in [0, 1]; sampled (and shifted) when None, used as is otherwise.
            noise: like x0; standard normal when None.
            frame_mask: bool ``[B, T]``, False = given frame (image-to-video): kept
                clean (x_t = x0), excluded from the loss, and passed to the model
                as ``x_mask`` (STDiT3 then embeds timestep 0 for those frames).

        Returns:
            ``{"loss": [B], "t": [B]}``: mean squared error over the non-given frames.
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, x0.device)
            if self.use_timestep_transform:
                t = shift_timesteps(t, self.timestep_shift(x0.shape))
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.add_noise(x0, noise, t)
        kwargs = dict(condition_kwargs or {})
        if frame_mask is not None:
            x_t = torch.where(frame_mask[:, None, :, None, None], x_t, x0)
            kwargs["x_mask"] = frame_mask
        prediction = model_fn(x_t, t, **kwargs)[:, : x0.shape[1]]
        error = (prediction.float() - self.velocity(x0, noise).float()).pow(2)
        error_per_frame = reduce(error, "b c t h w -> b t", "mean")
        if frame_mask is None:
            loss = error_per_frame.mean(dim=1)
        else:
            weights = frame_mask.to(error_per_frame.dtype)
            loss = (error_per_frame * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
        return {"loss": loss, "t": t}

    def step(
        self, x: torch.Tensor, velocity: torch.Tensor, t_now: float, t_next: float
    ) -> torch.Tensor:
        """One Euler step of the sampling ODE from ``t_now`` down to ``t_next``, given the
        model's (guided) velocity prediction."""
        return x - (t_now - t_next) * self.velocity_sign * velocity
