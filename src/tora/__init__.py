"""Tora: trajectory-controlled video generation with Lightning + Hydra."""

__version__ = "0.1.0"
