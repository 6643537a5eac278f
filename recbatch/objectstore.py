"""Complete-or-absent output folders on object stores (``s3://``, ``gs://``): attempts, a manifest, a marker.

An object store has no rename, atomic or not (an S3 "rename" is a copy and a
delete per object), so the POSIX swap of ``storage.publish_dir`` cannot exist
here. What a store does give: each object appears whole or not at all, and a
read after a write sees it. So the commit is one small object, the marker:

    <folder>/_SUCCESS                                the commit marker: JSON naming the committed attempt
    <folder>/.attempt-<time ns>-<id>/_manifest.json  that attempt's manifest (files, sizes, sha256)
    <folder>/.attempt-<time ns>-<id>/<data files>    that attempt's data, names unique to the attempt

A writer puts its data under a fresh attempt prefix (``staging_for``), then the
manifest (``write_manifest``), then replaces the marker whole in one write
(``publish``). A reader goes marker -> manifest -> exactly the files it names
(``open_folder``), never a listing: a writer killed at any point left only
objects no marker names, so readers still see the previous commit, whole.

A rerun commits a new attempt; the attempt it replaced is *retired*: the new
marker lists it with the time it was replaced, and it is deleted once
``storage.RETIRED_GRACE_SECONDS`` have passed (by a later publish into that
folder or ``remove_stale_staging``), so a reader that read the old marker just
before the swap still finds every file it names. Attempts no marker names
(killed writers) are deleted by ``remove_stale_staging``, which, as on POSIX,
runs only under the root's lease (recbatch/lease.py).

Attempt and data names start with ``.``/``_`` where they are not data, so
pyarrow's dataset discovery skips them; still, a plain listing of a folder sees
every attempt: go through ``open_folder``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from recbatch.errors import IntegrityError
from recbatch.fs import Location, access, check_access, list_folders, read_bytes, remove_tree, write_bytes
from recbatch.storage import (
    MANIFEST,
    RETIRED_GRACE_SECONDS,
    SUCCESS,
    OpenFolder,
    check_records,
    is_data_path,
    load_manifest,
    pin_manifest_files,
    sha256_stream,
)

ATTEMPT_PREFIX = ".attempt-"
# Reads of a commit marker before one that does not parse is called corrupt (read_marker: a marker
# replaced while it is read comes back torn), and the wait between them: a PUT of a few hundred bytes.
MARKER_READS = 3
MARKER_REREAD_WAIT_S = 0.05


def staging_for(final: Location) -> Location:
    """A fresh attempt prefix inside `final` (nothing is created: object stores have no folders).

    The name starts with the time, so attempts list in the order they began.
    The bucket is checked first, so wrong credentials or a missing bucket fail
    here with a message naming it, before a stage computes anything to write.
    """
    check_access(final)
    return final.join(f"{ATTEMPT_PREFIX}{time.time_ns()}-{uuid.uuid4().hex[:8]}")


def data_files(folder: Location) -> dict[str, int]:
    """The data objects under `folder` (names relative to it, hidden and ``_`` names excluded) and their sizes."""
    selector = pafs.FileSelector(folder.path, recursive=True, allow_not_found=True)
    with access(folder, "list"):
        infos = folder.filesystem.get_file_info(selector)
    files = {}
    for info in infos:
        name = info.path[len(folder.path) + 1 :]
        if info.type == pafs.FileType.File and is_data_path(tuple(name.split("/"))):
            files[name] = info.size
    return files


def write_manifest(
    staging: Location, fields: dict[str, Any], files: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Write the attempt's ``_manifest.json`` (with per-file size and sha256); it commits nothing yet.

    `files`: the records the writers reported, checked against a listing
    (names and sizes) instead of reading every object back through this process.
    """
    present = data_files(staging)
    if files is not None:
        check_records(staging.uri, present, files)
    else:
        files = {}
        for name, size in sorted(present.items()):
            part = staging.join(name)
            with access(part, f"read {part.key}"), part.filesystem.open_input_file(part.path) as f:
                files[name] = {"bytes": size, "sha256": sha256_stream(f)}
    manifest = {**fields, "files": files}
    write_bytes(staging.join(MANIFEST), json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return manifest


def read_marker(folder: Location) -> dict[str, Any] | None:
    """The folder's commit marker (``attempt``, ``committed_at``, ``retired``), or None before its first commit.

    The marker is the one object a publish overwrites in place, and pyarrow's S3
    reader takes an object's size from a HEAD before it GETs that byte range: a
    marker replaced between the two comes back torn (the old length of the new
    bytes; past a shorter new marker's end SeaweedFS returned other bytes, not
    even UTF-8). So a marker that does not parse is read again (``MARKER_READS``
    times in all) before it is called corrupt.
    """
    for read in range(MARKER_READS):
        try:
            raw = read_bytes(folder.join(SUCCESS))
        except FileNotFoundError:
            return None
        try:
            marker = json.loads(raw)
            marker["attempt"]
            return marker
        except (ValueError, TypeError, KeyError):  # ValueError: bad JSON, or bytes that are not UTF-8
            if read + 1 < MARKER_READS:
                time.sleep(MARKER_REREAD_WAIT_S)
    raise IntegrityError(f"{folder.uri}/{SUCCESS}: not a commit marker (JSON naming an attempt)")


def publish(staging: Location, final: Location, keep_replaced: bool = True) -> Location:
    """Commit the attempt `staging` as `final`'s content: one write of the marker, replacing it whole.

    The attempt it replaces is retired (listed in the new marker with the time);
    retired attempts past ``RETIRED_GRACE_SECONDS`` are dropped from the marker and deleted.
    ``keep_replaced=False`` (erasure) drops and deletes every retired attempt,
    the one replaced now included, right after the commit.
    """
    if staging.parent.path != final.path or not staging.name.startswith(ATTEMPT_PREFIX):
        raise ValueError(f"{staging.uri} is not an attempt of {final.uri} (use objectstore.staging_for)")
    manifest = staging.join(MANIFEST)
    with access(manifest, f"look up {manifest.key}"):
        if staging.filesystem.get_file_info(manifest.path).type != pafs.FileType.File:
            raise IntegrityError(f"{staging.uri}: no {MANIFEST}; write_manifest before publish")
    now_ns = time.time_ns()
    previous = read_marker(final)
    retired = list(previous.get("retired", [])) if previous else []
    if previous:
        retired.append({"attempt": previous["attempt"], "retired_at_ns": now_ns})
    kept = [r for r in retired if keep_replaced and not _expired(r, now_ns)]
    marker = {
        "attempt": staging.name,
        "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "retired": kept,
    }
    write_bytes(final.join(SUCCESS), json.dumps(marker, indent=2).encode())  # the commit
    for r in retired:
        if r not in kept:
            remove_tree(final.join(r["attempt"]))
    return final


def _expired(retired: dict[str, Any], now_ns: int) -> bool:
    return now_ns - int(retired["retired_at_ns"]) >= RETIRED_GRACE_SECONDS * 1_000_000_000


def attempts(folder: Location) -> list[Location]:
    """Every attempt under `folder`, committed or not, oldest first."""
    selector = pafs.FileSelector(folder.path, recursive=False, allow_not_found=True)
    with access(folder, "list"):
        infos = folder.filesystem.get_file_info(selector)
    names = sorted(i.base_name for i in infos if i.base_name.startswith(ATTEMPT_PREFIX))
    return [folder.join(n) for n in names]


def retired_copies(final: Location, now_ns: int | None = None) -> list[Location]:
    """The retired attempts of `final` still inside their grace period (as of `now_ns`, default: now)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    marker = read_marker(final) or {}
    return [final.join(r["attempt"]) for r in marker.get("retired", []) if not _expired(r, now_ns)]


def stale_attempts(final: Location, now_ns: int | None = None) -> list[Location]:
    """The attempts of `final` that readers cannot reach any more: never committed (a killed
    writer, or one at work right now) or retired past the grace period. Reads only."""
    marker = read_marker(final)
    keep = {marker["attempt"]} if marker else set()
    keep |= {r.name for r in retired_copies(final, now_ns)}
    return [a for a in attempts(final) if a.name not in keep]


def remove_stale_attempts(final: Location, now_ns: int | None = None) -> list[Location]:
    """Delete ``stale_attempts(final)``. Only under the root's lease: an attempt being
    written right now is also uncommitted."""
    removed = stale_attempts(final, now_ns)
    for attempt in removed:
        remove_tree(attempt)
    return removed


def remove_stale_staging(parent: Location, now_ns: int | None = None) -> list[Location]:
    """``remove_stale_attempts`` for every folder directly under `parent` (the POSIX function's scope)."""
    selector = pafs.FileSelector(parent.path, recursive=False, allow_not_found=True)
    with access(parent, "list"):
        infos = parent.filesystem.get_file_info(selector)
    removed: list[Location] = []
    for info in infos:
        if info.type == pafs.FileType.Directory:
            removed += remove_stale_attempts(parent.join(info.base_name), now_ns)
    return removed


def latest_committed(parent: Location) -> Location | None:
    """The folder directly under `parent` committed last (its marker's commit time, then its
    attempt's start time), or None when none is committed. The folders are listed, their
    markers read: nothing else under them."""
    committed = []
    for folder in list_folders(parent):
        marker = None if folder.name.startswith((".", "_")) else read_marker(folder)
        if marker is not None:
            committed.append(((marker["committed_at"], marker["attempt"]), folder))
    return max(committed, key=lambda c: c[0])[1] if committed else None


def read_manifest(folder: Location) -> dict[str, Any]:
    """The committed manifest (marker -> manifest), without opening the files it names."""
    return read_committed(folder)[0]


def read_committed(folder: Location) -> tuple[dict[str, Any], Location]:
    """The committed manifest and the attempt its file names are relative to, from one read of the marker."""
    attempt = _committed_attempt(folder)
    manifest = load_manifest(f"{folder.uri} (attempt {attempt.name})", lambda name: read_bytes(attempt.join(name)))
    return manifest, attempt


def _committed_attempt(folder: Location) -> Location:
    marker = read_marker(folder)
    if marker is None:
        raise IntegrityError(f"{folder.uri}: no {SUCCESS} marker, the output is incomplete")
    return folder.join(marker["attempt"])


class ObjectFolder(OpenFolder):
    """A committed object-store folder pinned at one commit: its manifest and every file it names, open.

    Pinned by the marker read once: later commits do not change what this
    object reads, and the files stay readable through the grace period after
    a commit replaces them (``RETIRED_GRACE_SECONDS``): finish reading within it.
    """

    def __init__(self, folder: Location, attempt: Location, manifest: dict[str, Any], files: dict[str, Any]) -> None:
        self.folder = folder  # type: ignore[assignment]  (a Location where OpenFolder has a Path)
        self.attempt = attempt
        self.manifest = manifest
        self.files = files  # manifest name -> open pyarrow random-access file

    def _present(self) -> set[str]:
        return set(data_files(self.attempt))

    @staticmethod
    def _size(f: Any) -> int:
        return f.size()

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def open_folder(folder: Location) -> ObjectFolder:
    """Pin a committed folder: marker -> manifest -> exactly the files it names (the reader contract)."""
    attempt = _committed_attempt(folder)

    def open_file(name: str) -> Any:
        part = attempt.join(name)
        with access(part, f"read {part.key}"):
            return part.filesystem.open_input_file(part.path)

    try:
        manifest, files = pin_manifest_files(
            f"{folder.uri} (attempt {attempt.name})", lambda name: read_bytes(attempt.join(name)), open_file
        )
    except FileNotFoundError as exc:
        raise IntegrityError(f"{folder.uri}: files do not match {MANIFEST}: missing [{exc}]") from None
    return ObjectFolder(folder, attempt, manifest, files)
