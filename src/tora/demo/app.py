"""The Gradio page: a canvas to click trajectories on, presets, the prompt and the
sampling settings, and the results. The page only wires: drawing is ``tora.motion``'s
``Sketch``, generating is ``DemoGenerator``. The only API endpoint is ``/generate``
(``gradio_client``: ``Client(url).predict(prompt, trajectories, ..., api_name="/generate")``).
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from tora.demo.canvas import blank_canvas, render_sketch
from tora.demo.generation import DemoGenerator
from tora.motion import PRESETS, Sketch, canvas_size, track_colors
from tora.sample import read_image

log = logging.getLogger(__name__)

TITLE = "Tora: draw a path, watch it move"
INSTRUCTIONS = """\
**1.** Click points on the canvas to draw a trajectory, or add a preset path (click a
start point first to place it). **2.** *New trajectory* starts the next one: up to
{max_tracks}, each in its own colour. **3.** Write a prompt and press *Generate*.
Points are reached at evenly spaced times (click a spot twice to pause there)."""

CSS = """
.gradio-container {max-width: 1320px !important}
#status {min-height: 2.2em}
#status .error {color: #c0262d}
#canvas img {cursor: crosshair}
"""


CANVAS_HEIGHT = 400
VIDEO_HEIGHT = 220


def short(text: str, length: int = 22) -> str:
    return text if len(text) <= length else text[: length - 1].rstrip() + "\u2026"


@dataclass
class PageDefaults:
    """Starting values of the page's controls."""

    num_frames: int = 17
    max_frames: int = 33
    steps: int = 30
    cfg_scale: float = 7.0
    strength: float = 7.0
    seed: int = 0
    canvas_long_side: int = 512
    examples: list[str] = field(default_factory=list)


def status_html(sketch: Sketch, error: str = "") -> str:
    """One line: each trajectory in its colour with its point count; then ``error``."""
    drawn = sketch.drawn
    parts = []
    for number, (track, (r, g, b)) in enumerate(zip(drawn, track_colors(len(drawn))), start=1):
        swatch = f'<span style="color: rgb({r},{g},{b})">&#9679;</span>'
        parts.append(f"{swatch} {number}: {len(track)} point{'s' * (len(track) != 1)}")
    summary = " &nbsp; ".join(parts) if parts else "No trajectory yet: click on the canvas."
    if sketch.tracks and not sketch.tracks[-1]:
        summary += f" &nbsp; (next click starts trajectory {len(drawn) + 1})"
    if error:
        summary += f'<br><span class="error">{html.escape(error)}</span>'
    return summary


