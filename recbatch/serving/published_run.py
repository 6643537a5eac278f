"""Checks on a published run made before anything is written to Redis.

A run is loaded only if it is complete (``_SUCCESS``), matches its manifest
(file list, sizes, sha256), has the recommendations schema in every file, and
its Parquet row counts agree with the manifest. Everything here reads only
manifests, checksums and Parquet footers, so refusing a bad run costs almost
nothing.

The run is pinned (``folders.open_folder``, on a local or an object-store root):
the files checked are the files the loader then reads, even if the date is
republished during a long load. Runs are found by their commit markers, never
by what a listing of their files shows.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

import pyarrow.parquet as pq

from recbatch.errors import DataValidationError, IntegrityError
from recbatch.folders import open_folder
from recbatch.fs import Location, as_location
from recbatch.schemas import check_schema, recommendations_schema
from recbatch.storage import MANIFEST

REQUIRED_FIELDS = ("run_date", "model_version", "id_type", "users", "rows")


@dataclass(frozen=True)
class PublishedRun:
    """A verified published run: where its Parquet files are and what its manifest says."""

    location: Location
    files: list[tuple[str, BinaryIO]]  # each Parquet file's name for messages (run/part) and its pinned handle
    run_date: str
    model_version: str
    id_type: str
    users: int
    rows: int
    k: int | None
    manifest: dict[str, Any]


@contextlib.contextmanager
def open_published_run(run: str | os.PathLike[str] | Location) -> Iterator[PublishedRun]:
    """Pin and verify `run` (a local path or a Location on either kind of root) and describe it;
    raises IntegrityError / DataValidationError."""
    location = as_location(run)
    with open_folder(location) as pinned:
        pinned.verify(checksums=True)
        files = [(f"{location}/{name}", f) for name, f in pinned.parquet_files()]
        yield _describe(location, pinned.manifest, files)


def _describe(run: Location, manifest: dict[str, Any], files: list[tuple[str, BinaryIO]]) -> PublishedRun:
    missing = [f for f in REQUIRED_FIELDS if f not in manifest]
    if missing:
        raise IntegrityError(f"{run}/{MANIFEST}: missing field(s) {missing}")
    id_type = manifest["id_type"]
    if id_type not in ("int", "string"):
        raise IntegrityError(f"{run}/{MANIFEST}: id_type {id_type!r} is not 'int' or 'string'")

    expected = recommendations_schema(id_type)
    rows = 0
    for name, f in files:
        parquet = pq.ParquetFile(f)
        try:
            check_schema(parquet.schema_arrow, expected, name)
        except ValueError as exc:
            raise DataValidationError(f"{exc} (manifest id_type {id_type!r})") from None
        rows += parquet.metadata.num_rows

    if rows != manifest["rows"]:
        raise IntegrityError(
            f"{run}: the Parquet files hold {rows} rows but {MANIFEST} says rows = {manifest['rows']}"
        )
    if manifest["users"] != rows:
        raise IntegrityError(
            f"{run}: {MANIFEST} says users = {manifest['users']} but rows = {rows} "
            "(a published run has one row per user)"
        )
    return PublishedRun(
        location=run,
        files=files,
        run_date=str(manifest["run_date"]),
        model_version=str(manifest["model_version"]),
        id_type=id_type,
        users=int(manifest["users"]),
        rows=rows,
        k=int(manifest["k"]) if manifest.get("k") is not None else None,
        manifest=manifest,
    )
