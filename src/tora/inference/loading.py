"""Rebuilding Tora from one checkpoint, from a Tora-modules file over a full one, or from
the released Tora weights (alibaba/Tora, any layout) with the components a model config names."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tora.checkpoints import load_weights, load_weights_from, read_checkpoint
from tora.models.build import ToraComponents, build_tora, component_config
from tora.models.cogvideox import find_layout, read_official_tora
from tora.models.cogvideox.official import release_guidance_config

log = logging.getLogger(__name__)


def load_components(
    ckpt: str | Path,
    base_ckpt: str | Path | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> ToraComponents:
    """The components of a trained diffusion model, weights loaded strictly.

    ``ckpt`` is a Lightning ``.ckpt``, a full ``.safetensors`` from ``tora.convert_checkpoint``
    or a DeepSpeed folder; with ``base_ckpt``, ``ckpt`` is a Tora-modules file applied
    over the full checkpoint ``base_ckpt``. Released Tora weights: see
    :func:`load_official_components`.
    """
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise FileNotFoundError(
            f"checkpoint {ckpt} does not exist (train it with `make train-stage2`, or pass ckpt=PATH "
            "to a Lightning .ckpt, a converted .safetensors, or a Tora-modules file with base_ckpt=)"
        )
    if find_layout(ckpt) is not None:
        return load_official_components(ckpt, model_config, base_ckpt)
    full = Path(base_ckpt) if base_ckpt else ckpt
    checkpoint = read_checkpoint(full)
    hparams = checkpoint.hyper_parameters
    if "input" in hparams and "vae" in hparams and "backbone" not in hparams:
        raise ValueError(
            f"checkpoint {full} is a VAE checkpoint (a {hparams['input']} VAE stage), not a "
            "diffusion model: pass a stage-1 / stage-2 (or base) checkpoint as ckpt="
        )
    config = component_config(hparams)
    if "backbone" not in config:
        raise ValueError(
            f"checkpoint {full}: no model hyper-parameters stored (a Lightning .ckpt or a full "
            ".safetensors from tora.convert_checkpoint expected); a Tora-modules-only file needs "
            "base_ckpt= (a full checkpoint of the same model) to be applied over"
        )
    components = build_tora(config, load_weights=False, source=f"checkpoint {full}")
    modules = components.modules()
    load_weights(modules, checkpoint.state_dict, full)
    if base_ckpt:
        loaded = load_weights_from(modules, ckpt, partial=True)
        log.info("applied %d Tora-module tensors from %s over %s", len(loaded), ckpt, base_ckpt)
    modules.eval()
    return components


def load_official_components(
    ckpt: str | Path,
    model_config: Mapping[str, Any] | None,
    transformer: str | Path | None = None,
) -> ToraComponents:
    """Released Tora weights (``tora.models.cogvideox.official``; ``transformer``: the
    CogVideoX transformer folder under split weights) as the backbone, extractor and
    fusers, shaped as the weights are; the VAE, text encoder, motion encoder and diffusion
    process from ``model_config`` (``model=cogvideox``)."""
    layout = find_layout(ckpt)
    if model_config is None:
        raise ValueError(
            f"{ckpt} holds released Tora weights ({layout} layout): pass model=cogvideox and "
            "model.pretrained=<CogVideoX-5b or Tora_T2V_diffusers download> for the VAE, the "
            "text encoder and the sampler"
        )
    weights = read_official_tora(ckpt, transformer)
    config = component_config(model_config)
    config["backbone"] = {
        "_target_": "tora.models.cogvideox.CogVideoXBackbone",
        **weights.backbone_config,
    }
    depth = int(weights.backbone_config["num_layers"])
    config["fuser"] = {**release_guidance_config(weights.state_dict, depth), "placement": "all"}
    config["use_motion"] = True
    components = build_tora(config, load_weights=False, source=f"released Tora {ckpt}")
    load_weights(components.model, weights.state_dict, weights.source)
    components.model.eval()
    log.info("loaded released Tora weights (%s layout) from %s", layout, weights.source)
    return components
