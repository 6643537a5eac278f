"""Reading and publishing embedding folders.

An embeddings folder (``embeddings/<model_version>/{items,users}``) is written
like every other output, on either kind of root (recbatch/folders.py): into a
staging folder (an attempt, on an object store) by Ray Data's Parquet writer or
by the actors' own parts, then the manifest, then published whole. A reader
therefore sees the previous complete set or the new one, and an incremental
rerun can read the previous set while it writes the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from ray.data.datasource import FilenameProvider

from recbatch import folders
from recbatch.errors import IntegrityError
from recbatch.fs import Location, as_location, list_files
from recbatch.parquet_io import read_dataset


class PartFilenames(FilenameProvider):
    """``part-<task>-<write>.parquet``: the layout's file names, unique per write task."""

    def __init__(self) -> None:
        super().__init__(file_format="parquet")

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:05d}-{write_uuid}.parquet"


@dataclass(frozen=True)
class EmbeddingsFolder:
    """A complete embeddings folder, pinned by its manifest: what embed, score and evaluate read.

    `files_at` is where the manifest's file names are (the folder itself, or on
    an object store its committed attempt, recbatch/folders.py), so every read
    goes through the manifest and never lists the folder. Small and picklable:
    Ray workers get one and read their own partitions.
    """

    location: Location
    manifest: dict[str, Any]
    files_at: Location

    @classmethod
    def open(cls, folder: str | Path | Location) -> "EmbeddingsFolder":
        """The folder as published; IntegrityError naming it when it is missing or incomplete."""
        location = as_location(folder)
        if not folders.is_complete(location):
            raise IntegrityError(f"{location}: embeddings are missing or incomplete")
        manifest, files_at = folders.read_committed(location)
        return cls(location, manifest, files_at)

    @property
    def rows(self) -> int:
        """Its manifest's row count, else the Parquet footers' (no data read)."""
        if isinstance(self.manifest.get("rows"), int):
            return self.manifest["rows"]
        files = self.parquet_files()
        return self._pyarrow_dataset(files).count_rows() if files else 0

    def parquet_files(self, partitions: set[int] | None = None) -> list[Location]:
        """The manifest's Parquet files (only those of user `partitions`, when given)."""
        from recbatch.parts import partition_of_name

        names = sorted(n for n in self.manifest["files"] if n.endswith(".parquet"))
        if partitions is not None:
            names = [n for n in names if partition_of_name(n) in partitions]
        return [self.files_at.join(n) for n in names]

    def read(self, columns: list[str], files: list[Location] | None = None) -> pa.Table:
        """`columns` of the given files (default: all of the folder's)."""
        files = self.parquet_files() if files is None else files
        if not files:
            return self.schema(columns).empty_table()
        return self._pyarrow_dataset(files).to_table(columns=columns)

    def _pyarrow_dataset(self, files: list[Location]) -> pads.Dataset:
        return pads.dataset([f.path for f in files], filesystem=self.files_at.filesystem, format="parquet")

    def dataset(self) -> Any:
        """Every row, as a lazy Ray dataset over exactly the manifest's files (read by Ray's workers)."""
        return read_dataset([f.path for f in self.parquet_files()], self.files_at.filesystem)

    def schema(self, columns: list[str]) -> pa.Schema:
        """The schema of `columns`, from the first file's footer (there is always one: an empty set
        is written as one typed empty file, ``publish_embeddings``)."""
        first = self.parquet_files()[0]
        schema = pads.dataset(first.path, filesystem=first.filesystem, format="parquet").schema
        return pa.schema([schema.field(c) for c in columns])


def read_matrix(folder: str | Path | Location, id_column: str) -> tuple[pa.Array, np.ndarray]:
    """All ids and their vectors as one float32 matrix ``[N, D]`` (row i is ids[i])."""
    table = EmbeddingsFolder.open(folder).read([id_column, "embedding"])
    return table.column(id_column).combine_chunks(), list_column_to_matrix(table.column("embedding"))


def read_user_partition(users: EmbeddingsFolder, partition: int, partitions: int, columns: list[str]) -> pa.Table:
    """The rows of user partition `partition` (of `partitions`) of a user embeddings folder.

    A folder written with the same partition count holds them in its
    ``part-PPPPP-*`` files; one written with another power of two holds them in
    the matching partitions (``data/partition.py``), filtered by the hash when
    those hold more users. A folder from before partitioning is read whole and
    filtered (slow at scale: the next embed run rewrites it partitioned).
    """
    from recbatch.data.partition import matching_partitions, user_partition

    written = users.manifest.get("partitioning", {}).get("partitions")
    wanted = None if written is None else set(matching_partitions(partition, partitions, written))
    table = users.read(columns, users.parquet_files(wanted))
    if partitions > 1 and (written is None or written < partitions):
        table = table.filter(pa.array(user_partition(table.column("user_id"), partitions) == partition))
    return table


def list_column_to_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A list<float32> column of equal-length rows as a ``[N, D]`` float32 matrix (no Python loop)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if values.size % n:
        raise IntegrityError(f"embedding rows have unequal lengths ({values.size} values, {n} rows)")
    return values.reshape(n, values.size // n)


def matrix_to_list_array(matrix: np.ndarray) -> pa.Array:
    """``[N, D]`` float32 → a plain list<float32> Arrow column (not a Ray tensor type)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = matrix.shape
    offsets = np.arange(0, (n + 1) * d, d, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


def publish_embeddings(
    ds: Any, final: Location, schema: pa.Schema, fields: dict[str, Any], started: float | None = None
) -> Location:
    """Write a Ray dataset of embedding rows to `final`: staging, manifest, publish.

    `schema` is written even when the dataset is empty, so readers always find
    a typed file. The dataset is lazy and runs here, so ``seconds`` in the
    manifest (from `started`, a ``time.perf_counter()``) is taken after the write.
    """
    import time

    staging = folders.staging_for(final)
    ds.write_parquet(staging.path, filesystem=staging.filesystem, filename_provider=PartFilenames())
    parts = list_files(staging, "part-")  # a fresh staging folder: only this writer's files
    if not parts:
        empty = staging.join("part-00000-empty.parquet")
        folders.write_parquet_part(schema.empty_table(), empty)
        parts = [empty]
    if started is not None:
        fields = {**fields, "seconds": round(time.perf_counter() - started, 3)}
    rows = pads.dataset([p.path for p in parts], filesystem=staging.filesystem, format="parquet").count_rows()
    folders.write_manifest(staging, {**fields, "rows": rows})
    return folders.publish(staging, final)
