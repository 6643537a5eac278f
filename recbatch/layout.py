"""Where each stage's output lives under the run root.

    <root>/snapshots/<hash>/{interactions,items,users,split}.parquet + _manifest.json
    <root>/models/<model_version>/{encoder/, towers.pt, model_card.json}
    <root>/checkpoints/<train run>/...            (Ray Train storage)
    <root>/embeddings/<model_version>/{items,users}/part-*.parquet + _manifest.json
    <root>/staged/dt=YYYY-MM-DD/...               (scored, awaiting the quality gate)
    <root>/recommendations/dt=YYYY-MM-DD/part-*.parquet + _manifest.json + _SUCCESS
    <root>/reports/dt=YYYY-MM-DD/{report.md, report.json, *.png}
    <root>/runs/dt=YYYY-MM-DD.json                (nightly run summary)
    <root>/erasure/{requests/<id>.json, suppressed.parquet, _key}   (recbatch forget)

One class owns these paths so no stage spells a path of another stage by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbatch.storage import SUCCESS


def model_version_of(manifest: dict[str, Any], version_folder: str | Path) -> str:
    """The model version a folder holds: its manifest's ``model_version``, else the name of its
    ``models/<model_version>`` or ``embeddings/<model_version>`` folder (a manifest that does not name it)."""
    return manifest.get("model_version") or Path(version_folder).name


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @classmethod
    def of(cls, root: str | Path) -> "RunLayout":
        return cls(Path(root))

    # snapshots ---------------------------------------------------------------
    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    def snapshot(self, snapshot_hash: str) -> Path:
        return self.snapshots / snapshot_hash

    def latest_snapshot(self) -> Path | None:
        return _latest_complete(self.snapshots)

    # models ------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, model_version: str) -> Path:
        return self.models / model_version

    def latest_model(self) -> Path | None:
        return _latest_complete(self.models)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def training_run(self, snapshot_hash: str, stamp: str) -> Path:
        """A Ray Train run folder: ``<snapshot hash[:12]>-<UTC time>``."""
        return self.checkpoints / f"{snapshot_hash[:12]}-{stamp}"

    def training_runs(self, snapshot_hash: str | None = None) -> list[Path]:
        """Training run folders (of one snapshot, or all), oldest first."""
        if not self.checkpoints.exists():
            return []
        pattern = f"{snapshot_hash[:12]}-*" if snapshot_hash else "*-*"
        return sorted(p for p in self.checkpoints.glob(pattern) if p.is_dir())

    @staticmethod
    def training_run_snapshot(run: Path) -> str:
        """The snapshot-hash prefix a training run folder is named after."""
        return run.name.split("-", 1)[0]

    # embeddings --------------------------------------------------------------
    def embeddings(self, model_version: str, kind: str) -> Path:
        assert kind in ("items", "users"), kind
        return self.root / "embeddings" / model_version / kind

    # recommendations ---------------------------------------------------------
    @property
    def recommendations(self) -> Path:
        return self.root / "recommendations"

    def recommendations_for(self, run_date: dt.date | str) -> Path:
        return self.recommendations / f"dt={_date_str(run_date)}"

    def staged_for(self, run_date: dt.date | str) -> Path:
        """Scored but not yet gated/published output for a run date."""
        return self.root / "staged" / f"dt={_date_str(run_date)}"

    def published_runs(self) -> list[Path]:
        """Complete recommendation runs, oldest first."""
        if not self.recommendations.exists():
            return []
        return sorted(p for p in self.recommendations.glob("dt=*") if (p / SUCCESS).exists())

    def baseline_run(self, snapshot_hash: str, name: str) -> Path:
        """A baseline's recommendations for a snapshot (``recbatch evaluate --baselines``)."""
        return self.root / "baselines" / snapshot_hash / name

    # reports and summaries ---------------------------------------------------
    def report(self, run_date: dt.date | str) -> Path:
        return self.root / "reports" / f"dt={_date_str(run_date)}"

    def run_summary(self, run_date: dt.date | str) -> Path:
        return self.root / "runs" / f"dt={_date_str(run_date)}.json"

    # erasure (recbatch/erasure) ------------------------------------------------
    @property
    def erasure(self) -> Path:
        return self.root / "erasure"

    def erasure_request(self, request_id: str) -> Path:
        """The log of one erasure request: what was done and when, never the ids."""
        return self.erasure / "requests" / f"{request_id}.json"

    @property
    def suppression_list(self) -> Path:
        """Keyed hashes of every erased user, read by ingest (recbatch/erasure/suppression.py)."""
        return self.erasure / "suppressed.parquet"

    @property
    def erasure_key(self) -> Path:
        return self.erasure / "_key"


def _date_str(run_date: dt.date | str) -> str:
    if isinstance(run_date, dt.date):
        return run_date.isoformat()
    return dt.date.fromisoformat(run_date).isoformat()  # validates the format


def _latest_complete(parent: Path) -> Path | None:
    """The most recently published complete child folder (by _SUCCESS time).

    Hidden folders are staging copies (``storage.staging_dir_for``: one gets its
    ``_SUCCESS`` just before it is published, or holds a killed writer's output) or
    retired copies (``storage.publish_dir``), never published outputs.
    """
    if not parent.exists():
        return None
    done = [p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / SUCCESS).exists()]
    return max(done, key=lambda p: (p / SUCCESS).stat().st_mtime_ns, default=None)
