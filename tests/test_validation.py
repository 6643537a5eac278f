"""Bad input: one test per case, through the CLI (exit code 3), message naming file, column and count.

Every failing case also checks that nothing was published or left in staging.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recbatch.cli import main
from recbatch.data.snapshot import Snapshot
from recbatch.layout import RunLayout
from recbatch.storage import verify_manifest

# Ingest runs its per-partition work as Ray tasks: share the session's Ray (starting one costs seconds).
pytestmark = pytest.mark.usefixtures("ray_local")

ITEMS = "item_id,title,genres\n1,Orbit of Stars,Space\n2,The Last Recipe,Cooking\n3,Heist Night,Crime\n"
INTERACTIONS = (
    "user_id,item_id,ts\n"
    "1,1,2024-01-01T10:00:00Z\n1,2,1704200000\n1,3,1704300000\n"
    "2,3,1704100000\n2,1,1704400000\n"
)


def write_source(folder: Path, **tables: str | bytes) -> Path:
    """Canonical CSV tables; defaults are clean, keyword arguments replace one file's content."""
    folder.mkdir(exist_ok=True)
    contents = {"interactions.csv": INTERACTIONS, "items.csv": ITEMS}
    contents.update({f"{name}.csv": text for name, text in tables.items()})
    for name, text in contents.items():
        path = folder / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return folder


def run_ingest(tmp_path: Path, source: Path, capsys, *flags: str) -> tuple[int, str, str]:
    code = main(["ingest", "--root", str(tmp_path / "root"), "--source", str(source), *flags])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_nothing_published(tmp_path: Path) -> None:
    snapshots = RunLayout.of(tmp_path / "root").snapshots
    assert not snapshots.exists() or list(snapshots.iterdir()) == []


def assert_rejected(tmp_path, capsys, source: Path, *fragments: str, flags: tuple[str, ...] = ()) -> str:
    code, _, err = run_ingest(tmp_path, source, capsys, *flags)
    assert code == 3, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"
    assert err.count("\n") == 1, "one paragraph"
    assert_nothing_published(tmp_path)
    return err


def test_clean_source_is_accepted(tmp_path, capsys):
    code, out, err = run_ingest(tmp_path, write_source(tmp_path / "src"), capsys)
    assert code == 0, err
    assert '"interactions": 5' in out


def test_missing_column(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions="user_id,item_id,time\n1,1,1704200000\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'ts' is missing", "found columns: user_id, item_id, time")


def test_wrongly_typed_column(tmp_path, capsys):
    source = write_source(tmp_path / "src")
    (source / "items.csv").unlink()
    pl.DataFrame({"item_id": [1, 2, 3], "title": [10, 20, 30]}).write_parquet(source / "items.parquet")
    assert_rejected(tmp_path, capsys, source, "items.parquet", "column 'title' has type Int64", "all 3 rows")


def test_null_ids(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions="user_id,item_id,ts\n1,1,1704200000\n,2,1704200001\n,3,1704200002\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'user_id': 2 of 3", "row 2", "row 3")


def test_duplicate_item_ids(tmp_path, capsys):
    source = write_source(tmp_path / "src", items=ITEMS + "2,Another Recipe,Cooking\n")
    assert_rejected(tmp_path, capsys, source, "items.csv", "column 'item_id': 2 of 4", "repeat a value another row also has")


def test_interactions_naming_unknown_items(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions=INTERACTIONS + "2,99,1704500000\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'item_id': 1 of 6", "items.csv", "unknown item_id", "row 6: '99'")


def test_interactions_naming_unknown_users_when_a_users_table_is_given(tmp_path, capsys):
    source = write_source(tmp_path / "src", users="user_id,country\n1,DE\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'user_id': 2 of 5", "users.csv")


def test_unknown_users_are_fine_without_a_users_table(tmp_path, capsys):
    code, out, err = run_ingest(tmp_path, write_source(tmp_path / "src"), capsys)
    assert code == 0, err
    snapshot = Snapshot.open(RunLayout.of(tmp_path / "root").latest_snapshot())
    assert snapshot.users().collect()["user_id"].to_list() == [1, 2]


def test_unparsable_timestamps(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions=INTERACTIONS + "2,2,yesterday\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'ts': 1 of 6", "'yesterday'")


def test_out_of_range_timestamps(tmp_path, capsys):
    source = write_source(
        tmp_path / "src", interactions=INTERACTIONS + "2,2,1985-06-01T00:00:00Z\n1,1,2999-01-01T00:00:00Z\n"
    )
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'ts': 2 of 7", "before 1990-01-01", "future")


def test_empty_item_text(tmp_path, capsys):
    source = write_source(tmp_path / "src", items=ITEMS + "4,,Space\n5,   ,Space\n")
    assert_rejected(tmp_path, capsys, source, "items.csv", "column 'title': 2 of 5", "empty title")


def test_non_utf8_bytes_where_utf8_is_declared(tmp_path, capsys):
    source = write_source(tmp_path / "src", items=ITEMS.encode() + b"4,Caf\xe9 Latin-1,Cooking\n")
    assert_rejected(tmp_path, capsys, source, "items.csv", "column 'title'", "1 line(s) are not valid UTF-8", "line 5")


@pytest.mark.parametrize("content", [b"", b"user_id,item_id,ts\n"], ids=["zero-bytes", "header-only"])
def test_empty_file(tmp_path, capsys, content):
    source = write_source(tmp_path / "src", interactions=content)
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "the file is empty", "0 rows")


