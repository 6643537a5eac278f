"""The nightly pipeline end to end: a date's whole life on an ``s3://`` root across two Ray nodes
(idempotent rerun, stop before publish, republish under readers, load), the gate's popularity floor,
and configuration that must fail before any work."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pytest

from recbatch import folders
from recbatch.cli import main
from recbatch.data.snapshot import Snapshot
from recbatch.fs import Location, as_location, is_file, read_bytes
from recbatch.layout import RunLayout
from recbatch.objectstore import retired_copies, stale_attempts
from recbatch.pipeline import run_nightly
from recbatch.storage import verify_manifest

RUN_DATE = dt.date(2026, 11, 28)


def _published_rows(folder: Path | Location) -> pl.DataFrame:
    # the reader contract: (marker,) manifest, then exactly its files
    return pl.from_arrow(folders.read_parquet_folder(as_location(folder)))


def _primary_topic(items: pl.DataFrame) -> pl.DataFrame:
    """``item_id, topic``: the generated catalog's first genre is the item's primary topic."""
    return items.select("item_id", pl.col("genres").str.split(", ").list.first().alias("topic"))


def _move_newest_to_a_new_topic(source: Path, holdout_days: float, newest: int = 5) -> tuple[int, str, list[int]]:
    """Rewrite one user's `newest` interactions to items of a topic they never touched before,
    made in the last hours of the data.

    Returns (user, the new topic, its items the user now has). The user's other
    rows are older than the last `holdout_days` (``split.holdout_days``), so the
    moved rows are exactly the user's test rows: what the holdout evaluation must not see.
    """
    (source / "users.parquet").unlink()  # no features (country follows the old taste): history alone tells
    inter = pl.read_parquet(source / "interactions.parquet")
    last = inter["ts"].max()
    window_start = last - dt.timedelta(days=holdout_days)
    topics = _primary_topic(pl.read_parquet(source / "items.parquet").filter("available"))
    per_topic = topics.group_by("topic").agg("item_id").filter(pl.col("item_id").list.len() >= 2 * newest)
    for user in inter.group_by("user_id").len().filter(pl.col("len") >= 12).sort("user_id")["user_id"]:
        mine = inter.filter(pl.col("user_id") == user).sort("ts")
        if mine["ts"][-newest - 1] >= window_start:
            continue  # keeps rows in the window that would stay unmoved
        touched = set(topics.join(mine, on="item_id")["topic"])
        fresh = [(t, items) for t, items in per_topic.sort("topic").iter_rows() if t not in touched]
        if fresh:
            topic, items = fresh[0]
            break
    moved = mine.tail(newest).with_columns(
        pl.Series("item_id", sorted(items)[:newest], dtype=inter["item_id"].dtype),
        pl.Series("ts", [last - dt.timedelta(hours=newest - i) for i in range(newest)], dtype=inter["ts"].dtype),
    )
    rest = inter.filter(pl.col("user_id") != user)
    pl.concat([rest, mine.head(mine.height - newest), moved]).sort("user_id", "ts").write_parquet(
        source / "interactions.parquet")
    return user, topic, moved["item_id"].to_list()


@contextlib.contextmanager
def _two_node_cluster() -> Iterator[str]:
    """A head with no `scorer` resource and a worker node with two, as separate raylets on this machine
    (``ray.cluster_utils.Cluster``); yields the worker node's id. The nodes inherit this process's
    environment: the AWS variables `s3_root` set (in production, each node's role). (One worker node:
    every raylet on a 2-core machine starts its own Python workers, and one is enough to show that
    scoring runs where the resource is and nowhere else.)"""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the next ray_local user starts the session's Ray again
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=3, resources={"scorer": 2})
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        (worker,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "scorer" in n["Resources"]]
        yield worker
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_nightly_lifecycle_on_s3_and_two_nodes_idempotent_rerun_and_stop_before_publish(
    tmp_path, tiny_pipeline_config, demo_source, redis_server, s3_root, monkeypatch
):
    """The whole life of a date on a cluster without a shared disk: the root is ``s3://`` on a real S3
    server (SeaweedFS), so no process sees another's local files, and the scoring actors need a
    `scorer` resource only the worker nodes offer. (Local roots: test_gate_cli.py and the demo test
    run the nightly there.)"""
    from recbatch.score.stage import score

    storage = s3_root.storage
    cfg = tiny_pipeline_config(root=s3_root.uri, **{
        "storage.endpoint": storage.endpoint, "storage.scheme": storage.scheme, "storage.region": storage.region,
        "score.num_actors": 2, "score.cpus_per_actor": 0.5, "score.actor_resources": {"scorer": 1},
        "ray.num_cpus": None,
    })
    demo_source(cfg)
    monkeypatch.chdir(tmp_path)  # where a path "s3://..." would have become a local folder "s3:"
    user, topic, newest = _move_newest_to_a_new_topic(Path(cfg.ingest.source), cfg.split.holdout_days)
    layout = RunLayout.of(cfg.root, cfg.storage).at
    final = layout.recommendations_for(RUN_DATE)

    with _two_node_cluster() as worker:
        first = run_nightly(cfg, RUN_DATE)
        assert [s.status for s in first.stages] == ["ran", "ran", "ran", "ran", "ran", "ran", "skipped"]
        manifest = folders.verify_manifest(final)
        recs = _published_rows(final)
        snapshot = Snapshot.open(layout.latest_snapshot())
        users = snapshot.users().collect()
        assert recs.height == users.height == manifest["users"]
        assert recs["user_id"].n_unique() == recs.height
        assert manifest["gate"]["passed"] is True
        assert "ndcg@10" in manifest["metrics"]
        assert manifest["scoring_nodes"] == [worker]  # the worker node scored, the head did not
        assert first.output == final.uri and is_file(layout.run_summary(RUN_DATE))
        assert first.report == layout.report(RUN_DATE).uri
        with folders.open_folder(layout.report(RUN_DATE)) as report:
            assert "ndcg" in report.files["report.md"].read().decode().lower()
            assert report.manifest["files"]["metrics_at_k.png"]["bytes"] > 1000
        _assert_served_from_the_newest_rows(cfg, layout, final, user, topic, newest)

        # 1. Rerun the same date: nothing is retrained, rescored or republished.
        second = run_nightly(cfg, RUN_DATE)
        status = {s.name: s.status for s in second.stages}
        assert status["train"] == "skipped"
        # the weekly cadence counts from the run date the model was trained for, not from the clock
        assert second.stage("train").details["reason"] == (
            "latest model was trained for 2026-11-28, 0 days before the run date (weekly cadence)")
        assert status["score"] == "skipped"
        assert status["publish"] == "skipped"
        assert status["embed"] == "skipped"  # the embeddings of this model and snapshot are complete
        assert folders.read_manifest(final)["files"] == manifest["files"]
        assert [run.name for run in layout.published_runs()] == [final.name]
        before = manifest

        # 2. New data arrives (a new snapshot); the driver stops after scoring it.
        src = Path(cfg.ingest.source) / "interactions.parquet"
        inter = pl.read_parquet(src)
        pl.concat([inter, inter.head(30).with_columns(pl.col("ts") + pl.duration(days=1))]).write_parquet(src)
        cfg2 = cfg.with_overrides({"train.cadence": "never"})
        scored = run_nightly(cfg2, RUN_DATE, stop_after="score")
        embedded = scored.stage("embed").details  # a new snapshot: only the users with new rows are re-encoded
        assert embedded["items_encoded"] == 0 and 0 < embedded["users_encoded"] < users.height
        assert folders.read_manifest(final) == before  # previous run still live and complete
        assert folders.is_complete(layout.staged_for(RUN_DATE))

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
    after = folders.verify_manifest(final)
    assert after["snapshot_hash"] != before["snapshot_hash"]
    assert not read_errors, read_errors[:3]
    assert seen_rows and set(seen_rows) == {before["users"]}
    assert [run.name for run in layout.published_runs()] == [final.name]
    assert not folders.is_complete(layout.staged_for(RUN_DATE))  # published, then the staged copy removed
    # the replaced run, kept (and named in the marker) through the grace period for readers still on it
    (retired,) = retired_copies(final)
    assert json.loads(read_bytes(retired.join("_manifest.json")))["files"] == before["files"]
    assert stale_attempts(final) == []  # nothing a killed writer left

    assert rerun.stage("load").status == "ran"
    assert rerun.stage("load").details["users"] == after["users"]
    import redis

    from recbatch.serving.reader import get_recommendations

    published = _published_rows(final).sort("user_id")
    row = published.row(0, named=True)
    got = get_recommendations(redis.Redis.from_url(redis_server.url), row["user_id"])
    assert got is not None and list(got.item_ids) == row["item_ids"]

    # One scoring actor on one node (the session's local Ray) ranks the same embeddings the same way.
    from recbatch.config import RayConfig
    from recbatch.runtime import ensure_ray

    ensure_ray(RayConfig(num_cpus=4))
    version = after["model_version"]
    single_node = {"score.num_actors": 1, "score.actor_resources": {}}  # no `scorer` node now
    single_cfg = cfg2.with_overrides({"root": str(tmp_path / "single"), **single_node})
    single = _published_rows(score(single_cfg, Snapshot.open(layout.latest_snapshot()),
                                   layout.embeddings(version, "items"), layout.embeddings(version, "users"),
                                   RUN_DATE)).sort("user_id")
    assert published.select("user_id", "item_ids").equals(single.select("user_id", "item_ids"))
    np.testing.assert_allclose(
        np.concatenate(published["scores"].to_list()), np.concatenate(single["scores"].to_list()), rtol=1e-5
    )

    # 4. A ranking setting changed and the date rerun: rescored and republished whole, not the old lists.
    shorter = run_nightly(cfg2.with_overrides({"score.k": 3, **single_node}), RUN_DATE)
    assert shorter.stage("score").status == "ran" and shorter.stage("publish").status == "ran"
    republished = folders.verify_manifest(final)
    assert republished["k"] == 3 and republished["list_settings"]["k"] == 3
    lengths = _published_rows(final)["item_ids"].list.len()
    assert lengths.max() == 3 and len(lengths) == after["users"]
    assert not (tmp_path / "s3:").exists()


def _assert_served_from_the_newest_rows(cfg, layout, final, user, topic, newest) -> None:
    """The user's published list follows their move to `topic` the same night; the holdout list does not."""
    from recbatch.eval.holdout import holdout_lists

    snapshot = Snapshot.open(layout.latest_snapshot())
    test_rows = snapshot.split("test").filter(pl.col("user_id") == user).collect()["item_id"].to_list()
    assert sorted(test_rows) == sorted(newest)  # the move is exactly the user's held-out rows
    topics = _primary_topic(snapshot.items().collect())

    def topic_share(item_ids: list) -> int:
        return topics.filter(pl.col("item_id").is_in(item_ids) & (pl.col("topic") == topic)).height

    published = _published_rows(final).filter(pl.col("user_id") == user)["item_ids"][0].to_list()
    model_dir = layout.latest_model()
    items_dir = layout.embeddings(folders.read_manifest(model_dir)["model_version"], "items")
    before_test = holdout_lists(cfg, snapshot, model_dir, items_dir, pl.Series([user]), cfg.score.k)
    held_out_view = before_test["item_ids"][0].to_list()
    assert not set(published) & set(newest)  # the seen filter reads the newest rows too
    # measured: 8 of 10 published items of the new topic, 1 of 10 from the pre-test history
    assert topic_share(published) >= 5, (published, topic)
    assert topic_share(held_out_view) <= 2, (held_out_view, topic)  # built from pre-test rows only


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


