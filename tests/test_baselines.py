"""Every baseline, tuned on validation and written through the shared writer, beats random."""

from __future__ import annotations

import pytest

from eval_helpers import synthetic_snapshot
from recbatch.config import Config
from recbatch.data.snapshot import Snapshot
from recbatch.eval.baselines import BASELINES, run_baseline, training_data, tune
from recbatch.eval.metrics import evaluate_run
from recbatch.storage import verify_manifest


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return Snapshot.open(synthetic_snapshot(tmp_path_factory.mktemp("snap") / "synthetic"))


@pytest.fixture(scope="module")
def results(snapshot, tmp_path_factory):
    cfg = Config().with_overrides({"score.k": 20, "eval.gate_metric": "ndcg@10"})
    out = tmp_path_factory.mktemp("runs")
    manifests, metrics = {}, {}
    for name in BASELINES:
        manifests[name] = run_baseline(name, snapshot, cfg, out / name)
        metrics[name] = evaluate_run(out / name, snapshot, ks=[10, 20]).metrics()
    return out, manifests, metrics


def test_every_baseline_beats_random(results):
    _, _, metrics = results
    floor = metrics["random"]["ndcg@10"]
    for name, m in metrics.items():
        if name != "random":
            assert m["ndcg@10"] > 1.5 * floor, (name, m["ndcg@10"], floor)


def test_runs_follow_the_recommendations_contract(results, snapshot):
    out, manifests, metrics = results
    users = training_data(snapshot, ["train", "validation"]).matrix.shape[0]
    for name, manifest in manifests.items():
        assert verify_manifest(out / name)["users"] == users
        assert manifest["k"] == 20 and manifest["snapshot_hash"] == snapshot.hash
        assert metrics[name]["seen_share@20"] == 0.0, name  # seen items are filtered


def test_only_text_aware_baselines_reach_cold_items(results):
    _, _, metrics = results
    for name in ("most_popular", "item_knn", "als", "bpr", "sasrec"):
        assert metrics[name]["cold/recall@20"] == 0.0, name
    assert metrics["content"]["cold/recall@20"] > 0.2


def test_grid_is_searched_on_validation(results):
    _, manifests, _ = results
    trials = manifests["item_knn"]["baseline"]["validation"]
    assert [t["params"] for t in trials] == BASELINES["item_knn"].grid
    best = max(trials, key=lambda t: t["ndcg@10"])["params"]
    assert manifests["item_knn"]["baseline"]["params"] == best
    assert all(0.0 <= t["ndcg@10"] <= 1.0 for t in trials)


def test_users_without_history_get_popular_items_not_nothing(tmp_path):
    """A user whose only rows are test rows still gets a list (the popular items), as the
    scoring stage gives every user one; random stays random."""
    import numpy as np
    import polars as pl

    from recbatch.eval.baselines import training_data

    snapshot = Snapshot.open(synthetic_snapshot(tmp_path / "snap", users=60, items=80, newcomers=5))
    cfg = Config().with_overrides({"score.k": 10})
    data = training_data(snapshot, ["train", "validation"])
    popularity = np.asarray(data.matrix.sum(axis=0)).ravel()
    order = np.lexsort((np.arange(len(popularity)), -popularity))  # count desc, item id asc
    available = snapshot.items().sort("item_id").collect()["available"].to_numpy()
    eligible = [i for i in order if data.warm[i] and available[i]]
    expected = data.item_ids.gather(eligible[:10]).to_list()

    lists = {}
    for name in ("most_popular", "bpr", "random"):
        manifest = run_baseline(name, snapshot, cfg, tmp_path / name)
        assert manifest["users"] == 65 and manifest["baseline"]["newcomers"] == 5
        recs = pl.read_parquet(tmp_path / name / "*.parquet").filter(pl.col("user_id") >= 60).sort("user_id")
        lists[name] = recs["item_ids"].to_list()
    assert lists["most_popular"] == [expected] * 5
    assert lists["bpr"] == [expected] * 5
    assert all(len(items) == 10 for items in lists["random"]) and lists["random"][0] != expected
    assert evaluate_run(tmp_path / "most_popular", snapshot, ks=[10]).users["all"] == 65


