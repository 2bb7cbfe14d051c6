"""Trajectory-conditioned sampling from trained tiny checkpoints: the CLI, the
checkpoint formats it loads, image-to-video and the errors it gives."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import PAPER_SET, SHORT, compose_config, compose_train
from omegaconf import OmegaConf

from tora.checkpoints import convert_checkpoint
from tora.data.schema import decode_video
from tora.inference import GenerationConfig, GenerationRequest, ToraPipeline
from tora.motion import load_tracks
from tora.train import train

REPO = Path(__file__).resolve().parents[1]
TRACKS = [REPO / "examples/tracks/left_to_right.txt", REPO / "examples/tracks/arc.txt"]


def run_sample(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tora.sample", *args, f"hydra.run.dir={cwd}/hydra"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sample_cli_writes_videos_tracks_and_config(tmp_path, chain):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moves right\n\na blue square moves along an arc\n")
    out = tmp_path / "out"
    result = run_sample(
        [
            f"ckpt={chain}/stage2_traj.ckpt",
            f"prompts_file={prompts}",
            f"tracks=[{TRACKS[0]},{TRACKS[1]}]",
            "steps=2",
            f"out_dir={out}",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    videos = sorted(out.glob("*[0-9a-z].mp4"))
    plain = [v for v in videos if not v.name.endswith("_tracks.mp4")]
    assert len(plain) == 2
    for video in plain:
        frames = decode_video(video.read_bytes())
        assert frames.shape == (17, 64, 64, 3)
        drawn = decode_video(video.with_name(video.stem + "_tracks.mp4").read_bytes())
        assert drawn.shape == frames.shape
        assert np.abs(drawn.astype(int) - frames.astype(int)).mean() > 0.5  # the tracks are drawn
        assert video.with_name(video.stem + "_tracks.json").exists()
    assert OmegaConf.load(out / "config.yaml").cfg_scale == 4.0  # the tiny world's guidance


@pytest.mark.parametrize("entry_point", ["sample", "evaluate", "demo"])
def test_tiny_world_guidance_is_the_default_and_default_is_one_override_away(entry_point):
    assert compose_config(entry_point, []).cfg_scale == 4.0
    assert compose_config(entry_point, ["generation=default"]).cfg_scale == 7.0
    assert compose_config(entry_point, ["cfg_scale=6"]).cfg_scale == 6.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num_frames=16", "4k + 1"),
        ("ckpt=/nonexistent/stage2_traj.ckpt", "does not exist"),
        ("tracks=[{bad}]", "line 2"),
    ],
)
def test_sample_cli_errors_name_the_problem(tmp_path, chain, override, message):
    bad = tmp_path / "bad.txt"
    bad.write_text("10,10\n12;40\n")
    args = [
        f"ckpt={chain}/stage2_traj.ckpt",
        "steps=1",
        f"out_dir={tmp_path}/out",
        override.format(bad=bad),
    ]
    result = run_sample(args, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]


def test_tracks_outside_the_frame_are_rejected(chain):
    pipeline = ToraPipeline.from_checkpoint(chain / "stage2_traj.ckpt")
    tracks = torch.zeros(1, 17, 2)
    tracks[0, 5, 0] = 70.0
    with pytest.raises(ValueError, match="leave the 64x64 frame"):
        pipeline.generate(
            [GenerationRequest("a circle", tracks)], 17, 64, 64, GenerationConfig(steps=1)
        )


def test_converted_and_tora_module_files_generate_the_same_video(tmp_path, chain, synthetic_shards):
    tracks = load_tracks([str(t) for t in TRACKS], 64, 64, 17)
    request = [GenerationRequest("a red circle moves right", tracks)]
    kwargs = dict(num_frames=17, height=64, width=64, config=GenerationConfig(steps=2, seed=3))
    kwargs["progress"] = False
    reference = ToraPipeline.from_checkpoint(chain / "stage2_traj.ckpt").generate(request, **kwargs)

    full = tmp_path / "full.safetensors"
    convert_checkpoint(chain / "stage2_traj.ckpt", full)
    assert np.array_equal(ToraPipeline.from_checkpoint(full).generate(request, **kwargs), reference)

    # The small file reproduces a stage 2 on the paper's trainable set over its stage 1
    # (the tiny world's default stages train everything, which no such file can carry).
    paper_dir = tmp_path / "paper_set"
    paper_dir.mkdir()
    for name in ("video_vae", "motion_vae", "stage1_flow"):
        shutil.copy(chain / f"{name}.ckpt", paper_dir)
    train(
        compose_train(
            ["experiment=stage2_traj", *PAPER_SET, *SHORT],
            tmp_path / "run",
            synthetic_shards,
            paper_dir,
        )
    )
    paper = paper_dir / "stage2_traj.ckpt"
    reference = ToraPipeline.from_checkpoint(paper).generate(request, **kwargs)
    small = tmp_path / "tora_modules.safetensors"
    summary = convert_checkpoint(paper, small, tora_modules_only=True)
    assert summary["warnings"] == []
    over_stage1 = ToraPipeline.from_checkpoint(small, base_ckpt=paper_dir / "stage1_flow.ckpt")
    assert np.array_equal(over_stage1.generate(request, **kwargs), reference)
    without = ToraPipeline.from_checkpoint(chain / "stage1_flow.ckpt").generate(request, **kwargs)
    assert not np.array_equal(without, reference)


def test_image_to_video_keeps_the_given_first_frame(chain):
    pipeline = ToraPipeline.from_checkpoint(chain / "stage2_traj.ckpt")
    vae = pipeline.components.vae
    image = cv2.resize(
        np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64)
    )
    video = pipeline.generate(
        [GenerationRequest("a red circle", None, image=image)],
        17,
        64,
        64,
        GenerationConfig(steps=2),
    )
    with torch.no_grad():
        first = torch.from_numpy(image).permute(2, 0, 1).float()[None, :, None] / 127.5 - 1
        expected = vae.decode_latents(vae.encode_latents(first))[0, :, 0]
    expected = ((expected.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255)
    assert np.abs(video[0, 0].astype(float) - expected).max() <= 1.0


def test_motion_guidance_scale_equal_to_cfg_is_joint_guidance(chain):
    """v_null + s (v_text - v_null) + s (v_motion - v_text) = v_null + s (v_motion - v_null):
    a motion scale equal to the text scale samples what joint guidance samples."""
    pipeline = ToraPipeline.from_checkpoint(chain / "stage2_traj.ckpt")
    tracks = load_tracks([str(t) for t in TRACKS], 64, 64, 17)
    request = [GenerationRequest("a red circle moves right", tracks)]
    settings = GenerationConfig(steps=2, seed=3, cfg_scale=4.0, motion_in_guidance=True)

    def generate(**changes):
        return pipeline.generate(request, 17, 64, 64, dataclasses.replace(settings, **changes))

    joint = generate()
    same = generate(motion_guidance_scale=4.0)
    stronger = generate(motion_guidance_scale=12.0)
    assert np.abs(joint.astype(int) - same.astype(int)).max() <= 1
    assert np.abs(joint.astype(int) - stronger.astype(int)).mean() > 1.0
