"""What each Ray Train worker runs: DeepSpeed training of the two towers.

One step (``train.objective: per_interaction``), for a micro-batch of B (user, positive item) examples:

    positives  [B, T] tokens ──BERT (grad)──▶ [B, D]
    histories  [B, L] rows ──pooled cache (no grad) ──proj + id (grad)──▶ [B, L, D] ──user tower──▶ [B, D]
    negatives  [N] uniform rows ──pooled cache ──proj + id──▶ [N, D]      (optional)
    loss = in-batch sampled softmax (logQ-corrected, accidental hits masked) over the B + N candidates

One step (``causal``), for a micro-batch of B windows of up to L + 1 items:

    windows    [B, L] rows ──pooled cache ──proj + id──▶ [B, L, D] ──causal user tower──▶ [B, 1+L, D]
    candidates the whole catalog [M] (at most ``model.full_softmax_items``: exact softmax)
               or the P positions' own targets (+ N uniform) ──pooled cache ──proj + id──▶ [M or P + N, D]
    loss = softmax over the candidates at each of the P real positions (logQ when sampled)

The pooled cache holds the encoder's mean-pooled output for every catalog item
and is refreshed at each epoch start and before each validation (once per run
when ``model.freeze_encoder`` holds the encoder fixed), each worker
encoding an equal slice and all-gathering the rest (equal slices keep ZeRO-3's
collective parameter gathers in step across ranks).

Checkpoints: every rank saves its own DeepSpeed shards into a local folder and
passes it to ``ray.train.report``, which merges all ranks' folders into one
checkpoint in persistent storage. (Reporting only rank 0's folder, the
classic mistake, would silently lose the other ranks' ZeRO shards.) On a
restart after a failure, ``ray.train.get_checkpoint`` returns the latest and
every rank loads its shards from it (weights, optimizer, LR schedule), then
skips as many micro-batches of the current epoch as it had consumed. Ray
Data's streaming order is not replayed exactly, so the resumed epoch sees the
right *number* of examples, not necessarily the same ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recbatch.config import StorageConfig, TrainConfig
from recbatch.fs import Location, is_file, locate, make_parent
from recbatch.testing import FAIL_AT_STEP
from recbatch.model.features import UserFeatureSpec
from recbatch.model.loss import candidate_log_q, full_softmax_loss, two_tower_loss
from recbatch.model.two_tower import TwoTower, TwoTowerConfig, build_two_tower
from recbatch.train.deepspeed_config import build_deepspeed_config
from recbatch.train.examples import CatalogTensors, load_catalog, load_validation
from recbatch.train.validation import full_ranking_metrics, history_inputs, item_vectors, pooled_catalog

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "state"  # DeepSpeed's sub-folder inside each Ray checkpoint
STATE_FILE = "train_state.json"  # loop position + loss curve, written by rank 0


@dataclass
class TrainState:
    """Where the loop is; saved with every checkpoint so a restart resumes exactly here."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    restarts: int = 0  # times this run resumed from a checkpoint (worker failure or --resume)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase, summed over attempts


@dataclass
class LoopConfig:
    """Everything a worker needs, as plain data (it crosses process boundaries)."""

    encoder_dir: str
    tower: dict[str, Any]
    train: dict[str, Any]
    user_features: dict[str, Any]
    loss: str
    temperature: float
    logq_correction: bool
    extra_negatives: int
    freeze_encoder: bool
    max_text_tokens: int
    catalog_path: str  # a local path or an object-store URI (reached as `storage` says)
    validation_path: str
    total_steps: int
    objective: str = "per_interaction"  # train.objective
    full_softmax: bool = False  # causal: every position scored against the whole catalog (it fits)
    fail_at_step: int | None = None  # test-only fault hook (recbatch.testing): the last rank dies once here
    fault_wait_s: float = 0.0  # test-only: how long it waits first (recbatch.testing.fault_wait_s)
    storage: dict[str, Any] = field(default_factory=dict)  # cfg.storage: how an object-store path is reached

    def locate(self, path: str) -> Location:
        """One of the paths above as a Location (this worker resolves its own credentials)."""
        return locate(path, StorageConfig(**self.storage))


