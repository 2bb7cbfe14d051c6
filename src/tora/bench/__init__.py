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

One file per concern: ``module`` (the training config and the module built
from it), ``step`` (one training step), ``flops`` (counting it), ``measure``
(a timed row), ``peak`` (the matmul peak), ``datamodule`` (the loader's clip
rate), ``report`` (the tables), ``run`` (the whole bench and its entry point).
"""
