"""The CogVideoX diffusion process: v-prediction on its discrete noise schedule, trained as
the release trains it and sampled with diffusers' CogVideoX DDIM or DPM schedulers.

Same interface as :class:`tora.diffusion.RectifiedFlow`, so the training stages and the
inference pipeline drive either one:

- ``t`` in [0, 1) is the discrete timestep ``index / num_train_timesteps``;
  ``model_timestep(t)`` gives the backbone the index (0 .. 999);
- ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` and the target ``v = sqrt(a_t) noise -
  sqrt(1 - a_t) x0``, with ``a_t`` diffusers' ``CogVideoXDDIMScheduler.alphas_cumprod``
  (scaled-linear betas, SNR shifted by ``snr_shift_scale``, rescaled to zero terminal SNR);
- training draws the index uniformly (SAT ``DiscreteSampling``); the SAT loss
  ``(1 / (1 - a_t)) * |x0_pred - x0|^2`` is exactly the v MSE used here;
- sampling: ``sampling_timesteps`` starts a run on a fresh scheduler (``trailing``
  spacing, as the CogVideoX-5B ``scheduler_config.json``), ``step`` advances it; the DPM
  scheduler keeps the previous x0 prediction between steps.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.schedulers.scheduling_ddim_cogvideox import CogVideoXDDIMScheduler
from diffusers.schedulers.scheduling_dpm_cogvideox import CogVideoXDPMScheduler
from einops import reduce

from tora.diffusion.rectified_flow import ModelFn

SAMPLERS = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}


class CogVideoXDiffusion:
    """v-prediction on the CogVideoX schedule (diffusers' CogVideoX schedulers).

    Args:
        sampler: ``"dpm"`` (the release's ``CogVideoXDPMScheduler``, with dynamic CFG) or
            ``"ddim"``.
        snr_shift_scale: the schedule's SNR shift (CogVideoX-5B 1.0, CogVideoX-2B 3.0).
        num_train_timesteps, beta_start, beta_end: the discrete schedule.
    """

    def __init__(
        self,
        sampler: str = "dpm",
        snr_shift_scale: float = 1.0,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ):
        if sampler not in SAMPLERS:
            raise ValueError(
                f"model.diffusion.sampler {sampler!r}: one of {', '.join(SAMPLERS)} expected"
            )
        self.sampler = sampler
        self.num_train_timesteps = num_train_timesteps
        self.scheduler_config = dict(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",
            rescale_betas_zero_snr=True,
            snr_shift_scale=snr_shift_scale,
        )
        self.schedule = CogVideoXDDIMScheduler(**self.scheduler_config)
        self.run: Any = None  # the scheduler of the sampling run under way
        self.previous_x0: torch.Tensor | None = None
        self.previous_index: int | None = None

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in [0, 1) as the backbone's discrete timestep index."""
        return self.index(t)

    def index(self, t: torch.Tensor) -> torch.Tensor:
        return (t * self.num_train_timesteps).round().long().clamp(0, self.num_train_timesteps - 1)

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Training timesteps ``[batch]``: uniform discrete indices, divided by their count."""
        indices = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator)
        return (indices.float() / self.num_train_timesteps).to(device)

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
        """v MSE per sample: ``{"loss": [B], "t": [B]}``; arguments as
        :meth:`RectifiedFlow.training_losses`. CogVideoX image-to-video conditions on image
        latents, not on clean frames, so ``frame_mask`` is refused."""
        if frame_mask is not None:
            raise ValueError(
                "CogVideoXDiffusion: a frame_mask (frames held clean) is the STDiT3 image-to-"
                "video scheme; CogVideoX-I2V takes the image latents as a model input"
            )
        if t is None:
            t = self.sample_timesteps(x0.shape[0], generator, x0.device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        indices = self.index(t).to(x0.device)
        x_t = self.schedule.add_noise(x0, noise, indices)
        target = self.schedule.get_velocity(x0, noise, indices)
        prediction = model_fn(x_t, t, **dict(condition_kwargs or {}))[:, : x0.shape[1]]
        error = (prediction.float() - target.float()).pow(2)
        return {"loss": reduce(error, "b c t h w -> b", "mean"), "t": t}

    def sampling_timesteps(
        self, latent_shape: torch.Size | tuple[int, ...], steps: int
    ) -> list[float]:
        """Start a sampling run of ``steps`` steps: the scheduler's timesteps as ``t``
        (decreasing from 0.999), then 0."""
        self.run = SAMPLERS[self.sampler](**self.scheduler_config)
        self.run.set_timesteps(steps)
        self.previous_x0 = self.previous_index = None
        return [int(index) / self.num_train_timesteps for index in self.run.timesteps] + [0.0]

    def step(
        self,
        x: torch.Tensor,
        velocity: torch.Tensor,
        t_now: float,
        t_next: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One scheduler step from ``t_now`` given the (guided) v prediction; the scheduler
        knows the next timestep itself. ``generator``: the DPM scheduler's noise."""
        run = self.run
        if run is None:
            raise RuntimeError("CogVideoXDiffusion.step: call sampling_timesteps first")
        index = int(self.index(torch.tensor(t_now)))
        if isinstance(run, CogVideoXDDIMScheduler):
            return run.step(velocity, index, x, return_dict=False)[0]
        x, self.previous_x0 = run.step(
            velocity,
            self.previous_x0,
            index,
            self.previous_index,
            x,
            generator=generator,
            return_dict=False,
        )
        self.previous_index = index
        return x
