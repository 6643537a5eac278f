"""One API for complete-or-absent output folders, whichever kind of root holds them.

A stage writes and reads its folders through these functions with a
``fs.Location``; each call goes to ``storage`` (a local root: staging folder,
atomic ``renameat2`` swap, ``_SUCCESS``) or to ``objectstore`` (an ``s3://`` or
``gs://`` root: attempt prefix, manifest, commit marker). Both keep the same
promise: a reader sees the whole previous output or the whole new one.

    final = locate(layout_path, cfg.storage)
    staging = staging_for(final)
    record = write_parquet_part(table, staging.join("part-00000.parquet"))  # on any worker
    write_manifest(staging, {"rows": n}, files={"part-00000.parquet": record})
    publish(staging, final)
    table = read_parquet_folder(final)

A content-addressed output (a snapshot, named by the hash of what it holds)
learns its folder's name only once it is written: it is written to scratch
first and put in place with ``publish_written``.

An output made by libraries that write only local files (matplotlib's plots,
the report's pages) is built in a local folder and published whole:

    with building(final) as built:
        render_into(built)
        publish_built(built, final, {"kind": "report"})
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from recbatch import objectstore, storage
from recbatch.errors import IntegrityError
from recbatch.fs import Location, access, local, make_parent, write_bytes

# Copies inside an object store in flight at once (copy_files): each is one request whose time is
# the store's latency, not bandwidth, so a few hundred partition files take seconds, not minutes.
COPY_THREADS = 16


def staging_for(final: Location) -> Location:
    """Where to write `final`'s next content before it is published."""
    if final.is_object_store:
        return objectstore.staging_for(final)
    return local(storage.staging_dir_for(final.path))


def write_parquet_part(table: pa.Table, part: Location, row_group_size: int | None = None) -> dict[str, Any]:
    """Write one Parquet part and return its manifest record (``{"bytes", "sha256"}``).

    The record comes from the bytes written, so a worker that writes a part
    reports it and ``write_manifest(..., files=records)`` need not read the
    part back. The encoded part is held in memory once: keep parts bounded
    (``score.rows_per_file``, ``ingest.users_per_partition``).
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size)
    data = sink.getvalue()
    make_parent(part)
    with access(part, f"write {part.key}"):
        with part.filesystem.open_output_stream(part.path) as out:
            out.write(data)
    return {"bytes": data.size, "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(
    staging: Location, fields: dict[str, Any], files: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The manifest of everything written to `staging` (per-file size and sha256) plus `fields`.

    `files`: the writers' own records (``write_parquet_part``), checked against
    what is there rather than read back; without it every file is hashed here.
    """
    if staging.is_object_store:
        return objectstore.write_manifest(staging, fields, files)
    return storage.write_manifest(staging.path, fields, files)


def publish(staging: Location, final: Location, keep_replaced: bool = True) -> Location:
    """Make `staging` the content of `final`, replacing any previous content whole.

    The replaced content stays readable through the grace period, for readers
    that pinned it; ``keep_replaced=False`` deletes it (and any earlier content
    still in its grace period) at once: erasure's replaced content holds rows
    that must go now, whatever a reader pinned.
    """
    if final.is_object_store:
        return objectstore.publish(staging, final, keep_replaced)
    storage.publish_dir(staging.path, final.path)
    if not keep_replaced:
        for retired in storage.retired_copies(final.path):
            shutil.rmtree(retired)
    return final


def publish_written(
    written: Location, final: Location, fields: dict[str, Any], files: dict[str, dict[str, Any]]
) -> Location:
    """Publish the files `written` to scratch (their writers' records in `files`) as `final`'s content.

    For an output whose name is known only once it is written (a snapshot is
    named by the hash of its files). A local root writes the manifest in the
    scratch folder and renames it into place; an object store has no rename, so
    each named file is copied inside the store (no byte passes through this
    process) into a fresh attempt of `final`, then manifest and marker follow.
    The scratch stays for the caller to remove.
    """
    if not final.is_object_store:
        storage.write_manifest(written.path, fields, files)
        storage.publish_dir(written.path, final.path)
        return final
    staging = staging_for(final)
    copy_files(written, staging, {name: name for name in files})
    objectstore.write_manifest(staging, fields, files)
    return objectstore.publish(staging, final)


@contextlib.contextmanager
def building(final: Location) -> Iterator[Path]:
    """A local folder to build `final`'s next content in with local file APIs; publish it with
    ``publish_built`` before the block ends. Its staging folder on a local root (published by a
    rename); a local temporary folder for an object store (uploaded). Removed if not published.
    """
    if final.is_object_store:
        built = Path(tempfile.mkdtemp(prefix="recbatch-build-"))
    else:
        built = storage.staging_dir_for(final.path)
    try:
        yield built
    finally:
        shutil.rmtree(built, ignore_errors=True)  # published on a local root: already gone


def publish_built(built: Path, final: Location, fields: dict[str, Any]) -> dict[str, Any]:
    """Publish the data files in `built` (from ``building``) as `final`'s content, with a manifest of
    them and `fields`; returns the manifest. On an object store each file is uploaded into a fresh
    attempt, its record taken from the local bytes (nothing is read back from the store)."""
    if not final.is_object_store:
        manifest = storage.write_manifest(built, fields)
        storage.publish_dir(built, final.path)
        return manifest
    staging = staging_for(final)
    files = {}
    for path in storage.data_files(built):
        name = path.relative_to(built).as_posix()
        write_bytes(staging.join(name), path.read_bytes())
        files[name] = {"bytes": path.stat().st_size, "sha256": storage.sha256_file(path)}
    manifest = objectstore.write_manifest(staging, fields, files)
    objectstore.publish(staging, final)
    return manifest


def copy_files(source: Location, target: Location, names: dict[str, str]) -> None:
    """Put each file ``source/<name>`` at ``target/<names[name]>``, on one filesystem.

    Locally a hard link (instant, no space; a copy across filesystems); on an
    object store a copy inside the store, many in flight, so no byte passes
    through this process.
    """
    if not target.is_object_store:
        for name, new_name in sorted(names.items()):
            make_parent(target.join(new_name))
            storage.link_or_copy(source.join(name).path, target.join(new_name).path)
        return

    def copy(name: str) -> None:
        with access(target, f"copy {name} into {target.key}"):
            target.filesystem.copy_file(source.join(name).path, target.join(names[name]).path)

    with ThreadPoolExecutor(COPY_THREADS) as pool:
        list(pool.map(copy, sorted(names)))


def open_folder(folder: Location) -> storage.OpenFolder:
    """Pin a complete folder: its manifest and exactly the files it names, open (the reader contract)."""
    if folder.is_object_store:
        return objectstore.open_folder(folder)
    return storage.open_folder(folder.path)


def read_manifest(folder: Location) -> dict[str, Any]:
    """A complete folder's manifest; IntegrityError when the folder is absent or incomplete."""
    if folder.is_object_store:
        return objectstore.read_manifest(folder)
    return storage.read_manifest(folder.path)


def read_committed(folder: Location) -> tuple[dict[str, Any], Location]:
    """A complete folder's manifest and where the files it names are: the folder itself, or on an
    object store its committed attempt. For readers that hand exactly those files to a query engine
    (polars, Ray Data) instead of reading them through ``open_folder``'s handles."""
    if folder.is_object_store:
        return objectstore.read_committed(folder)
    return storage.read_manifest(folder.path), folder


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
