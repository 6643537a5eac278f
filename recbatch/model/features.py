"""Model inputs derived from snapshot tables: item text, user histories, user features.

Kept apart from the model so the embedding stage, the trainer and the tests
render text and histories the same way, and so the ``input_hash`` columns
(which decide whether a nightly run may reuse an embedding) hash exactly what
the model sees.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import polars as pl
import torch

from recbatch.schemas import ITEM_TEXT_COLUMNS

TEXT_SEPARATOR = " | "
_FIELD_LABELS = {"genres": "genres: ", "tags": "tags: ", "description": ""}


def _stable_hash(text: str) -> str:
    """A short hash that is identical across processes and library versions (unlike pl.hash)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def render_item_text(items: pl.DataFrame) -> pl.Series:
    """One string per item: "title | genres: a, b | tags: x | description".

    The order of the parts is fixed (``schemas.ITEM_TEXT_COLUMNS``) and empty
    parts are dropped, so the same item always renders the same string.
    MovieLens-style "A|B" genre lists become "A, B" (the separator is ours).
    """
    if "title" not in items.columns:
        raise ValueError("items table has no 'title' column")
    parts = []
    for column in ITEM_TEXT_COLUMNS:
        if column not in items.columns:
            continue
        text = pl.col(column).cast(pl.String).str.strip_chars()
        if column in ("genres", "tags"):
            text = text.str.replace_all("|", ", ", literal=True)
        if column == "title":
            parts.append(text.fill_null(""))
            continue
        parts.append(pl.when(text.is_not_null() & (text != "")).then(pl.lit(_FIELD_LABELS[column]) + text))
    rendered = items.select(pl.concat_str(parts, separator=TEXT_SEPARATOR, ignore_nulls=True).alias("text"))
    return rendered.to_series()


def item_input_hash(items: pl.DataFrame) -> pl.Series:
    """Hash of what determines an item's vector for a fixed model version.

    The vector depends on the rendered text and, with the hybrid id embedding,
    on the item id itself (warm ids carry a learned offset), so both are hashed.
    """
    texts = render_item_text(items).to_list()
    ids = items["item_id"].to_list()
    return pl.Series("input_hash", [_stable_hash(f"{i}\x1f{t}") for i, t in zip(ids, texts)], dtype=pl.String)


def user_histories(interactions: pl.LazyFrame, history_length: int) -> pl.LazyFrame:
    """Each user's last `history_length` item ids, oldest first and most recent last.

    Ties in ``ts`` keep the table's order (snapshots are sorted by user, ts),
    so the result is deterministic.
    """
    if history_length < 1:
        raise ValueError(f"history_length must be >= 1, got {history_length}")
    return interactions.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").sort_by("ts", maintain_order=True).tail(history_length).alias("history")
    )


def user_input_hash(
    histories: pl.DataFrame,
    item_hashes: pl.DataFrame | None = None,
    feature_columns: Sequence[str] = (),
) -> pl.Series:
    """Hash of what determines a user's vector for a fixed model version.

    `histories` has ``user_id``, ``history`` and optionally feature columns.
    A user vector is a function of its history's item vectors and its
    features, so we hash the history ids, each history item's own input hash
    (pass `item_hashes` with ``item_id``, ``input_hash`` so an edited item
    title invalidates the users who saw it) and the named feature values.
    """
    lookup: dict[Any, str] = {}
    if item_hashes is not None:
        lookup = dict(zip(item_hashes["item_id"].to_list(), item_hashes["input_hash"].to_list()))
    columns = [histories[c].to_list() for c in feature_columns]
    out = []
    for row, history in enumerate(histories["history"].to_list()):
        history = history or []
        items = ",".join(f"{i}:{lookup.get(i, '')}" for i in history)
        feats = "\x1e".join(repr(col[row]) for col in columns)
        out.append(_stable_hash(f"{items}\x1f{feats}"))
    return pl.Series("input_hash", out, dtype=pl.String)


# --------------------------------------------------------------------------- user features


@dataclass
class UserFeatureSpec:
    """How user feature columns become tensors for the user tower.

    Strings, booleans and integer codes are categorical: each value is hashed
    into `buckets` slots per column (no vocabulary to keep in sync; unseen
    values still map somewhere stable; 0 is reserved for null). Floats are
    numeric, standardised with the training snapshot's mean and std.
    """

    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    numeric_mean: list[float] = field(default_factory=list)
    numeric_std: list[float] = field(default_factory=list)
    buckets: int = 1024

    @classmethod
    def from_users(cls, users: pl.DataFrame | pl.LazyFrame | None, buckets: int = 1024) -> "UserFeatureSpec":
        """The spec of a users table. A LazyFrame (a snapshot's table) is reduced to
        each numeric column's mean and std in one streaming pass, never loaded whole."""
        if users is None:
            return cls(buckets=buckets)
        categorical, numeric = [], []
        for name, dtype in users.collect_schema().items():
            if name == "user_id":
                continue
            if dtype.is_float():
                numeric.append(name)
            elif dtype == pl.String or dtype == pl.Boolean or dtype.is_integer() or dtype == pl.Categorical:
                categorical.append(name)
        columns = [pl.col(name).cast(pl.Float64) for name in numeric]
        stats = users.lazy().select(
            *(c.mean().alias(f"mean{j}") for j, c in enumerate(columns)),
            *(c.std().alias(f"std{j}") for j, c in enumerate(columns)),
        ).collect(engine="streaming").row(0, named=True) if numeric else {}
        mean = [float(stats[f"mean{j}"] or 0.0) for j in range(len(numeric))]
        std = [float(stats[f"std{j}"] or 1.0) or 1.0 for j in range(len(numeric))]
        return cls(categorical, numeric, mean, std, buckets)

    @property
    def columns(self) -> list[str]:
        return self.categorical + self.numeric

    def encode(self, features: pl.DataFrame | None, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(categorical bucket ids [B, C] int64, standardised numerics [B, F] float32).

        Missing frame, missing column or null value -> bucket 0 / numeric 0.0.
        """
        cat = torch.zeros(rows, len(self.categorical), dtype=torch.long)
        num = torch.zeros(rows, len(self.numeric), dtype=torch.float32)
        if features is None:
            return cat, num
        if features.height != rows:
            raise ValueError(f"user features have {features.height} rows, expected {rows}")
        for j, name in enumerate(self.categorical):
            if name in features.columns:
                values = features[name].to_list()
                cat[:, j] = torch.tensor([self.bucket(name, v) for v in values], dtype=torch.long)
        for j, name in enumerate(self.numeric):
            if name in features.columns:
                col = features[name].cast(pl.Float64)
                standardised = ((col - self.numeric_mean[j]) / self.numeric_std[j]).fill_null(0.0).fill_nan(0.0)
                num[:, j] = torch.from_numpy(standardised.to_numpy().astype("float32"))
        return cat, num

    def bucket(self, column: str, value: Any) -> int:
        if value is None:
            return 0
        return 1 + zlib.crc32(f"{column}={value}".encode("utf-8")) % (self.buckets - 1)
