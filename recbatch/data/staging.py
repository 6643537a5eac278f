"""Ingest's scratch files: a table streamed into one Parquet file per user partition.

Ingest never holds a whole per-user table. Polars' streaming engine writes
the parsed table to one scratch Parquet file in row groups of ``BATCH_ROWS``
(a sink: the engine holds back when the disk is slower, so nothing piles up),
then each row group is read in turn (pull-based: nothing is read ahead), cut
by ``user_partition`` and appended to that partition's file. (Handing the
engine's batches straight to Python is not bounded: the engine runs ahead of
a slower consumer and queues the rest.) Afterwards one partition at a time is
read back, which holds every row of its users and no other user's.
Rows keep their source order inside a partition file, so "the first bad rows"
of a partition are its first rows that fail.

Rows without a user id go to partition 0 (they are bad rows anyway, and the
duplicate-id check then sees all of them together, as it would whole).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbatch.data.partition import matching_partitions, user_partition

BATCH_ROWS = 1 << 18  # rows per streamed batch: ~tens of MB of parsed rows, whatever the table's size
SCRATCH_COMPRESSION = "lz4"  # scratch files are read once, soon: cheap compression beats small files


def part_path(folder: Path, partition: int) -> Path:
    return folder / f"part-{partition:05d}.parquet"


def _partition_of(user_ids: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """Each row's partition; null ids (bad rows) in partition 0."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    valid = pc.is_valid(user_ids).to_numpy(zero_copy_only=False)
    of_row = np.zeros(len(user_ids), dtype=np.int32)
    if valid.any():
        of_row[valid] = user_partition(user_ids.filter(pa.array(valid)), partitions)
    return of_row


def stage_by_user(frame: pl.LazyFrame, folder: Path, partitions: int) -> None:
    """Stream `frame` into ``folder/part-PPPPP.parquet``, one file per user partition (every one written,
    perhaps empty), rows in the frame's order within each."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = folder / "_whole.parquet"
    frame.sink_parquet(whole, row_group_size=BATCH_ROWS, compression=SCRATCH_COMPRESSION, engine="streaming")
    source = pq.ParquetFile(whole)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for p in range(partitions):
            writers[p] = pq.ParquetWriter(part_path(folder, p), source.schema_arrow, compression=SCRATCH_COMPRESSION)
        for group in range(source.num_row_groups):
            table = source.read_row_group(group)
            of_row = _partition_of(table.column("user_id"), partitions)
            order = np.argsort(of_row, kind="stable")
            ends = np.cumsum(np.bincount(of_row, minlength=partitions))
            table = table.take(pa.array(order))
            for p in range(partitions):
                start = int(ends[p - 1]) if p else 0
                if ends[p] > start:
                    writers[p].write_table(table.slice(start, int(ends[p]) - start))
    finally:
        for writer in writers.values():
            writer.close()
        source.close()
        whole.unlink()


def write_part(folder: Path, partition: int, frame: pl.DataFrame) -> None:
    """One partition's scratch file of a table (``read_partition`` reads it back)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(part_path(folder, partition), compression=SCRATCH_COMPRESSION)


def read_partition(folder: Path, partition: int, partitions: int, staged_partitions: int) -> pl.DataFrame:
    """Partition `partition` (of `partitions`) read from files staged with `staged_partitions` partitions.

    Both counts are powers of two, so the users of one partition are in the
    staged files ``matching_partitions`` names; rows of other users there are dropped.
    """
    parts = [part_path(folder, q) for q in matching_partitions(partition, partitions, staged_partitions)]
    frame = pl.read_parquet(parts)
    if staged_partitions >= partitions or frame.is_empty():
        return frame
    keep = _partition_of(frame["user_id"].to_arrow(), partitions) == partition
    return frame.filter(pl.Series(keep))


def scan_parts(folder: Path) -> pl.LazyFrame:
    """Every staged part of a table, as one lazy frame (for streaming whole-table questions)."""
    return pl.scan_parquet(sorted(folder.glob("part-*.parquet")))
