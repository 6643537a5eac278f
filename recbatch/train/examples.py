"""Training inputs, prepared from a snapshot: one Ray task per user partition.

Everything is keyed by *catalog row* (items sorted by id, row 0..M-1) so
workers index tensors directly. In the training run's inputs folder:

- ``catalog.parquet``: item_id, text (rendered), id_index (row of the learned
  id embedding, 0 = cold), probability (share of training interactions: the
  logQ correction's sampling probability). Built on the driver: it grows with
  items, not users; the per-item counts come from one streaming group-by.
- ``examples/part-PPPPP.parquet``, by ``train.objective``:
  per_interaction: one row per training interaction of the users of snapshot
  partition P: target (catalog row), history (the user's previous L catalog
  rows, oldest first, -1 = padding), user features, age_days (days before
  the newest training interaction of the whole snapshot: the example-age
  input).
  causal: one row per window of up to L + 1 consecutive training
  interactions of a user (windows cut from the user's newest one back, so
  every interaction is in exactly one): first (the window's first item:
  what the [USER] position predicts), history (the window's items but the
  last, left-padded to L), next (the item after each history item, aligned
  with it), user features.
- ``validation/part-PPPPP.parquet``: one row per sampled validation user of
  partition P: history (last L train rows), targets (validation rows), seen
  (train rows, excluded from ranking), user features.

A user's rows all lie in one partition of the snapshot (``data/partition.py``),
so each task reads only its partition and writes its own parts; the driver
sees only (file, rows) records and the validation sample's keys. The inputs
folder is a ``fs.Location``: on an object-store root it is under the root
(``checkpoints/<run>/inputs``), where every Ray task and training worker
reads it, never on the driver's disk. Histories
are built with per-user ``shift`` expressions (O(n * L)), not by slicing each
user's whole sequence per row (O(sum of squared lengths)).

No global shuffle: each part is shuffled once by its task, and the training
loop reads the parts in a new file order every epoch with a local shuffle
buffer on top. That is enough because the partitions are a hash of user_id:
every part is already a random sample of users, so mixing rows *across*
parts would not make a batch any more representative; the within-part
shuffle only has to break up each user's consecutive rows.

The validation sample is the `validate_users` eligible users with the smallest
seeded hash of user_id (``partition.user_hash``): each task keeps its own
smallest keys, the driver merges them into a threshold, and a second round of
tasks keeps the users under it. Same seed, same users, whatever the partition
count or the order in which tasks finish.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from recbatch.data.partition import user_hash
from recbatch.data.snapshot import Snapshot
from recbatch.data.split import days_before_newest
from recbatch.errors import DataValidationError
from recbatch.fs import Location, as_location, list_files, remove_file, remove_tree
from recbatch.model.features import UserFeatureSpec, render_item_text
from recbatch.parquet_io import read_parquet, write_parquet

PAD = -1
CATALOG_FILE = "catalog.parquet"
EXAMPLES_DIR = "examples"
VALIDATION_DIR = "validation"
_CANDIDATES_DIR = "validation-candidates"  # each partition's smallest sample keys, before the global cut
# Rows per Parquet row group of an examples part: Ray Data's unit of reading and of block shuffling.
EXAMPLES_ROW_GROUP = 8192


@dataclass
class PreparedInputs:
    catalog: Location
    examples: Location  # folder of part-PPPPP.parquet
    validation: Location  # folder of part-PPPPP.parquet
    warm_item_ids: list
    user_features: UserFeatureSpec
    num_examples: int
    num_validation_users: int
    catalog_items: int  # M: rows of catalog.parquet


def part_file(folder: Location, partition: int) -> Location:
    return folder.join(f"part-{partition:05d}.parquet")


def _positives(lf: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    """The rows of `lf` that count as positives (all of them without a `min_rating`)."""
    if min_rating is not None and "rating" in lf.collect_schema().names():
        lf = lf.filter(pl.col("rating").is_null() | (pl.col("rating") >= min_rating))
    return lf


def _train(split: pl.LazyFrame, min_rating: float | None) -> pl.LazyFrame:
    return _positives(split.filter(pl.col("split") == "train"), min_rating)


@dataclass(frozen=True)
class Catalog:
    frame: pl.DataFrame  # item_id, text, id_index, probability: one row per item
    warm_item_ids: list  # items with a train positive, in id-embedding order
    newest_train_ts: dt.datetime  # the reference time of every example's age


def build_catalog(snapshot: Snapshot, use_item_ids: bool, min_rating: float | None = None) -> Catalog:
    """The catalog and what the driver needs to know of the train split, from one
    streaming pass over it that keeps one row per item."""
    items = snapshot.items().collect().sort("item_id")
    counts = (
        _train(snapshot.split(), min_rating)
        .group_by("item_id")
        .agg(n=pl.len(), newest=pl.col("ts").max())
        .collect(engine="streaming")
    )
    if counts.height == 0:
        raise DataValidationError(f"{snapshot.table_path('split')}: the train split has no interactions")
    warm = counts["item_id"].sort().to_list() if use_item_ids else []
    warm_index = pl.DataFrame(
        {"item_id": warm, "id_index": list(range(1, len(warm) + 1))},
        schema={"item_id": items.schema["item_id"], "id_index": pl.Int64},
    )
    frame = (
        items.select("item_id")
        .with_columns(text=render_item_text(items))
        .join(warm_index, on="item_id", how="left", maintain_order="left")
        .join(counts.select("item_id", "n"), on="item_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("id_index").fill_null(0),
            probability=(pl.col("n").fill_null(0) / pl.col("n").sum()).cast(pl.Float64),
        )
        .drop("n")
    )
    return Catalog(frame, warm, counts["newest"].max())


def _with_rows(lf: pl.LazyFrame, rows: pl.DataFrame) -> pl.LazyFrame:
    """`lf` with each item's catalog ``row`` (items outside the catalog dropped), in `lf`'s order."""
    return lf.join(rows.lazy(), on="item_id", how="inner", maintain_order="left")


def _feature_columns(users: pl.DataFrame, spec: UserFeatureSpec) -> pl.DataFrame:
    """user_id + user_cat (list[int64]) + user_num (list[float32]) per user."""
    cat, num = spec.encode(users, users.height)
    return pl.DataFrame(
        {
            "user_id": users["user_id"],
            "user_cat": cat.tolist(),
            "user_num": num.tolist(),
        },
        schema={"user_id": users.schema["user_id"], "user_cat": pl.List(pl.Int64), "user_num": pl.List(pl.Float32)},
    )


def causal_windows(train: pl.LazyFrame, history_length: int) -> pl.LazyFrame:
    """user_id, first, history [L], next [L]: each user's train rows (sorted by ts) cut into windows of
    up to L + 1, the newest window full; PAD on the left of history and next.

    Position j of a window's history predicts next[j]; the position before it
    ([USER], the user before any item of the window) predicts `first`. Every
    interaction is a target exactly once, as in the per-interaction examples.
    """
    L = history_length
    windows = (
        train.with_columns(position=pl.int_range(pl.len()).over("user_id"), count=pl.len().over("user_id"))
        .with_columns(window=(pl.col("count") - 1 - pl.col("position")) // (L + 1))  # 0 = the newest window
        .group_by("user_id", "window", maintain_order=True)
        .agg(items=pl.col("row"))
    )
    items = pl.col("items")
    pad = pl.lit(PAD, dtype=pl.Int64).repeat_by(L + 1 - items.list.len())
    return windows.select(
        "user_id",
        items.list.first().alias("first"),
        pl.concat_list(pad, items.list.head(items.list.len() - 1)).alias("history"),
        pl.concat_list(pad, items.list.tail(items.list.len() - 1)).alias("next"),
    )


def _history(history_length: int) -> pl.Expr:
    """The previous `history_length` rows of the same user, oldest first, PAD where absent."""
    lags = [pl.col("row").shift(history_length - j).over("user_id").fill_null(PAD) for j in range(history_length)]
    return pl.concat_list(lags).alias("history")


@dataclass(frozen=True)
class PartitionTask:
    """Everything one partition's task needs: small and the same for every partition."""

    snapshot: Snapshot
    rows: pl.DataFrame  # item_id -> catalog row
    spec: UserFeatureSpec
    newest_train_ts: dt.datetime
    history_length: int
    min_rating: float | None
    validate_users: int
    seed: int
    out: Location
    objective: str = "per_interaction"  # train.objective


