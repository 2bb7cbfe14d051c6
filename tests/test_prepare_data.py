"""Real-video preparation (tora.data.prepare, ``python -m tora.prepare_data``) on small
real mp4 files written here with PyAV: scene cuts, flow, camera classes, filters,
failures, resuming, and training on the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import compose_train
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tora.data.datamodule import ShardDataModule
from tora.data.prepare import (
    ContentDetector,
    DISFlowEstimator,
    PrepareConfig,
    RAFTFlowEstimator,
    as_prepare_config,
    choose_bucket,
    find_videos,
    prepare,
    read_scenes,
    score_motion,
)
from tora.data.prepare.captions import build_captioner
from tora.data.prepare.manifest import MANIFEST, Manifest
from tora.data.prepare.pool import pool_result
from tora.data.prepare.run import plan_jobs, record_result
from tora.data.prepare.scores import build_quality_scorer, motion_rejection
from tora.data.prepare.summary import SUMMARY, RunSummary
from tora.data.prepare.timing import StageTimer
from tora.data.prepare.video import VideoJob, build_tools, prepare_video
from tora.data.schema import decode_sample
from tora.train import train
from tora.utils.config import CONFIG_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]

SOURCE_FPS = 24
SOURCE_SIZE = 96
OUTPUT_SIZE = 64
PAN_SPEED = 1  # source pixels per source frame, content moving right
CUT_FRAME = 60


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random RGB texture: DIS has something to track everywhere."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (noise * 255).astype(np.uint8)


def write_mp4(path: Path, frames: np.ndarray, fps: int = SOURCE_FPS) -> None:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())


def panning_frames(num_frames: int, speed: int) -> np.ndarray:
    """A texture moving right by ``speed`` pixels per frame (the camera pans left)."""
    width = SOURCE_SIZE + speed * num_frames
    world = texture(SOURCE_SIZE, width, seed=0)
    return np.stack(
        [world[:, width - SOURCE_SIZE - speed * t : width - speed * t] for t in range(num_frames)]
    )


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    """sub/pan.mp4 (5 s pan with a sidecar caption), Cut.MP4 (two static shots, a hard
    cut at frame 60), a truncated mp4, random bytes as .mkv, and a non-video file."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    write_mp4(root / "sub" / "pan.mp4", panning_frames(5 * SOURCE_FPS, PAN_SPEED))
    (root / "sub" / "pan.txt").write_text("\na textured wall sliding right\nsecond line\n")
    shots = [texture(SOURCE_SIZE, SOURCE_SIZE, 1), texture(SOURCE_SIZE, SOURCE_SIZE, 2)]
    write_mp4(root / "Cut.MP4", np.stack([shots[0]] * CUT_FRAME + [shots[1]] * CUT_FRAME))
    data = (root / "sub" / "pan.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "random.mkv").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "notes.md").write_text("not a video")
    return root


def prepare_config(src: Path, out: Path, *overrides: str) -> PrepareConfig:
    """``configs/prepare_data.yaml`` through ``hydra.compose``, at 64² in this process."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "prepare_data",
            overrides=[
                f"src={src}",
                f"out={out}",
                f"clips.resolution=[{OUTPUT_SIZE},{OUTPUT_SIZE}]",
                "num_workers=0",
                "progress=false",
                *overrides,
            ],
        )
    return as_prepare_config(cfg)


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


def read_samples(out: Path) -> list:
    shards = sorted(str(path) for path in out.glob("train-*.tar"))
    return [decode_sample(raw) for raw in wds.WebDataset(shards, shardshuffle=False)]


@pytest.fixture(scope="module")
def prepared(video_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare(prepare_config(video_dir, out))
    return out, summary


def scenes_of(path: Path, fps: float = 8.0) -> list:
    return list(
        read_scenes(
            path,
            resolution=[OUTPUT_SIZE, OUTPUT_SIZE],
            buckets=None,
            fps=fps,
            detector=ContentDetector(),
            detect_width=256,
            max_seconds=None,
            threads=1,
            timer=StageTimer(),
        )
    )


def test_find_videos_is_recursive_and_case_insensitive(video_dir):
    found = find_videos(video_dir, ["mp4", "mov", "webm", "mkv", "avi"])
    assert [path.as_posix() for path in found] == [
        "Cut.MP4",
        "random.mkv",
        "sub/pan.mp4",
        "truncated.mp4",
    ]


def test_hard_cut_is_detected_at_its_frame(video_dir):
    scenes = scenes_of(video_dir / "Cut.MP4")
    assert len(scenes) == 2
    assert abs(scenes[1].first_frame - CUT_FRAME) <= 1
    assert scenes[1].start == pytest.approx(CUT_FRAME / SOURCE_FPS, abs=1.5 / SOURCE_FPS)
    assert scenes[1].end == pytest.approx(2 * CUT_FRAME / SOURCE_FPS, abs=1e-6)
    # 8 fps by timestamp: 2.5 s per shot -> 20 frames each, none from the other shot.
    assert [len(scene.frames) for scene in scenes] == [20, 20]
    assert np.abs(np.diff(scenes[0].frames.astype(int), axis=0)).max() <= 2


def test_content_detector_waits_min_scene_frames_between_cuts():
    black, white = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    detector = ContentDetector(threshold=27.0, min_scene_frames=3)
    flashes = [black, white, black, black, black, white, black]
    assert [detector.push(frame) for frame in flashes] == [
        False,
        False,  # only 1 frame since the start
        False,
        False,
        False,
        True,  # 5 frames since the start
        False,  # 1 frame since the cut
    ]


def test_pan_gives_its_flow_and_camera_class(video_dir):
    (scene,) = scenes_of(video_dir / "sub" / "pan.mp4")
    frames = scene.frames[:17]
    flow = DISFlowEstimator("medium").estimate(frames)
    assert flow.shape == (16, OUTPUT_SIZE, OUTPUT_SIZE, 2) and flow.dtype == np.float32
    # 1 px per source frame, 3 source frames per output frame, scaled 96 -> 64.
    expected = PAN_SPEED * SOURCE_FPS / 8.0 * OUTPUT_SIZE / SOURCE_SIZE
    inner = flow[:, 8:-8, 8:-8]  # away from the edge where content enters the frame
    assert np.median(inner[..., 0]) == pytest.approx(expected, abs=0.5)
    assert np.median(inner[..., 1]) == pytest.approx(0.0, abs=0.5)
    scores = score_motion(flow, reference_short_side=480, static_ref=1.0)
    assert scores.camera == "pan_left"  # content moving right: the camera pans left
    assert scores.camera_pan[0] == pytest.approx(expected * 480 / OUTPUT_SIZE, rel=0.15)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("static", "static"),
        ("right", "pan_left"),
        ("left", "pan_right"),
        ("down", "pan_up"),
        ("up", "pan_down"),
        ("grow", "zoom_in"),
        ("shrink", "zoom_out"),
        ("object", "static"),
    ],
)
def test_camera_class_of_exact_flows(name, expected):
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
    centred = np.stack([xs - 31.5, ys - 31.5], axis=-1)
    flow = np.zeros((4, 64, 64, 2), np.float32)
    if name in ("right", "left", "down", "up"):
        axis, sign = {"right": (0, 1), "left": (0, -1), "down": (1, 1), "up": (1, -1)}[name]
        flow[..., axis] = 2.0 * sign
    elif name in ("grow", "shrink"):
        flow[:] = centred * (0.03 if name == "grow" else -0.03)
    elif name == "object":  # a moving object over a still background
        flow[:, 10:30, 10:30] = [3.0, 1.0]
    scores = score_motion(flow, reference_short_side=480, static_ref=1.0)
    assert scores.camera == expected
    if name == "object":
        assert scores.object_motion > 0.1 and scores.camera_pan == [0.0, 0.0]


def test_motion_filters_name_their_reason():
    config = prepare_config(Path("."), Path("."), "camera.reject=[zoom_in]")
    flow = np.zeros((4, 64, 64, 2), np.float32)
    assert motion_rejection(score_motion(flow, 480, 1.0), config.motion, config.camera) == (
        "low_motion"
    )
    flow[..., 0] = 3.0  # 22.5 px/frame at 480
    assert motion_rejection(score_motion(flow, 480, 1.0), config.motion, config.camera) == (
        "camera_pan_too_fast"
    )
    ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
    flow = np.stack([xs - 31.5, ys - 31.5], axis=-1)[None].repeat(4, 0) * 0.02
    assert motion_rejection(score_motion(flow, 480, 1.0), config.motion, config.camera) == (
        "camera_zoom_in"
    )


def test_aspect_buckets_and_config_checks():
    buckets = [[256, 256], [240, 432], [432, 240]]
    assert choose_bucket(1080, 1920, [256, 256], buckets) == (240, 432)
    assert choose_bucket(1920, 1080, [256, 256], buckets) == (432, 240)
    assert choose_bucket(480, 640, [256, 256], buckets) == (256, 256)
    assert choose_bucket(1080, 1920, [128, 64], None) == (128, 64)
    with pytest.raises(ValueError, match="clips.num_frames"):
        prepare_config(Path("."), Path("."), "clips.num_frames=16")
    with pytest.raises(ValueError, match=r"clips.buckets\[1\]"):
        prepare_config(Path("."), Path("."), "clips.buckets=[[64,64],[63,64]]")


def test_sharpness_scorer_and_captioner(tmp_path):
    sharp = texture(64, 64, 3)[None].repeat(3, 0)
    blurred = np.stack([cv2.GaussianBlur(frame, (0, 0), 3.0) for frame in sharp])
    scorer = build_quality_scorer("sharpness")
    assert scorer.score(blurred) < scorer.score(sharp) / 4
    assert build_quality_scorer(None) is None
    (tmp_path / "a.txt").write_text("\n  a red car  \nmore\n")
    captioner = build_captioner(sidecar=True, default="a video", captioner=None)
    assert captioner.caption(tmp_path / "a.mp4", sharp) == "a red car"
    assert captioner.caption(tmp_path / "b.mp4", sharp) == "a video"


def test_raft_from_a_local_weights_file(tmp_path):
    from torchvision.models.optical_flow import raft_small

    weights = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    estimator = RAFTFlowEstimator(str(weights), "small", iterations=2, batch_size=2)
    flow = estimator.estimate(texture(60, 68, 4)[None].repeat(3, 0))
    assert flow.shape == (2, 60, 68, 2) and flow.dtype == np.float32
    with pytest.raises(FileNotFoundError, match="flow.raft_weights: .*missing.pth"):
        RAFTFlowEstimator(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="flow.raft_weights: path to a local RAFT"):
        RAFTFlowEstimator(None)
    with pytest.raises(ValueError, match="not a RAFT large state dict"):
        RAFTFlowEstimator(str(weights), "large")


def test_run_writes_shards_manifest_and_summary(prepared):
    out, summary = prepared
    assert (summary.videos_found, summary.videos_done, summary.videos_failed) == (4, 2, 2)
    assert sorted(failure["video"] for failure in summary.failed) == [
        "random.mkv",
        "truncated.mp4",
    ]
    assert (summary.scenes, summary.clip_candidates, summary.clips_kept) == (3, 4, 2)
    assert summary.clips_rejected == {"low_motion": 2}
    assert json.loads((out / SUMMARY).read_text())["clips_kept"] == 2
    assert {"decode", "resize", "flow", "encode"} <= set(summary.stage_seconds)

    lines = read_manifest(out)
    clips = {line["key"]: line for line in lines if line["kind"] == "clip"}
    videos = {line["video"]: line for line in lines if line["kind"] == "video"}
    assert {videos[name]["status"] for name in ("truncated.mp4", "random.mkv")} == {"failed"}
    assert all(videos[name]["error"] for name in ("truncated.mp4", "random.mkv"))
    static = [line for line in clips.values() if line["video"] == "Cut.MP4"]
    assert len(static) == 2
    assert all(line["status"] == "rejected" and line["reason"] == "low_motion" for line in static)
    assert all(line["scores"]["camera"] == "static" for line in static)
    panning = [line for line in clips.values() if line["video"] == "sub/pan.mp4"]
    assert [line["status"] for line in panning] == ["kept", "kept"]
    assert [(line["start"], line["end"]) for line in panning] == [(0.0, 2.125), (2.125, 4.25)]

    samples = read_samples(out)
    assert sorted(sample.key for sample in samples) == sorted(line["key"] for line in panning)
    for sample in samples:
        assert sample.frames.shape == (17, OUTPUT_SIZE, OUTPUT_SIZE, 3)
        assert sample.flow.shape == (16, OUTPUT_SIZE, OUTPUT_SIZE, 2)
        assert 1 <= len(sample.tracks) <= 16 and sample.tracks.shape[1:] == (17, 2)
        assert sample.caption == "a textured wall sliding right"
        assert sample.meta["source"] == "sub/pan.mp4" and sample.meta["fps"] == 8.0
        assert sample.meta["camera"] == "pan_left"
        assert sample.meta["scores"] == clips[sample.key]["scores"]
        # Tracks follow the pan: about 2 px per frame to the right (before the frame edge).
        steps = np.diff(sample.tracks, axis=1)[sample.tracks[:, 1:, 0] < OUTPUT_SIZE - 1]
        assert np.median(steps[:, 0]) == pytest.approx(2.0, abs=0.5)


def test_rerun_adds_nothing(prepared, video_dir):
    out, _ = prepared
    shards = {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")}
    num_samples = len(read_samples(out))
    lines_before = len(read_manifest(out))

    summary = prepare(prepare_config(video_dir, out))

    assert {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")} == shards
    assert len(read_samples(out)) == num_samples == 2
    assert (summary.videos_skipped_done, summary.videos_done, summary.clips_kept) == (2, 0, 0)
    new_lines = read_manifest(out)[lines_before:]
    skipped = {line["video"] for line in new_lines if line.get("status") == "skipped"}
    assert skipped == {"Cut.MP4", "sub/pan.mp4"}
    assert all(line["reason"] == "done" for line in new_lines if line["status"] == "skipped")
    assert summary.out_totals == {"videos_done": 2, "clips_kept": 2, "shards": 1}


def test_changed_video_is_redone_without_duplicates(video_dir, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    (src / "pan.mp4").write_bytes((video_dir / "sub" / "pan.mp4").read_bytes())
    config = prepare_config(src, tmp_path / "out")
    prepare(config)
    os.utime(src / "pan.mp4", ns=(1, 1))  # a new file under the same name
    summary = prepare(config)
    assert (summary.videos_done, summary.videos_skipped_done) == (1, 0)
    assert len(list((tmp_path / "out").glob("*.tar"))) == 1
    assert len(read_samples(tmp_path / "out")) == 2


def test_a_dead_worker_process_fails_its_video():
    job = VideoJob("v.mp4", "v.mp4", "0" * 12, "train", size=1, mtime_ns=1)
    crashed = Future()
    crashed.set_exception(BrokenProcessPool("a worker died"))
    result = pool_result(crashed, job)
    assert result.status == "failed"
    assert result.records == [
        {**result.records[0], "video": "v.mp4", "status": "failed", "reason": "worker_died"}
    ]


def test_prepared_shards_train_stage1(prepared, tmp_path):
    out, _ = prepared
    shards = f"{out}/train-*.tar"
    datamodule = ShardDataModule(
        shards, None, resolution=[64, 64], num_frames=17, batch_size=2, num_workers=0
    )
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["video"].shape == (2, 3, 17, 64, 64)
    assert batch["flow"].shape == (2, 16, 64, 64, 2)
    assert batch["caption"] == ["a textured wall sliding right"] * 2

    cfg = compose_train(
        [
            "experiment=stage1_flow",
            "debug=fdr",
            "model.vae_checkpoint=null",
            "model.init_checkpoint=null",
            "model.motion_encoder.checkpoint=null",
            "data.resolution=[64,64]",
            f"data.train_shards={shards}",
            f"data.val_shards={shards}",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"])


def test_cli_with_worker_processes(video_dir, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    for name in ("sub/pan.mp4", "sub/pan.txt", "random.mkv"):
        (src / Path(name).name).write_bytes((video_dir / name).read_bytes())
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tora.prepare_data",
            f"src={src}",
            f"out={out}",
            f"clips.resolution=[{OUTPUT_SIZE},{OUTPUT_SIZE}]",
            "num_workers=2",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "clips kept" in result.stdout
    summary = json.loads((out / SUMMARY).read_text())
    assert (summary["videos_done"], summary["videos_failed"], summary["clips_kept"]) == (1, 1, 2)
    assert (tmp_path / "run" / "prepare_data.log").exists()


def test_shards_reach_out_only_with_their_manifest_line(video_dir, tmp_path):
    """A video's work stages its shards; the main process writes the manifest line and
    then moves them into ``out``, so ``out`` never holds shards without a line."""
    src, out = tmp_path / "videos", tmp_path / "out"
    src.mkdir()
    (src / "pan.mp4").write_bytes((video_dir / "sub" / "pan.mp4").read_bytes())
    config = prepare_config(src, out)
    manifest = Manifest(out / MANIFEST)
    (job,), _ = plan_jobs(config, manifest, RunSummary(src=str(src), out=str(out)))
    result = prepare_video(job, config, build_tools(config), out)
    assert result.status == "done" and not list(out.glob("*.tar"))
    staged = [Path(shard) for shard in result.staged]
    assert [path.parent for path in staged] == [out / ".staging" / job.video_id]
    assert all(path.is_file() for path in staged)
    assert not manifest.path.exists()

    record_result(result, manifest, out)
    assert sorted(path.name for path in out.glob("*.tar")) == [path.name for path in staged]
    assert manifest.is_done(job, out) and not (out / ".staging" / job.video_id).exists()


def test_interrupt_keeps_the_recorded_videos_and_says_how_to_resume(video_dir, tmp_path):
    """Ctrl-C (SIGINT to the process group) during a run with worker processes: one line,
    no traceback, only recorded shards in ``out``; the rerun does the rest."""
    src, out = tmp_path / "videos", tmp_path / "out"
    src.mkdir()
    for index in range(8):
        (src / f"pan{index}.mp4").write_bytes((video_dir / "sub" / "pan.mp4").read_bytes())
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tora.prepare_data",
            f"src={src}",
            f"out={out}",
            f"clips.resolution=[{OUTPUT_SIZE},{OUTPUT_SIZE}]",
            "num_workers=2",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    deadline = time.monotonic() + 180
    manifest = out / MANIFEST
    while not (manifest.exists() and '"status": "done"' in manifest.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "no video recorded"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    interrupted = [line for line in stderr.splitlines() if "interrupted" in line]
    assert interrupted == [
        f"prepare_data interrupted: the videos done so far are kept in {out}; "
        "rerun the same command to resume"
    ]
    done = [line for line in read_manifest(out) if line.get("status") == "done"]
    assert 1 <= len(done) < 8
    listed = sorted(shard for line in done for shard in line["shards"])
    assert sorted(path.name for path in out.glob("*.tar")) == listed
    assert not (out / ".staging").exists()

    summary = prepare(prepare_config(src, out))
    assert (summary.videos_skipped_done, summary.videos_done) == (len(done), 8 - len(done))
    assert len(read_samples(out)) == 2 * 8
