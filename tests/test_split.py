"""The evaluation split: leave-last-N, temporal cutoff, validation carve-out, cold items, determinism."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl

from recbatch.config import SplitConfig
from recbatch.data.split import lower_quantile, mark_cold_items, split_counts, split_interactions, train_items

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def events(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    """(user, item, day) triples as an interactions frame."""
    return pl.DataFrame(
        {
            "user_id": [u for u, _, _ in rows],
            "item_id": [i for _, i, _ in rows],
            "ts": [T0 + dt.timedelta(days=d) for _, _, d in rows],
        },
        schema={"user_id": pl.Int64, "item_id": pl.Int64, "ts": pl.Datetime("us", "UTC")},
    )


def splits_of(frame: pl.DataFrame, user: int) -> list[tuple[int, str]]:
    return [(i, s) for i, s in frame.filter(pl.col("user_id") == user).select("item_id", "split").iter_rows()]


def test_leave_last_n_holds_out_the_latest_events_of_eligible_users():
    heavy = [(1, 100 + k, k) for k in range(12)]  # 12 events, items 100..111 in time order
    light = [(2, 200 + k, k) for k in range(3)]  # fewer than min_user_interactions
    cfg = SplitConfig(protocol="leave_last_n", leave_last_n=5, min_user_interactions=10, validation_n=2)
    result = split_interactions(events(heavy + light), cfg)

    assert splits_of(result, 1) == [(100 + k, "train") for k in range(5)] + [
        (105, "validation"),
        (106, "validation"),
    ] + [(107 + k, "test") for k in range(5)]
    assert splits_of(result, 2) == [(200, "train"), (201, "train"), (202, "train")]


def test_a_user_always_keeps_their_first_event_in_train():
    cfg = SplitConfig(protocol="leave_last_n", leave_last_n=5, min_user_interactions=2, validation_n=1)
    result = split_interactions(events([(1, 10, 0), (1, 11, 1), (1, 12, 2)]), cfg)
    assert splits_of(result, 1) == [(10, "train"), (11, "test"), (12, "test")]


def test_ties_in_time_break_by_item_id_whatever_the_input_order():
    rows = [(1, 7, 0), (1, 5, 1), (1, 9, 3), (1, 3, 3), (1, 8, 2)]  # items 3 and 9 share the last day
    cfg = SplitConfig(protocol="leave_last_n", leave_last_n=1, min_user_interactions=2, validation_n=1)
    forward = split_interactions(events(rows), cfg)
    backward = split_interactions(events(rows[::-1]), cfg)
    assert forward.equals(backward)
    assert splits_of(forward, 1) == [(7, "train"), (5, "train"), (8, "train"), (3, "validation"), (9, "test")]


def test_split_is_deterministic_under_shuffling():
    rows = [(u, (u * 7 + k * 3) % 40, (u + k * 5) % 17) for u in range(30) for k in range(u % 15 + 1)]
    frame = events(rows)
    cfg = SplitConfig(protocol="leave_last_n", leave_last_n=3, min_user_interactions=5, validation_n=1)
    reference = split_interactions(frame, cfg)
    for seed in range(3):
        assert split_interactions(frame.sample(fraction=1.0, shuffle=True, seed=seed), cfg).equals(reference)


def test_temporal_cutoff_puts_every_later_event_in_test_and_marks_cold_items():
    # items 1..4 appear early; item 99 only at the end, after the cutoff
    rows = [(u, 1 + (u + k) % 4, u + k) for u in range(4) for k in range(8)] + [(0, 99, 40), (1, 99, 41)]
    frame = events(rows)
    cfg = SplitConfig(protocol="temporal", temporal_train_fraction=0.8, min_user_interactions=3, validation_n=1)
    result = split_interactions(frame, cfg)

    cutoff = frame["ts"].dt.epoch("us").quantile(0.8, interpolation="lower")
    test = result.filter(pl.col("split") == "test")
    not_test = result.filter(pl.col("split") != "test")
    assert test.height == (frame["ts"].dt.epoch("us") > cutoff).sum() > 0
    assert not_test["ts"].max() < test["ts"].min()

    # validation: each eligible user's latest pre-cutoff event
    for user, group in not_test.group_by("user_id"):
        group = group.sort("ts")
        assert group["split"].to_list() == ["train"] * (group.height - 1) + ["validation"]

    items = pl.DataFrame({"item_id": [1, 2, 3, 4, 99, 500], "title": ["a", "b", "c", "d", "late", "never"]})
    marked = mark_cold_items(items, train_items(result))
    assert dict(marked.select("item_id", "is_cold").iter_rows()) == {
        1: False, 2: False, 3: False, 4: False, 99: True, 500: True,
    }  # fmt: skip
    counts = split_counts(result)
    assert counts["train"] + counts["validation"] + counts["test"] == frame.height


def test_string_ids_split_the_same_way_as_int_ids():
    rows = [(u, 10 + (u * 3 + k) % 9, k) for u in range(5) for k in range(12)]
    ints = events(rows)
    strings = ints.with_columns(
        pl.format("u{}", pl.col("user_id").cast(pl.String).str.zfill(3)).alias("user_id"),
        pl.format("i{}", pl.col("item_id").cast(pl.String).str.zfill(3)).alias("item_id"),
    )
    cfg = SplitConfig()
    assert split_interactions(ints, cfg)["split"].to_list() == split_interactions(strings, cfg)["split"].to_list()


def test_recent_days_holds_out_the_last_days_for_everyone():
    # 4 users over days 0..39; the newest event is day 40, so a 5-day window holds days 36..40 out
    rows = [(u, 1 + (u + k) % 4, u * 3 + k * 4) for u in range(4) for k in range(8)] + [(0, 99, 40)]
    frame = events(rows)
    cfg = SplitConfig(protocol="recent_days", holdout_days=5, min_user_interactions=3, validation_n=1)
    result = split_interactions(frame, cfg)

    cutoff = T0 + dt.timedelta(days=35)
    test = result.filter(pl.col("split") == "test")
    assert sorted(test["ts"].to_list()) == sorted(t for t in frame["ts"].to_list() if t > cutoff)
    assert test.height > 0 and result.filter(pl.col("split") != "test")["ts"].max() <= cutoff
    assert set(test["user_id"]) < set(frame["user_id"])  # the window, not a per-user share: some users have none
    assert mark_cold_items(pl.DataFrame({"item_id": [1, 99]}), train_items(result))["is_cold"].to_list() == [False, True]


def test_the_bounded_quantile_is_polars_exact_lower_quantile():
    """Narrowing bins until few values are left gives the same observed value as sorting them all."""
    rng = np.random.default_rng(7)
    for n in (1, 2, 9, 5_000):
        values = rng.integers(-(10**12), 10**15, n)
        values[: n // 3] = values[0]  # many ties
        frame = pl.LazyFrame({"v": values})
        for fraction in (0.0, 0.3, 0.8, 1.0):
            expected = pl.Series(values).quantile(fraction, interpolation="lower")
            assert lower_quantile(frame, "v", fraction, collect_rows=10) == expected, (n, fraction)
