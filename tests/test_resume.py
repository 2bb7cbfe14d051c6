"""Exact resume: k steps, then a resumed run to N steps, logs the losses of N straight
steps bit for bit (data position, data seeds and random states in the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tora.train import train

STEPS = 5  # 8 clips in batches of 2: 4 steps an epoch, so the runs cross an epoch


VIDEO_VAE = ["experiment=video_vae"]
# Stage 1 from scratch: the latent cache on, validation sampling, motion conditions.
STAGE1 = [
    "experiment=stage1_flow",
    "model.vae_checkpoint=null",
    "model.init_checkpoint=null",
    "model.motion_encoder.checkpoint=null",
]


def run(
    run_dir: Path, shards: Path, steps: int, *overrides: str, experiment: list[str] = VIDEO_VAE
) -> list[tuple[int, float]]:
    """Train (the video VAE by default: random crops and posterior samples draw on the
    global RNG) for ``steps`` steps, validating and saving a checkpoint every 2; returns
    ``(step, train/loss)`` from its TensorBoard events."""
    cfg = compose_train(
        [
            *experiment,
            "export_checkpoint=null",
            f"trainer.max_steps={steps}",
            "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1",
            "callbacks.progress_bar=null",
            *overrides,
        ],
        run_dir,
        shards,
    )
    train(cfg)
    event_files = list((run_dir / "logs").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(event_files[0].parent))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars("train/loss")]


@pytest.mark.parametrize(
    ("workers", "interrupted_at"),
    [(0, 4), (2, 2)],  # in the main process at the end of an epoch; 2 workers mid-epoch
)
def test_resumed_run_logs_the_straight_runs_losses(
    tmp_path, synthetic_shards, workers, interrupted_at
):
    data = f"data.num_workers={workers}"
    straight = run(tmp_path / "straight", synthetic_shards, STEPS, data)
    first = run(tmp_path / "first", synthetic_shards, interrupted_at, data)
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = run(tmp_path / "resumed", synthetic_shards, STEPS, data, f"ckpt_path={last}")
    assert [step for step, _ in straight] == list(range(STEPS))
    assert first + resumed == straight


def test_a_resumed_diffusion_stage_logs_the_straight_runs_losses(tmp_path, synthetic_shards):
    """Stage 1 with its latent cache: validation never fills the cache, so resuming (with
    an empty cache) trains on exactly the latents the straight run trained on."""
    straight = run(tmp_path / "straight", synthetic_shards, STEPS, experiment=STAGE1)
    first = run(tmp_path / "first", synthetic_shards, 2, experiment=STAGE1)
    last = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    resumed = run(
        tmp_path / "resumed", synthetic_shards, STEPS, f"ckpt_path={last}", experiment=STAGE1
    )
    assert first + resumed == straight
