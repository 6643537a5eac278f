"""The one way to rank users against the catalog: which items a user may receive, and the best K of them.

    items ──eligible_items──▶ Catalog (sorted by id, eligible [N])
    history + score.blocklist ──user_exclusions──▶ seen, blocked (catalog positions per user)
    user vectors + Catalog (or one item shard of it) + seen/blocked ──rank──▶ top-K positions, scores
    a score block [B, N] (a model that is not an inner product) + seen/blocked ──rank_scores──▶ the same

The scoring stage (``score/stage.py``: its ``ScoringWorker`` actors, one item
shard each), the holdout evaluation (``eval/holdout.py``: the whole catalog
at once) and the baselines the gate and the report compare with
(``eval/baselines.py``) all rank through these functions, so the offline
metrics measure the lists that are published, and every model is cut by the
same rules. The eligibility rules are decided here and nowhere else:

* for every user: the snapshot lists the item, ``available`` is not false
  (with ``score.filter_unavailable``), no global ``score.blocklist`` row names it;
* per user: the items of the user's history (with ``score.filter_seen``) and the
  user's own blocklist rows.

Only this module calls the top-K kernel (``score/kernel.py``) for ranking
(``tests/test_ranking_rules.py`` fails when another module imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recbatch.config import ScoreConfig
from recbatch.errors import DataValidationError, UsageError
from recbatch.fs import Location
from recbatch.runtime import cuda_available, resolve_precision
from recbatch.score.kernel import PAD_INDEX, PAD_SCORE, topk

SEEN = "seen"  # list<int64>: catalog positions the user interacted with (sorted)
Positions = pa.ChunkedArray | pa.Array  # list<int64>, one row per user: catalog positions (seen, blocked)
BLOCKED = "blocked"  # list<int64>: catalog positions blocklisted for this user


@dataclass(frozen=True)
class Catalog:
    """Items sorted by id: position i is item ``ids[i]`` with vector ``vectors[i]``."""

    ids: pa.Array  # [N]
    vectors: np.ndarray  # [N, D] float32
    eligible: np.ndarray  # [N] bool: listed, available and not globally blocked
    prior: np.ndarray | None = None  # [N] float32 log popularity now (score.popularity_prior_weight > 0)

    @property
    def size(self) -> int:
        return len(self.ids)


def catalog_of(
    snapshot: Any, ids: pa.Array, vectors: np.ndarray, cfg: ScoreConfig, source: str | Path | Location
) -> Catalog:
    """Item vectors (of `source`, for messages) sorted by id, with the items every user may receive."""
    check_item_vectors(vectors, source, ids)
    order = pc.sort_indices(ids).to_numpy()  # ties in the kernel break by position, so by id
    ids, vectors = ids.take(pa.array(order)), np.ascontiguousarray(vectors[order])
    return Catalog(ids=ids, vectors=vectors, eligible=eligible_items(snapshot, ids, cfg))


def eligible_items(snapshot: Any, item_ids: pa.Array, cfg: ScoreConfig) -> np.ndarray:
    """[N] bool over `item_ids`: the snapshot lists the item, ``available`` is not false (with
    ``score.filter_unavailable``) and no global blocklist row names it."""
    names = snapshot.items().collect_schema().names()
    columns = ["item_id"] + (["available"] if "available" in names else [])
    listed = snapshot.items().select(columns).collect()
    catalog = pl.DataFrame({"item_id": pl.Series(item_ids), "position": np.arange(len(item_ids))})
    merged = catalog.join(listed.with_columns(listed_=pl.lit(True)), on="item_id", how="left").sort("position")
    eligible = merged["listed_"].fill_null(False).to_numpy()
    if cfg.filter_unavailable and "available" in columns:
        eligible &= merged["available"].fill_null(True).to_numpy()
    blocked_globally, _ = read_blocklist(cfg, snapshot)
    if blocked_globally is not None:
        eligible &= ~catalog["item_id"].is_in(blocked_globally.implode()).to_numpy()
    return eligible.astype(bool)


def user_exclusions(
    history: pl.LazyFrame, users: pl.LazyFrame, item_ids: pa.Array, cfg: ScoreConfig, snapshot: Any
) -> pl.LazyFrame:
    """``user_id, seen, blocked`` for each row of `users` (in their order; empty lists when none).

    ``seen``: catalog positions of the items in the user's `history` rows (every
    interaction when serving, the rows before the held-out ones when evaluating);
    ``blocked``: positions the per-user rows of ``score.blocklist`` remove. Whether
    ``seen`` is filtered is ``rank``'s decision (``score.filter_seen``): the lists are
    kept either way, for the explanations.
    """
    positions = pl.DataFrame({"item_id": pl.Series(item_ids), "position": np.arange(len(item_ids))}).lazy()
    ids = users.select("user_id")

    def positions_of(rows: pl.LazyFrame, name: str) -> pl.LazyFrame:
        return (rows.select("user_id", "item_id").join(ids, on="user_id", how="semi")
                .join(positions, on="item_id", how="inner")
                .group_by("user_id").agg(pl.col("position").unique().sort().alias(name)))

    table = ids.join(positions_of(history, SEEN), on="user_id", how="left", maintain_order="left")
    _, per_user = read_blocklist(cfg, snapshot)
    if per_user is not None:
        table = table.join(positions_of(per_user.lazy(), BLOCKED), on="user_id", how="left", maintain_order="left")
    else:
        table = table.with_columns(pl.lit(None, dtype=pl.List(pl.Int64)).alias(BLOCKED))
    empty = pl.lit([], dtype=pl.List(pl.Int64))
    return table.with_columns(pl.col(SEEN, BLOCKED).cast(pl.List(pl.Int64)).fill_null(empty))


def kernel_settings(cfg: ScoreConfig, *, on_driver: bool = False) -> dict[str, Any]:
    """How the top-K kernel runs for `cfg`: device, precision, threads, tiles and kernel.

    The scoring actors hold ``score.gpus_per_actor`` GPUs. Elsewhere (`on_driver`: the
    baselines on the driver, the holdout task on a cluster without GPUs) ranking uses a
    GPU only when the process has one: a head node without a GPU must not fail the night
    of a GPU config.
    """
    on_gpu = cfg.gpus_per_actor > 0 and (not on_driver or cuda_available())
    return {
        "user_block": cfg.user_block,
        "item_tile": cfg.item_tile,
        "device": "cuda" if on_gpu else "cpu",
        "precision": resolve_precision(cfg.precision, on_gpu),
        "threads": max(1, math.ceil(cfg.cpus_per_actor)),
        "kernel": cfg.kernel,
    }


def rank(
    users: np.ndarray,
    items: np.ndarray,
    eligible: np.ndarray,
    seen: pa.ChunkedArray | pa.Array,
    blocked: pa.ChunkedArray | pa.Array,
    *,
    k: int,
    filter_seen: bool,
    offset: int = 0,
    **kernel: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-K catalog positions and scores of `users` [B, D] among `items` [n, D] (catalog positions
    ``offset .. offset + n``: the whole catalog, or one item shard of it).

    `eligible` [n] removes items for everyone; `blocked` (always) and `seen` (with
    `filter_seen`, ``score.filter_seen``) are B lists of catalog positions removed per user.
    `kernel`: ``kernel_settings``. Returns ([B, k] int64 positions, -1 padded; [B, k] float32, -inf padded).
    """
    exclude = _excluded(seen, blocked, filter_seen, len(items), offset)  # [B, n]
    idx, scores = topk(users, items, k, exclude=exclude, item_mask=eligible, **kernel)  # [B, k] each
    return np.where(idx >= 0, idx + offset, PAD_INDEX), scores


