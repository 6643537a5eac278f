"""The nightly run: stages wired together, idempotent per run date.

    ingest -> train (when due) -> embed (incremental) -> score (staged)
           -> evaluate + quality gate -> publish (atomic) -> load (Redis)

Every stage writes a complete-or-absent folder with a manifest, so a rerun of
the same date after a failure skips what is complete and valid and redoes the
rest. This module only decides what is due and records what happened; the
work itself lives in the stage functions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from recbatch.config import Config
from recbatch.erasure.models import retrain_reason
from recbatch.errors import RecbatchError, StageFailed, UsageError
from recbatch.eval.gate import FLOOR_BASELINE
from recbatch.folders import is_complete, read_manifest, remove_stale_staging
from recbatch.fs import Location, check_access, remove_file, write_bytes
from recbatch.layout import RootLocations, RunLayout, model_version_of
from recbatch.lease import root_lease
from recbatch.metrics import nightly_metrics, push

log = logging.getLogger(__name__)

STAGES = ("ingest", "train", "embed", "score", "evaluate", "publish", "load")
# Shown beside the model in the nightly report, on the same holdout users; one is the gate's floor.
POPULARITY_BASELINES = (FLOOR_BASELINE, "recent_popular")


@dataclass
class StageRecord:
    name: str
    status: str = "pending"  # ran | skipped | failed
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class NightlySummary:
    run_date: str
    root: str
    stages: list[StageRecord] = field(default_factory=list)
    output: str | None = None
    report: str | None = None
    run_summary: str | None = None  # where this summary is written
    failed_stage: str | None = None
    stop_after: str | None = None

    def stage(self, name: str) -> StageRecord:
        return next(s for s in self.stages if s.name == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def render(self) -> str:
        lines = [f"recbatch nightly {self.run_date} (root {self.root})"]
        for s in self.stages:
            extra = ", ".join(f"{k}={v}" for k, v in s.details.items() if not isinstance(v, (dict, list)))
            lines.append(f"  {s.name:<9} {s.status:<8} {s.seconds:7.1f}s  {extra}")
        if self.output:
            lines.append(f"recommendations: {self.output}")
        if self.report:
            lines.append(f"report:          {self.report}")
        lines.append(f"run summary:     {self.run_summary}")
        if self.failed_stage:
            lines.append(f"FAILED at stage: {self.failed_stage}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- preflight


def preflight(cfg: Config) -> None:
    """Fail before any work on configuration that cannot succeed.

    Catches the 3 a.m. classics early: an encoder path that does not exist, an
    output root that cannot be written (a missing bucket, wrong credentials), a
    serving URL env var that is unset. (Value ranges such as K <= 0 are already
    refused by config validation.)
    """
    from recbatch.model.encoder import resolve_encoder

    resolve_encoder(cfg.model.encoder)  # raises UsageError naming the path
    root = RunLayout.of(cfg.root, cfg.storage).at.root
    check_access(root)  # an object store: the bucket, named, before the probe
    probe = root.join(f".write-probe-{uuid.uuid4().hex[:6]}")
    try:
        write_bytes(probe, b"")
        remove_file(probe)
    except OSError as exc:
        raise UsageError(f"output root '{root}' is not writable: {exc.strerror or exc}") from None
    if cfg.ingest.source and not Path(cfg.ingest.source).exists():
        raise UsageError(f"ingest.source '{cfg.ingest.source}' does not exist")
    s = cfg.serving
    if s.redis_url_env and not os.environ.get(s.redis_url_env):
        raise UsageError(f"serving.redis_url_env names '{s.redis_url_env}', which is not set")


# --------------------------------------------------------------------------- decisions


# train.cadence="weekly": retrain once the latest model was trained for a run date this many days
# before tonight's (a week: fresh enough for slowly drifting tastes, 1/7 of the training cost).
WEEKLY_RETRAIN_DAYS = 7


def trained_for(model_dir: Location) -> dt.date:
    """The run date a model was trained for: its card's ``trained_for`` (set by the nightly run),
    else the UTC day the card was written (a model trained by hand with ``recbatch train``).

    The run date, not the file time: a rerun or backfill of a past date must decide as that night did.
    """
    from recbatch.model.artifact import read_model_card

    card = read_model_card(model_dir)
    return dt.date.fromisoformat(str(card.get("trained_for") or card["created_at"])[:10])


def train_due(
    cadence: str, trained: dt.date | None, run_date: dt.date, force: bool, erasure: str | None = None
) -> tuple[bool, str]:
    """Whether to retrain for `run_date`, and why (recorded in the summary).

    `trained` is the run date the latest model was trained for (``trained_for``), None when there is none;
    `erasure` why that model must go because it learnt from erased users (``erasure.models.retrain_reason``).
    """
    if force:
        return True, "--train given"
    if trained is None:
        return True, "no model artifact yet"
    if erasure is not None:  # before the cadence: erasure overrides train.cadence=never
        return True, erasure
    if cadence == "always":
        return True, "train.cadence=always"
    if cadence == "never":
        return False, f"train.cadence=never; reusing the model trained for {trained}"
    age = (run_date - trained).days
    due = age >= WEEKLY_RETRAIN_DAYS
    return due, f"latest model was trained for {trained}, {age} days before the run date (weekly cadence)"


def decide_training(cfg: Config, latest: Location | None, run_date: dt.date, force: bool) -> tuple[bool, str]:
    """`train_due` over what the root holds: the latest model's run date and its erasure marker."""
    if latest is None:
        return train_due(cfg.train.cadence, None, run_date, force)
    erasure = retrain_reason(latest, run_date, cfg.erasure.retrain_within_days)
    return train_due(cfg.train.cadence, trained_for(latest), run_date, force, erasure=erasure)


