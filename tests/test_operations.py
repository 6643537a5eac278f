"""Running it like production: metrics to a real Pushgateway, alert rules checked by the real
promtool, and retention (`recbatch gc`) on a root of many nights.

A whole nightly pushing its figures, cleaning up after itself (``retention.keep_runs``) and
surviving a stopped gateway rides on the nights of test_gate_cli.py, which run anyway."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from recbatch.config import MetricsConfig
from recbatch.lease import LEASE_FILE
from recbatch.metrics import nightly_metrics, push
from recbatch.pipeline import STAGES, NightlySummary, StageRecord

from operations_helpers import age, complete_folder, fake_model, publish_night, sample_series, sample_value, snapshot_hash

RUN_DATE = dt.date(2026, 11, 28)
RULES = Path(__file__).resolve().parents[1] / "cluster" / "prometheus"


def _summary(failed_stage: str | None, gate_refused: bool = False) -> NightlySummary:
    """A summary as run_nightly leaves it after a night that failed at `failed_stage`."""
    summary = NightlySummary(run_date=RUN_DATE.isoformat(), root="/unused")
    summary.stages = [StageRecord(name, status="ran", seconds=1.0) for name in STAGES]
    if failed_stage:
        index = STAGES.index(failed_stage)
        summary.failed_stage = failed_stage
        summary.stages[index].status = "failed"
        summary.stages[index].details["exit_code"] = 4 if gate_refused else 7
        for later in summary.stages[index + 1 :]:
            later.status = "pending"
    return summary


def test_a_failed_night_keeps_the_last_success_and_reports_a_refused_gate(pushgateway):
    cfg = MetricsConfig(pushgateway_url=pushgateway.url, pipeline="p")
    assert push(cfg, "nightly", nightly_metrics(_summary(None)))
    success = sample_value(pushgateway.samples(), "recbatch_last_success_timestamp_seconds", pipeline="p")

    assert push(cfg, "nightly", nightly_metrics(_summary("evaluate", gate_refused=True)))
    samples = pushgateway.samples()
    run = {"pipeline": "p", "command": "nightly"}
    assert sample_value(samples, "recbatch_last_success_timestamp_seconds", **run) == success  # untouched
    assert sample_value(samples, "recbatch_run_succeeded", **run) == 0
    assert sample_value(samples, "recbatch_gate_passed", **run) == 0
    assert sample_value(samples, "recbatch_stage_status", stage="evaluate", recbatch_stage_status="failed", **run) == 1
    assert not sample_series(samples, "recbatch_published_run_date_seconds", **run)  # replaced: nothing published

    assert push(cfg, "nightly", nightly_metrics(_summary("train")))  # a failure that is not the gate's
    assert not sample_series(pushgateway.samples(), "recbatch_gate_passed", **run)


def test_stage_commands_push_under_their_own_group(pushgateway, tmp_path):
    from recbatch.cli import main

    code = main(["gc", "--root", str(tmp_path / "root"), "--keep-runs", "2", "--dry-run",
                 "--set", f"metrics.pushgateway_url={pushgateway.url}", "--set", "metrics.pipeline=cli"])
    assert code == 0
    samples = pushgateway.samples()
    run = {"pipeline": "cli", "command": "gc"}
    assert sample_value(samples, "recbatch_stage_status", stage="gc", recbatch_stage_status="ran", **run) == 1
    success = sample_value(samples, "recbatch_last_success_timestamp_seconds", **run)

    # A failing command (no --keep-runs: usage error) reports the failure, keeps the last success.
    code = main(["gc", "--root", str(tmp_path / "root"),
                 "--set", f"metrics.pushgateway_url={pushgateway.url}", "--set", "metrics.pipeline=cli"])
    assert code == 2
    samples = pushgateway.samples()
    assert sample_value(samples, "recbatch_stage_status", stage="gc", recbatch_stage_status="failed", **run) == 1
    assert sample_value(samples, "recbatch_run_succeeded", **run) == 0
    assert sample_value(samples, "recbatch_last_success_timestamp_seconds", **run) == success


def test_a_push_to_a_stopped_gateway_is_logged_not_raised(pushgateway, caplog):
    cfg = MetricsConfig(pushgateway_url=pushgateway.url, pipeline="p")
    pushgateway.stop()
    with caplog.at_level(logging.WARNING, logger="recbatch.metrics"):
        assert push(cfg, "nightly", nightly_metrics(_summary(None))) is False
    (record,) = [r for r in caplog.records if r.name == "recbatch.metrics"]  # the success push is not tried
    assert "could not push metrics" in record.getMessage() and pushgateway.url in record.getMessage()


def test_alert_rules_pass_promtool_check_and_unit_tests():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: apt-get install -y prometheus (.ci/run does this)")
    check = subprocess.run([promtool, "check", "rules", "recbatch-alerts.yaml"], cwd=RULES,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "4 rules found" in check.stdout
    tested = subprocess.run([promtool, "test", "rules", "recbatch-alerts.test.yaml"], cwd=RULES,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr

# --------------------------------------------------------------------------- retention


DAY = 24 * 3600


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_gc_dry_run_lists_exactly_what_goes_and_the_run_frees_it(tmp_path, redis_server, capsys):
    """Ten nights: three models, a run loaded into Redis that is older than the kept ones, staged
    leftovers old and new. keep 3 runs: the Redis run, its model and snapshot stay too."""
    import time as clock

    from recbatch.cli import main
    from recbatch.config import ServingConfig
    from recbatch.layout import RunLayout
    from recbatch.serving.loader import load_run

    root = tmp_path / "root"
    layout = RunLayout.of(root)
    now = clock.time()
    model_of = {n: "m1" if n <= 4 else "m2" if n <= 7 else "m3" for n in range(1, 11)}
    for n in range(1, 11):
        complete_folder(layout.snapshot(snapshot_hash(n)), {"snapshot_hash": snapshot_hash(n)}, 1000,
                mtime=now - (11 - n) * 3600)
    checkpoint = {m: layout.checkpoints / f"{snapshot_hash(first)[:12]}-20261101T000000"
                  for m, first in (("m1", 1), ("m2", 5), ("m3", 8))}
    for i, m in enumerate(("m1", "m2", "m3")):
        (checkpoint[m] / "checkpoint_000001").mkdir(parents=True)
        (checkpoint[m] / "checkpoint_000001" / "state.pt").write_bytes(b"c" * 500)
        age(checkpoint[m], now - (4 - i) * 3600)
        fake_model(layout, m, snapshot_hash({"m1": 1, "m2": 5, "m3": 8}[m]), checkpoint[m], now - (3 - i) * 3600)
    orphan = layout.checkpoints / f"{snapshot_hash(9)[:12]}-20261109T000000"  # a failed, older training run
    orphan.mkdir()
    (orphan / "state.pt").write_bytes(b"o" * 70)
    age(orphan, now - 5 * 3600)
    resumable = layout.checkpoints / f"{snapshot_hash(10)[:12]}-20261110T000000"  # newer than the latest model
    resumable.mkdir()
    (resumable / "state.pt").write_bytes(b"r" * 90)
    for n in range(1, 11):
        run_date = f"2026-11-{n:02d}"
        publish_night(layout, run_date, model_of[n], snapshot_hash(n))
        layout.report(run_date).mkdir(parents=True)
        (layout.report(run_date) / "report.md").write_text(f"night {n}\n")
    baselines = layout.baseline_run(snapshot_hash(3), "most_popular")
    complete_folder(baselines, {"kind": "baseline"}, 40)
    old_staged = layout.staged_for("2026-10-31")
    complete_folder(old_staged, {"run_date": "2026-10-31"}, 60, mtime=now - 2 * DAY)
    fresh_staged = complete_folder(layout.staged_for("2026-11-11"), {"run_date": "2026-11-11"}, 60)
    old_leftover = layout.snapshots / ".staging-killed-1234abcd"
    complete_folder(old_leftover, {}, 30, mtime=now - 3 * DAY)
    fresh_leftover = complete_folder(layout.models / ".staging-busy-99999999", {}, 30)
    # Redis serves night 2 (say, rolled back to): its run, model m1 and snapshot must stay.
    load_run(layout.recommendations_for("2026-11-02"), ServingConfig(redis_url=redis_server.url))

    expected = {
        *(layout.recommendations_for(f"2026-11-{n:02d}") for n in (1, 3, 4, 5, 6, 7)),
        *(layout.report(f"2026-11-{n:02d}") for n in (1, 3, 4, 5, 6, 7)),
        layout.model("m2"), layout.root / "embeddings" / "m2", checkpoint["m2"], orphan,
        *(layout.snapshot(snapshot_hash(n)) for n in (3, 4, 5, 6, 7)),
        baselines.parent, old_staged, old_leftover,
    }
    expected_bytes = sum(_size(p) for p in expected)
    before = {p: _size(p) for p in root.rglob("*") if p.is_file() and p.name != LEASE_FILE}  # the lease is gc's lock

    gc = ["gc", "--root", str(root), "--keep-runs", "3", "--redis-url", redis_server.url]
    assert main([*gc, "--dry-run"]) == 0
    out = capsys.readouterr().out
    # Lines "<bytes>  <path under root>  (<reason>)", then a total.
    listed = {root / line.strip().split("  ")[1] for line in out.strip().splitlines()[:-2]}
    assert listed == expected
    assert f"would free {expected_bytes:,} bytes" in out
    after = {p: _size(p) for p in root.rglob("*") if p.is_file() and p.name != LEASE_FILE}
    assert after == before  # a dry run deletes nothing

    assert main(gc) == 0
    assert f"freed {expected_bytes:,} bytes" in capsys.readouterr().out
    assert not any(p.exists() for p in expected)
    kept = [f"2026-11-{n:02d}" for n in (2, 8, 9, 10)]
    assert [p.name for p in layout.published_runs()] == [f"dt={d}" for d in kept]
    for survivor in (layout.model("m1"), layout.model("m3"), checkpoint["m1"], checkpoint["m3"], resumable,
                     layout.snapshot(snapshot_hash(1)), layout.snapshot(snapshot_hash(2)),
                     fresh_staged, fresh_leftover, *(layout.report(d) for d in kept)):
        assert survivor.exists(), survivor
    assert main([*gc, "--dry-run"]) == 0  # nothing more to do
    assert "0 folder(s), 0 bytes" in capsys.readouterr().out


def test_gc_refuses_to_guess_when_redis_is_unreachable(tmp_path):
    from recbatch.cli import main

    from recbatch.layout import RunLayout

    root = tmp_path / "root"
    layout = RunLayout.of(root)
    for n in (1, 2):
        publish_night(layout, f"2026-11-0{n}", "m1", snapshot_hash(n))
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["gc", "--root", str(root), "--keep-runs", "1", "--redis-url", f"redis://127.0.0.1:{port}/0"])
    assert code == 6
    assert len(layout.published_runs()) == 2
