"""Evaluation and the ablation report, on tiny checkpoints from the stage chain."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import compose_config

from tora.evaluate import evaluate, make_tracker, object_psnr
from tora.evaluate_vae import evaluate_vaes
from tora.report import report


def common(tmp_path, shards) -> list[str]:
    return [
        f"data.train_shards={shards}/train-*.tar",
        f"data.val_shards={shards}/val-*.tar",
        f"paths.log_dir={tmp_path}/logs",
        "num_samples=2",
        "batch_size=2",
        "steps=1",
    ]


def test_evaluate_writes_metrics_report_and_baseline(tmp_path, chain, synthetic_shards):
    out = tmp_path / "eval"
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt={chain}/stage2_traj.ckpt",
            f"out_dir={out}",
            "tracker=mask_centroid",
            "extra_trackers=[lucas_kanade]",
            *common(tmp_path, synthetic_shards),
        ],
    )
    metrics = evaluate(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["num_clips"] == 2
    assert set(saved["variants"]) == {"tora", "no_control"}
    for name, row in saved["variants"].items():
        assert row["trajerror"] == metrics["variants"][name]["trajerror"]
        assert np.isfinite(row["trajerror"]) and row["seconds_per_clip"] > 0
        assert len(row["trajerror_per_frame"]) == 17
        assert len(row["trajerror_per_clip"]) == 2
        # The headline tracker first, the extra one beside it.
        assert list(row["by_tracker"]) == ["mask_centroid", "lucas_kanade"]
        assert row["by_tracker"]["mask_centroid"]["trajerror"] == row["trajerror"]
        lucas_kanade = row["by_tracker"]["lucas_kanade"]
        assert np.isfinite(lucas_kanade["trajerror"]) and 0 < lucas_kanade["coverage"] <= 1
        # A point tracker starts at the requested point: no error in frame 0.
        assert lucas_kanade["trajerror_per_frame"][0] == 0
        assert row["fvd"] == {
            "available": False,
            "reason": "no I3D TorchScript configured: set metrics.i3d_path",
        }
    # Errors by the number of tracks a clip has (two objects: each bound to its track).
    groups = saved["clips_by_num_tracks"]
    assert sum(groups.values()) == 2 and set(groups) <= {"1", "2"}
    for row in saved["variants"].values():
        for result in row["by_tracker"].values():
            assert set(result["by_num_tracks"]) == set(groups)
            if len(groups) == 1:
                assert result["by_num_tracks"].popitem()[1] == pytest.approx(result["trajerror"])
    # The exact tracker recovers the real clips' object tracks almost perfectly.
    assert metrics["tracker_floor_on_real_clips"] < 1.0
    assert np.isfinite(metrics["tracker_floors"]["lucas_kanade"])
    assert metrics["tracker_floors"]["mask_centroid"] == metrics["tracker_floor_on_real_clips"]
    assert set(metrics["tracker_floors"]) == {"mask_centroid", "lucas_kanade"}
    report_md = (out / "report.md").read_text()
    assert "| tora |" in report_md and "| no_control |" in report_md
    assert "TrajError `mask_centroid` (coverage) | TrajError `lucas_kanade` (coverage)" in report_md
    assert "FVD unavailable" in report_md
    assert "By tracks per clip (`mask_centroid` / `lucas_kanade`):" in report_md
    strips = sorted((out / "frames").glob("*.png"))
    assert len(strips) == 2
    # Ground truth, the clip through the VAE, Tora, no control: 4 rows of 64 px, 6 frames.
    assert cv2.imread(str(strips[0])).shape == (4 * 64, 6 * 64, 3)
    assert "ground truth, the clip through the model's VAE" in report_md
    assert list((tmp_path / "logs" / "tensorboard" / "evaluate").glob("events.out.tfevents.*"))
    # The VAE row: whole frames and the objects (the shapes a model has to draw).
    assert 10 < metrics["vae_object_psnr"] < metrics["vae_psnr"] + 20
    assert "around the objects" in report_md
    # Named shapes on the one-object clips: a share, or NaN where the clips have none.
    for value in (metrics["shape_accuracy_real"], metrics["vae_shape_accuracy"]):
        assert np.isnan(value) or 0 <= value <= 1
    assert "Named shape (one-object clips" in report_md


def test_object_psnr_counts_only_the_squares_around_the_track_points():
    video = np.zeros((3, 64, 64, 3), dtype=np.uint8)
    tracks = torch.tensor([[[20.0, 30.0], [22.0, 30.0], [24.0, 30.0]]])  # (x, y) per frame
    clip = {"video": video, "tracks": tracks}
    outside = video.copy()
    outside[:, :, 40:] = 255  # far from every point: not the object
    assert object_psnr([clip], [outside], box=0.25) > 140  # no error counted (MSE floor 1e-10)
    inside = video.copy()
    inside[1, 26:34, 18:26] = 51  # an 8 x 8 patch of the square around frame 1's point
    # The squares: pixels less than 16 / 2 px from the point on each axis, 15 x 15 a frame.
    expected_mse = 51.0**2 * 64 * 3 / (3 * 15 * 15 * 3)
    assert object_psnr([clip], [inside], box=0.25) == pytest.approx(
        10 * np.log10(255.0**2 / expected_mse)
    )


def test_evaluate_vae_reports_each_vae_and_their_spread(tmp_path, chain, synthetic_shards):
    out = tmp_path / "eval_vae"
    same = tmp_path / "copy.ckpt"
    shutil.copy(chain / "video_vae.ckpt", same)
    overrides = [
        f"vae_ckpts=[{chain}/video_vae.ckpt,{same}]",
        f"out_dir={out}",
        *common(tmp_path, synthetic_shards),
    ]
    metrics = evaluate_vaes(compose_config("evaluate_vae", overrides))
    rows = list(metrics["vaes"].values())
    assert json.dumps(rows[0]) == json.dumps(rows[1])  # the same weights, the same floors (NaN too)
    assert set(rows[0]["trackers"]) == {"lucas_kanade", "mask_centroid"}
    assert metrics["summary"]["PSNR dB"] == {"mean": rows[0]["psnr"], "std": 0.0}
    # The floors are those the evaluation of a model generating through this VAE reports.
    evaluated = evaluate(
        compose_config(
            "evaluate",
            [
                f"ckpt={chain}/stage2_traj.ckpt",
                f"out_dir={tmp_path}/eval",
                *common(tmp_path, synthetic_shards),
            ],
        )
    )
    assert rows[0]["psnr"] == pytest.approx(evaluated["vae_psnr"], abs=1e-4)
    assert rows[0]["trackers"] == pytest.approx(evaluated["tracker_floors_vae"], abs=1e-4)
    report_md = (out / "report.md").read_text()
    assert "| mean ± sd |" in report_md and str(same) in report_md
    # Ground truth and one row per VAE.
    assert cv2.imread(str(out / "frames" / "000.png")).shape == (3 * 64, 6 * 64, 3)


def test_evaluate_vae_refuses_a_checkpoint_without_a_vae_config(tmp_path, chain, synthetic_shards):
    overrides = [f"vae_ckpts=[{chain}/stage2_traj.ckpt]", *common(tmp_path, synthetic_shards)]
    with pytest.raises(ValueError, match=r"stage2_traj.ckpt stores no VAE config"):
        evaluate_vaes(compose_config("evaluate_vae", overrides))


def test_report_tabulates_a_sweep(tmp_path, chain, synthetic_shards):
    sweep = tmp_path / "sweep"
    for index, fuser in enumerate(["adaptive_norm", "cross_attn"]):
        run = sweep / str(index)
        (run / "checkpoints").mkdir(parents=True)
        (run / ".hydra").mkdir()
        shutil.copy(chain / "stage2_traj.ckpt", run / "checkpoints" / "last.ckpt")
        (run / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump(["experiment=ablation", f"model/fuser={fuser}"])
        )
    cfg = compose_config("report", [f"sweep_dir={sweep}", *common(tmp_path, synthetic_shards)])
    rows = report(cfg)
    assert [r["variant"] for r in rows][:2] == [
        "model/fuser=adaptive_norm",
        "model/fuser=cross_attn",
    ]
    assert rows[-1]["variant"].startswith("no control")
    with open(sweep / "ablation.csv") as file:
        table = list(csv.DictReader(file))
    assert [row["variant"] for row in table] == [r["variant"] for r in rows]
    # Each row is its run's metrics.json; the no-control row is the first run's baseline.
    evaluated = [json.loads((sweep / str(i) / "eval" / "metrics.json").read_text()) for i in (0, 1)]
    variants = [m["variants"]["tora"] for m in evaluated] + [evaluated[0]["variants"]["no_control"]]
    for line, variant in zip(table, variants, strict=True):
        assert float(line["trajerror_px"]) == pytest.approx(variant["trajerror"], abs=1e-4)
        extra = variant["by_tracker"]["mask_centroid"]["trajerror"]  # the extra tracker's column
        assert float(line["trajerror_mask_centroid_px"]) == pytest.approx(extra, abs=1e-4)
    assert (sweep / "trajerror.png").stat().st_size > 1000
    assert "model/fuser=cross_attn" in (sweep / "ablation.md").read_text()


def test_lucas_kanade_settings_come_from_the_config():
    """`lucas_kanade.*` sets the headline tracker (41 px for the 128² world, WORLD=128)."""
    default = make_tracker("lucas_kanade", compose_config("evaluate", []), {})
    assert (default.window_size, default.max_level) == (21, 3)
    scaled = make_tracker(
        "lucas_kanade", compose_config("evaluate", ["lucas_kanade.window_size=41"]), {}
    )
    assert (scaled.window_size, scaled.max_level) == (41, 3)
