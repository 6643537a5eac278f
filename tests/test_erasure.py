"""Erasure (`recbatch forget`): the users vanish from every copy under the root and from every
Redis version at once, stay out of the next night, and the log records it without them."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch import folders
from recbatch.cli import main
from recbatch.data.ingest import ingest
from recbatch.erasure.models import MARKER, mark_models, read_marker
from recbatch.erasure.rewrite import output_folders
from recbatch.layout import RunLayout
from recbatch.lease import LEASE_FILE
from recbatch.pipeline import decide_training
from recbatch.publish import publish_run
from recbatch.schemas import embeddings_schema
from recbatch.score.writer import write_recommendations
from recbatch.serving.codec import decode
from recbatch.serving.keys import KeyLayout
from recbatch.serving.versions import registered_versions, rollback
from recbatch.storage import publish_dir, read_manifest, read_parquet_folder, staging_dir_for, verify_manifest, write_manifest

OLD_DATE, STAGED_DATE, NIGHT = dt.date(2026, 11, 26), dt.date(2026, 11, 27), dt.date(2026, 11, 28)


# --------------------------------------------------------------------------- a root, built cheaply


def _recommendations(users: list[str], items: list[str], model_version: str) -> pl.DataFrame:
    """A distinct, deterministic list per user (no model needed to test erasure)."""
    rows = [[items[(i * 7 + j) % len(items)] for j in range(5)] for i in range(len(users))]
    return pl.DataFrame({"user_id": users, "item_ids": rows, "scores": [[1.0 - 0.1 * j for j in range(5)]] * len(users),
                         "model_version": model_version})


def _user_embeddings(folder: Path, users: list[str], model_version: str, snapshot_hash: str) -> None:
    vectors = np.random.default_rng(0).standard_normal((len(users), 4)).astype(np.float32)
    table = pa.table({"user_id": users, "embedding": [list(v) for v in vectors], "input_hash": ["h"] * len(users),
                      "model_version": [model_version] * len(users)}, schema=embeddings_schema("string", "user_id"))
    staging = staging_dir_for(folder)
    pq.write_table(table.slice(0, 60), staging / "part-00000-aaaa.parquet")
    pq.write_table(table.slice(60), staging / "part-00001-aaaa.parquet")
    write_manifest(staging, {"kind": "user_embeddings", "model_version": model_version,
                             "snapshot_hash": snapshot_hash, "id_type": "string", "rows": len(users)})
    publish_dir(staging, folder)


def build_root(cfg, tiny_bert_dir) -> dict:
    """Every kind of output forget must reach, without Ray: snapshot, model, user embeddings, a published
    run (republished, so a retired copy exists), a staged run, a killed run's staging copy, a baseline,
    a report, a training run's inputs, and two Redis versions (live + rollback target)."""
    from recbatch.eval.baselines import run_baseline
    from recbatch.eval.metrics import evaluate_run
    from recbatch.eval.report import write_report
    from recbatch.model.artifact import init_artifact
    from recbatch.serving.loader import load_run
    from recbatch.train.examples import prepare_inputs

    layout = RunLayout.of(cfg.root)
    snapshot = ingest(cfg)
    users = pl.read_parquet(snapshot.table_path("users"))["user_id"].sort().to_list()
    items = pl.read_parquet(snapshot.table_path("items"))["item_id"].sort().to_list()
    model = init_artifact(cfg, str(tiny_bert_dir), snapshot, layout.models)
    mv = model.name
    _user_embeddings(layout.embeddings(mv, "users"), users, mv, snapshot.hash)

    final = layout.recommendations_for(OLD_DATE)
    fields = {"run_date": OLD_DATE.isoformat(), "model_version": mv, "snapshot_hash": snapshot.hash, "k": 5}
    for _ in range(2):  # the second publish retires the first
        staged = layout.staged_for(OLD_DATE)
        write_recommendations([_recommendations(users, items, mv)], staged, id_type="string", rows_per_file=50,
                              manifest_fields=fields)
        publish_run(staged, final, {"metrics": {"ndcg@10": 0.0}, "gate": {"passed": True}})
    write_recommendations([_recommendations(users, items, mv)], layout.staged_for(STAGED_DATE), id_type="string",
                          rows_per_file=50, manifest_fields={**fields, "run_date": STAGED_DATE.isoformat()})
    killed = layout.recommendations / ".staging-dt=2026-11-25-deadbeef"
    killed.mkdir()
    shutil.copy(sorted(final.glob("part-*.parquet"))[0], killed / "part-00000.parquet")
    run_baseline("most_popular", snapshot, cfg, layout.baseline_run(snapshot.hash, "most_popular"))
    write_report([evaluate_run(final, snapshot, ks=[5])], layout.report(OLD_DATE), headline_k=5)
    prepare_inputs(snapshot, layout.training_run(snapshot.hash, "20261126T000000000000") / "inputs",
                   history_length=3, use_item_ids=True, validate_users=50)
    for _ in range(2):
        load_run(final, cfg.serving)
    return {"snapshot": snapshot, "model": model, "users": users}


