"""The tiny OpenSora v1.2 VAE (``model/vae=opensora_v1_2_tiny``) that
tests/data/opensora_vae_reference.safetensors was made with, its deterministic weights
and its input: shared by the tests and the script that made the file (tests/data/README.md)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from safetensors.torch import save_file

from tora.utils.config import CONFIG_DIR

REFERENCE = Path(__file__).parent / "data" / "opensora_vae_reference.safetensors"
# Two clips of one full 17-frame chunk and a 6-frame one (padded to 8: 5 + 2 latent frames).
VIDEO_SHAPE = (2, 3, 23, 16, 16)
SAMPLE_SEED = 7


def tiny_vae_config() -> dict[str, Any]:
    """``configs/model/vae/opensora_v1_2_tiny.yaml``, composed."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["model/vae=opensora_v1_2_tiny"])
    GlobalHydra.instance().clear()
    return OmegaConf.to_container(cfg.model.vae, resolve=True)  # type: ignore[return-value]


def deterministic_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each entry a function of its name and shape only (so two implementations with the
    same names get the same weights): matrices ~ N(0, 1/fan_in), norm gains 1 + N(0, 0.1^2),
    other vectors N(0, 0.1^2); ``scale`` and ``shift`` kept."""
    weights = {}
    for name, value in state_dict.items():
        if name in ("scale", "shift"):
            weights[name] = value.clone()
            continue
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        noise = torch.randn(value.shape, generator=generator)
        if value.ndim > 1:
            weights[name] = noise / value[0].numel() ** 0.5
        elif "norm" in name and name.endswith("weight"):
            weights[name] = 1 + 0.1 * noise
        else:
            weights[name] = 0.1 * noise
    return weights


def write_release_folder(state_dict: dict[str, torch.Tensor], folder: Path) -> Path:
    """``folder`` in hpcai-tech/OpenSora-VAE-v1.2's layout: ``config.json`` (its keys, at
    this size) and ``model.safetensors`` holding ``state_dict``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, folder / "model.safetensors")
    config = {
        "architectures": ["VideoAutoencoderPipeline"],
        "model_type": "VideoAutoencoderPipeline",
        "micro_frame_size": 17,
        "shift": state_dict["shift"].flatten().tolist(),
        "scale": state_dict["scale"].flatten().tolist(),
        "freeze_vae_2d": False,
        "cal_loss": False,
        "vae_2d": {"type": "VideoAutoencoderKL", "micro_batch_size": 4, "subfolder": "vae"},
        "vae_temporal": {"type": "VAE_Temporal_SD", "from_pretrained": None},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def reference_video() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(VIDEO_SHAPE, generator=generator) * 2 - 1
