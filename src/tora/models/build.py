"""Every component of Tora built from its config in one place: the backbone, the video VAE,
the text encoder, the motion encoder, the motion guidance and the diffusion process.

Used by the training stages (``VideoDiffusionModule.from_config``, ``VAEModule.from_config``)
and by inference (``tora.inference``), so a checkpoint's stored component configs rebuild
exactly what trained. Those configs are data: a ``_target_`` is looked up in
:data:`TARGETS`, a fixed registry of this package's classes, and anything else is refused;
no Hydra, and no code named by a file is ever imported or called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tora.checkpoints import load_weights, load_weights_from, read_hyper_parameters, read_state_dict
from tora.diffusion import CogVideoXDiffusion, RectifiedFlow
from tora.models.cogvideox import (
    CogVideoXBackbone,
    CogVideoXMotionGuidance,
    CogVideoXTora,
    build_cogvideox,
    build_cogvideox_vae,
    load_pretrained,
)
from tora.models.fusers import MotionGuidance
from tora.models.motion_encoders import VAE_KINDS, MotionEncoder, build_motion_encoder
from tora.models.opensora_vae import OpenSoraVAE
from tora.models.stdit3 import STDiT3, STDiT3Config
from tora.models.text_encoders import CaptionEncoder, T5TextEncoder, TextEncoder
from tora.models.tora import Tora
from tora.models.vae import CausalVAE3D, shortcut_mode
from tora.models.video_vae import VideoVAE
from tora.motion import MotionRGBConfig


def build_stdit3(**config: Any) -> STDiT3:
    return STDiT3(STDiT3Config(**config))


# The only callables a component config may name.
TARGETS: dict[str, Callable[..., nn.Module]] = {
    "tora.models.stdit3.STDiT3": build_stdit3,
    "tora.models.vae.CausalVAE3D": CausalVAE3D,
    "tora.models.opensora_vae.OpenSoraVAE": OpenSoraVAE,
    "tora.models.text_encoders.CaptionEncoder": CaptionEncoder,
    "tora.models.text_encoders.T5TextEncoder": T5TextEncoder,
    "tora.models.cogvideox.CogVideoXBackbone": build_cogvideox,
    "tora.models.cogvideox.CogVideoXVAE": build_cogvideox_vae,
}
# The diffusion processes ``model.diffusion._target_`` may name (default: rectified flow).
DIFFUSIONS: dict[str, Callable[..., RectifiedFlow | CogVideoXDiffusion]] = {
    "tora.diffusion.RectifiedFlow": RectifiedFlow,
    "tora.diffusion.CogVideoXDiffusion": CogVideoXDiffusion,
}
# What a component config without ``_target_`` builds (files written before it was stored).
DEFAULT_TARGETS = {
    "backbone": "tora.models.stdit3.STDiT3",
    "vae": "tora.models.vae.CausalVAE3D",
}
# The keys of a diffusion stage's model config that describe its components; the rest
# (optimiser, trainable set, ...) configure the training.
COMPONENT_KEYS = (
    "backbone",
    "vae",
    "text_encoder",
    "use_motion",
    "fuser",
    "motion_encoder",
    "motion_rgb",
    "diffusion",
    "vae_checkpoint",
    "backbone_checkpoint",
    "pretrained",
)
# Sampling settings stored in the diffusion config by files written before they moved
# to the generation config; they do not change the model.
FORMER_DIFFUSION_KEYS = ("num_sampling_steps", "cfg_scale")


def instantiate(slot: str, config: Mapping[str, Any], source: str) -> nn.Module:
    """The component ``slot`` described by ``config``: its ``_target_`` (or the slot's
    default) must be in :data:`TARGETS`; the other keys are its keyword arguments."""
    kwargs = dict(config)
    target = kwargs.pop("_target_", DEFAULT_TARGETS.get(slot))
    if target not in TARGETS:
        raise ValueError(
            f"{source}: {slot}._target_ {target!r} is not a component this project builds; "
            f"one of {sorted(TARGETS)} expected (a stored config is data, never code to run)"
        )
    return TARGETS[target](**kwargs)


@dataclass
class ToraComponents:
    """The parts of Tora, built: ``model`` (backbone + motion guidance), the frozen video
    ``vae``, ``text_encoder``, ``motion_encoder`` (None for the base model), the diffusion
    process ``flow`` and the flow-RGB normalisation ``motion_rgb`` (None without motion).

    ``modules()`` holds the weights under the keys every checkpoint uses
    (``model.backbone.…``, ``vae.…``, ``text_encoder.…``, ``motion_encoder.…``).
    """

    model: Tora | CogVideoXTora
    vae: VideoVAE
    text_encoder: TextEncoder
    motion_encoder: MotionEncoder | None
    flow: RectifiedFlow | CogVideoXDiffusion
    motion_rgb: MotionRGBConfig | None

    def modules(self) -> nn.ModuleDict:
        parts: dict[str, nn.Module] = {
            "model": self.model,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
        }
        if self.motion_encoder is not None:
            parts["motion_encoder"] = self.motion_encoder
        return nn.ModuleDict(parts)

    def predict(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, mask=None, **extra
    ) -> torch.Tensor:
        """The network as the diffusion process calls it, ``t`` in [0, 1]."""
        return self.model(x, self.flow.model_timestep(t), y, mask=mask, **extra)


def vae_architecture(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Every :class:`CausalVAE3D` argument, constructor defaults filled in (a checkpoint
    written before an argument existed was built with its default)."""
    cfg = {k: v for k, v in cfg.items() if k != "_target_"}
    parameters = inspect.signature(CausalVAE3D).parameters
    unknown = sorted(set(cfg) - set(parameters))
    if unknown:
        raise ValueError(
            f"VAE config: unknown arguments {unknown}; expected some of {list(parameters)}"
        )
    full = {name: p.default for name, p in parameters.items()} | cfg
    full["shortcut"] = shortcut_mode(full["shortcut"])
    return {name: list(v) if isinstance(v, (tuple, list)) else v for name, v in full.items()}


