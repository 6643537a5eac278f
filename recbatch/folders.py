"""One API for complete-or-absent output folders, whichever kind of root holds them.

A stage writes and reads its folders through these functions with a
``fs.Location``; each call goes to ``storage`` (a local root: staging folder,
atomic ``renameat2`` swap, ``_SUCCESS``) or to ``objectstore`` (an ``s3://`` or
``gs://`` root: attempt prefix, manifest, commit marker). Both keep the same
promise: a reader sees the whole previous output or the whole new one.

    final = locate(layout_path, cfg.storage)
    staging = staging_for(final)
    pq.write_table(table, staging.join("part-00000.parquet").path, filesystem=staging.filesystem)
    write_manifest(staging, {"rows": n})
    publish(staging, final)
    table = read_parquet_folder(final)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from recbatch import objectstore, storage
from recbatch.errors import IntegrityError
from recbatch.fs import Location, local


def staging_for(final: Location) -> Location:
    """Where to write `final`'s next content before it is published."""
    if final.is_object_store:
        return objectstore.staging_for(final)
    return local(storage.staging_dir_for(final.path))


def write_manifest(staging: Location, fields: dict[str, Any]) -> dict[str, Any]:
    """The manifest of everything written to `staging` (per-file size and sha256) plus `fields`."""
    if staging.is_object_store:
        return objectstore.write_manifest(staging, fields)
    return storage.write_manifest(staging.path, fields)


def publish(staging: Location, final: Location) -> Location:
    """Make `staging` the content of `final`, replacing any previous content whole."""
    if final.is_object_store:
        return objectstore.publish(staging, final)
    storage.publish_dir(staging.path, final.path)
    return final


def open_folder(folder: Location) -> storage.OpenFolder:
    """Pin a complete folder: its manifest and exactly the files it names, open (the reader contract)."""
    if folder.is_object_store:
        return objectstore.open_folder(folder)
    return storage.open_folder(folder.path)


def read_manifest(folder: Location) -> dict[str, Any]:
    """A complete folder's manifest; IntegrityError when the folder is absent or incomplete."""
    if folder.is_object_store:
        with objectstore.open_folder(folder) as pinned:
            return pinned.manifest
    return storage.read_manifest(folder.path)


def verify_manifest(folder: Location, checksums: bool = True) -> dict[str, Any]:
    """Check the files, sizes and (optionally) sha256 against the manifest; return the manifest."""
    with open_folder(folder) as pinned:
        pinned.verify(checksums)
        return pinned.manifest


def is_complete(folder: Location) -> bool:
    """True when `folder` was published with a manifest that still matches (sizes only)."""
    if not folder.is_object_store:
        return storage.is_complete(folder.path)
    try:
        verify_manifest(folder, checksums=False)
        return True
    except IntegrityError:
        return False


def read_parquet_folder(folder: Location, columns: list[str] | None = None) -> pa.Table:
    """The Parquet files of a complete folder, read through `open_folder` (one whole output)."""
    with open_folder(folder) as pinned:
        return pinned.read_table(columns)


def remove_stale_staging(parent: Location) -> list[Location]:
    """Delete what killed writers left under `parent` and retired copies past their grace period.

    Only under the root's lease (recbatch/lease.py): a writer at work right now
    also looks like a killed one.
    """
    if parent.is_object_store:
        return objectstore.remove_stale_staging(parent)
    return [local(p) for p in storage.remove_stale_staging(Path(parent.path))]
