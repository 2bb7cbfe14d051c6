"""The trajectory-drawing demo page (``python -m tora.demo ckpt=...``, ``make demo``):
draw up to 8 trajectories on a canvas, generate, see the video follow them."""

from tora.demo.generation import DemoGenerator, DemoResult

__all__ = ["DemoGenerator", "DemoResult"]
