"""Where each stage's output lives under the run root.

    <root>/snapshots/<hash>/{interactions,users,split}/part-PPPPP.parquet, items.parquet + _manifest.json
    <root>/models/<model_version>/{encoder/, towers.pt, model_card.json}
    <root>/checkpoints/<train run>/...            (Ray Train storage)
    <root>/embeddings/<model_version>/{items,users}/part-*.parquet + _manifest.json
    <root>/staged/dt=YYYY-MM-DD/...               (scored, awaiting the quality gate)
    <root>/recommendations/dt=YYYY-MM-DD/part-*.parquet + _manifest.json + _SUCCESS
    <root>/reports/dt=YYYY-MM-DD/{report.md, report.json, *.png}
    <root>/runs/dt=YYYY-MM-DD.json                (nightly run summary)
    <root>/erasure/{requests/<id>.json, suppressed.parquet, _key}   (recbatch forget)

(On an object-store root each published folder holds its files under a committed
``.attempt-*`` prefix named by its ``_SUCCESS`` marker: recbatch/objectstore.py.)

One class owns these names so no stage spells a path of another stage by hand.

A root is a local folder or an object-store prefix (``s3://bucket/prefix``,
``gs://``; recbatch/fs.py). ``RunLayout.of(root, cfg.storage)`` holds it as a
``fs.Location`` and has two faces over the one set of names:

- ``layout.at`` (``RootLocations``): every output as a ``Location``, on either
  kind of root. Stages converted to object-store roots use only this face and
  write and read through recbatch/folders.py: so far the snapshot stage
  (``recbatch ingest``: ``layout.at.snapshot(hash)``, its scratch under
  ``layout.at.ingest_scratch``), the train stage (``recbatch train``: the
  latest snapshot by commit marker, inputs and Ray Train checkpoints under
  ``layout.at.training_run(...)``, the artifact at ``layout.at.model(version)``),
  the embed stage (``recbatch embed``: ``layout.at.embeddings(version, kind)``),
  the score stage (``recbatch score``: embeddings through ``EmbeddingsFolder``,
  the run staged at ``layout.at.staged_for(date)``), the evaluate stage
  (``recbatch evaluate``: runs, models and item vectors read through their
  manifests, baselines at ``layout.at.baseline_run(...)``, the report at
  ``layout.at.report(date)``; the gate compares with
  ``layout.at.published_runs()``, complete by commit marker), the serving load
  (``recbatch load``: a run read through its marker and manifest,
  recbatch/serving/published_run.py), retention (``recbatch gc``:
  recbatch/retention.py, deleting with ``fs.remove_tree``), erasure
  (``recbatch forget``: recbatch/erasure, output folders found by commit
  marker and rewritten through ``folders``, the replaced content deleted at
  once), ``recbatch rollback`` (Redis only: it reads nothing under the root)
  and ``recbatch nightly``, which wires them together (recbatch/pipeline.py).
- the ``Path`` face (``layout.snapshot(hash)``, ``layout.models``, ``layout.root``):
  the same names as local paths, for the commands that still write with local
  file APIs (``recbatch demo`` and ``recbatch generate``, whose generated
  source folders live under the root). On an object-store root it refuses
  with a UsageError instead of handing out a local path (``Path("s3://b/p")``
  would be a folder named ``s3:``).

Commands check their root up front with ``require_supported_root`` (the CLI
does), so an unconverted stage on an object-store root fails before any work
with a message naming the stage. Converting a stage: take its outputs from
``layout.at``, write through ``folders`` (``staging_for``,
``write_parquet_part``, ``write_manifest``, ``publish``, or ``publish_written``
for a content-addressed output, or ``building``/``publish_built`` for files only
a local file API writes), read through ``folders.open_folder`` /
``read_committed`` (manifest, then exactly its files: never a listing), keep its
scratch under the root (Ray tasks on other nodes read it), hand Ray Train a
run folder as ``storage_path`` plus ``storage_filesystem`` (the Location's
filesystem), pass workers Locations or URIs plus ``cfg.storage`` (never keys),
then add the command to ``OBJECT_STORE_STAGES`` and test it on the SeaweedFS
root (tests/s3_helpers.py; tests/test_train_objectstore.py is the latest example).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbatch.config import StorageConfig
from recbatch.errors import UsageError
from recbatch.fs import Location, is_object_store_uri, list_folders, local, locate
from recbatch.objectstore import latest_committed, read_marker
from recbatch.storage import SUCCESS

# The commands that run on an object-store root so far; every other one still writes through local paths.
OBJECT_STORE_STAGES = frozenset(
    {"ingest", "train", "embed", "score", "evaluate", "load", "gc", "rollback", "forget", "nightly"}
)


def require_supported_root(root: str | Path, stage: str) -> None:
    """Refuse an object-store root for a stage that does not run on one yet (UsageError naming both)."""
    if is_object_store_uri(root) and stage not in OBJECT_STORE_STAGES:
        raise UsageError(f"recbatch {stage} does not run on an object-store root ({root}) yet: {_so_far()}")


def _so_far() -> str:
    *others, last = [f"recbatch {s}" for s in sorted(OBJECT_STORE_STAGES)]
    supported = f"{', '.join(others)} and {last}" if others else last
    verb = "do" if others else "does"
    return (
        f"only {supported} {verb} so far, the other stages still write through local paths; use a local or "
        "shared-filesystem root for them (docs/operations.md, 'Object stores')"
    )


def model_version_of(manifest: dict[str, Any], version_folder: str | Path) -> str:
    """The model version a folder holds: its manifest's ``model_version``, else the name of its
    ``models/<model_version>`` or ``embeddings/<model_version>`` folder (a manifest that does not name it)."""
    return manifest.get("model_version") or Path(version_folder).name


@dataclass(frozen=True)
class RootLocations:
    """Every output under a root of either kind, as ``fs.Location``s: the one place the names are spelled."""

    root: Location

    # snapshots ---------------------------------------------------------------
    @property
    def snapshots(self) -> Location:
        return self.root.join("snapshots")

    def snapshot(self, snapshot_hash: str) -> Location:
        return self.snapshots.join(snapshot_hash)

    @property
    def ingest_scratch(self) -> Location:
        """The folder whose staging copies (``folders.staging_for``) hold one ingest's scratch files."""
        return self.snapshots.join("ingest")

    def latest_snapshot(self) -> Location | None:
        return latest_complete(self.snapshots)

    # models ------------------------------------------------------------------
    @property
    def models(self) -> Location:
        return self.root.join("models")

    def model(self, model_version: str) -> Location:
        return self.models.join(model_version)

    def latest_model(self) -> Location | None:
        return latest_complete(self.models)

    @property
    def checkpoints(self) -> Location:
        return self.root.join("checkpoints")

    def training_run(self, snapshot_hash: str, stamp: str) -> Location:
        """A Ray Train run folder: ``<snapshot hash[:12]>-<UTC time>``."""
        return self.checkpoints.join(f"{snapshot_hash[:12]}-{stamp}")

    def training_runs(self, snapshot_hash: str | None = None) -> list[Location]:
        """Training run folders (of one snapshot, or all), oldest first (the UTC time in their names)."""
        runs = list_folders(self.checkpoints, f"{snapshot_hash[:12]}-" if snapshot_hash else "")
        return [run for run in runs if "-" in run.name]

    # embeddings --------------------------------------------------------------
    def embeddings(self, model_version: str, kind: str) -> Location:
        assert kind in ("items", "users"), kind
        return self.root.join("embeddings", model_version, kind)

    # recommendations ---------------------------------------------------------
    @property
    def recommendations(self) -> Location:
        return self.root.join("recommendations")

    def recommendations_for(self, run_date: dt.date | str) -> Location:
        return self.recommendations.join(f"dt={_date_str(run_date)}")

    def staged_for(self, run_date: dt.date | str) -> Location:
        """Scored but not yet gated/published output for a run date."""
        return self.root.join("staged", f"dt={_date_str(run_date)}")

    def published_runs(self) -> list[Location]:
        """Complete recommendation runs, oldest first (``dt=`` names sort by date): what the gate
        compares with. A run is complete by its commit marker (recbatch/objectstore.py) on an object
        store, by its ``_SUCCESS`` file on a local root; hidden folders (staging, retired) never are."""
        if self.root.is_object_store:
            return [run for run in list_folders(self.recommendations, "dt=") if read_marker(run) is not None]
        folder = Path(self.recommendations.path)
        if not folder.exists():
            return []
        return [self.recommendations.join(p.name) for p in sorted(folder.glob("dt=*")) if (p / SUCCESS).exists()]

    def baseline_run(self, snapshot_hash: str, name: str) -> Location:
        """A baseline's recommendations for a snapshot (``recbatch evaluate --baselines``)."""
        return self.root.join("baselines", snapshot_hash, name)

    # reports and summaries ---------------------------------------------------
    def report(self, run_date: dt.date | str) -> Location:
        return self.root.join("reports", f"dt={_date_str(run_date)}")

    def run_summary(self, run_date: dt.date | str) -> Location:
        return self.root.join("runs", f"dt={_date_str(run_date)}.json")

    # erasure (recbatch/erasure) ------------------------------------------------
    @property
    def erasure(self) -> Location:
        return self.root.join("erasure")

    def erasure_request(self, request_id: str) -> Location:
        """The log of one erasure request: what was done and when, never the ids."""
        return self.erasure.join("requests", f"{request_id}.json")

    @property
    def suppression_list(self) -> Location:
        """Keyed hashes of every erased user, read by ingest (recbatch/erasure/suppression.py)."""
        return self.erasure.join("suppressed.parquet")

    @property
    def erasure_key(self) -> Location:
        return self.erasure.join("_key")