def build_demo(generator: DemoGenerator, defaults: PageDefaults) -> gr.Blocks:
    canvas = canvas_size(generator.video_size, defaults.canvas_long_side)
    empty = Sketch(canvas, max_tracks=generator.max_tracks)

    def parse(sketch_json: str) -> Sketch:
        if not sketch_json or not sketch_json.strip():
            return Sketch(canvas, max_tracks=generator.max_tracks)
        sketch = Sketch.from_json(sketch_json, generator.max_tracks)
        return sketch if sketch.canvas == canvas else sketch.rescaled(canvas)

    def background(image_path: str | None) -> np.ndarray:
        image = read_image(image_path, canvas[1], canvas[0])
        return blank_canvas(canvas) if image is None else image

    def edit(sketch_json: str, image_path: str | None, change) -> tuple:
        """Apply ``change(sketch)``; a ValueError is shown under the canvas instead."""
        try:
            sketch = parse(sketch_json)
        except ValueError as error:
            return blank_canvas(canvas), sketch_json, status_html(empty, str(error))
        message = ""
        try:
            change(sketch)
        except ValueError as error:
            message = str(error)
        try:
            image = render_sketch(sketch, background(image_path))
        except (ValueError, FileNotFoundError) as error:
            image, message = render_sketch(sketch, blank_canvas(canvas)), str(error)
        return image, sketch.to_json(), status_html(sketch, message)

    def click(sketch_json: str, image_path: str | None, event: gr.SelectData) -> tuple:
        x, y = event.index
        return edit(sketch_json, image_path, lambda sketch: sketch.add_point(x, y))

    def generate(
        prompt: str,
        trajectories: str,
        image: str | None,
        num_frames: int,
        steps: int,
        cfg_scale: float,
        strength: float,
        seed: int,
        negative_prompt: str,
        progress=gr.Progress(),  # noqa: B008 (how Gradio asks for a progress bar)
    ) -> tuple:
        """Generate a video following the trajectories. ``trajectories``: JSON
        ``{"canvas": [W, H], "tracks": [[[x, y], ...], ...]}`` (points reached at evenly
        spaced times; "" for none); ``image``: optional first frame. Returns the video,
        the video with the tracks drawn, TrajError (px; None without tracks), the files
        (video.mp4, tracks.json, tora_track_<n>.txt) and a note."""
        progress(0, desc="starting")

        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="sampling", unit="steps")

        try:
            result = generator.generate(
                prompt,
                trajectories,
                image,
                num_frames,
                steps,
                cfg_scale,
                strength,
                seed,
                negative_prompt,
                on_step,
            )
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            log.exception("generation failed")
            raise gr.Error(f"generation failed ({type(error).__name__}): {error}") from None
        width, height = generator.video_size
        note = (
            f"{int(num_frames)} frames at {width}x{height}, {int(steps)} steps: "
            f"{result.seconds:.1f} s"
        )
        if result.trajerror is not None:
            note += (
                f". TrajError {result.trajerror:.2f} px (Lucas-Kanade tracker, "
                f"{result.coverage:.0%} of the points found)"
            )
        note = ". ".join([note, *result.notes]) + f". Saved in `{result.folder}`"
        files = [str(path) for path in result.files]
        return (
            str(result.video),
            str(result.tracks_video),
            result.trajerror,
            files,
            note,
        )

    with gr.Blocks(title="Tora demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(INSTRUCTIONS.format(max_tracks=generator.max_tracks))
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                canvas_image = gr.Image(
                    value=blank_canvas(canvas),
                    label="Canvas: click to add points",
                    interactive=False,
                    type="numpy",
                    format="png",
                    height=CANVAS_HEIGHT,
                    buttons=[],
                    elem_id="canvas",
                )
                status = gr.HTML(status_html(empty), elem_id="status")
                with gr.Row():
                    new_button = gr.Button("New trajectory", size="sm", min_width=80)
                    undo_button = gr.Button("Undo point", size="sm", min_width=80)
                    remove_button = gr.Button("Remove trajectory", size="sm", min_width=80)
                    clear_button = gr.Button("Clear all", size="sm", min_width=80)
                with gr.Row(equal_height=True):
                    preset = gr.Dropdown(
                        list(PRESETS),
                        value="line",
                        label="Preset path",
                        show_label=False,
                        container=False,
                        scale=3,
                        elem_id="preset",
                    )
                    preset_button = gr.Button("Add preset path", size="sm", scale=2)
                with gr.Accordion("First frame (image-to-video, optional)", open=False):
                    image = gr.Image(
                        label="First frame", type="filepath", sources=["upload"], height=200
                    )
                with gr.Accordion("Trajectories as JSON (canvas pixels, editable)", open=False):
                    sketch_box = gr.Textbox(
                        value=empty.to_json(), show_label=False, lines=3, elem_id="trajectories"
                    )
            with gr.Column(scale=6):
                prompt = gr.Textbox(
                    label="Prompt", lines=2, value=defaults.examples[0] if defaults.examples else ""
                )
                if defaults.examples:
                    gr.Examples(
                        [[text] for text in defaults.examples],
                        inputs=[prompt],
                        label="Example prompts",
                        example_labels=[short(text) for text in defaults.examples],
                        api_visibility="private",
                    )
                with gr.Row():
                    num_frames = gr.Slider(
                        5, defaults.max_frames, defaults.num_frames, step=4, label="Frames"
                    )
                    steps = gr.Slider(
                        1, 100, defaults.steps, step=1, label="Sampling steps", elem_id="steps"
                    )
                with gr.Row():
                    cfg_scale = gr.Slider(1, 15, defaults.cfg_scale, step=0.5, label="CFG scale")
                    strength = gr.Slider(
                        0, 15, defaults.strength, step=0.5, label="Strength (motion guidance)"
                    )
                with gr.Accordion("Seed, negative prompt", open=False):
                    with gr.Row():
                        seed = gr.Number(defaults.seed, label="Seed", precision=0, scale=1)
                        negative_prompt = gr.Textbox(value="", label="Negative prompt", scale=3)
                    gr.Markdown(
                        "*Strength* is the motion guidance scale; equal to the CFG scale, "
                        "one guidance scales text and motion together (the fastest)."
                    )
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Row():
                    video = gr.Video(label="Video", height=VIDEO_HEIGHT, elem_id="video")
                    tracks_video = gr.Video(
                        label="Video with tracks", height=VIDEO_HEIGHT, elem_id="tracks-video"
                    )
                with gr.Row():
                    trajerror = gr.Number(
                        label="TrajError (px)",
                        precision=2,
                        interactive=False,
                        visible=False,
                        min_width=120,
                        elem_id="trajerror",
                    )
                    files = gr.File(
                        label="Downloads", file_count="multiple", visible=False, scale=3
                    )
                note = gr.Markdown(label="Note", elem_id="note")

        drawing = [sketch_box, image]
        drawn = [canvas_image, sketch_box, status]
        private: dict[str, Any] = {"api_visibility": "private", "queue": False}
        canvas_image.select(click, drawing, drawn, **private)
        new_button.click(lambda s, i: edit(s, i, Sketch.new_track), drawing, drawn, **private)
        undo_button.click(lambda s, i: edit(s, i, Sketch.undo), drawing, drawn, **private)
        remove_button.click(lambda s, i: edit(s, i, Sketch.remove_track), drawing, drawn, **private)
        clear_button.click(lambda s, i: edit(s, i, Sketch.clear), drawing, drawn, **private)
        preset_button.click(
            lambda s, i, name: edit(s, i, lambda sketch: sketch.add_preset(name)),
            [*drawing, preset],
            drawn,
            **private,
        )
        image.change(lambda s, i: edit(s, i, lambda sketch: None), drawing, drawn, **private)
        sketch_box.blur(lambda s, i: edit(s, i, lambda sketch: None), drawing, drawn, **private)
        generate_button.click(
            generate,
            [prompt, sketch_box, image, num_frames, steps, cfg_scale, strength, seed]
            + [negative_prompt],
            [video, tracks_video, trajerror, files, note],
            api_name="generate",
            concurrency_limit=1,
        ).success(
            # Shown once there are results; the API returns plain values, no visibility.
            lambda error: (gr.Number(visible=error is not None), gr.File(visible=True)),
            trajerror,
            [trajerror, files],
            **private,
        )
    return demo
