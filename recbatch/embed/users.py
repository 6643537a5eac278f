"""The user side of the embedding stage: model inputs and the encoding actor.

A user vector is the user tower applied to the *item embeddings* of the
user's recent history (plus the user's features), so users need no BERT pass:
the actors receive the item matrix of the same model version once, as a Ray
object, and look history rows up by index.

User inputs are prepared on the driver with polars because they come from a
group-by over all interactions (the history) joined to the user features; the
result is compact (ids, a short list of row indices, features, a hash) and
the expensive part, the tower itself, runs in the actor pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch.data.snapshot import Snapshot
from recbatch.embed.actor import EncoderActor
from recbatch.model.features import user_histories, user_input_hash
from recbatch.runtime import Precision

HISTORY_INDEX = "history_index"


def serving_events(snapshot: Snapshot) -> pl.LazyFrame:
    """The interactions published lists are built from: all of them, whatever the split.

    The split exists for evaluation; a nightly job serves what each user did up
    to last night, so the user vectors, the seen filter and the popularity
    prior of the scoring stage all read every row of the snapshot.
    """
    return snapshot.interactions()


def user_inputs(
    snapshot: Snapshot,
    events: pl.LazyFrame,
    item_ids: pa.Array,
    item_hashes: pa.Table,
    *,
    history_length: int,
    feature_columns: Sequence[str],
) -> pa.Table:
    """One row per snapshot user: ``user_id, history_index, <features>, input_hash``.

    Histories come from `events` (``user_id, item_id, ts`` rows): every
    interaction of the snapshot when serving (`serving_events`), only the rows
    before the held-out ones when evaluating (``eval/holdout.py``).
    ``history_index`` holds rows of the item matrix (row i = `item_ids`[i]),
    oldest first and most recent last; history items without an embedding are
    dropped. The hash covers the history ids, each history item's own input
    hash (an edited item re-encodes the users who saw it) and the features.
    """
    histories = user_histories(events.select("user_id", "item_id", "ts"), history_length).collect()
    features = [c for c in feature_columns if c in snapshot.users().collect_schema().names()]
    users = (
        snapshot.users()
        .select("user_id", *features)
        .collect()
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
        model_dir: str | Path,
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
