"""Reference recommenders the two-tower model must beat, behind the same output contract.

A model's offline numbers mean little alone: the question is whether it beats
what a simple method gets on the same split. So every baseline here

- trains on the snapshot's training rows only (never the test split),
- picks its hyper-parameters from a small grid by ``eval.gate_metric`` on the
  ``validation`` carve-out (fit on ``train``, rank for validation users),
  then refits on ``train`` + ``validation`` -- everything before the test rows,
  exactly the history the two-tower scores from -- reusing what the chosen fit
  picked on its own (``Baseline.refit_params``: SASRec's epoch count),
- ranks through the scoring stage's own rules (``score/ranking.py``, bound
  to a catalog by `ListRules`: eligibility, ``score.filter_seen``,
  ``filter_unavailable``, ``blocklist``, kernel settings, ties by item id) and
  writes its lists with ``score.writer.write_recommendations``,

so the evaluation reads baselines and the two-tower through one code path, and
a baseline never recommends what the published lists may not hold.

The baselines: ``most_popular``; ``recent_popular`` (interactions weighted by
an exponential decay with their age, the popularity of "now"); ``item_knn`` (cosine item-item neighbours on
the binary user-item matrix, ``implicit``); ``als`` and ``bpr`` (``implicit``,
CPU); ``sasrec`` (self-attentive sequential recommendation, ``eval/sasrec.py``); ``content`` (TF-IDF of the rendered item text, user = mean of the
history's item vectors); and ``random``, the floor.
Collaborative baselines can only rank items with a training interaction, so
cold items are masked for them (``Baseline.placeable``, passed to the ranking
on top of its rules); ``content`` and ``random`` rank every eligible item.
Users with no interaction before the test rows (the temporal protocol's new
users) get the most popular items from every baseline but ``random``.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from recbatch import folders
from recbatch.config import Config, RayConfig, ScoreConfig
from recbatch.errors import UsageError
from recbatch.eval.holdout import HeldOutSlice
from recbatch.eval.lists import lists_table
from recbatch.eval.metrics import evaluate
from recbatch.eval.popularity_tasks import SplitRows, catalog_columns, latest_pairs
from recbatch.fs import Location, as_location
from recbatch.score.ranking import BLOCKED, SEEN, eligible_items, kernel_settings, rank, rank_scores, user_exclusions
from recbatch.score.writer import write_recommendations

log = logging.getLogger(__name__)

IMPLICIT_THREADS = 1  # the dev machine is shared; the fits take seconds on MovieLens-small
USER_BLOCK = 2048  # users ranked per block (bounds the dense score block of item_knn)
NO_ROWS = np.zeros(0, dtype=np.int64)  # the matrix rows of users with no history (newcomers)


# --------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The binary user-item matrix a baseline fits on, with the ids to map back."""

    matrix: sp.csr_matrix  # [U, N] float32, 1 where the user interacted with the item
    user_ids: pl.Series  # row -> user id
    item_ids: pl.Series  # column -> item id: the whole catalog, sorted (ties break by id)
    cold: np.ndarray  # [N] bool: the snapshot's is_cold (no interaction in the train split)
    item_text: list[str]  # [N] rendered item text (title | genres | tags | description)
    age_days: np.ndarray  # [nnz] float64, aligned with matrix.indices: days from the pair's latest ts to the newest row
    sequences: list[np.ndarray]  # per matrix row: the user's item columns in time order, repeats kept
    users_per_item: np.ndarray  # [N] float32: users with a row for the item, counted over every user
    # When the matrix holds only some users (``training_data(users=...)``): where every user's
    # rows are, so popularity still counts everyone, a partition per Ray task.
    everyone: SplitRows | None = None

    @property
    def warm(self) -> np.ndarray:
        """[N] bool: items a collaborative model can place: interacted with, and not cold.

        An item seen only in validation rows is still cold by the snapshot's
        definition, so collaborative baselines leave it out like the
        two-tower's id embedding does, and cold-slice numbers stay comparable.
        """
        return (self.users_per_item > 0) & ~self.cold

    def history(self, rows: np.ndarray) -> pl.LazyFrame:
        """``user_id, item_id`` of the entries of matrix `rows`: what those users interacted with
        before the rows the lists are judged on, so what the seen filter removes."""
        entries = self.matrix[rows].tocoo()
        return pl.DataFrame({
            "user_id": self.user_ids.gather(rows[entries.row]),
            "item_id": self.item_ids.gather(entries.col),
        }).lazy()


