"""Training inputs prepared once by the driver from a snapshot.

Three Parquet files in the training run's folder, all keyed by *catalog row*
(items sorted by id, row 0..M-1) so workers index tensors directly:

- ``catalog.parquet``: item_id, text (rendered), id_index (row of the learned
  id embedding, 0 = cold), probability (share of training interactions: the
  logQ correction's sampling probability).
- ``examples.parquet``: one row per training interaction: target (catalog
  row), history (the user's previous L catalog rows, oldest first, -1 =
  padding), user features, age_days (days before the latest training
  interaction: the example-age input). Shuffled once here; workers stream it through Ray
  Data and add a local shuffle per epoch.
- ``validation.parquet``: one row per sampled validation user: history (last
  L train rows), targets (validation rows), seen (train rows, excluded from
  ranking), user features.

Histories are built with per-user ``shift`` expressions (O(n * L)), not by
slicing each user's whole sequence per row (O(sum of squared lengths)).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from recbatch.data.snapshot import Snapshot
from recbatch.data.split import days_before_newest
from recbatch.errors import DataValidationError
from recbatch.model.features import UserFeatureSpec, render_item_text

PAD = -1


@dataclass
class PreparedInputs:
    catalog: Path
    examples: Path
    validation: Path
    warm_item_ids: list
    user_features: UserFeatureSpec
    num_examples: int
    num_validation_users: int


def _positives(snapshot: Snapshot, split: str, min_rating: float | None) -> pl.LazyFrame:
    lf = snapshot.split(split)
    if min_rating is not None and "rating" in lf.collect_schema().names():
        lf = lf.filter(pl.col("rating").is_null() | (pl.col("rating") >= min_rating))
    return lf


def build_catalog(snapshot: Snapshot, use_item_ids: bool, min_rating: float | None = None) -> tuple[pl.DataFrame, list]:
    """(catalog frame, warm item ids in id-embedding order)."""
    items = snapshot.items().collect().sort("item_id")
    counts = _positives(snapshot, "train", min_rating).group_by("item_id").agg(n=pl.len()).collect()
    if counts.height == 0:
        raise DataValidationError(f"{snapshot.table_path('split')}: the train split has no interactions")
    warm = counts["item_id"].sort().to_list() if use_item_ids else []
    warm_index = pl.DataFrame(
        {"item_id": warm, "id_index": list(range(1, len(warm) + 1))},
        schema={"item_id": items.schema["item_id"], "id_index": pl.Int64},
    )
    catalog = (
        items.select("item_id")
        .with_columns(text=render_item_text(items))
        .join(warm_index, on="item_id", how="left", maintain_order="left")
        .join(counts, on="item_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("id_index").fill_null(0),
            probability=(pl.col("n").fill_null(0) / pl.col("n").sum()).cast(pl.Float64),
        )
        .drop("n")
    )
    return catalog, warm


def _with_rows(lf: pl.LazyFrame, catalog: pl.DataFrame) -> pl.LazyFrame:
    rows = catalog.select("item_id").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    return lf.join(rows.lazy(), on="item_id", how="inner")


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


def _history(history_length: int) -> pl.Expr:
    """The previous `history_length` rows of the same user, oldest first, PAD where absent."""
    lags = [pl.col("row").shift(history_length - j).over("user_id").fill_null(PAD) for j in range(history_length)]
    return pl.concat_list(lags).alias("history")


def prepare_inputs(
    snapshot: Snapshot,
    out_dir: str | Path,
    *,
    history_length: int,
    use_item_ids: bool,
    validate_users: int,
    min_rating: float | None = None,
    seed: int = 0,
) -> PreparedInputs:
    """Write catalog/examples/validation Parquet files into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    catalog, warm = build_catalog(snapshot, use_item_ids, min_rating)
    catalog.write_parquet(out / "catalog.parquet")

    users = snapshot.users().collect()
    spec = UserFeatureSpec.from_users(users)
    features = _feature_columns(users, spec).lazy()

    train = _with_rows(_positives(snapshot, "train", min_rating), catalog).sort(["user_id", "ts"], maintain_order=True)
    examples = (
        train.with_columns(_history(history_length), days_before_newest().cast(pl.Float32).alias("age_days"))
        .select("user_id", pl.col("row").alias("target"), "history", "age_days")
        .join(features, on="user_id", how="left")
        .with_columns(
            pl.col("user_cat").fill_null(pl.lit([0] * len(spec.categorical), dtype=pl.List(pl.Int64))),
            pl.col("user_num").fill_null(pl.lit([0.0] * len(spec.numeric), dtype=pl.List(pl.Float32))),
        )
        .drop("user_id")
        .collect()
        .sample(fraction=1.0, shuffle=True, seed=seed)
    )
    examples.write_parquet(out / "examples.parquet", row_group_size=max(1024, examples.height // 16 + 1))

    per_user = train.group_by("user_id").agg(
        seen=pl.col("row").unique(),
        history=pl.col("row").tail(history_length),
    )
    validation = (
        _with_rows(snapshot.split("validation"), catalog)
        .group_by("user_id")
        .agg(targets=pl.col("row").unique())
        .join(per_user, on="user_id", how="inner")
        .join(features, on="user_id", how="left")
        .sort("user_id")
        .collect()
    )
    if validation.height > validate_users:
        validation = validation.sample(n=validate_users, seed=seed).sort("user_id")
    validation.write_parquet(out / "validation.parquet")
    return PreparedInputs(
        catalog=out / "catalog.parquet",
        examples=out / "examples.parquet",
        validation=out / "validation.parquet",
        warm_item_ids=warm,
        user_features=spec,
        num_examples=examples.height,
        num_validation_users=validation.height,
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


def load_catalog(path: str | Path, tokenizer, max_text_tokens: int) -> CatalogTensors:
    catalog = pl.read_parquet(path)
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


def load_validation(path: str | Path, history_length: int, spec: UserFeatureSpec) -> ValidationTensors:
    frame = pl.read_parquet(path)
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
