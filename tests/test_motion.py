"""tora.motion: trajectory files, displacement maps, smoothing, flow-RGB, sampling, drawing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from tora.motion import (
    MotionRGBConfig,
    TrackFormatError,
    draw_tracks,
    flow_to_displacement_map,
    flow_to_rgb,
    gaussian_smooth,
    load_tracks,
    motion_maps_to_rgb,
    read_tora_point_file,
    read_tracks_json,
    resample_tracks,
    rescale_tracks,
    sample_tracks_from_flow,
    tracks_to_displacement_map,
    write_tracks_json,
)

# ---------------------------------------------------------------- track files


def write_point_file(path, points):
    path.write_text("".join(f"{x},{y}\n" for x, y in points))
    return path


def test_tora_file_resampled_and_rescaled(tmp_path):
    points = [(10 + 4 * i, 200 - 3 * i) for i in range(25)]
    path = write_point_file(tmp_path / "a.txt", points)
    tracks = load_tracks(path, width=512, height=320, num_frames=49)
    assert tracks.shape == (1, 49, 2)
    # 256 -> 512 wide: x' = (x + 0.5) * 2 - 0.5; 256 -> 320 high: y' = (y + 0.5) * 1.25 - 0.5
    assert tracks[0, 0].tolist() == [20.5, 250.125]
    assert tracks[0, -1].tolist() == [2 * 106 + 0.5, 1.25 * 128 + 0.125]
    # 25 -> 49 frames: the even frames are the original points, odd ones midpoints
    expected_even = torch.tensor([[2 * x + 0.5, 1.25 * y + 0.125] for x, y in points])
    torch.testing.assert_close(tracks[0, ::2], expected_even)
    torch.testing.assert_close(tracks[0, 1], (tracks[0, 0] + tracks[0, 2]) / 2)


def test_several_tora_files_are_several_tracks(tmp_path):
    first = write_point_file(tmp_path / "a.txt", [(0, 0), (255, 255)])
    second = write_point_file(tmp_path / "b.txt", [(128, 64), (128, 64), (100, 64)])
    tracks = load_tracks([first, second], width=256, height=256, num_frames=5)
    assert tracks.shape == (2, 5, 2)
    assert tracks[0, 2].tolist() == [127.5, 127.5]
    assert tracks[1, 0].tolist() == [128.0, 64.0]
    assert tracks[1, -1].tolist() == [100.0, 64.0]


def test_downsampling_keeps_endpoints():
    tracks = torch.arange(40, dtype=torch.float32).reshape(1, 20, 2)
    resampled = resample_tracks(tracks, 7)
    assert resampled.shape == (1, 7, 2)
    assert torch.equal(resampled[0, 0], tracks[0, 0])
    assert torch.equal(resampled[0, -1], tracks[0, -1])
    # subsampled, not interpolated: every point is one of the inputs
    assert set(resampled[0, :, 0].tolist()) <= set(tracks[0, :, 0].tolist())


def test_json_round_trip_and_npy_canvas(tmp_path):
    tracks = torch.tensor([[[1.0, 2.0], [3.0, 4.5]], [[10.0, 0.0], [0.0, 10.0]]])
    write_tracks_json(tmp_path / "t.json", tracks, (32, 16))
    read, canvas = read_tracks_json(tmp_path / "t.json")
    assert canvas == (32, 16) and torch.equal(read, tracks)
    np.save(tmp_path / "t.npy", tracks.numpy())
    loaded = load_tracks(tmp_path / "t.npy", width=64, height=32, num_frames=2, canvas=(32, 16))
    torch.testing.assert_close(loaded, rescale_tracks(tracks, (32, 16), (64, 32)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2\n3,4\n5,6\n7,8\n9,10\n11,12\n12;40\n", "line 7: 'x,y' expected, got '12;40'"),
        ("1,2\n3\n", "line 2: 'x,y' expected, got '3'"),
        ("1,2\n3,4,5\n", "line 2: 'x,y' expected, got '3,4,5'"),
        ("\n\n", "empty"),
    ],
)
def test_malformed_point_file_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "a.txt"
    path.write_text(text)
    with pytest.raises(TrackFormatError) as error:
        read_tora_point_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"size": [4, 4], "tracks": []}, "keys 'canvas' and 'tracks' expected"),
        ({"canvas": [4, 4], "tracks": [[[0, 0], [1, 1]], [[0, 0]]]}, "track 1: 1 points"),
        ({"canvas": [4, 4], "tracks": [[[0, 0], [1, "a"]]]}, "track 0 frame 1"),
        ({"canvas": [4], "tracks": []}, "'canvas' [W, H]"),
    ],
)
def test_malformed_json_named(tmp_path, document, message):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TrackFormatError) as error:
        read_tracks_json(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_bad_npy_shape_and_out_of_canvas(tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((3, 5)))
    with pytest.raises(TrackFormatError, match=r"bad\.npy.*\[N, T, 2\] expected, got \[3, 5\]"):
        load_tracks(tmp_path / "bad.npy", width=8, height=8, num_frames=5)
    path = write_point_file(tmp_path / "far.txt", [(10, 10), (300, 12)])
    with pytest.raises(TrackFormatError) as error:
        load_tracks(path, width=64, height=64, num_frames=2)
    message = str(error.value)
    assert "far.txt track 0 frame 1" in message
    assert "(300, 12)" in message and "256x256 canvas" in message


# ---------------------------------------------------------------- maps


def test_one_step_track_at_exact_pixel():
    tracks = torch.tensor([[[3.6, 5.8], [6.6, 4.8]]])
    maps = tracks_to_displacement_map(tracks, height=8, width=10)
    assert maps.shape == (2, 8, 10, 2)
    assert not maps[0].any()
    torch.testing.assert_close(maps[1, 6, 4], torch.tensor([3.0, -1.0]))
    maps[1, 6, 4] = 0
    assert not maps.any()


def test_two_tracks_batched_masked_and_summed():
    tracks = torch.zeros(2, 3, 3, 2)
    tracks[0, 0] = torch.tensor([[1.0, 1.0], [2.0, 1.0], [2.0, 3.0]])
    tracks[0, 1] = torch.tensor([[5.0, 2.0], [5.0, 0.0], [4.0, 0.0]])
    tracks[0, 2] = tracks[0, 0] + torch.tensor([0.0, 0.0])  # coincides with track 0: sums
    tracks[1, 0] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    tracks[1, 1] = torch.tensor([[3.0, 3.0], [4.0, 4.0], [5.0, 5.0]])  # padding, masked
    mask = torch.tensor([[True, True, True], [True, False, False]])
    maps = tracks_to_displacement_map(tracks, height=6, width=7, track_mask=mask)
    assert maps.shape == (2, 3, 6, 7, 2)
    expected = torch.zeros_like(maps)
    expected[0, 1, 1, 1] = torch.tensor([2.0, 0.0])
    expected[0, 2, 1, 2] = torch.tensor([0.0, 4.0])
    expected[0, 1, 2, 5] = torch.tensor([0.0, -2.0])
    expected[0, 2, 0, 5] = torch.tensor([-1.0, 0.0])
    expected[1, 1, 0, 0] = torch.tensor([1.0, 0.0])
    assert torch.equal(maps, expected)


def test_flow_to_displacement_map_prepends_zero():
    flow = torch.randn(2, 4, 5, 6, 2)
    maps = flow_to_displacement_map(flow)
    assert maps.shape == (2, 5, 5, 6, 2)
    assert not maps[:, 0].any() and torch.equal(maps[:, 1:], flow)


def test_smoothing_peak_one_symmetric_and_equals_2d_kernel():
    maps = torch.zeros(1, 2, 21, 21, 2, dtype=torch.float64)
    maps[0, 1, 10, 10] = torch.tensor([1.0, -2.0])
    smoothed = gaussian_smooth(maps, kernel_size=8, sigma=2.0)  # even size -> 9
    assert smoothed.shape == maps.shape
    assert smoothed[0, 1, 10, 10].tolist() == [1.0, -2.0]
    blob = smoothed[0, 1, :, :, 0]
    assert torch.equal(blob, blob.flip(0)) and torch.equal(blob, blob.T)
    assert blob.max() == 1.0 and not smoothed[0, 0].any()
    offsets = torch.arange(-4, 5, dtype=torch.float64)
    kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / 8)
    torch.testing.assert_close(blob[6:15, 6:15], kernel)
    assert blob[5].abs().max() == 0 and blob[:, 15].abs().max() == 0


# ---------------------------------------------------------------- flow-RGB


def test_zero_flow_is_white():
    rgb = flow_to_rgb(torch.zeros(3, 4, 5, 2), max_displacement=10.0)
    assert rgb.shape == (3, 3, 4, 5) and torch.equal(rgb, torch.ones_like(rgb))
    assert torch.equal(flow_to_rgb(torch.zeros(4, 5, 2), None), torch.ones(3, 4, 5))


def test_matches_torchvision_at_equal_max():
    generator = torch.Generator().manual_seed(0)
    flow = torch.randn(3, 16, 20, 2, generator=generator) * 5
    reference = torchvision.utils.flow_to_image(flow.permute(0, 3, 1, 2)).float() / 127.5 - 1
    max_norm = float(torch.linalg.vector_norm(flow, dim=-1).max())
    # torchvision floors to uint8: ours is the continuous value, at most one step above
    for ours in (flow_to_rgb(flow, max_norm), flow_to_rgb(flow, None)):
        difference = ours - reference
        assert difference.min() > -1e-5 and difference.max() < 1 / 127.5 + 1e-5
    # an unnormalised (max 1.5x) version differs: the check can fail
    assert (flow_to_rgb(flow, 1.5 * max_norm) - reference).abs().max() > 0.1


def test_fixed_max_clamps_and_keeps_direction():
    flow = torch.tensor([[[3.0, 0.0], [30.0, 0.0], [0.0, 0.0], [-6.0, 0.0]]])
    rgb = flow_to_rgb(flow, max_displacement=6.0)
    torch.testing.assert_close(rgb[:, 0, 1], flow_to_rgb(flow[:, :1] * 2, 6.0)[:, 0, 0])
    # (dx, 0) with dx > 0 is the wheel's red end; at half length halfway to white
    torch.testing.assert_close(rgb[:, 0, 1], torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(rgb[:, 0, 2], torch.ones(3))


def test_motion_maps_to_rgb_scales_with_short_side():
    config = MotionRGBConfig()
    assert config.scaled_for(480) == (99, 10.0, 40.0)
    kernel_size, sigma, max_displacement = config.scaled_for(64)
    assert kernel_size == 13 and sigma == pytest.approx(4 / 3)
    assert max_displacement == pytest.approx(16 / 3)
    tracks = torch.tensor([[[[20.0, 30.0], [20.0 + 16 / 3, 30.0], [20.0, 30.0]]]])
    maps = tracks_to_displacement_map(tracks, height=64, width=96)
    rgb = motion_maps_to_rgb(maps, config)
    assert rgb.shape == (1, 3, 3, 64, 96)
    assert torch.equal(rgb[:, :, 0], torch.ones_like(rgb[:, :, 0]))
    torch.testing.assert_close(rgb[0, :, 1, 30, 20], torch.tensor([1.0, -1.0, -1.0]))
    assert (rgb[0, :, 1, 30, 23] < 1).any() and torch.equal(rgb[0, :, 1, 0, 95], torch.ones(3))
    unsmoothed = motion_maps_to_rgb(maps, config, smooth=False)
    assert torch.equal(unsmoothed[0, :, 1, 30, 23], torch.ones(3))


# ---------------------------------------------------------------- sampling


def test_sampled_tracks_follow_constant_translation():
    shift = torch.tensor([1.25, -0.5])
    flow = shift.expand(4, 40, 48, 2).clone()
    generator = torch.Generator().manual_seed(3)
    tracks = sample_tracks_from_flow(flow, max_tracks=12, stride=6, generator=generator)
    assert tracks.ndim == 3 and 1 <= tracks.shape[0] <= 12 and tracks.shape[1:] == (5, 2)
    assert tracks.min() >= 0 and (tracks[..., 0] <= 47).all() and (tracks[..., 1] <= 39).all()
    free = (tracks[:, 0, 0] <= 47 - 4 * 1.25) & (tracks[:, 0, 1] >= 4 * 0.5)
    assert free.any()
    steps = tracks[free, 1:] - tracks[free, :-1]
    torch.testing.assert_close(steps, shift.expand_as(steps), atol=1e-4, rtol=0)
    repeat = sample_tracks_from_flow(
        flow, max_tracks=12, stride=6, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(tracks, repeat)


def test_sampled_tracks_follow_a_zoom_at_pixel_centres():
    width = 64
    flow = torch.zeros(2, 16, width, 2)
    flow[..., 0] = torch.arange(width, dtype=torch.float32) / 10  # dx = x / 10
    generator = torch.Generator().manual_seed(0)
    tracks = sample_tracks_from_flow(flow, max_tracks=8, stride=5, generator=generator)
    inside = tracks[:, 0, 0] <= 40
    assert inside.any()
    # bilinear sampling of a linear field is exact: x_{t+1} = 1.1 x_t, y unchanged
    x = tracks[inside, :, 0]
    torch.testing.assert_close(x[:, 1:], 1.1 * x[:, :-1], atol=1e-4, rtol=0)
    assert torch.equal(tracks[:, 1:, 1], tracks[:, :-1, 1])


def test_sampling_picks_only_moving_points():
    flow = torch.zeros(2, 32, 32, 2)
    flow[:, 8:16, 20:28] = torch.tensor([0.5, 0.25])
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        tracks = sample_tracks_from_flow(
            flow, max_tracks=16, stride=2, generator=generator, min_tracks=16
        )
        assert tracks.shape == (16, 3, 2)
        start = tracks[:, 0]
        assert ((start[:, 0] >= 20) & (start[:, 0] < 28)).all()
        assert ((start[:, 1] >= 8) & (start[:, 1] < 16)).all()
        assert len({tuple(point) for point in start.tolist()}) == 16


def test_sampled_tracks_are_clamped_to_the_frame():
    flow = torch.tensor([6.0, -6.0]).expand(3, 12, 16, 2).clone()
    tracks = sample_tracks_from_flow(flow, max_tracks=5, stride=3, min_tracks=5)
    assert torch.equal(tracks[:, -1], torch.tensor([15.0, 0.0]).expand(5, 2))


def test_sampling_without_motion_falls_back_to_uniform():
    tracks = sample_tracks_from_flow(torch.zeros(2, 8, 8, 2), max_tracks=3, stride=4, min_tracks=3)
    assert tracks.shape == (3, 3, 2) and torch.equal(tracks[:, 0], tracks[:, -1])


# ---------------------------------------------------------------- drawing


def test_draw_tracks_marks_the_path():
    frames = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    tracks = torch.tensor([[[4.0, 16.0], [16.0, 16.0], [28.0, 16.0]]])
    drawn = draw_tracks(torch.from_numpy(frames), tracks, colors=[(255, 0, 0)])
    assert drawn.dtype == np.uint8 and drawn.shape == frames.shape and not frames.any()
    assert drawn[0, 16, 4, 0] > 200 and not drawn[0, :, 12:].any()
    assert (drawn[2, 16, 4:29, 0] > 100).all() and not drawn[2, :, :, 1:].any()
    assert not drawn[2, :10].any() and not drawn[2, 24:].any()
    with pytest.raises(ValueError, match=r"tracks \[N, 3, 2\] expected"):
        draw_tracks(frames, tracks[:, :2])
