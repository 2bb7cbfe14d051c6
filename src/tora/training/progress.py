"""Progress that shows in a terminal and in a log file alike.

Rich's bar draws nothing when stdout is not a terminal (``make train-stage1 | tee``,
a SLURM log, CI), so there :class:`LineProgress` prints one line every
``every_n_seconds``: step, percentage, the progress-bar metrics (loss, ...),
steps per second and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from tqdm import tqdm

T = TypeVar("T")


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_timing(done: int, elapsed: float, remaining: int | None) -> str:
    """``rate it/s, elapsed, left`` of a loop that did ``done`` items in ``elapsed``
    seconds with ``remaining`` to go (None: unknown, no time left shown)."""
    rate = done / max(elapsed, 1e-9)
    timing = f"{rate:.2f} it/s, {format_seconds(elapsed)} elapsed"
    if remaining is None:
        return timing
    left = format_seconds(remaining / rate) if rate > 0 else "?"
    return f"{timing}, {left} left"


class LineProgress(ProgressBar):
    """One plain line per ``every_n_seconds`` of training (and at the last step), each
    opening with ``[label]`` when one is given (runs sharing a terminal)."""

    def __init__(self, every_n_seconds: float = 30.0, label: str | None = None) -> None:
        super().__init__()
        self.every_n_seconds = every_n_seconds
        self.prefix = f"[{label}] " if label else ""
        self._enabled = True
        self._start = 0.0
        self._last_print = 0.0
        self._start_step = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_print = time.monotonic()
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        step, total = trainer.global_step, trainer.max_steps
        last = total > 0 and step >= total
        if not (self._enabled and trainer.is_global_zero):
            return
        if now - self._last_print < self.every_n_seconds and not last:
            return
        self._last_print = now
        metrics = self.get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        where = f"step {step}/{total} ({100 * step / total:.0f}%)" if total > 0 else f"step {step}"
        timing = format_timing(
            step - self._start_step, now - self._start, total - step if total > 0 else None
        )
        print(f"{self.prefix}[train] {where} {shown} | {timing}", file=sys.stdout, flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero) or trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if metrics:
            shown = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items())
            print(
                f"{self.prefix}[val] step {trainer.global_step} {shown}",
                file=sys.stdout,
                flush=True,
            )


def progress_bar(
    every_n_seconds: float = 30.0, force: str | None = None, label: str | None = None
) -> ProgressBar:
    """Rich's bar on a terminal, :class:`LineProgress` otherwise (``force``: "rich" | "lines";
    ``label`` names the lines' run)."""
    if force not in (None, "rich", "lines"):
        raise ValueError(f"progress_bar force={force!r}: null, 'rich' or 'lines' expected")
    if force == "rich" or (force is None and sys.stdout.isatty()):
        return RichProgressBar()
    return LineProgress(every_n_seconds, label)


def progress_lines(
    items: Iterable[T],
    total: int,
    what: str,
    label: str | None = None,
    every_n_seconds: float = 30.0,
) -> Iterator[T]:
    """``items`` with tqdm's bar on a terminal, otherwise one line per ``every_n_seconds``
    (and at the end) in :class:`LineProgress`'s format: ``[label] [what] i/total ...``."""
    prefix = f"[{label}] " if label else ""
    if sys.stdout.isatty():
        yield from tqdm(items, total=total, desc=f"{prefix}{what}", file=sys.stdout)
        return
    start = last_print = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last_print >= every_n_seconds or done == total:
            last_print = now
            print(
                f"{prefix}[{what}] {done}/{total} ({100 * done / max(total, 1):.0f}%) | "
                f"{format_timing(done, now - start, total - done)}",
                file=sys.stdout,
                flush=True,
            )
