"""Incremental re-encoding: decide which rows to encode and which to reuse.

Every embedding row carries the ``input_hash`` of what produced it (item text
and id; user history, the history items' hashes, and features). Within one
model version, equal hash means equal vector, so a nightly run only needs to
encode rows that are new or whose hash changed, and can copy the rest from the
previous embeddings of the same model version.

Deciding needs only ids and hashes (a few dozen bytes a row), which is why the
plan is made on the driver, while the vectors themselves stay in Ray Data.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa


@dataclass(frozen=True)
class ReusePlan:
    """Ids to encode now, and ids whose previous vector is still valid."""

    encode_ids: pa.Array
    reuse_ids: pa.Array

    @property
    def encoded(self) -> int:
        return len(self.encode_ids)

    @property
    def reused(self) -> int:
        return len(self.reuse_ids)


def plan_reuse(current: pa.Table, previous: pa.Table | None, id_column: str) -> ReusePlan:
    """Split `current` ``(id, input_hash)`` rows into encode and reuse sets.

    A row is reused when `previous` (the last embeddings of the same model
    version) has the same id with the same hash; rows that vanished from the
    snapshot are simply not carried over.
    """
    now = pl.from_arrow(current.select([id_column, "input_hash"]))
    if previous is None or previous.num_rows == 0:
        return ReusePlan(encode_ids=current.column(id_column).combine_chunks(), reuse_ids=_empty_like(current, id_column))
    before = pl.from_arrow(previous.select([id_column, "input_hash"]))
    same = now.join(before, on=[id_column, "input_hash"], how="semi")
    changed = now.join(same, on=id_column, how="anti")
    return ReusePlan(
        encode_ids=changed.get_column(id_column).to_arrow(),
        reuse_ids=same.get_column(id_column).to_arrow(),
    )


def _empty_like(table: pa.Table, column: str) -> pa.Array:
    return pa.array([], type=table.schema.field(column).type)
