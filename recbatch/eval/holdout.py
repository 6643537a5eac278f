"""A model's metrics on the fixed holdout slice: what the nightly gate compares.

The gate needs the *model's* quality, measured the same way every night, so
this does not read the staged lists (those are built from every interaction,
test rows included: ``data.snapshot.serving_events``). Instead, for a fixed
slice of test users (``eval.holdout_users``, picked by a stable hash of the
user id, ``holdout_user_ids``), it

1. takes the item vectors of this model version (the embed stage's output, or
   encodes the catalog here when none is given),
2. encodes each user from the history before the held-out rows only
   (train + validation before test; train before validation),
3. ranks the whole catalog through the scoring stage's own ranking function
   (``score/ranking.py``: the same eligibility, ``score.filter_seen``,
   ``filter_unavailable``, ``blocklist``, kernel settings and popularity prior;
   ``max(eval.ks)`` items), with the pre-test history as what the user has seen, and
4. scores the lists with ``metrics.evaluate`` against the test rows.

So the two-tower goes through the same ranking rules and metric code as the
published lists (``tests/test_score.py::test_published_lists_equal_the_holdout_ranking_of_the_same_inputs``).
Steps 1-3 run in a Ray task (``evaluate_model``), and the slice's user ids and
rows are found by a Ray task per partition (``HeldOutSlice``): the driver scores
the lists it gets back, whose size ``eval.holdout_users`` and ``eval.ks`` bound.

The model and the item vectors may be on either kind of root: the task is
handed the ``Snapshot`` and the folders as ``fs.Location``s (never keys: the
worker resolves its own credentials, recbatch/fs.py) and reads them through
their manifests (``load_artifact``, ``embed.store.read_matrix``, the
``Snapshot`` methods).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch.config import Config, RayConfig
from recbatch.data.partition import user_hash
from recbatch.eval.lists import lists_table
from recbatch.eval.metrics import CURVE_MAX_K, EvalResult, evaluate, history_splits
from recbatch.eval.popularity_tasks import SplitRows, catalog_columns, map_partitions
from recbatch.fs import Location

HOLDOUT_SALT = 0x601D  # the holdout slice's own hash (not the partition hash): any fixed number
HISTORY_SPLITS = {"test": ("train", "validation"), "validation": ("train",)}  # what came before each split


def holdout_user_ids(snapshot: Any, limit: int, split: str = "test", ray: RayConfig | None = None) -> pl.Series:
    """Up to `limit` users of `split`: those with the smallest salted ``user_hash``, sorted by id.

    Stable across runs, versions and partition counts (the hash is defined in
    ``data/partition.py``). Found by one Ray task per user partition (on the
    cluster `ray` reaches; default: a local one), each returning its best
    `limit`: the driver holds those candidates and the slice, never a partition.
    """
    best = pl.DataFrame(schema={"user_id": snapshot.split(split).collect_schema()["user_id"], "key": pl.UInt64})
    task = SliceTask(snapshot, split, limit)
    for candidates in map_partitions(slice_candidates, task, snapshot, ray or RayConfig()):
        best = pl.concat([best, candidates]).sort("key", "user_id").head(limit)
    return best.sort("user_id")["user_id"]


@dataclass(frozen=True)
class SliceTask:
    """What each partition's search for the slice needs."""

    snapshot: Any
    split: str
    limit: int


def slice_candidates(task: SliceTask, partition: int) -> pl.DataFrame:
    """``user_id, key``: the `task.limit` users of one partition's `task.split` with the smallest keys."""
    users = (task.snapshot.scan_partition("split", partition).filter(pl.col("split") == task.split)
             .select("user_id").unique().collect())
    keys = pl.Series("key", user_hash(users["user_id"].to_arrow(), salt=HOLDOUT_SALT), dtype=pl.UInt64)
    return users.with_columns(keys).sort("key", "user_id").head(task.limit)


