"""Metrics against values computed by hand on a three-user example.

Catalog: items 1..6 (6 is cold, no training interaction) and 7 (unavailable).
  user A: test {1, 2}   list [1, 3, 2]  -> hits at ranks 1 and 3
  user B: test {6, 4}   list [5, 6]     -> hit at rank 2 (the cold item)
  user C: test {3}      absent from the run -> counts as zero
History (train + validation): A {4, 5}; B {1, 2, 3, 5}; C {1}.
"""

from __future__ import annotations

import math

import pytest

from eval_helpers import write_run, write_snapshot
from recbatch.data.snapshot import Snapshot
from recbatch.errors import DataValidationError
from recbatch.eval.metrics import evaluate_run, gini
from recbatch.storage import write_manifest

L2, L3 = math.log2(3), math.log2(4)  # log2(rank + 1) at ranks 2 and 3


def _rows(a, b, c):
    rows = [(a, 4, "train"), (a, 5, "validation"), (a, 1, "test"), (a, 2, "test")]
    rows += [(b, i, "train") for i in (1, 2, 3)] + [(b, 5, "validation"), (b, 6, "test"), (b, 4, "test")]
    rows += [(c, 1, "train"), (c, 3, "test")]
    return rows


ITEMS = [
    {"item_id": i, "title": f"item {i}", "is_cold": i == 6, "available": i != 7} for i in range(1, 8)
]


@pytest.fixture
def example(tmp_path):
    snap = Snapshot.open(write_snapshot(tmp_path / "snap", _rows(10, 20, 30), ITEMS))
    run = write_run(tmp_path / "run", {10: [1, 3, 2], 20: [5, 6]})
    return evaluate_run(run, snap, ks=[1, 3])


def test_ranking_metrics_match_hand_computed_values(example):
    r = example
    assert r.users == {"all": 3, "cold": 1, "warm": 3}
    # K = 1: only A's first slot hits; n_A = 2 but the denominator is min(1, 2) = 1.
    for metric in ("precision", "recall", "hit_rate", "mrr", "ndcg", "map"):
        assert r.at(metric, 1) == pytest.approx(1 / 3), metric
    # K = 3
    assert r.at("precision", 3) == pytest.approx((2 / 3 + 1 / 3) / 3)
    assert r.at("recall", 3) == pytest.approx((2 / 2 + 1 / 2) / 3)
    assert r.at("hit_rate", 3) == pytest.approx(2 / 3)
    assert r.at("mrr", 3) == pytest.approx((1 + 1 / 2) / 3)
    ndcg_a = (1 + 1 / L3) / (1 + 1 / L2)
    ndcg_b = (1 / L2) / (1 + 1 / L2)
    assert r.at("ndcg", 3) == pytest.approx((ndcg_a + ndcg_b) / 3)
    map_a = (1 / 1 + 2 / 3) / 2
    map_b = (1 / 2) / 2
    assert r.at("map", 3) == pytest.approx((map_a + map_b) / 3)
    # Lists are shorter than 100: the curve is flat after the last slot.
    assert r.at("ndcg", 100) == pytest.approx(r.at("ndcg", 3))
    assert r.max_k == 100


def test_cold_and_warm_slices(example):
    r = example
    # Cold: only B has a cold test item (6, at rank 2); n = 1.
    assert r.at("recall", 1, "cold") == 0.0
    assert r.at("recall", 3, "cold") == pytest.approx(1.0)
    assert r.at("ndcg", 3, "cold") == pytest.approx(1 / L2)
    assert r.at("mrr", 3, "cold") == pytest.approx(1 / 2)
    assert r.at("map", 3, "cold") == pytest.approx(1 / 2)
    # Warm: A {1, 2}, B {4} (missed), C {3} (absent).
    assert r.at("recall", 3, "warm") == pytest.approx(1 / 3)
    assert r.metrics()["cold/recall@3"] == pytest.approx(1.0)


def test_beyond_accuracy(example):
    m = example.metrics()
    # 6 available items; top-1 slots: A->1, B->5; top-3: 1, 3, 2, 5, 6.
    assert m["coverage@1"] == pytest.approx(2 / 6)
    assert m["coverage@3"] == pytest.approx(5 / 6)
    # Exposure at K=1 over the 6 items: [1, 0, 0, 0, 1, 0].
    assert m["gini@1"] == pytest.approx(((2 * 5 - 7) + (2 * 6 - 7)) / (6 * 2))
    # History popularity: 1:2, 2:1, 3:1, 4:1, 5:2, 6:0.
    assert m["avg_popularity@1"] == pytest.approx((2 + 2) / 2)
    assert m["avg_popularity@3"] == pytest.approx((2 + 1 + 1 + 2 + 0) / 5)
    # B's first slot (5) is in B's history: 1 of 2 slots at K=1, 1 of 5 at K=3.
    assert m["seen_share@1"] == pytest.approx(1 / 2)
    assert m["seen_share@3"] == pytest.approx(1 / 5)
    assert sum(example.popularity_bins) == pytest.approx(1.0)


def test_string_ids_give_the_same_numbers(tmp_path, example):
    snap = Snapshot.open(
        write_snapshot(
            tmp_path / "snap_s",
            [(u, f"i{i}", s) for u, i, s in _rows("a", "b", "c")],
            [{**it, "item_id": f"i{it['item_id']}"} for it in ITEMS],
            id_type="string",
        )
    )
    run = write_run(tmp_path / "run_s", {"a": ["i1", "i3", "i2"], "b": ["i5", "i6"]}, id_type="string")
    assert evaluate_run(run, snap, ks=[1, 3]).metrics() == pytest.approx(example.metrics())


def test_duplicate_items_in_a_list_are_rejected(tmp_path):
    snap = Snapshot.open(write_snapshot(tmp_path / "snap", _rows(10, 20, 30), ITEMS))
    run = write_run(tmp_path / "run", {10: [1, 3, 1], 20: [5, 6]})
    with pytest.raises(DataValidationError, match=r"item_ids.*1 user list.*user 10: 1"):
        evaluate_run(run, snap, ks=[1, 3])


def test_a_user_on_two_rows_is_rejected(tmp_path):
    snap = Snapshot.open(write_snapshot(tmp_path / "snap", _rows(10, 20, 30), ITEMS))
    run = write_run(tmp_path / "run", {10: [1]})
    write_run(tmp_path / "run2", {10: [2]})
    (tmp_path / "run2" / "part-00000.parquet").rename(tmp_path / "run" / "part-00001.parquet")
    write_manifest(tmp_path / "run", {"model_version": "hand", "id_type": "int", "users": 2})  # names both files
    with pytest.raises(DataValidationError, match=r"user_id.*1 user\(s\).*\[10\]"):
        evaluate_run(run, snap, ks=[1])


def test_mismatched_id_types_are_a_clear_error(tmp_path):
    snap = Snapshot.open(write_snapshot(tmp_path / "snap", _rows(10, 20, 30), ITEMS))
    run = write_run(tmp_path / "run", {"10": ["1"]}, id_type="string")
    with pytest.raises(DataValidationError, match="'user_id' holds String"):
        evaluate_run(run, snap, ks=[1])


def test_gini():
    assert gini([3, 3, 3]) == 0.0
    assert gini([0, 0, 0, 5]) == pytest.approx(3 / 4)
    assert gini([]) == 0.0
