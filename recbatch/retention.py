"""Retention: which outputs under the run root may go, and deleting them.

Every night adds a published run, usually a snapshot and embeddings, and
sometimes a model with its training checkpoints; nothing else ever deletes
them. Retention keeps:

- the newest ``retention.keep_runs`` published runs (``recommendations/dt=*``);
- every run, model and snapshot a version in the Redis history names (the live
  one and its rollback targets: ``recbatch rollback`` must find what it serves);
- the latest model and the latest snapshot (tomorrow's night starts from them);
- what a kept run or model was made from: its model, embeddings, snapshot,
  the model's training run under ``checkpoints/``, and any training run newer
  than the latest model (one in progress, or one ``train --resume`` may reopen);
- staged and staging folders younger than ``retention.staged_max_age_hours``
  (a run in progress owns them).

Everything else that a stage wrote is deleted: older published runs with their
reports, their baselines, unneeded models, embeddings, checkpoints and
snapshots, and staged leftovers. Run summaries (``runs/dt=*.json``) stay: they
are the small history on-call reads. Nothing here decides by today's date: only
by run dates relative to each other and by file ages.

Leftovers are what killed writers left and replaced content past its grace
period: hidden ``.staging-*``/``.retired-*`` folders beside the outputs on a local
root, attempts no marker names (``objectstore.stale_attempts``) inside them on
an object store.

It runs on either kind of root (``RootLocations``): published runs are found by
their commit markers, sizes and ages come from one listing per folder through
the root's ``pyarrow.fs`` filesystem. ``plan_retention`` only reads (it is what
``--dry-run`` prints); ``apply_plan`` deletes exactly the plan, each folder's
commit marker first, so a gc killed midway never leaves a marker naming
deleted files.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from recbatch import folders
from recbatch.config import Config
from recbatch.errors import IntegrityError, UsageError
from recbatch.fs import Location, access, list_folders, remove_file, remove_tree
from recbatch.layout import RootLocations, RunLayout, model_version_of
from recbatch.objectstore import stale_attempts
from recbatch.storage import SUCCESS

log = logging.getLogger(__name__)

# Where leftovers are found: in these folders under the root and in every embeddings/<model version>.
# On a local root they are hidden folders beside the outputs, named with these prefixes
# (storage.staging_dir_for, storage.publish_dir); on an object store, attempts inside the outputs.
_LEFTOVER_PARENTS = ("snapshots", "models", "recommendations", "staged")
_LEFTOVER_PREFIXES = (".staging-", ".retired-")


@dataclass(frozen=True)
class Removal:
    """One folder retention deletes, its size and why it may go."""

    folder: Location
    bytes: int
    reason: str


@dataclass(frozen=True)
class Protected:
    """What the serving store still names: run dates, model versions, snapshots of its versions."""

    run_dates: frozenset[str] = frozenset()
    model_versions: frozenset[str] = frozenset()
    snapshots: frozenset[str] = frozenset()


@dataclass
class RetentionPlan:
    """What retention keeps and deletes; `removals` is in deletion order (runs first)."""

    root: Location
    kept_runs: list[str]
    kept_models: list[str]
    removals: list[Removal] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def relative(self, folder: Location) -> str:
        """`folder`'s path under the root, as the plan prints it."""
        return posixpath.relpath(folder.path, self.root.path)

    def render(self) -> str:
        lines = [f"{r.bytes:>14,}  {self.relative(r.folder)}  ({r.reason})" for r in self.removals]
        lines.append(f"{len(self.removals)} folder(s), {self.bytes:,} bytes; keeping runs "
                     f"{', '.join(self.kept_runs) or '-'} and models {', '.join(self.kept_models) or '-'}")
        return "\n".join(lines)

    def to_record(self) -> dict[str, object]:
        """For the nightly run summary."""
        return {"removed": [self.relative(r.folder) for r in self.removals], "bytes": self.bytes,
                "kept_runs": self.kept_runs, "kept_models": self.kept_models}


