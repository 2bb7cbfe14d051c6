"""One LightningModule for every diffusion stage; it receives the built components
(``tora.models.build``) and holds the step, the logging and the optimiser.

- ``experiment=base_t2v``: text-to-video STDiT3 without motion (``use_motion: false``),
  everything trainable — the stand-in for pretrained OpenSora.
- ``experiment=stage1_flow`` / ``stage2_traj``: Tora. Frozen VAEs, text encoder and
  (part of) the base; what differs between the stages is config only (motion source
  dense/sparse, init checkpoint, trainable set, lr).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import grad_norm
from lightning.pytorch.utilities.types import OptimizerConfig, OptimizerLRSchedulerConfig

from tora.checkpoints import load_weights, read_state_dict
from tora.inference import Conditioning, GenerationConfig, TextCondition, ToraPipeline
from tora.models.build import COMPONENT_KEYS, ToraComponents, build_tora, component_config
from tora.motion import draw_tracks
from tora.training.latent_cache import LatentCache, encoder_fingerprint
from tora.training.logging import log_parameter_counts, log_video_grid
from tora.training.motion_input import MotionSourceConfig, at_step, motion_condition
from tora.training.optim import build_optimizers
from tora.utils.video import as_uint8_frames

log = logging.getLogger(__name__)

TRAINABLE_SETS = ("full", "temporal", "tora_modules", "tora_modules_adaln")
# The backbone part each partial set trains besides the motion guidance, by attribute name.
TRAINABLE_BACKBONE_PARTS = {
    "temporal": "temporal_blocks",
    "tora_modules_adaln": "adaln_modulations",
}
TIMESTEP_BUCKETS = 4
VALIDATION_TIMESTEPS = (0.25, 0.5, 0.75)


@dataclass
class ValidationConfig:
    """Validation sampling (``model.validation``): ``num_clips`` clips of the first batch
    sampled in ``sample_steps`` steps at CFG ``cfg_scale`` (motion in both branches) from
    noise seeded by ``seed``; flow-RGB inputs of a training batch every
    ``image_every_n_steps`` steps."""

    sample_steps: int
    cfg_scale: float
    num_clips: int
    seed: int
    image_every_n_steps: int


@dataclass
class StepInputs:
    """What a training or validation step feeds the model: video latents ``x0``, the
    caption, further model inputs ``extra`` (fps, motion latents) and the motion
    condition they came from (``motion_rgb``, ``tracks``, ``track_mask``; empty for the base)."""

    x0: torch.Tensor
    text: TextCondition
    extra: dict[str, torch.Tensor]
    motion: dict[str, torch.Tensor]

    def model_kwargs(self) -> dict[str, Any]:
        return dict(y=self.text.y, mask=self.text.mask, **self.extra)


class VideoDiffusionModule(L.LightningModule):
    """Trains ``net`` (built from ``net_config``, which is stored as a hyper-parameter so
    a checkpoint rebuilds its model alone) with the rectified-flow loss.

    Args:
        net: the built components.
        net_config: the component config ``net`` was built from.
        optimizer, scheduler: ``_partial_`` configs (``model/optimizer``, ``model/scheduler``).
        trainable: ``tora_modules`` (TE + fusers, the release), ``temporal`` (+ the
            backbone's temporal blocks, the paper), ``tora_modules_adaln`` (+ CogVideoX's
            adaLN modulation, alibaba/Tora issue #28) or ``full``.
        train_text_encoder: whether the text encoder trains.
        init_checkpoint, init_modules: a previous stage's file and the sub-modules
            (dotted paths) initialised from it.
        motion_source: where a training clip's motion condition comes from.
        validation: see :class:`ValidationConfig`.
        compile: ``torch.compile`` the backbone.
        latent_cache: keep the frozen VAE's latents of up to this many clips, and the
            motion encoder's latents of as many dense-flow conditions.
        latent_store: a directory where the cached latents are written at the end of
            training and read at the start by runs with the same encoders (None: the
            cache lives as long as the run).
    """

    def __init__(
        self,
        net: ToraComponents,
        net_config: dict[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        trainable: str = "full",
        train_text_encoder: bool = True,
        init_checkpoint: str | None = None,
        init_modules: Sequence[str] = ("model.backbone", "text_encoder"),
        motion_source: Mapping[str, Any] | None = None,
        validation: Mapping[str, Any] | None = None,
        compile: bool = False,
        latent_cache: int = 0,
        latent_store: str | None = None,
    ) -> None:
        super().__init__()
        if trainable not in TRAINABLE_SETS:
            raise ValueError(f"model.trainable {trainable!r}: one of {TRAINABLE_SETS} expected")
        self.save_hyperparameters(ignore=["net"])
        self.components = net
        self.model = net.model
        self.vae = net.vae
        self.text_encoder = net.text_encoder
        if net.motion_encoder is not None:
            self.motion_encoder = net.motion_encoder
        self.motion_source = MotionSourceConfig(**(motion_source or {}))
        self.validation_config = ValidationConfig(**(validation or {}))
        if init_checkpoint:
            self.load_init_checkpoint(init_checkpoint, init_modules)
        self.set_trainable(trainable, train_text_encoder)
        if compile:
            self.model.backbone.compile()
        self.latent_cache = LatentCache(latent_cache)
        # A dense condition is a function of the clip (its flow), so its latents are as
        # cacheable as the video's; sparse ones are drawn anew each step.
        self.motion_latent_cache = LatentCache(latent_cache)
        self.latent_store = latent_store
        # Sparse clips whose motion map came out empty (no stored track), counted.
        self.sparse_clips_without_tracks = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VideoDiffusionModule:
        """Build the components from the ``model`` config, then the module around them."""
        net_config = component_config(config)
        training = {k: v for k, v in config.items() if k not in (*COMPONENT_KEYS, "_target_")}
        return cls(net=build_tora(net_config), net_config=net_config, **training)

    def configure_optimizers(self) -> OptimizerConfig | OptimizerLRSchedulerConfig:
        return build_optimizers(self, self.hparams["optimizer"], self.hparams["scheduler"])

    # ----------------------------------------------------------------- set-up
    def load_init_checkpoint(self, path: str, modules: Sequence[str]) -> None:
        """Initialise the named sub-modules (dotted paths) from a previous stage."""
        state = read_state_dict(path)
        for name in modules:
            loaded = load_weights(self.get_submodule(name), state, path, prefix=name + ".")
            log.info("initialised %s from %s (%d tensors)", name, path, len(loaded))

    def set_trainable(self, trainable: str, train_text_encoder: bool) -> None:
        self.requires_grad_(False)
        if trainable == "full":
            self.model.backbone.requires_grad_(True)
        elif trainable in TRAINABLE_BACKBONE_PARTS:
            part = TRAINABLE_BACKBONE_PARTS[trainable]
            if not hasattr(self.model.backbone, part):
                raise ValueError(
                    f"model.trainable {trainable!r}: {type(self.model.backbone).__name__} has no "
                    f"{part}; one of {TRAINABLE_SETS} that it has expected"
                )
            getattr(self.model.backbone, part).requires_grad_(True)
        if self.model.motion_guidance is not None:
            self.model.motion_guidance.requires_grad_(True)
        if train_text_encoder:
            self.text_encoder.requires_grad_(True)
        # OpenSora keeps the rotary frequencies as a parameter with gradients off.
        for name, param in self.model.backbone.named_parameters():
            if name.startswith("rope."):
                param.requires_grad_(False)

    def check_clip_size(self, num_frames: int, resolution: Sequence[int]) -> None:
        """Fail before training on clips the VAE or the backbone's patches cannot take,
        naming the keys to change."""
        height, width = resolution
        try:
            _, latent_h, latent_w = self.vae.latent_shape(num_frames, height, width)
        except ValueError as error:
            raise ValueError(
                f"data.num_frames={num_frames} / data.resolution={list(resolution)} do not fit "
                f"the VAE: {error}"
            ) from None
        _, patch_h, patch_w = self.model.backbone.patch_size
        if latent_h % patch_h or latent_w % patch_w:
            raise ValueError(
                f"data.resolution={list(resolution)} gives {latent_h} x {latent_w} latents, not "
                f"divisible by model.backbone.patch_size={list(self.model.backbone.patch_size)}: "
                f"use a multiple of {self.vae.spatial_factor * patch_h} x "
                f"{self.vae.spatial_factor * patch_w} pixels"
            )

    def train(self, mode: bool = True) -> VideoDiffusionModule:
        super().train(mode)
        self.vae.eval()
        if self.components.motion_encoder is not None:
            self.motion_encoder.eval()
        return self

    # ------------------------------------------------------------ conditions
    @torch.no_grad()
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        """The frozen VAE's normalised latents; looked up in / added to the latent
        cache when it is on."""
        if self.latent_cache.max_clips:
            return self.latent_cache.encode(video, self.vae.encode_latents)
        return self.vae.encode_latents(video)

    def encode_text(self, captions: list[str]) -> TextCondition:
        y, mask = self.text_encoder.encode(captions)
        return TextCondition(y.to(self.device), mask.to(self.device))

    def motion_inputs(
        self,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Flow-RGB condition and its latents (empty for the base model); dense
        conditions' latents go through the motion latent cache."""
        if self.model.motion_guidance is None:
            return {}
        assert self.components.motion_rgb is not None  # built with the motion guidance
        source = at_step(self.motion_source, self.global_step)
        condition = motion_condition(batch, source, self.components.motion_rgb, generator)
        self.count_empty_sparse(batch, condition)
        condition["motion_latents"] = self.encode_motion(
            condition["motion_rgb"], condition["dense"]
        )
        return condition

    def count_empty_sparse(self, batch: dict[str, Any], condition: dict[str, torch.Tensor]) -> None:
        """Count sparse clips left without a track (``sparse_from=tracks`` on a clip that
        stores none): they train on an empty motion map; the first is named in a warning."""
        empty = (~condition["dense"] & ~condition["track_mask"].any(dim=1)).nonzero().flatten()
        if len(empty) == 0:
            return
        if self.sparse_clips_without_tracks == 0:
            key = batch["key"][int(empty[0])] if "key" in batch else "(no key)"
            log.warning(
                "clip %s has no track for its sparse motion condition (model.motion_source"
                ".sparse_from=%s): it trains on an empty motion map; counted as "
                "train/sparse_clips_without_tracks",
                key,
                self.motion_source.sparse_from,
            )
        self.sparse_clips_without_tracks += len(empty)

    @torch.no_grad()
    def encode_motion(self, motion_rgb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """The motion encoder's latents of ``motion_rgb [B, 3, T, H, W]``; those of dense
        clips (``dense [B]``) looked up in / added to the motion latent cache."""
        encode = self.motion_encoder.encode
        cache = self.motion_latent_cache
        if not (cache.max_clips and dense.any()):
            return encode(motion_rgb)
        if dense.all():
            return cache.encode(motion_rgb, encode)
        # A mixed batch is encoded whole (one clip alone encodes slower than two on a
        # CPU); its dense clips' latents are kept for the batches that are all dense.
        latents = encode(motion_rgb)
        cached = dense.nonzero().flatten().tolist()
        cache.store(motion_rgb[cached], latents[cached])
        return latents

    def step_inputs(
        self,
        batch: dict[str, Any],
        generator: torch.Generator | None = None,
    ) -> StepInputs:
        x0 = self.encode_video(batch["video"])
        motion = self.motion_inputs(batch, generator)
        extra = {"fps": batch["fps"].to(x0)} if "fps" in batch else {}
        if "motion_latents" in motion:
            extra["motion_latents"] = motion["motion_latents"]
        return StepInputs(x0, self.encode_text(batch["caption"]), extra, motion)

    # -------------------------------------------------------------- training
    def model_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Per-sample losses ``loss [B]`` at timesteps ``t [B]``, and the batch's motion
        condition (``motion``)."""
        inputs = self.step_inputs(batch)
        out = self.components.flow.training_losses(
            self.components.predict, inputs.x0, inputs.model_kwargs()
        )
        return {**out, "motion": inputs.motion}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.model_step(batch)
        losses, t, motion = out["loss"], out["t"], out["motion"]
        loss = losses.mean()
        batch_size = losses.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self.latent_cache.max_clips:
            self.log("train/latent_cache_hit_rate", self.latent_cache.hit_rate)
            if self.motion_latent_cache.hits + self.motion_latent_cache.misses:
                self.log("train/motion_latent_cache_hit_rate", self.motion_latent_cache.hit_rate)
        if self.sparse_clips_without_tracks:
            self.log("train/sparse_clips_without_tracks", float(self.sparse_clips_without_tracks))
        bucket = (t * TIMESTEP_BUCKETS).long().clamp(max=TIMESTEP_BUCKETS - 1)
        for b in range(TIMESTEP_BUCKETS):
            chosen = bucket == b
            if chosen.any():
                self.log(
                    f"train/loss_t{b / TIMESTEP_BUCKETS:.2f}-{(b + 1) / TIMESTEP_BUCKETS:.2f}",
                    losses[chosen].mean(),
                    batch_size=int(chosen.sum()),
                )
        if (
            self.global_step % self.validation_config.image_every_n_steps == 0
            and "motion_rgb" in motion
        ):
            log_video_grid(self, "train/motion_rgb", [batch["video"][:2], motion["motion_rgb"][:2]])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = grad_norm(self, norm_type=2)
        if "grad_2.0_norm_total" in norms:
            self.log("train/grad_norm", norms["grad_2.0_norm_total"])

    def on_fit_start(self) -> None:
        log_parameter_counts(self)
        self.read_latent_store()

    def on_train_end(self) -> None:
        self.write_latent_store()

    # ------------------------------------------------------------ latent store
    @torch.no_grad()
    def encode_latents(self, batch: dict[str, Any], parts: Sequence[str]) -> None:
        """Fill the latent caches of ``parts`` ("video", "motion": the dense conditions
        the motion source makes) from a batch, without a training step."""
        if "video" in parts:
            self.encode_video(batch["video"])
        if "motion" in parts:
            self.motion_inputs(batch)

    def read_latent_store(self) -> None:
        for store, part, cache, fingerprint in self.stored_caches():
            added = cache.load(store, part, fingerprint)
            log.info("latent store: %d %s latents read from %s", added, part, store)

    def write_latent_store(self) -> None:
        for store, part, cache, fingerprint in self.stored_caches():
            if cache.unsaved:  # a file read at the start is not written back unchanged
                path = cache.save(store, part, fingerprint, self.trainer.global_rank)
                log.info(
                    "latent store: %d %s latents written to %s", len(cache.latents), part, path
                )

    def stored_caches(self) -> list[tuple[str, str, LatentCache, str]]:
        """(store, part, cache, encoder fingerprint) of the caches ``latent_store`` keeps:
        the video VAE's and, with motion guidance, the motion encoder's."""
        store = self.latent_store
        if not (store and self.latent_cache.max_clips):
            return []
        encoders: list[tuple[str, LatentCache, torch.nn.Module, str]] = [
            ("video", self.latent_cache, self.vae, "vae")
        ]
        if self.model.motion_guidance is not None:
            encoders.append(
                ("motion", self.motion_latent_cache, self.motion_encoder, "motion_encoder")
            )
        precision = str(self.trainer.precision)
        stored = []
        for part, cache, encoder, config_key in encoders:
            # The file a component was loaded from is not part of what it computes.
            config = {
                key: value
                for key, value in (self.hparams["net_config"].get(config_key) or {}).items()
                if key != "checkpoint"
            }
            stored.append((store, part, cache, encoder_fingerprint(encoder, config, precision)))
        return stored

    # ------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Loss at fixed timesteps with fixed noise (comparable across runs), and
        sampled clips for the first batch."""
        generator = torch.Generator().manual_seed(self.validation_config.seed + batch_idx)
        inputs = self.step_inputs(batch, generator)
        noise = torch.randn(inputs.x0.shape, generator=generator).to(inputs.x0)
        losses = []
        batch_size = inputs.x0.shape[0]
        for t_value in VALIDATION_TIMESTEPS:
            t = torch.full((batch_size,), t_value, device=inputs.x0.device)
            loss = self.components.flow.training_losses(
                self.components.predict, inputs.x0, inputs.model_kwargs(), t=t, noise=noise
            )["loss"].mean()
            self.log(f"val/loss_t{t_value}", loss, batch_size=batch_size, sync_dist=True)
            losses.append(loss)
        self.log("val/loss", torch.stack(losses).mean(), batch_size=batch_size, sync_dist=True)
        if batch_idx == 0:
            self.log_samples(batch, inputs, noise)

    @torch.no_grad()
    def log_samples(self, batch: dict[str, Any], inputs: StepInputs, noise: torch.Tensor) -> None:
        """Clips sampled by the inference pipeline's loop from the batch's captions and
        motion, beside the real clips and their flow-RGB."""
        n = min(self.validation_config.num_clips, noise.shape[0])
        mask = None if inputs.text.mask is None else inputs.text.mask[:n]
        text = TextCondition(inputs.text.y[:n], mask)
        pipeline = ToraPipeline(self.components, self.device)
        null_text = pipeline.null_text(text, [None] * n)
        conditioning = Conditioning(extra={k: v[:n] for k, v in inputs.extra.items()})
        if "motion_latents" in conditioning.extra:  # extracted once, not per step
            latents = conditioning.extra.pop("motion_latents")
            assert self.model.motion_guidance is not None  # motion_inputs made the latents
            conditioning.motion_features = self.model.motion_guidance.extract(latents)
        settings = GenerationConfig(
            steps=self.validation_config.sample_steps,
            cfg_scale=self.validation_config.cfg_scale,
            motion_in_guidance=False,
        )
        latents = pipeline.denoise(noise[:n], text, null_text, conditioning, settings)
        video = self.vae.decode_latents(latents, batch["video"].shape[2]).clamp(-1, 1)
        rows = [batch["video"][:n]]
        if "motion_rgb" in inputs.motion:
            rows.append(inputs.motion["motion_rgb"][:n])
            if inputs.motion["track_mask"][:n].any():
                video = overlay_tracks(
                    video, inputs.motion["tracks"][:n], inputs.motion["track_mask"][:n]
                )
        rows.append(video)
        log_video_grid(self, "val/samples", rows)


def overlay_tracks(
    video: torch.Tensor, tracks: torch.Tensor, track_mask: torch.Tensor
) -> torch.Tensor:
    """Draw the requested tracks on clips ``[B, 3, T, H, W]`` in [-1, 1]."""
    drawn = []
    for clip, clip_tracks, clip_mask in zip(video, tracks, track_mask, strict=True):
        out = draw_tracks(as_uint8_frames(clip), clip_tracks[clip_mask].cpu())
        drawn.append(torch.from_numpy(out).permute(3, 0, 1, 2).float() / 127.5 - 1)
    return torch.stack(drawn).to(video)
