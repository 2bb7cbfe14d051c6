"""Drawing trajectories by hand: clicked canvas points -> video tracks at any aspect
ratio and length, the preset paths, and the JSON / Tora point-file exports read back by
the reader ``tora.sample`` uses (``load_tracks``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tora.motion import (
    PRESETS,
    TORA_CANVAS,
    Sketch,
    canvas_size,
    load_tracks,
    preset_track,
    rescale_tracks,
    write_tora_point_file,
    write_tracks_json,
)
from tora.motion.tracks import TrackFormatError


@pytest.mark.parametrize(
    ("video", "canvas"),
    [((64, 64), (512, 512)), ((720, 480), (512, 341)), ((480, 720), (341, 512))],
)
def test_canvas_has_the_videos_aspect_ratio(video, canvas):
    assert canvas_size(video, 512) == canvas


@pytest.mark.parametrize("video", [(64, 64), (96, 64), (48, 80)])
def test_canvas_points_land_on_the_video_at_any_aspect_ratio(video):
    """Pixel-centre aligned: the canvas centre is the video centre, any point maps by
    x' = (x + 0.5) W / W_canvas - 0.5, and the corners land on the corner pixels."""
    canvas = canvas_size(video, 512)
    width, height = canvas
    sketch = Sketch(canvas)
    for point in [((width - 1) / 2, (height - 1) / 2), (100, 50), (0, 0), (width - 1, height - 1)]:
        sketch.add_point(*point)
    tracks = sketch.to_tracks(video, 4)[0]
    assert torch.allclose(tracks[0], torch.tensor([(video[0] - 1) / 2, (video[1] - 1) / 2]))
    expected = torch.tensor([100.5 * video[0] / width - 0.5, 50.5 * video[1] / height - 0.5])
    assert torch.allclose(tracks[1], expected)
    assert tracks[2].tolist() == [0, 0] and tracks[3].tolist() == [video[0] - 1, video[1] - 1]


def test_points_on_the_canvas_edge_stay_inside_the_video_frame():
    sketch = Sketch((512, 512))
    sketch.add_point(-0.5, 511.5)
    sketch.add_point(511, 0)
    tracks = sketch.to_tracks((64, 64), 5)
    assert tracks.min() >= 0 and tracks.max() <= 63


def test_clicked_points_are_reached_at_evenly_spaced_times():
    sketch = Sketch((64, 64))
    for point in [(0, 0), (40, 0), (40, 30)]:
        sketch.add_point(*point)
    tracks = sketch.to_tracks((64, 64), 9)
    assert tracks.shape == (1, 9, 2)
    assert tracks[0, 0].tolist() == [0, 0] and tracks[0, 4].tolist() == [40, 0]
    assert tracks[0, 8].tolist() == [40, 30]
    assert torch.allclose(tracks[0, 2], torch.tensor([20.0, 0.0]))  # linear in between


def test_a_point_clicked_twice_holds_still():
    sketch = Sketch((64, 64))
    for point in [(10, 10), (10, 10), (50, 10)]:
        sketch.add_point(*point)
    tracks = sketch.to_tracks((64, 64), 9)
    assert torch.equal(tracks[0, :5], torch.tensor([[10.0, 10.0]]).expand(5, 2))
    assert tracks[0, 8, 0] == 50


def test_several_tracks_keep_their_order_and_an_empty_new_one_is_ignored():
    sketch = Sketch((64, 64))
    for number in range(3):
        sketch.add_point(number, 0)
        sketch.add_point(number, 60)
        sketch.new_track()
    tracks = sketch.to_tracks((64, 64), 17)
    assert tracks.shape == (3, 17, 2)
    assert tracks[:, 0, 0].tolist() == [0, 1, 2]
    assert Sketch((64, 64)).to_tracks((64, 64), 17).shape == (0, 17, 2)


def test_up_to_max_tracks():
    sketch = Sketch((64, 64), max_tracks=8)
    for number in range(8):
        sketch.new_track()
        sketch.add_point(number, 0)
        sketch.add_point(number, 9)
    with pytest.raises(ValueError, match="at most 8 trajectories"):
        sketch.new_track()
    with pytest.raises(ValueError, match="at most 8 trajectories"):
        sketch.add_preset("line")
    assert len(sketch.to_tracks((64, 64), 5)) == 8


def test_errors_say_what_is_wrong():
    sketch = Sketch((64, 48))
    sketch.add_point(3, 4)
    with pytest.raises(ValueError, match="trajectory 1 has 1 point: a trajectory needs at least 2"):
        sketch.to_tracks((64, 48), 17)
    with pytest.raises(ValueError, match=r"point \(70, 3\) is outside the 64x48 canvas"):
        sketch.add_point(70, 3)


def test_undo_remove_and_clear():
    sketch = Sketch((64, 64))
    sketch.add_point(1, 1)
    sketch.add_point(2, 2)
    sketch.new_track()
    sketch.add_point(3, 3)
    sketch.undo()  # the point, and the track it leaves empty
    assert sketch.tracks == [[(1, 1), (2, 2)]]
    sketch.new_track()
    sketch.undo()  # the empty new track
    assert sketch.tracks == [[(1, 1), (2, 2)]]
    sketch.new_track()
    sketch.add_point(5, 5)
    sketch.add_point(6, 6)
    sketch.remove_track()
    assert sketch.tracks == [[(1, 1), (2, 2)]]
    sketch.clear()
    assert sketch.tracks == []
    sketch.undo()
    assert sketch.tracks == []


