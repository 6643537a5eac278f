"""What one scoring worker reads: a user partition's vectors with their seen and blocked lists.

A user's embedding is in part ``p`` of the users' embeddings folder and their
history in partition ``p`` of the snapshot (recbatch/data/partition.py), so the
worker that scores partition ``p`` joins them itself: no per-user row passes
through the driver or through another process on its way to the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from recbatch.config import ScoreConfig
from recbatch.data.snapshot import Snapshot, serving_events
from recbatch.embed.store import EmbeddingsFolder, list_column_to_matrix, matrix_to_list_array, read_user_partition
from recbatch.errors import DataValidationError
from recbatch.fs import Location
from recbatch.parts import PARTITION
from recbatch.score.prior import append_column
from recbatch.score.ranking import user_exclusions


@dataclass(frozen=True)
class PartitionSource:
    """Where a scoring worker finds partition ``p``'s users (picklable: shipped to every worker once)."""

    snapshot: Snapshot
    users: EmbeddingsFolder
    dim: int  # the item vectors' dimension, which every user vector must have
    cfg: ScoreConfig
    user_value: float | None = None  # the popularity prior's user side (score/prior.py), when it is on

    def read(self, partition: int, item_ids: pa.Array) -> pa.Table:
        """``user_id, embedding, seen, blocked, partition`` for the users of `partition`.

        ``seen`` holds the catalog positions (`item_ids` [N], sorted) of every item
        the user interacted with (the nightly filters all of history); ``blocked``
        the positions the per-user blocklist removes.
        """
        rows = pl.from_arrow(read_user_partition(self.users, partition, self.snapshot.partitions,
                                                 ["user_id", "embedding"]))
        check_user_vectors(rows, self.users.location, self.dim)
        exclusions = user_exclusions(serving_events(self.snapshot, partition), rows.lazy().select("user_id"),
                                     item_ids, self.cfg, self.snapshot)
        table = (
            rows.lazy().join(exclusions, on="user_id", how="left", maintain_order="left")
            .with_columns(pl.lit(partition, dtype=pl.Int32).alias(PARTITION))
            .collect().to_arrow()
        )
        return table if self.user_value is None else _append_to_embeddings(table, self.user_value)


def check_user_vectors(users: pl.DataFrame, users_dir: Location, dim: int) -> None:
    """Every user vector has the item dimension and only finite values (else nothing is scored)."""
    if not users.height:
        return
    lengths = users["embedding"].list.len()
    if lengths.n_unique() != 1 or lengths[0] != dim:
        raise DataValidationError(
            f"{users_dir}: column 'embedding' lengths {sorted(lengths.unique().to_list())[:5]} do not all "
            f"equal the item embedding dimension {dim}"
        )
    bad = users.filter(~pl.col("embedding").list.eval(pl.element().is_finite()).list.all())
    if bad.height:
        raise DataValidationError(
            f"{users_dir}: column 'embedding' has {bad.height} rows with NaN/inf values, "
            f"e.g. users {bad['user_id'].head(5).to_list()}"
        )


def _append_to_embeddings(users: pa.Table, value: float) -> pa.Table:
    """Each user's embedding [D] -> [D + 1] with `value` appended (the prior's user side)."""
    column = users.column("embedding")
    widened = append_column(list_column_to_matrix(column), value)  # [U, D] -> [U, D + 1]
    array = matrix_to_list_array(widened).cast(column.type)
    return users.set_column(users.schema.get_field_index("embedding"), "embedding", array)

