"""How far an item is pushed into real users' lists: the yardstick of an injected-profile attack.

Exposure@K of an item = the share of real users with the item in their
top-K. An attack's *gain* is its target's exposure with the fake profiles
minus without them; a defence is judged by how much of that gain it removes
and by what it costs real users' accuracy (NDCG@K), both measured on the same
real users (bench/attacks.py).
"""

from __future__ import annotations

from typing import Any

import polars as pl


def target_exposure(recs: pl.LazyFrame, target: Any, *, k: int = 10, real_users: pl.Series) -> float:
    """Share of `real_users` whose top-`k` in `recs` (user_id, item_ids) holds `target` (absent users: no)."""
    if real_users.len() == 0:
        raise ValueError("no real users to measure exposure on")
    hits = (
        recs.filter(pl.col("user_id").is_in(real_users.implode()))
        .select(pl.col("item_ids").list.head(k).list.contains(target).sum())
        .collect()
        .item()
    )
    return float(hits or 0) / real_users.n_unique()