@dataclass(frozen=True)
class PartitionRecord:
    """What the driver learns of one partition: its examples' count and its smallest sample keys."""

    examples_rows: int
    sample_keys: list[int]  # the partition's smallest validation sample keys (at most validate_users)


def _part_seed(seed: int, partition: int) -> int:
    """The shuffle seed of one part: distinct per partition, fixed by the run's seed."""
    return seed * 1_000_003 + partition  # a prime stride: no two (seed, partition) pairs below it collide


def prepare_partition(task: PartitionTask, partition: int) -> PartitionRecord:
    """Write one partition's examples part and validation candidates (runs in a Ray task)."""
    snapshot, L = task.snapshot, task.history_length
    users = snapshot.scan_partition("users", partition).collect()
    features = _feature_columns(users, task.spec).lazy()
    train = _with_rows(_train(snapshot.scan_partition("split", partition), task.min_rating), task.rows).sort(
        ["user_id", "ts"], maintain_order=True
    )
    no_cat = pl.lit([0] * len(task.spec.categorical), dtype=pl.List(pl.Int64))
    no_num = pl.lit([0.0] * len(task.spec.numeric), dtype=pl.List(pl.Float32))
    if task.objective == "causal":
        rows = causal_windows(train, L)
    else:
        rows = train.with_columns(
            _history(L), days_before_newest(newest=task.newest_train_ts).cast(pl.Float32).alias("age_days")
        ).select("user_id", pl.col("row").alias("target"), "history", "age_days")
    examples = (
        rows.join(features, on="user_id", how="left", maintain_order="left")
        .with_columns(pl.col("user_cat").fill_null(no_cat), pl.col("user_num").fill_null(no_num))
        .drop("user_id")
        .collect()
        .sample(fraction=1.0, shuffle=True, seed=_part_seed(task.seed, partition))
    )
    write_parquet(examples, part_file(task.out.join(EXAMPLES_DIR), partition), row_group_size=EXAMPLES_ROW_GROUP)

    per_user = train.group_by("user_id").agg(
        seen=pl.col("row").unique(maintain_order=True),
        history=pl.col("row").tail(L),
    )
    candidates = (
        _with_rows(snapshot.scan_partition("split", partition).filter(pl.col("split") == "validation"), task.rows)
        .group_by("user_id")
        .agg(targets=pl.col("row").unique(maintain_order=True))
        .join(per_user, on="user_id", how="inner")
        .join(features, on="user_id", how="left")
        .collect()
    )
    keys = user_hash(candidates["user_id"].to_arrow(), salt=task.seed)
    candidates = candidates.with_columns(sample_key=pl.Series(keys, dtype=pl.UInt64)).sort("sample_key").head(
        task.validate_users
    )
    write_parquet(candidates, part_file(task.out.join(_CANDIDATES_DIR), partition))
    return PartitionRecord(examples.height, candidates["sample_key"].to_list())