@dataclass(frozen=True)
class RunLayout:
    """A root's layout: ``at`` for Locations (either kind of root), the properties below for local Paths:
    the same names as ``RootLocations`` (documented there), each through ``local_path``."""

    at: RootLocations

    @classmethod
    def of(cls, root: str | Path | Location, storage: StorageConfig | None = None) -> "RunLayout":
        """The layout of `root`; `storage` (``cfg.storage``) says how an object-store root is reached."""
        location = root if isinstance(root, Location) else locate(root, storage or StorageConfig())
        return cls(RootLocations(location))

    @property
    def root(self) -> Path:
        """The root as a local path; a UsageError on an object-store root (see the module doc)."""
        return local_path(self.at.root)

    # snapshots ---------------------------------------------------------------
    @property
    def snapshots(self) -> Path:
        return local_path(self.at.snapshots)

    def snapshot(self, snapshot_hash: str) -> Path:
        return local_path(self.at.snapshot(snapshot_hash))

    def latest_snapshot(self) -> Path | None:
        latest = self.at.latest_snapshot()
        return local_path(latest) if latest else None

    # models ------------------------------------------------------------------
    @property
    def models(self) -> Path:
        return local_path(self.at.models)

    def model(self, model_version: str) -> Path:
        return local_path(self.at.model(model_version))

    def latest_model(self) -> Path | None:
        latest = self.at.latest_model()
        return local_path(latest) if latest else None

    @property
    def checkpoints(self) -> Path:
        return local_path(self.at.checkpoints)

    def training_run(self, snapshot_hash: str, stamp: str) -> Path:
        return local_path(self.at.training_run(snapshot_hash, stamp))

    def training_runs(self, snapshot_hash: str | None = None) -> list[Path]:
        return [local_path(run) for run in self.at.training_runs(snapshot_hash)]

    @staticmethod
    def training_run_snapshot(run: Path | Location) -> str:
        """The snapshot-hash prefix a training run folder is named after."""
        return run.name.split("-", 1)[0]

    # embeddings --------------------------------------------------------------
    def embeddings(self, model_version: str, kind: str) -> Path:
        return local_path(self.at.embeddings(model_version, kind))

    # recommendations ---------------------------------------------------------
    @property
    def recommendations(self) -> Path:
        return local_path(self.at.recommendations)

    def recommendations_for(self, run_date: dt.date | str) -> Path:
        return local_path(self.at.recommendations_for(run_date))

    def staged_for(self, run_date: dt.date | str) -> Path:
        return local_path(self.at.staged_for(run_date))

    def published_runs(self) -> list[Path]:
        return [local_path(run) for run in self.at.published_runs()]

    def baseline_run(self, snapshot_hash: str, name: str) -> Path:
        return local_path(self.at.baseline_run(snapshot_hash, name))

    # reports and summaries ---------------------------------------------------
    def report(self, run_date: dt.date | str) -> Path:
        return local_path(self.at.report(run_date))

    def run_summary(self, run_date: dt.date | str) -> Path:
        return local_path(self.at.run_summary(run_date))

    # erasure (recbatch/erasure) ------------------------------------------------
    @property
    def erasure(self) -> Path:
        return local_path(self.at.erasure)

    def erasure_request(self, request_id: str) -> Path:
        return local_path(self.at.erasure_request(request_id))

    @property
    def suppression_list(self) -> Path:
        return local_path(self.at.suppression_list)

    @property
    def erasure_key(self) -> Path:
        return local_path(self.at.erasure_key)


def local_path(location: Location) -> Path:
    """A Location under a local root as a Path; refuses an object-store one (that stage is not converted yet)."""
    if location.is_object_store:
        raise UsageError(f"{location.uri} is on an object store, where this stage cannot run yet: {_so_far()}")
    return Path(location.path)


def _date_str(run_date: dt.date | str) -> str:
    if isinstance(run_date, dt.date):
        return run_date.isoformat()
    return dt.date.fromisoformat(run_date).isoformat()  # validates the format


def latest_complete(parent: Location) -> Location | None:
    """The most recently published complete child folder of `parent`, on either kind of root."""
    if parent.is_object_store:
        return latest_committed(parent)
    latest = _latest_complete(Path(parent.path))
    return local(latest) if latest else None


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
