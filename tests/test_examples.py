"""Training inputs are built per snapshot partition by Ray tasks, and mean what they say.

The reference below is a plain Python reading of the definitions (one user at
a time, in ts order), independent of the polars window expressions and the
Ray tasks that produce the inputs: an example's history is the user's previous
L train rows, oldest first, padded with PAD; its target is the interaction's
catalog row; its age is the days before the newest train interaction. Each
examples part holds exactly the examples of its partition's users.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest

from recbatch.config import load_config
from recbatch.model.features import UserFeatureSpec
from recbatch.fs import Location
from recbatch.train.examples import PAD, prepare_inputs

L = 4


def _snapshot(base: Path, users_per_partition: int):
    from recbatch.data.generate import generate_demo
    from recbatch.data.ingest import ingest

    cfg = load_config(None, {
        "root": str(base / "root"), "ingest.source": str(base / "source"),
        "generate.users": 120, "generate.items": 40, "generate.interactions_per_user": 20,
        "ingest.users_per_partition": users_per_partition,
    })
    generate_demo(cfg.generate, cfg.ingest.source)
    return ingest(cfg)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    """The same generated data ingested twice: in 4 user partitions and in 1."""
    base = tmp_path_factory.mktemp("examples")
    four, one = _snapshot(base / "four", 32), _snapshot(base / "one", 1000)
    assert (four.partitions, one.partitions) == (4, 1)
    return four, one


def _read(prepared: Location) -> pl.DataFrame:
    """A prepared table: one file, or a folder of parts (on a local root)."""
    path = Path(prepared.path)
    return pl.read_parquet(path / "*.parquet" if path.is_dir() else path)


def _partition_rows(snapshot) -> dict[int, pl.DataFrame]:
    """Each partition's split rows in file order (ts ties keep it)."""
    return {p: pl.concat([pl.read_parquet(f) for f in snapshot.partition_files("split", p)])
            for p in range(snapshot.partitions)}


def _catalog_rows(snapshot) -> dict:
    ids = snapshot.items().collect().sort("item_id")["item_id"].to_list()
    return {item: row for row, item in enumerate(ids)}


def _features(snapshot) -> tuple[dict, tuple, tuple]:
    users = snapshot.users().collect()
    spec = UserFeatureSpec.from_users(users)
    cat, num = spec.encode(users, users.height)
    table = {u: (tuple(c), tuple(round(x, 5) for x in n))
             for u, c, n in zip(users["user_id"].to_list(), cat.tolist(), num.tolist())}
    return table, (0,) * len(spec.categorical), (0.0,) * len(spec.numeric)


def _key(target, history, cat, num) -> tuple:
    return (target, tuple(history), tuple(cat), tuple(round(x, 5) for x in num))


def expected_examples(snapshot) -> dict[int, list[tuple]]:
    """Per partition: sorted (target, history, user_cat, user_num, age_days) of every train interaction."""
    rows, features = _catalog_rows(snapshot), _features(snapshot)
    table, no_cat, no_num = features
    parts = _partition_rows(snapshot)
    newest = max(t for frame in parts.values() for t in frame.filter(pl.col("split") == "train")["ts"].to_list())
    out = {}
    for p, frame in parts.items():
        per_user = defaultdict(list)
        for user, item, ts in frame.filter(pl.col("split") == "train").select("user_id", "item_id", "ts").iter_rows():
            per_user[user].append((ts, rows[item]))
        examples = []
        for user, events in per_user.items():
            events.sort(key=lambda e: e[0])  # stable: ts ties keep the file order
            cat, num = table.get(user, (no_cat, no_num))
            for i, (ts, row) in enumerate(events):
                previous = [r for _, r in events[max(0, i - L):i]]
                history = [PAD] * (L - len(previous)) + previous
                examples.append(_key(row, history, cat, num) + ((newest - ts).total_seconds() / 86400,))
        out[p] = sorted(examples)
    return out


def actual_examples(frame: pl.DataFrame) -> list[tuple]:
    return sorted(_key(*r[:4]) + (r[4],) for r in
                  frame.select("target", "history", "user_cat", "user_num", "age_days").iter_rows())