def check_same_vae(checkpoint: str | Path, cfg: Mapping[str, Any]) -> None:
    """Refuse VAE weights trained with another architecture: ``norm`` and ``shortcut``
    change the computation without changing a single state-dict key."""
    trained = read_hyper_parameters(checkpoint).get("vae")
    if trained is None:
        return
    trained, wanted = vae_architecture(trained), vae_architecture(cfg)
    differ = {k: (trained[k], wanted[k]) for k in wanted if trained[k] != wanted[k]}
    if differ:
        listing = ", ".join(
            f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in differ.items()
        )
        raise ValueError(
            f"VAE checkpoint {checkpoint} was trained with another architecture ({listing}): "
            "retrain it (make train-video-vae) or set model.vae to match"
        )


def check_latent_statistics(vae: CausalVAE3D, checkpoint: str | Path) -> None:
    """Refuse a VAE whose latent normalisation was never fitted (shift 0, scale 1 exactly):
    the diffusion stages would see unnormalised latents."""
    if bool((vae.latent_shift == 0).all()) and bool((vae.latent_scale == 1).all()):
        raise ValueError(
            f"VAE checkpoint {checkpoint}: its latent statistics were never fitted (shift 0, "
            "scale 1); use the file a finished VAE run exports (make train-video-vae) or a "
            "checkpoint saved after the statistics were fitted"
        )


def build_vae(
    cfg: Mapping[str, Any],
    checkpoint: str | Path | None = None,
    require_statistics: bool = True,
    source: str = "model.vae",
) -> VideoVAE:
    """The VAE ``cfg`` names, loaded from ``checkpoint`` (its ``vae.`` entries, or a bare
    VAE file) after checking that it was trained with this architecture and, for a frozen
    VAE the diffusion stages use, that its latent statistics were fitted."""
    vae = cast(VideoVAE, instantiate("vae", cfg, source))  # what TARGETS builds for "vae"
    if checkpoint:
        if isinstance(vae, CausalVAE3D):  # the VAEs this project trains and normalises
            check_same_vae(checkpoint, cfg)
        # A checkpoint of this project holds the VAE under vae.*; a bare VAE file (OpenSora's
        # release) holds nothing else.
        state_dict = read_state_dict(checkpoint)
        prefix = "vae." if any(key.startswith("vae.") for key in state_dict) else ""
        load_weights(vae, state_dict, checkpoint, prefix=prefix)
        if isinstance(vae, CausalVAE3D) and require_statistics:
            check_latent_statistics(vae, checkpoint)
    return vae


def check_same_motion_rgb(checkpoint: str | Path, motion_rgb: MotionRGBConfig) -> None:
    """The motion VAE must have been trained on the flow-RGB normalisation it now encodes."""
    trained = read_hyper_parameters(checkpoint).get("motion_rgb")
    if trained is None:  # e.g. a bare .safetensors: nothing to compare
        return
    trained = MotionRGBConfig(**trained)
    if trained != motion_rgb:
        raise ValueError(
            f"model.motion_encoder.checkpoint {checkpoint} was trained with motion_rgb {trained}, "
            f"but this run uses {motion_rgb}: pick the same model/motion_rgb for both "
            "(the flow-RGB normalisation must be ONE everywhere)"
        )