def rank_scores(
    scores: np.ndarray, eligible: np.ndarray, seen: Positions, blocked: Positions, *, k: int, filter_seen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """`rank` for a model whose scores are not an inner product: the top-K catalog positions of a
    precomputed score block [B, N] over the whole catalog (a sparse item-item product, TF-IDF).

    The same exclusions as `rank` (`eligible` [N]; `blocked`, and `seen` with `filter_seen`)
    and the kernel's tie rule (score descending, then position, so item id, ascending).
    Returns ([B, k] int64 positions, -1 padded; [B, k] float32, -inf padded).
    """
    import torch  # the baselines' path, never a scoring worker's

    from recbatch.score.torch_kernel import topk_of_scores

    block = torch.from_numpy(np.array(scores, dtype=np.float32))  # [B, N], a copy: filtered entries are overwritten
    exclude = _excluded(seen, blocked, filter_seen, block.shape[1]).tocoo()
    block[torch.from_numpy(exclude.row.astype(np.int64)), torch.from_numpy(exclude.col.astype(np.int64))] = PAD_SCORE
    block[:, torch.from_numpy(~np.asarray(eligible, dtype=bool))] = PAD_SCORE
    return topk_of_scores(block, k)  # [B, k] each


def _excluded(seen: Positions, blocked: Positions, filter_seen: bool, n_cols: int, lo: int = 0) -> sp.csr_matrix:
    """[B, n_cols] CSR of the items removed per user: `blocked` always, `seen` when ``score.filter_seen``."""
    return lists_to_csr([blocked] + ([seen] if filter_seen else []), n_cols, lo=lo)


def lists_to_csr(columns: list[pa.ChunkedArray | pa.Array], n_cols: int, lo: int = 0) -> sp.csr_matrix:
    """Union of list<int64> columns (catalog positions) as a [rows, n_cols] CSR, shifted by -lo.

    Entries outside ``[lo, lo + n_cols)`` belong to other item shards and are dropped.
    """
    parts = []
    for column in columns:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        rows = np.repeat(np.arange(len(column)), np.nan_to_num(lengths).astype(np.int64))
        cols = column.flatten().to_numpy(zero_copy_only=False).astype(np.int64) - lo
        inside = (cols >= 0) & (cols < n_cols)
        parts.append((rows[inside], cols[inside]))
    n_rows = len(columns[0])
    rows = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    cols = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(n_rows, n_cols))


