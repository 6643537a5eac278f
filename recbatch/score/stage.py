"""The scoring stage: exact top-K for every user, staged with a manifest.

    items/ embeddings ──sort by id──▶ catalog [N, D] + eligible [N] ──(object refs, once per actor)──┐
    partition numbers 0..P-1 ──▶ ScoringWorker pool (one per item shard; score/actors.py) ◀────────────┘
        a worker per partition: users/ embeddings part p + snapshot interactions part p (score/inputs.py)
        ──▶ seen + blocked lists ──▶ top-K ──▶ ids, explanations ──▶ staging: part-PPPPP-*.parquet
        driver: per-part records (file, rows, sha256) ──▶ _manifest.json ──▶ staged/dt=YYYY-MM-DD/

The driver holds what grows with items (the catalog) and one record per part;
what grows with users is read, scored and written by the scoring workers, a
user partition at a time, each partition inside one process. The output is
*staged*, not published: the quality gate reads it, and
``recbatch.publish.publish_run`` swaps it into
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
from typing import Any

import numpy as np

from recbatch import folders
from recbatch.config import Config, ScoreConfig
from recbatch.data.snapshot import Snapshot, serving_events
from recbatch.embed.store import EmbeddingsFolder, read_matrix
from recbatch.errors import IntegrityError, UsageError
from recbatch.fs import Location, as_location, remove_tree
from recbatch.layout import RunLayout, model_version_of
from recbatch.parts import PARTITION, commit_parts
from recbatch.runtime import ensure_ray, require_resources
from recbatch.score.actors import SCORED_ON, SCORED_WITH, ScoringWorker
from recbatch.score.inputs import PartitionSource
from recbatch.score.prior import append_column, prior_column, user_column_value
from recbatch.score.ranking import Catalog, blocklist_path, catalog_of, kernel_settings, user_exclusions

log = logging.getLogger(__name__)

# Per-row provenance columns of the scorers -> the manifest keys listing their distinct values.
PROVENANCE = {SCORED_ON: "scoring_nodes", SCORED_WITH: "scoring_kernels"}

# Users per kernel call, in kernel user blocks: big enough to keep the kernel's
# threads busy, small enough that the lists of a batch scored against an early
# item shard stream on to the next shard's pool while the rest of the partition
# is scored.
BATCH_BLOCKS = 4
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
    every per-user row is read, scored and written by the scoring workers, one
    user partition at a time (``score_dataset``).
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
        source = PartitionSource(snapshot, users, catalog.vectors.shape[1], cfg.score, user_value)
        finished = score_dataset(partitions, source, catalog, model_version, cfg.score, staging, snapshot.id_type)
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


def _distinct(records: list[dict[str, Any]], column: str) -> list[str]:
    """Every value of a comma-joined provenance column over all parts: a kernel that silently
    fell back, or a node that should not score, shows in the manifest."""
    return sorted({v for r in records for v in r[column].split(",") if v})


def score_dataset(
    partitions, source: PartitionSource, catalog: Catalog, model_version: str, cfg: ScoreConfig,
    write_to: str | Path | Location, id_type: str,
):
    """One pool of ``ScoringWorker`` actors per item shard over the `partitions` dataset (a row per user
    partition): the first pool reads each partition's users from `source`, the last writes the lists
    into `write_to`. Returns the lazy Ray dataset of the per-part records."""
    import ray

    on_gpu = cfg.gpus_per_actor > 0
    if on_gpu and cfg.kernel == "native":
        raise UsageError("score.kernel = 'native' is the CPU kernel: use 'auto' or 'torch' with score.gpus_per_actor > 0")
    if on_gpu:
        require_resources("GPU", cfg.gpus_per_actor * cfg.num_actors, "score.gpus_per_actor x score.num_actors")
    require_resources(
        "CPU", cfg.item_shards * cfg.num_actors * cfg.cpus_per_actor,
        "score.item_shards x score.num_actors x score.cpus_per_actor",
        remedy="lower score.num_actors or score.cpus_per_actor",
    )
    actor = {"k": cfg.k, "filter_seen": cfg.filter_seen, **kernel_settings(cfg)}
    pool = {
        "compute": ray.data.ActorPoolStrategy(size=cfg.num_actors),
        "num_cpus": cfg.cpus_per_actor,
        "num_gpus": cfg.gpus_per_actor,
        "batch_format": "pyarrow",
        "zero_copy_batch": True,
    }
    if cfg.actor_resources:  # e.g. {"scorer": 1}: one actor per node that offers one
        pool["resources"] = dict(cfg.actor_resources)
    finisher = {
        "k": cfg.k,
        "model_version": model_version,
        "items": ray.put(catalog.vectors) if cfg.explanations else None,
        "write_to": as_location(write_to),
        "id_type": id_type,
        "rows_per_file": cfg.rows_per_file,
    }
    item_ids = ray.put(catalog.ids)
    bounds = np.linspace(0, catalog.size, cfg.item_shards + 1).astype(int)
    ds = partitions
    for shard, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        items = catalog.vectors[lo:hi]  # [n, D]
        if catalog.prior is not None:  # [n, D + 1]: the prior as one more dimension (score/prior.py)
            items = append_column(items, catalog.prior[lo:hi])
        first, last = shard == 0, shard == cfg.item_shards - 1
        worker = {
            "scorer": {**actor, "items": ray.put(np.ascontiguousarray(items)),
                       "eligible": ray.put(catalog.eligible[lo:hi]), "offset": int(lo)},
            "item_ids": item_ids,
            "batch_rows": cfg.user_block * BATCH_BLOCKS,
            "source": source if first else None,
            "finisher": finisher if last else None,
        }
        # The first pool takes one partition a call; later pools take the earlier pool's blocks as they come.
        ds = ds.map_batches(ScoringWorker, fn_constructor_kwargs=worker, batch_size=1 if first else None, **pool)
    return ds


# --------------------------------------------------------------------------- inputs


def load_catalog(snapshot: Snapshot, items_dir: str | Path | Location, cfg: ScoreConfig) -> Catalog:
    """Item vectors sorted by id, with the items every user may receive (``ranking.eligible_items``)."""
    ids, vectors = read_matrix(items_dir, "item_id")  # [N], [N, D]
    return catalog_of(snapshot, ids, vectors, cfg, items_dir)
