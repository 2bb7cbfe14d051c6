"""Training checkpoints on disk: every file a VAE run saves carries fitted latent
statistics, saves go through ``<path>.tmp`` beside the target (never ``$TMPDIR``),
and a resume from a truncated ``last.ckpt`` falls back to the newest readable file."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import hydra
import pytest
import torch
from conftest import compose_train

from tora.train import train
from tora.training.checkpoint_io import AtomicCheckpointIO, resume_checkpoint

VAE_RUN = [
    "experiment=video_vae",
    "export_checkpoint=null",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "model.latent_statistics_batches=2",
    "callbacks.progress_bar=null",
]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, synthetic_shards) -> Path:
    """The checkpoint folder of a 4-step video-VAE run saving every 2 steps."""
    run_dir = tmp_path_factory.mktemp("vae_run")
    train(compose_train([*VAE_RUN, "trainer.max_steps=4"], run_dir, synthetic_shards))
    return run_dir / "run" / "checkpoints"


def latent_statistics(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return state["vae.latent_shift"], state["vae.latent_scale"]


def test_every_vae_checkpoint_carries_fitted_latent_statistics(vae_run):
    checkpoints = vae_run
    names = sorted(p.name for p in checkpoints.iterdir())
    assert names == ["last.ckpt", "step_000002.ckpt", "step_000004.ckpt"]
    statistics = {name: latent_statistics(checkpoints / name) for name in names}
    for name, (shift, scale) in statistics.items():
        assert not torch.all(shift == 0), f"{name}: latent_shift is the unfitted 0"
        assert not torch.all(scale == 1), f"{name}: latent_scale is the unfitted 1"
        assert torch.all(scale > 0) and torch.isfinite(shift).all(), name
    # Fitted to the weights of their own step: the step-2 file differs from the step-4 ones.
    assert not torch.equal(statistics["step_000002.ckpt"][1], statistics["last.ckpt"][1])
    assert torch.equal(statistics["step_000004.ckpt"][1], statistics["last.ckpt"][1])


def test_checkpoints_are_written_beside_the_target_and_renamed(tmp_path, monkeypatch):
    trainer = hydra.utils.instantiate(compose_train([], tmp_path).trainer, logger=False)
    renames = []
    for module, name in ((os, "replace"), (os, "rename")):
        real = getattr(module, name)

        def spy(src, dst, real=real):
            renames.append((Path(src), Path(dst)))
            return real(src, dst)

        monkeypatch.setattr(module, name, spy)
    target = tmp_path / "checkpoints" / "last.ckpt"
    trainer.strategy.checkpoint_io.save_checkpoint({"global_step": 2}, target)
    # Not staged in $TMPDIR (another filesystem: a copy, and an orphan when killed).
    assert renames == [(target.with_name("last.ckpt.tmp"), target)]
    assert torch.load(target, weights_only=True) == {"global_step": 2}


class Killed(Exception):
    """Stands for the process dying while a checkpoint is written."""


class KilledWhilePickled:
    def __reduce__(self):
        raise Killed


def test_a_save_cut_short_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 2}, path)
    with pytest.raises(Killed):
        io.save_checkpoint({"global_step": 4, "state": KilledWhilePickled()}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    # What a SIGKILL mid-write leaves behind is overwritten by the next save.
    path.with_name("last.ckpt.tmp").write_bytes(b"partial")
    io.save_checkpoint({"global_step": 4}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_from_truncated_last_falls_back_with_a_warning(
    vae_run, tmp_path, synthetic_shards, caplog
):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(vae_run, checkpoints)
    last = checkpoints / "last.ckpt"
    truncate(last)
    last.touch()  # the newest file, as after a save cut short
    cfg = compose_train(
        [*VAE_RUN, "trainer.max_steps=6", f"ckpt_path={last}"], tmp_path, synthetic_shards
    )
    with caplog.at_level(logging.WARNING, logger="tora.training.checkpoint_io"):
        train(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tora.training.checkpoint_io"]
    assert len(warnings) == 1, warnings
    assert str(last) in warnings[0] and str(checkpoints / "step_000004.ckpt") in warnings[0]
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 6
    # Resumed from step 4: the new run saved steps 6 only, not 2 and 4 again.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "last.ckpt",
        "step_000006.ckpt",
    ]


def test_resume_names_every_unreadable_file(tmp_path):
    for name in ("last.ckpt", "step_000002.ckpt"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    # Reads, but an export: weights without the optimizer state a resume needs.
    torch.save({"state_dict": {}}, tmp_path / "video_vae.ckpt")
    with pytest.raises(FileNotFoundError, match=r"last\.ckpt does not read") as error:
        resume_checkpoint(str(tmp_path / "last.ckpt"), trainer=None)
    assert "'step_000002.ckpt'" in str(error.value) and "'video_vae.ckpt'" in str(error.value)
    with pytest.raises(FileNotFoundError, match="missing.ckpt: no such checkpoint"):
        resume_checkpoint(str(tmp_path / "missing.ckpt"), trainer=None)


def test_a_readable_checkpoint_and_special_values_pass_through(tmp_path):
    path = tmp_path / "step_000002.ckpt"
    torch.save({"global_step": 2}, path)
    assert resume_checkpoint(str(path), trainer=None) == str(path)
    assert resume_checkpoint(None, trainer=None) is None
    assert resume_checkpoint("hpc", trainer=None) == "hpc"
