"""Complete-or-absent output folders: staging, atomic publish, manifests.

Every stage writes into a hidden staging folder beside its final location and
only then publishes it. On Linux the publish is one ``renameat2(RENAME_EXCHANGE)``
call, which swaps the staging folder with the live one atomically: a reader
sees either the whole previous output or the whole new one, never a mix and
never an empty window (the failure mode of overwrite-in-place writers). Where
the exchange is unavailable we fall back to two renames and say so in the log.

A manifest (``_manifest.json``: counts, per-file checksums, anything the stage
wants to record) is written inside the staging folder, and ``_SUCCESS`` last,
so a folder with ``_SUCCESS`` is known complete and verifiable.

The reading half of the contract is ``open_folder``: it pins the folder at one
instant (one directory handle), reads the manifest through it and opens exactly
the files the manifest names. A reader that goes through it never sees a mix of
two outputs, a partial one or an empty one, however often the folder is
republished under it. The output a swap replaces is *retired*: renamed aside
and deleted only after ``RETIRED_GRACE_SECONDS``, so even a bare directory
listing that started just before the swap finds whole files, never an empty
folder being deleted under it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from recbatch.errors import IntegrityError

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100

# How long the previous content of a republished folder stays on disk under a
# hidden ``.retired-*`` name. Readers through ``open_folder`` do not need it
# (they hold their files open); it is for tools that list the folder and then
# open what they listed (polars/DuckDB/Spark globs), which would otherwise find
# an empty folder if the listing began just before the swap. Minutes, because a
# listing takes milliseconds; the cost is one extra copy of a republished folder.
RETIRED_GRACE_SECONDS = 15 * 60

# open_folder tries again, this many times in all, when the folder or a file its
# manifest names vanished while it was being opened: the folder was replaced in
# between (two renames where renameat2 is missing leave a moment with no folder).
# The pause doubles each time, from OPEN_RETRY_PAUSE_SECONDS: ~0.3 s in all.
OPEN_ATTEMPTS = 5
OPEN_RETRY_PAUSE_SECONDS = 0.01


def staging_dir_for(final: str | Path) -> Path:
    """A fresh, empty staging folder next to `final` (same filesystem, so rename works)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".staging-{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2; False when the OS lacks it."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        log.warning("renameat2 exchange failed (%s); falling back", os.strerror(err))
        return False
    return True


def publish_dir(staging: str | Path, final: str | Path) -> Path:
    """Move a finished staging folder to `final`, replacing any previous one atomically.

    The previous content is retired (renamed aside, deleted after the grace
    period by a later publish or ``remove_stale_staging``), never deleted in place.
    """
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.rename(staging, final)
        return final
    retired = final.parent / f".retired-{final.name}-{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    if _exchange(staging, final):
        os.rename(staging, retired)  # staging now holds the previous output
    else:  # two renames: a reader in between finds no folder and retries (open_folder does)
        os.rename(final, retired)
        os.rename(staging, final)
    remove_retired(final.parent)
    return final


def remove_retired(parent: str | Path, now_ns: int | None = None) -> list[Path]:
    """Delete retired folders older than ``RETIRED_GRACE_SECONDS`` (as of `now_ns`, default: now)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    removed = []
    for p in Path(parent).glob(".retired-*"):
        retired_at = p.name.rsplit("-", 2)[-2]
        if retired_at.isdigit() and now_ns - int(retired_at) >= RETIRED_GRACE_SECONDS * 1_000_000_000:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def retired_copies(final: str | Path) -> list[Path]:
    """The retired copies of `final`: its previous contents, kept aside through the grace period."""
    final = Path(final)
    return sorted(final.parent.glob(f".retired-{final.name}-*"))


def hidden_copies(root: str | Path) -> list[Path]:
    """Every staging and retired folder under `root`, at any depth (not those inside another).

    For erasure (recbatch/erasure): copies that are not, or no longer, published still hold data.
    """
    found: list[Path] = []
    for top, dirs, _ in os.walk(root):
        hidden = [d for d in dirs if d.startswith((".staging-", ".retired-"))]
        found += [Path(top) / d for d in hidden]
        dirs[:] = [d for d in dirs if d not in hidden]
    return sorted(found)


def remove_stale_staging(parent: str | Path) -> list[Path]:
    """Delete staging folders left by killed runs (never published) and expired retired copies."""
    parent = Path(parent)
    removed = []
    if parent.exists():
        for p in parent.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        removed += remove_retired(parent)
    return removed


@contextlib.contextmanager
def replacing_file(path: str | Path) -> Iterator[Path]:
    """A temporary path to write a single file to; on success it is renamed over `path`.

    For small files outside the folder contract (logs, lists): a reader finds
    the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """Put `source`'s file at `target`: a hard link is instant and costs no space; another filesystem needs a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f: BinaryIO, chunk: int = 1 << 20) -> str:
    """The sha256 of an open file from its start; leaves the position at 0 for the next reader."""
    f.seek(0)
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    f.seek(0)
    return h.hexdigest()


def data_files(folder: str | Path) -> list[Path]:
    """Data files of an output folder: everything except hidden and ``_`` files."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_data_path(p.relative_to(folder).parts))