def training_data(
    snapshot: Any, splits: list[str], users: pl.Series | None = None, ray: RayConfig | None = None
) -> TrainingData:
    """The matrix of `splits` rows over the snapshot's whole catalog.

    With `users`, only their rows: what ranking them needs when the model is
    popularity (``Baseline.needs_every_user`` false), so the nightly's gate floor
    holds its slice of users, not every interaction. Those rows, their splits' newest
    ``ts`` and the counts of `everyone`'s pairs per item when a model fits are read by Ray tasks
    (``eval/popularity_tasks.py``, on the cluster `ray` reaches; default: a local one).
    """
    from recbatch.model.features import render_item_text

    items = snapshot.items().sort("item_id").collect()
    catalog = catalog_columns(items.lazy())
    before, everyone = snapshot.split().filter(pl.col("split").is_in(splits)), None
    if users is None:
        newest = before.select(pl.col("ts").max()).collect(engine="streaming").item()
    else:  # the newest row, the users' rows and every user's counts: read by tasks
        everyone = SplitRows.of(snapshot, tuple(splits), catalog, ray or RayConfig())
        newest, before = everyone.newest, everyone.of_users(users).lazy()
    pairs = latest_pairs(before, newest)
    rows = pairs.collect(engine="streaming").join(catalog, on="item_id", how="inner")  # streamed: a slice's pairs
    users = rows.select("user_id").unique().sort("user_id").with_row_index("row")
    rows = rows.join(users, on="user_id").sort("row", "col")  # CSR order, so age_days lines up with indices
    in_order = (
        before
        .select("user_id", "item_id", "ts")
        .collect(engine="streaming")
        .join(catalog, on="item_id")
        .join(users, on="user_id")
        .sort("row", "ts", maintain_order=True)
        .group_by("row", maintain_order=True)
        .agg("col")
    )
    sequences = [np.empty(0, dtype=np.int64)] * users.height
    for row, cols in zip(in_order["row"].to_list(), in_order["col"].to_list()):
        sequences[row] = np.asarray(cols, dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.ones(rows.height, dtype=np.float32), (rows["row"].to_numpy(), rows["col"].to_numpy())),
        shape=(users.height, items.height),
    )
    cold = items["is_cold"].fill_null(False).to_numpy() if "is_cold" in items.columns else np.zeros(items.height, bool)
    return TrainingData(
        matrix=matrix,
        user_ids=users["user_id"],
        item_ids=items["item_id"],
        cold=np.asarray(cold, dtype=bool),
        item_text=render_item_text(items).to_list(),
        age_days=rows["age_days"].to_numpy().astype(np.float64),
        sequences=sequences,
        users_per_item=(
            np.asarray(matrix.sum(axis=0), dtype=np.float32).reshape(-1) if everyone is None
            else everyone.per_item(pl.len())
        ),
        everyone=everyone,
    )


