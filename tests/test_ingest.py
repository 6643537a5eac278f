"""Ingest of canonical sources: snapshot contents, manifest, content hash, idempotence, id types, mapping."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from recbatch.cli import main
from recbatch.config import GenerateConfig, load_config
from recbatch.data.generate import generate_demo
from recbatch.data.ingest import ingest
from recbatch.data.partition import user_partition
from recbatch.schemas import check_schema, interactions_schema, items_schema, split_schema, users_schema
from recbatch.storage import SUCCESS, sha256_file, verify_manifest

# Ingest runs its per-partition work as Ray tasks: share the session's Ray (starting one costs seconds).
pytestmark = pytest.mark.usefixtures("ray_local")

SMALL = dict(users=60, items=40, topics=4, interactions_per_user=12)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """The same small demo catalog with int ids and with string ids."""
    out = {}
    for id_type in ("int", "string"):
        folder = tmp_path_factory.mktemp(f"gen_{id_type}")
        generate_demo(GenerateConfig(**SMALL, id_type=id_type), folder)
        out[id_type] = folder
    return out


def config(tmp_path: Path, source: Path, **overrides):
    return load_config(None, {"root": str(tmp_path / "root"), "ingest.source": str(source), **overrides})


@pytest.mark.parametrize("id_type", ["int", "string"])
def test_snapshot_holds_validated_tables_with_the_callers_id_type(tmp_path, generated, id_type):
    source = generated[id_type]
    snapshot = ingest(config(tmp_path, source, **{"ingest.users_per_partition": 20}))

    assert snapshot.id_type == id_type
    assert snapshot.partitions == 4  # 60 users, at most 20 a partition on average: the power of two above 3
    check_schema(_arrow_schema(snapshot.table_path("items")), items_schema(id_type), "items")
    for table, schema in (
        ("interactions", interactions_schema(id_type)),
        ("users", users_schema(id_type)),
        ("split", split_schema(id_type)),
    ):
        for p in range(snapshot.partitions):
            (path,) = snapshot.partition_files(table, p)
            check_schema(_arrow_schema(path), schema, table)

    raw = pl.read_parquet(source / "interactions.parquet")
    inter = snapshot.interactions().collect()
    assert inter.height == raw.height == snapshot.counts["interactions"]
    for p in range(snapshot.partitions):
        part = snapshot.scan_partition("interactions", p).collect()
        assert part.sort(["user_id", "ts", "item_id"]).equals(part)  # sorted by (user_id, ts)
    assert set(inter["item_id"].to_list()) == set(raw["item_id"].to_list())  # ids unchanged, type and value
    items = snapshot.items().collect()
    assert items.columns[:7] == ["item_id", "title", "genres", "tags", "description", "available", "is_cold"]
    assert "year" in items.columns  # attributes pass through
    assert snapshot.users().collect().columns == ["user_id", "country", "age_band", "activity"]


def test_every_row_of_a_user_is_in_that_users_partition_of_every_table(tmp_path, generated):
    """What lets a worker join a user's rows by reading one partition of each table."""
    snapshot = ingest(config(tmp_path, generated["string"], **{"ingest.users_per_partition": 10}))
    assert snapshot.partitions == 8
    assert verify_manifest(snapshot.path)["partitioning"]["partitions"] == 8
    for table, rows in (("interactions", snapshot.counts["interactions"]), ("users", snapshot.counts["users"]),
                        ("split", snapshot.counts["interactions"])):
        seen = 0
        for p in range(snapshot.partitions):
            users = snapshot.scan_partition(table, p).select("user_id").collect()["user_id"]
            assert (user_partition(users.to_arrow(), snapshot.partitions) == p).all(), (table, p)
            seen += len(users)
        assert seen == rows  # nothing lost or doubled by the cut
    sizes = [snapshot.scan_partition("users", p).collect().height for p in range(8)]
    assert min(sizes) > 0 and max(sizes) < 20  # the hash spreads users (60 over 8)


def _arrow_schema(path: Path):
    import pyarrow.parquet as pq

    return pq.read_schema(path)


