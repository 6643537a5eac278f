"""Removing erased users' rows from the outputs already under the root, on either kind of root.

Every output folder that holds a ``user_id`` column (snapshots, user
embeddings, staged, published and baseline runs, and any later output that
follows the folder contract) is rewritten the way it was written, through
recbatch/folders.py: the committed files read through the manifest, the
filtered ones written into ``folders.staging_for(folder)``, the unchanged ones
put there by ``folders.copy_files`` (a hard link locally, a copy inside an
object store), a new manifest with the folder's fields, and ``folders.publish``.
A file that loses rows is written under a new name (``part-NNNNN-<token>``), so
a reader that listed the folder before the swap never opens a file of the new
content by an old name. The content the swap replaces holds the erased rows,
so it is deleted at once (``keep_replaced=False``), not after the grace
period; so is any leftover staging copy, retired copy or uncommitted attempt
that holds them.

Output folders are found by their commit markers (``_SUCCESS``): a folder is
listed only to see its marker and sub-folders, never to read its data.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from recbatch import folders
from recbatch.fs import Location, access, local, remove_tree
from recbatch.objectstore import ATTEMPT_PREFIX, ObjectFolder, read_marker
from recbatch.storage import MANIFEST, SUCCESS, OpenFolder, hidden_copies

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

    folder: Location
    rows_removed: dict[str, int]
    manifest: dict[str, Any]


def _entries(folder: Location) -> list[pafs.FileInfo]:
    """What is directly in `folder` (its marker, its sub-folders), by name."""
    selector = pafs.FileSelector(folder.path, recursive=False, allow_not_found=True)
    with access(folder, "list"):
        return sorted(folder.filesystem.get_file_info(selector), key=lambda i: i.base_name)


def _tree(root: Location, skip: tuple[Location, ...]) -> Iterator[tuple[Location, list[pafs.FileInfo]]]:
    """Each folder under `root` outside any output folder, with its entries; hidden folders and `skip` excluded."""
    entries = _entries(root)
    yield root, entries
    if _committed(root, entries):
        return  # a folder's sub-folders belong to it (quarantine/, encoder/, its attempts)
    skipped = {s.path for s in skip}
    for info in entries:
        child = root.join(info.base_name)
        if info.type == pafs.FileType.Directory and not info.base_name.startswith(".") and child.path not in skipped:
            yield from _tree(child, skip)


def _committed(folder: Location, entries: list[pafs.FileInfo]) -> bool:
    """An output folder: its commit marker is there (and, on a local root, its manifest beside it)."""
    names = {i.base_name for i in entries if i.type == pafs.FileType.File}
    return SUCCESS in names and (folder.is_object_store or MANIFEST in names)


def output_folders(root: Location, skip: tuple[Location, ...] = ()) -> Iterator[Location]:
    """Every committed output folder under `root`, found by its commit marker."""
    return (folder for folder, entries in _tree(root, skip) if _committed(folder, entries))


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


def rewrite_folder(folder: Location, ids: pa.Array, request_id: str) -> Rewritten | None:
    """Rewrite `folder` without the rows of `ids`; None (and nothing written) when it holds none."""
    with folders.open_folder(folder) as pinned:
        masks = {}
        for name, f in pinned.parquet_files():
            mask = _erased_rows(f, ids)
            if mask is not None and pc.any(mask).as_py():
                masks[name] = mask
        if not masks:
            return None
        token = uuid.uuid4().hex[:12]
        staging = folders.staging_for(folder)
        try:
            records, unchanged = {}, {}
            for name, info in pinned.manifest["files"].items():
                if name in masks:
                    table = pq.read_table(pinned.files[name]).filter(pc.invert(masks[name]))
                    records[_new_name(name, token)] = folders.write_parquet_part(
                        table, staging.join(_new_name(name, token)))
                else:  # the committed file, byte for byte (under the root's lease nothing else writes)
                    records[name] = info
                    unchanged[name] = name
            folders.copy_files(_committed_files(pinned, folder), staging, unchanged)
            removed = {name: int(pc.sum(mask).as_py()) for name, mask in masks.items()}
            fields = _updated_fields(pinned.manifest, removed, staging, sorted(records), request_id)
            manifest = folders.write_manifest(staging, fields, files=records)
        except BaseException:
            remove_tree(staging)
            raise
    folders.publish(staging, folder, keep_replaced=False)  # the replaced content holds the erased rows
    log.info("erasure %s: rewrote %s (%s)", request_id, folder, removed)
    return Rewritten(folder, removed, manifest)


def _committed_files(pinned: OpenFolder, folder: Location) -> Location:
    """Where the pinned folder's files are: its committed attempt on an object store, the folder itself locally."""
    return pinned.attempt if isinstance(pinned, ObjectFolder) else folder


def _new_name(name: str, token: str) -> str:
    path = Path(name)
    match = _PART.match(path.stem)
    if match is None:  # a name other stages rely on (snapshot tables) stays
        return name
    return str(path.with_name(f"{match.group(1)}-{token}{path.suffix}"))


def _updated_fields(
    manifest: dict[str, Any], removed: dict[str, int], staging: Location, names: list[str], request_id: str
) -> dict:
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
        split_files = [staging.join(n).path for n in names if _snapshot_table(n) == "split"]
        splits = pads.dataset(split_files, filesystem=staging.filesystem, format="parquet").to_table(
            columns=["split"]).column("split")
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


def remove_copies_holding(root: Location, ids: pa.Array) -> list[Location]:
    """Delete every copy under `root` that no reader is sent to any more and that holds a row of `ids`:
    staging and retired folders on a local root, every attempt but the committed one on an object store.

    Copies without such rows are left to the usual grace period and cleanup.
    """
    removed = []
    for copy in _copies(root):
        if any(_holds(copy, info, ids) for info in _parquet_files(copy)):
            remove_tree(copy)
            removed.append(copy)
    return removed


def _copies(root: Location) -> list[Location]:
    if not root.is_object_store:
        return [local(p) for p in hidden_copies(root.path)]
    found = []
    for folder, entries in _tree(root, ()):
        marker = read_marker(folder) if _committed(folder, entries) else None
        committed = marker["attempt"] if marker else None
        found += [folder.join(i.base_name) for i in entries
                  if i.type == pafs.FileType.Directory and i.base_name.startswith(ATTEMPT_PREFIX)
                  and i.base_name != committed]
    return found


def _parquet_files(copy: Location) -> list[pafs.FileInfo]:
    """The Parquet files in a copy no reader uses (a listing is its only index: it may have no manifest)."""
    selector = pafs.FileSelector(copy.path, recursive=True, allow_not_found=True)
    with access(copy, "list"):
        infos = copy.filesystem.get_file_info(selector)
    return [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")]


def _holds(copy: Location, info: pafs.FileInfo, ids: pa.Array) -> bool:
    try:
        with access(copy, f"read {info.path}"), copy.filesystem.open_input_file(info.path) as f:
            mask = _erased_rows(f, ids)
    except (OSError, pa.ArrowException):  # half-written by a killed run: it goes if anything does
        return True
    return mask is not None and bool(pc.any(mask).as_py())