def test_a_preset_starts_at_a_single_clicked_point():
    sketch = Sketch((512, 512))
    sketch.add_point(100, 300)
    sketch.add_preset("circle", num_points=33)
    assert len(sketch.tracks) == 1 and len(sketch.tracks[0]) == 33
    assert sketch.tracks[0][0] == (100, 300)
    sketch.add_preset("wave")  # a drawn track is kept: the preset is a new one
    assert len(sketch.tracks) == 2


@pytest.mark.parametrize("canvas", [(512, 512), (512, 288), (288, 512)])
@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_stay_inside_any_canvas(name, canvas):
    points = preset_track(name, canvas, 49)
    assert points.shape == (49, 2)
    assert points.min() >= -0.5 and (points <= np.array(canvas) - 0.5).all()
    assert np.linalg.norm(points[-1] - points[0]) > 0 or name == "circle"
    moved = preset_track(name, canvas, 49, start=(canvas[0] - 5, canvas[1] - 5))
    assert moved.min() >= 0 and (moved <= np.array(canvas) - 1).all()
    assert np.allclose(np.diff(moved, axis=0), np.diff(points, axis=0))  # the same shape


def test_circle_is_round_on_a_wide_canvas_and_pause_then_go_pauses():
    circle = preset_track("circle", (512, 288), 49)
    radii = np.linalg.norm(circle - [255.5, 143.5], axis=1)
    assert np.allclose(radii, 0.3 * 288) and np.allclose(circle[0], circle[-1])
    pause = preset_track("pause-then-go", (512, 512), 50)
    assert np.allclose(pause[:20], pause[0]) and pause[-1, 0] > pause[0, 0] + 100


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="one of line, arc, circle"):
        preset_track("square", (64, 64))


def test_sketch_json_round_trip_and_errors():
    sketch = Sketch((512, 288))
    sketch.add_point(10, 20)
    sketch.add_point(30.5, 40)
    sketch.new_track()
    again = Sketch.from_json(sketch.to_json())
    assert again.canvas == (512, 288) and again.tracks == sketch.tracks
    bad = {"canvas": [512, 288], "tracks": [[[1, 2], [3, "x"]]]}
    with pytest.raises(TrackFormatError, match="trajectory 1 point 2"):
        Sketch.from_json(json.dumps(bad))
    outside = {"canvas": [64, 64], "tracks": [[[1, 2], [100, 3]]]}
    with pytest.raises(TrackFormatError, match="trajectory 1 point 2: point .* outside"):
        Sketch.from_json(json.dumps(outside))
    many = {"canvas": [64, 64], "tracks": [[[1, 2], [3, 4]]] * 9}
    with pytest.raises(TrackFormatError, match="at most 8 trajectories, got 9"):
        Sketch.from_json(json.dumps(many))
    with pytest.raises(TrackFormatError, match="invalid JSON"):
        Sketch.from_json("{")


def test_a_sketch_moves_between_canvases():
    sketch = Sketch((64, 64))
    sketch.add_point(0, 0)
    sketch.add_point(63, 31.5)
    on_page = sketch.rescaled((512, 512))
    assert on_page.tracks[0][0] == (3.5, 3.5)
    back = on_page.rescaled((64, 64))
    assert np.allclose(back.tracks, sketch.tracks)
    assert torch.allclose(on_page.to_tracks((64, 64), 5), sketch.to_tracks((64, 64), 5))


@pytest.mark.parametrize("video", [(64, 64), (96, 64)])
def test_exports_read_back_through_the_sample_reader(tmp_path, video):
    """tracks.json exactly; Tora point files to within their integer rounding."""
    width, height = video
    sketch = Sketch(canvas_size(video, 512))
    sketch.add_point(20, 30)
    sketch.add_point(400, 200)
    sketch.add_preset("spiral")
    tracks = sketch.to_tracks(video, 17)

    write_tracks_json(tmp_path / "tracks.json", tracks, video)
    assert torch.allclose(load_tracks(tmp_path / "tracks.json", width, height, 17), tracks)

    files = [tmp_path / f"tora_track_{n}.txt" for n in range(len(tracks))]
    for path, track in zip(files, tracks):
        write_tora_point_file(path, track, video)
    lines = files[0].read_text().splitlines()
    assert len(lines) == 17 and all(line.count(",") == 1 for line in lines)
    values = [int(v) for line in lines for v in line.split(",")]  # the release reads ints
    assert 0 <= min(values) and max(values) <= 255
    read = load_tracks([str(p) for p in files], width, height, 17)
    rounding = 0.5 * torch.tensor([width / TORA_CANVAS[0], height / TORA_CANVAS[1]])
    assert ((read - tracks).abs() <= rounding + 1e-4).all()


def test_tora_point_file_matches_rescaling_to_its_canvas(tmp_path):
    track = torch.tensor([[0.0, 0.0], [31.5, 31.5], [63.0, 63.0]])
    write_tora_point_file(tmp_path / "t.txt", track, (64, 64))
    expected = rescale_tracks(track, (64, 64), TORA_CANVAS).round().clamp(0, 255)
    written = [
        [int(v) for v in line.split(",")] for line in (tmp_path / "t.txt").read_text().split()
    ]
    assert written == expected.int().tolist()
