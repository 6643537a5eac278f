"""A versioned, validated snapshot of the input data.

Written by ingest, read by every later stage. The folder name is a content
hash, so two ingests of identical inputs (and split settings) give the same
snapshot, and a model card or manifest naming the hash pins its exact inputs.

    snapshots/<hash>/
      interactions.parquet   all valid interactions, sorted by (user_id, ts)
      items.parquet          item_id, title, [genres, tags, description], available, is_cold, ...
      users.parquet          user_id + feature columns
      split.parquet          interactions + split in {"train", "validation", "test"}
      quarantine/*.parquet   only with on_bad_rows=quarantine: bad rows + reason
      _manifest.json, _SUCCESS
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from recbatch.schemas import IdType
from recbatch.storage import read_manifest

TABLES = ("interactions", "items", "users", "split")


@dataclass(frozen=True)
class Snapshot:
    path: Path
    hash: str
    id_type: IdType
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "Snapshot":
        """Open a published snapshot (raises IntegrityError when incomplete)."""
        path = Path(path)
        manifest = read_manifest(path)
        return cls(path=path, hash=manifest["snapshot_hash"], id_type=manifest["id_type"], manifest=manifest)

    def table_path(self, table: str) -> Path:
        assert table in TABLES, table
        return self.path / f"{table}.parquet"

    def scan(self, table: str) -> pl.LazyFrame:
        return pl.scan_parquet(self.table_path(table))

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
