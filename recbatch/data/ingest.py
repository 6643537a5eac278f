"""Ingest: source files -> a validated, split, content-addressed snapshot.

    read (readers / movielens) -> validate -> split -> hash -> write staging -> publish

The per-user tables are written one file per user partition (``data/partition.py``),
which is how every later stage reaches a user's rows without the driver.

Everything that can fail on bad input fails before the staging folder is
created, so a rejected source leaves nothing under ``snapshots/``. The folder
name is a hash of the normalised tables and the split settings: the same data
ingested again (even from CSV instead of Parquet) maps to the same snapshot,
and re-ingesting is a no-op that returns it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recbatch.config import Config, IngestConfig, SplitConfig
from recbatch.data.movielens import READERS, detect_layout
from recbatch.data.profiles import quarantine_injected_profiles
from recbatch.data.readers import RawSource, find_table_file, read_canonical, require_source_dir
from recbatch.data.partition import SCHEME as PARTITION_SCHEME
from recbatch.data.partition import partition_count
from recbatch.data.snapshot import Snapshot, partitioned_files
from recbatch.data.split import mark_cold_items, split_counts, split_interactions
from recbatch.data.validate import CleanTables, validate_source
from recbatch.erasure.suppression import without_erased_users
from recbatch.errors import UsageError
from recbatch.layout import RunLayout
from recbatch.schemas import TIMESTAMP_TYPE
from recbatch.storage import is_complete, publish_dir, sha256_file, staging_dir_for, write_manifest

log = logging.getLogger(__name__)

HASH_LENGTH = 16  # hex characters of sha256 in the folder name
ROW_GROUP_ROWS = 1 << 20


def detect_format(cfg: IngestConfig) -> str:
    """``ingest.format``, or the layout recognised from the files in the source folder."""
    folder = require_source_dir(cfg.source)
    if cfg.format != "auto":
        return cfg.format
    layout = detect_layout(folder)
    if layout is not None:
        return layout
    if find_table_file(folder, cfg.interactions_file) is not None:
        return "canonical"
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise UsageError(
        f"cannot tell the layout of {folder} (it holds {present}): expected {cfg.interactions_file}.parquet/.csv "
        "+ items, or a MovieLens release (ratings.csv+movies.csv, u.data+u.item, ratings.dat+movies.dat); "
        "name it with --format"
    )


def read_source(cfg: IngestConfig, split: SplitConfig | None = None) -> RawSource:
    """The raw tables; `split` lets a reader keep item text from after a time cutoff out."""
    fmt = detect_format(cfg)
    if fmt == "canonical":
        return read_canonical(cfg)
    if fmt == "movielens-latest":
        return READERS[fmt](Path(cfg.source), split=split)
    return READERS[fmt](Path(cfg.source))


# --------------------------------------------------------------------------- content hash


def _arrow(frame: pl.DataFrame) -> pa.Table:
    """Arrow with the snapshot's physical types: plain strings, ts as timestamp[us, UTC]."""
    table = frame.to_arrow()
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        elif pa.types.is_timestamp(t):
            t = TIMESTAMP_TYPE
        fields.append(pa.field(f.name, t))
    return table.cast(pa.schema(fields))


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's schema and values, independent of how it was chunked."""
    h = hashlib.sha256(table.schema.serialize().to_pybytes())
    for batch in table.combine_chunks().to_batches(max_chunksize=ROW_GROUP_ROWS):
        h.update(batch.serialize())
    return h.hexdigest()


def snapshot_digest(tables: dict[str, pa.Table], cfg: Config) -> str:
    """The snapshot's identity: every table it will hold plus the settings that shaped them."""
    h = hashlib.sha256()
    settings = {"split": dataclasses.asdict(cfg.split), "min_rating": cfg.ingest.min_rating}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(tables):
        h.update(name.encode())
        h.update(table_digest(tables[name]).encode())
    return h.hexdigest()[:HASH_LENGTH]


# --------------------------------------------------------------------------- the stage


def build_tables(clean: CleanTables, cfg: Config) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """The snapshot's tables (Arrow, file-relative names) and their counts."""
    split = split_interactions(clean.interactions, cfg.split)
    items = mark_cold_items(clean.items, split).sort("item_id")
    interactions = split.drop("split")
    tables = {
        "interactions.parquet": _arrow(interactions),
        "items.parquet": _arrow(items),
        "users.parquet": _arrow(clean.users.sort("user_id")),
        "split.parquet": _arrow(split),
    }
    for name, bad in sorted(clean.quarantine.items()):
        tables[f"quarantine/{name}.parquet"] = _arrow(bad)
    counts = {
        "interactions": interactions.height,
        "items": items.height,
        "users": clean.users.height,
        "unavailable_items": int((~items["available"]).sum()),
        **split_counts(split, items),
    }
    for name in ("interactions", "items", "users"):
        counts[f"quarantined_{name}"] = clean.quarantine[name].height if name in clean.quarantine else 0
    if cfg.ingest.min_rating is not None and "rating" in interactions.columns:
        # kept in the snapshot (training skips them as positives); counted so it is never silent
        counts["below_min_rating"] = int((interactions["rating"] < cfg.ingest.min_rating).sum())
    return tables, counts


def ingest(cfg: Config) -> Snapshot:
    """Read, validate and split ``cfg.ingest.source``; publish (or reuse) its snapshot."""
    source = read_source(cfg.ingest, cfg.split)
    clean = validate_source(source, cfg.ingest.on_bad_rows)
    clean, erased = without_erased_users(clean, RunLayout.of(cfg.root))  # recbatch forget's requests
    suspected: dict[str, int] = {}
    if cfg.ingest.detect_injected_profiles:
        clean, suspected = quarantine_injected_profiles(clean)
    tables, counts = build_tables(clean, cfg)
    counts.update(source.counts)
    counts.update(erased)
    counts.update(suspected)
    snapshot_hash = snapshot_digest(tables, cfg)
    final = RunLayout.of(cfg.root).snapshot(snapshot_hash)
    if is_complete(final):
        log.info("snapshot %s already exists: nothing to do", final)
        return Snapshot.open(final)

    partitions = partition_count(counts["users"], cfg.ingest.users_per_partition)
    staging = staging_dir_for(final)
    try:
        for name, table in partitioned_files(tables, partitions):
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
        write_manifest(
            staging,
            {
                "snapshot_hash": snapshot_hash,
                "id_type": clean.id_type,
                "format": source.format,
                "counts": counts,
                "sources": _describe_sources(Path(cfg.ingest.source), source.files),
                "split": dataclasses.asdict(cfg.split),
                "ingest": {"on_bad_rows": cfg.ingest.on_bad_rows, "min_rating": cfg.ingest.min_rating},
                "ignored_columns": clean.ignored_columns,
                "partitioning": {"by": "user_id", "scheme": PARTITION_SCHEME, "partitions": partitions},
            },
        )
        publish_dir(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("published snapshot %s (%s)", final, counts)
    return Snapshot.open(final)


def _describe_sources(folder: Path, files: list[Path]) -> dict[str, dict[str, object]]:
    """Each source file by its path inside the source folder, with size and sha256."""
    return {
        str(p.relative_to(folder)): {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    }
