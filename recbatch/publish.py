"""Publish a staged, gated run as the recommendations of its date.

Publishing is the only step that changes what readers (the Redis loader,
analysts, DuckDB) see, so it is built to be safe to kill at any instant, on
either kind of root (recbatch/folders.py):

1. the staged run is verified against its manifest (every checksum);
2. its files are put into a fresh staging folder for the final one
   (``folders.staging_for``), each renamed with a publish id unique to this
   publish (``part-00000-<id>.parquet``): hard-linked on a local root (copied
   across filesystems), copied inside the store on an object store; then the
   manifest, extended by the gate's fields (metrics, gate result);
3. that folder becomes ``recommendations/dt=...`` in one step
   (``folders.publish``): locally one ``renameat2`` exchange, so the folder holds
   the old run or the new one, never a mix and never an empty window; on an
   object store one write of the ``_SUCCESS`` marker naming the new attempt,
   so a reader that goes marker -> manifest -> files (docs/operations.md) gets
   the old run or the new one;
4. only then is the staged folder removed, its ``_SUCCESS`` first.

Why the unique names: readers (polars, DuckDB, Ray Data) list a folder, then
open its files, some of them twice (footer, then pages). Had both runs used
``part-00000.parquet``, a swap between those steps would hand a reader the
footer of one run and the pages of the other, or a mix of old and new files
(measured: wrong row counts and "Invalid thrift" errors). With names unique
per publish, such a reader gets ``FileNotFoundError`` and simply retries; it
never reads a mix. (On an object store each attempt is a prefix of its own
anyway; the names stay the same so every reader sees one naming.)

A kill before step 3 leaves the previous run live (and a hidden staging
folder, or an attempt no marker names, that ``folders.remove_stale_staging``
clears); a kill after it leaves the new run live and the staged copy behind,
harmlessly.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from recbatch import folders
from recbatch.errors import IntegrityError
from recbatch.fs import Location, as_location, remove_file, remove_tree
from recbatch.storage import MANIFEST, SUCCESS

log = logging.getLogger(__name__)

# Manifest keys the scoring stage and publishing own; gate fields may not overwrite them.
_STAGED_KEYS = (
    "run_date", "model_version", "snapshot_hash", "id_type", "k", "users", "rows", "files", "publish_id",
)


def publish_run(
    staged: str | Path | Location, final: str | Path | Location, extra_manifest: dict[str, Any]
) -> Path | Location:
    """Atomically make the verified `staged` run the content of `final`; return `final` (a Path for a
    path, the Location for a Location: give Locations for an object-store root).

    `extra_manifest` (e.g. ``{"metrics": ..., "gate": ...}``) is merged into
    the published manifest, together with ``published_at``.
    """
    staged_at, final_at = as_location(staged), as_location(final)
    clash = sorted(set(extra_manifest) & set(_STAGED_KEYS))
    if clash:
        raise IntegrityError(f"publishing {staged_at}: extra manifest fields may not replace {clash}")
    manifest, files_at = _verified(staged_at)
    publish_id = uuid.uuid4().hex[:12]
    names = {name: _unique_name(name, publish_id) for name in manifest["files"]}
    expected_files = {names[name]: info for name, info in manifest["files"].items()}
    staging = folders.staging_for(final_at)
    try:
        folders.copy_files(files_at, staging, names)
        fields = {k: v for k, v in manifest.items() if k != "files"}
        fields.update(
            extra_manifest, publish_id=publish_id, published_at=dt.datetime.now(dt.timezone.utc).isoformat()
        )
        # Locally every copy is hashed again; a store checksums its own server-side copies, and
        # reading each byte back through this process is what copying inside the store avoided.
        published = folders.write_manifest(staging, fields, expected_files if staging.is_object_store else None)
        if published["files"] != expected_files:  # a copy went wrong or a file changed under us
            raise IntegrityError(f"{staging}: copied files do not match {staged_at}/{MANIFEST}")
    except BaseException:
        remove_tree(staging)
        raise
    folders.publish(staging, final_at)
    remove_file(staged_at.join(SUCCESS))  # first: a kill midway leaves an incomplete folder, never a partial run
    remove_tree(staged_at)
    log.info("published %s (%s rows) to %s", staged_at.name, manifest.get("rows"), final_at)
    return final if isinstance(final, Location) else Path(final)


def _verified(staged: Location) -> tuple[dict[str, Any], Location]:
    """The staged run's manifest, every file checked against it, and where its files are."""
    with folders.open_folder(staged) as pinned:
        pinned.verify()  # raises IntegrityError naming the bad file
        manifest = pinned.manifest
    committed, files_at = folders.read_committed(staged)
    if committed != manifest:  # restaged while we verified: nothing we checked may be published
        raise IntegrityError(f"{staged}: the staged run changed while it was being verified")
    return manifest, files_at


def _unique_name(name: str, publish_id: str) -> str:
    """``dir/part-00000.parquet`` -> ``dir/part-00000-<publish_id>.parquet``."""
    path = PurePosixPath(name)
    return str(path.with_name(f"{path.stem}-{publish_id}{path.suffix}"))
