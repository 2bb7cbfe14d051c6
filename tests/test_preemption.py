"""SIGTERM to a real ``python -m tora.train`` process: it saves ``last.ckpt``, logs how
to resume, exports nothing and exits with 143 (128 + SIGTERM), not 0; and the SLURM
trainer config that requeues a preempted job."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import torch
from conftest import compose_train
from lightning.pytorch.plugins.environments import SLURMEnvironment

from tora.training.checkpoint_io import AtomicCheckpointIO


def wait_for(path: Path, process: subprocess.Popen, output: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"training ended ({process.returncode}) before {path.name}:\n"
                + output.read_text()[-3000:]
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(
                f"no {path.name} after {timeout} s:\n" + output.read_text()[-3000:]
            )
        time.sleep(0.2)


def test_sigterm_saves_last_checkpoint_and_exits_143(tmp_path, synthetic_shards):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    exported = tmp_path / "exported"
    output = tmp_path / "output.txt"
    args = [
        "experiment=video_vae",
        f"hydra.run.dir={run_dir}",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.checkpoint_dir={exported}",
        f"data.train_shards={synthetic_shards}/train-*.tar",
        f"data.val_shards={synthetic_shards}/val-*.tar",
        "data.num_workers=0",
        "extras.print_config=false",
        "callbacks.progress_bar=null",
        "trainer.max_steps=100000",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "model.latent_statistics_batches=1",
    ]
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tora.train", *args],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        wait_for(checkpoints / "step_000002.ckpt", process, output, timeout=300)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=120)
    log = output.read_text()
    assert returncode == 143, log[-3000:]
    last = checkpoints / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    step = saved["global_step"]
    assert 2 <= step < 100000
    assert saved["state_dict"], "a full checkpoint, not an empty file"
    line = f"interrupted at step {step}, resume with ckpt_path={last}"
    assert line in log, log[-3000:]
    assert line in (run_dir / "train.log").read_text(), "in the run's log file too"
    assert not exported.exists(), "an interrupted run exports nothing"


def test_slurm_trainer_requeues_and_keeps_the_checkpoint_writer(tmp_path):
    plugins = hydra.utils.instantiate(compose_train(["trainer=slurm"], tmp_path).trainer.plugins)
    assert [type(plugin) for plugin in plugins] == [AtomicCheckpointIO, SLURMEnvironment]
    assert plugins[1].auto_requeue and plugins[1].requeue_signal == signal.SIGUSR1