@pytest.mark.ray
def test_first_run_of_a_random_model_is_refused_below_popularity_and_force_records_it(
    ray_local, tiny_pipeline_config, demo_source, tiny_bert_dir, tmp_path, capsys
):
    """No published run to compare with: the popularity floor alone refuses an untrained model."""
    import yaml

    from recbatch.model.artifact import init_artifact

    cfg = tiny_pipeline_config(**{"train.cadence": "never", "model.encoder": str(tiny_bert_dir),
                                  "ingest.detect_injected_profiles": True})
    demo_source(cfg)
    layout = RunLayout.of(cfg.root)
    init_artifact(cfg, str(tiny_bert_dir), None, layout.models)  # random towers, random tiny BERT
    config_file = tmp_path / "nightly.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    nightly = ["nightly", "--config", str(config_file), "--run-date", RUN_DATE.isoformat()]

    assert main(nightly) == 4
    err = capsys.readouterr().err
    assert "below the most_popular baseline" in err and "first run" in err and "--force" in err
    assert not layout.recommendations.exists() or not any(layout.recommendations.iterdir())  # nothing published
    report = (layout.report(RUN_DATE) / "report.md").read_text()  # the refused run can be inspected
    assert "| most_popular |" in report and "| recent_popular |" in report
    assert "## Injected profiles quarantined at ingest" in report and "| coordinated burst | 0 | 0 |" in report

    assert main([*nightly, "--force"]) == 0
    gate = verify_manifest(layout.recommendations_for(RUN_DATE))["gate"]
    assert gate["forced"] is True and gate["passed"] is False
    assert gate["floor_model"] == "most_popular" and gate["value"] < gate["floor_value"]
    assert gate["floor_ratio"] == pytest.approx(gate["value"] / gate["floor_value"])