def catalog_vectors(
    artifact: Any, snapshot: Any, items_dir: str | Path | Location | None, batch: int
) -> tuple[pa.Array, np.ndarray]:
    """(item ids sorted ascending [N], unit item vectors [N, D]) for this model version."""
    from recbatch.embed.store import read_matrix
    from recbatch.model.features import render_item_text

    if items_dir is not None:
        ids, matrix = read_matrix(items_dir, "item_id")
    else:
        items = snapshot.items().sort("item_id").collect()
        texts = render_item_text(items).to_list()
        ids = items["item_id"].to_arrow()
        matrix = np.concatenate([
            artifact.encode_items(texts[s : s + batch], ids[s : s + batch].to_pylist()).numpy()
            for s in range(0, len(texts), batch)
        ])  # [N, D]
    order = np.argsort(ids.to_numpy(zero_copy_only=False), kind="stable")  # ties break by item id
    return ids.take(pa.array(order)), matrix[order]


def holdout_lists(
    cfg: Config,
    snapshot: Any,
    model_dir: str | Path | Location,
    items_dir: str | Path | Location | None,
    users: pl.Series,
    k: int,
    split: str = "test",
) -> pl.DataFrame:
    """Recommendation rows (``recommendations_schema``) for `users`, from the history before `split` only."""
    import torch

    from recbatch.embed.users import HISTORY_INDEX, left_padded, user_inputs
    from recbatch.model.artifact import load_artifact, trained_temperature
    from recbatch.model.features import item_input_hash
    from recbatch.runtime import resolve_precision, resolve_use_gpu

    on_gpu = resolve_use_gpu("auto")
    device = "cuda" if on_gpu else "cpu"
    artifact = load_artifact(model_dir, device=device, precision=resolve_precision(cfg.embed.precision, on_gpu))
    item_ids, items = catalog_vectors(artifact, snapshot, items_dir, cfg.embed.batch_size)  # [N], [N, D]
    catalog = snapshot.items().collect()
    hashes = pa.table({"item_id": catalog["item_id"].to_arrow(), "input_hash": item_input_hash(catalog).to_arrow()})
    features = artifact.user_features.categorical + artifact.user_features.numeric
    is_before = pl.col("split").is_in(HISTORY_SPLITS[split])
    before = snapshot.rows_of("split", users, is_before).lazy()  # eval.holdout_users of them: bounded by config
    inputs = pl.from_arrow(user_inputs(
        snapshot.rows_of("users", users).lazy(), before,
        item_ids, hashes, history_length=artifact.history_length, feature_columns=features,
    ))

    vectors = []  # [U, D] in blocks
    with torch.inference_mode():
        for block in inputs.iter_slices(cfg.embed.batch_size):
            history = block[HISTORY_INDEX].to_arrow().cast(pa.list_(pa.int32()))
            index, mask = left_padded(history, artifact.history_length)  # [b, L] each
            vectors.append(artifact.encode_users(
                torch.from_numpy(items[index]), torch.from_numpy(mask),  # [b, L, D], [b, L]
                block.select(features) if features else None,
            ).numpy())
    user_matrix = np.concatenate(vectors) if vectors else np.zeros((0, items.shape[1]), np.float32)

    temperature = trained_temperature(artifact.card) or cfg.model.temperature
    idx, scores, item_ids = rank_with_history(
        cfg, snapshot, item_ids, items, inputs["user_id"].to_arrow(), user_matrix, before, temperature, k,
        everyone=snapshot.split().filter(is_before),
    )
    return pl.from_arrow(lists_table(inputs["user_id"].to_arrow(), idx, scores, item_ids, artifact.model_version))


