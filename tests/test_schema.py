"""The shard schema: encode -> tar -> WebDataset -> decode, and its errors."""

import json
import subprocess

import numpy as np
import pytest
import torch
import webdataset as wds

from tora.data.schema import (
    SAMPLE_FILES,
    ShardFormatError,
    ShardWriter,
    TracksOutsideCanvasError,
    decode_sample,
    decode_video,
    encode_sample,
    encode_video,
)


def smooth_frames(rng, num_frames=9, height=32, width=32):
    """Random but smooth colour frames sliding one pixel per frame (what mp4 is made for)."""
    coarse = torch.from_numpy(
        rng.uniform(0, 255, (1, 3, height // 8 + 1, (width + num_frames) // 8 + 1))
    )
    image = torch.nn.functional.interpolate(
        coarse, size=(height, width + num_frames), mode="bilinear"
    )
    image = image[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    return np.stack([image[:, t : t + width] for t in range(num_frames)])


def make_clip(rng, num_frames=9, height=32, width=32, num_tracks=3):
    return {
        "frames": smooth_frames(rng, num_frames, height, width),
        "flow": rng.normal(0, 3, (num_frames - 1, height, width, 2)).astype(np.float32),
        "tracks": rng.uniform(0, width - 1, (num_tracks, num_frames, 2)).astype(np.float32),
        "caption": "a red circle moves right — ünïcode",
        "meta": {"fps": 8.0, "source": "test", "scores": {"motion": 1.5}, "extra": [1, 2]},
    }


def test_round_trip_through_shards(tmp_path):
    rng = np.random.default_rng(0)
    clips = {f"clip-{i:06d}": make_clip(rng, num_tracks=i) for i in range(5)}
    with ShardWriter(str(tmp_path), "train", maxcount=2) as writer:
        for key, clip in clips.items():
            writer.write(encode_sample(key, **clip))
    assert writer.shards == [str(tmp_path / f"train-{i:06d}.tar") for i in range(3)]
    assert writer.num_samples == 5

    listing = subprocess.run(
        ["tar", "tf", writer.shards[0]], capture_output=True, text=True, check=True
    ).stdout.split()
    assert listing == [f"clip-000000.{name}" for name in sorted(SAMPLE_FILES)] + [
        f"clip-000001.{name}" for name in sorted(SAMPLE_FILES)
    ]

    dataset = wds.WebDataset(writer.shards, shardshuffle=False, empty_check=False)
    decoded = {sample.key: sample for sample in map(decode_sample, dataset)}
    assert decoded.keys() == clips.keys()
    for key, clip in clips.items():
        sample = decoded[key]
        assert sample.frames.dtype == np.uint8 and sample.frames.shape == clip["frames"].shape
        error = np.abs(sample.frames.astype(np.float64) - clip["frames"]).mean()
        assert error < 8, f"{key}: mean abs error {error:.2f}/255"
        assert sample.flow.dtype == np.float32
        np.testing.assert_array_equal(
            sample.flow, clip["flow"].astype(np.float16).astype(np.float32)
        )
        assert sample.tracks.dtype == np.float32
        assert sample.tracks.shape == (len(clip["tracks"]), 9, 2)
        np.testing.assert_array_equal(sample.tracks, clip["tracks"])
        assert sample.caption == clip["caption"]
        assert sample.meta == {**clip["meta"], "width": 32, "height": 32, "num_frames": 9}
        assert sample.fps == 8.0


def test_mpeg4_fallback_round_trip():
    frames = smooth_frames(np.random.default_rng(1), num_frames=5, height=48, width=64)
    decoded = decode_video(encode_video(frames, fps=24.0, codec="mpeg4"))
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.float64) - frames).mean() < 8


@pytest.mark.parametrize(
    "change, message",
    [
        ({"frames": np.zeros((9, 31, 32, 3), np.uint8)}, "even height and width"),
        ({"frames": np.zeros((9, 32, 32), np.uint8)}, "uint8 [T, H, W, 3]"),
        ({"flow": np.zeros((9, 32, 32, 2), np.float32)}, "[T-1, H, W, 2] = [8, 32, 32, 2]"),
        ({"tracks": np.zeros((2, 8, 2), np.float32)}, "T = 9"),
        ({"meta": {"source": "test"}}, "'fps': positive number"),
        ({"meta": {"fps": 8.0}}, "'source'"),
        ({"meta": {"fps": 8.0, "source": "x", "width": 64}}, "'width': 32"),
    ],
)
def test_encode_errors_name_the_field(change, message):
    clip = {**make_clip(np.random.default_rng(2)), **change}
    with pytest.raises(ShardFormatError) as error:
        encode_sample("clip-1", **clip)
    assert message in str(error.value)


def test_decode_errors_name_sample_and_file():
    raw = encode_sample("clip-7", **make_clip(np.random.default_rng(3)))
    raw["__url__"] = "shard-000.tar"

    missing = {key: value for key, value in raw.items() if key != "flow.npy"}
    with pytest.raises(
        ShardFormatError, match=r"sample clip-7 in shard-000.tar: missing \['flow.npy'\]"
    ):
        decode_sample(missing)

    with pytest.raises(ShardFormatError, match="clip-7 in shard-000.tar mp4: undecodable"):
        decode_sample({**raw, "mp4": raw["mp4"][:100]})

    tracks = json.dumps({"canvas": [64, 64], "tracks": []}).encode()
    with pytest.raises(ShardFormatError, match=r"tracks.json: 'canvas' \[W, H\] = \[32, 32\]"):
        decode_sample({**raw, "tracks.json": tracks})

    with pytest.raises(ShardFormatError, match="meta.json: invalid JSON"):
        decode_sample({**raw, "meta.json": b"{"})


@pytest.mark.parametrize(
    "point, kept",
    [((-0.5, 0.0), True), ((31.5, 31.5), True), ((-0.51, 3.0), False), ((3.0, 31.6), False)],
)
def test_track_points_must_lie_on_the_canvas_within_half_a_pixel(point, kept):
    """The area ``tora.sample`` accepts: [-0.5, W - 0.5] x [-0.5, H - 0.5], on both sides."""
    clip = make_clip(np.random.default_rng(4))
    raw = encode_sample("clip-8", **clip)
    tracks = clip["tracks"].copy()
    tracks[1, 5] = point
    document = {"canvas": [32, 32], "tracks": tracks.tolist()}
    moved = {**raw, "tracks.json": json.dumps(document).encode()}
    if kept:
        np.testing.assert_array_equal(decode_sample(moved).tracks[1, 5], point)
        encode_sample("clip-8", **{**clip, "tracks": tracks})
        return
    message = rf"sample clip-8 tracks.json: track 1 frame 5: point \({point[0]:g}, {point[1]:g}\)"
    with pytest.raises(TracksOutsideCanvasError, match=message + " outside the 32x32 canvas"):
        decode_sample(moved)
    with pytest.raises(TracksOutsideCanvasError, match="sample clip-8 tracks: track 1 frame 5"):
        encode_sample("clip-8", **{**clip, "tracks": tracks})


def test_writer_rejects_incomplete_samples(tmp_path):
    writer = ShardWriter(str(tmp_path), "val")
    with pytest.raises(ShardFormatError, match=r"missing \['mp4'"):
        writer.write({"__key__": "a"})
    assert writer.close() == [] and not list(tmp_path.iterdir())
