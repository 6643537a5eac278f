"""What a stage command reads when no path is given: the latest complete output."""

from __future__ import annotations

from recbatch.config import StorageConfig
from recbatch.data.snapshot import Snapshot
from recbatch.errors import UsageError
from recbatch.fs import Location, locate
from recbatch.layout import RunLayout


def snapshot_from(given: str | None, layout: RunLayout, storage: StorageConfig | None = None) -> Snapshot:
    """The snapshot at `given` (a local path, or ``s3://...`` reached as `storage` says), else the
    latest under the root, of either kind (a clear error when none)."""
    folder = locate(given, storage or StorageConfig()) if given else layout.at.latest_snapshot()
    if folder is None:
        raise UsageError(f"no --snapshot given and no snapshot under {layout.at.snapshots}: run `recbatch ingest` first")
    return Snapshot.open(folder)


def model_from(
    given: str | None, layout: RunLayout, storage: StorageConfig | None = None, alternative: str = ""
) -> Location:
    """The model artifact at `given` (a local path, or ``s3://...`` reached as `storage` says), else
    the latest under the root, of either kind (a clear error when none)."""
    folder = locate(given, storage or StorageConfig()) if given else layout.at.latest_model()
    if folder is None:
        raise UsageError(f"no --model{alternative} given and no model under {layout.at.models}: run `recbatch train` first")
    return folder
