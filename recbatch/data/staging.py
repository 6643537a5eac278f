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

The scratch folder is a ``fs.Location`` under the run root, on a local disk or
an object store: the Ray tasks that write and read these files may run on any
node, so they must not be on the driver's disk.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbatch.data.partition import matching_partitions, user_partition
from recbatch.fs import Location, list_files
from recbatch.parquet_io import read_parquet, scan_parquet, sink_parquet, write_parquet

BATCH_ROWS = 1 << 18  # rows per streamed batch: ~tens of MB of parsed rows, whatever the table's size
SCRATCH_COMPRESSION = "lz4"  # scratch files are read once, soon: cheap compression beats small files


def part_path(folder: Location, partition: int) -> Location:
    return folder.join(f"part-{partition:05d}.parquet")


def _partition_of(user_ids: pa.ChunkedArray | pa.Array, partitions: int) -> np.ndarray:
    """Each row's partition; null ids (bad rows) in partition 0."""
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    valid = pc.is_valid(user_ids).to_numpy(zero_copy_only=False)
    of_row = np.zeros(len(user_ids), dtype=np.int32)
    if valid.any():
        of_row[valid] = user_partition(user_ids.filter(pa.array(valid)), partitions)
    return of_row


def stage_by_user(frame: pl.LazyFrame, folder: Location, partitions: int) -> None:
    """Stream `frame` into ``folder/part-PPPPP.parquet``, one file per user partition (every one written,
    perhaps empty), rows in the frame's order within each."""
    whole = folder.join("_whole.parquet")
    sink_parquet(frame, whole, row_group_size=BATCH_ROWS, compression=SCRATCH_COMPRESSION)
    source = pq.ParquetFile(whole.path, filesystem=whole.filesystem)
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for p in range(partitions):
            part = part_path(folder, p)
            writers[p] = pq.ParquetWriter(part.path, source.schema_arrow, filesystem=part.filesystem,
                                          compression=SCRATCH_COMPRESSION)
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
        whole.filesystem.delete_file(whole.path)


def write_part(folder: Location, partition: int, frame: pl.DataFrame) -> None:
    """One partition's scratch file of a table (``read_partition`` reads it back)."""
    write_parquet(frame, part_path(folder, partition), compression=SCRATCH_COMPRESSION)


def read_partition(folder: Location, partition: int, partitions: int, staged_partitions: int) -> pl.DataFrame:
    """Partition `partition` (of `partitions`) read from files staged with `staged_partitions` partitions.

    Both counts are powers of two, so the users of one partition are in the
    staged files ``matching_partitions`` names; rows of other users there are dropped.
    """
    parts = [part_path(folder, q) for q in matching_partitions(partition, partitions, staged_partitions)]
    frame = read_parquet(parts)
    if staged_partitions >= partitions or frame.is_empty():
        return frame
    keep = _partition_of(frame["user_id"].to_arrow(), partitions) == partition
    return frame.filter(pl.Series(keep))


def staged_parts(folder: Location) -> list[Location]:
    """The parts written to one scratch table (none when nothing was written there)."""
    return list_files(folder, prefix="part-")


def scan_parts(folder: Location) -> pl.LazyFrame:
    """Every staged part of a table, as one lazy frame (for streaming whole-table questions)."""
    return scan_parquet(staged_parts(folder))
