"""Ingest one user partition at a time gives what one whole-table ingest gives.

Ingest streams the per-user tables into user partitions and validates,
erases, quarantines and splits each partition on its own; these tests ingest
the same source in many partitions and in one and compare every table, every
count and every error message.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from recbatch.cli import main
from recbatch.config import GenerateConfig, load_config
from recbatch.data.generate import generate_demo
from recbatch.data.ingest import ingest
from recbatch.data.ingest_tasks import map_tasks
from recbatch.data.partition import user_partition
from recbatch.data.snapshot import PARTITIONED
from recbatch.data.staging import read_partition, stage_by_user, staged_parts
from recbatch.errors import DataValidationError
from recbatch.fs import local

# Ingest runs its per-partition work as Ray tasks: share the session's Ray (starting one costs seconds).
pytestmark = pytest.mark.usefixtures("ray_local")

USERS = 80
MANY = 8  # users_per_partition giving 16 partitions for ~86 users
ONE = 1_000_000
FAKES = [f"fake{i}" for i in range(6)]


@pytest.fixture(scope="module")
def messy_source(tmp_path_factory) -> Path:
    """A CSV source with bad rows spread over many users, duplicate users and a burst of fake profiles."""
    generated = tmp_path_factory.mktemp("gen")
    generate_demo(GenerateConfig(users=USERS, items=40, topics=4, interactions_per_user=10, id_type="string"), generated)
    inter = pl.read_parquet(generated / "interactions.parquet").with_columns(pl.col("ts").dt.epoch("s").cast(pl.String))
    items = pl.read_parquet(generated / "items.parquet")
    users = pl.read_parquet(generated / "users.parquet")
    user_ids = users["user_id"].to_list()
    rare = items["item_id"][-1]
    start = int(inter["ts"].cast(pl.Int64).max()) - 86_400
    fakes = pl.DataFrame(
        {
            "user_id": [u for u in FAKES for _ in range(4)],
            "item_id": [item for _ in FAKES for item in (rare, *items["item_id"][:3])],
            "ts": [str(start + 60 * i + 600 * k) for i in range(len(FAKES)) for k in range(4)],
        }
    )
    bad = pl.DataFrame(
        {
            "user_id": [user_ids[i] for i in range(0, USERS, 5)] + [None, "nobody", user_ids[3]],
            "item_id": ["no-such-item"] * (USERS // 5) + [items["item_id"][0]] * 3,
            "ts": [str(start)] * (USERS // 5) + [str(start), str(start), "yesterday"],
        }
    )
    rows = pl.concat([inter, fakes, bad])
    rows = rows.with_columns(pl.Series("order", [(i * 7919) % rows.height for i in range(rows.height)])).sort("order")
    folder = tmp_path_factory.mktemp("messy")
    rows.drop("order").write_csv(folder / "interactions.csv")
    items.write_csv(folder / "items.csv")
    more_users = pl.DataFrame({"user_id": FAKES}).with_columns(
        country=pl.lit("xx"), age_band=pl.lit("18-24"), activity=pl.lit(1.0)
    )
    pl.concat([users, more_users, users.head(2)]).write_csv(folder / "users.csv")  # two duplicate users
    return folder


def _ingest(tmp_path: Path, source: Path, users_per_partition: int, **overrides):
    return ingest(load_config(None, {
        "root": str(tmp_path / f"root-{users_per_partition}"),
        "ingest.source": str(source),
        "ingest.users_per_partition": users_per_partition,
        **overrides,
    }))


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


@pytest.mark.parametrize("protocol", ["leave_last_n", "temporal"])
def test_many_partitions_give_the_tables_of_one(tmp_path, messy_source, protocol):
    settings = {"ingest.on_bad_rows": "quarantine", "ingest.detect_injected_profiles": True, "split.protocol": protocol}
    many = _ingest(tmp_path, messy_source, MANY, **settings)
    one = _ingest(tmp_path, messy_source, ONE, **settings)

    assert one.partitions == 1 and many.partitions == 16
    assert many.counts == one.counts
    source = pl.read_csv(messy_source / "interactions.csv", infer_schema=False)
    duplicated = pl.read_csv(messy_source / "users.csv", infer_schema=False)["user_id"].head(2)
    expected_bad = source.filter(  # the rows made bad, and those of the duplicated (so quarantined) users
        pl.col("user_id").is_null() | pl.col("user_id").is_in(["nobody", *duplicated])
        | (pl.col("item_id") == "no-such-item") | (pl.col("ts") == "yesterday")
    )
    assert many.counts["quarantined_interactions"] == expected_bad.height > USERS // 5 + 3
    assert many.counts["quarantined_users"] == 4  # both copies of each duplicate
    assert many.counts["quarantined_profiles"] == len(FAKES)
    assert many.counts["test"] > 0 and many.counts["validation"] > 0
    for table in PARTITIONED:
        whole = one.scan(table).collect()
        assert _sorted(many.scan(table).collect()).equals(_sorted(whole))
        for p in range(many.partitions):
            part = many.scan_partition(table, p).collect()
            assert (user_partition(part["user_id"].to_arrow(), many.partitions) == p).all()
    assert many.items().collect().equals(one.items().collect())
    for name in ("interactions", "users", "profiles"):
        path = Path("quarantine") / f"{name}.parquet"
        assert pl.read_parquet(many.path / path).equals(pl.read_parquet(one.path / path)), name
    assert set(pl.read_parquet(many.path / "quarantine" / "profiles.parquet")["user_id"]) == set(FAKES)


def test_an_error_names_the_same_count_and_first_rows_in_any_number_of_partitions(tmp_path, messy_source, capsys):
    messages = []
    for users_per_partition in (MANY, ONE):
        root = tmp_path / f"root-{users_per_partition}"
        code = main(["ingest", "--root", str(root), "--source", str(messy_source),
                     "--set", f"ingest.users_per_partition={users_per_partition}"])
        assert code == 3
        messages.append(capsys.readouterr().err)
        assert not (root / "snapshots").exists() or list((root / "snapshots").iterdir()) == []
    assert messages[0] == messages[1]
    assert "users.csv: column 'user_id': 4 of" in messages[0]  # users are checked before interactions


def test_counts_and_examples_of_bad_rows_add_up_across_partitions(tmp_path, messy_source, capsys):
    """Unknown items in many users' rows: one count, and the first rows of the file as examples."""
    source = tmp_path / "src"
    source.mkdir()
    inter = pl.read_csv(messy_source / "interactions.csv", infer_schema=False)
    inter = inter.filter(pl.col("user_id").is_not_null() & (pl.col("ts") != "yesterday"))
    inter.write_csv(source / "interactions.csv")
    (source / "items.csv").write_bytes((messy_source / "items.csv").read_bytes())
    pl.read_csv(messy_source / "users.csv", infer_schema=False).unique("user_id").write_csv(source / "users.csv")
    unknown = inter.with_row_index("row", offset=1).filter(pl.col("item_id") == "no-such-item")["row"].to_list()

    messages = []
    for users_per_partition in (MANY, ONE):
        code = main(["ingest", "--root", str(tmp_path / f"root-{users_per_partition}"), "--source", str(source),
                     "--set", f"ingest.users_per_partition={users_per_partition}"])
        assert code == 3
        messages.append(capsys.readouterr().err)
    assert messages[0] == messages[1]
    examples = ", ".join(f"row {row}: 'no-such-item'" for row in unknown[:3])
    assert f"column 'item_id': {len(unknown)} of {inter.height} interactions rows refer to an unknown" in messages[0]
    assert f"(e.g. {examples})" in messages[0]
    assert len(unknown) == USERS // 5


