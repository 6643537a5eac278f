"""The ids of an erasure request: read from Parquet or CSV, checked against the snapshot's id type.

An id of the wrong type would match nothing and the request would silently
erase no one, so every id must have the type the data has (``int`` or
``string``), and a file with any bad row is refused as a whole.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from recbatch.data.readers import read_table_file
from recbatch.data.validate import PLAIN_INTEGER
from recbatch.errors import DataValidationError, UsageError
from recbatch.folders import read_manifest
from recbatch.layout import RunLayout
from recbatch.schemas import IdType, id_arrow_type

ID_COLUMN = "user_id"


def reference_id_type(layout: RunLayout) -> IdType:
    """The id type of the data under the root: the latest snapshot's, else the latest published run's."""
    for folder in (layout.at.latest_snapshot(), *reversed(layout.at.published_runs())):
        if folder is not None:
            return read_manifest(folder)["id_type"]
    raise UsageError(
        f"nothing under {layout.at.root} tells the id type (no snapshot, no published run): "
        "run `recbatch ingest` first, so the ids can be checked"
    )


def read_user_ids(path: str | Path, id_type: IdType) -> pa.Array:
    """The distinct ids of column ``user_id`` of a Parquet or CSV file, typed as the snapshot's ids."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--users {path}: no such file")
    frame = _read(path)
    if ID_COLUMN not in frame.columns:
        raise DataValidationError(
            f"{path}: no column '{ID_COLUMN}' (columns: {', '.join(frame.columns[:10])}); "
            f"all {frame.height} rows are affected"
        )
    ids = _typed(path, frame[ID_COLUMN], id_type)
    return ids.unique().sort().to_arrow().cast(id_arrow_type(id_type))


def _read(path: Path) -> pl.DataFrame:
    if path.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--users {path}: expected a .parquet or .csv file")
    table = read_table_file("users", path)  # CSV as text, Parquet with its types
    with table.reading():
        return table.scan().collect()


def _typed(path: Path, column: pl.Series, id_type: IdType) -> pl.Series:
    """The column as the snapshot's id type; DataValidationError counting the rows that are not."""
    words = "integer" if id_type == "int" else "text"
    if column.dtype.is_integer():
        if id_type == "string":
            raise DataValidationError(
                f"{path}: column '{ID_COLUMN}' holds integer ids but the data under the root has text ids; "
                f"all {column.len()} rows are affected"
            )
        bad = column.is_null()
    elif column.dtype == pl.String:
        text = column.str.strip_chars()
        bad = text.is_null() | (text == "")
        if id_type == "int":
            bad = bad | ~text.str.contains(PLAIN_INTEGER).fill_null(False)
        column = text
    else:
        raise DataValidationError(
            f"{path}: column '{ID_COLUMN}' has type {column.dtype}, expected {words} ids; "
            f"all {column.len()} rows are affected"
        )
    n_bad = int(bad.sum())
    if n_bad:
        examples = [str(v) for v in column.filter(bad).head(5).to_list()]
        raise DataValidationError(
            f"{path}: column '{ID_COLUMN}' has {n_bad} bad rows (null, empty or not {words} ids, as the data "
            f"under the root has), e.g. {examples}; nothing was erased"
        )
    return column.cast(pl.Int64) if id_type == "int" else column
