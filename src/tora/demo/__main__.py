"""``python -m tora.demo ckpt=PATH``: serve the trajectory-drawing page for a checkpoint.

Host and port: ``server_name=`` / ``server_port=``, else Gradio's ``GRADIO_SERVER_NAME``
/ ``GRADIO_SERVER_PORT``, else 127.0.0.1 and the first free port from 7860.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import hydra
from omegaconf import DictConfig

from tora.demo.app import CSS, PageDefaults, build_demo
from tora.demo.generation import DemoGenerator
from tora.inference import GenerationConfig
from tora.metrics import LucasKanadeTracker
from tora.sample import load_pipeline
from tora.utils.config import CONFIG_PATH


def build(cfg: DictConfig) -> gr.Blocks:
    """The page for ``cfg`` (``configs/demo.yaml``), not yet served."""
    settings = GenerationConfig.from_mapping(cfg)
    generator = DemoGenerator(
        load_pipeline(cfg),
        tuple(cfg.resolution),
        cfg.out_dir,
        LucasKanadeTracker(**cfg.lucas_kanade),
        cfg.max_tracks,
        settings,
    )
    defaults = PageDefaults(
        num_frames=cfg.num_frames,
        max_frames=cfg.max_frames,
        steps=settings.steps,
        cfg_scale=settings.cfg_scale,
        strength=(
            settings.cfg_scale
            if settings.motion_guidance_scale is None
            else settings.motion_guidance_scale
        ),
        seed=settings.seed,
        canvas_long_side=cfg.canvas_long_side,
        examples=list(cfg.examples),
    )
    return build_demo(generator, defaults)


def serve(cfg: DictConfig, block: bool = True) -> gr.Blocks:
    """Build and launch; ``block=False`` returns once the server runs (tests)."""
    demo = build(cfg)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    demo.launch(
        server_name=cfg.server_name,
        server_port=cfg.server_port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        allowed_paths=[str(Path(cfg.out_dir).resolve())],
        css=CSS,
        footer_links=["api"],
    )
    return demo


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="demo")
def main(cfg: DictConfig) -> None:
    serve(cfg)


if __name__ == "__main__":
    main()
