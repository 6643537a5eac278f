"""The training stage: snapshot in, published model artifact out.

    train(cfg, snapshot) ─▶ prepare inputs (catalog on the driver; examples and validation
                            users by one Ray task per snapshot partition)
                         ─▶ TorchTrainer: N workers × train_loop_per_worker (DeepSpeed)
                         ─▶ latest Ray checkpoint (every rank's shards)
                         ─▶ export: consolidated fp32 weights ─▶ models/<model_version>/

Runs live under ``<root>/checkpoints/<snapshot hash[:12]>-<UTC time>/``: Ray
Train's storage for that run (checkpoints, kept per ``train.keep_checkpoints``)
plus ``inputs/`` (the prepared catalog and Parquet parts, train/examples.py).
``resume=True`` reopens the most recent run of the same snapshot; Ray Train then
hands every worker its latest checkpoint, exactly as after a worker failure.

The root may be an object store (``s3://``): the run folder is then a prefix
there, handed to Ray Train as ``storage_path`` plus the root's pyarrow
filesystem, so the inputs and checkpoints are where every worker on every node
reads them, and the artifact is published through recbatch/folders.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import torch

from recbatch import testing
from recbatch.config import Config
from recbatch.data.snapshot import Snapshot
from recbatch.errors import StageFailed, UsageError
from recbatch.fs import Location, check_access
from recbatch.layout import RunLayout
from recbatch.model.artifact import publish_artifact, tower_config
from recbatch.model.encoder import resolve_encoder
from recbatch.model.two_tower import TwoTower, TwoTowerConfig, build_two_tower
from recbatch.parquet_io import read_dataset
from recbatch.runtime import ensure_ray, require_resources, resolve_use_gpu
from recbatch.train.examples import PreparedInputs, prepare_inputs
from recbatch.train.loop import CHECKPOINT_TAG, STATE_FILE, LoopConfig, TrainState, train_loop_per_worker

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"


def run_directory(layout: RunLayout, snapshot: Snapshot, resume: bool) -> Location:
    """A new run folder, or with `resume` the most recent one for this snapshot."""
    if resume:
        runs = layout.at.training_runs(snapshot.hash)
        if not runs:
            raise UsageError(f"--resume: no training run of snapshot {snapshot.hash} under {layout.at.checkpoints}")
        return runs[-1]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    return layout.at.training_run(snapshot.hash, stamp)


def steps_per_epoch(num_examples: int, cfg: Config) -> int:
    """Optimizer steps per epoch: each worker streams an equal share in full micro-batches."""
    t = cfg.train
    micro_batches = (num_examples // t.num_workers) // t.batch_size
    steps = micro_batches // t.gradient_accumulation_steps
    if steps == 0:
        raise UsageError(
            f"{num_examples} training examples are too few for {t.num_workers} workers × batch {t.batch_size} × "
            f"accumulation {t.gradient_accumulation_steps}: lower train.batch_size or train.num_workers"
        )
    return steps


def _fault_injection(cfg: Config) -> int | None:
    """The test-only step at which a worker dies (``recbatch.testing``), checked against the checkpoints."""
    step = testing.fail_at_step()
    if step is not None and step <= cfg.train.checkpoint_every_steps:
        raise UsageError(
            f"{testing.FAIL_AT_STEP} = {step} must be > train.checkpoint_every_steps = "
            f"{cfg.train.checkpoint_every_steps}, so the restarted run resumes from a checkpoint and the fault fires once"
        )
    return step


def _check_cpus_left_for_data(cfg: Config) -> None:
    """Refuse a worker group that takes every CPU: Ray Data's read tasks would never
    be scheduled and training would wait forever, silently (seen on a 2-core box)."""
    require_resources(
        "CPU", cfg.train.num_workers * cfg.train.cpus_per_worker, "train.num_workers x train.cpus_per_worker",
        spare_for="reading the training data", remedy="lower train.cpus_per_worker or raise ray.num_cpus",
    )


def train(cfg: Config, snapshot: Snapshot, resume: bool = False, trained_for: dt.date | None = None) -> Location:
    """Fine-tune the two towers on `snapshot` with Ray Train + DeepSpeed; return the artifact folder.

    `trained_for`: the nightly run date this model is for, kept in the card (``trained_for``) so the
    retraining cadence counts in run dates, never by the wall clock.
    """
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fail_at_step = _fault_injection(cfg)
    layout = RunLayout.of(cfg.root, cfg.storage)
    check_access(layout.at.root)  # a wrong bucket or credentials: refused, naming the bucket, before any work
    ensure_ray(cfg.ray)
    _check_cpus_left_for_data(cfg)
    encoder_dir = resolve_encoder(cfg.model.encoder)
    run_dir = run_directory(layout, snapshot, resume)
    prepared = prepare_inputs(
        snapshot,
        run_dir.join(INPUTS_DIR),
        history_length=cfg.model.history_length,
        use_item_ids=cfg.model.use_item_id_embedding,
        validate_users=cfg.train.validate_users,
        min_rating=cfg.ingest.min_rating,
        seed=cfg.train.seed,
        objective=cfg.train.objective,
    )
    total_steps = steps_per_epoch(prepared.num_examples, cfg) * cfg.train.epochs
    if cfg.train.max_steps is not None:
        total_steps = min(total_steps, cfg.train.max_steps)
    tower = tower_config(cfg, prepared.user_features, len(prepared.warm_item_ids))
    loop_config = make_loop_config(cfg, encoder_dir, tower, prepared, total_steps, fail_at_step)

    use_gpu = resolve_use_gpu(cfg.train.use_gpu)
    resources: dict[str, float] = {"CPU": cfg.train.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    # The parts are read in a new seeded order every epoch (see train/examples.py: why no global shuffle).
    dataset = read_dataset(
        prepared.examples.path,
        prepared.examples.filesystem,
        shuffle=ray.data.FileShuffleConfig(seed=cfg.train.seed, reseed_after_execution=True),
        override_num_blocks=max(4, 2 * cfg.train.num_workers),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(loop_config),
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_dir.name,
            **_run_storage(run_dir.parent),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            worker_runtime_env={"env_vars": worker_env(cfg)},
        ),
        datasets={"train": dataset},
    )
    log.info("training %d steps on %d workers (gpu=%s) into %s", total_steps, cfg.train.num_workers, use_gpu, run_dir)
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; keep the cause in the message
        raise StageFailed(f"train: Ray Train run {run_dir} failed: {exc}") from exc
    if result.checkpoint is None:
        raise StageFailed(f"train: run {run_dir} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        return export_artifact(
            Path(folder),
            encoder_dir,
            tower,
            prepared,
            layout.at.models,
            cfg=cfg,
            snapshot=snapshot,
            extra_card={"train_run": run_dir.uri, "total_steps": total_steps, "num_workers": cfg.train.num_workers,
                        **({"trained_for": trained_for.isoformat()} if trained_for else {})},
        )


def _run_storage(checkpoints: Location) -> dict[str, Any]:
    """Ray Train's ``storage_path`` (and on an object store ``storage_filesystem``) for `checkpoints`."""
    if checkpoints.is_object_store:
        return {"storage_path": checkpoints.path, "storage_filesystem": checkpoints.filesystem}
    return {"storage_path": str(Path(checkpoints.path).resolve())}