def test_manifest_records_counts_sources_split_and_format(tmp_path, generated):
    source = generated["int"]
    snapshot = ingest(config(tmp_path, source, **{"split.leave_last_n": 3}))
    manifest = verify_manifest(snapshot.path)

    assert manifest["snapshot_hash"] == snapshot.path.name
    assert manifest["format"] == "canonical"
    assert manifest["split"]["leave_last_n"] == 3
    assert manifest["sources"]["interactions.parquet"]["sha256"] == sha256_file(source / "interactions.parquet")
    counts = manifest["counts"]
    split = snapshot.split().collect()
    assert counts["train"] + counts["validation"] + counts["test"] == counts["interactions"] == split.height
    assert counts["test"] == split.filter(pl.col("split") == "test").height
    assert counts["cold_items"] == snapshot.items().collect()["is_cold"].sum()
    assert counts["unavailable_items"] == (~snapshot.items().collect()["available"]).sum()
    assert set(manifest["files"]) == {"items.parquet"} | {
        f"{table}/part-00000.parquet" for table in ("interactions", "users", "split")
    }  # 60 users: one partition


def test_reingest_is_a_noop_and_split_settings_change_the_hash(tmp_path, generated):
    cfg = config(tmp_path, generated["int"])
    first = ingest(cfg)
    stamp = (first.path / SUCCESS).stat().st_mtime_ns
    again = ingest(cfg)
    assert again.path == first.path
    assert (first.path / SUCCESS).stat().st_mtime_ns == stamp  # not rewritten

    other = ingest(cfg.with_overrides({"split.leave_last_n": 2}))
    assert other.hash != first.hash
    assert sorted(p.name for p in first.path.parent.iterdir()) == sorted([first.hash, other.hash])  # no staging left


def test_same_data_as_csv_gets_the_same_snapshot(tmp_path, generated):
    """The hash is of the normalised tables, so the file format of the source does not matter."""
    source = generated["string"]
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    inter = pl.read_parquet(source / "interactions.parquet")
    inter.with_columns(pl.col("ts").dt.epoch("s")).write_csv(csv_dir / "interactions.csv")
    pl.read_parquet(source / "items.parquet").write_csv(csv_dir / "items.csv")
    pl.read_parquet(source / "users.parquet").write_csv(csv_dir / "users.csv")

    from_parquet = ingest(config(tmp_path, source))
    from_csv = ingest(config(tmp_path, csv_dir))
    assert from_csv.hash == from_parquet.hash


