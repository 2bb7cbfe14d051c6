"""FLOPs of one training step, counted with ``torch.utils.flop_counter`` while it runs."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tora.bench.step import apply_gradients, forward_loss
from tora.training.diffusion_module import VideoDiffusionModule


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
