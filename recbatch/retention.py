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

``plan_retention`` only reads (it is what ``--dry-run`` prints); ``apply_plan``
deletes exactly the plan.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from recbatch.config import Config
from recbatch.errors import UsageError
from recbatch.layout import RunLayout, model_version_of
from recbatch.storage import SUCCESS, is_complete, read_manifest

log = logging.getLogger(__name__)

# Hidden folders beside a final folder: a killed writer's staging (storage.staging_dir_for) and
# the replaced content publish_dir retires; found at these depths under the root.
_LEFTOVER_GLOBS = (".staging-*", ".retired-*")
_LEFTOVER_PARENTS = ("snapshots", "models", "recommendations", "staged", "embeddings/*")


@dataclass(frozen=True)
class Removal:
    """One folder retention deletes, its size and why it may go."""

    path: Path
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

    root: Path
    kept_runs: list[str]
    kept_models: list[str]
    removals: list[Removal] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def render(self) -> str:
        lines = [f"{r.bytes:>14,}  {r.path.relative_to(self.root)}  ({r.reason})" for r in self.removals]
        lines.append(f"{len(self.removals)} folder(s), {self.bytes:,} bytes; keeping runs "
                     f"{', '.join(self.kept_runs) or '-'} and models {', '.join(self.kept_models) or '-'}")
        return "\n".join(lines)

    def to_record(self) -> dict[str, object]:
        """For the nightly run summary."""
        return {"removed": [str(r.path.relative_to(self.root)) for r in self.removals], "bytes": self.bytes,
                "kept_runs": self.kept_runs, "kept_models": self.kept_models}


def plan_retention(
    layout: RunLayout,
    keep_runs: int,
    *,
    protected: Protected = Protected(),
    staged_max_age_hours: float = 24.0,
    now: float | None = None,
) -> RetentionPlan:
    """Decide what goes under `layout.root`; reads only (manifests, model cards, mtimes)."""
    if keep_runs < 1:
        raise ValueError(f"keep_runs must be >= 1, got {keep_runs}")
    now = time.time() if now is None else now
    max_age = staged_max_age_hours * 3600
    removals: list[Removal] = []

    runs = layout.published_runs()  # oldest first
    kept_runs = [p for i, p in enumerate(runs) if i >= len(runs) - keep_runs or _date(p) in protected.run_dates]
    for run in runs:
        if run not in kept_runs:
            removals.append(_removal(run, f"published run beyond the newest {keep_runs}"))
            report = layout.report(_date(run))
            if report.exists():
                removals.append(_removal(report, f"report of removed run {_date(run)}"))
    run_manifests = [read_manifest(p) for p in kept_runs]

    latest_model = layout.latest_model()
    models = set(protected.model_versions) | {m.get("model_version") for m in run_manifests}
    if latest_model is not None:
        models.add(_model_version(latest_model))
    model_dirs = [p for p in _children(layout.models) if not p.name.startswith(".")]
    kept_models = [p for p in model_dirs if (is_complete(p) and _model_version(p) in models) or p == latest_model]
    for p in model_dirs:
        if p not in kept_models:
            removals.append(_removal(p, "model no kept run, live version or latest model uses"))
    kept_versions = {_model_version(p) for p in kept_models} | models
    for p in _children(layout.root / "embeddings"):
        if p.name not in kept_versions:
            removals.append(_removal(p, "embeddings of a removed model"))

    kept_checkpoints = {Path(_card(p).get("train_run", "")).name for p in kept_models}
    newest_model_time = (latest_model / SUCCESS).stat().st_mtime if latest_model else float("-inf")
    checkpoints = _children(layout.checkpoints)
    for p in checkpoints:
        if p.name not in kept_checkpoints and p.stat().st_mtime <= newest_model_time:
            removals.append(_removal(p, "training run of no kept model"))
    live_checkpoints = [p for p in checkpoints if p not in {r.path for r in removals}]

    snapshots = set(protected.snapshots) | {m.get("snapshot_hash") for m in run_manifests}
    snapshots |= {read_manifest(p).get("snapshot_hash") for p in kept_models if is_complete(p)}
    latest_snapshot = layout.latest_snapshot()
    if latest_snapshot is not None:
        snapshots.add(latest_snapshot.name)
    prefixes = {p.name.split("-", 1)[0] for p in live_checkpoints}  # <snapshot hash[:12]>-<time>
    for p in _children(layout.snapshots):
        if not p.name.startswith(".") and p.name not in snapshots and p.name[:12] not in prefixes:
            removals.append(_removal(p, "snapshot no kept run or model was made from"))
            baselines = layout.root / "baselines" / p.name
            if baselines.exists():
                removals.append(_removal(baselines, "baselines of a removed snapshot"))

    for p in _children(layout.root / "staged"):
        if not p.name.startswith(".") and now - _newest_mtime(p) > max_age:
            removals.append(_removal(p, f"staged, never published, older than {staged_max_age_hours:g} h"))
    for p in _leftovers(layout.root):
        if now - _newest_mtime(p) > max_age:
            removals.append(_removal(p, f"staging leftover older than {staged_max_age_hours:g} h"))

    return RetentionPlan(
        root=layout.root,
        kept_runs=[_date(p) for p in kept_runs],
        kept_models=sorted(_model_version(p) for p in kept_models),
        removals=removals,
    )


def apply_plan(plan: RetentionPlan) -> int:
    """Delete every folder of the plan; returns the bytes freed."""
    for r in plan.removals:
        shutil.rmtree(r.path, ignore_errors=False)
        log.info("retention: removed %s (%d bytes, %s)", r.path, r.bytes, r.reason)
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
        RunLayout.of(cfg.root), cfg.retention.keep_runs, protected=serving_references(cfg),
        staged_max_age_hours=cfg.retention.staged_max_age_hours,
    )


# --------------------------------------------------------------------------- helpers


def _date(run: Path) -> str:
    return run.name.removeprefix("dt=")


def _children(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []


def _model_version(model_dir: Path) -> str:
    return model_version_of(read_manifest(model_dir) if is_complete(model_dir) else {}, model_dir)


def _card(model_dir: Path) -> dict:
    from recbatch.model.artifact import read_model_card  # imports torch: only when a model is there

    try:
        return read_model_card(model_dir, check_complete=False)
    except (OSError, ValueError):
        return {}


def _leftovers(root: Path) -> Iterable[Path]:
    for parent in _LEFTOVER_PARENTS:
        for pattern in _LEFTOVER_GLOBS:
            yield from sorted(p for p in root.glob(f"{parent}/{pattern}") if p.is_dir())


def _newest_mtime(folder: Path) -> float:
    """A folder is as old as its newest entry: a writer still busy in it keeps it young."""
    newest = folder.stat().st_mtime
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
    return newest


def _removal(folder: Path, reason: str) -> Removal:
    size = 0
    for dirpath, _, filenames in os.walk(folder):
        size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in filenames)
    return Removal(folder, size, reason)
