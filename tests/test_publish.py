"""Writing and publishing recommendation folders: contract, atomicity, readers."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
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
from recbatch import storage
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
    assert not list(final.parent.glob(".staging-*"))
    retired = list(final.parent.glob(".retired-*"))  # the replaced run, whole, until its grace period ends
    assert len(retired) == 1 and pl.read_parquet(retired[0] / "*.parquet").height == 10


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


class _RaceReader(threading.Thread):
    """Reads the live folder again and again, sorting every outcome into a bucket."""

    def __init__(self, read, runs: dict[str, list[int]]) -> None:
        super().__init__(daemon=True)
        self.read, self.stop = read, threading.Event()
        self.whole = {(tuple(users), (version,)): version for version, users in runs.items()}
        self.outcomes: dict[str, int] = {"whole": 0, "retry": 0, "empty": 0, "mixed": 0, "error": 0}
        self.versions: set[str] = set()
        self.examples: list[object] = []
        self.progress = threading.Condition()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                df = self.read()
            except FileNotFoundError:  # listed before a swap, opened after it
                outcome = "retry"
            except Exception as exc:  # noqa: BLE001 - every other failure is counted, then asserted on
                outcome = "empty" if "empty input" in str(exc) else "error"
                self.examples.append(exc)
            else:
                key = (tuple(sorted(df["user_id"])), tuple(sorted(set(df["model_version"]))))
                outcome = "whole" if key in self.whole else ("empty" if df.height == 0 else "mixed")
                if outcome == "whole":
                    self.versions.add(self.whole[key])
                else:
                    self.examples.append(key)
            with self.progress:
                self.outcomes[outcome] += 1
                self.progress.notify_all()

    def reads(self) -> int:
        return sum(self.outcomes.values())

    def wait_for_reads(self, n: int) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.reads() >= n, timeout=60), self.outcomes


@pytest.mark.parametrize(
    "exchange, names",
    [("renameat2", "unique per publish"), ("two renames", "unique per publish"), ("renameat2", "shared")],
)
def test_readers_during_republishes_see_one_whole_run(tmp_path, monkeypatch, exchange, names):
    """While a date is republished hundreds of times, a reader through the reader contract
    (storage.read_parquet_folder) reads run A or run B whole, every time; a bare listing
    (what polars/DuckDB globs do) is measured beside it. "shared" file names (a folder
    republished by the writer itself, as staged runs are) need the contract's single
    directory handle: a reader that opened names by path could pair one run's manifest
    with the other's files."""
    if exchange == "two renames":  # the fallback where the OS has no renameat2
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)
    layout = RunLayout.of(tmp_path)
    runs = {"m1": list(range(0, 10)), "m2": list(range(100, 110))}  # 3 files each, same count
    final = layout.recommendations_for(DATE)

    def republish(version: str) -> None:
        if names == "shared":  # part-00000.parquet ... every time
            write_recommendations([rec_table(runs[version], model_version=version)], final, id_type="int",
                                  rows_per_file=4, manifest_fields={})
        else:
            stage_run(layout, runs[version], version)
            publish_run(layout.staged_for(DATE), final, {})

    republish("m1")
    first_names = set(verify_manifest(final)["files"])

    contract = _RaceReader(lambda: pl.from_arrow(storage.read_parquet_folder(final)), runs)
    bare = _RaceReader(lambda: pl.read_parquet(sorted(final.glob("*.parquet"))), runs)
    for reader in (contract, bare):
        reader.start()
    try:
        contract.wait_for_reads(1)  # of m1
        publishes = 0
        while publishes < 40 or contract.reads() < 1000 or bare.reads() < 1000:
            republish("m2" if publishes % 2 == 0 else "m1")
            publishes += 1
            assert publishes < 5000, (contract.outcomes, bare.outcomes)
        contract.wait_for_reads(contract.reads() + 1)  # of the last one, m1
    finally:
        for reader in (contract, bare):
            reader.stop.set()
            reader.join()

    print(f"{exchange}, {names} names: {publishes} publishes; "
          f"contract reader {contract.outcomes}; bare listing {bare.outcomes}")
    assert contract.outcomes["whole"] == contract.reads() >= 1000, (contract.outcomes, contract.examples[:3])
    assert contract.versions == {"m1", "m2"}
    if names == "shared":
        return  # a bare listing of shared names can mix two runs: that is why publish_run renames
    assert first_names.isdisjoint(verify_manifest(final)["files"])  # names are per publish
    # A bare listing never reads a mix (names are unique per publish). With the atomic exchange it
    # never finds the folder empty either: the replaced run is retired aside, not deleted in place.
    assert bare.outcomes["mixed"] == bare.outcomes["error"] == 0, bare.examples[:3]
    if exchange == "renameat2":
        assert bare.outcomes["empty"] == 0, bare.examples[:3]