def blocklist_path(cfg: ScoreConfig) -> Path | None:
    """``score.blocklist`` as a path (None when unset); a UsageError naming it when the file is missing."""
    if not cfg.blocklist:
        return None
    path = Path(cfg.blocklist)
    if not path.exists():
        raise UsageError(f"score.blocklist {path} does not exist")
    return path


def read_blocklist(cfg: ScoreConfig, snapshot: Any) -> tuple[pl.Series | None, pl.DataFrame | None]:
    """(globally blocked item ids, per-user ``user_id,item_id`` rows) from ``score.blocklist``.

    A file with only ``item_id`` blocks globally; with ``user_id`` too, rows
    whose user_id is null block globally and the rest per user.
    """
    path = blocklist_path(cfg)
    if path is None:
        return None, None
    table = pl.read_parquet(path)
    if "item_id" not in table.columns:
        raise DataValidationError(f"{path}: blocklist lacks column 'item_id' (has {table.columns})")
    nulls = table.filter(pl.col("item_id").is_null()).height
    if nulls:
        raise DataValidationError(f"{path}: column 'item_id' has {nulls} null rows")
    want = pl.Int64 if snapshot.id_type == "int" else pl.String
    try:
        table = table.with_columns(pl.col(c).cast(want, strict=True) for c in ("item_id", "user_id") if c in table.columns)
    except pl.exceptions.InvalidOperationError as exc:
        raise DataValidationError(f"{path}: blocklist ids do not match the snapshot's id type {snapshot.id_type}: {exc}") from None
    if "user_id" not in table.columns:
        return table["item_id"], None
    return (
        table.filter(pl.col("user_id").is_null())["item_id"],
        table.filter(pl.col("user_id").is_not_null()).select("user_id", "item_id"),
    )


def check_item_vectors(vectors: np.ndarray, folder: str | Path | Location, ids: pa.Array) -> None:
    """Only finite item vectors, and at least one (else nothing can be ranked)."""
    bad = ~np.isfinite(vectors).all(axis=1) if vectors.size else np.zeros(0, bool)
    if bad.any():
        examples = ids.take(pa.array(np.flatnonzero(bad)[:5])).to_pylist()
        raise DataValidationError(
            f"{folder}: column 'embedding' has {int(bad.sum())} rows with NaN/inf values, e.g. item_id {examples}"
        )
    if len(vectors) == 0:
        raise DataValidationError(f"{folder}: no item embeddings to score against")