def plan_retention(
    at: RootLocations,
    keep_runs: int,
    *,
    protected: Protected = Protected(),
    staged_max_age_hours: float = 24.0,
    now: float | None = None,
) -> RetentionPlan:
    """Decide what goes under `at.root` (either kind of root); reads only (markers, manifests,
    model cards, listings)."""
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be >= 1, got {keep_runs}")
    now = time.time() if now is None else now
    max_age = staged_max_age_hours * 3600
    removals: list[Removal] = []

    runs = at.published_runs()  # oldest first
    kept_runs = [p for i, p in enumerate(runs) if i >= len(runs) - keep_runs or _date(p) in protected.run_dates]
    for run in runs:
        if run not in kept_runs:
            removals.append(_removal(run, f"published run beyond the newest {keep_runs}"))
            report = at.report(_date(run))
            if _exists(report):
                removals.append(_removal(report, f"report of removed run {_date(run)}"))
    run_manifests = [folders.read_manifest(p) for p in kept_runs]

    latest_model = at.latest_model()
    models = set(protected.model_versions) | {m.get("model_version") for m in run_manifests}
    if latest_model is not None:
        models.add(_model_version(latest_model))
    model_dirs = [p for p in list_folders(at.models) if not p.name.startswith(".")]
    kept_models = [p for p in model_dirs
                   if (folders.is_complete(p) and _model_version(p) in models) or p == latest_model]
    for p in model_dirs:
        if p not in kept_models:
            removals.append(_removal(p, "model no kept run, live version or latest model uses"))
    kept_versions = {_model_version(p) for p in kept_models} | models
    for p in list_folders(at.root.join("embeddings")):
        if p.name not in kept_versions:
            removals.append(_removal(p, "embeddings of a removed model"))

    kept_checkpoints = {posixpath.basename(_card(p).get("train_run", "")) for p in kept_models}
    newest_model_time = _mtime(latest_model.join(SUCCESS)) if latest_model else float("-inf")
    checkpoints = list_folders(at.checkpoints)
    for p in checkpoints:
        if p.name not in kept_checkpoints and _newest_mtime(p) <= newest_model_time:
            removals.append(_removal(p, "training run of no kept model"))
    live_checkpoints = [p for p in checkpoints if p not in [r.folder for r in removals]]

    snapshots = set(protected.snapshots) | {m.get("snapshot_hash") for m in run_manifests}
    snapshots |= {folders.read_manifest(p).get("snapshot_hash") for p in kept_models if folders.is_complete(p)}
    latest_snapshot = at.latest_snapshot()
    if latest_snapshot is not None:
        snapshots.add(latest_snapshot.name)
    prefixes = {p.name.split("-", 1)[0] for p in live_checkpoints}  # <snapshot hash[:12]>-<time>
    for p in list_folders(at.snapshots):
        if p.name.startswith(".") or p == at.ingest_scratch:  # scratch is a leftover, below
            continue
        if p.name not in snapshots and p.name[:12] not in prefixes:
            removals.append(_removal(p, "snapshot no kept run or model was made from"))
            baselines = at.root.join("baselines", p.name)
            if _exists(baselines):
                removals.append(_removal(baselines, "baselines of a removed snapshot"))

    for p in list_folders(at.root.join("staged")):
        if not p.name.startswith(".") and now - _newest_mtime(p) > max_age:
            removals.append(_removal(p, f"staged, never published, older than {staged_max_age_hours:g} h"))
    removed = [r.folder for r in removals]
    for p in _leftovers(at, int(now * 1_000_000_000)):
        if not any(_inside(p, r) for r in removed) and now - _newest_mtime(p) > max_age:
            removals.append(_removal(p, f"staging leftover older than {staged_max_age_hours:g} h"))

    return RetentionPlan(
        root=at.root,
        kept_runs=[_date(p) for p in kept_runs],
        kept_models=sorted(_model_version(p) for p in kept_models),
        removals=removals,
    )


def apply_plan(plan: RetentionPlan) -> int:
    """Delete every folder of the plan, its commit marker first; returns the bytes freed."""
    for r in plan.removals:
        remove_file(r.folder.join(SUCCESS))  # from here on no reader takes it for a complete output
        remove_tree(r.folder)
        log.info("retention: removed %s (%d bytes, %s)", r.folder, r.bytes, r.reason)
    return plan.bytes


