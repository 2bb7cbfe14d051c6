"""Training-step benchmark: ``python -m tora.bench`` (configs/bench.yaml).

Builds a stage's ``VideoDiffusionModule`` from the training config with random
weights (the checkpoint paths are set to null, so no stage has to be trained),
then times training steps on an in-memory random batch: ``model_step`` (VAE
and motion encoding, text encoding, the DiT) forward, backward and an AdamW
step of the trainable parameters, as in training but without the Trainer.

Reported per row: median step time, clips/s, DiT tokens/s (latent ``T x H/16 x
W/16`` per clip), FLOPs per step (``torch.utils.flop_counter``, forward +
backward of one step), the achieved FLOP/s as a fraction of a square-matmul
peak measured in the same process, and peak memory. Rows: the main shape, the
main shape at other clip lengths (``frame_sweep``) and, on CUDA, OpenSora's
XL/2 stage 1 (49 x 240 x 432, bf16, activation checkpointing). The DataModule's
clip rate is measured next to the rate training consumes. Everything goes to
the JSON file ``output``.

FLOPs are model FLOPs: the forward that activation checkpointing recomputes in
the backward is counted once (``executed_flops`` includes it).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import platform
import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tora.train import resolved
from tora.training.diffusion_module import VideoDiffusionModule
from tora.training.latent_cache import LatentCache
from tora.utils.config import CONFIG_DIR, CONFIG_PATH
from tora.utils.run import parameter_counts

log = logging.getLogger(__name__)

# Training precision -> the dtype of the matmul peak it is compared with.
PRECISION_DTYPES = {"32": torch.float32, "bf16": torch.bfloat16}


def cpu_attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """torch's counter has no formula for its CPU attention kernels (they would count
    0 FLOPs); these two are the formulas of its CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def cpu_attention_backward_flops(
    grad_shape, query_shape, key_shape, value_shape, *args, **kwargs
) -> int:
    return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_attention_backward_flops,
}
CAPTION = "a red circle moves from the left to the right on a striped background"


@dataclass
class ClipShape:
    """A batch of clips ``[batch_size, 3, num_frames, height, width]``."""

    batch_size: int
    num_frames: int
    height: int
    width: int


