"""Full-ranking offline metrics, computed with polars from a recommendations run.

Every metric ranks against the *whole* catalog (the run's top-K lists are exact
top-K over all items), never against a sampled set of negatives: sampled
metrics are known to disagree with full-ranking ones and can even flip model
order (Krichene & Rendle, 2020).

Definitions, for a user ``u`` with held-out item set ``T_u`` (distinct items,
``n_u = |T_u|``) and a recommended list whose item at rank ``r`` (1-based) is a
*hit* when it is in ``T_u``:

- ``precision@K`` = hits@K / K
- ``recall@K``    = hits@K / min(K, n_u).  Denominator capped at K on purpose,
  so a perfect ranker scores 1.0 at every K (with leave-last-5, plain
  hits / n_u could never exceed 0.2 at K=1). It equals plain recall whenever
  n_u <= K.
- ``hit_rate@K``  = 1 if any hit in the top K else 0
- ``mrr@K``       = 1 / rank of the first hit if that rank <= K else 0
- ``ndcg@K``      = DCG@K / IDCG@K with binary gains, DCG = sum over hits of
  1/log2(r + 1), IDCG = the DCG of min(K, n_u) hits at ranks 1..min(K, n_u)
- ``map@K``       = (sum over hits at rank r <= K of precision@r) / min(K, n_u)

Each is averaged over *every* user with at least one held-out item, so a user
absent from the run (or with an empty list) counts as 0. The same metrics are
computed on two slices of the held-out interactions: ``cold`` (items whose
``is_cold`` is true: no training interaction) and ``warm`` (the rest), each
averaged over the users who have at least one held-out item in that slice.

Beyond accuracy, over the lists of the evaluated users, at each K in ``ks``:

- ``coverage@K``       distinct recommended items / items in the catalog
- ``gini@K``           Gini coefficient of how often each catalog item is
  recommended (0: every item equally often; 1: one item takes all slots)
- ``avg_popularity@K`` mean number of history interactions of the recommended
  items (history = all non-held-out interactions)
- ``seen_share@K``     share of recommended slots the user already interacted
  with in the history (0 whenever seen items are filtered)

Memory stays bounded by the held-out split, not by the run: the run is read
lazily, exploded to (user, item, rank) and joined against the held-out pairs
by the streaming engine; only the hits (at most one row per held-out
interaction) and per-item exposure counts are ever materialised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recbatch import folders
from recbatch.errors import DataValidationError
from recbatch.fs import Location, as_location
from recbatch.storage import MANIFEST

RANKING_METRICS: tuple[str, ...] = ("precision", "recall", "hit_rate", "mrr", "ndcg", "map")
BEYOND_METRICS: tuple[str, ...] = ("coverage", "gini", "avg_popularity", "seen_share")
SLICES: tuple[str, ...] = ("all", "cold", "warm")
CURVE_MAX_K = 100  # metric@K curves are reported for K = 1..CURVE_MAX_K
POPULARITY_BINS = 10  # catalog items in equal-size bins, most popular first

_STREAMING = "streaming"
_SMALL = "force_right"  # join build side: the held-out / history side, not the exploded run


@dataclass
class EvalResult:
    """Everything measured for one run: curves per slice plus beyond-accuracy figures."""

    name: str
    users: dict[str, int]  # slice -> users averaged over
    curves: dict[str, dict[str, list[float]]]  # slice -> metric -> values at K = 1..max_k
    beyond: dict[str, float]  # "coverage@10" -> value
    popularity_bins: list[float]  # share of top-max(ks) slots per item-popularity bin
    ks: list[int] = field(default_factory=list)

    @property
    def max_k(self) -> int:
        return len(next(iter(self.curves["all"].values())))

    def at(self, metric: str, k: int, slice_: str = "all") -> float:
        """One ranking metric at one cut-off, e.g. ``at("ndcg", 10)``."""
        return self.curves[slice_][metric][k - 1]

    def metrics(self) -> dict[str, float]:
        """Flat ``{"ndcg@10": .., "cold/recall@10": .., "coverage@10": ..}`` for manifests and the gate."""
        flat: dict[str, float] = {}
        for slice_ in SLICES:
            prefix = "" if slice_ == "all" else f"{slice_}/"
            for metric in RANKING_METRICS:
                for k in self.ks:
                    flat[f"{prefix}{metric}@{k}"] = self.at(metric, k, slice_)
        flat.update(self.beyond)
        return flat

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ks": self.ks,
            "users": self.users,
            "metrics": self.metrics(),
            "curves": self.curves,
            "popularity_bins": self.popularity_bins,
        }


# --------------------------------------------------------------------------- inputs


def scan_recommendations(run_dir: str | Path | Location) -> pl.LazyFrame:
    """A recommendations folder as one frame.

    A folder recbatch wrote (it has ``_manifest.json``; on an object store,
    every folder) is read through the reader contract: exactly the files its
    manifest names, pinned, so a run republished meanwhile is never read half.
    A local folder of Parquet files from another system (no manifest) is read as listed.
    """
    location = as_location(run_dir)
    if location.is_object_store or (Path(location.path) / MANIFEST).exists():
        return pl.from_arrow(folders.read_parquet_folder(location)).lazy()
    run_dir = Path(location.path)
    parts = sorted(run_dir.glob("*.parquet"))
    if not parts:
        raise DataValidationError(f"{run_dir}: no Parquet files: not a recommendations run")
    return pl.scan_parquet(parts)


def validate_recommendations(recs: pl.LazyFrame, source: str) -> None:
    """Reject lists that repeat an item, and users listed twice: both would inflate hits."""
    schema = recs.collect_schema()
    for column in ("user_id", "item_ids"):
        if column not in schema:
            raise DataValidationError(f"{source}: missing column '{column}' (have {list(schema)})")
    duplicated_items = (
        recs.filter(pl.col("item_ids").list.n_unique() < pl.col("item_ids").list.len())
        .select("user_id", "item_ids")
    )
    duplicated_users = recs.group_by("user_id").agg(rows=pl.len()).filter(pl.col("rows") > 1)
    bad_items, bad_users = pl.collect_all(
        [duplicated_items, duplicated_users], engine=_STREAMING
    )
    if bad_items.height:
        examples = [
            f"user {row['user_id']}: {_first_repeat(row['item_ids'])!r}"
            for row in bad_items.head(3).iter_rows(named=True)
        ]
        raise DataValidationError(
            f"{source}: column 'item_ids' repeats an item in {bad_items.height} user list(s), "
            f"e.g. {'; '.join(examples)}"
        )
    if bad_users.height:
        raise DataValidationError(
            f"{source}: column 'user_id' has {bad_users.height} user(s) on more than one row, "
            f"e.g. {bad_users['user_id'].head(3).to_list()}"
        )


def _first_repeat(items: list[Any]) -> Any:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None  # pragma: no cover - only called on lists with a repeat


def _check_id_types(recs: pl.LazyFrame, heldout: pl.LazyFrame, source: str) -> None:
    """A run keyed by strings cannot be joined to an int snapshot: say so plainly."""
    rec_schema, truth_schema = recs.collect_schema(), heldout.collect_schema()
    pairs = (
        ("user_id", rec_schema["user_id"], truth_schema["user_id"]),
        ("item_ids", rec_schema["item_ids"].inner, truth_schema["item_id"]),  # type: ignore[union-attr]
    )
    for column, rec_type, truth_type in pairs:
        if rec_type.is_integer() != truth_type.is_integer():
            raise DataValidationError(
                f"{source}: column '{column}' holds {rec_type} ids but the held-out split has {truth_type}"
            )


# --------------------------------------------------------------------------- core


def evaluate(
    recs: pl.LazyFrame,
    heldout: pl.LazyFrame,
    history: pl.LazyFrame,
    items: pl.LazyFrame,
    *,
    ks: list[int],
    name: str = "run",
    source: str = "recommendations",
    max_k: int = CURVE_MAX_K,
    popularity: pl.LazyFrame | None = None,
) -> EvalResult:
    """Score one run's lists against held-out interactions.

    recs:    user_id, item_ids (list, best first)  -- the run
    heldout: user_id, item_id                       -- the truth (test or validation rows)
    history: user_id, item_id                       -- interactions before the held-out ones
    items:   item_id [, is_cold, available]         -- the catalog
    popularity: item_id, popularity (UInt32)        -- history rows per item, counted elsewhere; then
                                                       `history` need hold only the evaluated users' rows
    """
    item_type = recs.collect_schema().get("item_ids")
    if isinstance(item_type, pl.Array):  # fixed-size lists (e.g. from numpy) read like plain ones
        recs = recs.with_columns(pl.col("item_ids").cast(pl.List(item_type.inner)))
    validate_recommendations(recs, source)
    _check_id_types(recs, heldout, source)
    max_k = max(max_k, *ks)
    ks = sorted(set(ks))

    catalog = _catalog(items)
    truth = (
        heldout.select("user_id", "item_id")
        .unique()
        .join(catalog.select("item_id", "is_cold"), on="item_id", how="left")
        .with_columns(pl.col("is_cold").fill_null(False))
    )
    # Joins hash their right side (held-out pairs, history pairs: bounded by the
    # split) and stream the exploded lists through it, never the other way round.
    evaluated = recs.join(truth.select("user_id").unique(), on="user_id", how="semi", build_side=_SMALL)
    ranked = _explode(evaluated, max_k)
    hits = ranked.join(truth, on=["user_id", "item_id"], how="inner", build_side=_SMALL)
    if popularity is None:
        popularity = history.group_by("item_id").agg(popularity=pl.len())
    exposure = (
        ranked.filter(pl.col("rank") <= ks[-1])
        .group_by("item_id")
        .agg([(pl.col("rank") <= k).sum().alias(f"n@{k}") for k in ks])
    )
    # Only the evaluated users' history can hold a seen item: a slice of users (the gate's) then
    # hashes its own pairs, not every interaction of the snapshot.
    evaluated_history = history.select("user_id", "item_id").join(
        truth.select("user_id").unique(), on="user_id", how="semi", build_side=_SMALL)
    seen = (
        ranked.filter(pl.col("rank") <= ks[-1])
        .join(evaluated_history.unique(), on=["user_id", "item_id"], how="semi", build_side=_SMALL)
        .select([(pl.col("rank") <= k).sum().alias(f"seen@{k}") for k in ks])
    )
    # No common-subplan elimination: it would cache the exploded run (users x K rows)
    # in memory to share it; streaming it once per query keeps memory bounded.
    truth_df, hits_df, catalog_df, exposure_df, seen_df, popularity_df = pl.collect_all(
        [truth, hits, catalog, exposure, seen, popularity], engine=_STREAMING,
        optimizations=pl.QueryOptFlags(comm_subplan_elim=False),
    )

    users: dict[str, int] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    for slice_ in SLICES:
        slice_truth, slice_hits = _slice(truth_df, slice_), _slice(hits_df, slice_)
        users[slice_] = slice_truth["user_id"].n_unique()
        curves[slice_] = _ranking_curves(slice_hits, slice_truth, users[slice_], max_k)

    item_stats = catalog_df.join(exposure_df, on="item_id", how="left").join(
        popularity_df, on="item_id", how="left"
    ).fill_null(0)
    beyond = _beyond_accuracy(item_stats, seen_df, ks)
    bins = _popularity_bins(item_stats, f"n@{ks[-1]}")
    return EvalResult(
        name=name, users=users, curves=curves, beyond=beyond, popularity_bins=bins, ks=ks
    )


def _catalog(items: pl.LazyFrame) -> pl.LazyFrame:
    """Catalog items that can be recommended, with a boolean is_cold (False if unknown)."""
    schema = items.collect_schema()
    catalog = items
    if "available" in schema:
        catalog = catalog.filter(pl.col("available").fill_null(True))
    is_cold = pl.col("is_cold").fill_null(False) if "is_cold" in schema else pl.lit(False)
    return catalog.select("item_id", is_cold.alias("is_cold"))


def _explode(recs: pl.LazyFrame, max_k: int) -> pl.LazyFrame:
    """One row per recommended slot: user_id, item_id, rank (1-based), rank <= max_k."""
    return (
        recs.select(
            "user_id",
            pl.col("item_ids").list.head(max_k).alias("item_id"),
            pl.int_ranges(1, pl.col("item_ids").list.head(max_k).list.len() + 1).alias("rank"),
        )
        .explode(["item_id", "rank"], keep_nulls=False)
        .filter(pl.col("item_id").is_not_null())
    )


def _slice(frame: pl.DataFrame, slice_: str) -> pl.DataFrame:
    if slice_ == "all":
        return frame
    return frame.filter(pl.col("is_cold") == (slice_ == "cold"))


def _ranking_curves(
    hits: pl.DataFrame, truth: pl.DataFrame, users: int, max_k: int
) -> dict[str, list[float]]:
    """Every ranking metric at K = 1..max_k, as sums over hit rows.

    Each metric is a per-user sum of per-hit terms, so the mean over users is
    (sum over all hits of the term) / users, and no per-user table at every K
    is ever built. A hit's term at cut-off K depends on its rank r, its order
    among the user's hits (hit_no: 1 for the first hit) and n = |T_u|.
    """
    if users == 0:
        return {m: [0.0] * max_k for m in RANKING_METRICS}
    sizes = truth.group_by("user_id").agg(n=pl.len())
    idcg = pl.DataFrame(
        {"cap": range(max_k + 1), "idcg": _ideal_dcg(max_k)},
        schema={"cap": pl.Int64, "idcg": pl.Float64},
    )
    k_frame = pl.DataFrame({"k": range(1, max_k + 1)}, schema={"k": pl.Int64})
    per_k = (
        hits.lazy()
        .join(sizes.lazy(), on="user_id")
        .with_columns(hit_no=pl.col("rank").rank("ordinal").over("user_id").cast(pl.Int64))
        .join(k_frame.lazy(), how="cross")
        .filter(pl.col("rank") <= pl.col("k"))
        .with_columns(cap=pl.min_horizontal("k", "n").cast(pl.Int64))
        .join(idcg.lazy(), on="cap")
        .group_by("k")
        .agg(
            precision=(1.0 / pl.col("k")).sum(),
            recall=(1.0 / pl.col("cap")).sum(),
            hit_rate=(pl.col("hit_no") == 1).sum().cast(pl.Float64),
            mrr=pl.when(pl.col("hit_no") == 1).then(1.0 / pl.col("rank")).otherwise(0.0).sum(),
            ndcg=(1.0 / ((pl.col("rank") + 1).log(2) * pl.col("idcg"))).sum(),
            map=(pl.col("hit_no") / pl.col("rank") / pl.col("cap")).sum(),
        )
    )
    table = (
        k_frame.lazy()
        .join(per_k, on="k", how="left")
        .fill_null(0.0)
        .sort("k")
        .with_columns([(pl.col(m) / users) for m in RANKING_METRICS])
        .collect()
    )
    return {m: table[m].to_list() for m in RANKING_METRICS}


def _ideal_dcg(max_k: int) -> list[float]:
    """IDCG of m hits at ranks 1..m, for m = 0..max_k."""
    out = [0.0]
    for rank in range(1, max_k + 1):
        out.append(out[-1] + 1.0 / math.log2(rank + 1))
    return out


def _beyond_accuracy(item_stats: pl.DataFrame, seen: pl.DataFrame, ks: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    catalog_size = item_stats.height
    for k in ks:
        exposure = item_stats[f"n@{k}"]
        slots = int(exposure.sum())
        out[f"coverage@{k}"] = float((exposure > 0).sum() / catalog_size) if catalog_size else 0.0
        out[f"gini@{k}"] = gini(exposure.to_list())
        out[f"avg_popularity@{k}"] = (
            float((exposure * item_stats["popularity"]).sum() / slots) if slots else 0.0
        )
        out[f"seen_share@{k}"] = float(seen[f"seen@{k}"][0] / slots) if slots else 0.0
    return out


def gini(counts: list[float]) -> float:
    """Gini coefficient of non-negative counts (0 = perfectly even, ->1 = concentrated).

    G = sum_i (2i - n - 1) x_(i) / (n * sum x), with x sorted ascending, i = 1..n.
    """
    n, total = len(counts), float(sum(counts))
    if n == 0 or total == 0:
        return 0.0
    ordered = sorted(counts)
    return sum((2 * i - n - 1) * x for i, x in enumerate(ordered, start=1)) / (n * total)


def _popularity_bins(item_stats: pl.DataFrame, exposure_column: str) -> list[float]:
    """Share of recommended slots per popularity bin (bin 0 = the most popular tenth)."""
    slots = item_stats[exposure_column].sum()
    if item_stats.height == 0 or slots == 0:
        return [0.0] * POPULARITY_BINS
    binned = (
        item_stats.sort(["popularity", "item_id"], descending=[True, False])
        .with_row_index("position")
        .with_columns(bin=(pl.col("position") * POPULARITY_BINS // item_stats.height))
        .group_by("bin")
        .agg(pl.col(exposure_column).sum())
    )
    by_bin = dict(zip(binned["bin"].to_list(), binned[exposure_column].to_list()))
    return [by_bin.get(b, 0) / slots for b in range(POPULARITY_BINS)]


# --------------------------------------------------------------------------- snapshot glue


def heldout_and_history(snapshot: Any, split: str = "test") -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """The held-out rows of `split` and the history a model could have seen before them.

    Testing on ``test``: history = train + validation. Validating (hyper-parameter
    search) on ``validation``: history = train only.
    """
    all_rows = snapshot.split()
    return all_rows.filter(pl.col("split") == split), all_rows.filter(pl.col("split").is_in(history_splits(split)))


def history_splits(split: str) -> tuple[str, ...]:
    """The splits before held-out `split`: train + validation before ``test``, train before ``validation``."""
    if split not in ("test", "validation"):
        raise ValueError(f"evaluate on 'test' or 'validation', not {split!r}")
    return ("train", "validation") if split == "test" else ("train",)


def evaluate_run(
    run_dir: str | Path | Location,
    snapshot: Any,
    *,
    ks: list[int],
    split: str = "test",
    name: str | None = None,
) -> EvalResult:
    """Evaluate a recommendations folder (on either kind of root) on a snapshot's held-out split."""
    run_dir = as_location(run_dir)
    heldout, history = heldout_and_history(snapshot, split)
    return evaluate(
        scan_recommendations(run_dir),
        heldout,
        history,
        snapshot.items(),
        ks=ks,
        name=name or run_dir.name,
        source=str(run_dir),
    )