def component_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The component keys of a diffusion stage's model config (or of a checkpoint's
    hyper-parameters: ``net_config``, flat in files written before)."""
    if "net_config" in config:
        config = config["net_config"]
    return {key: config[key] for key in COMPONENT_KEYS if key in config}


def build_tora(
    config: Mapping[str, Any], load_weights: bool = True, source: str = "model"
) -> ToraComponents:
    """Build every component from a diffusion stage's component config.

    ``load_weights``: load the prerequisite files the config names (``vae_checkpoint``,
    ``backbone_checkpoint``, ``motion_encoder.checkpoint``); off when the weights come
    from one checkpoint of the whole model (inference).
    """
    config = component_config(config)
    files = config if load_weights else {}
    vae_cfg = dict(config["vae"])
    vae = build_vae(vae_cfg, files.get("vae_checkpoint"), source=f"{source}.vae")
    # What TARGETS builds for these slots.
    text_encoder = cast(TextEncoder, instantiate("text_encoder", config["text_encoder"], source))
    backbone = cast(STDiT3 | CogVideoXBackbone, instantiate("backbone", config["backbone"], source))
    cogvideox = isinstance(backbone, CogVideoXBackbone)
    # CogVideoX-I2V takes image latents beside the noisy ones.
    denoised_channels = (
        backbone.latent_channels
        if isinstance(backbone, CogVideoXBackbone)
        else backbone.in_channels
    )
    if denoised_channels != vae.latent_channels:
        raise ValueError(
            f"{source}.backbone.in_channels={backbone.in_channels} but the VAE has "
            f"latent_channels={vae.latent_channels}: the backbone denoises the VAE's "
            "latents, set both to the same count"
        )

    guidance = motion_encoder = motion_rgb = None
    if config.get("use_motion", True):
        guidance = (CogVideoXMotionGuidance if cogvideox else MotionGuidance)(
            hidden_size=backbone.hidden_size,
            depth=backbone.depth,
            latent_channels=vae.latent_channels,
            patch_size=backbone.patch_size,
            **dict(config.get("fuser") or {}),
        )
        encoder_cfg = dict(config["motion_encoder"])
        kind = encoder_cfg.pop("kind")
        checkpoint = encoder_cfg.get("checkpoint") if files else None
        encoder_cfg.pop("checkpoint", None)
        motion_rgb = MotionRGBConfig(**dict(config.get("motion_rgb") or {}))
        encoder_vae = None
        if kind in VAE_KINDS:
            encoder_vae = build_vae(vae_cfg, checkpoint, source=f"{source}.motion_encoder")
            if kind == "motion_vae" and checkpoint:
                check_same_motion_rgb(checkpoint, motion_rgb)
        # The pooling encoders compress as the video VAE does, onto its latent grid.
        factors = {"spatial_factor": vae.spatial_factor, "temporal_factor": vae.temporal_factor}
        motion_encoder = build_motion_encoder(kind, vae=encoder_vae, **factors, **encoder_cfg)

    # guidance was built above for this backbone. Narrowed on STDiT3: diffusers' classes are
    # untyped, so isinstance on CogVideoXBackbone narrows nothing.
    model: Tora | CogVideoXTora
    if isinstance(backbone, STDiT3):
        model = Tora(backbone, cast(MotionGuidance | None, guidance))
    else:
        model = CogVideoXTora(backbone, cast(CogVideoXMotionGuidance | None, guidance))
    if files.get("backbone_checkpoint"):
        if isinstance(model, CogVideoXTora):  # a transformer folder, or released Tora weights
            load_pretrained(model, files["backbone_checkpoint"])
        else:
            load_weights_from(backbone, files["backbone_checkpoint"])
    return ToraComponents(
        model=model,
        vae=vae.requires_grad_(False).eval(),
        text_encoder=text_encoder,
        motion_encoder=motion_encoder,
        flow=build_diffusion(config.get("diffusion") or {}, source, vae.spatial_factor),
        motion_rgb=motion_rgb,
    )


def build_diffusion(
    config: Mapping[str, Any], source: str = "model", spatial_compression: int = 8
) -> RectifiedFlow | CogVideoXDiffusion:
    """The diffusion process ``config`` names (``_target_`` in :data:`DIFFUSIONS`,
    rectified flow by default); sampling keys of older files are dropped. Rectified
    flow's timestep shift counts pixels through the VAE's ``spatial_compression``."""
    kwargs = {k: v for k, v in config.items() if k not in FORMER_DIFFUSION_KEYS}
    target = kwargs.pop("_target_", "tora.diffusion.RectifiedFlow")
    if target == "tora.diffusion.RectifiedFlow":
        kwargs.setdefault("spatial_compression", spatial_compression)
    if target not in DIFFUSIONS:
        raise ValueError(
            f"{source}: diffusion._target_ {target!r} is not a diffusion process this project "
            f"builds; one of {sorted(DIFFUSIONS)} expected"
        )
    return DIFFUSIONS[target](**kwargs)
