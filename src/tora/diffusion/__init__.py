"""Diffusion maths (schedulers), separate from models and sampling pipelines."""

from tora.diffusion.rectified_flow import RectifiedFlow, duplicate_for_cfg, shift_timesteps

__all__ = ["RectifiedFlow", "duplicate_for_cfg", "shift_timesteps"]