def serving_references(cfg: Config) -> Protected:
    """What the Redis history (live version and rollback targets) names; empty without Redis.

    Raises ServingStoreError when Redis is configured but unreachable: without
    knowing what is live, nothing may be deleted.
    """
    s = cfg.serving
    if not (s.redis_url or s.redis_url_env):
        return Protected()
    from recbatch.serving import versions
    from recbatch.serving.connection import connect, describe, store_errors
    from recbatch.serving.keys import KeyLayout

    client = connect(s)
    keys = KeyLayout(s.key_prefix)
    with store_errors(describe(client), "reading the versions retention must keep"):
        metas = [versions.version_info(client, keys, v).meta for v in versions.history(client, keys)]
    return Protected(
        run_dates=frozenset(m["run_date"] for m in metas if m.get("run_date")),
        model_versions=frozenset(m["model_version"] for m in metas if m.get("model_version")),
        snapshots=frozenset(m["snapshot_hash"] for m in metas if m.get("snapshot_hash")),
    )


def plan_for(cfg: Config) -> RetentionPlan:
    """The plan for a config: its ``retention`` section and what its Redis still serves."""
    if cfg.retention.keep_runs is None:
        raise UsageError("how many published runs to keep? set retention.keep_runs (recbatch gc --keep-runs N)")
    return plan_retention(
        RunLayout.of(cfg.root, cfg.storage).at, cfg.retention.keep_runs, protected=serving_references(cfg),
        staged_max_age_hours=cfg.retention.staged_max_age_hours,
    )


# --------------------------------------------------------------------------- helpers


def _date(run: Location) -> str:
    return run.name.removeprefix("dt=")


def _model_version(model_dir: Location) -> str:
    return model_version_of(folders.read_manifest(model_dir) if folders.is_complete(model_dir) else {},
                            model_dir.name)


def _card(model_dir: Location) -> dict:
    from recbatch.model.artifact import read_model_card  # imports torch: only when a model is there

    try:
        return read_model_card(model_dir, check_complete=False)
    except (OSError, ValueError, IntegrityError):
        return {}


def _leftovers(at: RootLocations, now_ns: int) -> list[Location]:
    """What killed writers left and replaced content past its grace, on either kind of root."""
    parents = [at.root.join(name) for name in _LEFTOVER_PARENTS] + list_folders(at.root.join("embeddings"))
    found: list[Location] = []
    for parent in parents:
        if parent.is_object_store:
            for output in list_folders(parent):
                found += stale_attempts(output, now_ns)
        else:
            for prefix in _LEFTOVER_PREFIXES:
                found += list_folders(parent, prefix)
    return found


def _inside(location: Location, folder: Location) -> bool:
    return location.path.startswith(folder.path + "/")


def _exists(location: Location) -> bool:
    """Whether anything is at `location` (on an object store: any object under that prefix)."""
    with access(location, "look up"):
        return location.filesystem.get_file_info(location.path).type != pafs.FileType.NotFound


def _mtime(location: Location) -> float:
    with access(location, "look up"):
        return location.filesystem.get_file_info(location.path).mtime.timestamp()


def _contents(folder: Location) -> list[pafs.FileInfo]:
    """Everything under `folder`, from one recursive listing (on an object store: its objects)."""
    selector = pafs.FileSelector(folder.path, recursive=True, allow_not_found=True)
    with access(folder, "list"):
        return folder.filesystem.get_file_info(selector)


def _newest_mtime(folder: Location) -> float:
    """A folder is as old as its newest entry: a writer still busy in it keeps it young.
    (Object stores have no folders, so there only the objects count.)"""
    with access(folder, "look up"):
        own = folder.filesystem.get_file_info(folder.path).mtime
    times = [i.mtime for i in _contents(folder) if i.mtime is not None] + ([own] if own is not None else [])
    return max(times).timestamp() if times else float("-inf")


def _removal(folder: Location, reason: str) -> Removal:
    size = sum(i.size for i in _contents(folder) if i.type == pafs.FileType.File)
    return Removal(folder, size, reason)
