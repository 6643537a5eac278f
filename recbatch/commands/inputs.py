"""What a stage command reads when no path is given: the latest complete output."""

from __future__ import annotations

from pathlib import Path

from recbatch.data.snapshot import Snapshot
from recbatch.errors import UsageError
from recbatch.layout import RunLayout


def snapshot_from(given: str | None, layout: RunLayout) -> Snapshot:
    """The snapshot at `given`, else the latest under the root (a clear error when none)."""
    folder = Path(given) if given else layout.latest_snapshot()
    if folder is None:
        raise UsageError(f"no --snapshot given and no snapshot under {layout.snapshots}: run `recbatch ingest` first")
    return Snapshot.open(folder)


def model_from(given: str | None, layout: RunLayout, alternative: str = "") -> Path:
    """The model artifact at `given`, else the latest under the root (a clear error when none)."""
    folder = Path(given) if given else layout.latest_model()
    if folder is None:
        raise UsageError(f"no --model{alternative} given and no model under {layout.models}: run `recbatch train` first")
    return folder
