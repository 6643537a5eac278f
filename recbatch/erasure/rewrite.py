"""Removing erased users' rows from the outputs already under the root.

Every output folder that holds a ``user_id`` column (snapshots, user
embeddings, staged, published and baseline runs, and any later output that
follows the folder contract) is rewritten the way it was written: into a
staging folder, with a new manifest, swapped in with ``storage.publish_dir``.
Files without erased rows are hard-linked unchanged; a file that loses rows is
written under a new name (``part-NNNNN-<token>``), so a reader that listed the
folder before the swap never opens a file of the new content by an old name.
The copy the swap retires holds the erased rows, so it is deleted at once,
not after the grace period; so is any leftover staging or retired copy that
holds them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from recbatch.errors import IntegrityError
from recbatch.storage import (
    MANIFEST, SUCCESS, hidden_copies, link_or_copy, open_folder, publish_dir, retired_copies, staging_dir_for, write_manifest,
)

log = logging.getLogger(__name__)

USER_COLUMN = "user_id"
_PART = re.compile(r"^(part-\d+)(-[^.]*)?$")  # part files: renamed when their content changes
# Snapshot counts that count rows of one table, by that table's file or folder of partition files.
_SNAPSHOT_COUNTS = {
    "interactions": "interactions",
    "users": "users",
    "quarantine/interactions": "quarantined_interactions",
    "quarantine/users": "quarantined_users",
}


def _snapshot_table(name: str) -> str:
    """``interactions/part-00003.parquet`` or ``interactions.parquet`` -> ``interactions``."""
    path = Path(name)
    return str(path.parent) if _PART.match(path.stem) else str(path.with_suffix(""))


@dataclass(frozen=True)
class Rewritten:
    """One folder rewritten without the erased users: rows removed per file."""

    folder: Path
    rows_removed: dict[str, int]
    manifest: dict[str, Any]


def output_folders(root: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Every complete output folder under `root` (``_SUCCESS`` + manifest), hidden copies excluded."""
    for top, dirs, files in os.walk(root):
        top_path = Path(top)
        if SUCCESS in files and MANIFEST in files:
            dirs.clear()  # a folder's sub-folders belong to it (quarantine/, encoder/)
            yield top_path
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and top_path / d not in skip)


def _value_set(ids: pa.Array, column_type: pa.DataType) -> pa.Array | None:
    """The erased ids as `column_type` (a quarantine table keeps ids as text), None if they cannot be."""
    try:
        return ids.cast(column_type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _erased_rows(f: Any, ids: pa.Array) -> pa.Array | None:
    """A mask of the file's rows that belong to erased users (None: the file has no user column)."""
    schema = pq.read_schema(f)
    f.seek(0)
    if USER_COLUMN not in schema.names:
        return None
    values = _value_set(ids, schema.field(USER_COLUMN).type)
    if values is None:
        return None
    users = pq.read_table(f, columns=[USER_COLUMN]).column(USER_COLUMN)
    f.seek(0)
    return pc.fill_null(pc.is_in(users, value_set=values), False)


def rewrite_folder(folder: Path, ids: pa.Array, request_id: str) -> Rewritten | None:
    """Rewrite `folder` without the rows of `ids`; None (and nothing written) when it holds none."""
    with open_folder(folder) as pinned:
        masks = {}
        for name, f in pinned.parquet_files():
            mask = _erased_rows(f, ids)
            if mask is not None and pc.any(mask).as_py():
                masks[name] = mask
        if not masks:
            return None
        token = uuid.uuid4().hex[:12]
        staging = staging_dir_for(folder)
        try:
            names = {}
            for name, f in pinned.files.items():
                target = staging / _new_name(name, token) if name in masks else staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                names[name] = str(target.relative_to(staging))
                if name in masks:
                    table = pq.read_table(f).filter(pc.invert(masks[name]))
                    pq.write_table(table, target)
                else:
                    link_or_copy(folder / name, target)
            removed = {name: int(pc.sum(mask).as_py()) for name, mask in masks.items()}
            fields = _updated_fields(pinned.manifest, removed, staging, request_id)
            manifest = write_manifest(staging, fields)
            for name, info in pinned.manifest["files"].items():  # a linked file must be the one pinned
                if name not in masks and manifest["files"][names[name]]["sha256"] != info["sha256"]:
                    raise IntegrityError(f"{folder}/{name} changed while erasure rewrote {folder}")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    publish_dir(staging, folder)
    for retired in retired_copies(folder):
        shutil.rmtree(retired)  # it holds the erased rows: no grace period
    log.info("erasure %s: rewrote %s (%s)", request_id, folder, removed)
    return Rewritten(folder, removed, manifest)


def _new_name(name: str, token: str) -> str:
    path = Path(name)
    match = _PART.match(path.stem)
    if match is None:  # a name other stages rely on (snapshot tables) stays
        return name
    return str(path.with_name(f"{match.group(1)}-{token}{path.suffix}"))


def _updated_fields(manifest: dict[str, Any], removed: dict[str, int], staging: Path, request_id: str) -> dict:
    """The manifest with its counts reduced and the erasure recorded (no ids)."""
    fields = {k: v for k, v in manifest.items() if k != "files"}
    total = sum(removed.values())
    if isinstance(fields.get("counts"), dict):  # a snapshot
        counts = dict(fields["counts"])
        by_table: dict[str, int] = {}
        for name, n in removed.items():
            by_table[_snapshot_table(name)] = by_table.get(_snapshot_table(name), 0) + n
        for table, n in by_table.items():
            if table in _SNAPSHOT_COUNTS:
                counts[_SNAPSHOT_COUNTS[table]] -= n
        split_path = staging / "split" if (staging / "split").is_dir() else staging / "split.parquet"
        splits = pads.dataset(split_path, format="parquet").to_table(columns=["split"]).column("split")
        for split, n in _value_counts(splits).items():
            counts[split] = n
        counts["erased_interactions"] = counts.get("erased_interactions", 0) + by_table.get("interactions", 0)
        counts["erased_users"] = counts.get("erased_users", 0) + by_table.get("users", 0)
        fields["counts"] = counts
    else:  # a table of users (embeddings) or of lists, one row per user (runs)
        for key in ("rows", "users"):
            if isinstance(fields.get(key), int):
                fields[key] -= total
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    fields["erasure"] = [*fields.get("erasure", []), {"request_id": request_id, "at": at, "rows_removed": removed}]
    return fields


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.combine_chunks())
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def remove_copies_holding(root: Path, ids: pa.Array) -> list[Path]:
    """Delete every staging or retired copy under `root` that holds a row of `ids`.

    Copies without such rows are left to the usual grace period and cleanup.
    """
    removed = []
    for copy in hidden_copies(root):
        if any(_holds(p, ids) for p in copy.rglob("*.parquet")):
            shutil.rmtree(copy, ignore_errors=True)
            removed.append(copy)
    return removed


def _holds(path: Path, ids: pa.Array) -> bool:
    try:
        with open(path, "rb") as f:
            mask = _erased_rows(f, ids)
    except (OSError, pa.ArrowException):  # half-written by a killed run: it goes if anything does
        return True
    return mask is not None and bool(pc.any(mask).as_py())
