"""The DeepSpeed config dict, built from our ``train`` config section.

One function so that a GPU preset can be checked on a CPU laptop: it builds
the exact dict a cluster run would pass to ``deepspeed.initialize``.

Choices worth knowing:
- No ``optimizer`` block: the loop passes a torch ``AdamW`` in. A config-file
  optimizer makes DeepSpeed JIT-compile ``fused_adam`` (~90 s on CPU) and ties
  the run to CUDA kernels; AdamW is correct everywhere. ZeRO therefore needs
  ``zero_allow_untested_optimizer`` and, with CPU offload,
  ``zero_force_ds_cpu_optimizer: false``.
- The scheduler is DeepSpeed's ``WarmupDecayLR`` (linear warm-up, then linear
  decay to 0 at the last step), with one peak learning rate per parameter
  group: the pretrained encoder gets a smaller one than the fresh towers.
- Precision ``auto`` is fp16 with dynamic loss scaling on GPU and fp32 on CPU
  (half-precision matmuls are 10-18x slower on the dev CPU).
"""

from __future__ import annotations

import math
from typing import Any

from recbatch.config import TrainConfig
from recbatch.runtime import resolve_precision


def build_deepspeed_config(
    train: TrainConfig,
    *,
    on_gpu: bool,
    world_size: int,
    total_steps: int,
    group_learning_rates: list[float] | None = None,
) -> dict[str, Any]:
    """The dict for ``deepspeed.initialize(config=...)``.

    `group_learning_rates` are the peak rates of the optimizer's parameter
    groups, in order (default: [encoder_learning_rate, learning_rate]).
    """
    precision = resolve_precision(train.precision, on_gpu)
    peaks = group_learning_rates or [train.encoder_learning_rate, train.learning_rate]
    total_steps = max(int(total_steps), 1)
    # DeepSpeed's WarmupDecayLR refuses 0 warmup steps; one step is "no warmup" (train.warmup_fraction 0).
    warmup = max(1, min(math.ceil(train.warmup_fraction * total_steps), total_steps))

    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 1 and train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if train.zero_stage == 3:
        zero.update(
            {
                "overlap_comm": on_gpu,
                "contiguous_gradients": True,
                # full weights gathered on rank 0 when exporting without a checkpoint round trip
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    elif train.zero_stage in (1, 2):
        zero.update({"overlap_comm": on_gpu, "contiguous_gradients": True, "reduce_scatter": True})

    return {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.gradient_accumulation_steps,
        "train_batch_size": train.batch_size * train.gradient_accumulation_steps * world_size,
        "gradient_clipping": train.gradient_clipping,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,  # 0 = dynamic loss scaling
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "bf16": {"enabled": precision == "bf16"},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_min_lr": [0.0] * len(peaks),
                "warmup_max_lr": list(peaks),
                "warmup_num_steps": warmup,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
