"""The popularity prior: hand-computed values, and that folding it into the vectors ranks by the adjusted logit."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from recbatch.config import Config
from recbatch.score.kernel import topk
from recbatch.score.prior import log_popularity, prior_column, user_column_value, with_prior

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def rows(*events: tuple[int, float]) -> pl.LazyFrame:
    """(item_id, days before NOW) per interaction."""
    return pl.DataFrame({
        "item_id": [i for i, _ in events],
        "ts": [NOW - dt.timedelta(days=d) for _, d in events],
    }).lazy()


def test_counts_fade_with_their_half_life_and_unpicked_items_get_the_median():
    events = rows((1, 0), (1, 100), (2, 0), (3, 200), (3, 200), (3, 200))
    got = log_popularity(events, pa.array([1, 2, 3, 4]), half_life_days=100, pseudo_count=1.0)
    counts = [1 + 0.5, 1.0, 3 * 0.25]  # items 1..3, each + pseudo-count 1 below
    smoothed = [c + 1 for c in counts] + [1.0]
    want = [math.log(s / sum(smoothed)) for s in smoothed[:3]]
    want.append(sorted(want)[1])  # item 4 (never picked): the median picked item's prior
    assert got.tolist() == pytest.approx(want, rel=1e-6)

    fresh = log_popularity(events, pa.array([1, 2, 3, 4]), 100, 1.0, new_item_quantile=0.9)
    assert fresh[3] == pytest.approx(np.quantile(want[:3], 0.9)) and fresh[:3] == pytest.approx(got[:3])

    all_time = log_popularity(events, pa.array([1, 2, 3, 4]), half_life_days=None, pseudo_count=1.0)
    assert np.argsort(-all_time[:3]).tolist() == [2, 0, 1]  # item 3 leads on raw counts ...
    assert np.argsort(-got[:3]).tolist() == [0, 1, 2]  # ... and trails once its picks are 200 days old


def test_folded_vectors_rank_by_cosine_over_temperature_plus_weighted_log_prior():
    rng = np.random.default_rng(0)
    users = rng.standard_normal((50, 8)).astype(np.float32)
    items = rng.standard_normal((300, 8)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    prior = np.log(rng.dirichlet(np.full(300, 0.3)) + 1e-9).astype(np.float32)
    cfg = Config().with_overrides({"score.popularity_prior_weight": 0.7}).score
    temperature = 0.05
    u, v = with_prior(users, items, prior, user_column_value(cfg, temperature))
    assert u.shape == (50, 9) and v.shape == (300, 9)

    idx, _ = topk(u, v, 10)
    logits = users @ items.T / temperature + 0.7 * prior  # [U, N], the adjusted logit
    want = np.argsort(-logits, axis=1, kind="stable")[:, :10]
    assert (idx == want).mean() > 0.99  # float32 near-ties aside, the same order
    plain, _ = topk(users, items, 10)
    assert (plain != idx).any()  # the prior moved some items


def test_off_by_default_and_a_no_op_when_off():
    cfg = Config().score
    assert cfg.popularity_prior_weight == 0.0
    assert prior_column(cfg, rows((1, 0)), pa.array([1, 2])) is None
    users, items = np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)
    assert with_prior(users, items, None, 0.0) == (users, items)
