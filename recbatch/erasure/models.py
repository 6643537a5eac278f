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
import shutil
from pathlib import Path
from typing import Any

from recbatch.fs import Location, as_location, is_file, read_bytes
from recbatch.layout import RunLayout
from recbatch.storage import is_complete, read_manifest, replacing_file

MARKER = "_erasure.json"


def read_marker(model_dir: str | Path | Location) -> dict[str, Any] | None:
    """The erasure marker of a model on either kind of root, or None when it is not marked."""
    marker = as_location(model_dir).join(MARKER)
    return json.loads(read_bytes(marker)) if is_file(marker) else None


def mark_models(layout: RunLayout, erased_snapshots: set[str], request_id: str) -> list[dict[str, str]]:
    """Mark every model trained on one of `erased_snapshots` or on a snapshot that is gone."""
    if not layout.models.exists():
        return []
    marked = []
    for model_dir in sorted(p for p in layout.models.iterdir() if not p.name.startswith(".")):
        if not is_complete(model_dir):
            continue
        snapshot = read_manifest(model_dir).get("snapshot_hash")
        if snapshot in erased_snapshots:
            reason = f"trained on snapshot {snapshot}, which held rows of the erased users"
        elif snapshot is None or not layout.snapshot(snapshot).exists():
            reason = f"trained on snapshot {snapshot}, which is no longer on disk to check"
        else:
            continue
        _add_mark(model_dir, request_id, reason)
        marked.append({"model_version": model_dir.name, "reason": reason})
    return marked


def _add_mark(model_dir: Path, request_id: str, reason: str) -> None:
    marker = read_marker(model_dir) or {"retrain_required": True, "requests": []}
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    marker["requests"].append({"request_id": request_id, "marked_at": at, "reason": reason})
    with replacing_file(model_dir / MARKER) as tmp:
        tmp.write_text(json.dumps(marker, indent=2))


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


def remove_training_runs(layout: RunLayout, erased_snapshots: set[str]) -> list[Path]:
    """Delete training runs of `erased_snapshots` and of snapshots that are gone."""
    present = {p.name[:12] for p in layout.snapshots.iterdir()} if layout.snapshots.exists() else set()
    erased = {h[:12] for h in erased_snapshots}
    doomed = [
        run for run in layout.training_runs()
        if layout.training_run_snapshot(run) in erased or layout.training_run_snapshot(run) not in present
    ]
    for run in doomed:
        shutil.rmtree(run)
    return doomed
