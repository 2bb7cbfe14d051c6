"""``python -m tora.sample``: generate videos from prompt(s) plus trajectories.

Writes per video: ``<name>.mp4``, ``<name>_tracks.mp4`` (the requested tracks
drawn on it), ``<name>_tracks.json``, and once ``config.yaml`` (what was used).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tora.data.schema import encode_video
from tora.inference import GenerationConfig, GenerationRequest, ToraPipeline
from tora.models.cogvideox import find_layout
from tora.motion import draw_tracks, load_tracks, write_tracks_json
from tora.utils.config import CONFIG_PATH
from tora.utils.device import resolve_device

log = logging.getLogger(__name__)


def read_prompts(cfg: DictConfig) -> list[str]:
    if cfg.get("prompts_file"):
        path = Path(cfg.prompts_file)
        if not path.exists():
            raise FileNotFoundError(f"prompts_file {path} does not exist")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts_file {path}: no prompt (one per line expected)")
        return prompts
    if not cfg.get("prompt"):
        raise ValueError("prompt: a non-empty prompt (or prompts_file=PATH) expected")
    return [str(cfg.prompt)]


def read_image(path: str | None, height: int, width: int) -> np.ndarray | None:
    """The first frame as uint8 ``[H, W, 3]`` RGB, resized and centre-cropped."""
    if not path:
        return None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"image {path}: not found or not a readable PNG/JPG")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    scale = max(height / image.shape[0], width / image.shape[1])
    resized = cv2.resize(
        image,
        (round(image.shape[1] * scale), round(image.shape[0] * scale)),
        interpolation=cv2.INTER_AREA,
    )
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def slug(text: str, index: int) -> str:
    words = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48]
    return f"{index:03d}_{words or 'video'}"


def save_video(path: Path, frames: np.ndarray, fps: float) -> None:
    path.write_bytes(encode_video(frames, fps))


def model_config(cfg: DictConfig) -> dict | None:
    """The components ``model=`` names (used with released Tora weights), resolved. A
    Tora_T2V_diffusers download holds its own VAE and T5: it is ``model.pretrained``
    unless that is given."""
    if cfg.get("model") is None:
        return None
    if OmegaConf.is_missing(cfg.model, "pretrained") and find_layout(cfg.ckpt) == "diffusers":
        cfg.model.pretrained = str(cfg.ckpt)
    return OmegaConf.to_container(cfg.model, resolve=True)  # type: ignore[return-value]


def load_pipeline(cfg: DictConfig) -> ToraPipeline:
    """The pipeline of ``cfg.ckpt`` (and ``base_ckpt``, ``model=``) with the loading
    settings of the generation group: one loader for sample, evaluate and the demo."""
    return ToraPipeline.from_checkpoint(
        cfg.ckpt,
        cfg.get("base_ckpt"),
        device=resolve_device(cfg.device),
        model_config=model_config(cfg),
        dtype=getattr(torch, cfg.dtype) if cfg.get("dtype") else None,
        cpu_offload=cfg.cpu_offload,
    )


def sample(cfg: DictConfig) -> list[Path]:
    """Generate every prompt of ``cfg``; returns the written mp4 paths."""
    height, width = cfg.resolution
    settings = GenerationConfig.from_mapping(cfg)
    pipeline = load_pipeline(cfg)
    tracks = (
        load_tracks(list(cfg.tracks), width, height, cfg.num_frames) if cfg.get("tracks") else None
    )
    if tracks is None and pipeline.uses_motion:
        log.info("no tracks given (tracks=[file, ...]): sampling without the motion condition")
    if tracks is not None and not pipeline.uses_motion:
        log.warning(
            "checkpoint %s has no motion guidance: the tracks are drawn but not used", cfg.ckpt
        )
    image = read_image(cfg.get("image"), height, width)
    prompts = read_prompts(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    written = []
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start : start + cfg.batch_size]
        requests = [GenerationRequest(p, tracks, cfg.get("negative_prompt"), image) for p in chunk]
        batch_settings = dataclasses.replace(settings, seed=settings.seed + start)
        videos = pipeline.generate(requests, cfg.num_frames, height, width, batch_settings)
        for offset, (prompt, video) in enumerate(zip(chunk, videos, strict=True)):
            name = slug(prompt, start + offset)
            save_video(out_dir / f"{name}.mp4", video, cfg.fps)
            if tracks is not None:
                save_video(out_dir / f"{name}_tracks.mp4", draw_tracks(video, tracks), cfg.fps)
                write_tracks_json(out_dir / f"{name}_tracks.json", tracks, (width, height))
            written.append(out_dir / f"{name}.mp4")
            log.info("wrote %s (%s)", out_dir / f"{name}.mp4", prompt)
    return written


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