@pytest.mark.parametrize("root", ["posix", "s3"])
def test_a_user_partition_is_read_back_whole_from_any_staging_count(tmp_path, root, request):
    """On either kind of root: the scratch files live under the root, where tasks on any node reach them."""
    scratch = local(tmp_path) if root == "posix" else request.getfixturevalue("s3_root").locate("scratch")
    ids = [f"u{i}" for i in range(200)] + [None]
    frame = pl.LazyFrame({"user_id": ids, "n": range(len(ids))})
    for staged, partitions in ((2, 8), (8, 2), (4, 4)):
        folder = scratch.join(f"s{staged}")
        stage_by_user(frame, folder, staged)
        assert [f.name for f in staged_parts(folder)] == [f"part-{p:05d}.parquet" for p in range(staged)]
        parts = [read_partition(folder, p, partitions, staged) for p in range(partitions)]
        assert sum(part.height for part in parts) == len(ids)
        for p, part in enumerate(parts):
            users = part["user_id"].drop_nulls()
            assert (user_partition(users.to_arrow(), partitions) == p).all()
            if staged <= partitions:  # one staged file: in source order
                assert part["n"].is_sorted()


def test_a_rerun_in_many_partitions_gives_the_same_snapshot(tmp_path, messy_source):
    """Partitions are checked and written by parallel Ray tasks; their records are added in partition order."""
    settings = {"ingest.on_bad_rows": "quarantine", "ingest.detect_injected_profiles": True}
    first = _ingest(tmp_path / "a", messy_source, MANY, **settings)
    again = _ingest(tmp_path / "b", messy_source, MANY, **settings)
    assert first.partitions == 16
    assert again.hash == first.hash and again.counts == first.counts
    for name in sorted(p.relative_to(first.path) for p in first.path.rglob("*.parquet")):
        assert (again.path / name).read_bytes() == (first.path / name).read_bytes(), name


def test_bad_input_found_in_a_task_reaches_the_driver_as_its_own_error(tmp_path):
    """A data error raised on a worker keeps its class and its message (not Ray's wrapper and traceback)."""

    def refuse_odd(folder: Path, key: int) -> int:
        if key % 2:
            raise DataValidationError(f"{folder}: partition {key} is bad")
        return key

    results = map_tasks(refuse_odd, tmp_path, range(4), on_workers=True)
    assert next(results) == 0
    with pytest.raises(DataValidationError) as raised:
        next(results)
    assert str(raised.value) == f"{tmp_path}: partition 1 is bad"


def test_tasks_run_a_window_at_a_time_and_a_closed_map_submits_no_more(tmp_path, ray_local):
    """At most a task per cluster CPU is in flight; once the caller stops, the running ones are waited
    for (never ``ray.cancel``led: that races a finishing task inside Ray) and nothing more is submitted."""
    drawn: list[int] = []

    def keys():
        for key in range(100):
            drawn.append(key)
            yield key

    window = int(ray_local.cluster_resources()["CPU"])
    results = map_tasks(lambda folder, key: key * 2, tmp_path, keys(), on_workers=True)
    assert [next(results) for _ in range(3)] == [0, 2, 4]  # in key order
    assert len(drawn) == window + 3 < 100  # the window, refilled one task per record taken
    results.close()
    assert len(drawn) == window + 3
