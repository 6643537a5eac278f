"""`recbatch forget` on an object-store root (SeaweedFS, tests/s3_helpers.py).

A snapshot from `recbatch ingest`, a published run (republished, so a
retired attempt exists, plus a killed writer's attempt), a model trained on
the snapshot and a training run's inputs are erased from; the
check then reads every object under the prefix, not only what the markers
name: an erasure that left the ids in a replaced attempt would pass a reader's
check and fail this one.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_helpers import storage_flags

from recbatch import folders
from recbatch.cli import main
from recbatch.config import GenerateConfig, load_config
from recbatch.data.generate import generate_demo
from recbatch.data.ingest import ingest
from recbatch.erasure.models import read_marker
from recbatch.erasure.rewrite import output_folders
from recbatch.erasure.suppression import SuppressionList
from recbatch.fs import read_bytes, write_bytes, write_new
from recbatch.layout import RunLayout
from recbatch.schemas import recommendations_schema

SMALL = dict(users=24, items=20, topics=3, interactions_per_user=6, id_type="string")
RUN_DATE = "2026-11-20"
ERASED = 3  # the first users of the snapshot


def _publish_run(final, users: list[str], items: list[str], attempt: int) -> None:
    """A run as the publish step leaves it: two parts, a manifest, the commit (folders API)."""
    rows = pa.table({
        "user_id": users,
        "item_ids": [[items[(u + attempt) % len(items)], items[u % 3]] for u in range(len(users))],
        "scores": [[0.9, 0.5]] * len(users),
        "model_version": ["m1"] * len(users),
    }, schema=recommendations_schema("string"))
    staging = folders.staging_for(final)
    half = len(users) // 2
    records = {name: folders.write_parquet_part(part, staging.join(name))
               for name, part in (("part-00000.parquet", rows.slice(0, half)),
                                  ("part-00001.parquet", rows.slice(half)))}
    folders.write_manifest(staging, {"run_date": RUN_DATE, "model_version": "m1", "id_type": "string", "k": 2,
                                     "users": len(users), "rows": len(users)}, files=records)
    folders.publish(staging, final)


def _ids_in_objects(s3_root, ids: set[str]) -> list[str]:
    """Every object under the root (attempts of any state included) whose content names one of `ids`."""
    fs = s3_root.server.admin_filesystem()
    found = []
    for key in s3_root.keys():
        with fs.open_input_file(key) as f:
            data = f.read()
        if key.endswith(".parquet"):
            table = pq.read_table(pa.BufferReader(data))
            for name in table.column_names:
                column = table.column(name)
                while pa.types.is_list(column.type):
                    column = pa.chunked_array([c.flatten() for c in column.chunks], column.type.value_type)
                if pa.types.is_string(column.type) and ids & set(column.drop_null().to_pylist()):
                    found.append(f"{key}:{name}")
        elif any(i.encode() in data for i in ids):
            found.append(key)
    return found


@pytest.mark.ray
def test_forget_on_s3_erases_every_object_and_the_next_ingest_keeps_them_out(
    tmp_path, s3_root, ray_with_credentials, capsys
):
    source = tmp_path / "source"
    source.mkdir()
    generate_demo(GenerateConfig(**SMALL), source)
    storage = s3_root.storage
    cfg = load_config(None, {"root": s3_root.uri, "ingest.source": str(source), "storage.endpoint": storage.endpoint,
                             "storage.scheme": storage.scheme, "storage.region": storage.region})
    snapshot = ingest(cfg)
    users = sorted(snapshot.scan("users").collect()["user_id"].to_list())
    items = sorted(snapshot.scan("items").collect()["item_id"].to_list())
    erased, others = set(users[:ERASED]), users[ERASED:]

    at = RunLayout.of(s3_root.uri, storage).at
    run = at.recommendations_for(RUN_DATE)
    for attempt in range(2):  # the second publish retires the first, which holds the ids too
        _publish_run(run, users, items, attempt)
    killed = folders.staging_for(at.staged_for(RUN_DATE))  # a killed writer's attempt: no manifest, no marker
    folders.write_parquet_part(pa.table({"user_id": users}), killed.join("part-00000.parquet"))
    model = at.model("m1")  # trained on the snapshot: it gets the erasure marker
    staging = folders.staging_for(model)
    write_bytes(staging.join("towers.pt"), b"weights")
    folders.write_manifest(staging, {"kind": "model", "model_version": "m1", "snapshot_hash": snapshot.hash})
    folders.publish(staging, model)
    training_run = at.training_run(snapshot.hash, "20261126T000000000000")  # its inputs hold the users' rows
    folders.write_parquet_part(pa.table({"user_id": users}), training_run.join("inputs", "part-00000.parquet"))
    run_before = folders.read_parquet_folder(run).to_pylist()
    assert len(_ids_in_objects(s3_root, erased)) >= 7  # the scan sees them before

    request = tmp_path / "erase.csv"
    request.write_text("user_id\n" + "\n".join(sorted(erased)) + "\n")
    assert main(["forget", "--users", str(request), "--root", s3_root.uri, *storage_flags(s3_root)]) == 0
    summary = json.loads(capsys.readouterr().out)

    assert _ids_in_objects(s3_root, erased) == []
    assert {f.path for f in output_folders(at.root)} == {snapshot.location.path, run.path, model.path}
    assert folders.read_parquet_folder(run).to_pylist() == [r for r in run_before if r["user_id"] not in erased]
    manifest = folders.verify_manifest(run)  # checksums and all
    assert manifest["users"] == len(others) and manifest["erasure"][0]["request_id"] == summary["request_id"]
    after = folders.verify_manifest(snapshot.location)
    assert after["counts"]["erased_users"] == ERASED and after["counts"]["users"] == len(others)
    assert set(summary["folders_rewritten"]) == {f"snapshots/{snapshot.hash}", f"recommendations/dt={RUN_DATE}"}
    assert summary["copies_removed"] == [killed.path[len(at.root.path) + 1:]]
    assert [k for k in s3_root.keys() if "/staged/" in k or "/checkpoints/" in k] == []
    assert summary["training_runs_removed"] == [f"checkpoints/{training_run.name}"]
    assert [m["model_version"] for m in summary["models_marked_for_retraining"]] == ["m1"]
    assert read_marker(model)["requests"][0]["request_id"] == summary["request_id"]
    assert folders.verify_manifest(model)["snapshot_hash"] == snapshot.hash  # the artifact itself untouched

    (log_key,) = [k for k in s3_root.keys() if "/erasure/requests/" in k]
    assert summary["log"] == f"s3://{log_key}" and Path(log_key).stem == summary["request_id"]
    record = json.loads(read_bytes(s3_root.locate("erasure", "requests", Path(log_key).name)))
    assert record["status"] == "applied" and record["suppression_list"]["users_added"] == ERASED
    suppressed = SuppressionList.load(RunLayout.of(s3_root.uri, storage))
    assert sorted(suppressed.erased_ids(pl.Series(users)).to_list()) == sorted(erased)
    key = read_bytes(at.erasure_key)  # made once: a second maker (a racing request) writes nothing
    assert write_new(at.erasure_key, b"0" * 64, storage) is False and read_bytes(at.erasure_key) == key

    again = ingest(cfg)  # the source still holds them: the suppression list keeps them out
    assert again.hash != snapshot.hash and again.counts["erased_users"] == ERASED
    assert sorted(again.scan("users").collect()["user_id"].to_list()) == others
    assert _ids_in_objects(s3_root, erased) == []
