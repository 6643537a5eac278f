"""Write recommendation rows as a complete-or-absent Parquet folder.

Every producer of recommendation lists goes through this module, so all of
them obey the same contract: ``recommendations_schema`` with plain Arrow list
types, files of at most ``rows_per_file`` rows, one row per user, a manifest
with checksums, and an atomic publish. A reader therefore never sees a
half-written folder, whoever wrote it. The evaluation baselines and test
fixtures stream their rows through `write_recommendations` in one process; the
scoring stage's workers write parts with `write_parts` on the workers, with
the same column checks, and the driver commits them (``recbatch.parts``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recbatch.errors import DataValidationError
from recbatch.fs import Location
from recbatch.schemas import IdType, recommendations_schema
from recbatch.storage import publish_dir, staging_dir_for, write_manifest

PART_NAME = "part-{:05d}.parquet"


def write_recommendations(
    tables: Iterable[pa.Table | pl.DataFrame],
    out_dir: str | Path,
    *,
    id_type: IdType,
    rows_per_file: int,
    manifest_fields: dict[str, Any],
) -> dict[str, Any]:
    """Stream `tables` into ``out_dir`` atomically and return the manifest written.

    Rows are written into a staging folder beside `out_dir`; only when every
    file is closed and the manifest (with ``rows``, ``users``, ``id_type``
    and ``files`` added) is written does the folder replace `out_dir` in one
    exchange. If anything fails first, `out_dir` is untouched.

    Raises ``DataValidationError`` (and publishes nothing) when a table lacks
    a column, ``item_ids`` and ``scores`` differ in length in some row, or a
    user appears in more than one row.
    """
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be >= 1, got {rows_per_file}")
    staging = staging_dir_for(out_dir)
    writer = _RollingParquetWriter(staging, rows_per_file)
    user_chunks: list[np.ndarray] = []
    schema: pa.Schema | None = None
    try:
        for table in tables:
            table = table.to_arrow() if isinstance(table, pl.DataFrame) else table
            if schema is None:
                with_because = "because_item_ids" in table.column_names
                schema = recommendations_schema(id_type, with_because=with_because)
            table = _conform(table, schema)
            user_chunks.append(table.column("user_id").to_numpy(zero_copy_only=False))
            writer.write(table)
        writer.close()
        users = _check_unique_users(user_chunks, out_dir)
        manifest = write_manifest(
            staging,
            {**manifest_fields, "id_type": id_type, "rows": writer.rows, "users": users},
        )
    except BaseException:
        writer.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir(staging, out_dir)
    return manifest


def write_parts(rows: pa.Table, folder: str | Path | Location, id_type: IdType, rows_per_file: int) -> pa.Table:
    """Write finished list rows (with ``partition`` and the provenance columns) as parts of `folder`.

    The worker-side half of the scoring stage's output: the same columns and
    checks as `write_recommendations`, and one record row per part written
    (``file, rows, bytes, sha256, users``) plus which nodes and kernels scored
    them, for the driver to commit (``recbatch.parts.commit_parts``).
    """
    from recbatch.parts import PARTITION, write_partitioned
    from recbatch.score.actors import SCORED_ON, SCORED_WITH

    schema = recommendations_schema(id_type, with_because="because_item_ids" in rows.column_names)
    lists = _conform(rows, schema)
    _check_unique_users([lists.column("user_id").to_numpy(zero_copy_only=False)], folder)
    records = write_partitioned(lists.append_column(PARTITION, rows.column(PARTITION)), folder, rows_per_file)
    provenance = {
        column: ",".join(sorted({v for joined in pc.unique(rows.column(column)).to_pylist() for v in joined.split(",")}))
        for column in (SCORED_ON, SCORED_WITH)
    }
    return pa.table({
        **{key: [r[key] for r in records] for key in ("file", "rows", "bytes", "sha256")},
        **{column: [value] * len(records) for column, value in provenance.items()},
    })


class _RollingParquetWriter:
    """Writes ``part-NNNNN.parquet`` files, starting a new one every `rows_per_file` rows."""

    def __init__(self, folder: Path, rows_per_file: int) -> None:
        self.folder = folder
        self.rows_per_file = rows_per_file
        self.rows = 0
        self._files = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_file = 0

    def write(self, table: pa.Table) -> None:
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._rows_in_file == self.rows_per_file:
                self._open_next(table.schema)
            take = min(self.rows_per_file - self._rows_in_file, table.num_rows - offset)
            assert self._writer is not None
            self._writer.write_table(table.slice(offset, take))
            self._rows_in_file += take
            self.rows += take
            offset += take

    def _open_next(self, schema: pa.Schema) -> None:
        if self._writer is not None:
            self._writer.close()
        path = self.folder / PART_NAME.format(self._files)
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")
        self._files += 1
        self._rows_in_file = 0

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast the contract's columns; reject rows whose lists disagree."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataValidationError(
            f"recommendations table lacks column(s) {missing}; has {table.column_names}"
        )
    columns = []
    for f in schema:
        col = table.column(f.name)
        if pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
            col = col.cast(pa.list_(col.type.value_type))  # plain lists for every reader
        columns.append(col.cast(f.type))
    table = pa.Table.from_arrays(columns, schema=schema)
    n_items = pc.list_value_length(table.column("item_ids"))
    n_scores = pc.list_value_length(table.column("scores"))
    bad = pc.not_equal(n_items, n_scores)
    if pc.any(bad).as_py():
        examples = table.filter(bad).column("user_id").slice(0, 5).to_pylist()
        raise DataValidationError(
            f"recommendations: column 'scores' differs in length from 'item_ids' in "
            f"{pc.sum(bad).as_py()} rows, e.g. users {examples}"
        )
    return table


def _check_unique_users(chunks: list[np.ndarray], out_dir: str | Path | Location) -> int:
    """One row per user is the contract readers (and the Redis loader) rely on."""
    if not chunks:
        return 0
    user_ids = np.concatenate(chunks)
    unique, counts = np.unique(user_ids, return_counts=True)
    if len(unique) != len(user_ids):
        dupes = unique[counts > 1]
        raise DataValidationError(
            f"recommendations for {out_dir}: column 'user_id' has {len(dupes)} users in more "
            f"than one row, e.g. {dupes[:5].tolist()}"
        )
    return int(len(unique))

