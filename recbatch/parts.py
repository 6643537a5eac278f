"""Outputs written by many workers and committed by one driver.

A stage whose output grows with users (user embeddings, recommendation lists)
has every worker write its own Parquet parts straight into the staging folder
and send back only a small record per part: its name, rows and checksum. The
driver gathers those records (a few hundred bytes a part, whatever the number
of users), checks that the folder holds exactly the recorded files, writes the
manifest from them and publishes. So the rows never pass through the driver.

Part names are ``part-PPPPP-<random>.parquet``: ``PPPPP`` is the user
partition of its rows (``data/partition.py``), the random tail keeps two
writers of the same partition (a retried task, two blocks) from colliding.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa

from recbatch.folders import write_manifest, write_parquet_part
from recbatch.fs import Location, as_location, list_files, remove_file

log = logging.getLogger(__name__)

PARTITION = "partition"  # the int32 column that tells a part writer which partition a row belongs to


def part_name(partition: int) -> str:
    return f"part-{partition:05d}-{uuid.uuid4().hex[:12]}.parquet"


def partition_of_name(name: str) -> int:
    """``part-00003-<random>.parquet`` (or ``part-00003.parquet``) -> 3."""
    return int(Path(name).stem.split("-")[1])


def write_part(table: pa.Table, folder: str | Path | Location, partition: int) -> dict[str, Any]:
    """Write `table` as one new part of `folder` (a local path or any ``Location``, ``recbatch.fs``);
    return its record (name, rows, bytes, sha256)."""
    name = part_name(partition)
    return {"file": name, "rows": table.num_rows, **write_parquet_part(table, as_location(folder).join(name))}


def write_partitioned(table: pa.Table, folder: str | Path | Location, max_rows: int) -> list[dict[str, Any]]:
    """Write `table` (with a ``partition`` column, dropped on write) as parts of at most `max_rows`
    rows, one partition per part; return their records."""
    records = []
    partitions = table.column(PARTITION).to_numpy()
    rows = table.drop_columns([PARTITION])
    for p in sorted(set(partitions.tolist())):
        part = rows.filter(pa.array(partitions == p))
        for start in range(0, part.num_rows, max_rows):
            records.append(write_part(part.slice(start, max_rows), folder, p))
    return records


def commit_parts(
    staging: str | Path | Location, records: Iterable[dict[str, Any]], fields: dict[str, Any]
) -> dict[str, Any]:
    """Write the manifest of a folder of parts (``folders.staging_for``, on either kind of root) from
    the workers' records (``rows`` summed in).

    The records are the truth: a part without one was written by an attempt
    that died before reporting it (a killed worker whose task Ray retried), and
    its rows were written again by the retry, so it is deleted, not published.
    """
    staging = as_location(staging)
    records = list(records)
    files = {r["file"]: {"bytes": r["bytes"], "sha256": r["sha256"]} for r in records}
    orphans = [part for part in list_files(staging, "part-") if part.name not in files]
    for orphan in orphans:
        remove_file(orphan)
    if orphans:
        log.warning("%s: deleted %d parts of failed attempts (their rows were written again): %s",
                    staging, len(orphans), [p.name for p in orphans[:5]])
    return write_manifest(staging, {**fields, "rows": sum(r["rows"] for r in records)}, files=files)
