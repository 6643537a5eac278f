"""The evaluation split: which interactions a model may learn from.

Two protocols (``split.protocol``), both deterministic functions of the data:

* ``leave_last_n``: each user with at least ``min_user_interactions`` events
  holds out their last ``leave_last_n`` as ``test``; other users stay wholly in
  train. This asks "what will this user do next?".
* ``temporal``: one global cutoff at the ``temporal_train_fraction`` quantile
  of ``ts``; everything after it is ``test``. This is the honest replay of a
  nightly job, and items first seen after the cutoff are *cold*: only their
  text can place them.
* ``recent_days``: the same global cut, placed ``holdout_days`` before the
  newest ``ts``: a model trained on everything before the window is judged on
  the window's rows, as production recommenders are validated.

In both, ``validation_n`` events per eligible user are then carved from the
end of their train part, for picking hyper-parameters without touching test.
A user always keeps their first train event in train, so every evaluated user has
history. Events are ordered by ``(ts, item_id, ...)``, so ties in time break
the same way on every run, whatever order the source rows came in.
"""

from __future__ import annotations

import datetime as dt
import math

import polars as pl

from recbatch.config import SplitConfig

SPLITS = ("train", "validation", "test")


def chronological(interactions: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by user, time, then item id and every other column: a total order."""
    keys = ["user_id", "ts", "item_id"] + [c for c in interactions.columns if c not in ("user_id", "ts", "item_id")]
    return interactions.sort(keys, nulls_last=True)


QUANTILE_BUCKETS = 1024  # bins per narrowing pass of the exact quantile: each pass cuts the range 1024-fold
QUANTILE_COLLECT_ROWS = 1 << 20  # values few enough to sort in memory (8 MB): the last pass


def lower_quantile(frame: pl.LazyFrame, column: str, fraction: float, collect_rows: int = QUANTILE_COLLECT_ROWS) -> int:
    """The exact `fraction` quantile of an int64 column (the observed value at rank
    ``floor(fraction * (n - 1))``, as polars' ``interpolation="lower"``), in bounded memory.

    Each streaming pass counts the values in ``QUANTILE_BUCKETS`` equal bins of
    the remaining range and keeps the bin holding the wanted rank, until few
    enough values are left to sort: a handful of passes over any table, never
    the whole column in memory.
    """
    value = pl.col(column)
    n, lo, hi = frame.select(pl.len(), value.min().alias("lo"), value.max().alias("hi")).collect(engine="streaming").row(0)
    rank = math.floor(fraction * (n - 1))  # among the values in [lo, hi]
    count = n
    while count > collect_rows and lo < hi:
        width = -(-(hi - lo + 1) // QUANTILE_BUCKETS)
        in_range = frame.select(value).filter(value.is_between(lo, hi))
        bins = (
            in_range.group_by(((value - lo) // width).alias("bin")).agg(pl.len().alias("n"))
            .collect(engine="streaming").sort("bin")
        )
        before = bins["n"].cum_sum() - bins["n"]  # values in earlier bins
        b = int((before <= rank).sum()) - 1  # the last bin starting at or before the rank
        rank -= int(before[b])
        count = int(bins["n"][b])
        lo, hi = lo + int(bins["bin"][b]) * width, min(hi, lo + (int(bins["bin"][b]) + 1) * width - 1)
    values = frame.select(value).filter(value.is_between(lo, hi)).collect(engine="streaming")[column].sort()
    return int(values[rank])


def global_cutoff(interactions: pl.LazyFrame | pl.DataFrame, cfg: SplitConfig) -> dt.datetime | None:
    """The latest ts still in train under a time-cut protocol; None for leave_last_n (per user).

    A whole-table question, answered in streaming passes so the table may be
    larger than memory; the per-user split then runs on one partition at a time.
    """
    frame = interactions.lazy()
    if cfg.protocol == "temporal":
        micros = lower_quantile(frame.select(pl.col("ts").dt.epoch("us")), "ts", cfg.temporal_train_fraction)
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    if cfg.protocol == "recent_days":
        newest = frame.select(pl.col("ts").max()).collect(engine="streaming").item()
        return newest - dt.timedelta(days=cfg.holdout_days)
    return None


def days_before_newest(ts: str = "ts", newest: dt.datetime | None = None) -> pl.Expr:
    """Each row's age in days (float): the time from its `ts` to the newest `ts` of the frame.

    Used for every "how old is this interaction" question: example age in
    training, time-decayed popularity in the prior and the recent_popular baseline.
    Evaluate it over the whole frame (select / with_columns), not inside a group_by,
    where the newest row would be the group's. A frame holding only part of the
    table (one user partition on a worker) passes the whole table's `newest`.
    """
    reference = pl.col(ts).max() if newest is None else pl.lit(newest)
    return (reference - pl.col(ts)).dt.total_microseconds() / 86_400e6


def split_interactions(
    interactions: pl.DataFrame, cfg: SplitConfig, cutoff: dt.datetime | None = None
) -> pl.DataFrame:
    """Interactions plus ``split`` in {train, validation, test}, sorted chronologically per user.

    `interactions` may be one user partition of a larger table: then pass the
    whole table's `cutoff` (``global_cutoff``) for a time-cut protocol.
    """
    # Per-user counters are materialised once as columns: window expressions are
    # the expensive part, and reusing them by name keeps each computed once.
    ordered = chronological(interactions).with_columns(
        pl.len().over("user_id").alias("__n"),  # the user's events
        pl.int_range(pl.len()).over("user_id").alias("__pos"),  # 0 = the user's first event
    )
    n, pos = pl.col("__n"), pl.col("__pos")
    eligible = n >= cfg.min_user_interactions
    if cutoff is None:
        cutoff = global_cutoff(interactions, cfg)
    if cutoff is None:
        from_end = n - 1 - pos  # 0 = the user's latest event
        is_test = eligible & (pos > 0) & (from_end < cfg.leave_last_n)
    else:
        is_test = pl.col("ts") > pl.lit(cutoff).dt.cast_time_unit("us")

    # In both protocols a user's train events are a prefix of their history
    # (test takes the latest ones), so counting train events is enough to
    # find the end of the train part.
    flagged = ordered.with_columns(is_test.alias("__test")).with_columns(
        (~pl.col("__test")).sum().over("user_id").alias("__train_n")
    )
    train_from_end = pl.col("__train_n") - 1 - pos  # 0 = the user's latest train event
    is_validation = ~pl.col("__test") & eligible & (pos > 0) & (train_from_end < cfg.validation_n)
    split = pl.when(pl.col("__test")).then(pl.lit("test")).when(is_validation).then(pl.lit("validation"))
    helpers = ["__n", "__pos", "__test", "__train_n"]
    return flagged.with_columns(split.otherwise(pl.lit("train")).alias("split")).drop(helpers)


def train_items(split: pl.DataFrame) -> pl.Series:
    """The distinct items with an interaction in the train split (of one partition, or all)."""
    return split.filter(pl.col("split") == "train")["item_id"].unique()


def mark_cold_items(items: pl.DataFrame, warm: pl.Series) -> pl.DataFrame:
    """``is_cold``: the item is not among the `warm` ones (``train_items``): only its text can place it."""
    is_cold = ~pl.col("item_id").is_in(warm.implode())
    marked = items.drop("is_cold", strict=False).with_columns(is_cold.alias("is_cold"))
    # beside the other flags, before free-form attribute columns
    before = items.columns[: items.columns.index("available") + 1] if "available" in items.columns else items.columns
    return marked.select(*before, "is_cold", *[c for c in items.columns if c not in before and c != "is_cold"])


def split_counts(split: pl.DataFrame) -> dict[str, int]:
    """Rows per split (of one partition, or all), for the manifest."""
    per_split = dict(split.group_by("split").len().iter_rows())
    return {name: int(per_split.get(name, 0)) for name in SPLITS}
