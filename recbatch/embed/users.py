"""The user side of the embedding stage: model inputs and the encoding actor.

A user vector is the user tower applied to the *item embeddings* of the
user's recent history (plus the user's features), so users need no BERT pass:
the actors receive the item matrix of the same model version once, as a Ray
object, and look history rows up by index.

Users are embedded a user partition at a time (``PartitionEncoder``): a
partition's interactions and user rows are all in partition ``p`` of the
snapshot, so one actor builds their histories (a polars group-by), decides
what to reuse, runs the tower and writes the part, and the driver only sees
one record per partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from recbatch.data.snapshot import Snapshot, serving_events
from recbatch.embed.actor import EncoderActor
from recbatch.embed.store import EmbeddingsFolder
from recbatch.fs import Location
from recbatch.model.features import user_histories, user_input_hash
from recbatch.runtime import Precision
from recbatch.schemas import embeddings_schema

HISTORY_INDEX = "history_index"


def user_inputs(
    users: pl.LazyFrame,
    events: pl.LazyFrame,
    item_ids: pa.Array,
    item_hashes: pa.Table,
    *,
    history_length: int,
    feature_columns: Sequence[str],
) -> pa.Table:
    """One row per user of `users`: ``user_id, history_index, <features>, input_hash``.

    `users` are snapshot user rows (one partition of them, when a worker
    embeds its partition). Histories come from `events` (``user_id, item_id,
    ts`` rows of the same users): every interaction when serving
    (`serving_events`), only the rows before the held-out ones when
    evaluating (``eval/holdout.py``). ``history_index`` holds rows of the item
    matrix (row i = `item_ids`[i]), oldest first and most recent last;
    history items without an embedding are dropped. The hash covers the
    history ids, each history item's own input hash (an edited item re-encodes
    the users who saw it) and the features.
    """
    # Streamed: the holdout passes every partition's rows filtered to its slice of users.
    histories = user_histories(events.select("user_id", "item_id", "ts"), history_length).collect(engine="streaming")
    features = [c for c in feature_columns if c in users.collect_schema().names()]
    users = (
        users.select("user_id", *features)
        .collect(engine="streaming")
        .join(histories, on="user_id", how="left", maintain_order="left")
        .with_columns(pl.col("history").fill_null(pl.lit([], dtype=histories.schema["history"])))
    )
    hashes = pl.from_arrow(item_hashes)
    assert isinstance(hashes, pl.DataFrame)
    row_of = pl.Series(item_ids)
    index = pl.col("history").list.eval(
        pl.element().replace_strict(row_of, pl.int_range(len(row_of), dtype=pl.Int32, eager=True), default=None)
    )
    out = users.with_columns(
        index.list.drop_nulls().alias(HISTORY_INDEX),
        user_input_hash(users, hashes, features),
    )
    return out.select("user_id", HISTORY_INDEX, *features, "input_hash").to_arrow()


def left_padded(histories: pa.ListArray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack variable-length index lists into ``[B, length]`` (most recent last).

    Returns (row indices [B, L] int64, 0 where padded; mask [B, L] bool).
    Lists longer than `length` keep their most recent entries.
    """
    offsets = histories.offsets.to_numpy()
    offsets = offsets - offsets[0]  # a sliced array's offsets start mid-buffer
    values = histories.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.diff(offsets)  # [B]
    rows = np.repeat(np.arange(len(counts)), counts)  # row of each value
    position = np.arange(len(values)) - np.repeat(offsets[:-1], counts)  # index within its list
    column = length - counts[rows] + position  # right-aligned
    keep = column >= 0
    index = np.zeros((len(counts), length), dtype=np.int64)
    mask = np.zeros((len(counts), length), dtype=bool)
    index[rows[keep], column[keep]] = values[keep]
    mask[rows[keep], column[keep]] = True
    return index, mask


