"""The synthetic world: exact flow, exact tracks, determinism, captions, shards, CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import compose_config
from omegaconf import OmegaConf

import tora
from tora.data.schema import decode_sample
from tora.data.synthetic import (
    SHAPES,
    TEXTURES,
    GeneratorConfig,
    WorldConfig,
    as_generator_config,
    clip_rng,
    make_clip,
    min_object_gap,
    render_clip,
    render_tracks,
    sample_clip_spec,
)
from tora.utils.config import CONFIG_DIR


def rich_world(**overrides) -> WorldConfig:
    """The full-variety world: the default world with the keys configs/world/rich.yaml
    overrides, and ``overrides``."""
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "world" / "rich.yaml"))
    assert values.pop("defaults") == ["default", "_self_"]
    return dataclasses.replace(WorldConfig(), **(values | overrides))


# Every background, pans on half the clips, several objects: the hard cases of the flow.
WORLD = rich_world(num_objects=(2, 3), pan_probability=0.5)
SCHEMA_FILES = {"mp4", "flow.npy", "tracks.json", "txt", "meta.json"}


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample image [H, W, C] at float pixel coordinates (inside the frame)."""
    x0 = np.clip(np.floor(x).astype(int), 0, image.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, image.shape[0] - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def warp_errors(clip, flow: np.ndarray, erode: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel |frame[t+1](p + flow[t](p)) - frame[t](p)| (mean over RGB) on pixels that
    are `erode` px away from any object edge in frame t and land, not occluded, `erode` px
    inside the same layer of frame t+1; returns (errors, owner of each such pixel)."""
    frames = clip.frames.astype(np.float64)
    num_frames, height, width = clip.segmentation.shape
    ys, xs = np.mgrid[0:height, 0:width]
    kernel = np.ones((2 * erode + 1, 2 * erode + 1), dtype=np.uint8)

    def eroded(mask: np.ndarray) -> np.ndarray:  # the frame border does not erode
        return cv2.erode(mask.astype(np.uint8), kernel).astype(bool)

    errors, owners = [], []
    for t in range(num_frames - 1):
        x, y = xs + flow[t, ..., 0], ys + flow[t, ..., 1]
        inside = (x >= erode) & (x <= width - 1 - erode) & (y >= erode) & (y <= height - 1 - erode)
        xi = np.clip(np.rint(x).astype(int), 0, width - 1)
        yi = np.clip(np.rint(y).astype(int), 0, height - 1)
        valid = inside.copy()
        for layer in np.unique(clip.segmentation[t]):
            is_layer = clip.segmentation[t] == layer
            there = eroded(clip.segmentation[t + 1] == layer)
            valid &= ~is_layer | (eroded(is_layer) & there[yi, xi])
        sampled = bilinear(frames[t + 1], x[valid], y[valid])
        errors.append(np.abs(sampled - frames[t][valid]).mean(axis=-1))
        owners.append(clip.segmentation[t][valid])
    return np.concatenate(errors), np.concatenate(owners)


@pytest.mark.parametrize("index", range(8))
def test_flow_warps_each_frame_onto_the_next(index):
    clip = make_clip(WORLD, seed=0, split="test", index=index)
    errors, owners = warp_errors(clip, clip.flow)
    assert errors.size > 0.5 * clip.flow[..., 0].size, "too few pixels to judge the flow"
    assert errors.mean() < 3.0, (
        f"{clip.meta['background']}: background+objects warp error {errors.mean():.2f}/255"
    )
    on_objects = errors[owners >= 0]
    assert on_objects.size > 100
    assert on_objects.mean() < 3.0, f"object warp error {on_objects.mean():.2f}/255"


@pytest.mark.parametrize("index", range(4))
def test_flow_carries_each_object_rigidly_onto_itself(index):
    """Flat object interiors barely test the flow photometrically; the geometry does. With a
    fast spin, every visible pixel of object k must land inside object k one frame later,
    and the flow on it must be the rotation by the spec's angle step plus a translation."""
    world = dataclasses.replace(WORLD, max_spin=30.0, object_size=(0.14, 0.16))
    spec = sample_clip_spec(world, clip_rng(6, "test", index))
    clip = render_clip(spec)
    num_objects, num_frames, height, width = clip.masks.shape
    ys, xs = np.mgrid[0:height, 0:width]
    for k in range(num_objects):
        for t in range(num_frames - 1):
            visible = clip.segmentation[t] == k
            if visible.sum() < 3:
                continue
            x = xs[visible] + clip.flow[t, ..., 0][visible]
            y = ys[visible] + clip.flow[t, ..., 1][visible]
            grown = cv2.dilate(clip.masks[k, t + 1].astype(np.uint8), np.ones((3, 3), np.uint8))
            assert grown[np.rint(y).astype(int), np.rint(x).astype(int)].all(), (k, t)
            # Least-squares affine map p -> A p + b over the object's pixels; A must be R(step).
            points = np.stack([xs[visible], ys[visible], np.ones(visible.sum())], axis=1)
            affine, *_ = np.linalg.lstsq(points, np.stack([x, y], axis=1), rcond=None)
            step = spec.objects[k].angles[t + 1] - spec.objects[k].angles[t]
            rotation = np.array([[np.cos(step), -np.sin(step)], [np.sin(step), np.cos(step)]])
            np.testing.assert_allclose(affine[:2].T, rotation, atol=1e-4)
            np.testing.assert_allclose(
                rotation @ clip.tracks[k, t] + affine[2], clip.tracks[k, t + 1], atol=1e-3
            )
    # ... and the frames agree: shading along each object's own axis makes the spin visible.
    errors, owners = warp_errors(clip, clip.flow, erode=1)
    assert errors[owners >= 0].mean() < 2.0


def test_pan_is_the_background_flow():
    world = dataclasses.replace(WORLD, pan_probability=1.0)
    clip = make_clip(world, seed=3, split="test", index=0)
    pan = np.array(clip.meta["camera_pan"])
    assert np.linalg.norm(pan) >= world.pan_speed[0] - 1e-3
    background = clip.segmentation[:-1] == -1
    np.testing.assert_allclose(
        clip.flow[background], np.broadcast_to(-pan, (background.sum(), 2)), atol=1e-3
    )
    assert "while the camera pans" in clip.caption


def test_pan_warp_is_exact_and_a_wrong_flow_is_not():
    world = dataclasses.replace(
        WORLD, backgrounds=["stripes"], pan_probability=1.0, pan_speed=(1.0, 1.0)
    )
    clip = make_clip(world, seed=3, split="test", index=0)
    errors, _ = warp_errors(clip, clip.flow)
    still, _ = warp_errors(clip, np.zeros_like(clip.flow))
    assert errors.mean() < 1.5
    assert still.mean() > 4 * errors.mean() + 2.0


@pytest.mark.parametrize("index", range(6))
def test_tracks_are_mask_centroids_and_objects_stay_inside(index):
    clip = make_clip(WORLD, seed=1, split="test", index=index)
    num_objects, num_frames, height, width = clip.masks.shape
    assert clip.tracks.shape == (num_objects, num_frames, 2)
    ys, xs = np.mgrid[0:height, 0:width]
    for k in range(num_objects):
        for t in range(num_frames):
            mask = clip.masks[k, t]
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
            centroid = np.array([xs[mask].mean(), ys[mask].mean()])
            assert np.abs(centroid - clip.tracks[k, t]).max() < 0.5, (clip.meta["objects"][k], t)


def test_render_tracks_follows_the_given_paths():
    t = np.linspace(0, 1, 9)
    tracks = np.stack(
        [
            np.stack([15 + 30 * t, 15 + 30 * t], axis=1),  # upper left -> lower right
            np.stack([48 - 30 * t, 20 + 5 * np.sin(6 * t)], axis=1),
        ]
    )
    clip = render_tracks(tracks, WorldConfig(object_size=(0.1, 0.12)), seed=4)
    np.testing.assert_allclose(clip.tracks, tracks, atol=1e-5)
    assert clip.frames.shape == (9, 64, 64, 3) and clip.masks.shape == (2, 9, 64, 64)
    ys, xs = np.mgrid[0:64, 0:64]
    for k in range(2):
        for step in range(9):
            mask = clip.masks[k, step]
            np.testing.assert_allclose(
                [xs[mask].mean(), ys[mask].mean()], tracks[k, step], atol=0.5
            )
    assert "from the upper left to the lower right" in clip.caption


def test_same_seed_same_bytes_different_seed_differs():
    first = make_clip(WORLD, seed=7, split="train", index=5)
    again = make_clip(WORLD, seed=7, split="train", index=5)
    assert first.frames.tobytes() == again.frames.tobytes()
    assert first.flow.tobytes() == again.flow.tobytes()
    assert first.caption == again.caption
    assert (
        first.frames.tobytes() != make_clip(WORLD, seed=8, split="train", index=5).frames.tobytes()
    )
    assert first.frames.tobytes() != make_clip(WORLD, seed=7, split="val", index=5).frames.tobytes()


def test_caption_names_every_object_and_the_background():
    for index in range(10):
        clip = make_clip(WORLD, seed=2, split="test", index=index)
        for obj in clip.meta["objects"]:
            assert f"{obj['color']} {obj['shape']}" in clip.caption, clip.caption
        adjective = TEXTURES[clip.meta["background"]].adjective
        assert f"on a {adjective} background" in clip.caption
        assert (" and " in clip.caption) == (len(clip.meta["objects"]) > 1)


def test_colours_are_distinct_and_every_shape_is_drawn():
    shapes = set()
    for index in range(40):
        objects = sample_clip_spec(WORLD, clip_rng(5, "test", index)).objects
        colors = [obj.color for obj in objects]
        assert len(set(colors)) == len(colors)
        shapes.update(obj.shape for obj in objects)
    assert shapes == set(SHAPES)


def test_bad_world_is_rejected_with_the_offending_value():
    with pytest.raises(ValueError, match="blob"):
        WorldConfig(shapes=["circle", "blob"])
    with pytest.raises(ValueError, match="num_objects"):
        WorldConfig(num_objects=(1, 11))
    with pytest.raises(ValueError, match="min_object_gap"):
        WorldConfig(min_object_gap=-1.0)


def test_objects_keep_the_gap_and_overlap_without_it():
    two = WorldConfig(num_objects=(2, 2))
    overlapping = 0
    for index in range(12):
        spec = sample_clip_spec(two, clip_rng(3, "test", index))
        clip = render_clip(spec)
        # Silhouettes (hidden parts included) never share a pixel: every track stays visible.
        assert not (clip.masks[0] & clip.masks[1]).any()
        assert min_object_gap(spec.objects) >= 2.0
        free = sample_clip_spec(
            dataclasses.replace(two, min_object_gap=None), clip_rng(3, "test", index)
        )
        overlapping += min_object_gap(free.objects) < 0
    assert overlapping >= 6  # without a gap most pairs of these large shapes overlap
    # One object: no path is redrawn, so the clip is the one drawn without a gap.
    one = WorldConfig(num_objects=(1, 1))
    for index in range(4):
        kept = sample_clip_spec(one, clip_rng(3, "test", index)).objects[0]
        free = sample_clip_spec(
            dataclasses.replace(one, min_object_gap=None), clip_rng(3, "test", index)
        ).objects[0]
        np.testing.assert_array_equal(kept.centres, free.centres)


def test_an_unreachable_gap_names_the_key():
    with pytest.raises(ValueError, match=r"world.min_object_gap=40.0: no paths"):
        sample_clip_spec(WorldConfig(num_objects=(2, 2), min_object_gap=40.0), clip_rng(0, "x", 0))


def test_yaml_config_matches_the_dataclass_defaults():
    cfg = compose_config("synthetic", [])
    config = as_generator_config(cfg)
    assert dataclasses.replace(config, progress=False) == GeneratorConfig()
    # Under the directory run from.
    assert Path(cfg.out_dir).resolve() == Path.cwd() / "data" / "synthetic"


def test_world_presets_compose_and_differ_where_documented():
    rich = as_generator_config(compose_config("synthetic", ["world=rich"]))
    assert rich.world == rich_world()
    assert set(rich.world.backgrounds) == set(TEXTURES) and rich.world.pan_probability > 0
    default = WorldConfig()
    assert default.pan_probability == 0 and set(default.backgrounds) == {"blobs", "gradient"}
    assert default.object_size[0] > rich.world.object_size[0]
    # default_128: the same scenes at twice the size, motion the same share of the frame.
    big = as_generator_config(compose_config("synthetic", ["world=default_128"]))
    assert (big.world.width, big.world.height) == (128, 128)
    assert big.world.speed == tuple(2 * v for v in default.speed)
    assert big.world.min_object_gap == 2 * default.min_object_gap
    small = dataclasses.replace(
        big.world, width=64, height=64, speed=default.speed, min_object_gap=default.min_object_gap
    )
    assert small == default


@pytest.mark.parametrize("workers", [1, 2])
def test_generate_split_writes_schema_shards(tmp_path, workers):
    """In clip order whether one process renders or several."""
    from tora.data.synthetic import generate_split

    config = GeneratorConfig(
        world=WorldConfig(num_frames=9),
        num_train=5,
        num_val=2,
        shard_maxcount=2,
        seed=11,
        workers=workers,
    )
    (tmp_path / "train-000009.tar").write_bytes(b"stale")
    shards = generate_split(config, "train", tmp_path)
    assert [shard.name for shard in shards] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, _, extension = member.name.partition(".")
                samples.setdefault(key, {})[extension] = tar.extractfile(member).read()
    assert sorted(samples) == [f"clip-{i:06d}" for i in range(5)]
    for key, files in samples.items():
        assert set(files) == SCHEMA_FILES
        index = int(key.split("-")[1])
        expected = make_clip(config.world, config.seed, "train", index)
        assert files["txt"].decode() == expected.caption
        meta = json.loads(files["meta.json"])
        assert (
            meta["num_frames"] == 9 and meta["source"] == "synthetic" and meta["split"] == "train"
        )
        flow = np.load(io.BytesIO(files["flow.npy"]))
        assert flow.dtype == np.float16 and flow.shape == (8, 64, 64, 2)
        np.testing.assert_allclose(flow, expected.flow, atol=0.02)
        decoded = decode_sample({"__key__": key, **files})
        np.testing.assert_allclose(decoded.tracks, expected.tracks, atol=1e-3)
        assert decoded.frames.shape == (9, 64, 64, 3)
        assert np.abs(decoded.frames.astype(float) - expected.frames).mean() < 12


def test_a_negative_worker_count_is_refused_before_anything_is_written(tmp_path):
    from tora.data.synthetic import generate_split

    (tmp_path / "train-000000.tar").write_bytes(b"kept")
    with pytest.raises(ValueError, match="workers: 0 .* expected, got -1"):
        generate_split(GeneratorConfig(workers=-1), "train", tmp_path)
    assert (tmp_path / "train-000000.tar").read_bytes() == b"kept"


def test_cli_writes_both_splits(tmp_path):
    """Run from an unrelated working directory: the entry point must not depend on it."""
    out_dir = tmp_path / "shards"
    source_dir = str(Path(tora.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([source_dir, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tora.data.synthetic",
            f"out_dir={out_dir}",
            "num_train=4",
            "num_val=2",
            "progress=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out_dir / "train-000000.tar").is_file() and (out_dir / "val-000000.tar").is_file()
    with tarfile.open(out_dir / "val-000000.tar") as tar:
        assert len(tar.getnames()) == 2 * len(SCHEMA_FILES)
    assert "total" in result.stdout