def test_a_listing_begun_before_a_swap_still_finds_the_whole_previous_run(tmp_path):
    """The deterministic core of the race above: a reader holding the old folder open (as a
    directory listing does) sees every old file after the swap, until the grace period ends."""
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(10)), "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    old_names = sorted(verify_manifest(final)["files"])
    listing = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
    try:
        stage_run(layout, [50, 51], "m2")
        publish_run(layout.staged_for(DATE), final, {})
        assert sorted(n for n in os.listdir(listing) if n.endswith(".parquet")) == old_names
        old = pl.read_parquet([f"/proc/self/fd/{listing}/{n}" for n in old_names])
        assert sorted(old["user_id"]) == list(range(10))
    finally:
        os.close(listing)
    retired = list(final.parent.glob(".retired-*"))
    assert len(retired) == 1 and sorted(p.name for p in retired[0].glob("*.parquet")) == old_names
    assert sorted(pl.from_arrow(storage.read_parquet_folder(final))["user_id"]) == [50, 51]

    # A sweep inside the grace period keeps it; one after it removes it and nothing else.
    assert storage.remove_retired(final.parent) == []
    later = time.time_ns() + storage.RETIRED_GRACE_SECONDS * 1_000_000_000
    assert storage.remove_retired(final.parent, now_ns=later) == retired
    assert [p.name for p in final.parent.iterdir()] == [final.name]
    assert verify_manifest(final)["rows"] == 2


def test_reader_contract_reads_only_the_files_the_manifest_names(tmp_path):
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(10)), "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    stray = final / "part-99999-stray.parquet"  # e.g. dropped in by hand: not part of the run
    pq.write_table(rec_table([999]).to_arrow(), stray)
    assert sorted(pl.from_arrow(storage.read_parquet_folder(final))["user_id"]) == list(range(10))
    with pytest.raises(IntegrityError, match="extra.*part-99999-stray"):
        verify_manifest(final)
    stray.unlink()
    victim = final / sorted(verify_manifest(final)["files"])[0]
    victim.unlink()
    with pytest.raises(IntegrityError, match=f"missing.*{victim.name}"):
        storage.read_parquet_folder(final)
    with pytest.raises(IntegrityError, match="no _SUCCESS"):
        storage.read_parquet_folder(tmp_path / "nowhere")


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


def test_stale_staging_and_expired_retired_copies_are_cleared_fresh_ones_kept(tmp_path):
    """What the nightly clears at its start (storage.remove_stale_staging): a killed writer's staging
    folder, and retired copies past their grace period; a copy still inside it stays for its readers."""
    layout = RunLayout.of(tmp_path)
    stage_run(layout, list(range(4)), "m1")
    final = publish_run(layout.staged_for(DATE), layout.recommendations_for(DATE), {})
    stage_run(layout, [7], "m2")
    publish_run(layout.staged_for(DATE), final, {})
    (fresh,) = final.parent.glob(".retired-*")
    expired = final.parent / f".retired-{final.name}-{time.time_ns() - storage.RETIRED_GRACE_SECONDS * 10**9}-0a"
    shutil.copytree(fresh, expired)
    killed = storage.staging_dir_for(final)
    (killed / "part-00000.parquet").write_bytes(b"half a file")
    removed = storage.remove_stale_staging(final.parent)
    assert sorted(removed) == sorted([killed, expired])
    assert sorted(p.name for p in final.parent.iterdir()) == sorted([final.name, fresh.name])
    assert verify_manifest(final)["rows"] == 1