def assert_same_examples(actual: list[tuple], expected: list[tuple]) -> None:
    assert len(actual) == len(expected)
    assert [a[:4] for a in actual] == [e[:4] for e in expected]
    assert [a[4] for a in actual] == pytest.approx([e[4] for e in expected], rel=1e-6, abs=1e-3)


def _prepare(snapshot, out: Path, seed: int = 0, validate_users: int = 20):
    return prepare_inputs(snapshot, out, history_length=L, use_item_ids=True, validate_users=validate_users, seed=seed)


def test_examples_are_each_users_previous_train_rows_written_per_partition(ray_local, snapshots, tmp_path):
    four, _ = snapshots
    prepared = _prepare(four, tmp_path / "inputs")
    expected = expected_examples(four)
    everything = sorted(e for part in expected.values() for e in part)
    train_rows = four.split("train").select(pl.len()).collect().item()
    assert prepared.num_examples == len(everything) == train_rows
    assert_same_examples(actual_examples(_read(prepared.examples)), everything)

    parts = sorted(Path(prepared.examples.path).glob("*.parquet"))
    assert [p.name for p in parts] == [f"part-{p:05d}.parquet" for p in range(four.partitions)]
    for p, part in enumerate(parts):  # a part holds exactly its partition's users' examples
        assert_same_examples(actual_examples(pl.read_parquet(part)), expected[p])


def _train_rows_by_user(snapshot) -> tuple[dict, dict]:
    rows = _catalog_rows(snapshot)
    train, validation = defaultdict(list), defaultdict(set)
    for frame in _partition_rows(snapshot).values():
        for user, item, ts, split in frame.select("user_id", "item_id", "ts", "split").iter_rows():
            if split == "train":
                train[user].append((ts, rows[item]))
            elif split == "validation":
                validation[user].add(rows[item])
    return {u: [r for _, r in sorted(e, key=lambda x: x[0])] for u, e in train.items()}, validation


def _partition_of(snapshot) -> dict:
    return {u: p for p, frame in _partition_rows(snapshot).items() for u in frame["user_id"].to_list()}


def test_validation_users_are_sampled_per_partition_deterministically(ray_local, snapshots, tmp_path):
    four, one = snapshots
    train, validation = _train_rows_by_user(four)
    eligible = {u for u in validation if u in train}
    assert len(eligible) > 30

    first = _prepare(four, tmp_path / "a", seed=3)
    frame = _read(first.validation)
    users = frame["user_id"].to_list()
    assert first.num_validation_users == len(users) == len(set(users)) == 20 and set(users) <= eligible
    for user, history, seen, targets in frame.select("user_id", "history", "seen", "targets").iter_rows():
        assert history == train[user][-L:]
        assert set(seen) == set(train[user]) and len(seen) == len(set(seen))
        assert set(targets) == validation[user]
    partition = _partition_of(four)
    parts = sorted(Path(first.validation.path).glob("part-*.parquet"))
    assert Path(first.validation.path).is_dir() and sum(pl.read_parquet(part).height for part in parts) == 20
    assert len({partition[u] for u in users}) > 1  # drawn from every partition, not the first ones
    for part in parts:
        p = int(part.stem.split("-")[1])
        assert {partition[u] for u in pl.read_parquet(part)["user_id"].to_list()} <= {p}

    again = _prepare(four, tmp_path / "b", seed=3)
    assert sorted(_read(again.validation)["user_id"].to_list()) == sorted(users)
    assert actual_examples(_read(again.examples)) == actual_examples(_read(first.examples))
    # The sample depends on the users and the seed, not on how the snapshot is partitioned.
    unpartitioned = _prepare(one, tmp_path / "c", seed=3)
    assert sorted(_read(unpartitioned.validation)["user_id"].to_list()) == sorted(users)
    assert_same_examples(actual_examples(_read(unpartitioned.examples)), actual_examples(_read(first.examples)))

    other_seed = _prepare(four, tmp_path / "d", seed=4)
    assert sorted(_read(other_seed.validation)["user_id"].to_list()) != sorted(users)
    everyone = _prepare(four, tmp_path / "e", validate_users=10_000)
    assert set(_read(everyone.validation)["user_id"].to_list()) == eligible
