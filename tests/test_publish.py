"""Writing and publishing recommendation folders: contract, atomicity, readers."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch.errors import DataValidationError, IntegrityError
from recbatch.layout import RunLayout
from recbatch.publish import publish_run
from recbatch.schemas import recommendations_schema
from recbatch.score.writer import write_recommendations
from recbatch.storage import MANIFEST, SUCCESS, verify_manifest


def rec_table(user_ids, k=3, id_type="int", model_version="m1"):
    def item(u, j):
        return u * 10 + j if id_type == "int" else f"i{u}-{j}"

    return pl.DataFrame(
        {
            "user_id": user_ids,
            "item_ids": [[item(u if id_type == "int" else i, j) for j in range(k)] for i, u in enumerate(user_ids)],
            "scores": [[1.0 - 0.1 * j for j in range(k)] for _ in user_ids],
            "model_version": [model_version] * len(user_ids),
        }
    )


def test_writer_splits_files_and_writes_manifest(tmp_path):
    out = tmp_path / "recs"
    batches = [rec_table(list(range(0, 7))), rec_table(list(range(7, 12)))]
    manifest = write_recommendations(
        batches, out, id_type="int", rows_per_file=5, manifest_fields={"k": 3, "model_version": "m1"}
    )
    files = sorted(p.name for p in out.glob("part-*.parquet"))
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.ParquetFile(out / f).metadata.num_rows for f in files] == [5, 5, 2]
    assert manifest["rows"] == manifest["users"] == 12 and manifest["id_type"] == "int"
    assert (out / SUCCESS).exists() and verify_manifest(out)["k"] == 3
    assert pq.read_schema(out / files[0]).equals(recommendations_schema("int"))
    assert not list(tmp_path.glob(".staging-*"))


def test_string_ids_and_plain_readers(tmp_path):
    out = tmp_path / "recs"
    table = rec_table(["a", "b", "c"], id_type="string").with_columns(
        because_item_ids=pl.col("item_ids")
    )
    write_recommendations([table.to_arrow()], out, id_type="string", rows_per_file=10, manifest_fields={})
    by_polars = pl.read_parquet(out / "*.parquet")
    assert by_polars["user_id"].to_list() == ["a", "b", "c"]
    assert by_polars.schema["item_ids"] == pl.List(pl.String)
    rows = duckdb.sql(f"select user_id, len(item_ids) from '{out}/*.parquet' order by user_id").fetchall()
    assert rows == [("a", 3), ("b", 3), ("c", 3)]


def test_duplicate_users_publish_nothing(tmp_path):
    out = tmp_path / "recs"
    with pytest.raises(DataValidationError, match="user_id.*1 users"):
        write_recommendations(
            [rec_table([1, 2]), rec_table([2, 3])], out, id_type="int", rows_per_file=10, manifest_fields={}
        )
    assert not out.exists() and not list(tmp_path.glob(".staging-*"))


def test_mismatched_list_lengths_rejected(tmp_path):
    bad = rec_table([1, 2]).with_columns(pl.Series("scores", [[1.0], [1.0, 0.9, 0.8]]))
    with pytest.raises(DataValidationError, match="scores.*1 rows.*\\[1\\]"):
        write_recommendations([bad], tmp_path / "recs", id_type="int", rows_per_file=10, manifest_fields={})


def test_rewrite_replaces_previous_whole(tmp_path):
    out = tmp_path / "recs"
    write_recommendations([rec_table(list(range(10)))], out, id_type="int", rows_per_file=3, manifest_fields={"v": 1})
    write_recommendations([rec_table([100, 101])], out, id_type="int", rows_per_file=3, manifest_fields={"v": 2})
    assert sorted(pl.read_parquet(out / "*.parquet")["user_id"].to_list()) == [100, 101]
    assert json.loads((out / MANIFEST).read_text())["v"] == 2
    verify_manifest(out)


# --------------------------------------------------------------------------- publish_run

DATE = dt.date(2026, 11, 29)


def stage_run(layout: RunLayout, users, model_version: str) -> None:
    write_recommendations(
        [rec_table(users, model_version=model_version)], layout.staged_for(DATE), id_type="int",
        rows_per_file=4, manifest_fields={"run_date": DATE.isoformat(), "model_version": model_version, "k": 3},
    )


def test_publish_adds_gate_fields_and_readers_see_it(tmp_path):
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(10)), "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE),
                        {"metrics": {"ndcg@10": 0.31}, "gate": {"passed": True, "forced": False}})
    manifest = verify_manifest(final)
    assert manifest["metrics"]["ndcg@10"] == 0.31 and manifest["gate"]["passed"] is True
    assert manifest["model_version"] == "m1" and manifest["rows"] == 10 and "published_at" in manifest
    assert not layout.staged_for(DATE).exists()
    assert layout.published_runs() == [final]
    assert pl.read_parquet(final / "*.parquet").height == 10
    assert duckdb.sql(f"select count(distinct user_id) from '{final}/*.parquet'").fetchall() == [(10,)]


def test_rerun_for_same_date_replaces_whole_run(tmp_path):
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(10)), "m1")
    publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    stage_run(layout, [50, 51, 52], "m2")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    df = pl.read_parquet(final / "*.parquet")
    assert sorted(df["user_id"].to_list()) == [50, 51, 52] and set(df["model_version"]) == {"m2"}
    assert len(verify_manifest(final)["files"]) == 1 and len(list(final.glob("*.parquet"))) == 1
    assert not list(final.parent.glob(".staging-*")) and not list(final.parent.glob(".previous-*"))


def test_tampered_stage_is_refused_and_live_run_kept(tmp_path):
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(10)), "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    stage_run(layout, [7, 8], "m2")
    part = layout.staged_for(DATE) / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-9] + b"corrupted")  # same size, other bytes
    with pytest.raises(IntegrityError, match="sha256"):
        publish_run(layout.staged_for(DATE), final, {})
    assert verify_manifest(final)["model_version"] == "m1"
    assert not list(final.parent.glob(".staging-*"))


def test_readers_during_republishes_see_one_whole_run(tmp_path):
    """A reader that lists the folder and then reads it, while the date is
    republished again and again, gets run A or run B whole, or a
    FileNotFoundError to retry: never a mix, never a corrupt read."""
    layout = RunLayout.of(tmp_path)
    runs = {"m1": list(range(0, 10)), "m2": list(range(100, 110))}  # 3 files each, same count
    stage_run(layout, runs["m1"], "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    first_names = set(verify_manifest(final)["files"])

    reads: list[tuple[tuple[int, ...], tuple[str, ...]]] = []
    retries, errors = [], []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                df = pl.read_parquet(sorted(final.glob("*.parquet")))
            except FileNotFoundError as exc:  # listed before a swap, opened after it
                retries.append(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - anything else is a failure of publishing
                errors.append(exc)
                continue
            reads.append((tuple(sorted(df["user_id"])), tuple(sorted(set(df["model_version"])))))

    def wait_for_one_more_read() -> None:
        done, deadline = len(reads), time.monotonic() + 30
        while len(reads) == done and not errors and time.monotonic() < deadline:
            time.sleep(0.01)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        wait_for_one_more_read()  # of m1
        for i in range(59):  # m2, m1, ..., m2
            version = "m2" if i % 2 == 0 else "m1"
            stage_run(layout, runs[version], version)
            publish_run(layout.staged_for(DATE), final, {})
        wait_for_one_more_read()  # of m2
    finally:
        stop.set()
        thread.join()

    assert not errors, errors[:3]
    whole = {(tuple(users), (version,)) for version, users in runs.items()}
    assert set(reads) == whole, sorted(set(reads) - whole)[:3]  # only whole runs, and both of them
    assert first_names.isdisjoint(verify_manifest(final)["files"])  # names are per publish


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import polars as pl
    from recbatch.score.writer import write_recommendations

    def batches():
        for start in range(0, 10_000, 100):
            yield pl.DataFrame({
                "user_id": list(range(start, start + 100)),
                "item_ids": [[1, 2]] * 100, "scores": [[0.5, 0.4]] * 100, "model_version": ["m2"] * 100,
            })
            if start == 500:
                open(sys.argv[2], "w").close()  # several files are written: now kill me
                time.sleep(60)

    write_recommendations(batches(), sys.argv[1], id_type="int", rows_per_file=200, manifest_fields={})
    """
)


def test_run_killed_mid_write_leaves_previous_run_intact(tmp_path):
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(10)), "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    before = verify_manifest(final)
    flag = tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(final), str(flag)])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, "the writer exited before it was killed"
            assert time.monotonic() < deadline, "the writer never got going"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = list(final.parent.glob(".staging-*"))
    assert len(partial) == 1 and list(partial[0].glob("part-*.parquet"))  # it was mid-write
    assert not (partial[0] / SUCCESS).exists()
    assert verify_manifest(final) == before  # previous run intact, byte for byte
    assert sorted(pl.read_parquet(final / "*.parquet")["user_id"].to_list()) == list(range(10))
    assert layout.published_runs() == [final]