def parameter_groups(model: TwoTower, train: TrainConfig) -> tuple[list[dict[str, Any]], list[float]]:
    """AdamW groups: encoder vs towers (different peak LRs), decay vs no decay.

    Biases, norms and embeddings are not weight-decayed (decaying an id
    embedding pulls rarely-seen items to zero and so toward text-only).
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_encoder = name.startswith("item_tower.encoder.")
        no_decay = param.ndim < 2 or "norm" in name.lower() or "embedding" in name or "recency" in name
        groups.setdefault((is_encoder, no_decay), []).append(param)
    out, peaks = [], []
    for (is_encoder, no_decay), params in sorted(groups.items()):
        lr = train.encoder_learning_rate if is_encoder else train.learning_rate
        out.append({"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else train.weight_decay})
        peaks.append(lr)
    return out, peaks


@torch.no_grad()
def refresh_pooled_cache(engine, catalog: CatalogTensors, device: torch.device) -> torch.Tensor:
    """Pooled encoder output for the whole catalog [M, H], computed in equal slices per rank."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    M = catalog.size
    per_rank = -(-M // world)
    rows = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp(max=M - 1)  # pad by repeating the last row
    was_training = engine.training
    engine.eval()
    mine = pooled_catalog(engine, catalog, rows, device)  # [per_rank, H]
    engine.train(was_training)
    if world == 1:
        return mine[:M]
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    return torch.cat(gathered)[:M]


# Columns of an examples part (train/examples.py) and their step dtypes; a part holds those of its objective.
_SCALAR_COLUMNS = {"target": np.int64, "first": np.int64, "age_days": np.float32}
_LIST_COLUMNS = {"history": np.int64, "next": np.int64, "user_cat": np.int64, "user_num": np.float32}


def batch_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """An examples batch as numpy columns (list columns as object arrays, Ray Data's numpy format) -> step tensors."""
    rows = len(batch["history"])

    def stacked(column: str, dtype) -> torch.Tensor:
        values = batch[column]
        array = np.stack(values) if values.dtype == object else values
        return torch.as_tensor(array.astype(dtype)).to(device)

    out = {name: stacked(name, dtype) for name, dtype in _SCALAR_COLUMNS.items() if name in batch}
    for name, dtype in _LIST_COLUMNS.items():
        if name in batch:
            out[name] = stacked(name, dtype).reshape(rows, -1)  # a feature list may be empty: [B, 0]
    return out


def step_loss(
    forward,
    t: dict[str, torch.Tensor],
    pooled: torch.Tensor,
    catalog: CatalogTensors,
    cfg: LoopConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The training loss of one micro-batch (shared by the DeepSpeed loop and the plain-PyTorch bench).

    `forward` is the engine or the bare model (called as ``forward(kind, **inputs)``); `t` holds target [B], history [B, L]
    (catalog rows, PAD = -1), user_cat [B, C], user_num [B, F], age_days [B] (causal: first [B], history and next
    [B, L] instead of target and age_days); `pooled` is the per-epoch cache [M, H].
    """
    if cfg.objective == "causal":
        return causal_step_loss(forward, t, pooled, catalog, cfg, generator)
    B = t["target"].shape[0]
    hist_rows = t["history"].clamp(min=0)  # [B, L]
    history_mask = t["history"] >= 0
    if cfg.freeze_encoder:  # the cache is exact for a frozen encoder: no BERT pass in the step
        positives = {"positive_pooled": pooled[t["target"]]}  # [B, H]
    else:
        positives = {
            "input_ids": catalog.input_ids[t["target"]],  # [B, T]
            "attention_mask": catalog.attention_mask[t["target"]],
        }
    inputs = {
        **positives,
        "id_index": catalog.id_index[t["target"]],  # [B]
        "history_pooled": pooled[hist_rows],  # [B, L, H]
        "history_id_index": catalog.id_index[hist_rows] * history_mask,  # [B, L]
        "history_mask": history_mask,
        "user_categorical": t["user_cat"],
        "user_numeric": t["user_num"],
        "example_age_days": t["age_days"],
    }
    candidate_rows = t["target"]
    if cfg.extra_negatives:
        negatives = uniform_negatives(cfg, catalog, generator, pooled.device)
        inputs["negative_pooled"] = pooled[negatives]
        inputs["negative_id_index"] = catalog.id_index[negatives]
        candidate_rows = torch.cat([candidate_rows, negatives])
    users, candidates = forward("train", **inputs)  # [B, D], [B + N, D]
    return sampled_loss(users, candidates, candidate_rows, B, catalog, cfg)


def uniform_negatives(cfg: LoopConfig, catalog: CatalogTensors, generator: torch.Generator, device) -> torch.Tensor:
    """``model.extra_negatives`` catalog rows drawn uniformly: [N]."""
    return torch.randint(catalog.size, (cfg.extra_negatives,), generator=generator).to(device)


def sampled_loss(
    users: torch.Tensor,  # [P, D]
    candidates: torch.Tensor,  # [P + N, D]: the P positives, then N uniform negatives
    candidate_rows: torch.Tensor,  # [P + N] catalog rows
    positives: int,  # P
    catalog: CatalogTensors,
    cfg: LoopConfig,
) -> torch.Tensor:
    """``model.loss`` over in-batch candidates, logQ-corrected when ``model.logq_correction``."""
    log_q = None
    if cfg.logq_correction:
        log_q = candidate_log_q(catalog.probability[candidate_rows], positives, cfg.extra_negatives, catalog.size)
    return two_tower_loss(cfg.loss, users, candidates, candidate_rows, log_q, temperature=cfg.temperature)


def causal_step_loss(
    forward,
    t: dict[str, torch.Tensor],
    pooled: torch.Tensor,
    catalog: CatalogTensors,
    cfg: LoopConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """The causal objective's loss: every real position of every window predicts its next item.

    Outputs [B, 1+L, D]: index 0 ([USER]) predicts `first`, index j the item after history item j
    (``next``); padded positions predict nothing.
    """
    hist_rows = t["history"].clamp(min=0)  # [B, L]
    history_mask = t["history"] >= 0
    targets = torch.cat([t["first"].unsqueeze(1), t["next"]], dim=1)  # [B, 1+L] catalog rows, PAD = -1
    predicts = targets >= 0  # [B, 1+L]
    target_rows = targets[predicts]  # [P]
    if cfg.full_softmax:
        candidate_rows = torch.arange(catalog.size, device=pooled.device)  # [M]
    else:
        candidate_rows = target_rows
        if cfg.extra_negatives:
            candidate_rows = torch.cat([candidate_rows, uniform_negatives(cfg, catalog, generator, pooled.device)])
    outputs, candidates = forward(
        "train_sequence",
        history_pooled=pooled[hist_rows],  # [B, L, H]
        history_id_index=catalog.id_index[hist_rows] * history_mask,  # [B, L]
        history_mask=history_mask,
        user_categorical=t["user_cat"],
        user_numeric=t["user_num"],
        candidate_pooled=pooled[candidate_rows],  # [M or P + N, H]
        candidate_id_index=catalog.id_index[candidate_rows],
    )  # [B, 1+L, D], [M or P + N, D]
    users = outputs[predicts]  # [P, D]
    if cfg.full_softmax:
        return full_softmax_loss(users, candidates, target_rows, temperature=cfg.temperature)
    return sampled_loss(users, candidates, candidate_rows, len(target_rows), catalog, cfg)


def die_once(cfg: LoopConfig, step: int, rank: int) -> None:
    """The test-only fault (``recbatch.testing.FAIL_AT_STEP``): this worker exits as a crash would, once per run.

    Once per run even if the restart begins before the controller has registered
    the last checkpoint: a marker beside the prepared inputs says it fired.
    """
    marker = cfg.locate(cfg.catalog_path).parent.join("fault_injected")
    if is_file(marker):
        return
    make_parent(marker)
    with marker.filesystem.open_output_stream(marker.path):
        pass
    if cfg.train["max_failures"] != 0:
        # Let the controller register the last reported checkpoint first (it polls
        # the workers), so the restart resumes from it as a real failure well after
        # a checkpoint would. With no restart left, nothing resumes.
        time.sleep(cfg.fault_wait_s)
    log.error("fault injection (%s=%d): worker rank %d exits", FAIL_AT_STEP, step, rank)
    os._exit(1)


def add_time(state: TrainState, phase: str, since: float) -> None:
    """Add the seconds since `since` to `phase` in the state's timings (summed over attempts)."""
    state.timings[phase] = state.timings.get(phase, 0.0) + time.perf_counter() - since


def restore(engine, checkpoint, rank: int) -> tuple[TrainState, bool]:
    """(state, restored): every rank's DeepSpeed shards and the loop position from Ray's latest
    checkpoint (after a worker failure or ``--resume``), else a fresh state."""
    if checkpoint is None:
        return TrainState(), False
    with checkpoint.as_directory() as folder:
        engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
        state = TrainState(**json.loads((Path(folder) / STATE_FILE).read_text()))
    state.restarts += 1
    log.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, state.step, state.epoch, state.batches_in_epoch)
    return state, True


def record_loss(state: TrainState, window: list[float], lr: float, samples: int, seconds: float) -> None:
    """Append the mean loss of the micro-batches in `window` to the loss curve, then empty it."""
    state.loss_curve.append({
        "step": state.step,
        "loss": float(np.mean(window)),
        "lr": lr,
        "samples_per_s": samples / max(seconds, 1e-9),
    })
    window.clear()


class PooledCache:
    """The encoder's pooled output for the catalog: recomputed on each request, or once per
    run with a frozen encoder (``model.freeze_encoder``), whose cache never goes stale."""

    def __init__(self, catalog: CatalogTensors, device: torch.device, frozen: bool) -> None:
        self.catalog, self.device, self.frozen = catalog, device, frozen
        self.kept: torch.Tensor | None = None

    def get(self, engine) -> torch.Tensor:
        if not self.frozen:
            return refresh_pooled_cache(engine, self.catalog, self.device)
        if self.kept is None:
            self.kept = refresh_pooled_cache(engine, self.catalog, self.device)
        return self.kept


def validate_and_checkpoint(
    engine, state: TrainState, pooled_cache: PooledCache, validation, validate_k: int, rank: int,
) -> torch.Tensor:
    """Refresh the cache, rank the validation users, save every rank's shards, report to Ray.

    Returns the refreshed cache, for the steps that follow.
    """
    import ray.train

    since = time.perf_counter()
    pooled = pooled_cache.get(engine)
    engine.eval()
    items = item_vectors(engine, pooled, pooled_cache.catalog)
    state.metrics = full_ranking_metrics(engine, items, validation, validate_k)
    engine.train()
    add_time(state, "validate", since)
    report = {"step": state.step, "epoch": state.epoch, **state.metrics}
    if state.loss_curve:
        report["loss"] = state.loss_curve[-1]["loss"]
    with tempfile.TemporaryDirectory(prefix=f"recbatch-ckpt-r{rank}-") as folder:
        engine.save_checkpoint(folder, tag=CHECKPOINT_TAG)
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))
        ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(folder))
    return pooled


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: build, (re)load, train, validate, checkpoint."""
    import deepspeed
    import ray.train
    import ray.train.torch

    started = time.perf_counter()
    cfg = LoopConfig(**config)
    train_cfg = TrainConfig(**cfg.train)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"

    torch.manual_seed(train_cfg.seed)  # identical initial weights on every rank (ZeRO-3 partitions local copies)
    model, tokenizer = build_two_tower(cfg.encoder_dir, TwoTowerConfig(**cfg.tower), cfg.freeze_encoder)
    spec = UserFeatureSpec(**cfg.user_features)
    catalog = load_catalog(cfg.locate(cfg.catalog_path), tokenizer, cfg.max_text_tokens)
    validation = load_validation(cfg.locate(cfg.validation_path), model.config.history_length, spec)

    groups, peaks = parameter_groups(model, train_cfg)
    optimizer = torch.optim.AdamW(groups, lr=train_cfg.learning_rate)
    ds_config = build_deepspeed_config(
        train_cfg, on_gpu=on_gpu, world_size=world, total_steps=cfg.total_steps, group_learning_rates=peaks
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    state, restored = restore(engine, ray.train.get_checkpoint(), rank)

    shard = ray.train.get_dataset_shard("train")
    pooled_cache = PooledCache(catalog.to(device), device, cfg.freeze_encoder)
    B = train_cfg.batch_size
    window: list[float] = []  # losses of the micro-batches since the last loss-curve point
    batch_generator = torch.Generator()  # uniform extra negatives, reseeded per batch (resumable)
    last_reported = state.step if restored else -1
    add_time(state, "init", started)  # model, data, DeepSpeed set-up and restore of this attempt
    step_start = time.perf_counter()

    while state.epoch < train_cfg.epochs and state.step < cfg.total_steps:
        pooled = pooled_cache.get(engine)
        batches = shard.iter_batches(
            batch_size=B,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=4 * B,
            local_shuffle_seed=train_cfg.seed + state.epoch,
        )
        for index, batch in enumerate(batches):
            if index < state.batches_in_epoch:
                continue  # consumed before the restart
            batch_generator.manual_seed(train_cfg.seed * 1_000_003 + rank * 7919 + state.step * 31 + index)
            loss = step_loss(engine, batch_tensors(batch, device), pooled, pooled_cache.catalog, cfg, batch_generator)
            engine.backward(loss)
            engine.step()
            window.append(float(loss.detach()))
            state.batches_in_epoch = index + 1
            if engine.global_steps == state.step:
                continue  # inside a gradient-accumulation window
            state.step = int(engine.global_steps)

            if cfg.fail_at_step == state.step and not restored and rank == world - 1:
                die_once(cfg, state.step, rank)
            if state.step % train_cfg.log_every_steps == 0 or state.step >= cfg.total_steps:
                record_loss(state, window, float(engine.get_lr()[-1]), len(window) * B * world,
                            time.perf_counter() - step_start)
                step_start = time.perf_counter()
            if state.step % train_cfg.checkpoint_every_steps == 0 or state.step >= cfg.total_steps:
                pooled = validate_and_checkpoint(engine, state, pooled_cache, validation, train_cfg.validate_k, rank)
                last_reported = state.step
                step_start = time.perf_counter()
            if state.step >= cfg.total_steps:
                break
        else:  # the epoch's data is exhausted
            state.epoch += 1
            state.batches_in_epoch = 0
    if last_reported != state.step:
        validate_and_checkpoint(engine, state, pooled_cache, validation, train_cfg.validate_k, rank)
