"""`recbatch load`, `rollback` and `gc` on an object-store root (SeaweedFS, tests/s3_helpers.py) with a real Redis.

Runs are written as the publish step leaves them, through the folders API
(attempt, parts, manifest, marker), so the loader and retention meet exactly
what a reader of an object-store root meets.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from s3_helpers import storage_flags

from recbatch import folders
from recbatch.cli import main
from recbatch.config import ServingConfig
from recbatch.errors import IntegrityError
from recbatch.fs import Location, local
from recbatch.layout import RunLayout
from recbatch.schemas import recommendations_schema
from recbatch.serving import get_recommendations, load_run
from recbatch.serving.keys import KeyLayout
from recbatch.serving.versions import registered_versions

USERS = 30
K = 4
PARTS = 3


def _items(run: int, user: int) -> list[int]:
    """Run `run`'s list for `user`: distinct per run and user, its length varying with the user."""
    return [run * 10_000 + user * 10 + j for j in range(1 + user % K)]


def _run_date(run: int) -> str:
    return f"2026-01-{run:02d}"


def publish_run(root: Location, run: int) -> Location:
    """Publish run number `run` under `root` as the publish step does: parts, manifest, commit."""
    rows = pa.table({
        "user_id": list(range(USERS)),
        "item_ids": [_items(run, u) for u in range(USERS)],
        "scores": [[1.0 - 0.1 * j for j in range(1 + u % K)] for u in range(USERS)],
        "model_version": [f"model-{run}"] * USERS,
    }, schema=recommendations_schema("int"))
    final = RunLayout.of(root).at.recommendations_for(_run_date(run))
    staging = folders.staging_for(final)
    per_part = USERS // PARTS
    records = {
        f"part-{i:05d}-p{run}.parquet": folders.write_parquet_part(
            rows.slice(i * per_part, per_part), staging.join(f"part-{i:05d}-p{run}.parquet"))
        for i in range(PARTS)
    }
    fields = {"run_date": _run_date(run), "model_version": f"model-{run}", "snapshot_hash": f"snap-{run}",
              "id_type": "int", "k": K, "users": USERS, "rows": USERS}
    folders.write_manifest(staging, fields, files=records)
    return folders.publish(staging, final)


def _served(client, prefix: str) -> dict[int, tuple[list[int], list[float], str]]:
    """Every user's list as a reader gets it: items, scores and the version that served it."""
    served = {}
    for user in range(USERS):
        recs = get_recommendations(client, user, prefix=prefix)
        served[user] = (recs.item_ids, recs.scores, recs.version) if recs else None
    return served


def test_a_run_on_s3_loads_as_the_same_run_on_a_local_root_and_rolls_back(s3_root, redis_server, tmp_path, capsys):
    s3 = s3_root.locate()
    for run in (1, 2):
        publish_run(s3, run)
        publish_run(local(tmp_path / "root"), run)
    client = redis_server.client()
    flags = ["--root", s3_root.uri, *storage_flags(s3_root), "--redis-url", redis_server.url,
             "--set", "serving.key_prefix=s3", "--set", "serving.batch_size=7"]

    first = RunLayout.of(s3).at.recommendations_for(_run_date(1))
    assert main(["load", "--run", first.uri, *flags]) == 0
    assert json.loads(capsys.readouterr().out)["run_date"] == _run_date(1)
    assert main(["load", *flags]) == 0  # no --run: the newest published run on the root
    loaded = json.loads(capsys.readouterr().out)
    assert (loaded["run_date"], loaded["users"], loaded["batches"]) == (_run_date(2), USERS, 6)  # 3 parts x 2

    on_local = load_run(RunLayout.of(tmp_path / "root").recommendations_for(_run_date(2)),
                        ServingConfig(redis_url=redis_server.url, key_prefix="local", batch_size=7))
    from_s3, from_local = _served(client, "s3"), _served(client, "local")
    assert {u: r[:2] for u, r in from_s3.items()} == {u: r[:2] for u, r in from_local.items()}
    assert from_s3[5][0] == _items(2, 5) and {r[2] for r in from_s3.values()} == {loaded["version"]}
    assert on_local.batches == loaded["batches"]

    assert main(["rollback", "--root", s3_root.uri, *storage_flags(s3_root), "--redis-url", redis_server.url,
                "--set", "serving.key_prefix=s3"]) == 0
    assert json.loads(capsys.readouterr().out)["live_run_date"] == _run_date(1)
    assert all(recs[0] == _items(1, u) for u, recs in _served(client, "s3").items())


