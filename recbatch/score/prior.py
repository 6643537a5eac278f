"""The popularity prior: what is popular *now*, added to the model's logits at ranking time.

The two-tower's score is a cosine between unit vectors, trained as logits
``cos / model.temperature``. One direction per user on a sphere is a poor
place to store "how many people pick this item right now": it is shared by
every user, it drifts daily, and a user with no history (a newcomer) has
nothing else to rank by. So ranking adds it back as a prior (logit adjustment):

    rank by   cos(u, i) / temperature + weight * log p_now(i)
    p_now(i)  = (c_i + pseudo_count) / sum_j (c_j + pseudo_count)
    c_i       = sum over interactions with i of 0.5 ** (age_days / half_life_days)

where age is measured from the newest interaction, so yesterday's clicks
count fully and last year's fade; ``pseudo_count`` smooths the small counts.
Items nobody has picked yet (new, cold items) have no count to go on: they
get the ``new_item_quantile`` quantile of the picked items' priors (0.5, the
median item, by default: neither buried nor pushed; higher is a freshness
boost), and their cosine places them.

The prior is folded into the vectors, so the exact top-K kernel runs
unchanged on one more dimension:

    users [U, D] -> [U, D + 1] with temperature * weight appended
    items [N, D] -> [N, D + 1] with log p_now appended
    <user', item'> = cos(u, i) + temperature * weight * log p_now(i)
                   = temperature * (the adjusted logit): the same order

Config: ``score.popularity_prior_weight`` (0 = off),
``score.popularity_half_life_days`` (unset = all-time counts),
``score.popularity_pseudo_count`` and ``score.popularity_new_item_quantile``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch.config import ScoreConfig
from recbatch.data.split import days_before_newest


def log_popularity(
    interactions: pl.LazyFrame,
    item_ids: pa.Array,
    half_life_days: float | None,
    pseudo_count: float,
    new_item_quantile: float = 0.5,
) -> np.ndarray:
    """log p_now(i) for `item_ids` [N] (float32), from ``item_id, ts`` rows."""
    if half_life_days is None:
        weight = pl.lit(1.0, dtype=pl.Float64)
    else:
        weight = 0.5 ** (days_before_newest() / half_life_days)
    counts = (
        interactions.select("item_id", weight.alias("weight"))  # ages from the newest row overall, not per item
        .group_by("item_id")
        .agg(pl.col("weight").sum().alias("count"), pl.len().alias("picks"))
    )
    catalog = pl.DataFrame({"item_id": pl.Series(item_ids)}).lazy()
    table = (
        catalog.join(counts, on="item_id", how="left", maintain_order="left")
        .select(pl.col("count").fill_null(0.0), pl.col("picks").fill_null(0) > 0)
        .collect(engine="streaming")  # per item: the interactions stream through, never all in memory
    )
    c, picked = table["count"].to_numpy(), table["picks"].to_numpy()  # [N], [N]
    smoothed = c + pseudo_count
    prior = np.log(smoothed / smoothed.sum())  # [N]
    if picked.any():
        prior[~picked] = np.quantile(prior[picked], new_item_quantile)
    return prior.astype(np.float32)


def prior_column(cfg: ScoreConfig, interactions: pl.LazyFrame, item_ids: pa.Array) -> np.ndarray | None:
    """The items' extra dimension [N] under `cfg`, or None when the prior is off."""
    if cfg.popularity_prior_weight == 0:
        return None
    return log_popularity(
        interactions, item_ids, cfg.popularity_half_life_days, cfg.popularity_pseudo_count,
        cfg.popularity_new_item_quantile,
    )


def user_column_value(cfg: ScoreConfig, temperature: float) -> float:
    """The users' extra dimension: ``temperature * weight`` (see the module docstring)."""
    return float(temperature * cfg.popularity_prior_weight)


def append_column(matrix: np.ndarray, values: float | np.ndarray) -> np.ndarray:
    """[M, D] -> [M, D + 1], contiguous, with `values` (one number, or [M]) as the last column."""
    column = np.broadcast_to(np.asarray(values, dtype=matrix.dtype), (matrix.shape[0],)).reshape(-1, 1)
    return np.ascontiguousarray(np.concatenate([matrix, column], axis=1))


def with_prior(
    users: np.ndarray, items: np.ndarray, prior: np.ndarray | None, user_value: float
) -> tuple[np.ndarray, np.ndarray]:
    """([U, D + 1], [N, D + 1]) with the prior folded in; the inputs unchanged when it is off."""
    if prior is None:
        return users, items
    return append_column(users, user_value), append_column(items, prior)