def make_loop_config(
    cfg: Config, encoder_dir: str, tower: TwoTowerConfig, prepared: PreparedInputs, total_steps: int,
    fail_at_step: int | None = None,
) -> LoopConfig:
    """What every worker receives: plain data only (paths, dicts, numbers)."""
    return LoopConfig(
        encoder_dir=encoder_dir,
        tower=dataclasses.asdict(tower),
        train=dataclasses.asdict(cfg.train),
        user_features=dataclasses.asdict(prepared.user_features),
        loss=cfg.model.loss,
        temperature=cfg.model.temperature,
        logq_correction=cfg.model.logq_correction,
        extra_negatives=cfg.model.extra_negatives,
        freeze_encoder=cfg.model.freeze_encoder,
        max_text_tokens=cfg.model.max_text_tokens,
        catalog_path=prepared.catalog.uri,
        validation_path=prepared.validation.uri,
        storage=dataclasses.asdict(cfg.storage),
        total_steps=total_steps,
        objective=cfg.train.objective,
        full_softmax=prepared.catalog_items <= cfg.model.full_softmax_items,
        fail_at_step=fail_at_step,
        fault_wait_s=testing.fault_wait_s() if fail_at_step is not None else 0.0,
    )


def worker_env(cfg: Config) -> dict[str, str]:
    """Environment of the training workers: offline HF, and a persistent cache for DeepSpeed's JIT ops."""
    return {
        "TORCH_EXTENSIONS_DIR": str(Path(cfg.train.extensions_dir).expanduser()),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def consolidated_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a Ray checkpoint holding every rank's DeepSpeed files.

    ZeRO 1-3 spread the fp32 master weights over the ranks' optimizer shards:
    DeepSpeed's own ``zero_to_fp32`` stitches them back. Stage 0 keeps the
    whole module in rank 0's model-states file.
    """
    ds_dir = checkpoint_dir / CHECKPOINT_TAG
    if any(ds_dir.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=CHECKPOINT_TAG)
    else:
        state = torch.load(ds_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def export_artifact(
    checkpoint_dir: Path,
    encoder_dir: str,
    tower: TwoTowerConfig,
    prepared: PreparedInputs,
    models: Location,
    *,
    cfg: Config,
    snapshot: Snapshot,
    extra_card: dict[str, Any] | None = None,
) -> Location:
    """Turn a training checkpoint into the DeepSpeed-free inference artifact (published complete or absent)."""
    model, tokenizer = build_two_tower(encoder_dir, dataclasses.replace(tower))
    load_weights(model, consolidated_state_dict(checkpoint_dir), checkpoint_dir)
    state = TrainState(**json.loads((checkpoint_dir / STATE_FILE).read_text()))
    return publish_artifact(
        model,
        tokenizer,
        models,
        item_ids=prepared.warm_item_ids,
        user_features=prepared.user_features,
        max_text_tokens=cfg.model.max_text_tokens,
        id_type=snapshot.id_type,
        snapshot_hash=snapshot.hash,
        step=state.step,
        metrics=state.metrics,
        loss_curve=state.loss_curve,
        extra_card={"config": cfg.to_record(), "trained": True, **(extra_card or {})},
    )


def load_weights(model: TwoTower, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load, tolerating only buffers the encoder recreates itself (e.g. position ids)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in buffers]
    if missing or unexpected:
        raise StageFailed(f"train: checkpoint {source} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