def test_recent_popular_decays_each_interaction_by_its_age(tmp_path):
    """Item 1: three users, three years before the newest row; item 2: two users, ten days before."""
    import datetime as dt

    import numpy as np
    import polars as pl

    from eval_helpers import write_snapshot
    from recbatch.config import ScoreConfig
    from recbatch.eval.baselines import NO_ROWS, ListRules, MostPopular, RecentPopular

    rows = [(1, 1, "train"), (2, 1, "train"), (3, 1, "train"), (4, 2, "train"), (5, 2, "train"), (6, 3, "train")]
    items = [{"item_id": i, "title": f"item {i}", "is_cold": False, "available": True} for i in (1, 2, 3)]
    folder = write_snapshot(tmp_path / "snap", rows, items)
    newest = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ages = [3 * 365, 3 * 365, 3 * 365, 10, 10, 0]
    split = pl.read_parquet(folder / "split.parquet").with_columns(
        ts=pl.Series([newest - dt.timedelta(days=a) for a in ages]).dt.cast_time_unit("us")
    )
    split.write_parquet(folder / "split.parquet")
    snapshot = Snapshot.open(folder)
    data = training_data(snapshot, ["train"])

    recent = RecentPopular(half_life_days=90).popularity(data)
    expected = [3 * 0.5 ** (3 * 365 / 90), 2 * 0.5 ** (10 / 90), 1.0]
    assert recent == pytest.approx(expected, rel=1e-5)
    assert MostPopular().popularity(data).tolist() == [3.0, 2.0, 1.0]
    model = RecentPopular(half_life_days=90)
    model.fit(data)
    rules = ListRules.of(snapshot, ScoreConfig(), data)
    idx, _ = model.rank_newcomers(data, 3, rules, rules.exclusions(data, pl.Series("user_id", [7]), NO_ROWS))
    assert data.item_ids.gather(idx[0]).to_list() == [2, 3, 1]  # now, item 2 is what people pick
    assert np.isclose(RecentPopular(half_life_days=1e6).popularity(data), [3, 2, 1], rtol=1e-3).all()  # a long half-life is plain popularity


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory):
    """The same synthetic data, per-user tables cut into 4 user partitions."""
    return Snapshot.open(synthetic_snapshot(tmp_path_factory.mktemp("snap") / "cut", partitions=4))


@pytest.mark.parametrize("name", ["most_popular", "recent_popular"])
def test_popularity_for_a_slice_of_users_holds_only_their_rows_and_ranks_as_the_full_fit(partitioned, name):
    """The nightly gate's floor ranks a slice of users: fitting popularity on the slice's rows
    (counts over everyone, streamed) gives exactly the lists of a fit on every user."""
    import polars as pl

    from recbatch.eval.baselines import fit_baseline

    snapshot = partitioned
    cfg = Config().with_overrides({"eval.gate_metric": "ndcg@10"})
    users = snapshot.split("test").select("user_id").unique().sort("user_id").collect()["user_id"]
    tune_users = snapshot.split("validation").select("user_id").unique().sort("user_id").collect()["user_id"]
    users, tune_users = users.gather(range(0, len(users), 3)), tune_users.gather(range(0, len(tune_users), 3))
    users = pl.concat([users, pl.Series("user_id", [-1], dtype=users.dtype)])  # and a newcomer
    full = fit_baseline(name, snapshot, cfg, tune_users)
    sliced = fit_baseline(name, snapshot, cfg, tune_users, users)

    assert sliced.data.matrix.shape[0] < full.data.matrix.shape[0] / 2  # the slice's rows only
    assert sliced.params == full.params
    rows = [pl.concat([pl.from_arrow(t) for t in f.lists(snapshot, 20, users)]).sort("user_id") for f in (full, sliced)]
    assert rows[0].height == len(users)
    assert rows[0].select("user_id", "item_ids").equals(rows[1].select("user_id", "item_ids"))


def test_tuning_on_a_slice_read_by_tasks_scores_the_grid_as_the_whole_history_does(partitioned, ray_local):
    """``tune`` over a slice reads its rows once by partition tasks (``HeldOutSlice``) and scores every grid
    point on them; with every validation user as the slice, each point's value is the one scored against
    the whole history read in this process."""
    from recbatch.eval.baselines import tune

    snapshot = partitioned
    cfg = Config().with_overrides({"eval.gate_metric": "ndcg@10"})
    everyone = snapshot.split("validation").select("user_id").unique().sort("user_id").collect()["user_id"]
    sliced, whole = tune("recent_popular", snapshot, cfg, everyone), tune("recent_popular", snapshot, cfg)
    assert len(sliced[1]) == len(whole[1]) > 1
    assert sliced == whole
    few = tune("recent_popular", snapshot, cfg, everyone.head(3))[1]
    assert [t["ndcg@10"] for t in few] != [t["ndcg@10"] for t in whole[1]]  # the slice is what is scored


