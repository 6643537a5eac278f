"""The embedding stage: items, then users, encoded by Ray Data actor pools.

    items.parquet ─read_parquet─▶ rows to encode ─▶ ItemEncoder pool (render, bucket, encode) ─┐
                  previous rows of this model version with the same input_hash ──────────────┴▶ items/
    user partition p ─▶ PartitionEncoder pool (item matrix: one Ray object): histories of p, reuse of the
                        previous rows of p with the same input_hash, user tower on the rest ─▶ users/part-p-*

Which items to encode is decided on the driver from ids and input hashes only
(incremental.py), the vectors stay in Ray Data; users are decided, encoded and
written by the actor that holds their partition. Each output is
``embeddings/<model_version>/{items,users}`` under a root of either kind,
published through recbatch/folders.py with a manifest that counts what was
encoded and what was reused. Inputs are read through manifests (the
snapshot's, the previous embeddings'), never by listing a folder, and workers
get ``Location``s, never keys, so an ``s3://`` root works as a local one does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from recbatch import folders
from recbatch.config import Config, EmbedConfig
from recbatch.data.partition import SCHEME as PARTITION_SCHEME
from recbatch.data.snapshot import Snapshot
from recbatch.embed.incremental import ReusePlan, plan_reuse
from recbatch.embed.items import ItemEncoder, item_hashes
from recbatch.embed.store import EmbeddingsFolder, publish_embeddings, read_matrix
from recbatch.embed.users import PartitionEncoder
from recbatch.errors import DataValidationError, IntegrityError, UsageError
from recbatch.fs import Location, locate, remove_tree
from recbatch.layout import RunLayout
from recbatch.model.features import UserFeatureSpec
from recbatch.parts import PARTITION, commit_parts
from recbatch.parquet_io import read_dataset
from recbatch.runtime import ensure_ray, require_resources, resolve_precision
from recbatch.schemas import ITEM_TEXT_COLUMNS, embeddings_schema

log = logging.getLogger(__name__)

# Rows per Ray Data batch handed to an actor, in model batches: the window the
# actor sorts by length. Wider windows bucket better but hold more in memory.
WINDOW_BATCHES = 8


@dataclass(frozen=True)
class EmbedResult:
    items_dir: Location  # embeddings/<model_version>/items under the root, of either kind
    users_dir: Location
    model_version: str
    items_encoded: int
    items_reused: int
    users_encoded: int
    users_reused: int
    seconds: float


def embed(cfg: Config, snapshot: Snapshot, model_dir: str | Path | Location) -> EmbedResult:
    """Embed every item and user of `snapshot` with the model at `model_dir` (a local path,
    ``s3://...`` reached as ``cfg.storage`` says, or a Location) into ``cfg.root``.

    With ``embed.incremental`` (the default) rows whose input is unchanged
    since the last run of the same model version are reused, not re-encoded.
    """
    from recbatch.model.artifact import read_model_card, trained_temperature

    started = time.perf_counter()
    model = model_dir if isinstance(model_dir, Location) else locate(model_dir, cfg.storage)
    card = read_model_card(model)
    version = card["model_version"]
    if card.get("id_type", snapshot.id_type) != snapshot.id_type:
        raise UsageError(f"{model} was trained on {card['id_type']} ids but snapshot {snapshot.hash} "
                         f"has {snapshot.id_type} ids: train a model on this catalog first")
    layout = RunLayout.of(cfg.root, cfg.storage)
    ensure_ray(cfg.ray)
    actor = _actor_settings(cfg.embed, model)
    common = {"model_version": version, "snapshot_hash": snapshot.hash, "id_type": snapshot.id_type,
              "embedding_dim": int(card["model"]["embedding_dim"]), "device": actor["device"],
              "precision": actor["precision"], "temperature": trained_temperature(card)}

    items_dir = layout.at.embeddings(version, "items")
    current_items = _current_item_hashes(snapshot)
    items_plan = _encode_incrementally(
        _snapshot_items(snapshot, current_items.num_rows, cfg.embed), current_items, "item_id", ItemEncoder,
        {**actor, "max_batch_tokens": cfg.embed.max_batch_tokens},
        items_dir, cfg.embed, {**common, "kind": "item_embeddings"},
    )

    item_ids, item_matrix = read_matrix(items_dir, "item_id")  # [N], [N, D]
    users_dir = layout.at.embeddings(version, "users")
    encoder = {**actor, "item_matrix": _put(item_matrix), "item_hashes": _put(_in_matrix_order(current_items, item_ids)),
               "feature_columns": UserFeatureSpec(**card["user_features"]).columns}
    encoded, reused = _embed_users(snapshot, encoder, users_dir, cfg.embed, {**common, "kind": "user_embeddings"})
    seconds = time.perf_counter() - started
    log.info("embedded items (%d encoded, %d reused) and users (%d encoded, %d reused) in %.1f s",
             items_plan.encoded, items_plan.reused, encoded, reused, seconds)
    return EmbedResult(items_dir, users_dir, version, items_plan.encoded, items_plan.reused, encoded, reused, seconds)


def _in_matrix_order(hashes: pa.Table, item_ids: pa.Array) -> pa.Table:
    """``(item_id, input_hash)`` with row i the item of matrix row i (items without a vector dropped)."""
    frame = pl.DataFrame({"item_id": pl.Series(item_ids)}).join(
        pl.from_arrow(hashes), on="item_id", how="left", maintain_order="left")
    return frame.to_arrow()


def _embed_users(snapshot: Snapshot, encoder: dict[str, Any], final: Location, cfg: EmbedConfig,
                 fields: dict[str, Any]) -> tuple[int, int]:
    """Embed every user partition with a pool of ``PartitionEncoder`` actors; publish the parts.

    Returns (users encoded, users whose previous vector was reused)."""
    import ray

    started = time.perf_counter()
    previous = _previous(final, cfg)
    staging = folders.staging_for(final)
    try:
        partitions = ray.data.from_items([{PARTITION: p} for p in range(snapshot.partitions)],
                                         override_num_blocks=snapshot.partitions)
        records = partitions.map_batches(
            PartitionEncoder,
            fn_constructor_kwargs={**encoder, "snapshot": snapshot, "previous": previous, "write_to": staging},
            compute=ray.data.ActorPoolStrategy(size=min(cfg.num_actors, snapshot.partitions)),
            num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor, batch_size=1, batch_format="pyarrow",
        ).take_all()  # one small record per partition
        encoded, reused = sum(r["encoded"] for r in records), sum(r["reused"] for r in records)
        commit_parts(staging, records, {
            **fields, "encoded": encoded, "reused": reused,
            "partitioning": {"by": "user_id", "scheme": PARTITION_SCHEME, "partitions": snapshot.partitions},
            "seconds": round(time.perf_counter() - started, 3),
        })
    except BaseException:
        remove_tree(staging)
        raise
    folders.publish(staging, final)
    log.info("%s: %d encoded, %d reused", final, encoded, reused)
    return encoded, reused


# --------------------------------------------------------------------------- pieces


def _actor_settings(cfg: EmbedConfig, model: Location) -> dict[str, Any]:
    """Constructor arguments shared by the item and user actors: the model (each actor loads it from
    its Location, on either kind of root), device, precision, threads."""
    on_gpu = cfg.gpus_per_actor > 0
    if on_gpu:
        require_resources("GPU", cfg.gpus_per_actor * cfg.num_actors, "embed.gpus_per_actor x embed.num_actors")
    return {
        "model_dir": model,
        "device": "cuda" if on_gpu else "cpu",
        "precision": resolve_precision(cfg.precision, on_gpu),
        "threads": max(1, int(cfg.cpus_per_actor)),
        "batch_size": cfg.batch_size,
    }


def _num_blocks(rows: int, cfg: EmbedConfig) -> int:
    """At least two blocks per actor (one Parquet file is one block: one busy actor otherwise)."""
    return max(2 * cfg.num_actors, math.ceil(rows / (cfg.batch_size * WINDOW_BATCHES)), 1)


def _snapshot_items(snapshot: Snapshot, rows: int, cfg: EmbedConfig):
    """The snapshot's `rows` item rows (the files its manifest names) as a Ray dataset of several blocks."""
    files = snapshot.named_files("items")
    if rows == 0:
        raise DataValidationError(f"{', '.join(map(str, files))}: the snapshot has no items to embed")
    return (read_dataset([f.path for f in files], files[0].filesystem)
            .select_columns(_model_columns(snapshot)).repartition(_num_blocks(rows, cfg)))


def _model_columns(snapshot: Snapshot) -> list[str]:
    """The item columns the model sees: the id and the text columns present (not other attributes)."""
    names = snapshot.items().collect_schema().names()
    return [c for c in ("item_id", *ITEM_TEXT_COLUMNS) if c in names]


def _current_item_hashes(snapshot: Snapshot) -> pa.Table:
    """``(item_id, input_hash)`` of every snapshot item."""
    return item_hashes(snapshot.items().select(_model_columns(snapshot)).collect())


def _previous(final: Location, cfg: EmbedConfig) -> EmbeddingsFolder | None:
    """The last complete embeddings of this model version, to reuse from (none with ``--full``)."""
    if not cfg.incremental:
        return None
    try:
        return EmbeddingsFolder.open(final)
    except IntegrityError:  # none yet, or a run killed before it completed: encode everything
        return None


def _put(value: Any) -> Any:
    import ray

    return ray.put(value)


def _encode_incrementally(
    inputs,  # a Ray dataset of the encoder's input rows
    current: pa.Table,  # (id, input_hash) of every row of `inputs`
    id_column: str,
    encoder: type,
    encoder_args: dict[str, Any],
    final: Location,
    cfg: EmbedConfig,
    fields: dict[str, Any],
) -> ReusePlan:
    """Encode new/changed rows with an actor pool, copy reusable ones, publish both together."""
    import ray
    from ray.data.expressions import col

    started = time.perf_counter()
    previous = _previous(final, cfg)
    plan = plan_reuse(current, previous.read([id_column, "input_hash"]) if previous else None, id_column)
    parts = []
    if plan.encoded:
        todo = inputs.filter(expr=col(id_column).is_in(plan.encode_ids.to_pylist())) if plan.reused else inputs
        parts.append(
            todo.map_batches(
                encoder,
                fn_constructor_kwargs=encoder_args,
                compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
                num_cpus=cfg.cpus_per_actor,
                num_gpus=cfg.gpus_per_actor,
                batch_size=cfg.batch_size * WINDOW_BATCHES,
                batch_format="pyarrow",
            )
        )
    if plan.reused:
        assert previous is not None
        parts.append(previous.dataset().filter(expr=col(id_column).is_in(plan.reuse_ids.to_pylist())))
    schema = embeddings_schema(fields["id_type"], id_column)
    if not parts:
        parts.append(ray.data.from_arrow(schema.empty_table()))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    publish_embeddings(ds, final, schema, {**fields, "encoded": plan.encoded, "reused": plan.reused}, started)
    log.info("%s: %d encoded, %d reused", final, plan.encoded, plan.reused)
    return plan
