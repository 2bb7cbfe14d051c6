"""Shared fixtures: a small synthetic shard set and the real Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tora.data.synthetic import GeneratorConfig, WorldConfig, generate_split
from tora.train import resolved, train
from tora.utils.config import CONFIG_DIR

SHORT = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]
STAGES = ["video_vae", "base_t2v", "motion_vae", "stage1_flow", "stage2_traj"]
# The paper's trainable set for stages 1 and 2 (the tiny world's stages train everything).
PAPER_SET = ["model.trainable=temporal", "model.train_text_encoder=false"]

# One compute thread, here and in the subprocesses tests start: the models are tiny, and on
# a small shared CPU OpenMP threads spin-waiting for busy cores slow every step many times.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> Path:
    """8 train + 4 val synthetic clips at the default 64² x 17 frames."""
    out = tmp_path_factory.mktemp("synthetic")
    config = GeneratorConfig(
        world=WorldConfig(), seed=123, num_train=8, num_val=4, shard_maxcount=4
    )
    generate_split(config, "train", out)
    generate_split(config, "val", out)
    return out


def compose_config(config_name: str, overrides: list[str]) -> DictConfig:
    """``configs/<config_name>.yaml`` through ``hydra.compose``, with the Hydra runtime
    config set as an entry point's ``@hydra.main`` sets it (``${hydra:...}`` resolves)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
    return cfg


def compose_train(
    overrides: list[str],
    run_dir: Path,
    shards: Path | None = None,
    checkpoint_dir: Path | None = None,
) -> DictConfig:
    """``configs/train.yaml`` through ``hydra.compose`` with test-sized data and
    every output under ``run_dir``; resolved as ``tora.train`` resolves it."""
    test_overrides = [
        f"paths.log_dir={run_dir}/logs",
        f"paths.output_dir={run_dir}/run",
        f"paths.checkpoint_dir={checkpoint_dir or run_dir / 'checkpoints'}",
        "extras.print_config=false",
        "data.num_workers=0",
    ]
    if shards is not None:
        test_overrides += [
            f"data.train_shards={shards}/train-*.tar",
            f"data.val_shards={shards}/val-*.tar",
        ]
    return resolved(compose_config("train", test_overrides + overrides))


@pytest.fixture(scope="session")
def chain(tmp_path_factory, synthetic_shards) -> Path:
    """Run the five stages (2 steps each), each exporting ``<task_name>.ckpt`` and
    reading the previous stages' as the Makefile chains them; returns the checkpoint dir."""
    run_dir = tmp_path_factory.mktemp("chain")
    checkpoints = run_dir / "checkpoints"
    for stage in STAGES:
        cfg = compose_train(
            [f"experiment={stage}", *SHORT], run_dir / stage, synthetic_shards, checkpoints
        )
        train(cfg)
    return checkpoints
