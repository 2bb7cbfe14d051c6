"""Motion representation: trajectory files, displacement maps, flow-RGB, track sampling,
drawing tracks over videos, and drawing tracks by hand (sketches, preset paths)."""

from tora.motion.draw import draw_tracks, track_colors
from tora.motion.drawing import DEFAULT_MAX_TRACKS, Sketch, canvas_size
from tora.motion.flow_rgb import (
    MotionRGBConfig,
    flow_to_rgb,
    middlebury_colorwheel,
    motion_maps_to_rgb,
    tracks_to_motion_rgb,
)
from tora.motion.maps import (
    flow_to_displacement_map,
    gaussian_smooth,
    tracks_to_displacement_map,
)
from tora.motion.presets import PRESET_POINTS, PRESETS, preset_track
from tora.motion.sampling import sample_tracks_from_flow
from tora.motion.tracks import (
    TORA_CANVAS,
    TrackFormatError,
    check_tracks_in_canvas,
    load_tracks,
    read_tora_point_file,
    read_tracks_json,
    read_tracks_npy,
    resample_tracks,
    rescale_tracks,
    write_tora_point_file,
    write_tracks_json,
)

__all__ = [
    "DEFAULT_MAX_TRACKS",
    "PRESETS",
    "PRESET_POINTS",
    "TORA_CANVAS",
    "MotionRGBConfig",
    "Sketch",
    "TrackFormatError",
    "canvas_size",
    "check_tracks_in_canvas",
    "draw_tracks",
    "flow_to_displacement_map",
    "flow_to_rgb",
    "gaussian_smooth",
    "load_tracks",
    "middlebury_colorwheel",
    "motion_maps_to_rgb",
    "preset_track",
    "read_tora_point_file",
    "read_tracks_json",
    "read_tracks_npy",
    "resample_tracks",
    "rescale_tracks",
    "sample_tracks_from_flow",
    "track_colors",
    "tracks_to_displacement_map",
    "tracks_to_motion_rgb",
    "write_tora_point_file",
    "write_tracks_json",
]
