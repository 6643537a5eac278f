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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from recbatch.errors import IntegrityError

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


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
    """Move a finished staging folder to `final`, replacing any previous one atomically."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.rename(staging, final)
        return final
    if _exchange(staging, final):
        shutil.rmtree(staging)  # now holds the previous output
        return final
    previous = final.parent / f".previous-{final.name}-{uuid.uuid4().hex[:8]}"
    os.rename(final, previous)
    os.rename(staging, final)
    shutil.rmtree(previous)
    return final


def remove_stale_staging(parent: str | Path) -> list[Path]:
    """Delete staging folders left by killed runs (they were never published)."""
    parent = Path(parent)
    removed = []
    if parent.exists():
        for p in parent.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def data_files(folder: str | Path) -> list[Path]:
    """Data files of an output folder: everything except hidden and ``_`` files."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(folder).parts)
    )


def write_manifest(folder: str | Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Write ``_manifest.json`` (with per-file size and sha256) then ``_SUCCESS``."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in data_files(folder)
    }
    manifest = {**fields, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
    (folder / SUCCESS).write_text("")
    return manifest


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
    """Check ``_SUCCESS``, the file list, sizes and (optionally) checksums."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed = manifest.get("files", {})
    present = {str(p.relative_to(folder)) for p in data_files(folder)}
    missing = sorted(set(listed) - present)
    extra = sorted(present - set(listed))
    if missing or extra:
        raise IntegrityError(
            f"{folder}: files do not match {MANIFEST}: missing {missing[:3]} extra {extra[:3]}"
        )
    for name, info in listed.items():
        p = folder / name
        if p.stat().st_size != info["bytes"]:
            raise IntegrityError(f"{folder}/{name}: size {p.stat().st_size} != manifest {info['bytes']}")
        if checksums and sha256_file(p) != info["sha256"]:
            raise IntegrityError(f"{folder}/{name}: sha256 does not match {MANIFEST}")
    return manifest


def is_complete(folder: str | Path) -> bool:
    """True when `folder` was published with a manifest that still matches (sizes only)."""
    try:
        verify_manifest(folder, checksums=False)
        return True
    except (IntegrityError, OSError):
        return False
