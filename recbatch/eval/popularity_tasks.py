"""Per-item counts over every user's pairs, one Ray task per snapshot partition: the driver adds small arrays.

The gate's popularity floor ranks a slice of users (``eval.holdout_users``)
but counts what every user interacted with. A task reads one user partition
of the snapshot's split table, keeps each (user, item) pair once with its
latest time (`latest_pairs`), and returns one number per catalog item; the
driver adds the partitions' arrays in partition order. So the driver holds
the catalog, never the interactions, and the sums are those of one process
counting the partitions in turn (``data/ingest_tasks.map_tasks``: in this
process for a snapshot of one partition, as ingest does).

The snapshot is handed to the tasks as a ``Snapshot`` (its folder a
``fs.Location``), so a worker reads a local or an object-store root the same
way, resolving its own credentials.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recbatch.config import RayConfig
from recbatch.data.ingest_tasks import map_tasks, runs_on_workers
from recbatch.data.split import days_before_newest


def latest_pairs(rows: pl.LazyFrame, newest: dt.datetime) -> pl.LazyFrame:
    """Each (user, item) of `rows` once, with its latest ``ts`` and that time's ``age_days`` before `newest`.

    A user's rows are all in one partition, so pairs deduplicated partition by
    partition are the pairs of the whole table.
    """
    return rows.group_by("user_id", "item_id").agg(pl.col("ts").max()).with_columns(
        age_days=days_before_newest(newest=newest))


@dataclass(frozen=True)
class EveryonesPairs:
    """Every user's (item column, age) pairs of some splits, counted per item where they lie."""

    snapshot: Any  # the Snapshot whose split table is read, a partition per task
    splits: tuple[str, ...]  # e.g. ("train", "validation")
    newest: dt.datetime  # the newest ts of those splits' rows: what ages count back from
    catalog: pl.DataFrame  # item_id, col: the matrix column of each catalog item
    ray: RayConfig  # how to reach the cluster when the snapshot has more than one partition

    def per_item(self, count: pl.Expr) -> np.ndarray:
        """[N] float32: `count` (a sum over a partition's ``col, age_days`` rows) per item column,
        summed over every partition."""
        on_workers = runs_on_workers(self.snapshot.partitions)
        if on_workers:
            from recbatch.runtime import ensure_ray

            ensure_ray(self.ray)
        out = np.zeros(self.catalog.height, dtype=np.float64)
        task = CountTask(self, count)
        for counts in map_tasks(count_partition, task, range(self.snapshot.partitions), on_workers=on_workers):
            out += counts
        return out.astype(np.float32)


@dataclass(frozen=True)
class CountTask:
    """What every partition's count needs: where the pairs are and what to sum over them."""

    pairs: EveryonesPairs
    count: pl.Expr


def count_partition(task: CountTask, partition: int) -> np.ndarray:
    """[N] float64: ``task.count`` per item column over one partition's pairs (0 where it has none)."""
    pairs = task.pairs
    rows = pairs.snapshot.scan_partition("split", partition).filter(pl.col("split").is_in(pairs.splits))
    counts = (
        latest_pairs(rows, pairs.newest)
        .join(pairs.catalog.lazy(), on="item_id", how="inner")
        .group_by("col")
        .agg(task.count.cast(pl.Float64).alias("n"))
        .collect()
    )
    out = np.zeros(pairs.catalog.height, dtype=np.float64)
    out[counts["col"].to_numpy()] = counts["n"].to_numpy()  # one row per column: no repeats to add
    return out
