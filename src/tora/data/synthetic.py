"""The synthetic "tiny world": coloured shapes moving over textured backgrounds.

Every clip comes with exact dense forward flow, exact object tracks, per-object
masks and a templated caption, so that every Tora stage can be trained and
evaluated on a CPU with no downloads. ``python -m tora.data.synthetic`` writes
train and val shards in the one shard schema (:mod:`tora.data.schema`).

Geometry (pixel centres at integer (x, y), x right, y down):

- Objects are drawn in list order, later ones on top; where objects overlap, the
  flow and the segmentation belong to the top-most one.
- An object is a rigid shape with a centre path ``centres [T, 2]`` and a rotation
  ``angles [T]``; a pixel p of the object in frame t moves to
  ``c[t+1] + R(angles[t+1] - angles[t]) (p - c[t])`` in frame t+1.
- The camera pan translates the background only: screen pixel p in frame t shows
  the world point ``p + camera[t]``, so the background flow is
  ``camera[t] - camera[t+1]``. Object paths are drawn directly in screen
  coordinates, so tracks are screen coordinates whatever the pan.
- Backgrounds are analytic functions of world coordinates, so a sub-pixel pan is
  exact; objects carry a linear shading along their own x axis, so their
  rotation is visible and the flow is photometrically checkable.
- Shapes are regular or point-symmetric and stay fully inside the frame, so each
  object's mask centroid is its track point.
"""

from __future__ import annotations

import math
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import track
from rich.table import Table

from tora.data.schema import ShardWriter, encode_sample
from tora.utils.config import CONFIG_PATH
from tora.utils.device import available_cpus

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "orange": (245, 135, 30),
    "purple": (140, 60, 200),
    "cyan": (40, 205, 215),
    "magenta": (225, 50, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}


def _regular_polygon(num_vertices: int, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(num_vertices) / num_vertices
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(num_points: int, inner_radius: float) -> np.ndarray:
    vertices = _regular_polygon(2 * num_points, -np.pi / 2)
    vertices[1::2] *= inner_radius
    return vertices


# Vertices [V, 2] at unit circumradius, centred on the area centroid (y down, so
# phase -pi/2 points up); None is the unit circle.
SHAPES: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": _regular_polygon(4, np.pi / 4),
    "triangle": _regular_polygon(3, -np.pi / 2),
    "diamond": np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]]),
    "pentagon": _regular_polygon(5, -np.pi / 2),
    "hexagon": _regular_polygon(6, 0.0),
    "star": _star(5, 0.45),
}

# Caption verb of each path kind; "given" is a path handed to `render_tracks`.
MOTION_VERBS = {
    "line": "moves",
    "arc": "curves",
    "zigzag": "zig-zags",
    "bounce": "bounces",
    "given": "moves",
}

# Frame thirds, [row][column].
REGION_NAMES = (
    ("upper left", "top", "upper right"),
    ("left", "centre", "right"),
    ("lower left", "bottom", "lower right"),
)


