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

import polars as pl

from recbatch.config import SplitConfig

SPLITS = ("train", "validation", "test")


def chronological(interactions: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted by user, time, then item id and every other column: a total order."""
    keys = ["user_id", "ts", "item_id"] + [c for c in interactions.columns if c not in ("user_id", "ts", "item_id")]
    return interactions.sort(keys, nulls_last=True)


def temporal_cutoff(interactions: pl.DataFrame, train_fraction: float) -> pl.Expr:
    """The latest ts still in train: the `train_fraction` quantile, taken at an observed value."""
    micros = interactions["ts"].dt.epoch("us")
    cutoff = micros.quantile(train_fraction, interpolation="lower")
    return pl.from_epoch(pl.lit(int(cutoff), pl.Int64), time_unit="us").dt.replace_time_zone("UTC")


def global_cutoff(interactions: pl.DataFrame, cfg: SplitConfig) -> pl.Expr | None:
    """The latest ts still in train under a time-cut protocol; None for leave_last_n (per user)."""
    if cfg.protocol == "temporal":
        return temporal_cutoff(interactions, cfg.temporal_train_fraction)
    if cfg.protocol == "recent_days":
        newest = interactions["ts"].max()
        return pl.lit(newest - dt.timedelta(days=cfg.holdout_days)).dt.cast_time_unit("us")
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


def split_interactions(interactions: pl.DataFrame, cfg: SplitConfig) -> pl.DataFrame:
    """Interactions plus ``split`` in {train, validation, test}, sorted chronologically per user."""
    # Per-user counters are materialised once as columns: window expressions are
    # the expensive part, and reusing them by name keeps each computed once.
    ordered = chronological(interactions).with_columns(
        pl.len().over("user_id").alias("__n"),  # the user's events
        pl.int_range(pl.len()).over("user_id").alias("__pos"),  # 0 = the user's first event
    )
    n, pos = pl.col("__n"), pl.col("__pos")
    eligible = n >= cfg.min_user_interactions
    cutoff = global_cutoff(ordered, cfg)
    if cutoff is None:
        from_end = n - 1 - pos  # 0 = the user's latest event
        is_test = eligible & (pos > 0) & (from_end < cfg.leave_last_n)
    else:
        is_test = pl.col("ts") > cutoff

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


def mark_cold_items(items: pl.DataFrame, split: pl.DataFrame) -> pl.DataFrame:
    """``is_cold``: the item has no interaction in the train split (only its text can place it)."""
    warm = split.filter(pl.col("split") == "train")["item_id"].unique()
    is_cold = ~pl.col("item_id").is_in(warm.implode())
    marked = items.drop("is_cold", strict=False).with_columns(is_cold.alias("is_cold"))
    # beside the other flags, before free-form attribute columns
    before = items.columns[: items.columns.index("available") + 1] if "available" in items.columns else items.columns
    return marked.select(*before, "is_cold", *[c for c in items.columns if c not in before and c != "is_cold"])


def split_counts(split: pl.DataFrame, items: pl.DataFrame) -> dict[str, int]:
    """Rows per split and the number of cold items, for the manifest."""
    per_split = dict(split.group_by("split").len().iter_rows())
    counts = {name: int(per_split.get(name, 0)) for name in SPLITS}
    counts["cold_items"] = int(items["is_cold"].sum())
    return counts
