"""Arrow schemas: the data contracts between stages.

Every Parquet file recbatch writes conforms to one of these. IDs keep the
caller's type end to end: a catalog keyed by int64 stays int64 in the
recommendations and in Redis; a catalog keyed by strings stays strings. So each
schema is built for an id type rather than fixed.

Only the required columns are listed; optional columns (``weight``, ``rating``,
item attributes, user features) pass through when present.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa

IdType = Literal["int", "string"]

# Text columns rendered into the item tower's input, in this order when present.
ITEM_TEXT_COLUMNS: tuple[str, ...] = ("title", "genres", "tags", "description")

TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")


def id_arrow_type(id_type: IdType) -> pa.DataType:
    return pa.int64() if id_type == "int" else pa.string()


def id_type_of(arrow_type: pa.DataType) -> IdType:
    """Map an Arrow id column type back to our id type (ints widen to int64)."""
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    raise TypeError(f"ids must be integers or strings, not {arrow_type}")


def interactions_schema(id_type: IdType = "int") -> pa.Schema:
    """One row per (user, item, time) event. Optional: weight, rating (float64)."""
    t = id_arrow_type(id_type)
    return pa.schema(
        [
            pa.field("user_id", t, nullable=False),
            pa.field("item_id", t, nullable=False),
            pa.field("ts", TIMESTAMP_TYPE, nullable=False),
        ]
    )


INTERACTION_OPTIONAL = {"weight": pa.float64(), "rating": pa.float64()}


def items_schema(id_type: IdType = "int") -> pa.Schema:
    """One row per item. ``title`` is required text; other text columns optional.

    Optional: genres, tags, description (strings), available (bool, default
    true), and any attribute columns.
    """
    return pa.schema(
        [
            pa.field("item_id", id_arrow_type(id_type), nullable=False),
            pa.field("title", pa.string(), nullable=False),
        ]
    )


ITEM_OPTIONAL = {
    "genres": pa.string(),
    "tags": pa.string(),
    "description": pa.string(),
    "available": pa.bool_(),
}


def users_schema(id_type: IdType = "int") -> pa.Schema:
    """One row per user; any further columns are user features."""
    return pa.schema([pa.field("user_id", id_arrow_type(id_type), nullable=False)])


def split_schema(id_type: IdType = "int") -> pa.Schema:
    """Interactions plus the split they belong to (train / validation / test)."""
    return interactions_schema(id_type).append(pa.field("split", pa.string(), nullable=False))


def embeddings_schema(id_type: IdType = "int", id_column: str = "item_id") -> pa.Schema:
    """Embedding rows: a fixed-size float32 list plus what makes reuse safe.

    ``input_hash`` hashes the row's input (item text/attributes, user
    history/features); with ``model_version`` it decides whether a nightly run
    may reuse the row instead of re-encoding it.
    """
    return pa.schema(
        [
            pa.field(id_column, id_arrow_type(id_type), nullable=False),
            pa.field("embedding", pa.list_(pa.float32()), nullable=False),
            pa.field("input_hash", pa.string(), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ]
    )


def recommendations_schema(id_type: IdType = "int", with_because: bool = False) -> pa.Schema:
    """The published output: one row per user, lists sorted by score descending.

    Plain Arrow list types (not Ray tensor extensions) so polars, DuckDB,
    pyarrow and Spark read it with no options.
    """
    t = id_arrow_type(id_type)
    fields = [
        pa.field("user_id", t, nullable=False),
        pa.field("item_ids", pa.list_(t), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
    ]
    if with_because:
        fields.append(pa.field("because_item_ids", pa.list_(t), nullable=True))
    return pa.schema(fields)


def check_schema(actual: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Raise ValueError naming `where` when a required column is missing or mistyped."""
    for f in expected:
        if f.name not in actual.names:
            raise ValueError(f"{where}: missing column '{f.name}' (expected {f.type})")
        got = actual.field(f.name).type
        if got != f.type and not (
            pa.types.is_large_string(got) and pa.types.is_string(f.type)
        ):
            raise ValueError(f"{where}: column '{f.name}' has type {got}, expected {f.type}")
