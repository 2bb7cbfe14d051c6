"""TensorBoard helpers: parameter counts, frame grids of clips."""

from __future__ import annotations

import lightning as L
import torch
from einops import rearrange
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from tora.utils.run import parameter_counts


def tensorboard(module: L.LightningModule):
    """The TensorBoard ``SummaryWriter`` of the run, or None."""
    if module.trainer is None:
        return None
    for logger in module.trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def log_parameter_counts(module: L.LightningModule) -> None:
    """Log trainable / frozen parameter counts per top-level child as text + scalars."""
    writer = tensorboard(module)
    rows = []
    for name, child in module.named_children():
        counts = parameter_counts(child)
        trainable, frozen = counts["trainable"], counts["frozen"]
        rows.append(f"| {name} | {trainable:,} | {frozen:,} |")
        if writer is not None:
            writer.add_scalar(f"params/{name}/trainable", trainable, 0)
            writer.add_scalar(f"params/{name}/frozen", frozen, 0)
    if writer is not None:
        table = "| module | trainable | frozen |\n|---|---|---|\n" + "\n".join(rows)
        writer.add_text("params", table, 0)


def clip_rows_to_grid(rows: list[torch.Tensor], max_frames: int = 9) -> torch.Tensor:
    """Rows of clips ``[B, 3, T, H, W]`` in [-1, 1] -> one image ``[3, H', W']`` in [0, 1].

    Each clip becomes one row of (at most ``max_frames`` evenly spaced) frames;
    the rows of the first list element come first (e.g. ground truth, then output).
    """
    num_frames = rows[0].shape[2]
    index = torch.linspace(0, num_frames - 1, min(max_frames, num_frames)).round().long()
    stacked = torch.stack([r[:, :, index].detach().float().cpu() for r in rows], dim=1)
    images = rearrange(stacked, "b r c t h w -> (b r t) c h w")
    return make_grid((images.clamp(-1, 1) + 1) / 2, nrow=len(index), padding=1, pad_value=1.0)


def log_video_grid(module: L.LightningModule, tag: str, rows: list[torch.Tensor]) -> None:
    """Log clips as a frame grid image (one row per clip) at the current step."""
    writer = tensorboard(module)
    if writer is None or not module.trainer.is_global_zero:
        return
    writer.add_image(tag, clip_rows_to_grid(rows), module.global_step)
