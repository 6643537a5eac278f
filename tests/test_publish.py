"""Writing and publishing recommendation folders: contract, atomicity, readers."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch.errors import DataValidationError
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
