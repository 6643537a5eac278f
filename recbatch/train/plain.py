"""A single-process PyTorch loop over the same inputs, model and loss, without DeepSpeed or Ray.

Two uses: the benchmark's reference ("what does the distributed machinery
cost on this machine?") and quick model experiments where a Ray worker group
start-up would dominate. It is not a production path: no checkpoints, no
validation, one process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from recbatch.config import Config
from recbatch.model.two_tower import TwoTower, TwoTowerConfig, build_two_tower
from recbatch.train.examples import PreparedInputs, load_catalog, read_parts
from recbatch.train.loop import LoopConfig, batch_tensors, parameter_groups, step_loss
from recbatch.train.validation import pooled_catalog


@dataclass
class PlainRun:
    model: TwoTower
    steps: int
    samples: int
    seconds: float  # training steps only (excludes model load and the cache pass)
    losses: list[float]

    @property
    def samples_per_s(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def train_plain(cfg: Config, loop: LoopConfig, prepared: PreparedInputs, steps: int) -> PlainRun:
    """`steps` AdamW steps of batch ``cfg.train.batch_size`` on CPU, cycling over the examples."""
    torch.manual_seed(cfg.train.seed)
    model, tokenizer = build_two_tower(loop.encoder_dir, TwoTowerConfig(**loop.tower), loop.freeze_encoder)
    catalog = load_catalog(prepared.catalog, tokenizer, loop.max_text_tokens)
    groups, _ = parameter_groups(model, cfg.train)
    optimizer = torch.optim.AdamW(groups)
    examples = read_parts(prepared.examples)
    B = cfg.train.batch_size
    model.eval()
    pooled = pooled_catalog(model, catalog, torch.arange(catalog.size), torch.device("cpu"))
    model.train()
    generator = torch.Generator().manual_seed(cfg.train.seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        offset = (step * B) % max(examples.height - B + 1, 1)
        batch = examples.slice(offset, B)
        t = batch_tensors({column: batch[column].to_numpy() for column in batch.columns}, torch.device("cpu"))
        loss = step_loss(model, t, pooled, catalog, loop, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.gradient_clipping)
        optimizer.step()
        losses.append(float(loss.detach()))
    return PlainRun(model, steps, steps * B, time.perf_counter() - start, losses)