def test_the_partition_tasks_of_a_slice_read_what_this_process_reads(partitioned, ray_local):
    """The slice's popularity reads its rows, the newest row and counts every user's pairs in Ray tasks, a
    partition each: the rows and the newest time are those read in this process, the driver's sum of the
    counts is exactly the partitions counted in this process, and the users per item of a fit on every user.
    The slice's metrics, read the same way, are those of the whole history read in this process."""
    import numpy as np
    import polars as pl

    from recbatch.eval.holdout import HeldOutSlice
    from recbatch.eval.metrics import evaluate, heldout_and_history
    from recbatch.eval.popularity_tasks import CountTask, count_partition

    snapshot = partitioned
    users = snapshot.split("test").select("user_id").unique().sort("user_id").collect()["user_id"].head(5)
    sliced = training_data(snapshot, ["train", "validation"], users)
    full = training_data(snapshot, ["train", "validation"])
    assert snapshot.partitions == 4 and 0 < sliced.matrix.shape[0] < full.matrix.shape[0]
    assert np.array_equal(sliced.users_per_item, full.users_per_item)
    before = pl.col("split").is_in(["train", "validation"])
    assert sliced.everyone.of_users(users).equals(snapshot.rows_of("split", users, before))
    decayed = (0.5 ** (pl.col("age_days") / 90)).sum()
    here = sum(count_partition(CountTask(sliced.everyone, decayed), p) for p in range(snapshot.partitions))
    assert np.array_equal(sliced.everyone.per_item(decayed), here.astype(np.float32))
    assert (here > 0).sum() == (full.users_per_item > 0).sum()  # every interacted item counted, once
    rows = snapshot.split().filter(before)
    assert sliced.everyone.newest == rows.select(pl.col("ts").max()).collect().item()
    columns = full.item_ids.to_frame().with_row_index("col")
    per_item = rows.group_by("item_id").len().collect().join(columns, on="item_id")
    assert np.array_equal(sliced.everyone.rows_per_item()[per_item["col"].to_numpy()], per_item["len"].to_numpy())
    assert sliced.everyone.rows_per_item().sum() == rows.select(pl.len()).collect().item()

    cfg = Config().with_overrides({"eval.ks": [5, 20]})
    popular = per_item.sort("len", "item_id", descending=[True, False]).head(30)["item_id"].to_list()
    recs = pl.DataFrame({"user_id": users, "item_ids": [popular[i:] + popular[:i] for i in range(len(users))]})
    heldout, history = heldout_and_history(snapshot, "test")
    whole = evaluate(recs.lazy(), heldout.filter(pl.col("user_id").is_in(users.implode())), history,
                     snapshot.items(), ks=[5, 20], name="slice")
    tasks = HeldOutSlice.of_users(cfg, snapshot, users, "test").evaluate(
        recs.lazy(), ks=cfg.eval.ks, name="slice", source="test lists")
    assert tasks.to_dict() == whole.to_dict()
    assert 0 < whole.beyond["avg_popularity@20"] and 0 < whole.beyond["seen_share@20"] < 1


def test_the_metrics_popularity_counts_every_history_row_and_the_floor_every_pair(tmp_path, ray_local):
    """``avg_popularity`` weighs an item by its history rows, a user's repeats included; the popularity
    floor by its users: the partition tasks count each over two partitions."""
    import numpy as np
    import polars as pl

    from eval_helpers import write_snapshot
    from recbatch.config import RayConfig
    from recbatch.eval.popularity_tasks import SplitRows, catalog_columns

    rows = [(1, 1, "train"), (1, 1, "train"), (2, 1, "train"), (3, 2, "train"), (3, 2, "train"), (3, 2, "train"),
            (4, 2, "test"), (5, 3, "validation")]
    snapshot = Snapshot.open(write_snapshot(tmp_path / "snap", rows, [{"item_id": i} for i in (1, 2, 3)],
                                            partitions=2))
    train = SplitRows(snapshot, ("train",), None, catalog_columns(snapshot.items()), RayConfig())
    assert snapshot.partitions == 2
    assert np.array_equal(train.rows_per_item(), [3, 3, 0])
    assert np.array_equal(train.per_item(pl.len()), [2, 1, 0])