def test_ids_of_different_types_across_tables(tmp_path, capsys):
    source = write_source(tmp_path / "src", items="item_id,title\na,One\nb,Two\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'item_id' holds integer ids", "text ids")


def test_structural_problems_fail_even_with_quarantine(tmp_path, capsys):
    source = write_source(tmp_path / "src", items="item_id,name\n1,One\n")
    assert_rejected(
        tmp_path, capsys, source, "items.csv", "column 'title' is missing", flags=("--on-bad-rows", "quarantine")
    )


def test_quarantine_keeps_good_rows_and_explains_bad_ones(tmp_path, capsys):
    items = ITEMS + "2,Duplicate Recipe,Cooking\n4,,Space\n5,Good Five,Space\n"
    interactions = (
        INTERACTIONS
        + "1,5,1704600000\n"  # good
        + "1,2,1704600001\n"  # item 2 is quarantined (duplicate), so this row names an unknown item
        + ",5,1704600002\n"  # null user
        + "2,5,not-a-time\n"  # unparsable ts
    )
    source = write_source(tmp_path / "src", items=items, interactions=interactions)
    code, out, err = run_ingest(tmp_path, source, capsys, "--on-bad-rows", "quarantine")
    assert code == 0, err
    assert "quarantined rows" in out

    snapshot = Snapshot.open(RunLayout.of(tmp_path / "root").latest_snapshot())
    verify_manifest(snapshot.path)  # quarantine files are listed with checksums too
    counts = snapshot.counts
    assert counts["quarantined_items"] == 3  # both copies of item 2, and the empty title
    assert counts["items"] == 3  # 1, 3, 5
    source_rows = interactions.count("\n") - 1
    assert counts["interactions"] + counts["quarantined_interactions"] == source_rows  # nothing dropped silently

    bad_items = pl.read_parquet(snapshot.path / "quarantine" / "items.parquet")
    assert sorted(bad_items["reason"].to_list()) == ["duplicate item_id", "duplicate item_id", "empty title"]
    bad_interactions = pl.read_parquet(snapshot.path / "quarantine" / "interactions.parquet")
    reasons = dict(zip(bad_interactions["source_row"].to_list(), bad_interactions["reason"].to_list()))
    assert reasons[7] == "unknown item_id"
    assert reasons[8] == "null user_id"
    assert reasons[9] == "unparsable ts"
    assert bad_interactions.filter(pl.col("source_row") == 9)["ts"].item() == "not-a-time"  # source value kept

    kept = snapshot.interactions().collect()
    assert 2 not in kept["item_id"].to_list()
    assert kept.filter(pl.col("item_id") == 5).height == 1


def test_quarantine_that_would_leave_nothing_fails(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions="user_id,item_id,ts\n1,1,soon\n2,9,1704200000\n")
    assert_rejected(
        tmp_path, capsys, source, "interactions.csv", "every one of the 2 interactions rows is bad",
        "1 unparsable ts", "1 unknown item_id", flags=("--on-bad-rows", "quarantine"),
    )  # fmt: skip


def test_a_column_of_only_null_ids_is_reported_as_null_ids(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions="user_id,item_id,ts\n,1,1704200000\n,2,1704200001\n")
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'user_id': 2 of 2", "no user_id")


def test_ragged_csv_is_reported_with_the_file(tmp_path, capsys):
    source = write_source(tmp_path / "src", items="item_id,title\n1,One\n2,Two,extra,fields\n")
    assert_rejected(tmp_path, capsys, source, "items.csv", "could not be parsed", "same number of fields")


RATED = "user_id,item_id,ts,rating\n1,1,1704200000,4\n1,2,1704200001,9\n1,3,1704200002,0.5\n2,3,1704100000,5\n"


def test_ratings_outside_the_configured_range(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions=RATED)
    assert_rejected(tmp_path, capsys, source, "interactions.csv", "column 'rating': 2 of 4",
                    "outside 1 to 5 (ingest.rating_range)", "row 2: '9'", "row 3: '0.5'",
                    flags=("--set", "ingest.rating_range=[1, 5]"))


def test_ratings_are_quarantined_with_a_range_and_free_without_one(tmp_path, capsys):
    source = write_source(tmp_path / "src", interactions=RATED)
    code, out, err = run_ingest(tmp_path / "a", source, capsys, "--on-bad-rows", "quarantine",
                                "--set", "ingest.rating_range=[1, 5]")
    assert code == 0, err
    snapshot = Snapshot.open(RunLayout.of(tmp_path / "a" / "root").latest_snapshot())
    assert snapshot.interactions().collect()["rating"].sort().to_list() == [4.0, 5.0]
    bad = pl.read_parquet(snapshot.path / "quarantine" / "interactions.parquet")
    assert bad["rating"].to_list() == ["9", "0.5"] and set(bad["reason"]) == {"rating out of range"}
    code, out, err = run_ingest(tmp_path / "b", source, capsys)  # canonical input: no scale unless configured
    assert code == 0, err
    assert '"interactions": 4' in out


@pytest.mark.parametrize("bad_range", [[5, 1], [1, 2, 3], [1]])
def test_a_malformed_rating_range_is_a_usage_error(tmp_path, capsys, bad_range):
    code, _, err = run_ingest(tmp_path, write_source(tmp_path / "src"), capsys,
                              "--set", f"ingest.rating_range={bad_range}")
    assert code == 2 and "ingest.rating_range" in err
    assert_nothing_published(tmp_path)
