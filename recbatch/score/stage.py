"""The scoring stage: exact top-K for every user, staged with a manifest.

    items/ embeddings ──sort by id──▶ catalog [N, D] + eligible [N] ──(object refs)─────────┐
    user partition p:  users/ embeddings part p + snapshot interactions part p              │
        ──partition_users (a Ray task: seen + blocked lists)──▶ blocks of users             │
        ──▶ ShardScorer pool per item shard ──▶ Finisher pool: writes parts ◀────────────────┘
                                                   │ staging (folders.staging_for): part-PPPPP-*.parquet
        driver: per-part records (file, rows, sha256) ──▶ _manifest.json ──▶ staged/dt=YYYY-MM-DD/

The driver holds what grows with items (the catalog) and one record per part;
what grows with users is read, scored and written by workers, a user
partition at a time. The output is *staged*, not published: the quality gate
reads it, and ``recbatch.publish.publish_run`` swaps it into
``recommendations/`` only if the gate passes. Everything the rows depend on
(model version, snapshot, config, timings) goes into the manifest.

The root may be local or an object store (recbatch/layout.py): every folder is
a ``fs.Location``, the inputs are read through their manifests
(``EmbeddingsFolder``, ``Snapshot.scan_partition``) and the staged run is
written and committed through recbatch/folders.py, so workers on any node
reach the same files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch import folders
from recbatch.config import Config, ScoreConfig
from recbatch.data.snapshot import Snapshot
from recbatch.embed.store import (
    EmbeddingsFolder, list_column_to_matrix, matrix_to_list_array, read_matrix, read_user_partition,
)
from recbatch.embed.users import serving_events
from recbatch.errors import DataValidationError, IntegrityError, UsageError
from recbatch.fs import Location, as_location, remove_tree
from recbatch.layout import RunLayout, model_version_of
from recbatch.parts import PARTITION, commit_parts
from recbatch.runtime import ensure_ray, require_resources
from recbatch.score.actors import SCORED_ON, SCORED_WITH, Finisher, ShardScorer, resolve_ref
from recbatch.score.prior import append_column, prior_column, user_column_value
from recbatch.score.ranking import Catalog, blocklist_path, catalog_of, kernel_settings, user_exclusions

log = logging.getLogger(__name__)

# Per-row provenance columns of the scorers -> the manifest keys listing their distinct values.
PROVENANCE = {SCORED_ON: "scoring_nodes", SCORED_WITH: "scoring_kernels"}

# Users per scorer call, in kernel user blocks: big enough to keep the kernel's
# threads busy, small enough to stream. Ray Data coalesces a task's output into
# blocks of up to ``DataContext.target_max_block_size`` (a whole 250k-user
# partition), so the scorers cut their input into batches of this size; their
# own output then reaches the finishers in blocks of that limit, while the rest
# of the partition is still being scored.
BATCH_BLOCKS = 4
# CPUs each partition-reading task asks for: it mostly waits on Parquet reads,
# and must fit beside scorer actors that take the rest of the node.
PREPARE_CPUS = 0.5
# CPUs each finisher asks for (one per scoring actor): it converts positions to ids
# and writes Parquet, a fraction of the scorers' work.
FINISHER_CPUS = 0.25
# ScoreConfig fields that only say how the lists are computed (tiles, shards, actors,
# files), never what they hold: changing them does not make a scored date stale.
EXECUTION_ONLY = frozenset({
    "user_block", "item_tile", "item_shards", "num_actors", "cpus_per_actor", "gpus_per_actor",
    "rows_per_file", "actor_resources",
})


def list_settings(cfg: ScoreConfig) -> dict[str, Any]:
    """Every scoring setting the lists depend on, besides the model and the snapshot.

    Written into the staged manifest; the nightly rescoring a date whose manifest
    names other settings is what makes "change ``score.k`` (or the prior, or the
    blocklist file) and rerun the date" publish the new lists. The blocklist counts
    by its content, so an edited file rescores too.
    """
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in EXECUTION_ONLY}
    path = blocklist_path(cfg)  # a missing file: the UsageError scoring itself would give
    if path is not None:
        settings["blocklist"] = {"path": cfg.blocklist, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return settings


def score(cfg: Config, snapshot: Snapshot, items_dir: str | Path | Location, users_dir: str | Path | Location,
          run_date: dt.date | str) -> Location:
    """Score every user with embeddings in `users_dir`; write and return ``layout.at.staged_for(run_date)``.

    The driver holds the catalog (it grows with items) and the per-part records;
    every per-user row is read, scored and written by Ray workers, one user
    partition at a time (``partition_users``, ``Finisher``).
    """
    import ray

    timings: dict[str, float] = {}
    started = time.perf_counter()
    items = EmbeddingsFolder.open(items_dir)
    users = EmbeddingsFolder.open(users_dir)
    model_version = model_version_of(items.manifest, items.location.parent.path)  # embeddings/<version>/items
    catalog = load_catalog(snapshot, items.location, cfg.score)
    user_value = None
    if cfg.score.popularity_prior_weight > 0:
        temperature = items.manifest.get("temperature") or cfg.model.temperature
        prior = prior_column(cfg.score, serving_events(snapshot), catalog.ids)
        catalog = dataclasses.replace(catalog, prior=prior)
        user_value = user_column_value(cfg.score, temperature)
    timings["prepare"] = round(time.perf_counter() - started, 3)

    ensure_ray(cfg.ray)
    t0 = time.perf_counter()
    staged = RunLayout.of(cfg.root, cfg.storage).at.staged_for(run_date)
    staging = folders.staging_for(staged)
    try:
        partitions = ray.data.from_items([{PARTITION: p} for p in range(snapshot.partitions)],
                                         override_num_blocks=snapshot.partitions)
        partitions = partitions.map_batches(
            partition_users, batch_size=1, batch_format="pyarrow",
            # Args from a function keep Ray Data from fusing these tasks into the scorer actors: one
            # partition then feeds every scorer, instead of one scorer reading and scoring it alone.
            ray_remote_args_fn=_prepare_task_args,
            fn_kwargs={"snapshot": snapshot, "users": users,
                       "item_ids": ray.put(catalog.ids), "dim": catalog.vectors.shape[1], "cfg": cfg.score,
                       "user_value": user_value},
        )
        finished = score_dataset(partitions, catalog, model_version, cfg.score, staging, snapshot.id_type)
        records = [row for batch in finished.iter_batches(batch_format="pyarrow", batch_size=None)
                   for row in batch.to_pylist()]  # one small record per part written
        timings["score_and_write"] = round(time.perf_counter() - t0, 3)
        scored, expected = sum(r["rows"] for r in records), users.rows
        if scored != expected:  # never leave a short run looking complete
            raise IntegrityError(f"{staged}: scored {scored} users of the {expected} in {users.location}")
        commit_parts(staging, records, {
            "run_date": str(run_date),
            "model_version": model_version,
            "snapshot_hash": snapshot.hash,
            "k": cfg.score.k,
            "list_settings": list_settings(cfg.score),
            "items": catalog.size,
            "eligible_items": int(catalog.eligible.sum()),
            "config": cfg.to_record(),
            "id_type": snapshot.id_type,
            "users": scored,
            "timings": timings,
            **{key: _distinct(records, column) for column, key in PROVENANCE.items()},
        })
    except BaseException:
        remove_tree(staging)
        raise
    folders.publish(staging, staged)
    log.info("scored %d users x %d items (k=%d) in %s", scored, catalog.size, cfg.score.k, timings)
    return staged


def _prepare_task_args() -> dict[str, Any]:
    return {"num_cpus": PREPARE_CPUS}


def _distinct(records: list[dict[str, Any]], column: str) -> list[str]:
    """Every value of a comma-joined provenance column over all parts: a kernel that silently
    fell back, or a node that should not score, shows in the manifest."""
    return sorted({v for r in records for v in r[column].split(",") if v})


def score_dataset(
    ds, catalog: Catalog, model_version: str, cfg: ScoreConfig, write_to: str | Path | Location, id_type: str
):
    """Chain one scorer pool per item shard, then the finishers (lazy Ray dataset), which write the
    lists into `write_to`: the dataset holds their per-part records."""
    import ray

    on_gpu = cfg.gpus_per_actor > 0
    if on_gpu and cfg.kernel == "native":
        raise UsageError("score.kernel = 'native' is the CPU kernel: use 'auto' or 'torch' with score.gpus_per_actor > 0")
    if on_gpu:
        require_resources("GPU", cfg.gpus_per_actor * cfg.num_actors, "score.gpus_per_actor x score.num_actors")
    finisher_cpus = min(cfg.cpus_per_actor, FINISHER_CPUS)
    require_resources(
        "CPU", cfg.item_shards * cfg.num_actors * cfg.cpus_per_actor + cfg.num_actors * finisher_cpus + PREPARE_CPUS,
        f"score.item_shards x score.num_actors x score.cpus_per_actor (+ {finisher_cpus} per finisher and "
        f"{PREPARE_CPUS} to read partitions)", remedy="lower score.num_actors or score.cpus_per_actor",
    )
    actor = {"k": cfg.k, "filter_seen": cfg.filter_seen, **kernel_settings(cfg)}
    pool = {
        "compute": ray.data.ActorPoolStrategy(size=cfg.num_actors),
        "num_cpus": cfg.cpus_per_actor,
        "num_gpus": cfg.gpus_per_actor,
        "batch_size": cfg.user_block * BATCH_BLOCKS,
        "batch_format": "pyarrow",
        "zero_copy_batch": True,
    }
    if cfg.actor_resources:  # e.g. {"scorer": 1}: one actor per node that offers one
        pool["resources"] = dict(cfg.actor_resources)
    bounds = np.linspace(0, catalog.size, cfg.item_shards + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        items = catalog.vectors[lo:hi]  # [n, D]
        if catalog.prior is not None:  # [n, D + 1]: the prior as one more dimension (score/prior.py)
            items = append_column(items, catalog.prior[lo:hi])
        shard = {
            "items": ray.put(np.ascontiguousarray(items)),
            "eligible": ray.put(catalog.eligible[lo:hi]),
            "offset": int(lo),
        }
        ds = ds.map_batches(ShardScorer, fn_constructor_kwargs={**actor, **shard}, **pool)
    finisher = {
        "item_ids": ray.put(catalog.ids),
        "k": cfg.k,
        "model_version": model_version,
        "items": ray.put(catalog.vectors) if cfg.explanations else None,
        "write_to": as_location(write_to),
        "id_type": id_type,
        "rows_per_file": cfg.rows_per_file,
    }
    return ds.map_batches(
        Finisher, fn_constructor_kwargs=finisher, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=finisher_cpus, batch_format="pyarrow", batch_size=None,
    )


# --------------------------------------------------------------------------- inputs


def load_catalog(snapshot: Snapshot, items_dir: str | Path | Location, cfg: ScoreConfig) -> Catalog:
    """Item vectors sorted by id, with the items every user may receive (``ranking.eligible_items``)."""
    ids, vectors = read_matrix(items_dir, "item_id")  # [N], [N, D]
    return catalog_of(snapshot, ids, vectors, cfg, items_dir)


def partition_users(
    batch: pa.Table, *, snapshot: Snapshot, users: EmbeddingsFolder, item_ids: Any,
    dim: int, cfg: ScoreConfig, user_value: float | None,
) -> Iterator[pa.Table]:
    """``user_id, embedding, seen, blocked, partition`` for the users of one partition (a Ray task).

    ``seen`` holds the catalog positions of every item the user interacted with
    (the nightly run filters all of history); ``blocked`` the positions the
    per-user blocklist removes. The partition's users are read from partition
    ``p`` of the embeddings and of the snapshot only (a worker holds one
    partition at most); the scorers take them ``user_block x BATCH_BLOCKS``
    rows at a time.
    """
    (partition,) = batch.column(PARTITION).to_pylist()
    item_ids = resolve_ref(item_ids)
    rows = pl.from_arrow(read_user_partition(users, partition, snapshot.partitions, ["user_id", "embedding"]))
    _check_user_vectors(rows, users.location, dim)
    exclusions = user_exclusions(serving_events(snapshot, partition), rows.lazy().select("user_id"), item_ids,
                                 cfg, snapshot)
    rows = (
        rows.lazy().join(exclusions, on="user_id", how="left", maintain_order="left")
        .with_columns(pl.lit(partition, dtype=pl.Int32).alias(PARTITION))
        .collect().to_arrow()
    )
    if user_value is not None:  # the popularity prior's user side (score/prior.py)
        rows = _append_to_embeddings(rows, user_value)
    yield rows


def _check_user_vectors(users: pl.DataFrame, users_dir: Location, dim: int) -> None:
    """Every user vector has the item dimension and only finite values (else nothing is scored)."""
    if not users.height:
        return
    lengths = users["embedding"].list.len()
    if lengths.n_unique() != 1 or lengths[0] != dim:
        raise DataValidationError(
            f"{users_dir}: column 'embedding' lengths {sorted(lengths.unique().to_list())[:5]} do not all "
            f"equal the item embedding dimension {dim}"
        )
    bad = users.filter(~pl.col("embedding").list.eval(pl.element().is_finite()).list.all())
    if bad.height:
        raise DataValidationError(
            f"{users_dir}: column 'embedding' has {bad.height} rows with NaN/inf values, "
            f"e.g. users {bad['user_id'].head(5).to_list()}"
        )


def _append_to_embeddings(users: pa.Table, value: float) -> pa.Table:
    """Each user's embedding [D] -> [D + 1] with `value` appended (the prior's user side)."""
    column = users.column("embedding")
    widened = append_column(list_column_to_matrix(column), value)  # [U, D] -> [U, D + 1]
    array = matrix_to_list_array(widened).cast(column.type)
    return users.set_column(users.schema.get_field_index("embedding"), "embedding", array)
