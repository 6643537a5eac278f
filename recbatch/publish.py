"""Publish a staged, gated run as the recommendations of its date.

Publishing is the only step that changes what readers (the Redis loader,
analysts, DuckDB) see, so it is built to be safe to kill at any instant:

1. the staged run is verified against its manifest (every checksum);
2. its files are hard-linked (or copied across filesystems) into a fresh
   staging folder beside the final one, each renamed with a publish id
   unique to this publish (``part-00000-<id>.parquet``), with the manifest
   extended by the gate's fields (metrics, gate result) and ``_SUCCESS``
   written last;
3. that folder replaces ``recommendations/dt=...`` in one ``renameat2``
   exchange, so the folder holds the old run or the new one, never a mix and
   never an empty window;
4. only then is the staged folder removed.

Why the unique names: readers (polars, DuckDB, Ray Data) list a folder, then
open its files, some of them twice (footer, then pages). Had both runs used
``part-00000.parquet``, a swap between those steps would hand a reader the
footer of one run and the pages of the other, or a mix of old and new files
(measured: wrong row counts and "Invalid thrift" errors). With names unique
per publish, such a reader gets ``FileNotFoundError`` and simply retries; it
never reads a mix.

A kill before step 3 leaves the previous run live (and a hidden staging
folder that ``storage.remove_stale_staging`` clears); a kill after it leaves
the new run live and the staged copy behind, harmlessly.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from recbatch.errors import IntegrityError
from recbatch.storage import (
    MANIFEST, data_files, link_or_copy, publish_dir, staging_dir_for, verify_manifest, write_manifest,
)

log = logging.getLogger(__name__)

# Manifest keys the scoring stage and publishing own; gate fields may not overwrite them.
_STAGED_KEYS = (
    "run_date", "model_version", "snapshot_hash", "id_type", "k", "users", "rows", "files", "publish_id",
)


def publish_run(staged: str | Path, final: str | Path, extra_manifest: dict[str, Any]) -> Path:
    """Atomically make the verified `staged` run the content of `final`; return `final`.

    `extra_manifest` (e.g. ``{"metrics": ..., "gate": ...}``) is merged into
    the published manifest, together with ``published_at``.
    """
    staged, final = Path(staged), Path(final)
    manifest = verify_manifest(staged)  # raises IntegrityError naming the bad file
    clash = sorted(set(extra_manifest) & set(_STAGED_KEYS))
    if clash:
        raise IntegrityError(f"publishing {staged}: extra manifest fields may not replace {clash}")
    staging = staging_dir_for(final)
    publish_id = uuid.uuid4().hex[:12]
    try:
        expected_files = {}
        for source in data_files(staged):
            name = source.relative_to(staged)
            target = staging / name.with_name(f"{name.stem}-{publish_id}{name.suffix}")
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source, target)
            expected_files[str(target.relative_to(staging))] = manifest["files"][str(name)]
        fields = {k: v for k, v in manifest.items() if k != "files"}
        fields.update(
            extra_manifest, publish_id=publish_id, published_at=dt.datetime.now(dt.timezone.utc).isoformat()
        )
        published = write_manifest(staging, fields)
        if published["files"] != expected_files:  # a copy went wrong or a file changed under us
            raise IntegrityError(f"{staging}: copied files do not match {staged / MANIFEST}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_dir(staging, final)
    shutil.rmtree(staged, ignore_errors=True)
    log.info("published %s (%s rows) to %s", staged.name, manifest.get("rows"), final)
    return final