def _same_inputs(folder: Location, **expected: Any) -> bool:
    """A complete folder whose manifest names the same inputs can be reused."""
    if not is_complete(folder):
        return False
    manifest = read_manifest(folder)
    return all(manifest.get(k) == v for k, v in expected.items())


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _stage(summary: NightlySummary, name: str) -> Iterator[StageRecord]:
    record = summary.stage(name)
    start = time.perf_counter()
    log.info("stage %s: starting", name)
    try:
        yield record
    except Exception as exc:
        record.status = "failed"
        record.seconds = time.perf_counter() - start
        summary.failed_stage = name
        code = exc.exit_code if isinstance(exc, RecbatchError) else None  # anything else: 7
        failure = StageFailed(f"stage '{name}' failed: {exc}", exit_code=code)
        record.details["exit_code"] = failure.exit_code  # e.g. 4: the quality gate refused (metrics, alerts)
        raise failure from exc
    record.seconds = time.perf_counter() - start
    if record.status == "pending":
        record.status = "ran"
    log.info("stage %s: %s in %.1fs", name, record.status, record.seconds)
    if summary.stop_after == name:
        raise _Stop()


class _Stop(Exception):
    """Raised after the `stop_after` stage to end the run cleanly."""


def run_nightly(
    cfg: Config,
    run_date: dt.date | None = None,
    *,
    force_train: bool = False,
    force_publish: bool = False,
    stop_after: str | None = None,
) -> NightlySummary:
    """Run every due stage for `run_date` (default: today in UTC); see the module doc.

    `stop_after` ends the run after the named stage (for running the first
    stages alone, e.g. scoring without publishing); later stages are reported
    as "not run".
    """
    if stop_after is not None and stop_after not in STAGES:
        raise UsageError(f"stop_after must be one of {', '.join(STAGES)}, got {stop_after!r}")
    from recbatch.runtime import ensure_ray

    run_date = run_date or dt.datetime.now(dt.timezone.utc).date()
    layout = RunLayout.of(cfg.root, cfg.storage).at
    summary = NightlySummary(run_date=run_date.isoformat(), root=layout.root.uri, stop_after=stop_after,
                             run_summary=layout.run_summary(run_date).uri)
    summary.stages = [StageRecord(name) for name in STAGES]
    preflight(cfg)  # before the try: a refused config writes nothing, not even a summary
    with root_lease(cfg.root, cfg.storage, f"nightly {run_date.isoformat()}"):  # a second run on the root: refused likewise
        try:
            ensure_ray(cfg.ray)
            _run_stages(cfg, run_date, layout, summary, force_train, force_publish, stop_after)
        except _Stop:
            for s in summary.stages:
                if s.status == "pending":
                    s.status = "not run"
        finally:
            write_bytes(layout.run_summary(run_date), summary.to_json().encode())
            push(cfg.metrics, "nightly", nightly_metrics(summary))  # logs, never raises
    return summary