# ----------------------------------------------------------------- set-up
def compose_train_config(experiment: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """``configs/train.yaml`` with ``experiment=...`` and ``overrides``, resolved.

    The bench writes nothing through the training run's paths; pointing them at
    its own output folder lets the config resolve outside a Hydra run too.
    """
    overrides = [
        f"experiment={experiment}",
        f"paths.output_dir={run_dir}",
        f"paths.work_dir={run_dir}",
        *overrides,
    ]
    if GlobalHydra.instance().is_initialized():
        return resolved(hydra.compose("train", overrides=overrides))
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return resolved(hydra.compose("train", overrides=overrides))


def build_module(
    train_cfg: DictConfig, device: torch.device
) -> tuple[VideoDiffusionModule, torch.optim.Optimizer]:
    """The configured LightningModule in training mode and its optimiser (scheduler ignored)."""
    module = hydra.utils.instantiate(train_cfg.model, _recursive_=False)
    if not isinstance(module, VideoDiffusionModule):
        raise TypeError(
            f"bench: a VideoDiffusionModule expected (experiment stage1_flow, stage2_traj, "
            f"base_t2v, ...), the config builds {type(module).__name__}"
        )
    module.to(device).train()
    return module, module.configure_optimizers()["optimizer"]


def random_batch(
    shape: ClipShape, max_tracks: int, fps: float, generator: torch.Generator, device: torch.device
) -> dict[str, Any]:
    """A batch of the DataModule's contract filled with noise: shapes, not values, set the cost."""
    b, t, h, w = shape.batch_size, shape.num_frames, shape.height, shape.width
    scale = torch.tensor([w - 1, h - 1], dtype=torch.float32)
    batch = {
        "video": torch.rand(b, 3, t, h, w, generator=generator) * 2 - 1,
        "flow": torch.randn(b, t - 1, h, w, 2, generator=generator) * 2,
        "tracks": torch.rand(b, max_tracks, t, 2, generator=generator) * scale,
        "track_mask": torch.ones(b, max_tracks, dtype=torch.bool),
        "fps": torch.full((b,), fps),
    }
    batch = {name: value.to(device) for name, value in batch.items()}
    batch["caption"] = [CAPTION] * b
    batch["key"] = [f"bench-{index}" for index in range(b)]
    batch["frame_start"] = torch.zeros(b, dtype=torch.long)
    return batch


def tokens_per_clip(module: VideoDiffusionModule, shape: ClipShape) -> int:
    """DiT tokens of one clip: latent ``(T, H, W)`` divided by the patch, rounded up."""
    latent = module.vae.latent_shape(shape.num_frames, shape.height, shape.width)
    patch = module.model.backbone.config.patch_size
    return math.prod(-(-size // p) for size, p in zip(latent, patch))


# ------------------------------------------------------------------ steps
def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_loss(module: VideoDiffusionModule, batch: dict, precision: str) -> torch.Tensor:
    device = batch["video"].device
    with autocast(device, precision):
        return module.model_step(batch)["loss"].mean()


def apply_gradients(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_step_flops(
    module: VideoDiffusionModule, optimizer: torch.optim.Optimizer, batch: dict, precision: str
) -> dict[str, Any]:
    """FLOPs of one training step, counted while it runs.

    ``flops`` are model FLOPs (forward + backward). With activation
    checkpointing the backward runs the forward of every checkpointed block
    whose output needs gradients again: ``executed_flops`` includes that
    recomputation, measured on those blocks in the forward. ``flops_by_module``:
    per top-level module the counter saw called (VAE encoders, text encoder, Tora).
    """
    backbone = module.model.backbone
    blocks = [*backbone.spatial_blocks, *backbone.temporal_blocks]
    recomputed = []
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        hooks = []
        if backbone.gradient_checkpointing:
            start = {}

            def before(block, args):
                start[block] = counter.get_total_flops()

            def after(block, args, output):
                if output.requires_grad:
                    recomputed.append(counter.get_total_flops() - start[block])

            for block in blocks:
                hooks += [
                    block.register_forward_pre_hook(before),
                    block.register_forward_hook(after),
                ]
        loss = forward_loss(module, batch, precision)
        forward_flops = counter.get_total_flops()
        for hook in hooks:
            hook.remove()
        apply_gradients(loss, optimizer)
    counts = counter.get_flop_counts()
    executed = counter.get_total_flops()
    return {
        "flops": executed - sum(recomputed),
        "forward_flops": forward_flops,
        "executed_flops": executed,
        "flops_by_module": {
            name: sum(counts[name].values())
            for name in sorted(counts)
            if "." not in name and name != "Global"
        },
    }


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA: tensors allocated since the row started; CPU: the process's peak RSS so far."""
    if device.type == "cuda":
        return {
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device),
            "memory_kind": "cuda max allocated",
        }
    # ru_maxrss is in KiB on Linux.
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "memory_kind": "process peak RSS",
    }


def measure(
    module: VideoDiffusionModule,
    optimizer: torch.optim.Optimizer,
    shape: ClipShape,
    *,
    warmup_steps: int,
    steps: int,
    precision: str,
    peak_flops_per_s: float,
    max_tracks: int,
    generator: torch.Generator,
) -> dict[str, Any]:
    """One row: the first warm-up step counts FLOPs, then ``steps`` timed steps."""
    if warmup_steps < 1 or steps < 1:
        raise ValueError(
            f"bench: warmup_steps >= 1 and steps >= 1 expected, got {warmup_steps} and {steps}"
        )
    device = module.device
    fps = module.model.backbone.config.default_fps
    batch = random_batch(shape, max_tracks, fps, generator, device)
    if module.latent_cache.max_clips:
        # The steady state of a run with model.latent_cache: every clip is a hit.
        module.encode_video(batch["video"], LatentCache.batch_clip_ids(batch))
    reset_peak_memory(device)
    flops = count_step_flops(module, optimizer, batch, precision)
    for _ in range(warmup_steps - 1):
        apply_gradients(forward_loss(module, batch, precision), optimizer)
    step_times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        apply_gradients(forward_loss(module, batch, precision), optimizer)
        synchronize(device)
        step_times.append(time.perf_counter() - start)
    step_time = statistics.median(step_times)
    tokens = tokens_per_clip(module, shape)
    achieved = flops["flops"] / step_time
    return {
        **asdict(shape),
        "precision": precision,
        "latent_shape": list(module.vae.latent_shape(shape.num_frames, shape.height, shape.width)),
        "tokens_per_clip": tokens,
        "step_time_s": step_time,
        "step_times_s": step_times,
        "clips_per_s": shape.batch_size / step_time,
        "tokens_per_s": shape.batch_size * tokens / step_time,
        **flops,
        "flops_per_s": achieved,
        "fraction_of_peak": achieved / peak_flops_per_s,
        **peak_memory(device),
    }


# ------------------------------------------------------- peak and data
def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 3) -> float:
    """FLOP/s of the fastest of ``repeats`` ``size^3`` matmuls (after one warm-up)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def datamodule_throughput(data_cfg: DictConfig, num_batches: int) -> dict[str, Any]:
    """Clips/s of the configured DataModule's training loader over ``num_batches``
    batches; the first batch (worker start-up, shuffle buffer fill) is not timed."""
    datamodule = hydra.utils.instantiate(data_cfg)
    try:
        loader = datamodule.train_dataloader()
    except FileNotFoundError as error:
        return {"status": "no shards (run make data)", "error": str(error)}
    batches = iter(loader)
    next(batches)
    clips = 0
    timed = 0
    start = time.perf_counter()
    for batch in islice(batches, num_batches):
        clips += len(batch["caption"])
        timed += 1
    elapsed = time.perf_counter() - start
    del batches, loader
    return {
        "status": "ok",
        "clips_per_s": clips / elapsed if timed else None,
        "batches": timed,
        "batch_size": datamodule.batch_size,
        "num_frames": datamodule.num_frames,
        "resolution": list(datamodule.resolution),
        "num_workers": datamodule.num_workers,
    }


# ------------------------------------------------------------------ bench
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def wants_xl_row(setting: bool | str, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda"
    if setting not in (True, False):
        raise ValueError(f"bench.xl_row: auto, true or false expected, got {setting!r}")
    if setting and device.type != "cuda":
        raise ValueError(f"bench.xl_row=true: the XL/2 row runs on CUDA only, device is {device}")
    return setting


def check_precision(precision: Any, name: str) -> str:
    precision = str(precision)
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"{name}: one of {tuple(PRECISION_DTYPES)} expected, got {precision!r}")
    return precision


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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


# --------------------------------------------------------------- report
def si(value: float | None, unit: str = "") -> str:
    """``1.23e10 -> '12.3 G'`` (decimal prefixes)."""
    if value is None:
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def row_table(title: str, rows: list[tuple[str, dict]]) -> Table:
    table = Table(title=title)
    columns = ("row", "B×T×H×W", "tokens/clip", "step", "clips/s", "tokens/s")
    for column in (*columns, "FLOP/step", "FLOP/s", "of peak", "peak memory"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for name, row in rows:
        shape = f"{row['batch_size']}×{row['num_frames']}×{row['height']}×{row['width']}"
        if "error" in row:
            table.add_row(name, shape, f"[red]{row['error'][:80]}")
            continue
        table.add_row(
            name,
            shape,
            f"{row['tokens_per_clip']:,}",
            f"{row['step_time_s'] * 1e3:.0f} ms",
            f"{row['clips_per_s']:.3g}",
            si(row["tokens_per_s"]),
            si(row["flops"]),
            si(row["flops_per_s"]),
            f"{row['fraction_of_peak']:.1%}",
            si(row["peak_memory_bytes"], "B"),
        )
    return table


def print_report(result: dict[str, Any]) -> None:
    # Wide enough for the tables when the output is not a terminal (rich then assumes 80).
    console = Console(width=140)
    main, peak, data = result["main"], result["peak_matmul"], result["datamodule"]
    rows = [(f"{result['experiment']} ({main['precision']})", main)]
    if result["xl"] is not None:
        rows.append((f"XL/2 stage 1 ({result['xl']['precision']})", result["xl"]))
    title = (
        f"training step, {result['device']} ({result['device_name']}, {result['threads']} threads)"
    )
    training = row_table(title, rows)
    peaks = ", ".join(f"{si(rate)}FLOP/s {dtype}" for dtype, rate in peak["flops_per_s"].items())
    if data["status"] == "ok":
        delivered = (
            f"{data['clips_per_s']:.3g} clips/s ({data['batches']} batches of "
            f"{data['batch_size']}×{data['num_frames']}×{'×'.join(map(str, data['resolution']))}, "
            f"{data['num_workers']} workers)"
        )
    else:
        delivered = data["status"]
    training.caption = (
        f"peak ({peak['size']}³ matmul): {peaks}; "
        f"memory: {main['memory_kind']}; parameters: {result['parameters']['trainable']:,} "
        f"trainable of {result['parameters']['total']:,}\n"
        f"training consumes {main['clips_per_s']:.3g} clips/s; the DataModule delivers {delivered}"
    )
    console.print(training)
    sweep = [(f"{row['num_frames']} frames", row) for row in result["frame_sweep"]]
    if sweep:
        console.print(row_table("frame sweep (main shape at other clip lengths)", sweep))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench")
def main(cfg: DictConfig) -> None:
    bench(cfg)



if __name__ == "__main__":
    main()