# --------------------------------------------------------------------------- what "nowhere" means


def ids_found_under(root: Path, ids: set[str]) -> list[str]:
    """Every place under `root` (hidden folders included) where one of `ids` appears."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(ids))) + r")\b")
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                column = table.column(name)
                while pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                    column = pa.chunked_array([c.flatten() for c in column.chunks], column.type.value_type)
                if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                    hits = ids & set(column.drop_null().to_pylist())
                    found += [f"{path}:{name}: {sorted(hits)}"] if hits else []
        elif path.suffix in (".json", ".md", ".html") and pattern.search(path.read_text(errors="replace")):
            found.append(f"{path}: {pattern.search(path.read_text(errors='replace')).group(0)}")
    return found


def redis_users(client, prefix: str) -> dict[str, dict[str, bytes]]:
    """version -> {user id: value} for every registered version."""
    keys = KeyLayout(prefix)
    out = {}
    for version in registered_versions(client, keys):
        root = keys.version_root(version)
        names = [k.decode() for k in client.scan_iter(match=keys.version_pattern(version)) if b":u:" in k]
        out[version] = {n[len(root) + 2:]: client.get(n) for n in names}
    return out


def published_lists(folder: Path) -> dict[str, list[str]]:
    rows = pl.from_arrow(read_parquet_folder(folder))
    return dict(zip(rows["user_id"].to_list(), rows["item_ids"].to_list()))


# --------------------------------------------------------------------------- the test


@pytest.mark.ray
def test_forget_erases_everywhere_now_and_the_next_night_keeps_them_out(
    ray_local, tiny_pipeline_config, demo_source, redis_server, tiny_bert_dir, tmp_path
):
    cfg = tiny_pipeline_config(**{"generate.id_type": "string", "serving.redis_url": redis_server.url})
    demo_source(cfg)
    layout = RunLayout.of(cfg.root)
    built = build_root(cfg, tiny_bert_dir)
    erased = set(built["users"][3:6])
    others = [u for u in built["users"] if u not in erased]
    client = redis_server.client()
    assert len(ids_found_under(layout.root, erased)) >= 10  # the scan sees them before
    final = layout.recommendations_for(OLD_DATE)
    lists_before = published_lists(final)
    redis_before = redis_users(client, cfg.serving.key_prefix)
    assert len(redis_before) == 2 and all(erased <= set(v) for v in redis_before.values())

    request = tmp_path / "erase.csv"  # outside the root, as an operator's file would be
    request.write_text("user_id\n" + "\n".join(sorted(erased)) + "\n" + sorted(erased)[0] + "\n")
    assert main(["forget", "--root", cfg.root, "--set", f"serving.redis_url={redis_server.url}",
                 "--users", str(request)]) == 0

    # Nowhere under the root, nowhere in Redis; everyone else's lists unchanged.
    assert ids_found_under(layout.root, erased) == []
    for folder in output_folders(layout.at.root):
        folders.verify_manifest(folder)
    assert published_lists(final) == {u: lists_before[u] for u in others}
    redis_after = redis_users(client, cfg.serving.key_prefix)
    assert redis_after == {v: {u: value for u, value in users.items() if u not in erased}
                           for v, users in redis_before.items()}
    live, target = (v.decode() for v in client.lrange(KeyLayout(cfg.serving.key_prefix).history, 0, -1))
    assert rollback(client, KeyLayout(cfg.serving.key_prefix)) == (live, target)  # counts still consistent
    assert decode(client.get(KeyLayout(cfg.serving.key_prefix).user(target, others[0]))).item_ids == lists_before[others[0]]

    # The snapshot says what went; the model is marked; the log names the request and the files.
    snap = read_manifest(built["snapshot"].path)
    assert snap["counts"]["erased_users"] == 3 and snap["counts"]["users"] == len(others)
    assert (built["model"] / MARKER).exists() and verify_manifest(built["model"])
    (log_file,) = layout.erasure_request("x").parent.glob("*.json")
    record = json.loads(log_file.read_text())
    assert record["status"] == "applied" and record["users_requested"] == 3
    assert log_file.stem == record["request_id"]
    rewritten = {r["folder"]: r for r in record["rewritten"]}
    assert {f"snapshots/{built['snapshot'].hash}", f"recommendations/dt={OLD_DATE}", f"staged/dt={STAGED_DATE}",
            f"embeddings/{built['model'].name}/users",
            f"baselines/{built['snapshot'].hash}/most_popular"} == set(rewritten)
    assert rewritten[f"recommendations/dt={OLD_DATE}"]["files"] == sorted(read_manifest(final)["files"])
    assert sum(rewritten[f"recommendations/dt={OLD_DATE}"]["rows_removed"].values()) == 3
    assert record["copies_removed"] == ["recommendations/.staging-dt=2026-11-25-deadbeef"]
    assert len(record["training_runs_removed"]) == 1 and not layout.training_runs()
    assert [m["model_version"] for m in record["models_marked"]] == [built["model"].name]
    assert set(record["redis"]["keys_deleted"].values()) == {3}

    # The next night retrains (the model is marked), and its new snapshot leaves them out.
    due, reason = decide_training(cfg, layout.latest_model(), NIGHT, force=False)
    assert due and "erased" in reason
    from recbatch.pipeline import run_nightly

    night = run_nightly(cfg.with_overrides({"train.cadence": "never"}), NIGHT)
    assert night.stage("train").status == "ran" and "erased" in night.stage("train").details["reason"]
    assert night.stage("ingest").details["snapshot"] != built["snapshot"].hash
    assert night.stage("ingest").details["erased_users"] == 3
    assert night.stage("load").status == "ran"
    assert ids_found_under(layout.root, erased) == []
    assert all(not (erased & set(users)) for users in redis_users(client, cfg.serving.key_prefix).values())
    assert set(published_lists(layout.recommendations_for(NIGHT))) == set(others)


# --------------------------------------------------------------------------- refusals and the deadline


def test_forget_refuses_ids_of_the_wrong_type_and_changes_nothing(ray_local, tmp_path, tiny_pipeline_config,
                                                                  demo_source, capsys):
    cfg = tiny_pipeline_config()  # integer ids
    demo_source(cfg)
    snapshot = ingest(cfg)
    before = {p: p.stat().st_mtime_ns for p in Path(cfg.root).rglob("*") if p.name != LEASE_FILE}
    bad = tmp_path / "erase.csv"
    bad.write_text("user_id\n3\nu7\n4.5\n")
    assert main(["forget", "--root", cfg.root, "--users", str(bad)]) == 3
    err = capsys.readouterr().err
    assert str(bad) in err and "'user_id'" in err and "2 bad rows" in err
    no_column = tmp_path / "erase.parquet"
    pl.DataFrame({"uid": [1, 2]}).write_parquet(no_column)
    assert main(["forget", "--root", cfg.root, "--users", str(no_column)]) == 3
    assert "no column 'user_id'" in capsys.readouterr().err
    text_ids = tmp_path / "text.parquet"
    pl.DataFrame({"user_id": ["1", None, "x"]}).write_parquet(text_ids)
    assert main(["forget", "--root", cfg.root, "--users", str(text_ids)]) == 3
    assert "2 bad rows" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in Path(cfg.root).rglob("*") if p.name != LEASE_FILE}  # forget's lock
    assert after == before
    assert read_manifest(snapshot.path)["counts"] == snapshot.counts


def test_marked_model_is_retrained_within_the_deadline(tmp_path, tiny_pipeline_config):
    cfg = tiny_pipeline_config(**{"train.cadence": "never", "erasure.retrain_within_days": 3})
    layout = RunLayout.of(cfg.root)
    model = layout.model("m1")
    staging = staging_dir_for(model)
    (staging / "towers.pt").write_text("weights")
    (staging / "model_card.json").write_text(json.dumps({"trained_for": "2026-11-01"}))
    write_manifest(staging, {"kind": "model", "model_version": "m1", "snapshot_hash": "gone"})
    publish_dir(staging, model)
    assert decide_training(cfg, layout.latest_model(), NIGHT, force=False) == (
        False, "train.cadence=never; reusing the model trained for 2026-11-01"
    )

    marked = mark_models(layout, set(), "r1")  # its snapshot is not on disk: it cannot be cleared, so marked
    assert [m["model_version"] for m in marked] == ["m1"] and verify_manifest(model)
    today = dt.date.fromisoformat(read_marker(model)["requests"][0]["marked_at"][:10])  # the day it was marked
    assert decide_training(cfg, layout.latest_model(), today + dt.timedelta(days=2), force=False)[0] is False
    due, reason = decide_training(cfg, layout.latest_model(), today + dt.timedelta(days=3), force=False)
    assert due and "r1" in reason and "retrain_within_days=3" in reason
    now = cfg.with_overrides({"erasure.retrain_within_days": 0})
    assert decide_training(now, layout.latest_model(), today, force=False)[0]


def test_integer_ids_are_erased_and_every_later_ingest_leaves_them_out(ray_local, tiny_pipeline_config, demo_source,
                                                                       tmp_path):
    cfg = tiny_pipeline_config()  # integer ids; no Redis configured: forget says it skipped it
    demo_source(cfg)
    first = ingest(cfg)
    users = pl.read_parquet(first.table_path("users"))["user_id"].sort().to_list()
    erased = users[:2]
    request = tmp_path / "erase.parquet"
    pl.DataFrame({"user_id": erased}).write_parquet(request)
    assert main(["forget", "--root", cfg.root, "--users", str(request)]) == 0
    (log_file,) = RunLayout.of(cfg.root).erasure_request("x").parent.glob("*.json")
    assert json.loads(log_file.read_text())["redis"] == {"skipped": "no serving.redis_url configured"}

    again = ingest(cfg)  # the source still holds them
    assert again.hash != first.hash
    kept = pl.read_parquet(again.table_path("interactions"))
    assert kept.filter(pl.col("user_id").is_in(erased)).height == 0
    assert again.counts["erased_users"] == 2 and again.counts["users"] == len(users) - 2
    assert again.counts["erased_interactions"] == first.counts["interactions"] - again.counts["interactions"] > 0
    rewritten = read_manifest(first.path)["counts"]  # the old snapshot, rewritten in place
    assert rewritten["interactions"] == again.counts["interactions"]
    assert ingest(cfg).hash == again.hash  # re-ingesting is still a no-op
