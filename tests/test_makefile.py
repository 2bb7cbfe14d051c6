"""The Makefile's schedule, with a stand-in interpreter that records each training run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Records its environment and arguments, takes a while, then writes the checkpoint the
# Makefile expects (checkpoints/<experiment>.ckpt), as tora.train's export does.
# An encode_latents run is recorded as encode_<experiment> and exports nothing.
FAKE_PYTHON = """#!/bin/bash
for arg in "$@"; do case $arg in experiment=*) name=${arg#experiment=};; esac; done
for arg in "$@"; do case $arg in encode_latents=*) name=encode_$name;; esac; done
echo "$(date +%s.%N) start $name threads=${OMP_NUM_THREADS:-} label=${TORA_PROGRESS_LABEL:-}" >> calls.log
case $name in base_t2v) sleep 3;; *) sleep 1;; esac  # the base takes longest, as it does
case $name in encode_*) ;; *) touch checkpoints/$name.ckpt;; esac
echo "$(date +%s.%N) end $name" >> calls.log
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A checkout whose venv, data and video VAE are done (older than nothing they need)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    made = [
        "pyproject.toml",
        "requirements/constraints.txt",
        "configs/synthetic.yaml",
        "configs/world/default.yaml",
        ".venv/.installed",
        "data/synthetic/.complete",
        "checkpoints/video_vae.ckpt",
    ]
    for age, name in enumerate(reversed(made)):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path, (1e9 - 100 * age, 1e9 - 100 * age))
    python = tmp_path / ".venv/bin/python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def runs(project: Path) -> dict[str, dict[str, str | float]]:
    out: dict[str, dict[str, str | float]] = {}
    for line in (project / "calls.log").read_text().splitlines():
        time, event, name, *rest = line.split()
        out.setdefault(name, {})[event] = float(time)
        out[name].update(item.split("=", 1) for item in rest)  # type: ignore[arg-type]
    return out


def make(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A user's shell: no make of ours around it, no thread count set (the tests set one).
    drop = ("MAKE", "OMP_NUM_THREADS", "TORA_PROGRESS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    result = subprocess.run(
        ["make", *args], cwd=project, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_stage1_trains_base_and_motion_vae_side_by_side(project):
    make(project, "train-stage1")
    calls = runs(project)
    assert set(calls) == {"base_t2v", "motion_vae", "encode_stage1_flow", "stage1_flow"}
    base, motion, stage1 = calls["base_t2v"], calls["motion_vae"], calls["stage1_flow"]
    encode = calls["encode_stage1_flow"]
    # Both prerequisites at once, one thread each, their lines labelled with their names.
    assert base["start"] < motion["end"] and motion["start"] < base["end"]
    assert (base["threads"], motion["threads"]) == ("1", "1")
    assert (base["label"], motion["label"]) == ("base_t2v", "motion_vae")
    # Stage 1's motion latents after the motion VAE, beside the base, one thread.
    assert motion["end"] <= encode["start"] < base["end"]
    assert (encode["threads"], encode["label"]) == ("1", "stage1_motion")
    # Stage 1 after all three, with torch's own thread count and the terminal to itself.
    assert stage1["start"] > max(base["end"], motion["end"], encode["end"])
    assert (stage1["threads"], stage1["label"]) == ("", "")
    # Done once: a second call trains only stage 1 again.
    (project / "calls.log").unlink()
    make(project, "train-stage1")
    assert set(runs(project)) == {"stage1_flow"}


def test_side_by_side_off_trains_them_in_turn(project):
    make(project, "train-stage1", "SIDE_BY_SIDE=0", "THREADS=2")
    calls = runs(project)
    first, second = sorted((calls["base_t2v"], calls["motion_vae"]), key=lambda c: c["start"])
    assert second["start"] >= first["end"]
    assert {c["threads"] for c in calls.values()} == {"2"}
    assert {c["label"] for c in calls.values()} == {""}


def test_eval_vae_passes_every_vae_as_one_list(project):
    for name in ("seed1", "seed2"):
        (project / name).mkdir()
        (project / name / "video_vae.ckpt").touch()
    dry = make(project, "-n", "eval-vae", "VAES=seed1/video_vae.ckpt  seed2/video_vae.ckpt")
    assert "'vae_ckpts=[seed1/video_vae.ckpt,seed2/video_vae.ckpt]'" in dry.stdout
    # By default the chain's own VAE, which make trains first when it is missing.
    assert "'vae_ckpts=[checkpoints/video_vae.ckpt]'" in make(project, "-n", "eval-vae").stdout
    (project / "checkpoints" / "video_vae.ckpt").unlink()
    assert "experiment=video_vae" in make(project, "-n", "eval-vae").stdout