@pytest.fixture(scope="module")
def ruled(tmp_path_factory):
    """Six users and two newcomers (9, 10: test rows only) over eight items. Training users per item:
    1: six, 7 (unavailable): five, 2: four, 3: three, 4, 5, 6: two each (train + validation); 8 is cold.
    The blocklist removes item 3 for everyone and item 2 for users 5 and 9."""
    from eval_helpers import write_snapshot

    folder = tmp_path_factory.mktemp("ruled")
    train = {1: range(1, 7), 7: range(1, 6), 2: range(1, 5), 3: range(1, 4), 4: (1, 2), 5: (1,), 6: (2,)}
    rows = [(u, i, "train") for i, users in train.items() for u in users]
    rows += [(3, 5, "validation"), (4, 6, "validation")]
    rows += [(1, 6, "test"), (2, 5, "test"), (3, 8, "test"), (4, 8, "test"), (5, 4, "test"), (6, 4, "test"),
             (9, 1, "test"), (10, 2, "test")]
    items = [{"item_id": i, "title": f"item {i}", "is_cold": i == 8, "available": i != 7} for i in range(1, 9)]
    snapshot = Snapshot.open(write_snapshot(folder / "snap", rows, items))
    blocklist = folder / "blocklist.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": pa.array([None, 5, 9], pa.int64()), "item_id": [3, 2, 2]}), blocklist)
    return snapshot, {u: {i for (v, i, s) in rows if v == u and s != "test"} for u in (1, 2, 3, 4, 5, 6, 9, 10)}, blocklist


def ruled_lists(snapshot, blocklist, name: str, **score) -> dict[int, list[int]]:
    """`name`'s lists (k = 8) for every user of the `ruled` snapshot under ``score.*`` = `score`."""
    import polars as pl

    from recbatch.eval.baselines import fit_baseline

    overrides = {"score.blocklist": str(blocklist), "eval.gate_metric": "ndcg@8"}
    cfg = Config().with_overrides({**overrides, **{f"score.{key}": value for key, value in score.items()}})
    lists = pl.concat([pl.from_arrow(t) for t in fit_baseline(name, snapshot, cfg).lists(snapshot, 8)])
    return dict(zip(lists["user_id"].to_list(), lists["item_ids"].to_list()))


def test_most_popular_lists_follow_the_scoring_rules(ruled):
    """Popularity order, ties by id, less what the published lists may not hold: the unavailable item
    (unless ``score.filter_unavailable`` is off), the blocklist (global and per user, newcomers too),
    seen items (unless ``score.filter_seen`` is off) and, for a collaborative model, the cold item.
    Before baselines ranked through score/ranking.py they ignored the blocklist and both switches."""
    snapshot, _, blocklist = ruled
    lists = ruled_lists(snapshot, blocklist, "most_popular")
    assert lists[6] == [2, 4, 5, 6]  # seen 1
    assert lists[5] == [4, 5, 6]  # seen 1, 7, 2; 2 blocked for 5 anyway
    assert lists[9] == [1, 4, 5, 6] and lists[10] == [1, 2, 4, 5, 6]  # newcomers: 2 blocked for 9 only
    assert ruled_lists(snapshot, blocklist, "most_popular", filter_seen=False)[6] == [1, 2, 4, 5, 6]
    assert ruled_lists(snapshot, blocklist, "most_popular", filter_unavailable=False)[6] == [7, 2, 4, 5, 6]


@pytest.mark.parametrize("name", ["item_knn", "als", "random"])
def test_every_kind_of_baseline_ranks_by_the_scoring_rules(ruled, name):
    """The score-block path (item_knn), the vector path (als) and a non-collaborative model obey the same rules."""
    snapshot, seen, blocklist = ruled
    for user, items in ruled_lists(snapshot, blocklist, name).items():
        assert not set(items) & ({3, 7} | seen[user]), (user, items)  # blocked, unavailable, seen
        assert user not in (5, 9) or 2 not in items, (user, items)  # blocked for them
    unfiltered = ruled_lists(snapshot, blocklist, name, filter_seen=False)
    assert any(set(items) & seen[user] for user, items in unfiltered.items())
    assert all(3 not in items for items in unfiltered.values())