def is_data_path(parts: tuple[str, ...]) -> bool:
    """A path (its parts, relative to the output folder) is data unless a part is hidden or ``_``-named."""
    return not any(part.startswith((".", "_")) for part in parts)


def write_manifest(
    folder: str | Path, fields: dict[str, Any], files: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Write ``_manifest.json`` (with per-file size and sha256) then ``_SUCCESS``.

    `files`: the records the writers reported (``{name: {"bytes", "sha256"}}``,
    e.g. from ``folders.write_parquet_part``); checked against the folder's data
    files and sizes, not read back. Without it every file is read and hashed here.
    """
    folder = Path(folder)
    if files is None:
        files = {
            str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in data_files(folder)
        }
    else:
        check_records(str(folder), {str(p.relative_to(folder)): p.stat().st_size for p in data_files(folder)}, files)
    manifest = {**fields, "files": dict(sorted(files.items()))}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    (folder / SUCCESS).write_text("")
    return manifest


def check_records(label: str, present: dict[str, int], files: dict[str, dict[str, Any]]) -> None:
    """Raise IntegrityError unless the data files `present` (name -> size) are exactly the reported `files`."""
    missing = sorted(set(files) - set(present))
    extra = sorted(set(present) - set(files))
    wrong = sorted(name for name in set(files) & set(present) if present[name] != files[name]["bytes"])
    if missing or extra or wrong:
        raise IntegrityError(
            f"{label}: the reported files do not match what was written: missing {missing[:3]} "
            f"extra {extra[:3]} wrong size {wrong[:3]}"
        )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not (folder / SUCCESS).exists():
        raise IntegrityError(f"{folder}: no {SUCCESS} marker, the output is incomplete")
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{folder}: {MANIFEST} is missing") from None
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{folder}: {MANIFEST} is not valid JSON ({exc})") from None


def verify_manifest(folder: str | Path, checksums: bool = True) -> dict[str, Any]:
    """Check ``_SUCCESS``, the file list, sizes and (optionally) checksums; return the manifest."""
    with open_folder(folder) as pinned:
        pinned.verify(checksums)
        return pinned.manifest


class OpenFolder:
    """A complete output folder pinned at one instant: its manifest and every file it names, open.

    Everything is read through one directory handle, so the manifest and the
    files come from the same output even if the folder is republished
    meanwhile; open files stay readable after their folder is deleted.
    Use as a context manager (``with open_folder(path) as pinned``).
    """

    def __init__(self, folder: Path, dir_fd: int, manifest: dict[str, Any], files: dict[str, BinaryIO]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.files = files  # manifest name -> open binary file, position 0
        self._dir_fd = dir_fd

    def parquet_files(self) -> list[tuple[str, BinaryIO]]:
        """The Parquet files the manifest names, sorted by name (the order they were written)."""
        return sorted((name, f) for name, f in self.files.items() if name.endswith(".parquet"))

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        """All Parquet files as one Arrow table (``pl.from_arrow`` gives a polars frame)."""
        tables = [pq.read_table(f, columns=columns) for _, f in self.parquet_files()]
        if not tables:
            raise IntegrityError(f"{self.folder}: {MANIFEST} names no Parquet file")
        return pa.concat_tables(tables)

    def verify(self, checksums: bool = True) -> None:
        """Raise IntegrityError unless the files present, their sizes and sha256 match the manifest."""
        present = self._present()
        missing = sorted(set(self.files) - present)
        extra = sorted(present - set(self.files))
        if missing or extra:
            raise IntegrityError(
                f"{self.folder}: files do not match {MANIFEST}: missing {missing[:3]} extra {extra[:3]}"
            )
        for name, info in self.manifest["files"].items():
            size = self._size(self.files[name])
            if size != info["bytes"]:
                raise IntegrityError(f"{self.folder}/{name}: size {size} != manifest {info['bytes']}")
            if checksums and sha256_stream(self.files[name]) != info["sha256"]:
                raise IntegrityError(f"{self.folder}/{name}: sha256 does not match {MANIFEST}")

    def _present(self) -> set[str]:
        """The data files in the pinned folder now (names relative to it)."""
        listed = (
            os.path.normpath(os.path.join(top, name))
            for top, _, names, _ in os.fwalk(".", dir_fd=self._dir_fd)
            for name in names
        )
        return {name for name in listed if is_data_path(Path(name).parts)}

    @staticmethod
    def _size(f: Any) -> int:
        """The size of one pinned, open file."""
        return os.fstat(f.fileno()).st_size

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        os.close(self._dir_fd)

    def __enter__(self) -> "OpenFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_folder(folder: str | Path) -> OpenFolder:
    """Pin a complete output folder: the reader contract (see the module doc).

    Raises IntegrityError when the folder is absent or incomplete, or when a
    file its manifest names is missing; a file that vanished because the
    folder was republished while being opened is retried on the new folder.
    """
    folder = Path(folder)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        if attempt > 1:
            time.sleep(OPEN_RETRY_PAUSE_SECONDS * 2 ** (attempt - 2))
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            # A publish in flight, between its two renames: its staging folder is there, or
            # by now (checked second) the folder is back.
            in_flight = any(folder.parent.glob(f".staging-{folder.name}-*")) or folder.exists()
            if attempt < OPEN_ATTEMPTS and in_flight:
                continue
            raise IntegrityError(f"{folder}: no {SUCCESS} marker, the output is incomplete") from None
        try:
            return _pin(folder, dir_fd)
        except FileNotFoundError as exc:
            os.close(dir_fd)
            if attempt == OPEN_ATTEMPTS:
                raise IntegrityError(
                    f"{folder}: files do not match {MANIFEST}: missing [{exc.filename!r}]"
                ) from None
        except BaseException:
            os.close(dir_fd)
            raise
    raise AssertionError("unreachable")


def _pin(folder: Path, dir_fd: int) -> OpenFolder:
    def open_at(name: str) -> BinaryIO:
        try:
            return os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dir_fd), "rb")
        except FileNotFoundError as exc:
            exc.filename = name
            raise

    def read_at(name: str) -> bytes:
        with open_at(name) as f:
            return f.read()

    try:
        open_at(SUCCESS).close()
    except FileNotFoundError:
        raise IntegrityError(f"{folder}: no {SUCCESS} marker, the output is incomplete") from None
    manifest, files = pin_manifest_files(str(folder), read_at, open_at)
    return OpenFolder(folder, dir_fd, manifest, files)


def load_manifest(label: str, read: Callable[[str], bytes]) -> dict[str, Any]:
    """``_manifest.json`` read through `read`; IntegrityError naming `label` when missing or not JSON."""
    try:
        return json.loads(read(MANIFEST))
    except FileNotFoundError:
        raise IntegrityError(f"{label}: {MANIFEST} is missing") from None
    except json.JSONDecodeError as exc:
        raise IntegrityError(f"{label}: {MANIFEST} is not valid JSON ({exc})") from None


def pin_manifest_files(
    label: str, read: Callable[[str], bytes], open_file: Callable[[str], Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest (through `read`) and every file it names, open (through `open_file`).

    The half of the reader contract both kinds of root share (``open_folder`` here,
    ``objectstore.open_folder``). A missing manifest or bad JSON raises IntegrityError
    naming `label`; a missing file raises FileNotFoundError, with every file opened so
    far closed, for the caller to retry or report.
    """
    manifest = load_manifest(label, read)
    files: dict[str, Any] = {}
    try:
        for name in manifest.get("files", {}):
            files[name] = open_file(name)
    except BaseException:
        for f in files.values():
            f.close()
        raise
    return manifest, files


def read_parquet_folder(folder: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The Parquet files of a complete output folder, read through ``open_folder`` (one whole output)."""
    with open_folder(folder) as pinned:
        return pinned.read_table(columns)


def is_complete(folder: str | Path) -> bool:
    """True when `folder` was published with a manifest that still matches (sizes only)."""
    try:
        verify_manifest(folder, checksums=False)
        return True
    except (IntegrityError, OSError):
        return False