@dataclass
class WorldConfig:
    """What a clip can look like. Sizes and periods are fractions of the short side.

    The defaults are the control-friendly world of ``configs/world/default.yaml``
    (1-2 large shapes, smooth backgrounds, no pan); ``configs/world/rich.yaml`` is
    the full-variety one (textures, pans, 1-3 smaller shapes).
    """

    width: int = 64
    height: int = 64
    num_frames: int = 17
    fps: float = 8.0
    num_objects: tuple[int, int] = (1, 2)
    object_size: tuple[float, float] = (0.12, 0.2)  # circumradius
    speed: tuple[float, float] = (1.0, 2.5)  # pixels per frame
    max_spin: float = 3.0  # degrees per frame
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    backgrounds: list[str] = field(default_factory=lambda: ["blobs", "gradient"])
    motions: list[str] = field(default_factory=lambda: list(PATHS))
    pan_probability: float = 0.0
    pan_speed: tuple[float, float] = (0.25, 1.0)  # pixels per frame
    texture_period: tuple[float, float] = (0.2, 0.4)
    texture_sharpness: float = 3.0  # tanh gain of stripe/checker edges; higher = harder edges
    shading: float = 0.15  # relative brightness change across an object
    antialias: bool = True
    # Pixels kept between any two objects' circumcircles in every frame; None: they may
    # overlap (and hide each other, so a tracker loses the hidden one's track).
    min_object_gap: float | None = 2.0

    def __post_init__(self) -> None:
        for name in ("num_objects", "object_size", "speed", "pan_speed", "texture_period"):
            low, high = getattr(self, name)  # a [low, high] list from YAML becomes a tuple
            if not 0 <= low <= high:
                raise ValueError(
                    f"world.{name}: [low, high] with 0 <= low <= high expected, got [{low}, {high}]"
                )
            setattr(self, name, (low, high))
        for name, known in (
            ("shapes", SHAPES),
            ("colors", COLORS),
            ("backgrounds", TEXTURES),
            ("motions", PATHS),
        ):
            unknown = sorted(set(getattr(self, name)) - set(known))
            if unknown or not getattr(self, name):
                raise ValueError(
                    f"world.{name}: {unknown or 'empty list'} not among {sorted(known)}"
                )
        if self.num_objects[0] < 1 or self.num_objects[1] > len(self.colors):
            raise ValueError(
                f"world.num_objects: between 1 and len(world.colors)={len(self.colors)} expected "
                f"(colours are distinct within a clip), got {list(self.num_objects)}"
            )
        if self.num_frames < 2:
            raise ValueError(f"world.num_frames: at least 2 expected, got {self.num_frames}")
        if self.min_object_gap is not None and self.min_object_gap < 0:
            raise ValueError(
                f"world.min_object_gap: null or >= 0 pixels expected, got {self.min_object_gap}"
            )
        if (
            2 * (self.object_size[1] * min(self.width, self.height) + 1)
            >= min(self.width, self.height) - 1
        ):
            raise ValueError(
                f"world.object_size: the largest object ({self.object_size[1]} of the short side) "
                f"leaves no room to move in a {self.width}x{self.height} frame"
            )


@dataclass
class GeneratorConfig:
    """What `python -m tora.data.synthetic` writes."""

    world: WorldConfig = field(default_factory=WorldConfig)
    seed: int = 0
    num_train: int = 1024
    num_val: int = 32
    shard_maxcount: int = 64
    progress: bool = False
    workers: int = 0  # rendering processes; 0: one per available CPU, 1: this process only


@dataclass
class ObjectSpec:
    shape: str
    color: str
    size: float  # circumradius in pixels
    centres: np.ndarray  # [T, 2] (x, y), screen pixels
    angles: np.ndarray  # [T] radians
    motion: str  # a key of MOTION_VERBS


@dataclass
class BackgroundSpec:
    kind: str  # a key of TEXTURES
    colors: np.ndarray  # [2, 3] the two tones blended by the texture value in [0, 1]
    params: dict[str, Any]


@dataclass
class ClipSpec:
    """Everything `render_clip` needs: the clip is a pure function of its spec."""

    width: int
    height: int
    fps: float
    objects: list[ObjectSpec]
    background: BackgroundSpec
    camera: np.ndarray  # [T, 2] world position of the screen origin
    shading: float
    antialias: bool

    @property
    def num_frames(self) -> int:
        return len(self.camera)


@dataclass
class SyntheticClip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    flow: np.ndarray  # float32 [T-1, H, W, 2], forward
    tracks: np.ndarray  # float32 [N, T, 2], object centres
    masks: np.ndarray  # bool [N, T, H, W], whole silhouettes, occluded parts included
    segmentation: np.ndarray  # int16 [T, H, W], top-most object index, -1 = background
    caption: str
    meta: dict[str, Any]


# ---------------------------------------------------------------------------
# Backgrounds: texture value u in [0, 1] at world coordinates (x, y).


@dataclass(frozen=True)
class Texture:
    adjective: str  # "on a {adjective} background"
    sample: Callable[[np.random.Generator, WorldConfig], dict[str, Any]]
    evaluate: Callable[[dict[str, Any], np.ndarray, np.ndarray], np.ndarray]


def _short_side(world: WorldConfig) -> int:
    return min(world.width, world.height)


