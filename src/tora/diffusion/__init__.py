"""Diffusion maths (schedulers), separate from models and sampling pipelines."""

from tora.diffusion.cogvideox import CogVideoXDiffusion
from tora.diffusion.rectified_flow import RectifiedFlow, shift_timesteps

__all__ = ["CogVideoXDiffusion", "RectifiedFlow", "shift_timesteps"]
