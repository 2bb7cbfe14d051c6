"""The demo page's parts: one generation without the page (files, TrajError, errors in
words), the canvas image, the pipeline's step callback, and the ``/generate`` API
endpoint scripted with ``gradio_client`` against a server on a free port."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import compose_config
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from tora.data.schema import decode_video
from tora.demo import DemoGenerator
from tora.demo.__main__ import serve
from tora.demo.app import status_html
from tora.demo.canvas import BACKGROUND, blank_canvas, render_sketch
from tora.inference import GenerationConfig, GenerationRequest, ToraPipeline
from tora.metrics import LucasKanadeTracker
from tora.motion import Sketch, load_tracks, track_colors

TWO_TRACKS = json.dumps(
    {
        "canvas": [512, 512],
        "tracks": [[[60, 400], [250, 250], [450, 120]], [[400, 100], [100, 300]]],
    }
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def pipeline(chain) -> ToraPipeline:
    return ToraPipeline.from_checkpoint(chain / "stage2_traj.ckpt")


@pytest.fixture
def generator(pipeline, tmp_path) -> DemoGenerator:
    return DemoGenerator(pipeline, (64, 64), tmp_path, LucasKanadeTracker(), max_tracks=8)


def test_a_generation_writes_videos_tracks_and_trajerror(generator):
    result = generator.generate("a red circle moves right", TWO_TRACKS, num_frames=17, steps=2)
    assert decode_video(result.files[0].read_bytes()).shape == (17, 64, 64, 3)
    preview = decode_video(result.video.read_bytes())
    drawn = decode_video(result.tracks_video.read_bytes())
    assert preview.shape == drawn.shape == (17, 256, 256, 3)
    assert np.abs(drawn.astype(int) - preview.astype(int)).mean() > 0.5
    assert result.trajerror is not None and np.isfinite(result.trajerror)
    names = [path.name for path in result.files]
    assert names == ["video.mp4", "tracks.json", "tora_track_1.txt", "tora_track_2.txt"]
    expected = Sketch.from_json(TWO_TRACKS).to_tracks((64, 64), 17)
    assert torch.allclose(load_tracks(result.files[1], 64, 64, 17), expected)
    points = load_tracks([str(path) for path in result.files[2:]], 64, 64, 17)
    assert (points - expected).abs().max() <= 0.125 + 1e-4


def test_without_tracks_the_prompt_alone_is_used(generator):
    result = generator.generate("a red circle", "", num_frames=5, steps=1)
    assert result.trajerror is None and [p.name for p in result.files] == ["video.mp4"]
    assert "no trajectory drawn" in result.notes[0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sketch_json": '{"canvas": [64, 64], "tracks": [[[3, 4]]]}'}, "at least 2 points"),
        ({"prompt": "  "}, "a prompt is needed"),
        ({"num_frames": 16}, r"4k \+ 1"),
        ({"steps": 0}, "steps: a whole number >= 1"),
        ({"sketch_json": "[1, 2"}, "invalid JSON"),
    ],
)
def test_errors_are_sentences(generator, changes, message):
    request = {"prompt": "a circle", "sketch_json": TWO_TRACKS, "num_frames": 17, "steps": 1}
    with pytest.raises(ValueError, match=message):
        generator.generate(**(request | changes))


def test_strength_equal_to_cfg_is_the_joint_guidance(generator):
    assert generator.settings(4, 7.0, 7.0, 0).motion_guidance_scale is None
    assert generator.settings(4, 7.0, 3.0, 0).motion_guidance_scale == 3.0


def test_pipeline_reports_each_sampling_step(pipeline):
    calls = []
    pipeline.generate(
        [GenerationRequest("a circle")],
        5,
        64,
        64,
        GenerationConfig(steps=3),
        progress=False,
        step_callback=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_canvas_shows_each_track_in_its_colour():
    sketch = Sketch((512, 512))
    sketch.add_point(100, 200)
    sketch.add_point(400, 200)
    image = render_sketch(sketch, blank_canvas((512, 512)))
    assert image.shape == (512, 512, 3)
    assert tuple(image[200, 250]) == track_colors(1)[0]
    assert tuple(image[100, 250]) == BACKGROUND


def test_status_lists_the_tracks_in_their_colours_and_escapes_errors():
    sketch = Sketch((64, 64))
    sketch.add_point(1, 1)
    sketch.add_point(2, 2)
    sketch.new_track()
    text = status_html(sketch, "at most 8 <trajectories>")
    red, green, blue = track_colors(1)[0]
    assert f"rgb({red},{green},{blue})" in text and "1: 2 points" in text
    assert "next click starts trajectory 2" in text
    assert '<span class="error">at most 8 &lt;trajectories&gt;</span>' in text


@pytest.fixture(scope="module")
def server(chain, tmp_path_factory):
    """The page of ``configs/demo.yaml`` served in this process on a free port."""
    port = free_port()
    out = tmp_path_factory.mktemp("demo")
    cfg = compose_config(
        "demo",
        [
            f"ckpt={chain}/stage2_traj.ckpt",
            f"out_dir={out}",
            "server_name=127.0.0.1",
            f"server_port={port}",
            "device=cpu",
        ],
    )
    demo = serve(cfg, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_generate_endpoint_scripted_with_gradio_client(server, tmp_path):
    client = Client(server, verbose=False)
    image = tmp_path / "first.png"
    cv2.imwrite(str(image), np.full((48, 80, 3), 90, np.uint8))
    video, tracks_video, trajerror, files, note = client.predict(
        prompt="a red circle moves from the left to the right",
        trajectories=TWO_TRACKS,
        image=handle_file(str(image)),
        num_frames=9,
        steps=2,
        cfg_scale=5.0,
        strength=5.0,
        seed=1,
        negative_prompt="",
        api_name="/generate",
    )
    assert decode_video(Path(video).read_bytes()).shape == (9, 256, 256, 3)
    assert decode_video(Path(tracks_video).read_bytes()).shape == (9, 256, 256, 3)
    assert trajerror is not None and np.isfinite(trajerror)
    assert [Path(p).name for p in files] == [
        "video.mp4",
        "tracks.json",
        "tora_track_1.txt",
        "tora_track_2.txt",
    ]
    assert "TrajError" in note


def test_generate_endpoint_errors_in_words_and_the_server_keeps_running(server):
    client = Client(server, verbose=False)
    one_point = json.dumps({"canvas": [512, 512], "tracks": [[[60, 400]]]})
    with pytest.raises(AppError, match="a trajectory needs at least 2 points"):
        client.predict("a circle", one_point, None, 5, 1, 7.0, 7.0, 0, "", api_name="/generate")
    outputs = client.predict("a circle", "", None, 5, 1, 7.0, 7.0, 0, "", api_name="/generate")
    assert "no trajectory drawn" in outputs[-1]