def _sample_period(rng: np.random.Generator, world: WorldConfig) -> float:
    return rng.uniform(*world.texture_period) * _short_side(world)


def _soft_square_wave(phase: np.ndarray, sharpness: float) -> np.ndarray:
    """Smooth square wave in [0, 1]: smooth enough for bilinear resampling to be near exact."""
    return 0.5 + 0.5 * np.tanh(sharpness * phase) / np.tanh(sharpness)


def _sample_stripes(rng: np.random.Generator, world: WorldConfig) -> dict[str, Any]:
    return {
        "angle": rng.uniform(0, np.pi),
        "period": _sample_period(rng, world),
        "phase": rng.uniform(0, 2 * np.pi),
        "sharpness": world.texture_sharpness,
    }


def _stripes(p: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    along = x * np.cos(p["angle"]) + y * np.sin(p["angle"])
    return _soft_square_wave(np.sin(2 * np.pi * along / p["period"] + p["phase"]), p["sharpness"])


def _sample_checker(rng: np.random.Generator, world: WorldConfig) -> dict[str, Any]:
    return {
        "angle": rng.uniform(0, np.pi / 2),
        "period": _sample_period(rng, world),
        "phase": rng.uniform(0, 2 * np.pi, size=2),
        "sharpness": world.texture_sharpness,
    }


def _checker(p: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
    a = np.sin(2 * np.pi * (x * cos + y * sin) / p["period"] + p["phase"][0])
    b = np.sin(2 * np.pi * (y * cos - x * sin) / p["period"] + p["phase"][1])
    return _soft_square_wave(a * b, p["sharpness"])


def _sample_blobs(rng: np.random.Generator, world: WorldConfig) -> dict[str, Any]:
    count = int(rng.integers(6, 13))
    return {
        "centres": rng.uniform(0, 1, size=(count, 2)) * (world.width, world.height),
        "sigmas": rng.uniform(0.3, 0.6, size=count)
        * np.mean(world.texture_period)
        * _short_side(world),
        "weights": rng.choice([-1.0, 1.0], size=count) * rng.uniform(0.8, 1.6, size=count),
        "tile": np.array([world.width, world.height], dtype=np.float64),
    }


def _blobs(p: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Light and dark Gaussian blobs on a torus the size of the frame, so any pan stays covered."""
    total = np.zeros(np.broadcast_shapes(x.shape, y.shape))
    tile_x, tile_y = p["tile"]
    for (cx, cy), sigma, weight in zip(p["centres"], p["sigmas"], p["weights"], strict=True):
        dx = (x - cx + tile_x / 2) % tile_x - tile_x / 2
        dy = (y - cy + tile_y / 2) % tile_y - tile_y / 2
        total = total + weight * np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return 0.5 + 0.5 * np.tanh(total)


def _sample_gradient(rng: np.random.Generator, world: WorldConfig) -> dict[str, Any]:
    diagonal = math.hypot(world.width, world.height)
    return {
        "angle": rng.uniform(0, 2 * np.pi),
        "period": rng.uniform(2.0, 3.0) * diagonal,
        "phase": rng.uniform(0, 2 * np.pi),
    }


def _gradient(p: dict[str, Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A cosine ramp much longer than the frame: reads as a gradient, stays smooth under any pan."""
    along = x * np.cos(p["angle"]) + y * np.sin(p["angle"])
    return 0.5 - 0.5 * np.cos(2 * np.pi * along / p["period"] + p["phase"])


TEXTURES: dict[str, Texture] = {
    "stripes": Texture("striped", _sample_stripes, _stripes),
    "checker": Texture("checkered", _sample_checker, _checker),
    "blobs": Texture("mottled", _sample_blobs, _blobs),
    "gradient": Texture("gradient", _sample_gradient, _gradient),
}


def _sample_background(rng: np.random.Generator, world: WorldConfig) -> BackgroundSpec:
    """Two muted tones, so the saturated object colours stand out."""
    kind = str(rng.choice(world.backgrounds))
    base = rng.uniform(70, 180) + rng.normal(0, 12, size=3)
    other = base + rng.choice([-1, 1]) * rng.uniform(35, 70) + rng.normal(0, 12, size=3)
    colors = np.clip(np.stack([base, other]), 15, 240)
    return BackgroundSpec(kind=kind, colors=colors, params=TEXTURES[kind].sample(rng, world))


# ---------------------------------------------------------------------------
# Object paths: centres [T, 2] inside the box [low, high] (per axis).


def _place(
    rng: np.random.Generator, offsets: np.ndarray, low: np.ndarray, high: np.ndarray
) -> np.ndarray:
    """Translate a path (offsets [T, 2] from its start) to a random start that keeps it inside
    the box; a path larger than the box is scaled down first (so it runs slower than sampled)."""
    extent = offsets.max(axis=0) - offsets.min(axis=0)
    scale = min(1.0, float(np.min((high - low) / np.maximum(extent, 1e-9))))
    offsets = offsets * scale
    first, last = low - offsets.min(axis=0), high - offsets.max(axis=0)
    start = rng.uniform(first, np.maximum(first, last))  # equal but for rounding when scaled
    return start + offsets


def _unit(angle: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def _path_line(rng, num_frames, speed, low, high):
    offsets = np.arange(num_frames)[:, None] * speed * _unit(rng.uniform(0, 2 * np.pi))
    return _place(rng, offsets, low, high)


def _path_arc(rng, num_frames, speed, low, high):
    """Constant speed along a circle, turning 60-180 degrees in total."""
    turn_rate = rng.choice([-1, 1]) * rng.uniform(np.pi / 3, np.pi) / (num_frames - 1)
    heading0 = rng.uniform(0, 2 * np.pi)
    heading = heading0 + turn_rate * np.arange(num_frames)
    offsets = (speed / turn_rate) * np.stack(
        [np.sin(heading) - np.sin(heading0), np.cos(heading0) - np.cos(heading)], axis=1
    )
    return _place(rng, offsets, low, high)


def _path_zigzag(rng, num_frames, speed, low, high):
    """Constant speed, heading swinging +-30..60 degrees about a main direction every 3..6 frames."""
    heading = rng.uniform(0, 2 * np.pi)
    swing = rng.uniform(np.pi / 6, np.pi / 3)
    leg = int(rng.integers(3, 7))
    step = np.arange(num_frames - 1)
    signs = np.where((step // leg) % 2 == 0, 1.0, -1.0) * rng.choice([-1, 1])
    steps = speed * _unit(heading + swing * signs)
    offsets = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    return _place(rng, offsets, low, high)


def _reflect(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold an unbounded coordinate into [low, high] by mirror reflections at the walls."""
    span = high - low
    folded = np.mod(values - low, 2 * span)
    return low + np.where(folded > span, 2 * span - folded, folded)


def _path_bounce(rng, num_frames, speed, low, high):
    """A straight line mirrored at the box walls, built to hit a wall mid-clip."""
    velocity = speed * _unit(rng.uniform(0, 2 * np.pi))
    axis = int(np.argmax(np.abs(velocity)))
    hit = np.empty(2)
    hit[axis] = high[axis] if velocity[axis] > 0 else low[axis]
    hit[1 - axis] = rng.uniform(low[1 - axis], high[1 - axis])
    hit_time = rng.uniform(0.2, 0.8) * (num_frames - 1)
    unfolded = hit + (np.arange(num_frames)[:, None] - hit_time) * velocity
    return np.stack([_reflect(unfolded[:, i], low[i], high[i]) for i in range(2)], axis=1)


PATHS: dict[str, Callable[..., np.ndarray]] = {
    "line": _path_line,
    "arc": _path_arc,
    "zigzag": _path_zigzag,
    "bounce": _path_bounce,
}


def _object_box(world: WorldConfig, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres keeping a shape of circumradius `size` (plus 1 px of anti-aliasing) inside the frame."""
    margin = size + 1.0
    return np.array([margin, margin]), np.array(
        [world.width - 1 - margin, world.height - 1 - margin]
    )


def _sample_appearance(
    rng: np.random.Generator, world: WorldConfig, num_objects: int
) -> list[dict[str, Any]]:
    colors = rng.choice(world.colors, size=num_objects, replace=False)
    spin = np.deg2rad(world.max_spin)
    return [
        {
            "shape": str(rng.choice(world.shapes)),
            "color": str(color),
            "size": rng.uniform(*world.object_size) * _short_side(world),
            "angle0": rng.uniform(0, 2 * np.pi),
            "spin": rng.uniform(-spin, spin),
        }
        for color in colors
    ]


def _angles(appearance: dict[str, Any], num_frames: int) -> np.ndarray:
    return appearance["angle0"] + appearance["spin"] * np.arange(num_frames)


# Path draws per clip before `world.min_object_gap` is declared unreachable. The motions
# are kept for MOTION_TRIES draws and the shapes for APPEARANCE_TRIES, so a gap favours
# neither the compact motions nor the small shapes more than it must.
MAX_PATH_TRIES = 5000
MOTION_TRIES = 100
APPEARANCE_TRIES = 1000


def _sample_objects(
    rng: np.random.Generator, world: WorldConfig, num_objects: int
) -> list[ObjectSpec]:
    """Shapes and one path per object; with ``world.min_object_gap``, redrawn until every
    pair of objects keeps that many pixels between their circumcircles in every frame."""
    motions: list[str] = []
    for attempt in range(MAX_PATH_TRIES):
        if attempt % APPEARANCE_TRIES == 0:
            appearances = _sample_appearance(rng, world, num_objects)
        if attempt % MOTION_TRIES == 0:
            motions = []  # drawn afresh, interleaved with the paths as without a gap
        objects = []
        for index, appearance in enumerate(appearances):
            motion = motions[index] if motions else str(rng.choice(world.motions))
            low, high = _object_box(world, appearance["size"])
            centres = PATHS[motion](rng, world.num_frames, rng.uniform(*world.speed), low, high)
            objects.append(
                ObjectSpec(
                    shape=appearance["shape"],
                    color=appearance["color"],
                    size=appearance["size"],
                    centres=centres,
                    angles=_angles(appearance, world.num_frames),
                    motion=motion,
                )
            )
        motions = [obj.motion for obj in objects]
        if world.min_object_gap is None or min_object_gap(objects) >= world.min_object_gap:
            return objects
    raise ValueError(
        f"world.min_object_gap={world.min_object_gap}: no paths keeping {num_objects} objects "
        f"of circumradius {world.object_size} of the short side that far apart in a "
        f"{world.width}x{world.height} frame after {MAX_PATH_TRIES} draws; "
        "lower it, or world.num_objects / world.object_size"
    )


def min_object_gap(objects: list[ObjectSpec]) -> float:
    """Smallest distance in pixels between two objects' circumcircles over the clip
    (negative: they overlap); inf for fewer than two objects."""
    gap = math.inf
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            distance = np.linalg.norm(a.centres - b.centres, axis=1).min()
            gap = min(gap, float(distance) - a.size - b.size)
    return gap


def sample_clip_spec(world: WorldConfig, rng: np.random.Generator) -> ClipSpec:
    """Draw a random clip: 1..K objects with distinct colours on random paths, maybe a pan."""
    num_objects = int(rng.integers(world.num_objects[0], world.num_objects[1] + 1))
    objects = _sample_objects(rng, world, num_objects)
    camera = np.zeros((world.num_frames, 2))
    if rng.uniform() < world.pan_probability:
        pan = rng.uniform(*world.pan_speed) * _unit(rng.uniform(0, 2 * np.pi))
        camera = np.arange(world.num_frames)[:, None] * pan
    return ClipSpec(
        width=world.width,
        height=world.height,
        fps=world.fps,
        objects=objects,
        background=_sample_background(rng, world),
        camera=camera,
        shading=world.shading,
        antialias=world.antialias,
    )


# ---------------------------------------------------------------------------
# Rendering, vectorised over frames and pixels.


def _polygon_sdf(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points (x, y) to a closed polygon [V, 2]."""
    squared = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    for (ax, ay), (bx, by) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        along = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        squared = np.minimum(squared, (wx - ex * along) ** 2 + (wy - ey * along) ** 2)
        # Even-odd rule: count crossings of the ray from (x, y) towards +x.
        if ay != by:
            crosses = ((ay > y) != (by > y)) & (x < ax + (y - ay) * ex / ey)
            inside ^= crosses
    return np.where(inside, -1.0, 1.0) * np.sqrt(squared)


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance in units of the circumradius, in the shape's own frame."""
    vertices = SHAPES[shape]
    if vertices is None:
        return np.hypot(x, y) - 1.0
    return _polygon_sdf(x, y, vertices)


def render_clip(spec: ClipSpec) -> SyntheticClip:
    """Frames, exact forward flow, tracks, masks and caption of one clip."""
    num_frames, height, width = spec.num_frames, spec.height, spec.width
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    camera_x = spec.camera[:, 0, None, None]
    camera_y = spec.camera[:, 1, None, None]

    background = spec.background
    texture = TEXTURES[background.kind].evaluate(background.params, xs + camera_x, ys + camera_y)
    tone0, tone1 = background.colors
    frames = tone0 + (tone1 - tone0) * texture[..., None]  # [T, H, W, 3]

    flow = np.empty((num_frames - 1, height, width, 2))
    flow[...] = (spec.camera[:-1] - spec.camera[1:])[:, None, None, :]
    segmentation = np.full((num_frames, height, width), -1, dtype=np.int16)
    masks = np.zeros((len(spec.objects), num_frames, height, width), dtype=bool)

    for index, obj in enumerate(spec.objects):
        dx = xs - obj.centres[:, 0, None, None]  # [T, H, W]
        dy = ys - obj.centres[:, 1, None, None]
        cos = np.cos(obj.angles)[:, None, None]
        sin = np.sin(obj.angles)[:, None, None]
        local_x = (cos * dx + sin * dy) / obj.size  # R(-angle) (p - c), in circumradii
        local_y = (cos * dy - sin * dx) / obj.size
        distance = shape_sdf(obj.shape, local_x, local_y) * obj.size
        alpha = (
            np.clip(0.5 - distance, 0.0, 1.0)
            if spec.antialias
            else (distance <= 0).astype(np.float64)
        )
        color = (
            np.asarray(COLORS[obj.color], dtype=np.float64)
            * (1.0 + spec.shading * local_x)[..., None]
        )
        frames += alpha[..., None] * (color - frames)

        inside = distance <= 0
        masks[index] = inside
        segmentation[inside] = index
        # p -> c[t+1] + R(angle[t+1] - angle[t]) (p - c[t])
        turn = np.diff(obj.angles)[:, None, None]
        target_x = obj.centres[1:, 0, None, None] + np.cos(turn) * dx[:-1] - np.sin(turn) * dy[:-1]
        target_y = obj.centres[1:, 1, None, None] + np.sin(turn) * dx[:-1] + np.cos(turn) * dy[:-1]
        moving = inside[:-1]
        flow[..., 0] = np.where(moving, target_x - xs, flow[..., 0])
        flow[..., 1] = np.where(moving, target_y - ys, flow[..., 1])

    tracks = np.stack([obj.centres for obj in spec.objects]).astype(np.float32)
    return SyntheticClip(
        frames=np.clip(np.rint(frames), 0, 255).astype(np.uint8),
        flow=flow.astype(np.float32),
        tracks=tracks,
        masks=masks,
        segmentation=segmentation,
        caption=caption_for(spec),
        meta=_meta(spec),
    )


def render_tracks(
    tracks: np.ndarray, world: WorldConfig | None = None, seed: int = 0
) -> SyntheticClip:
    """Render objects whose centres follow EXPLICIT tracks [N, T, 2] (screen pixels of a
    world.width x world.height video, T frames).

    Shapes, colours, sizes, spins and the background are drawn from `world` with `seed`;
    the camera is static. A mask centroid equals its track point only while the object
    is fully inside the frame, which is the caller's business.
    """
    world = world or WorldConfig()
    tracks = np.asarray(tracks, dtype=np.float64)
    if tracks.ndim != 3 or tracks.shape[-1] != 2 or tracks.shape[1] < 2:
        raise ValueError(f"tracks: shape [N, T >= 2, 2] expected, got {list(tracks.shape)}")
    if not 1 <= len(tracks) <= len(world.colors):
        raise ValueError(
            f"tracks: 1..{len(world.colors)} tracks (one colour each) expected, got {len(tracks)}"
        )
    rng = np.random.default_rng(seed)
    num_frames = tracks.shape[1]
    objects = [
        ObjectSpec(
            shape=appearance["shape"],
            color=appearance["color"],
            size=appearance["size"],
            centres=track,
            angles=_angles(appearance, num_frames),
            motion="given",
        )
        for appearance, track in zip(
            _sample_appearance(rng, world, len(tracks)), tracks, strict=True
        )
    ]
    spec = ClipSpec(
        width=world.width,
        height=world.height,
        fps=world.fps,
        objects=objects,
        background=_sample_background(rng, world),
        camera=np.zeros((num_frames, 2)),
        shading=world.shading,
        antialias=world.antialias,
    )
    return render_clip(spec)


# ---------------------------------------------------------------------------
# Captions and metadata.


def _region(point: np.ndarray, width: int, height: int) -> str:
    column = min(max(int(3 * (point[0] + 0.5) / width), 0), 2)
    row = min(max(int(3 * (point[1] + 0.5) / height), 0), 2)
    return REGION_NAMES[row][column]


def _object_clause(obj: ObjectSpec, width: int, height: int) -> str:
    article = "an" if obj.color[0] in "aeiou" else "a"
    subject = f"{article} {obj.color} {obj.shape}"
    start = _region(obj.centres[0], width, height)
    end = _region(obj.centres[-1], width, height)
    if np.max(np.linalg.norm(obj.centres - obj.centres[0], axis=1)) < 1.0:
        return f"{subject} stays at the {start}"
    if start == end:
        return f"{subject} {MOTION_VERBS[obj.motion]} around the {start}"
    return f"{subject} {MOTION_VERBS[obj.motion]} from the {start} to the {end}"


def _pan_words(velocity: np.ndarray) -> str:
    """Direction the camera moves (the background moves the opposite way)."""
    horizontal = "right" if velocity[0] > 0 else "left"
    vertical = "down" if velocity[1] > 0 else "up"
    ratio = abs(velocity[1]) / max(abs(velocity[0]), 1e-9)
    if ratio < math.tan(math.pi / 8):
        return horizontal
    if ratio > math.tan(3 * math.pi / 8):
        return vertical
    return f"{vertical} and to the {horizontal}"


def caption_for(spec: ClipSpec) -> str:
    """E.g. "a red circle moves from the lower left to the upper right and a blue star
    bounces around the top on a striped background while the camera pans left"."""
    clauses = [_object_clause(obj, spec.width, spec.height) for obj in spec.objects]
    objects = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    caption = f"{objects} on a {TEXTURES[spec.background.kind].adjective} background"
    pan = _pan_velocity(spec)
    if np.any(pan != 0):
        caption += f" while the camera pans {_pan_words(pan)}"
    return caption


def _pan_velocity(spec: ClipSpec) -> np.ndarray:
    return (spec.camera[-1] - spec.camera[0]) / (spec.num_frames - 1)


def _meta(spec: ClipSpec) -> dict[str, Any]:
    return {
        "fps": float(spec.fps),
        "width": spec.width,
        "height": spec.height,
        "num_frames": spec.num_frames,
        "source": "synthetic",
        "scores": {},
        "background": spec.background.kind,
        "camera_pan": [round(float(v), 4) for v in _pan_velocity(spec)],
        "objects": [
            {
                "shape": obj.shape,
                "color": obj.color,
                "size": round(float(obj.size), 3),
                "motion": obj.motion,
            }
            for obj in spec.objects
        ],
    }


# ---------------------------------------------------------------------------
# Splits and the command line.


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent, reproducible stream per clip, stable across runs and platforms."""
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


def make_clip(world: WorldConfig, seed: int, split: str, index: int) -> SyntheticClip:
    clip = render_clip(sample_clip_spec(world, clip_rng(seed, split, index)))
    clip.meta.update({"seed": seed, "split": split, "index": index})
    return clip


def as_generator_config(
    config: GeneratorConfig | Mapping[str, Any] | DictConfig,
) -> GeneratorConfig:
    """Validate a Hydra config (or any mapping with GeneratorConfig's keys; extra keys such
    as `out_dir` and `paths` are ignored) into a GeneratorConfig."""
    if isinstance(config, GeneratorConfig):
        return config
    selected = {f.name: config[f.name] for f in fields(GeneratorConfig) if f.name in config}
    merged = OmegaConf.merge(OmegaConf.structured(GeneratorConfig), selected)
    return cast(GeneratorConfig, OmegaConf.to_object(merged))


def encoded_clip(world: WorldConfig, seed: int, split: str, index: int) -> dict[str, Any]:
    """Clip ``index`` of ``split``, rendered and encoded as one shard sample."""
    clip = make_clip(world, seed, split, index)
    return encode_sample(
        f"clip-{index:06d}", clip.frames, clip.flow, clip.tracks, clip.caption, clip.meta
    )


def _encoded_clips(config: GeneratorConfig, split: str, num_clips: int) -> Iterator[dict[str, Any]]:
    """The split's samples in index order, rendered by ``config.workers`` processes (each
    clip has its own random stream, so its frames, flow and tracks do not depend on the count)."""
    workers = config.workers or available_cpus()
    render = partial(encoded_clip, config.world, config.seed, split)
    if workers == 1 or num_clips < 2:
        yield from map(render, range(num_clips))
        return
    # spawn: the children import this module afresh rather than fork a parent holding torch.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, num_clips), mp_context=context) as pool:
        yield from pool.map(render, range(num_clips), chunksize=8)


def generate_split(
    config: GeneratorConfig | Mapping[str, Any] | DictConfig, split: str, out_dir: str | Path
) -> list[Path]:
    """Write `num_{split}` clips to `out_dir/{split}-%06d.tar`; return the shard paths.

    Shards of this split already in `out_dir` are removed first, so a smaller rerun
    leaves no stale shards behind.
    """
    config = as_generator_config(config)
    if split not in ("train", "val"):
        raise ValueError(f"split: 'train' or 'val' expected, got {split!r}")
    if config.workers < 0:
        raise ValueError(
            f"workers: 0 (one per CPU) or a positive count expected, got {config.workers}"
        )
    num_clips = config.num_train if split == "train" else config.num_val
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        stale.unlink()

    with ShardWriter(str(out_dir), split, maxcount=config.shard_maxcount) as writer:
        for sample in track(
            _encoded_clips(config, split, num_clips),
            total=num_clips,
            description=f"{split:>5}",
            disable=not config.progress,
        ):
            writer.write(sample)
    return [Path(shard) for shard in writer.shards]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="synthetic")
def main(cfg: DictConfig) -> None:
    """Write the train and val splits to `cfg.out_dir` and print what was written."""
    config = as_generator_config(cfg)
    out_dir = Path(cfg.out_dir)
    table = Table(title=f"synthetic shards in {out_dir}")
    for column in ("split", "clips", "shards", "bytes", "seconds", "clips/s"):
        table.add_column(column, justify="left" if column == "split" else "right")
    totals = np.zeros(4)
    for split in ("train", "val"):
        start = time.perf_counter()
        shards = generate_split(config, split, out_dir)
        row = np.array(
            [
                getattr(config, f"num_{split}"),
                len(shards),
                sum(shard.stat().st_size for shard in shards),
                time.perf_counter() - start,
            ]
        )
        totals += row
        table.add_row(split, *_summary_cells(row))
    table.add_row("total", *_summary_cells(totals), style="bold")
    Console().print(table)


def _summary_cells(row: np.ndarray) -> list[str]:
    clips, shards, size, seconds = row
    return [
        f"{clips:.0f}",
        f"{shards:.0f}",
        f"{size:,.0f}",
        f"{seconds:.1f}",
        f"{clips / max(seconds, 1e-9):.1f}",
    ]


if __name__ == "__main__":
    main()