@dataclass(frozen=True)
class ListRules:
    """The scoring stage's ranking rules (``score/ranking.py``) bound to one TrainingData's catalog.

    Every baseline ranks through them, so its lists leave out what the published
    lists leave out (``score.filter_seen``, ``filter_unavailable``, ``blocklist``)
    with the same tie rule and kernel settings, and the gate's floor is cut as
    the model is. A model's own limit (``Baseline.placeable``) is passed on top.
    """

    score: ScoreConfig
    snapshot: Any  # whose items and id type the rules read
    eligible: np.ndarray  # [N] bool over TrainingData.item_ids: ranking.eligible_items

    @classmethod
    def of(cls, snapshot: Any, score: ScoreConfig, data: TrainingData) -> ListRules:
        return cls(score, snapshot, eligible_items(snapshot, data.item_ids.to_arrow(), score))

    def exclusions(self, data: TrainingData, user_ids: pl.Series, rows: np.ndarray) -> pl.DataFrame:
        """``user_id, seen, blocked`` for `user_ids` (``ranking.user_exclusions``), the entries of
        their matrix `rows` as what they have seen (`NO_ROWS` for newcomers)."""
        users = pl.DataFrame({"user_id": user_ids}).lazy()
        return user_exclusions(data.history(rows), users, data.item_ids.to_arrow(), self.score, self.snapshot).collect()

    def rank(
        self, users: np.ndarray, items: np.ndarray, placeable: np.ndarray, exclusions: pl.DataFrame, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` columns of users [B, D] x items [N, D] (``ranking.rank``): ([B, k] -1 padded, [B, k] scores)."""
        return rank(
            users, items, self.eligible & placeable, exclusions[SEEN].to_arrow(), exclusions[BLOCKED].to_arrow(),
            k=k, filter_seen=self.score.filter_seen, **kernel_settings(self.score, on_driver=True),
        )

    def rank_scores(
        self, scores: np.ndarray, placeable: np.ndarray, exclusions: pl.DataFrame, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` columns of a score block [B, N] (``ranking.rank_scores``): ([B, k] -1 padded, [B, k] scores)."""
        return rank_scores(
            scores, self.eligible & placeable, exclusions[SEEN].to_arrow(), exclusions[BLOCKED].to_arrow(),
            k=k, filter_seen=self.score.filter_seen,
        )


# --------------------------------------------------------------------------- models


class Baseline:
    """Fit on a TrainingData, then rank items for some of its users.

    Most baselines are inner products of user and item vectors, ranked by the
    scoring stage's ranking (`ListRules.rank`); they implement `vectors`. Others
    override `rank`.
    """

    name: ClassVar[str]
    grid: ClassVar[list[dict[str, Any]]] = [{}]
    collaborative: ClassVar[bool] = True  # cannot place items without a training interaction
    # False: ranking a user needs only that user's rows and per-item counts over everyone
    # (popularity), so an evaluation of a slice of users fits on the slice's matrix.
    needs_every_user: ClassVar[bool] = True

    def __init__(self, seed: int = 0, **params: Any) -> None:
        self.seed = seed
        self.params = params
        self._user_vectors: np.ndarray | None = None  # [U, D]
        self._item_vectors: np.ndarray | None = None  # [N, D]

    def fit(self, data: TrainingData) -> None:
        self._user_vectors, self._item_vectors = self.vectors(data)

    def refit_params(self) -> dict[str, Any]:
        """What this fit chose on its own that the refit on train + validation reuses (default:
        nothing); SASRec's early-stopped epoch count, so the refit does not search for it again."""
        return {}

    def vectors(self, data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def placeable(self, data: TrainingData) -> np.ndarray:
        """[N] bool: the items this model can place at all, a limit on top of the ranking rules:
        a collaborative model has nothing to say about an item without training rows."""
        return data.warm if self.collaborative else np.ones(len(data.item_ids), dtype=bool)

    def rank(
        self, data: TrainingData, rows: np.ndarray, k: int, rules: ListRules, exclusions: pl.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` item columns for matrix `rows` (`exclusions`: theirs, `ListRules.exclusions`):
        ([B, k] -1 padded, [B, k] scores)."""
        assert self._user_vectors is not None and self._item_vectors is not None, "fit first"
        return rules.rank(self._user_vectors[rows], self._item_vectors, self.placeable(data), exclusions, k)

    def popularity(self, data: TrainingData) -> np.ndarray:
        """[N] float32: how popular each item is (users per item), what newcomers are ranked by."""
        return data.users_per_item

    def rank_newcomers(
        self, data: TrainingData, k: int, rules: ListRules, exclusions: pl.DataFrame
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lists for users with no interaction before the test rows (one per `exclusions` row):
        the most popular eligible items, less each one's own blocklist rows.

        Such a user has no row in the matrix, so no factors and no history. Serving
        them the popular items is what a deployed recommender does; leaving them out
        would score them 0 and flatter any model that does serve them (the two-tower
        gives them a vector from its features-only path).
        """
        users = np.ones((exclusions.height, 1), np.float32)  # [B, 1]
        return rules.rank(users, self.popularity(data).reshape(-1, 1), self.placeable(data), exclusions, k)


class Random(Baseline):
    """Uniformly random order: the floor every model must clear."""

    name = "random"
    collaborative = False

    def vectors(self, data):
        rng = np.random.default_rng(self.seed)
        users, items = data.matrix.shape
        return rng.standard_normal((users, 16)), rng.standard_normal((items, 16))

    def rank_newcomers(self, data, k, rules, exclusions):
        """Random lists for them too: the floor stays a floor."""
        users = np.random.default_rng(self.seed + 1).standard_normal((exclusions.height, 16))
        return rules.rank(users, self._item_vectors, self.placeable(data), exclusions, k)


class MostPopular(Baseline):
    """Every user gets the items with the most training interactions."""

    name = "most_popular"
    needs_every_user = False

    def vectors(self, data):
        return np.ones((data.matrix.shape[0], 1)), self.popularity(data).reshape(-1, 1)  # [U, 1], [N, 1]


class RecentPopular(MostPopular):
    """Most popular *now*: each interaction counts 0.5 ** (age / half_life_days).

    Tastes drift over a multi-year log; this is the popularity baseline a
    model that is told the time (``model.example_age_days``) has to beat.
    """

    name = "recent_popular"
    grid = [{"half_life_days": h} for h in (30, 90, 365, 1095)]

    def popularity(self, data):
        half_life = self.params["half_life_days"]
        if data.everyone is not None:
            return data.everyone.per_item((0.5 ** (pl.col("age_days") / half_life)).sum())
        weights = 0.5 ** (data.age_days / half_life)  # [nnz]
        return np.bincount(data.matrix.indices, weights=weights, minlength=data.matrix.shape[1]).astype(np.float32)


class ALS(Baseline):
    """Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008), ``implicit`` CPU."""

    name = "als"
    grid = [
        {"factors": f, "regularization": r, "alpha": a}
        for f, r, a in itertools.product((16, 64), (0.05,), (2.0, 10.0))
    ]

    def vectors(self, data):
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):  # implicit parallelises itself; nested BLAS threads thrash
            model = AlternatingLeastSquares(
                **self.params, iterations=15, random_state=self.seed, num_threads=IMPLICIT_THREADS
            )
            model.fit(data.matrix, show_progress=False)
        return model.user_factors, model.item_factors


class BPR(Baseline):
    """Bayesian personalised ranking (Rendle et al. 2009), ``implicit`` CPU."""

    name = "bpr"
    grid = [
        {"factors": f, "learning_rate": lr, "regularization": 0.01}
        for f, lr in itertools.product((32, 64), (0.01, 0.05))
    ]

    def vectors(self, data):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(
            **self.params, iterations=100, random_state=self.seed, num_threads=IMPLICIT_THREADS
        )
        model.fit(data.matrix, show_progress=False)
        return model.user_factors, model.item_factors  # bias folded in as an extra factor


class SASRecBaseline(Baseline):
    """SASRec (``recbatch/eval/sasrec.py``): self-attention over the user's item sequence, CE over the catalog.

    The sequential reference for a model whose user tower is itself a
    transformer over recent items. The architecture is the paper's; the
    learning rate is picked on validation (on small logs the lower one plateaus
    before early stopping lets it learn the order), the epochs by early stopping
    on the grid's fits (each user's last train item). The refit on train +
    validation trains at most the chosen fit's epoch count (``max_epochs``), still
    keeping its best check on each user's validation item: the epoch search, the
    costly part on a CPU, is paid once per grid point and not again.
    """

    name = "sasrec"
    grid = [{"learning_rate": lr} for lr in (1e-3, 3e-3)]

    def vectors(self, data):
        from recbatch.eval.sasrec import SASRecConfig, fit_sasrec, user_vectors

        model, self.training = fit_sasrec(
            data.sequences, data.matrix.shape[1], SASRecConfig(seed=self.seed, **self.params))
        return user_vectors(model, data.sequences), model.item_vectors().detach().numpy()  # [U, H], [N, H]

    def refit_params(self):
        return {"max_epochs": self.training.best_epochs}


class DenseScoreBaseline(Baseline):
    """Baselines whose scores are a sparse product, ranked one block of users at a time.

    The product ``[B, N]`` is formed densely per block and ranked by the scoring
    stage's rules for a score block (`ListRules.rank_scores`).
    """

    def scores(self, data: TrainingData, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # [B, N]

    def rank(self, data, rows, k, rules, exclusions):
        return rules.rank_scores(self.scores(data, rows), self.placeable(data), exclusions, k)


class ItemKNN(DenseScoreBaseline):
    """Score = sum of cosine similarities to the user's items, `neighbors` kept per item.

    ``implicit`` builds the neighbour matrix; its own recommend() leaks
    filtered items back with score 0 when given a candidate list, so ranking
    goes through `DenseScoreBaseline.rank`.
    """

    name = "item_knn"
    grid = [{"neighbors": n} for n in (20, 100, 400)]

    def fit(self, data: TrainingData) -> None:
        from implicit.nearest_neighbours import CosineRecommender
        from implicit.utils import ParameterWarning

        model = CosineRecommender(K=self.params["neighbors"], num_threads=IMPLICIT_THREADS)
        with warnings.catch_warnings():  # implicit warns about a COO matrix it builds itself
            warnings.simplefilter("ignore", category=ParameterWarning)
            model.fit(data.matrix, show_progress=False)
        self._similarity = model.similarity.tocsr()  # [N, N] sparse

    def scores(self, data, rows):
        return (data.matrix[rows] @ self._similarity).toarray()  # [B, N]


class Content(DenseScoreBaseline):
    """Text only: TF-IDF of the rendered item text; a user is the mean of their items' vectors.

    Scores are cosine-like (unit item rows, averaged profile), so cold items
    compete on their text alone.
    """

    name = "content"
    collaborative = False
    # min_df drops terms (mostly title words) that occur in too few items to link any two of them
    grid = [{"ngrams": 1, "min_df": 1}, {"ngrams": 2, "min_df": 5}, {"ngrams": 2, "min_df": 10}]

    def fit(self, data: TrainingData) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            sublinear_tf=True, ngram_range=(1, self.params["ngrams"]), min_df=self.params["min_df"]
        )
        self._items = vectorizer.fit_transform(data.item_text).astype(np.float32).tocsr()  # [N, V] unit rows

    def scores(self, data, rows):
        from sklearn.preprocessing import normalize

        profile = normalize(data.matrix[rows], norm="l1") @ self._items  # [B, V]: mean of history
        return (profile @ self._items.T).toarray()  # [B, N]


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (Random, MostPopular, RecentPopular, ItemKNN, ALS, BPR, SASRecBaseline, Content)
}


def baseline_class(name: str) -> type[Baseline]:
    if name not in BASELINES:
        raise UsageError(f"unknown baseline '{name}': choose from {', '.join(BASELINES)}")
    return BASELINES[name]


# --------------------------------------------------------------------------- lists


def recommendation_tables(
    model: Baseline, data: TrainingData, rows: np.ndarray, k: int, model_version: str, rules: ListRules
) -> Iterator[pa.Table]:
    """The model's lists for matrix `rows`, one Arrow table per block of users."""
    for start in range(0, len(rows), USER_BLOCK):
        block = rows[start : start + USER_BLOCK]
        users = data.user_ids.gather(block)
        idx, scores = model.rank(data, block, k, rules, rules.exclusions(data, users, block))  # [B, k] each
        yield lists_table(users.to_arrow(), idx, scores, data.item_ids.to_arrow(), model_version)


def newcomer_tables(
    model: Baseline, data: TrainingData, user_ids: pl.Series, k: int, model_version: str, rules: ListRules
) -> Iterator[pa.Table]:
    """Lists for `user_ids`, users absent from the matrix (see `Baseline.rank_newcomers`)."""
    for start in range(0, len(user_ids), USER_BLOCK):
        users = user_ids.slice(start, USER_BLOCK)
        idx, scores = model.rank_newcomers(data, k, rules, rules.exclusions(data, users, NO_ROWS))  # [B, k] each
        yield lists_table(users.to_arrow(), idx, scores, data.item_ids.to_arrow(), model_version)


def users_without_history(snapshot: Any, data: TrainingData) -> pl.Series:
    """Snapshot users (users table or any split) with no row in `data`, sorted."""
    everyone = pl.concat([
        snapshot.users().select("user_id").collect(),
        snapshot.split().select("user_id").unique().collect(),
    ]).unique()
    known = pl.DataFrame({"user_id": data.user_ids})
    return everyone.join(known, on="user_id", how="anti").sort("user_id")["user_id"]


def _cutoff(metric: str) -> int:
    """'ndcg@10' -> 10."""
    try:
        return int(metric.split("@", 1)[1])
    except (IndexError, ValueError):
        raise UsageError(f"eval.gate_metric must look like 'ndcg@10', got {metric!r}") from None


def tune(
    name: str, snapshot: Any, cfg: Config, users: pl.Series | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pick the grid point with the best ``eval.gate_metric`` on the validation split.

    `users` limits the validation users ranked (the gate's fixed slice); None = all.
    Returns (the refit's params: the best point's, plus what its fit chose itself
    (``Baseline.refit_params``), one record per grid point with its validation value).
    """
    cls = baseline_class(name)
    metric = cfg.eval.gate_metric
    if len(cls.grid) == 1:
        return cls.grid[0], []
    if users is None:  # every validation user, against the whole history (streamed here)
        validation, history, popularity = snapshot.split("validation"), snapshot.split("train"), None
    else:  # the slice's rows and every user's counts, read once by Ray tasks for the whole grid
        held = HeldOutSlice.of_users(cfg, snapshot, users, "validation")
        validation, history, popularity = held.heldout.lazy(), held.history.lazy(), held.popularity.lazy()
    if validation.select(pl.len()).collect(engine="streaming").item() == 0:
        return cls.grid[0], []
    data = training_data(snapshot, ["train"], None if cls.needs_every_user else users, cfg.ray)
    val_users = validation.select("user_id").unique().collect(engine="streaming")
    rows = (
        pl.DataFrame({"user_id": data.user_ids}).with_row_index("row")
        .join(val_users, on="user_id", how="semi")["row"].to_numpy()
    )
    k = _cutoff(metric)
    rules = ListRules.of(snapshot, cfg.score, data)
    trials = []
    for params in cls.grid:
        model = cls(seed=cfg.train.seed, **params)
        model.fit(data)
        recs = pl.from_arrow(pa.concat_tables(recommendation_tables(model, data, rows, k, name, rules)))
        result = evaluate(
            recs.lazy(), validation, history, snapshot.items(),
            ks=[k], name=name, source=f"{name} validation lists", max_k=k, popularity=popularity,
        )
        trials.append({"params": params, metric: result.metrics()[metric], "refit": model.refit_params()})
        log.info("%s %s: validation %s = %.4f", name, params, metric, trials[-1][metric])
    best = max(trials, key=lambda t: t[metric])
    return {**best["params"], **best["refit"]}, trials


@dataclass
class FittedBaseline:
    """A baseline tuned on validation and refit on everything before the test rows."""

    model: Baseline
    data: TrainingData
    rules: ListRules  # how its lists are cut: the scoring stage's
    params: dict[str, Any]
    trials: list[dict[str, Any]]  # one record per grid point with its validation value
    model_version: str
    seconds: dict[str, float]  # tune, fit

    def lists(self, snapshot: Any, k: int, users: pl.Series | None = None) -> Iterator[pa.Table]:
        """Lists for `users` (None = every snapshot user); users with no history get the newcomers' list."""
        rows = np.arange(self.data.matrix.shape[0])
        if users is None:
            newcomers = users_without_history(snapshot, self.data)
        else:
            wanted = pl.DataFrame({"user_id": users})
            rows = (
                pl.DataFrame({"user_id": self.data.user_ids}).with_row_index("row")
                .join(wanted, on="user_id", how="semi")["row"].to_numpy()
            )
            newcomers = users.filter(~users.is_in(self.data.user_ids.implode())).sort()
        return itertools.chain(
            recommendation_tables(self.model, self.data, rows, k, self.model_version, self.rules),
            newcomer_tables(self.model, self.data, newcomers, k, self.model_version, self.rules),
        )


def fit_baseline(
    name: str, snapshot: Any, cfg: Config, tune_users: pl.Series | None = None, users: pl.Series | None = None
) -> FittedBaseline:
    """Tune `name` on validation (over `tune_users`, None = all), then refit on train + validation.

    `users` (None = all) are the users its lists will be for: a popularity model
    then holds only their rows (``Baseline.needs_every_user``)."""
    started = time.perf_counter()
    params, trials = tune(name, snapshot, cfg, tune_users)
    tuned = time.perf_counter()
    data = training_data(
        snapshot, ["train", "validation"], None if baseline_class(name).needs_every_user else users, cfg.ray)
    model = baseline_class(name)(seed=cfg.train.seed, **params)
    model.fit(data)
    model_version = f"baseline-{name}-" + "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    seconds = {"tune": round(tuned - started, 3), "fit": round(time.perf_counter() - tuned, 3)}
    return FittedBaseline(model, data, ListRules.of(snapshot, cfg.score, data), params, trials, model_version, seconds)


def run_baseline(name: str, snapshot: Any, cfg: Config, out_dir: str | Path | Location) -> dict[str, Any]:
    """Tune on validation, refit on train + validation, write lists for every user; returns the manifest.

    Every user of the snapshot gets a list, as from the nightly scoring stage:
    those with no interaction before the test rows get `Baseline.rank_newcomers`.
    On an object-store root the lists are written by the scoring stage's writer
    into a local folder, then published there whole (``folders.publish_built``).
    """
    fitted = fit_baseline(name, snapshot, cfg)
    started = time.perf_counter()
    final = as_location(out_dir)

    def write(folder: str | Path) -> dict[str, Any]:
        return write_recommendations(
            fitted.lists(snapshot, cfg.score.k),
            folder,
            id_type=snapshot.id_type,
            rows_per_file=cfg.score.rows_per_file,
            manifest_fields={
                "model_version": fitted.model_version,
                "snapshot_hash": snapshot.hash,
                "k": cfg.score.k,
                "baseline": {"name": name, "params": fitted.params, "validation": fitted.trials,
                             "newcomers": len(users_without_history(snapshot, fitted.data))},
                "timings": {**fitted.seconds, "rank_and_write": round(time.perf_counter() - started, 3)},
            },
        )

    if not final.is_object_store:
        return write(final.path)
    with folders.building(final) as built:
        lists = built / "lists"
        fields = {k: v for k, v in write(lists).items() if k != "files"}
        return folders.publish_built(lists, final, fields)
