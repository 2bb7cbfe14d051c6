"""Sweeps as one job per run through the Hydra submitit launcher (hydra/launcher=submitit_local,
the local twin of submitit_slurm), on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tora.utils.config import CONFIG_DIR


def test_slurm_launcher_config_names_partition_gpus_time_and_nodes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.nodes) == ("gpu", 8, 1)
    assert launcher.tasks_per_node == 8 and launcher.timeout_min == 2880


@pytest.mark.slow  # two fresh Python processes: about 75 s on 2 cores
def test_two_run_sweep_runs_as_two_submitit_jobs(tmp_path, synthetic_shards):
    sweep_dir = tmp_path / "sweep"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tora.train",
            "-m",
            "hydra/launcher=submitit_local",
            "experiment=video_vae",
            "model.optimizer.lr=0.001,0.002",
            "trainer.max_steps=1",
            "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1",
            "model.latent_statistics_batches=1",
            "export_checkpoint=null",
            f"hydra.sweep.dir={sweep_dir}",
            f"paths.log_dir={tmp_path}/logs",
            f"data.train_shards={synthetic_shards}/train-*.tar",
            f"data.val_shards={synthetic_shards}/val-*.tar",
            "data.num_workers=0",
            "extras.print_config=false",
            "callbacks.progress_bar=null",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = sorted(p for p in sweep_dir.iterdir() if (p / "checkpoints" / "last.ckpt").exists())
    assert [run.name for run in runs] == ["0", "1"]
    swept = {
        line.split("=")[1].strip()
        for run in runs
        for line in (run / ".hydra" / "overrides.yaml").read_text().splitlines()
        if "model.optimizer.lr=" in line
    }
    assert swept == {"0.001", "0.002"}
    # Each run went through its own submitit job: a folder of logs and results per job id.
    jobs = [p for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2, jobs