def keep_sampled(task: PartitionTask, partition: int, threshold: int | None) -> int:
    """Cut one partition's candidates to the sampled users (key <= `threshold`; all when None)."""
    candidates = part_file(task.out.join(_CANDIDATES_DIR), partition)
    frame = read_parquet([candidates])
    if threshold is not None:
        frame = frame.filter(pl.col("sample_key") <= threshold)
    frame = frame.drop("sample_key").sort("user_id")
    write_parquet(frame, part_file(task.out.join(VALIDATION_DIR), partition))
    remove_file(candidates)
    return frame.height


def _merge_smallest(smallest: list[int], keys: list[int], validate_users: int) -> list[int]:
    """The `validate_users` + 1 smallest of both: enough to tell whether, and where, to cut."""
    return heapq.nsmallest(validate_users + 1, smallest + keys)


def prepare_inputs(
    snapshot: Snapshot,
    out_dir: str | Path | Location,
    *,
    history_length: int,
    use_item_ids: bool,
    validate_users: int,
    min_rating: float | None = None,
    seed: int = 0,
    objective: str = "per_interaction",
) -> PreparedInputs:
    """Write the catalog (driver) and the examples and validation parts (Ray tasks) into `out_dir`
    (a local folder, or a Location under an object-store root that every task reaches).

    `objective` (``train.objective``) says what an example is: an interaction or a causal window.

    Runs on the connected Ray runtime (``runtime.ensure_ray``); without one, Ray starts a default local one.
    """
    import ray

    out = as_location(out_dir)
    catalog = build_catalog(snapshot, use_item_ids, min_rating)
    write_parquet(catalog.frame, out.join(CATALOG_FILE))
    rows = catalog.frame.select("item_id").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    spec = UserFeatureSpec.from_users(snapshot.users())
    task = ray.put(PartitionTask(
        snapshot=snapshot,
        rows=rows,
        spec=spec,
        newest_train_ts=catalog.newest_train_ts,
        history_length=history_length,
        min_rating=min_rating,
        validate_users=validate_users,
        seed=seed,
        out=out,
        objective=objective,
    ))
    partitions = range(snapshot.partitions)
    prepare = ray.remote(num_cpus=1)(prepare_partition)
    pending = [prepare.remote(task, p) for p in partitions]
    num_examples, smallest = 0, []
    while pending:  # merged as they finish: the driver holds O(validate_users) keys, not O(partitions x)
        done, pending = ray.wait(pending)
        for record in ray.get(done):
            num_examples += record.examples_rows
            smallest = _merge_smallest(smallest, record.sample_keys, validate_users)
    threshold = smallest[validate_users - 1] if len(smallest) > validate_users else None
    keep = ray.remote(num_cpus=1)(keep_sampled)
    validation_users = sum(ray.get([keep.remote(task, p, threshold) for p in partitions]))
    remove_tree(out.join(_CANDIDATES_DIR))  # empty by now: each task removed its own part
    return PreparedInputs(
        catalog=out.join(CATALOG_FILE),
        examples=out.join(EXAMPLES_DIR),
        validation=out.join(VALIDATION_DIR),
        warm_item_ids=catalog.warm_item_ids,
        user_features=spec,
        num_examples=num_examples,
        num_validation_users=validation_users,
        catalog_items=catalog.frame.height,
    )


