"""A versioned, validated snapshot of the input data.

Written by ingest, read by every later stage. The folder name is a content
hash, so two ingests of identical inputs (and split settings) give the same
snapshot, and a model card or manifest naming the hash pins its exact inputs.

    snapshots/<hash>/
      interactions/part-PPPPP.parquet   all valid interactions, one file per user partition,
                                        each sorted by (user_id, ts)
      users/part-PPPPP.parquet          user_id + feature columns, by the same partitions
      split/part-PPPPP.parquet          interactions + split in {"train", "validation", "test"}
      items.parquet          item_id, title, [genres, tags, description], available, is_cold, ...
      quarantine/*.parquet   only with on_bad_rows=quarantine: bad rows + reason
      _manifest.json, _SUCCESS

A user's rows are in partition ``p`` of every per-user table (``data/partition.py``),
so a worker reads one partition of each and holds every row of those users
(erasure may rename a rewritten part ``part-PPPPP-<token>.parquet``: still partition ``p``).
Snapshots written before partitioning hold one ``<table>.parquet`` each: one partition.

On an object-store root (``s3://``) the files are under the committed attempt
its ``_SUCCESS`` marker names (recbatch/objectstore.py), and the tables are read
as the reader contract says: marker, manifest, exactly the files it names (a
pyarrow dataset over the Location's filesystem, scanned lazily by polars).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch.data.partition import user_partition
from recbatch.folders import read_committed
from recbatch.fs import Location, as_location
from recbatch.layout import local_path
from recbatch.parquet_io import scan_parquet
from recbatch.schemas import IdType

TABLES = ("interactions", "items", "users", "split")
PARTITIONED = ("interactions", "users", "split")  # one file per user partition


def partition_file_name(table: str, partition: int) -> str:
    """The file of one partition of a per-user table, relative to the snapshot folder."""
    return f"{table}/part-{partition:05d}.parquet"


def partitioned_files(tables: dict[str, pa.Table], partitions: int) -> Iterator[tuple[str, pa.Table]]:
    """(file name, table) to write: the per-user tables cut into one file per user partition,
    each keeping its row order (sorted by user), the others as they are."""
    for name, table in tables.items():
        stem = name.removesuffix(".parquet")
        if stem not in PARTITIONED:
            yield name, table
            continue
        of_row = user_partition(table.column("user_id"), partitions)  # [rows]
        order = np.argsort(of_row, kind="stable")  # by partition, keeping each one's row order
        ends = np.cumsum(np.bincount(of_row, minlength=partitions))
        table = table.take(pa.array(order))
        for p in range(partitions):
            start = int(ends[p - 1]) if p else 0
            yield partition_file_name(stem, p), table.slice(start, int(ends[p]) - start)


@dataclass(frozen=True)
class Snapshot:
    location: Location  # the snapshot folder, on a local root or an object store
    hash: str
    id_type: IdType
    manifest: dict[str, Any]
    files_at: Location  # where the manifest's file names are: the folder, or on an object store its attempt

    @classmethod
    def open(cls, path: str | Path | Location) -> "Snapshot":
        """Open a published snapshot (raises IntegrityError when incomplete)."""
        location = as_location(path)
        manifest, files_at = read_committed(location)
        return cls(location, manifest["snapshot_hash"], manifest["id_type"], manifest, files_at)

    @property
    def path(self) -> Path:
        """The folder on a local root, for the stages that still read it with local file APIs
        (a UsageError on an object-store root: read through ``scan``/``scan_partition`` there)."""
        return local_path(self.location)

    @property
    def partitions(self) -> int:
        """How many user partitions the per-user tables have (1 for a snapshot from before partitioning)."""
        return int(self.manifest.get("partitioning", {}).get("partitions", 1))

    def table_path(self, table: str) -> Path:
        """The table's folder of partition files (or its one file, for items and older snapshots)."""
        assert table in TABLES, table
        folder = self.path / table
        return folder if table in PARTITIONED and folder.is_dir() else self.path / f"{table}.parquet"

    def partition_files(self, table: str, partition: int) -> list[Path]:
        """The files of one user partition of a per-user table."""
        assert table in PARTITIONED and 0 <= partition < self.partitions, (table, partition)
        path = self.table_path(table)
        if path.is_file():  # one partition
            return [path]
        return sorted(path.glob(f"part-{partition:05d}*.parquet"))

    def scan(self, table: str) -> pl.LazyFrame:
        if self.location.is_object_store:
            return scan_parquet(self.named_files(table))
        path = self.table_path(table)
        return pl.scan_parquet(path / "*.parquet" if path.is_dir() else path)

    def scan_partition(self, table: str, partition: int) -> pl.LazyFrame:
        """The rows of one user partition: every row of those users, and no other user's."""
        if self.location.is_object_store:
            assert table in PARTITIONED and 0 <= partition < self.partitions, (table, partition)
            return scan_parquet(self.named_files(table, f"part-{partition:05d}"))
        return pl.scan_parquet(self.partition_files(table, partition))

    def named_files(self, table: str, prefix: str = "") -> list[Location]:
        """The manifest's files of `table` (its folder's files starting with `prefix`, or its one file),
        on either kind of root: what a reader hands a query engine (Ray Data, pyarrow), never a listing."""
        assert table in TABLES, table
        names = [n for n in sorted(self.manifest["files"]) if n == f"{table}.parquet"
                 or (n.startswith(f"{table}/{prefix}") and n.endswith(".parquet"))]
        return [self.files_at.join(n) for n in names]

    def rows_of(self, table: str, users: pl.Series, where: pl.Expr | None = None) -> pl.DataFrame:
        """Every row of `table` (matching `where`) of the given users, read a user partition at a time.

        For a slice of users (the gate's holdout): what is held is one partition
        and the slice's rows, never the whole table, whatever engine a query picks.
        """
        by_partition = self.users_by_partition(users)
        return pl.concat([  # a snapshot has at least one partition
            self.rows_in_partition(table, p, by_partition[p], where) for p in range(self.partitions)
        ])

    def users_by_partition(self, users: pl.Series) -> list[pl.Series]:
        """`users` cut by the partition each one lives in: element ``p`` holds those of partition ``p``."""
        partition = user_partition(users.to_arrow(), self.partitions)
        return [users.filter(pl.Series(partition == p)) for p in range(self.partitions)]

    def rows_in_partition(
        self, table: str, partition: int, users: pl.Series, where: pl.Expr | None = None
    ) -> pl.DataFrame:
        """The rows of `table` in one user `partition` (matching `where`) of `users`, who all live there."""
        lf = self.scan_partition(table, partition)
        lf = lf if where is None else lf.filter(where)
        return lf.join(pl.DataFrame({"user_id": users}).lazy(), on="user_id", how="semi").collect()

    def interactions(self) -> pl.LazyFrame:
        return self.scan("interactions")

    def items(self) -> pl.LazyFrame:
        return self.scan("items")

    def users(self) -> pl.LazyFrame:
        return self.scan("users")

    def split(self, which: str | None = None) -> pl.LazyFrame:
        """The split table, or only rows of one split ("train", "validation", "test")."""
        lf = self.scan("split")
        return lf if which is None else lf.filter(pl.col("split") == which)

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]


def serving_events(snapshot: Snapshot, partition: int | None = None) -> pl.LazyFrame:
    """The interactions published lists are built from: all of them, whatever the split
    (of one user partition, or of every user).

    The split exists for evaluation; a nightly job serves what each user did up
    to last night, so the user vectors, the seen filter and the popularity
    prior of the scoring stage all read every row of the snapshot.
    """
    return snapshot.interactions() if partition is None else snapshot.scan_partition("interactions", partition)
