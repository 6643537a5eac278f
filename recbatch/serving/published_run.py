"""Checks on a published run made before anything is written to Redis.

A run is loaded only if it is complete (``_SUCCESS``), matches its manifest
(file list, sizes, sha256), has the recommendations schema in every file, and
its Parquet row counts agree with the manifest. Everything here reads only
manifests, checksums and Parquet footers, so refusing a bad run costs almost
nothing.

The run is pinned (``storage.open_folder``): the files checked are the files
the loader then reads, even if the date is republished during a long load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pyarrow.parquet as pq

from recbatch.errors import DataValidationError, IntegrityError
from recbatch.schemas import check_schema, recommendations_schema
from recbatch.storage import MANIFEST, open_folder

REQUIRED_FIELDS = ("run_date", "model_version", "id_type", "users", "rows")


@dataclass(frozen=True)
class PublishedRun:
    """A verified published run: where its Parquet files are and what its manifest says."""

    path: Path
    files: list[tuple[Path, BinaryIO]]  # each Parquet file's path (for messages) and its pinned handle
    run_date: str
    model_version: str
    id_type: str
    users: int
    rows: int
    k: int | None
    manifest: dict[str, Any]


@contextlib.contextmanager
def open_published_run(run_dir: str | Path) -> Iterator[PublishedRun]:
    """Pin and verify `run_dir` and describe it; raises IntegrityError / DataValidationError."""
    path = Path(run_dir)
    if not path.is_dir():
        raise IntegrityError(f"{path}: no such published run folder")
    with open_folder(path) as pinned:
        pinned.verify(checksums=True)
        yield _describe(path, pinned.manifest, [(path / name, f) for name, f in pinned.parquet_files()])


def _describe(path: Path, manifest: dict[str, Any], files: list[tuple[Path, BinaryIO]]) -> PublishedRun:
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise IntegrityError(f"{path}/{MANIFEST}: missing field(s) {missing}")
    id_type = manifest["id_type"]
    if id_type not in ("int", "string"):
        raise IntegrityError(f"{path}/{MANIFEST}: id_type {id_type!r} is not 'int' or 'string'")

    expected = recommendations_schema(id_type)
    rows = 0
    for name, f in files:
        parquet = pq.ParquetFile(f)
        try:
            check_schema(parquet.schema_arrow, expected, str(name))
        except ValueError as exc:
            raise DataValidationError(f"{exc} (manifest id_type {id_type!r})") from None
        rows += parquet.metadata.num_rows

    if rows != manifest["rows"]:
        raise IntegrityError(
            f"{path}: the Parquet files hold {rows} rows but {MANIFEST} says rows = {manifest['rows']}"
        )
    if manifest["users"] != rows:
        raise IntegrityError(
            f"{path}: {MANIFEST} says users = {manifest['users']} but rows = {rows} "
            "(a published run has one row per user)"
        )
    return PublishedRun(
        path=path,
        files=files,
        run_date=str(manifest["run_date"]),
        model_version=str(manifest["model_version"]),
        id_type=id_type,
        users=int(manifest["users"]),
        rows=rows,
        k=int(manifest["k"]) if manifest.get("k") is not None else None,
        manifest=manifest,
    )
