"""The nightly pipeline end to end: idempotency, a driver killed before publish,
and configuration that must fail before any work."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import polars as pl
import pytest

from recbatch.cli import main
from recbatch.layout import RunLayout
from recbatch.pipeline import run_nightly
from recbatch.storage import read_manifest, read_parquet_folder, verify_manifest

RUN_DATE = dt.date(2026, 11, 28)


def _published_rows(folder: Path) -> pl.DataFrame:
    return pl.from_arrow(read_parquet_folder(folder))  # the reader contract: manifest, then its files


@pytest.mark.ray
def test_nightly_lifecycle_idempotent_rerun_and_stop_before_publish(
    ray_local, tiny_pipeline_config, demo_source, redis_server
):
    cfg = tiny_pipeline_config()
    demo_source(cfg)

    first = run_nightly(cfg, RUN_DATE)
    assert [s.status for s in first.stages] == ["ran", "ran", "ran", "ran", "ran", "ran", "skipped"]
    layout = RunLayout.of(cfg.root)
    final = layout.recommendations_for(RUN_DATE)
    manifest = verify_manifest(final)
    recs = _published_rows(final)
    users = pl.read_parquet(layout.latest_snapshot() / "users.parquet")
    assert recs.height == users.height == manifest["users"]
    assert recs["user_id"].n_unique() == recs.height
    assert manifest["gate"]["passed"] is True
    assert "ndcg@10" in manifest["metrics"]
    assert layout.run_summary(RUN_DATE).exists()
    report = Path(first.report)
    assert report == layout.report(RUN_DATE)
    assert "ndcg" in (report / "report.md").read_text().lower()
    assert (report / "metrics_at_k.png").stat().st_size > 1000

    # 1. Rerun the same date: nothing is retrained, rescored or republished.
    second = run_nightly(cfg, RUN_DATE)
    status = {s.name: s.status for s in second.stages}
    assert status["train"] == "skipped"
    # the weekly cadence counts from the run date the model was trained for, not from the clock
    assert second.stage("train").details["reason"] == (
        "latest model was trained for 2026-11-28, 0 days before the run date (weekly cadence)")
    assert status["score"] == "skipped"
    assert status["publish"] == "skipped"
    assert second.stage("embed").details["items_encoded"] == 0
    assert read_manifest(final)["files"] == manifest["files"]
    assert [p.name for p in layout.recommendations.iterdir()] == [final.name]
    before = manifest

    # 2. New data arrives (a new snapshot); the driver stops after scoring it.
    src = Path(cfg.ingest.source) / "interactions.parquet"
    inter = pl.read_parquet(src)
    pl.concat([inter, inter.head(30).with_columns(pl.col("ts") + pl.duration(days=1))]).write_parquet(src)
    cfg2 = cfg.with_overrides({"train.cadence": "never"})
    run_nightly(cfg2, RUN_DATE, stop_after="score")
    assert read_manifest(final) == before  # previous run still live and complete
    assert layout.staged_for(RUN_DATE).exists()

    # 3. The rerun publishes once, while readers keep reading the date's folder,
    #    then loads the published run into Redis.
    seen_rows: list[int] = []
    read_errors: list[Exception] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen_rows.append(_published_rows(final).height)
            except Exception as exc:  # noqa: BLE001 - any failed, corrupt or mixed read fails the test
                read_errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        rerun = run_nightly(cfg2.with_overrides({"serving.redis_url": redis_server.url}), RUN_DATE)
    finally:
        stop.set()
        t.join()
    assert rerun.stage("score").status == "skipped"  # the staged output was reused
    assert rerun.stage("publish").status == "ran"
    after = verify_manifest(final)
    assert after["snapshot_hash"] != before["snapshot_hash"]
    assert not read_errors, read_errors[:3]
    assert seen_rows and set(seen_rows) == {before["users"]}
    assert [p.name for p in layout.recommendations.glob("dt=*")] == [final.name]
    assert not list(layout.recommendations.glob(".staging-*"))
    retired = list(layout.recommendations.glob(".retired-*"))  # the replaced run, kept through the grace period
    assert len(retired) == 1 and read_manifest(retired[0])["files"] == before["files"]

    assert rerun.stage("load").status == "ran"
    assert rerun.stage("load").details["users"] == after["users"]
    import redis

    from recbatch.serving.reader import get_recommendations

    row = _published_rows(final).row(0, named=True)
    got = get_recommendations(redis.Redis.from_url(redis_server.url), row["user_id"])
    assert got is not None and list(got.item_ids) == row["item_ids"]


def test_wrong_config_fails_before_any_work(tmp_path, tiny_bert_dir):
    root = tmp_path / "root"
    source = tmp_path / "src"
    source.mkdir()

    def nightly(*flags: str) -> int:
        return main(["nightly", "--root", str(root), "--source", str(source), *flags])

    assert nightly("--set", f"model.encoder={tmp_path / 'no-such-encoder'}") == 2
    assert nightly("--set", f"model.encoder={tiny_bert_dir}", "--set", "score.k=0") == 2
    assert not root.exists()  # nothing was started

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = main(["nightly", "--root", str(blocker / "root"), "--source", str(source),
                 "--set", f"model.encoder={tiny_bert_dir}"])
    assert code == 2


def test_wrong_config_messages_name_the_problem(tmp_path, tiny_bert_dir, capsys):
    main(["nightly", "--root", str(tmp_path / "r"), "--set", f"model.encoder={tmp_path / 'nope'}"])
    assert "nope" in capsys.readouterr().err
    main(["nightly", "--root", str(tmp_path / "r"), "--set", "score.k=0"])
    err = capsys.readouterr().err
    assert "score.k" in err and ">= 1" in err


def test_preflight_refuses_a_missing_source_and_an_unset_redis_env(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    """Exit 2 before any stage runs: no run summary, no snapshot."""
    root = tmp_path / "root"
    source = tmp_path / "src"
    source.mkdir()
    encoder = ["--set", f"model.encoder={tiny_bert_dir}"]

    missing = tmp_path / "no-such-export"
    assert main(["nightly", "--root", str(root), "--source", str(missing), *encoder]) == 2
    assert f"ingest.source '{missing}' does not exist" in capsys.readouterr().err

    monkeypatch.delenv("RECBATCH_TEST_REDIS_URL", raising=False)
    code = main(["nightly", "--root", str(root), "--source", str(source), *encoder,
                 "--set", "serving.redis_url_env=RECBATCH_TEST_REDIS_URL"])
    assert code == 2
    assert "serving.redis_url_env names 'RECBATCH_TEST_REDIS_URL', which is not set" in capsys.readouterr().err
    assert not (root / "runs").exists() and not (root / "snapshots").exists()
