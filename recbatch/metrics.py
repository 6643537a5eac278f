"""Run figures for Prometheus, pushed to a Pushgateway.

Why push: a nightly batch job lives for an hour and is gone before Prometheus
would scrape it, so it hands its figures to a Pushgateway, which Prometheus
scrapes (the standard pattern for batch jobs on Kubernetes). Alert rules in
``cluster/prometheus/recbatch-alerts.yaml`` read what is pushed here.

What is pushed: figures only (durations, statuses, row and key counts, the
gate's metric and decision, the published run date); never a user id, item id
or anything else from the data, and never a credential. Every series carries
the label ``pipeline`` (``metrics.pipeline``, from the grouping key) and,
per stage, ``stage``.

Two groups per command on the gateway (job ``metrics.job``):

- ``{pipeline, command}`` holds the latest run's figures and is replaced by
  each push, so a stage that did not run tonight shows no stale duration;
- ``{pipeline, command, record="last_success"}`` holds only the time of the
  last successful run and is pushed only on success, so a failed night leaves
  it alone and "no success for 26 h" stays measurable.

A push that fails is logged and never fails the run: the recommendations
matter more than the figures about them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Enum, Gauge, push_to_gateway

from recbatch.config import MetricsConfig
from recbatch.errors import QualityGateError

if TYPE_CHECKING:  # pipeline imports this module
    from recbatch.pipeline import NightlySummary

log = logging.getLogger(__name__)

# Seconds a push may take: long enough for a slow gateway, short enough that an unreachable one
# costs the night seconds, not the library's default 30 s per push.
PUSH_TIMEOUT_SECONDS = 10.0

# Every status a stage record can end in (pipeline.StageRecord.status); Enum needs them all up front.
STAGE_STATES = ["pending", "ran", "skipped", "failed", "not run"]


# Every gauge a run may push: name -> (help text, label names). A gauge is registered on its
# first value only, so a figure a run did not produce is absent, never a misleading 0.
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "recbatch_stage_duration_seconds": ("Wall time of the stage in the latest run", ("stage",)),
    "recbatch_stage_rows_in": ("Rows the stage read", ("stage",)),
    "recbatch_stage_rows_out": ("Rows the stage wrote", ("stage",)),
    "recbatch_embed_encoded": ("Embeddings computed (new or changed inputs)", ("kind",)),
    "recbatch_embed_reused": ("Embeddings reused from the previous run", ("kind",)),
    "recbatch_users_scored": ("Users with a top-K list in the latest run", ()),
    "recbatch_gate_metric_value": ("The new model's gate metric on the holdout", ("metric",)),
    "recbatch_gate_baseline_value": ("The gate metric of the run compared with", ("metric",)),
    "recbatch_gate_passed": ("1: the quality gate passed; 0: it refused the run", ()),
    "recbatch_gate_forced": ("1: published despite the gate (--force)", ()),
    "recbatch_published_run_date_seconds": ("Run date of the published run (UTC midnight, unix time)", ()),
    "recbatch_redis_keys_loaded": ("User keys written to Redis by the load", ()),
    "recbatch_retention_bytes_freed": ("Bytes retention (gc) deleted under the run root", ()),
    "recbatch_run_succeeded": ("1: the latest run succeeded; 0: it failed", ()),
    "recbatch_run_finished_seconds": ("When the latest run ended (unix time)", ()),
}


class RunMetrics:
    """The figures of one run (a nightly or one stage command), in their own registry.

    A registry per run, not the global default one: the push then carries
    exactly this run's series and nothing a library registered on import.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.succeeded: bool | None = None  # set by finish()
        self._gauges: dict[str, Gauge] = {}
        self._status = Enum(
            "recbatch_stage_status", "How the stage ended in the latest run", ["stage"],
            states=STAGE_STATES, registry=self.registry,
        )

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge `name` (one of GAUGES) for `labels`, registering it on first use."""
        if name not in self._gauges:
            doc, label_names = GAUGES[name]
            self._gauges[name] = Gauge(name, doc, label_names, registry=self.registry)
        gauge = self._gauges[name]
        (gauge.labels(**labels) if labels else gauge).set(value)

    def stage(self, name: str, status: str, seconds: float) -> None:
        self.set("recbatch_stage_duration_seconds", seconds, stage=name)
        self._status.labels(name).state(status)

    def finish(self, succeeded: bool) -> None:
        self.succeeded = succeeded
        self.set("recbatch_run_succeeded", 1 if succeeded else 0)
        self.set("recbatch_run_finished_seconds", time.time())


def nightly_metrics(summary: NightlySummary) -> RunMetrics:
    """The figures of a nightly run, read from its summary (the record of what happened)."""
    m = RunMetrics()
    for record in summary.stages:
        m.stage(record.name, record.status, record.seconds)
    _stage_figures(m, {s.name: s.details for s in summary.stages})
    evaluate = summary.stage("evaluate")
    if "gate" not in evaluate.details and evaluate.details.get("exit_code") == QualityGateError.exit_code:
        m.set("recbatch_gate_passed", 0)  # the gate refused by raising: no result to read
    if summary.output and summary.stage("publish").status in ("ran", "skipped"):
        m.set("recbatch_published_run_date_seconds", _midnight_utc(summary.run_date))
    m.finish(summary.failed_stage is None)
    return m


def _stage_figures(m: RunMetrics, details: Mapping[str, Mapping[str, Any]]) -> None:
    ingest = details.get("ingest", {})
    if "interactions" in ingest:
        read = ingest["interactions"] + ingest.get("quarantined_interactions", 0)
        m.set("recbatch_stage_rows_in", read, stage="ingest")
        m.set("recbatch_stage_rows_out", ingest["interactions"], stage="ingest")
    embed = details.get("embed", {})
    for kind in ("items", "users"):
        if f"{kind}_encoded" in embed:
            m.set("recbatch_embed_encoded", embed[f"{kind}_encoded"], kind=kind)
            m.set("recbatch_embed_reused", embed[f"{kind}_reused"], kind=kind)
    users = details.get("score", {}).get("users")
    if users is not None:
        m.set("recbatch_users_scored", users)
        m.set("recbatch_stage_rows_out", users, stage="score")
    gate = details.get("evaluate", {}).get("gate")
    if gate:
        if gate.get("value") is not None:
            m.set("recbatch_gate_metric_value", gate["value"], metric=gate["metric"])
        if gate.get("baseline_value") is not None:
            m.set("recbatch_gate_baseline_value", gate["baseline_value"], metric=gate["metric"])
        m.set("recbatch_gate_passed", 1 if gate["passed"] else 0)
        m.set("recbatch_gate_forced", 1 if gate["forced"] else 0)
    freed = details.get("gc", {}).get("bytes_freed")
    if freed is not None:
        m.set("recbatch_retention_bytes_freed", freed)
    loaded = details.get("load", {}).get("users")
    if loaded is not None:
        m.set("recbatch_redis_keys_loaded", loaded)
        m.set("recbatch_stage_rows_in", loaded, stage="load")


def _midnight_utc(run_date: str) -> float:
    return dt.datetime.combine(dt.date.fromisoformat(run_date), dt.time(), dt.timezone.utc).timestamp()


def command_metrics(command: str, status: str, seconds: float) -> RunMetrics:
    """The figures of one stage command (``recbatch score`` ...): its duration and outcome."""
    m = RunMetrics()
    m.stage(command, status, seconds)
    m.finish(status != "failed")
    return m


def push(cfg: MetricsConfig, command: str, run: RunMetrics) -> bool:
    """Push a run's figures (and, on success, its last-success time); never raises.

    Returns whether every push reached the gateway, for callers that report it.
    """
    if not cfg.pushgateway_url:
        return True
    group = {"pipeline": cfg.pipeline, "command": command}
    ok = _push(cfg, group, run.registry)
    if ok and run.succeeded:  # a gateway that just failed is not tried (and waited for) again
        success = CollectorRegistry()
        Gauge(
            "recbatch_last_success_timestamp_seconds", "When this command last succeeded (unix time)",
            registry=success,
        ).set_to_current_time()
        ok = _push(cfg, {**group, "record": "last_success"}, success) and ok
    return ok


def _push(cfg: MetricsConfig, group: dict[str, str], registry: CollectorRegistry) -> bool:
    try:
        push_to_gateway(cfg.pushgateway_url, job=cfg.job, registry=registry, grouping_key=group,
                        timeout=PUSH_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure (refused, timeout, HTTP 4xx/5xx) is only logged
        log.warning("could not push metrics %s to the Pushgateway at %s: %s", group, cfg.pushgateway_url, exc)
        return False
    return True