class UserEncoder(EncoderActor):
    """Runs the user tower over history item vectors and user features."""

    def __init__(
        self,
        model_dir: str | Path | Location,
        device: str,
        precision: Precision,
        threads: int,
        batch_size: int,
        item_matrix: Any,  # [N, D] float32, or an ObjectRef to it
        feature_columns: Sequence[str],
    ):
        import ray

        super().__init__(model_dir, device, precision, threads, batch_size)
        self.item_matrix = ray.get(item_matrix) if isinstance(item_matrix, ray.ObjectRef) else item_matrix
        self.feature_columns = list(feature_columns)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Vectors for a batch of user inputs (``user_id, history_index, <features>, input_hash``)."""
        import torch

        history = batch.column(HISTORY_INDEX).combine_chunks()
        features = pl.from_arrow(batch.select(self.feature_columns)) if self.feature_columns else None
        length = self.artifact.history_length
        vectors = np.empty((batch.num_rows, self.artifact.embedding_dim), dtype=np.float32)  # [B, D]
        with torch.inference_mode():
            for start in range(0, batch.num_rows, self.batch_size):
                stop = min(start + self.batch_size, batch.num_rows)
                index, mask = left_padded(history.slice(start, stop - start), length)  # [b, L], [b, L]
                history_vectors = torch.from_numpy(self.item_matrix[index])  # [b, L, D]
                vectors[start:stop] = self.artifact.encode_users(
                    history_vectors,
                    torch.from_numpy(mask),
                    features.slice(start, stop - start) if features is not None else None,
                ).numpy()
        return self.rows("user_id", batch.column("user_id").combine_chunks(), vectors,
                         batch.column("input_hash").combine_chunks())


class PartitionEncoder(UserEncoder):
    """Embeds whole user partitions: builds their inputs, reuses what it can, writes the parts.

    One call per partition of the snapshot (a one-row batch naming it): the
    actor reads that partition's users and interactions, builds histories and
    input hashes, copies the vectors of the previous embeddings of this model
    version whose hash is unchanged, encodes the rest, and writes them all as
    one part of the staging folder. It returns the part's record with the
    counts, so the driver never holds a user row.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        item_hashes: Any,  # pa.Table (item_id, input_hash) of every snapshot item, or a ref
        previous: EmbeddingsFolder | None,  # the last embeddings of this model version, to reuse
        write_to: Location,  # the staging folder of the users' embeddings, on either kind of root
        **encoder: Any,
    ) -> None:
        import ray

        super().__init__(**encoder)
        self.snapshot = snapshot
        self.item_hashes = ray.get(item_hashes) if isinstance(item_hashes, ray.ObjectRef) else item_hashes
        self.item_ids = self.item_hashes.column("item_id")
        self.previous = previous
        self.write_to = write_to

    def __call__(self, batch: pa.Table) -> pa.Table:  # type: ignore[override]
        from recbatch.embed.incremental import plan_reuse
        from recbatch.embed.store import read_user_partition
        from recbatch.parts import PARTITION, write_part

        (partition,) = batch.column(PARTITION).to_pylist()
        inputs = user_inputs(
            self.snapshot.scan_partition("users", partition),
            serving_events(self.snapshot, partition),
            self.item_ids, self.item_hashes,
            history_length=self.artifact.history_length, feature_columns=self.feature_columns,
        )
        before = None
        if self.previous is not None:
            before = read_user_partition(self.previous, partition, self.snapshot.partitions,
                                         ["user_id", "embedding", "input_hash", "model_version"])
        plan = plan_reuse(inputs.select(["user_id", "input_hash"]), before, "user_id")
        todo = inputs.filter(pc.is_in(inputs.column("user_id"), value_set=plan.encode_ids))
        parts = [super().__call__(todo)] if todo.num_rows else []
        if plan.reused:
            assert before is not None
            parts.append(before.filter(pc.is_in(before.column("user_id"), value_set=plan.reuse_ids)))
        schema = embeddings_schema(self.snapshot.id_type, "user_id")
        rows = pa.concat_tables([t.cast(schema) for t in parts]) if parts else schema.empty_table()
        record = write_part(rows, self.write_to, partition)
        return pa.table({**{k: [v] for k, v in record.items()}, "encoded": [plan.encoded], "reused": [plan.reused]})
