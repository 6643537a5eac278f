"""The evaluate stage's reads of the snapshot, one Ray task per partition: the driver gets small results.

The gate's popularity floor ranks a slice of users (``eval.holdout_users``)
but counts what every user interacted with, from the newest row back; the
slice's metrics judge its lists on its held-out rows but weigh the items by
every user's history (``avg_popularity``). These reads go through the split
table a user partition per task:

- `SplitRows.per_item`: a task keeps each (user, item) pair of its partition
  once with its latest time (`latest_pairs`) and returns one number per
  catalog item; the driver adds the arrays in partition order, so the sums
  are those of one process counting the partitions in turn;
- `SplitRows.rows_per_item`: the same, counting rows rather than pairs
  (the evaluation's ``avg_popularity``: history interactions per item);
- `SplitRows.of_users`: a task returns the slice's rows of its partition;
- `SplitRows.of`: the newest ``ts`` of the splits, a task's partition maximum
  each, the driver keeping the largest.

So the driver holds the catalog and the slice, never a partition. As in
ingest (``data/ingest_tasks.map_tasks``), a snapshot of one partition is read
in this process. The snapshot is handed to the tasks as a ``Snapshot`` (its
folder a ``fs.Location``), so a worker reads a local or an object-store root
the same way, resolving its own credentials.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import polars as pl

from recbatch.config import RayConfig
from recbatch.data.ingest_tasks import map_tasks, runs_on_workers
from recbatch.data.split import days_before_newest

Task = TypeVar("Task")


def latest_pairs(rows: pl.LazyFrame, newest: dt.datetime) -> pl.LazyFrame:
    """Each (user, item) of `rows` once, with its latest ``ts`` and that time's ``age_days`` before `newest`.

    A user's rows are all in one partition, so pairs deduplicated partition by
    partition are the pairs of the whole table.
    """
    return rows.group_by("user_id", "item_id").agg(pl.col("ts").max()).with_columns(
        age_days=days_before_newest(newest=newest))


def catalog_columns(items: pl.LazyFrame) -> pl.DataFrame:
    """``item_id, col``: each catalog item's column in the per-item arrays, items in id order."""
    return items.select("item_id").sort("item_id").collect().with_row_index("col")


@dataclass(frozen=True)
class SplitRows:
    """The rows of some splits of a snapshot, read a user partition per Ray task."""

    snapshot: Any  # the Snapshot whose split table is read
    splits: tuple[str, ...]  # e.g. ("train", "validation")
    newest: dt.datetime | None  # the newest ts of those splits' rows: what ages count back from (None: no rows)
    catalog: pl.DataFrame  # item_id, col: the matrix column of each catalog item
    ray: RayConfig  # how to reach the cluster when the snapshot has more than one partition

    @classmethod
    def of(cls, snapshot: Any, splits: tuple[str, ...], catalog: pl.DataFrame, ray: RayConfig) -> SplitRows:
        """The rows of `splits`, with their newest ``ts`` found a partition per task (None: no rows)."""
        rows = cls(snapshot, splits, None, catalog, ray)
        return replace(rows, newest=max((ts for ts in rows._map(newest_in_partition, rows) if ts is not None),
                                        default=None))

    @property
    def where(self) -> pl.Expr:
        return pl.col("split").is_in(self.splits)

    def per_item(self, count: pl.Expr) -> np.ndarray:
        """[N] float32: `count` (a sum over a partition's ``col, age_days`` rows) per item column,
        summed over every user's pairs."""
        return self._summed(CountTask(self, count)).astype(np.float32)

    def rows_per_item(self) -> np.ndarray:
        """[N] int64: the rows of every user per item column, a (user, item) repeated counted each time."""
        return self._summed(CountTask(self, pl.len(), pairs=False)).astype(np.int64)

    def _summed(self, task: CountTask) -> np.ndarray:
        """[N] float64: the partitions' counts added in partition order."""
        out = np.zeros(self.catalog.height, dtype=np.float64)
        for counts in self._map(count_partition, task):
            out += counts
        return out

    def of_users(self, users: pl.Series) -> pl.DataFrame:
        """The rows of `users` (``Snapshot.rows_of``), each partition's found by its own task."""
        return pl.concat(self._map(users_rows, UsersTask(self, self.snapshot.users_by_partition(users))))

    def _map(self, fn: Callable[[Task, int], Any], task: Task) -> Iterator[Any]:
        return map_partitions(fn, task, self.snapshot, self.ray)


def map_partitions(fn: Callable[[Task, int], Any], task: Task, snapshot: Any, ray: RayConfig) -> Iterator[Any]:
    """``fn(task, p)`` for every user partition p of `snapshot`, in partition order (Ray tasks on the
    cluster `ray` reaches, unless there is one partition)."""
    on_workers = runs_on_workers(snapshot.partitions)
    if on_workers:
        from recbatch.runtime import ensure_ray

        ensure_ray(ray)
    yield from map_tasks(fn, task, range(snapshot.partitions), on_workers=on_workers)


@dataclass(frozen=True)
class CountTask:
    """What every partition's count needs: where the rows are and what to sum over their pairs."""

    rows: SplitRows
    count: pl.Expr
    pairs: bool = True  # count over each (user, item) once (`latest_pairs`), or (False) over every row


def newest_in_partition(rows: SplitRows, partition: int) -> dt.datetime | None:
    """The newest ``ts`` of one partition's rows of ``rows.splits`` (None: it has none)."""
    return rows.snapshot.scan_partition("split", partition).filter(rows.where).select(
        pl.col("ts").max()).collect().item()


def count_partition(task: CountTask, partition: int) -> np.ndarray:
    """[N] float64: ``task.count`` per item column over one partition's pairs or rows (0 where it has none)."""
    rows = task.rows
    scanned = rows.snapshot.scan_partition("split", partition).filter(rows.where)
    counts = (
        (latest_pairs(scanned, rows.newest) if task.pairs else scanned)
        .join(rows.catalog.lazy(), on="item_id", how="inner")
        .group_by("col")
        .agg(task.count.cast(pl.Float64).alias("n"))
        .collect()
    )
    out = np.zeros(rows.catalog.height, dtype=np.float64)
    out[counts["col"].to_numpy()] = counts["n"].to_numpy()  # one row per column: no repeats to add
    return out


@dataclass(frozen=True)
class UsersTask:
    """What every partition's read of a slice needs: where the rows are and the slice's users of each partition."""

    rows: SplitRows
    users: list[pl.Series]  # element p: the slice's users living in partition p


def users_rows(task: UsersTask, partition: int) -> pl.DataFrame:
    """The rows of the slice's users of one partition."""
    return task.rows.snapshot.rows_in_partition("split", partition, task.users[partition], task.rows.where)