# --------------------------------------------------------------------------- worker side


@dataclass
class CatalogTensors:
    """The whole catalog as tensors on one worker (M items, T tokens)."""

    input_ids: torch.Tensor  # [M, T] int64
    attention_mask: torch.Tensor  # [M, T] int64
    id_index: torch.Tensor  # [M] int64, 0 = cold
    probability: torch.Tensor  # [M] float64 p_j, share of training interactions (for logQ)

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> "CatalogTensors":
        return CatalogTensors(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def read_parts(folder: Location) -> pl.DataFrame:
    """The rows of a prepared folder of parts (examples or validation), in part order: the run's own
    tasks wrote them, so they are found by name, not through a manifest."""
    return read_parquet(list_files(folder, "part-"))


def load_catalog(path: str | Path | Location, tokenizer, max_text_tokens: int) -> CatalogTensors:
    catalog = read_parquet([as_location(path)])
    tokens = tokenizer(
        catalog["text"].to_list(), max_length=max_text_tokens, padding=True, truncation=True, return_tensors="pt"
    )
    return CatalogTensors(
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        id_index=torch.from_numpy(catalog["id_index"].to_numpy().astype("int64")),
        probability=torch.from_numpy(catalog["probability"].to_numpy().astype("float64")),
    )


def pad_rows(lists: list[list[int]], width: int | None = None) -> torch.Tensor:
    """Ragged lists of catalog rows -> [N, W] int64, PAD on the left (most recent last)."""
    width = width if width is not None else max((len(x) for x in lists), default=0)
    out = torch.full((len(lists), max(width, 1)), PAD, dtype=torch.long)
    for i, rows in enumerate(lists):
        rows = rows[-width:] if width else []
        if rows:
            out[i, out.shape[1] - len(rows) :] = torch.tensor(rows, dtype=torch.long)
    return out


@dataclass
class ValidationTensors:
    history: torch.Tensor  # [U, L] catalog rows, PAD = -1
    targets: torch.Tensor  # [U, Tmax] catalog rows, PAD = -1
    seen: torch.Tensor  # [U, Smax] catalog rows, PAD = -1
    user_cat: torch.Tensor  # [U, C] int64
    user_num: torch.Tensor  # [U, F] float32


def load_validation(folder: str | Path | Location, history_length: int, spec: UserFeatureSpec) -> ValidationTensors:
    """The validation users of a prepared inputs folder."""
    frame = read_parts(as_location(folder))
    n = frame.height

    def feature(column: str, width: int, dtype: torch.dtype) -> torch.Tensor:
        if width == 0 or column not in frame.columns:
            return torch.zeros(n, width, dtype=dtype)
        fill = [0] * width
        return torch.tensor([v if v is not None else fill for v in frame[column].to_list()], dtype=dtype)

    return ValidationTensors(
        history=pad_rows(frame["history"].to_list(), history_length),
        targets=pad_rows(frame["targets"].to_list()),
        seen=pad_rows(frame["seen"].to_list()),
        user_cat=feature("user_cat", len(spec.categorical), torch.long),
        user_num=feature("user_num", len(spec.numeric), torch.float32),
    )