def rank_with_history(
    cfg: Config,
    snapshot: Any,
    item_ids: pa.Array,
    items: np.ndarray,
    user_ids: pa.Array,
    user_vectors: np.ndarray,
    history: pl.LazyFrame,
    temperature: float,
    k: int,
    everyone: pl.LazyFrame | None = None,
) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Top-K lists of `user_ids` (vectors [U, D]) over the catalog (`item_ids` [N], `items` [N, D]),
    by the scoring stage's rules (``score/ranking.py``), with `history` as what each user has seen
    and `everyone` (default: `history`) as the rows the popularity prior counts: every user's,
    streamed, when `history` holds only the ranked users' rows.
    Returns (positions [U, k], scores [U, k], catalog ids sorted).
    """
    from recbatch.score.prior import prior_column, user_column_value, with_prior
    from recbatch.score.ranking import catalog_of, kernel_settings, rank, user_exclusions

    catalog = catalog_of(snapshot, item_ids, items, cfg.score, "the holdout catalog")
    users = pl.DataFrame({"user_id": pl.Series(user_ids)}).lazy()
    exclusions = user_exclusions(history, users, catalog.ids, cfg.score, snapshot).collect()
    # the popularity prior, as the scoring stage adds it (recbatch/score/prior.py): [U, D(+1)], [N, D(+1)]
    prior = prior_column(cfg.score, history if everyone is None else everyone, catalog.ids)
    user_vectors, vectors = with_prior(user_vectors, catalog.vectors, prior, user_column_value(cfg.score, temperature))
    idx, scores = rank(
        user_vectors, vectors, catalog.eligible, exclusions["seen"].to_arrow(), exclusions["blocked"].to_arrow(),
        k=k, filter_seen=cfg.score.filter_seen, **kernel_settings(cfg.score, on_driver=True),
    )  # [U, k] each, -1 padded
    return idx, scores, catalog.ids


def evaluate_model(
    cfg: Config,
    snapshot: Any,
    model_dir: str | Path | Location,
    items_dir: str | Path | Location | None = None,
    name: str = "two_tower",
    split: str = "test",
    held_out: HeldOutSlice | None = None,
) -> EvalResult:
    """The model's full metrics on the fixed holdout slice of the snapshot's `split`.

    ``split="validation"`` (history = train only) is for picking scoring settings
    such as the popularity prior without looking at test, as baselines are tuned.
    `held_out`: that slice, already read (``HeldOutSlice.read``), when several models are scored on it.
    """
    held_out = held_out or HeldOutSlice.read(cfg, snapshot, split)
    if held_out.split != split:
        raise ValueError(f"a held-out slice of {held_out.split!r} cannot score lists ranked for {split!r}")
    recs = _holdout_lists_on_a_worker(cfg, snapshot, model_dir, items_dir, held_out.users, max(cfg.eval.ks), split)
    return held_out.evaluate(recs.lazy(), ks=cfg.eval.ks, name=name, source=f"{model_dir} holdout lists")


def _holdout_lists_on_a_worker(
    cfg: Config, snapshot: Any, model_dir: str | Path | Location, items_dir: str | Path | Location | None,
    users: pl.Series, k: int, split: str,
) -> pl.DataFrame:
    """``holdout_lists`` in one Ray task: the model, the item matrix, the histories and the ranking live on a
    worker, and the driver receives the slice's lists (``eval.holdout_users`` x `k` rows: bounded by config).

    The task holds what a scoring actor holds (``score.cpus_per_actor``, and ``score.gpus_per_actor`` when the
    cluster has GPUs; without them it ranks on CPUs, as ``kernel_settings(on_driver=True)`` decides).
    """
    import ray

    from recbatch.runtime import ensure_ray, require_resources

    ensure_ray(cfg.ray)
    require_resources("CPU", cfg.score.cpus_per_actor, "score.cpus_per_actor (the holdout ranking task)")
    has_gpus = ray.cluster_resources().get("GPU", 0) >= cfg.score.gpus_per_actor
    task = ray.remote(num_cpus=cfg.score.cpus_per_actor, num_gpus=cfg.score.gpus_per_actor if has_gpus else 0)
    return ray.get(task(holdout_lists).remote(cfg, snapshot, model_dir, items_dir, users, k, split))


def evaluate_baseline(
    cfg: Config,
    snapshot: Any,
    name: str,
    held_out: HeldOutSlice | None = None,
    tune_users: pl.Series | None = None,
) -> EvalResult:
    """Baseline `name` (e.g. ``most_popular``) on the same fixed test slice as `evaluate_model`.

    Fit on the rows before test and tuned on the validation rows of a fixed
    slice of validation users (``eval.holdout_users``), so the gate can afford it
    every night. `held_out`: the test slice, already read; `tune_users`: the
    validation slice's ids, already found (a round of partition tasks saved when
    several baselines are scored).
    """
    from recbatch.eval.baselines import fit_baseline

    held_out = held_out or HeldOutSlice.read(cfg, snapshot, "test")
    if tune_users is None:
        tune_users = holdout_user_ids(snapshot, cfg.eval.holdout_users, "validation", cfg.ray)
    fitted = fit_baseline(name, snapshot, cfg, tune_users, held_out.users)
    recs = pl.concat([pl.from_arrow(t) for t in fitted.lists(snapshot, max(cfg.eval.ks), held_out.users)])
    return held_out.evaluate(recs.lazy(), ks=cfg.eval.ks, name=name, source=f"{fitted.model_version} holdout lists")


@dataclass(frozen=True)
class HeldOutSlice:
    """What scores lists for the slice of `split`'s users: their held-out rows and history rows, and
    every user's history rows per item (``avg_popularity``).

    Read once by Ray tasks, a partition each (``SplitRows``): the driver holds the slice and per-item
    counts, never the snapshot's interactions. Then any number of lists are scored on it (the model,
    each baseline, each point of a baseline's grid).
    """

    users: pl.Series  # the slice: ``holdout_user_ids``
    split: str  # "test" or "validation"
    heldout: pl.DataFrame  # the slice's rows of `split`
    history: pl.DataFrame  # the slice's rows before them (``history_splits``)
    popularity: pl.DataFrame  # item_id, popularity: every user's history rows per item
    items: pl.LazyFrame  # the catalog

    @classmethod
    def read(cls, cfg: Config, snapshot: Any, split: str) -> HeldOutSlice:
        """The fixed slice of `split` (``holdout_user_ids``: ``eval.holdout_users`` of them)."""
        return cls.of_users(cfg, snapshot, holdout_user_ids(snapshot, cfg.eval.holdout_users, split, cfg.ray), split)

    @classmethod
    def of_users(cls, cfg: Config, snapshot: Any, users: pl.Series, split: str) -> HeldOutSlice:
        """The slice of `users`."""
        catalog = catalog_columns(snapshot.items())
        before = history_splits(split)
        rows = SplitRows(snapshot, (split, *before), None, catalog, cfg.ray).of_users(users)
        counts = SplitRows(snapshot, before, None, catalog, cfg.ray).rows_per_item()
        return cls(
            users, split, rows.filter(pl.col("split") == split), rows.filter(pl.col("split").is_in(before)),
            catalog.select("item_id", popularity=pl.Series(counts).cast(pl.UInt32)),  # pl.len()'s type
            snapshot.items(),
        )

    def evaluate(self, recs: pl.LazyFrame, *, ks: list[int], name: str, source: str,
                 max_k: int = CURVE_MAX_K) -> EvalResult:
        """`recs` scored against the slice's held-out rows (``metrics.evaluate``)."""
        return evaluate(
            recs, self.heldout.lazy(), self.history.lazy(), self.items,
            ks=ks, name=name, source=source, max_k=max_k, popularity=self.popularity.lazy(),
        )


def evaluate_holdout(
    cfg: Config, snapshot: Any, model_dir: str | Path | Location, items_dir: str | Path | Location | None = None
) -> dict[str, float]:
    """Flat metrics for the gate and the run manifest (``{"ndcg@10": ..., "holdout_users": ...}``)."""
    return holdout_metrics(evaluate_model(cfg, snapshot, model_dir, items_dir))


def holdout_metrics(result: EvalResult) -> dict[str, float]:
    """`result` flattened for the gate and the run manifest, with the number of users it averaged over."""
    return {**result.metrics(), "holdout_users": float(result.users["all"])}