def _run_stages(
    cfg: Config,
    run_date: dt.date,
    layout: RootLocations,
    summary: NightlySummary,
    force_train: bool,
    force_publish: bool,
    stop_after: str | None,
) -> None:
    from recbatch.data.ingest import ingest
    from recbatch.embed.stage import embed
    from recbatch.eval.gate import check_gate, last_published_manifest
    from recbatch.eval.holdout import (
        HeldOutSlice, evaluate_baseline, evaluate_model, holdout_metrics, holdout_user_ids,
    )
    from recbatch.eval.report import injected_profiles_section, write_report
    from recbatch.publish import publish_run
    from recbatch.score.stage import list_settings, score
    from recbatch.train.trainer import train

    # Staging folders of killed runs were never published; the root's lease makes them ours to clear.
    for parent in (layout.snapshots, layout.staged_for(run_date).parent, layout.recommendations):
        remove_stale_staging(parent)

    with _stage(summary, "ingest") as rec:
        snapshot = ingest(cfg)
        rec.details.update(snapshot=snapshot.hash, **{k: v for k, v in snapshot.counts.items() if isinstance(v, int)})

    with _stage(summary, "train") as rec:
        latest = layout.latest_model()
        due, reason = decide_training(cfg, latest, run_date, force_train)
        rec.details["reason"] = reason
        if due:
            model_dir = train(cfg, snapshot, trained_for=run_date)
        else:
            model_dir = latest
            rec.status = "skipped"
        model_version = model_version_of(read_manifest(model_dir), model_dir.path)
        rec.details["model_version"] = model_version

    inputs = {"model_version": model_version, "snapshot_hash": snapshot.hash}
    items_dir, users_dir = layout.embeddings(model_version, "items"), layout.embeddings(model_version, "users")
    with _stage(summary, "embed") as rec:
        if _same_inputs(items_dir, **inputs) and _same_inputs(users_dir, **inputs):
            rec.status = "skipped"  # a rerun of the night: no actor pool to start for nothing to encode
            rec.details["reason"] = "embeddings for these inputs are complete"
        else:
            emb = embed(cfg, snapshot, model_dir)
            items_dir, users_dir = emb.items_dir, emb.users_dir
            rec.details.update(
                items_encoded=emb.items_encoded,
                items_reused=emb.items_reused,
                users_encoded=emb.users_encoded,
                users_reused=emb.users_reused,
            )

    staged = layout.staged_for(run_date)
    final = layout.recommendations_for(run_date)
    with _stage(summary, "score") as rec:
        inputs["list_settings"] = list_settings(cfg.score)  # the scored and published runs depend on these too
        if _same_inputs(staged, **inputs) or _same_inputs(final, **inputs):
            rec.status = "skipped"
            rec.details["reason"] = "scored output for these inputs is complete"
        else:
            score(cfg, snapshot, items_dir, users_dir, run_date)  # into `staged`
        source = staged if is_complete(staged) else final
        rec.details["users"] = read_manifest(source).get("users")

    # A rerun of a night already published for these inputs publishes nothing new. If that run was
    # forced past the gate, the operator's decision stands: the gate records it instead of refusing again.
    already_published = _same_inputs(final, **inputs) and not is_complete(staged)
    forced_before = already_published and bool(read_manifest(final).get("gate", {}).get("forced"))

    with _stage(summary, "evaluate") as rec:
        held_out = HeldOutSlice.read(cfg, snapshot, "test")  # read once (Ray tasks), scored three times
        result = evaluate_model(cfg, snapshot, model_dir, items_dir, held_out=held_out)
        metrics = holdout_metrics(result)
        # Popularity on the same holdout users: the gate's floor, and what the report compares with.
        tune_users = holdout_user_ids(snapshot, cfg.eval.holdout_users, "validation", cfg.ray)
        popular = [evaluate_baseline(cfg, snapshot, name, held_out, tune_users) for name in POPULARITY_BASELINES]
        # The report is written before the gate decides, so a refused run can be inspected.
        context = {"run_date": run_date.isoformat(), "model_version": model_version, "snapshot": snapshot.hash}
        sections = [injected_profiles_section(snapshot)] if cfg.ingest.detect_injected_profiles else []
        summary.report = str(write_report([result, *popular], layout.report(run_date), context=context,
                                          gate_metric=cfg.eval.gate_metric, sections=sections))
        headline = (cfg.eval.gate_metric, "recall@10", "coverage@10", "holdout_users")
        rec.details.update({k: round(metrics[k], 4) for k in headline if k in metrics})
        last_manifest = last_published_manifest(layout, final.name)
        floor = next(r for r in popular if r.name == FLOOR_BASELINE)
        gate = check_gate(metrics, last_manifest, cfg.eval, force=force_publish or forced_before,
                          floor_metrics=floor.metrics())
        rec.details["gate"] = asdict(gate)
        if forced_before and not force_publish:
            rec.details["gate_forced_by"] = "an earlier run of this date (--force); its published run is kept"

    with _stage(summary, "publish") as rec:
        if already_published:
            rec.status = "skipped"
            rec.details["reason"] = "already published for these inputs"
        else:
            publish_run(staged, final, {"metrics": metrics, "gate": asdict(gate)})
        summary.output = final.uri

    with _stage(summary, "load") as rec:
        if not (cfg.serving.redis_url or cfg.serving.redis_url_env):
            rec.status = "skipped"
            rec.details["reason"] = "no serving.redis_url configured"
        else:
            from recbatch.serving.loader import load_run

            loaded = load_run(final, cfg.serving)
            rec.details.update(users=loaded.users, version=loaded.version, seconds=round(loaded.seconds, 1))

    if cfg.retention.keep_runs is not None:  # housekeeping once tonight's run is live
        from recbatch.retention import apply_plan, plan_for

        summary.stages.append(StageRecord("gc"))
        with _stage(summary, "gc") as rec:
            plan = plan_for(cfg)
            rec.details.update(removed=len(plan.removals), bytes_freed=apply_plan(plan))