def _flip_a_byte(data: bytes) -> bytes:
    """Same size, other content: only the sha256 tells."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.mark.parametrize("corrupt, words", [(_flip_a_byte, "sha256 does not match"),
                                            (lambda data: data[:-10], "size")], ids=["sha256", "size"])
def test_a_corrupted_part_on_s3_is_refused_and_nothing_loaded(s3_root, redis_server, corrupt, words):
    run = publish_run(s3_root.locate(), 1)
    manifest, attempt = folders.read_committed(run)
    name = sorted(manifest["files"])[1]
    fs = s3_root.server.admin_filesystem()
    part = attempt.join(name).path
    with fs.open_input_stream(part) as f:
        data = f.read()
    with fs.open_output_stream(part) as out:  # as a bad copy or a bit flip at rest would leave it
        out.write(corrupt(data))

    with pytest.raises(IntegrityError, match=words) as err:
        load_run(run, ServingConfig(redis_url=redis_server.url, key_prefix="s3"))

    assert f"{run.uri}/{name}" in str(err.value)  # names the file
    client = redis_server.client()
    assert client.dbsize() == 0 and registered_versions(client, KeyLayout("s3")) == []


def _commit(folder: Location, fields: dict) -> Location:
    """A committed folder holding one small part: a snapshot, a model or embeddings, as far as retention cares."""
    staging = folders.staging_for(folder)
    record = folders.write_parquet_part(pa.table({"x": [1, 2, 3]}), staging.join("part-00000.parquet"))
    folders.write_manifest(staging, fields, files={"part-00000.parquet": record})
    return folders.publish(staging, folder)


def test_gc_on_s3_removes_what_no_kept_run_needs_and_keeps_the_served_one(s3_root, redis_server, capsys):
    """Five nights, each with its snapshot, model and embeddings; Redis serves night 1; keep 2 runs:
    nights 2 and 3 go with everything only they needed, an old training run, a staged run never published
    and a killed writer's attempt (every leftover counts as old: staged_max_age_hours=0)."""
    s3 = s3_root.locate()
    at = RunLayout.of(s3).at
    old_training = at.training_run("snap-2", "20260102T000000")
    folders.write_parquet_part(pa.table({"x": [1]}), old_training.join("checkpoint_000001", "state.parquet"))
    runs = {}
    for n in range(1, 6):
        _commit(at.snapshot(f"snap-{n}"), {"snapshot_hash": f"snap-{n}"})
        _commit(at.model(f"model-{n}"), {"model_version": f"model-{n}", "snapshot_hash": f"snap-{n}"})
        _commit(at.embeddings(f"model-{n}", "items"), {"model_version": f"model-{n}"})
        runs[n] = publish_run(s3, n)
    load_run(runs[1], ServingConfig(redis_url=redis_server.url))  # Redis serves the oldest: it must stay
    killed = folders.staging_for(runs[5])  # a writer killed before its commit
    folders.write_parquet_part(pa.table({"x": [1]}), killed.join("part-00000.parquet"))
    never_published = _commit(at.staged_for(_run_date(6)), {"run_date": _run_date(6)})
    live_attempt = folders.read_committed(runs[5])[1]
    gone = [runs[2], runs[3], at.model("model-2"), at.model("model-3"), at.root.join("embeddings", "model-2"),
            at.root.join("embeddings", "model-3"), old_training, at.snapshot("snap-2"), at.snapshot("snap-3"),
            never_published, killed]
    before = s3_root.keys()
    gc = ["gc", "--root", s3_root.uri, *storage_flags(s3_root), "--keep-runs", "2", "--redis-url", redis_server.url,
          "--set", "retention.staged_max_age_hours=0"]

    assert main([*gc, "--dry-run"]) == 0
    listed = [line.strip().split("  ")[1] for line in capsys.readouterr().out.strip().splitlines()[:-2]]
    assert sorted(f"{s3_root.uri}/{path}" for path in listed) == sorted(g.uri for g in gone)
    assert s3_root.keys() == before  # a dry run deletes nothing

    assert main(gc) == 0
    capsys.readouterr()

    def under_gone(key: str) -> bool:
        return any(key.startswith(g.path + "/") for g in gone)

    assert any(under_gone(k) for k in before)
    assert s3_root.keys() == [k for k in before if not under_gone(k)]  # every object of those, nothing else
    assert [r.name for r in at.published_runs()] == [f"dt={_run_date(n)}" for n in (1, 4, 5)]
    assert folders.read_committed(runs[5])[1] == live_attempt
    assert all(folders.is_complete(folder) for n in (1, 4, 5)
               for folder in (runs[n], at.model(f"model-{n}"), at.snapshot(f"snap-{n}")))
