"""Models and training runs that learned from erased users' data.

A model's weights cannot be edited to forget a user; the honest fix is a
retrain on data without them. So a model trained on a snapshot that held an
erased user's rows (or on a snapshot no longer on disk, which cannot be
checked) gets a marker file, and the nightly retrains before publishing once
the latest model is marked (within ``erasure.retrain_within_days``). The
marker is a ``_``-file, which is not part of the model's manifest, so the
published artifact stays verifiable and its ``_SUCCESS`` time (the model's
age for the training cadence) is untouched.

Training runs (``checkpoints/``) of such snapshots only serve ``--resume``,
which would bake the erased data back in; their prepared inputs hold the
users' histories. They are deleted.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from recbatch import folders
from recbatch.fs import Location, as_location, is_file, list_folders, read_bytes, remove_tree, write_bytes
from recbatch.layout import RunLayout

MARKER = "_erasure.json"


def read_marker(model_dir: str | Path | Location) -> dict[str, Any] | None:
    """The erasure marker of a model on either kind of root, or None when it is not marked."""
    marker = as_location(model_dir).join(MARKER)
    return json.loads(read_bytes(marker)) if is_file(marker) else None


def mark_models(layout: RunLayout, erased_snapshots: set[str], request_id: str) -> list[dict[str, str]]:
    """Mark every model trained on one of `erased_snapshots` or on a snapshot that is gone."""
    marked = []
    for model_dir in list_folders(layout.at.models):
        if model_dir.name.startswith(".") or not folders.is_complete(model_dir):
            continue
        snapshot = folders.read_manifest(model_dir).get("snapshot_hash")
        if snapshot in erased_snapshots:
            reason = f"trained on snapshot {snapshot}, which held rows of the erased users"
        elif snapshot is None or not folders.is_complete(layout.at.snapshot(snapshot)):
            reason = f"trained on snapshot {snapshot}, which is no longer on disk to check"
        else:
            continue
        _add_mark(model_dir, request_id, reason)
        marked.append({"model_version": model_dir.name, "reason": reason})
    return marked


def _add_mark(model_dir: Location, request_id: str, reason: str) -> None:
    """Beside the model's commit marker, outside its manifest: the artifact itself stays as published."""
    marker = read_marker(model_dir) or {"retrain_required": True, "requests": []}
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    marker["requests"].append({"request_id": request_id, "marked_at": at, "reason": reason})
    write_bytes(model_dir.join(MARKER), json.dumps(marker, indent=2).encode())


def retrain_reason(model_dir: Path | Location, run_date: dt.date, within_days: int) -> str | None:
    """Why the nightly must retrain now because `model_dir` is marked, or None (not marked / not due yet)."""
    marker = read_marker(model_dir)
    if not marker:
        return None
    first = min(marker["requests"], key=lambda r: r["marked_at"])
    marked_on = dt.datetime.fromisoformat(first["marked_at"]).date()
    if within_days > 0 and (run_date - marked_on).days < within_days:
        return None  # 0 means now, whatever the run date (a backfilled date must not use the model either)
    return (
        f"latest model {model_dir.name} was trained on erased users' data (request {first['request_id']}, "
        f"marked {marked_on}; erasure.retrain_within_days={within_days})"
    )


def remove_training_runs(layout: RunLayout, erased_snapshots: set[str]) -> list[Location]:
    """Delete training runs of `erased_snapshots` and of snapshots that are gone."""
    present = {p.name[:12] for p in list_folders(layout.at.snapshots)}
    erased = {h[:12] for h in erased_snapshots}
    doomed = [
        run for run in layout.at.training_runs()
        if layout.training_run_snapshot(run) in erased or layout.training_run_snapshot(run) not in present
    ]
    for run in doomed:
        remove_tree(run)
    return doomed
