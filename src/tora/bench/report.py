"""The bench's tables, printed from its JSON result."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


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
