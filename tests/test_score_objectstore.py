"""Scoring and publishing on an object-store root (``s3://``, a real S3 server: SeaweedFS).

``recbatch score`` on an ``s3://`` root reads the snapshot and the embeddings
there through their manifests, has its scoring workers write their parts into an
attempt of ``staged/dt=...`` and commits it with a manifest and a marker: the
same lists a local root gets. ``publish_run`` then makes a staged run live on
the store (copies inside the store, manifest, marker), and readers who go
marker -> manifest -> files see the previous run or the new one, whole.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from s3_helpers import WRONG_SECRET, assert_refused_with_wrong_credentials, credentials_env, storage_flags
from score_helpers import read_staged

from recbatch import folders, objectstore
from recbatch.cli import main
from recbatch.data.partition import user_partition
from recbatch.data.snapshot import Snapshot
from recbatch.errors import IntegrityError, StorageAccessError
from recbatch.fs import Location
from recbatch.layout import RunLayout
from recbatch.parts import PARTITION, write_partitioned
from recbatch.publish import publish_run
from recbatch.schemas import embeddings_schema
from recbatch.storage import SUCCESS

RUN_DATE = dt.date(2026, 11, 29)
MODEL_VERSION = "mv-test"
DIM = 8
# A small world cut into several user partitions, so the workers write several parts.
GENERATE = ["--users", "40", "--items", "30"]
USERS_PER_PARTITION = 10
SCORE = ["--run-date", RUN_DATE.isoformat(), "--k", "5", "--actors", "1", "--set", "score.cpus_per_actor=0.5",
         "--set", "score.rows_per_file=7"]


def _write_embeddings(layout: RunLayout, snapshot: Snapshot, kind: str, vectors: np.ndarray) -> Location:
    """An embeddings folder as the embed stage writes it: parts by user partition (users), manifest, marker."""
    column = "item_id" if kind == "items" else "user_id"
    ids = (snapshot.items() if kind == "items" else snapshot.users()).select(column).collect().to_series().sort()
    table = pa.table({
        column: ids.to_arrow(),
        "embedding": pa.array(list(vectors[: len(ids)]), type=pa.list_(pa.float32())),
        "input_hash": ["h"] * len(ids),
        "model_version": [MODEL_VERSION] * len(ids),
    }).cast(embeddings_schema(snapshot.id_type, column))
    partitions = snapshot.partitions if kind == "users" else 1
    which = user_partition(table.column(column), partitions) if kind == "users" else np.zeros(len(ids), np.int32)
    final = layout.at.embeddings(MODEL_VERSION, kind)
    staging = folders.staging_for(final)
    records = write_partitioned(table.append_column(PARTITION, pa.array(which, pa.int32())), staging, max_rows=100)
    folders.write_manifest(staging, {"model_version": MODEL_VERSION, "rows": len(ids),
                                     "partitioning": {"partitions": partitions}},
                           files={r["file"]: {"bytes": r["bytes"], "sha256": r["sha256"]} for r in records})
    return folders.publish(staging, final)


@pytest.fixture()
def two_roots(tmp_path, s3_root, ray_with_credentials, monkeypatch, capsys):
    """The same generated data ingested on a local root and on the s3 root, with the same embeddings."""
    monkeypatch.chdir(tmp_path)  # where a path "s3://..." would have become a local folder "s3:"
    source = tmp_path / "source"
    assert main(["generate", "--out", str(source), *GENERATE, "--root", str(tmp_path / "unused")]) == 0
    layouts = []
    for root in (str(tmp_path / "root"), s3_root.uri):
        assert main(["ingest", "--source", str(source), "--root", root, *storage_flags(s3_root),
                     "--set", f"ingest.users_per_partition={USERS_PER_PARTITION}"]) == 0
        layout = RunLayout.of(root, s3_root.storage)
        snapshot = Snapshot.open(layout.at.latest_snapshot())
        rng = np.random.default_rng(0)
        for kind in ("items", "users"):
            _write_embeddings(layout, snapshot, kind, rng.normal(size=(100, DIM)).astype(np.float32))
        layouts.append(layout)
    capsys.readouterr()
    return layouts


def test_an_s3_root_scores_what_a_local_root_scores(two_roots, s3_root, tmp_path, capsys):
    here, there = two_roots
    for layout in two_roots:
        items, users = (layout.at.embeddings(MODEL_VERSION, kind).uri for kind in ("items", "users"))
        code = main(["score", "--root", layout.at.root.uri, "--items", items, "--users", users, *SCORE,
                     *storage_flags(s3_root)])
        assert code == 0, capsys.readouterr().err
        assert layout.at.staged_for(RUN_DATE).uri in capsys.readouterr().out

    mine, theirs = (read_staged(layout.at.staged_for(RUN_DATE)) for layout in (there, here))
    (rows, manifest), (want, want_manifest) = mine, theirs
    assert manifest["users"] == manifest["rows"] == want_manifest["users"] == want_manifest["rows"] == 40
    assert manifest["model_version"] == MODEL_VERSION and manifest["k"] == 5
    assert rows.select("user_id", "item_ids", "scores").equals(want.select("user_id", "item_ids", "scores"))
    # the workers wrote one part per user partition at least, straight into the committed attempt
    staged = there.at.staged_for(RUN_DATE)
    marker = objectstore.read_marker(staged)
    assert len(manifest["files"]) >= 4 and all(name.startswith("part-") for name in manifest["files"])
    assert sorted(k for k in s3_root.keys() if "/staged/" in k) == sorted(
        [f"{staged.path}/{SUCCESS}", f"{staged.path}/{marker['attempt']}/_manifest.json"]
        + [f"{staged.path}/{marker['attempt']}/{name}" for name in manifest["files"]]
    )
    assert not any(p.name.startswith("s3:") for p in tmp_path.rglob("*"))


def test_score_with_wrong_credentials_names_the_bucket_and_writes_nothing(s3_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_refused_with_wrong_credentials(s3_root, ["score", *SCORE], monkeypatch, capsys)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- publish_run on a store


def _rows(users: list[int], version: str) -> pa.Table:
    return pl.DataFrame({
        "user_id": users,
        "item_ids": [[u * 10 + j for j in range(3)] for u in users],
        "scores": [[1.0 - 0.1 * j for j in range(3)] for _ in users],
        "model_version": [version] * len(users),
    }).to_arrow()


def _stage(layout: RunLayout, users: list[int], version: str, parts: int = 3) -> Location:
    """A staged run of `users` in `parts` parts, committed as the score stage commits one."""
    staged = layout.at.staged_for(RUN_DATE)
    staging = folders.staging_for(staged)
    table, files = _rows(users, version), {}
    for p, start in enumerate(range(0, len(users), -(-len(users) // parts))):
        name = f"part-{p:05d}.parquet"
        files[name] = folders.write_parquet_part(table.slice(start, -(-len(users) // parts)), staging.join(name))
    folders.write_manifest(staging, {"run_date": RUN_DATE.isoformat(), "model_version": version, "k": 3,
                                     "id_type": "int", "users": len(users), "rows": len(users)}, files=files)
    return folders.publish(staging, staged)


def _read(final: Location) -> tuple[list[int], dict]:
    """What a reader sees: marker -> manifest -> exactly those files."""
    with folders.open_folder(final) as pinned:
        pinned.verify()
        return sorted(pinned.read_table().column("user_id").to_pylist()), pinned.manifest


@pytest.fixture()
def store(s3_root) -> RunLayout:
    return RunLayout.of(s3_root.uri, s3_root.storage)


def test_publish_on_s3_makes_the_staged_run_live_and_a_rerun_replaces_it_whole(store, s3_root):
    final = store.at.recommendations_for(RUN_DATE)
    staged = _stage(store, list(range(10)), "m1")
    lists, staged_manifest = read_staged(staged)
    assert publish_run(staged, final, {"metrics": {"ndcg@10": 0.3}, "gate": {"passed": True}}) == final
    published, manifest = read_staged(final)  # marker -> manifest -> exactly its files, every checksum
    assert published.equals(lists) and manifest["rows"] == staged_manifest["rows"] == 10
    assert manifest["model_version"] == "m1" and manifest["gate"]["passed"] is True
    publish_id = manifest["publish_id"]
    assert sorted(manifest["files"]) == [f"part-{p:05d}-{publish_id}.parquet" for p in range(3)]
    assert not [k for k in s3_root.keys() if "/staged/" in k]  # the staged run is gone once live
    first = objectstore.read_marker(final)["attempt"]

    _stage(store, [50, 51], "m2", parts=1)
    publish_run(staged, final, {"metrics": {}, "gate": {"passed": True}})
    users, manifest = _read(final)
    assert users == [50, 51] and manifest["model_version"] == "m2" and len(manifest["files"]) == 1
    assert manifest["publish_id"] != publish_id
    marker = objectstore.read_marker(final)
    assert [r["attempt"] for r in marker["retired"]] == [first]  # kept for readers mid-read, then deleted
    with pytest.raises(IntegrityError, match="extra manifest fields may not replace"):
        publish_run(_stage(store, [1], "m3"), final, {"rows": 1})


def test_a_publish_that_dies_mid_copy_leaves_the_previous_run_the_only_one_readers_see(store, monkeypatch):
    final = store.at.recommendations_for(RUN_DATE)
    publish_run(_stage(store, list(range(10)), "m1"), final, {})
    staged = _stage(store, [50, 51, 52], "m2")
    copy_files = folders.copy_files

    def copy_one_then_die(source: Location, target: Location, names: dict[str, str]) -> None:
        copy_files(source, target, dict(sorted(names.items())[:1]))
        raise RuntimeError("killed mid-copy")

    monkeypatch.setattr(folders, "copy_files", copy_one_then_die)
    with pytest.raises(RuntimeError, match="killed mid-copy"):
        publish_run(staged, final, {})
    assert _read(final)[0] == list(range(10))
    marker = objectstore.read_marker(final)
    assert [a.name for a in objectstore.attempts(final)] == [marker["attempt"]]  # the half-copied attempt is gone
    assert read_staged(staged)[0]["user_id"].to_list() == [50, 51, 52]  # still staged: a rerun publishes it

    monkeypatch.setattr(folders, "copy_files", copy_files)
    publish_run(staged, final, {})
    assert _read(final)[0] == [50, 51, 52]


def test_a_staged_file_with_a_wrong_checksum_is_refused_and_the_live_run_kept(store, s3_root):
    final = store.at.recommendations_for(RUN_DATE)
    publish_run(_stage(store, list(range(10)), "m1"), final, {})
    staged = _stage(store, [50, 51, 52], "m2")
    manifest, files_at = folders.read_committed(staged)
    part = files_at.join("part-00000.parquet")
    with part.filesystem.open_input_stream(part.path) as f:
        data = f.read()
    with part.filesystem.open_output_stream(part.path) as out:  # same size, other bytes
        out.write(data[:-9] + b"corrupted")
    with pytest.raises(IntegrityError, match="part-00000.parquet: sha256"):
        publish_run(staged, final, {})
    assert _read(final)[0] == list(range(10))
    assert len(objectstore.attempts(final)) == 1


def test_publish_with_wrong_credentials_names_the_bucket_and_publishes_nothing(store, s3_root, monkeypatch):
    final = store.at.recommendations_for(RUN_DATE)
    publish_run(_stage(store, list(range(10)), "m1"), final, {})
    _stage(store, [50, 51], "m2")
    keys = s3_root.keys()
    credentials_env(monkeypatch, secret=WRONG_SECRET)
    there = RunLayout.of(s3_root.uri, s3_root.storage)  # a process that resolved the wrong keys
    with pytest.raises(StorageAccessError) as err:
        publish_run(there.at.staged_for(RUN_DATE), there.at.recommendations_for(RUN_DATE), {})
    assert f"bucket '{s3_root.bucket}'" in str(err.value) and WRONG_SECRET not in str(err.value)
    assert err.value.exit_code == 9 and s3_root.keys() == keys
    credentials_env(monkeypatch)
    assert _read(final)[0] == list(range(10))

