"""The whole bench: the rows it measures, the JSON it writes, and its Hydra entry point."""

from __future__ import annotations

import gc
import json
import logging
import platform
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from tora.bench.datamodule import datamodule_throughput
from tora.bench.measure import ClipShape, measure
from tora.bench.module import build_module, compose_train_config
from tora.bench.peak import matmul_peak
from tora.bench.report import print_report
from tora.bench.step import PRECISION_DTYPES, check_precision
from tora.utils.config import CONFIG_PATH
from tora.utils.device import resolve_device
from tora.utils.run import parameter_counts

log = logging.getLogger(__name__)


def wants_xl_row(setting: bool | str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda"
    if setting not in (True, False):
        raise ValueError(f"bench.xl_row: auto, true or false expected, got {setting!r}")
    if setting and device.type != "cuda":
        raise ValueError(f"bench.xl_row=true: the XL/2 row runs on CUDA only, device is {device}")
    return setting


def main_shape(cfg: DictConfig, train_cfg: DictConfig) -> ClipShape:
    """The bench's shape; null entries come from the training config's data."""
    data = train_cfg.data
    height, width = cfg.resolution if cfg.resolution is not None else data.resolution
    return ClipShape(
        batch_size=cfg.batch_size if cfg.batch_size is not None else data.batch_size,
        num_frames=cfg.num_frames if cfg.num_frames is not None else data.num_frames,
        height=height,
        width=width,
    )


def release_memory(device: torch.device) -> None:
    """Free a dropped module (the LightningModule holds a reference cycle) before the next."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def xl_benchmark(
    cfg: DictConfig, overrides: list[str], device: torch.device, row_args: dict
) -> dict[str, Any]:
    """The XL/2 stage-1 row; a device too small for it gives a row with the error."""
    xl_cfg = compose_train_config(
        cfg.train.experiment, [*overrides, *cfg.xl.overrides], Path(cfg.output).parent
    )
    shape = ClipShape(cfg.xl.batch_size, cfg.xl.num_frames, *cfg.xl.resolution)
    try:
        module, optimizer = build_module(xl_cfg, device)
        return measure(
            module, optimizer, shape, warmup_steps=cfg.warmup_steps, steps=cfg.steps, **row_args
        )
    except torch.OutOfMemoryError as error:
        log.warning("XL/2 row: out of memory on %s: %s", device, error)
        return {
            **asdict(shape),
            "precision": row_args["precision"],
            "error": f"out of memory: {error}",
        }


def bench(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured benchmark, print the tables, write ``cfg.output``; return the results."""
    device = resolve_device(cfg.device)
    precision = check_precision(cfg.precision, "bench.precision")
    xl_precision = check_precision(cfg.xl.precision, "bench.xl.precision")
    run_xl = wants_xl_row(cfg.xl_row, device)
    output = Path(cfg.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    peak_size = cfg.peak_matmul_size or (8192 if device.type == "cuda" else 2048)
    peaks = {
        name: matmul_peak(device, PRECISION_DTYPES[name], peak_size)
        for name in {precision, *([xl_precision] if run_xl else [])}
    }

    overrides = [*(f"++{key}=null" for key in cfg.train.null_checkpoints), *cfg.train.overrides]
    train_cfg = compose_train_config(cfg.train.experiment, overrides, output.parent)
    module, optimizer = build_module(train_cfg, device)
    shape = main_shape(cfg, train_cfg)
    row_args = dict(
        precision=precision,
        peak_flops_per_s=peaks[precision],
        max_tracks=train_cfg.data.max_tracks,
        generator=generator,
    )
    main_row = measure(
        module, optimizer, shape, warmup_steps=cfg.warmup_steps, steps=cfg.steps, **row_args
    )
    sweep = [
        measure(
            module,
            optimizer,
            replace(shape, num_frames=num_frames),
            warmup_steps=1,
            steps=cfg.sweep_steps,
            **row_args,
        )
        for num_frames in cfg.frame_sweep
    ]
    parameters = parameter_counts(module)
    del module, optimizer
    release_memory(device)

    data = {"status": "skipped (datamodule_batches=0)"}
    if cfg.datamodule_batches > 0:
        data = datamodule_throughput(train_cfg.data, cfg.datamodule_batches)
    xl_args = {**row_args, "precision": xl_precision, "peak_flops_per_s": peaks.get(xl_precision)}
    xl_row = xl_benchmark(cfg, overrides, device, xl_args) if run_xl else None

    result = {
        "experiment": cfg.train.experiment,
        "overrides": list(cfg.train.overrides),
        "device": device.type,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "parameters": parameters,
        "peak_matmul": {
            "size": peak_size,
            "flops_per_s": {
                str(PRECISION_DTYPES[name]).removeprefix("torch."): rate
                for name, rate in peaks.items()
            },
        },
        "main": main_row,
        "frame_sweep": sweep,
        "xl": xl_row,
        "datamodule": {**data, "training_clips_per_s": main_row["clips_per_s"]},
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result)
    log.info("bench results written to %s", output)
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench")
def main(cfg: DictConfig) -> None:
    bench(cfg)
