"""Reading and publishing embedding folders.

An embeddings folder (``embeddings/<model_version>/{items,users}``) is written
like every other output: into a staging folder by Ray Data's Parquet writer,
then ``_manifest.json`` and ``_SUCCESS``, then swapped in atomically. A reader
therefore sees the previous complete set or the new one, and an incremental
rerun can read the previous set while it writes the next.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from ray.data.datasource import FilenameProvider

from recbatch.errors import IntegrityError
from recbatch.storage import is_complete, publish_dir, staging_dir_for, write_manifest


class PartFilenames(FilenameProvider):
    """``part-<task>-<write>.parquet``: the layout's file names, unique per write task."""

    def __init__(self) -> None:
        super().__init__(file_format="parquet")

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:05d}-{write_uuid}.parquet"


def _dataset(folder: Path) -> pads.Dataset:
    return pads.dataset(folder, format="parquet")  # skips "_manifest.json", "_SUCCESS", ".staging-*"


def read_hashes(folder: str | Path, id_column: str) -> pa.Table | None:
    """``(id, input_hash)`` of a complete embeddings folder, or None if there is none.

    Only ids and hashes are read (not the vectors): this is what decides reuse.
    """
    folder = Path(folder)
    if not is_complete(folder):
        return None
    return _dataset(folder).to_table(columns=[id_column, "input_hash"])


def read_matrix(folder: str | Path, id_column: str) -> tuple[pa.Array, np.ndarray]:
    """All ids and their vectors as one float32 matrix ``[N, D]`` (row i is ids[i])."""
    folder = Path(folder)
    if not is_complete(folder):
        raise IntegrityError(f"{folder}: embeddings are missing or incomplete")
    table = _dataset(folder).to_table(columns=[id_column, "embedding"])
    return table.column(id_column).combine_chunks(), list_column_to_matrix(table.column("embedding"))


def read_user_partition(
    folder: str | Path, manifest: dict[str, Any], partition: int, partitions: int, columns: list[str]
) -> pa.Table:
    """The rows of user partition `partition` (of `partitions`) of a user embeddings folder.

    A folder written with the same partition count holds them in its
    ``part-PPPPP-*`` files; one written with another power of two holds them in
    the matching partitions (``data/partition.py``), filtered by the hash when
    those hold more users. A folder from before partitioning is read whole and
    filtered (slow at scale: the next embed run rewrites it partitioned).
    """
    from recbatch.data.partition import matching_partitions, user_partition
    from recbatch.parts import partition_of_name

    folder = Path(folder)
    written = manifest.get("partitioning", {}).get("partitions")
    if written is None:
        files = sorted(str(folder / name) for name in manifest["files"] if name.endswith(".parquet"))
    else:
        wanted = set(matching_partitions(partition, partitions, written))
        files = sorted(str(folder / name) for name in manifest["files"]
                       if name.endswith(".parquet") and partition_of_name(name) in wanted)
    table = pads.dataset(files, format="parquet").to_table(columns=columns) if files else None
    if table is None:
        return pa.schema([pads.dataset(folder, format="parquet").schema.field(c) for c in columns]).empty_table()
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
    ds: Any, final: str | Path, schema: pa.Schema, fields: dict[str, Any], started: float | None = None
) -> Path:
    """Write a Ray dataset of embedding rows to `final`: staging, manifest, atomic swap.

    `schema` is written even when the dataset is empty, so readers always find
    a typed file. The dataset is lazy and runs here, so ``seconds`` in the
    manifest (from `started`, a ``time.perf_counter()``) is taken after the write.
    """
    import time

    import pyarrow.parquet as pq

    final = Path(final)
    staging = staging_dir_for(final)
    ds.write_parquet(str(staging), filename_provider=PartFilenames())
    if not any(staging.glob("*.parquet")):
        pq.write_table(schema.empty_table(), staging / "part-00000-empty.parquet")
    if started is not None:
        fields = {**fields, "seconds": round(time.perf_counter() - started, 3)}
    write_manifest(staging, {**fields, "rows": _dataset(staging).count_rows()})
    return publish_dir(staging, final)