def test_column_map_and_extra_columns_through_the_cli(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    (source / "interactions.csv").write_text(
        "uid,iid,when,channel\nu01,b7,2024-03-01T09:00:00,web\nu01,b8,2024-03-02T09:00:00,app\nu02,b7,2024-03-03T09:00:00,web\n"
    )
    (source / "items.csv").write_text("iid,name,available\nb7,Seven,true\nb8,Eight,false\n")
    code = main(
        ["ingest", "--root", str(tmp_path / "root"), "--source", str(source),
         "--map", "user_id=uid", "--map", "item_id=iid", "--map", "ts=when", "--map", "items.title=name"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    path = Path(out.splitlines()[0].removeprefix("snapshot "))
    manifest = json.loads((path / "_manifest.json").read_text())
    assert manifest["id_type"] == "string"
    assert manifest["ignored_columns"] == {"interactions": ["channel"]}  # said, not silently lost
    items = pl.read_parquet(path / "items.parquet")
    assert items.select("item_id", "title", "available").rows() == [("b7", "Seven", True), ("b8", "Eight", False)]
    ts = pl.read_parquet(path / "interactions" / "part-00000.parquet")["ts"].to_list()
    assert ts[0] == dt.datetime(2024, 3, 1, 9, tzinfo=dt.UTC)  # naive text times are read as UTC


def test_bad_map_flag_is_a_usage_error(tmp_path, capsys):
    code = main(["ingest", "--root", str(tmp_path / "root"), "--source", str(tmp_path), "--map", "user_id"])
    assert code == 2
    assert "--map expects CANONICAL=SOURCE" in capsys.readouterr().err


def test_missing_or_unrecognised_source_is_a_usage_error(tmp_path, capsys):
    assert main(["ingest", "--root", str(tmp_path / "root"), "--source", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    assert main(["ingest", "--root", str(tmp_path / "root"), "--source", str(tmp_path / "other")]) == 2
    assert "cannot tell the layout" in capsys.readouterr().err


def test_text_timestamps_in_the_usual_shapes(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "items.csv").write_text("item_id,title\n1,One\n2,Two\n3,Three\n4,Four\n")
    (source / "interactions.csv").write_text(
        "user_id,item_id,ts\n"
        "1,1,1709280000\n"  # unix seconds
        "1,2,2024-03-02\n"  # a date
        "1,3,2024-03-03 10:00:00\n"  # naive: UTC
        "1,4,2024-03-04T10:00:00+02:00\n"  # with an offset
    )
    snapshot = ingest(config(tmp_path, source))
    ts = dict(snapshot.interactions().collect().select("item_id", "ts").iter_rows())
    utc = dt.UTC
    assert ts == {
        1: dt.datetime(2024, 3, 1, 8, 0, tzinfo=utc),
        2: dt.datetime(2024, 3, 2, tzinfo=utc),
        3: dt.datetime(2024, 3, 3, 10, tzinfo=utc),
        4: dt.datetime(2024, 3, 4, 8, tzinfo=utc),
    }


def test_a_table_may_be_a_folder_of_parquet_parts(tmp_path, generated):
    source = tmp_path / "parts"
    (source / "interactions").mkdir(parents=True)
    inter = pl.read_parquet(generated["int"] / "interactions.parquet")
    half = inter.height // 2
    inter.head(half).write_parquet(source / "interactions" / "part-00000.parquet")
    inter.tail(inter.height - half).write_parquet(source / "interactions" / "part-00001.parquet")
    pl.read_parquet(generated["int"] / "items.parquet").write_parquet(source / "items.parquet")
    pl.read_parquet(generated["int"] / "users.parquet").write_parquet(source / "users.parquet")

    snapshot = ingest(config(tmp_path, source))
    assert snapshot.counts["interactions"] == inter.height
    assert {"interactions/part-00000.parquet", "interactions/part-00001.parquet"} <= set(snapshot.manifest["sources"])
    assert snapshot.hash == ingest(config(tmp_path, generated["int"])).hash  # same rows, same snapshot


def test_rating_range_checks_typed_parquet_ratings(tmp_path):
    """ingest.rating_range applies to Parquet (typed) ratings too; a NaN is off every scale."""
    from recbatch.errors import DataValidationError

    source = tmp_path / "src"
    source.mkdir()
    pl.DataFrame({"item_id": [1, 2], "title": ["Orbit", "Recipe"]}).write_parquet(source / "items.parquet")
    pl.DataFrame({
        "user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 2],
        "ts": [dt.datetime(2024, 1, d, tzinfo=dt.UTC) for d in (1, 2, 3, 4)],
        "rating": [1.0, 10.0, float("nan"), 3.0],
    }).write_parquet(source / "interactions.parquet")
    assert ingest(config(tmp_path / "free", source)).counts["interactions"] == 4
    with pytest.raises(DataValidationError, match=r"interactions.parquet: column 'rating': 2 of 4 .* outside 0 to 5"):
        ingest(config(tmp_path / "ranged", source, **{"ingest.rating_range": [0, 5]}))


def test_rows_of_a_slice_of_users_are_read_a_partition_at_a_time_and_equal_a_filter(tmp_path, generated):
    snapshot = ingest(config(tmp_path, generated["int"], **{"ingest.users_per_partition": 10}))
    users = snapshot.users().collect()["user_id"].gather(range(0, 60, 7))
    where = pl.col("split") == "train"
    got = snapshot.rows_of("split", users, where).sort("user_id", "ts", "item_id")
    want = snapshot.split("train").filter(pl.col("user_id").is_in(users.implode())).collect()
    assert got.height > 0 and got.equals(want.sort("user_id", "ts", "item_id"))
    assert snapshot.rows_of("users", users)["user_id"].sort().to_list() == users.sort().to_list()
