"""Progress outside a terminal: one plain line per interval, with step, loss and time left."""

from __future__ import annotations

import re

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from tora.training.progress import LineProgress, format_seconds, progress_bar, progress_lines
from tora.utils.config import CONFIG_DIR


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))  # not on the bar

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def quiet_trainer(tmp_path, progress: LineProgress, **kwargs) -> L.Trainer:
    """A CPU Trainer whose only output is ``progress``."""
    return L.Trainer(
        callbacks=[progress],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_line_progress_prints_steps_loss_and_time_left(capsys, tmp_path):
    trainer = quiet_trainer(
        tmp_path,
        LineProgress(every_n_seconds=0.0),
        max_steps=6,
        val_check_interval=3,
        num_sanity_val_steps=0,
    )
    trainer.fit(Regression(), loader(), loader())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    train = [line for line in lines if line.startswith("[train]")]
    assert [int(re.search(r"step (\d+)/6", line).group(1)) for line in train] == [1, 2, 3, 4, 5, 6]
    assert "(100%)" in train[-1] and "train/loss=" in train[-1] and "0:00 left" in train[-1]
    assert re.search(r"\d+\.\d+ it/s", train[0])
    validation = [line for line in lines if line.startswith("[val]")]
    assert validation == [validation[0]] and validation[0].startswith("[val] step 3 val/loss=")


def test_line_progress_waits_for_its_interval(capsys, tmp_path):
    trainer = quiet_trainer(
        tmp_path, LineProgress(every_n_seconds=3600.0), max_steps=5, limit_val_batches=0
    )
    trainer.fit(Regression(), loader())
    train = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[train]")]
    assert len(train) == 1 and "step 5/5" in train[0]  # only the last step


def test_labelled_lines_name_their_run(capsys, tmp_path):
    """Two runs sharing a terminal (make's side-by-side stage-1 prerequisites)."""
    progress = progress_bar(every_n_seconds=0.0, force="lines", label="motion_vae")
    trainer = quiet_trainer(tmp_path, progress, max_steps=2, val_check_interval=2)
    trainer.fit(Regression(), loader(), loader())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert [line.split(" ", 2)[:2] for line in lines] == [
        ["[motion_vae]", "[train]"],
        ["[motion_vae]", "[train]"],
        ["[motion_vae]", "[val]"],
    ]


def test_progress_bar_choice_and_config():
    # pytest captures stdout, so it is not a terminal here.
    assert isinstance(progress_bar(), LineProgress)
    assert isinstance(progress_bar(force="rich"), RichProgressBar)
    assert isinstance(progress_bar(force="lines"), LineProgress)
    with pytest.raises(ValueError, match="force='bar'"):
        progress_bar(force="bar")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=stage1_flow"])
    callback = hydra.utils.instantiate(cfg.callbacks.progress_bar)
    assert isinstance(callback, LineProgress) and callback.every_n_seconds == 30


def test_format_seconds():
    assert format_seconds(59.6) == "1:00"
    assert format_seconds(3725) == "1:02:05"


def test_progress_lines_for_a_pass_outside_training(capsys):
    """encode_latents' pass: every item comes through; off a terminal, labelled lines at
    the interval and always one at the end."""
    items = list(progress_lines(range(5), 5, "encode", "stage1_motion", every_n_seconds=3600))
    assert items == [0, 1, 2, 3, 4]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[stage1_motion] [encode] 5/5 (100%) |")
    list(progress_lines(range(3), 3, "encode", every_n_seconds=0))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" |")[0] for line in lines] == [
        "[encode] 1/3 (33%)",
        "[encode] 2/3 (67%)",
        "[encode] 3/3 (100%)",
    ]
