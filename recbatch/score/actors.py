"""The Ray Data callables of the scoring stage (they run inside Ray workers).

    partition p ─▶ ScoringWorker(shard 0) ─▶ ... ─▶ ScoringWorker(shard S-1) ─▶ part records
                   reads p's users               scores, finishes and writes
                   (score/inputs.py), scores     the lists as parts of p
                   them against its item shard

A ``ScoringWorker`` is one actor of a pool per item shard. Each holds its item
shard for its whole life (passed once as an object reference), so a batch only
carries user vectors and their filter lists. The first shard's workers read
their users themselves, a partition per call; the last shard's workers turn
catalog positions into ids and write the parts. With one shard (the default)
one worker does all three: a user's rows never leave the process that scores
them, and the stage starts one pool of processes, not three. With several
shards this is Spark's blocked ``recommendForAll``: top-K per item shard,
merged per user into the running ``top_index``/``top_score`` lists.

Item indices are positions in the catalog sorted by item id, so breaking
ties by index is breaking them by id.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

from recbatch.fs import Location
from recbatch.parts import PARTITION
from recbatch.score.kernel import kernel_used, merge_topk
from recbatch.score.inputs import PartitionSource
from recbatch.score.ranking import BLOCKED, SEEN, rank

# Columns carried between the stages of one batch.
TOP_INDEX = "top_index"  # list<int64>: catalog positions, -1 padded, length k
TOP_SCORE = "top_score"  # list<float32>: -inf padded
SCORED_ON = "scored_on"  # string: comma-joined Ray node ids of the shard actors that scored the row
SCORED_WITH = "scored_with"  # string: comma-joined top-K kernels ("native"/"torch") those actors ran


def resolve_ref(value: Any) -> Any:
    """A value handed to a worker as itself or as a Ray object reference (``ray.put``, shipped once): the value."""
    import ray

    return ray.get(value) if isinstance(value, ray.ObjectRef) else value


def fixed_lists_to_matrix(column: pa.ChunkedArray | pa.Array, width: int) -> np.ndarray:
    """Fixed-length list rows as a ``[rows, width]`` numpy matrix, without a Python loop."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(column), width)


def matrix_to_list_column(matrix: np.ndarray, keep: np.ndarray | None = None) -> pa.Array:
    """``[rows, width]`` → a plain Arrow list column; `keep` [rows, width] bool trims each row.

    Rows keep their leading `keep` entries: padding is only ever at a row's end.
    """
    rows, width = matrix.shape
    if keep is None:
        offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int64)
        values = matrix.reshape(-1)
    else:
        offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        values = matrix[keep]
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values)).cast(
        pa.list_(pa.from_numpy_dtype(values.dtype))
    )


class ScoringWorker:
    """One actor of the scoring stage's pool for one item shard: read (first shard), score, write (last shard)."""

    def __init__(
        self,
        scorer: dict[str, Any],  # ShardScorer's arguments: this pool's item shard and the kernel settings
        item_ids: Any,  # pa.Array [N] (or an ObjectRef to it), sorted: catalog position -> item id
        batch_rows: int,  # users per kernel call
        source: PartitionSource | None = None,  # first shard: batches are partition numbers, read here
        finisher: dict[str, Any] | None = None,  # last shard: Finisher's arguments; the lists are written here
    ) -> None:
        self.item_ids = resolve_ref(item_ids)
        self.scorer = ShardScorer(**scorer)
        self.batch_rows = batch_rows
        self.source = source
        self.finisher = None if finisher is None else Finisher(item_ids=self.item_ids, **finisher)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        """A partition number (first shard) or a block of users scored by the earlier shards -> the
        block scored against this shard, or (last shard) the records of the parts written."""
        if self.finisher is not None:
            self.finisher.start()  # rows an earlier call held when it failed are not this call's
        if self.source is not None:
            (partition,) = batch.column(PARTITION).to_pylist()
            batch = self.source.read(partition, self.item_ids)  # [U] users of the partition
        for start in range(0, batch.num_rows, self.batch_rows):
            scored = self.scorer(batch.slice(start, self.batch_rows))
            if self.finisher is None:
                yield scored  # streams on to the next shard's pool while this block is scored
            else:
                yield from self.finisher.add(scored)
        if self.finisher is not None:
            yield from self.finisher.flush()


class ShardScorer:
    """Scores a batch of users against one item shard and merges into their running top-K."""

    def __init__(
        self,
        items: Any,  # [N_shard, D] float32, or an ObjectRef to it
        eligible: Any,  # [N_shard] bool: available and not globally blocked
        offset: int,  # catalog position of the shard's first item
        k: int,
        filter_seen: bool,
        user_block: int,
        item_tile: int,
        device: str,
        precision: str,
        threads: int,
        kernel: str = "auto",
    ) -> None:
        self.items = resolve_ref(items)
        self.eligible = resolve_ref(eligible)
        self.offset = offset
        self.k = k
        self.filter_seen = filter_seen
        self.tiles = {"user_block": user_block, "item_tile": item_tile}
        self.device = device
        self.precision = precision
        self.threads = threads
        self.kernel = kernel_used(kernel, device)  # "auto" resolved once, so each row can say what ran
        self.node_id = _current_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = fixed_lists_to_matrix(batch.column("embedding"), self.items.shape[1])  # [B, D]
        idx, scores = rank(
            users, self.items, self.eligible, batch.column(SEEN), batch.column(BLOCKED),
            k=self.k, filter_seen=self.filter_seen, offset=self.offset,
            device=self.device, precision=self.precision, threads=self.threads, kernel=self.kernel, **self.tiles,
        )  # [B, k] each: catalog positions
        if TOP_INDEX in batch.column_names:  # an earlier shard's lists: keep the best of both
            earlier = (
                fixed_lists_to_matrix(batch.column(TOP_INDEX), self.k),
                fixed_lists_to_matrix(batch.column(TOP_SCORE), self.k),
            )
            idx, scores = merge_topk([earlier, (idx, scores)], self.k)
            batch = batch.drop_columns([TOP_INDEX, TOP_SCORE])
        batch = (
            batch.append_column(TOP_INDEX, matrix_to_list_column(idx))
            .append_column(TOP_SCORE, matrix_to_list_column(scores.astype(np.float32)))
        )
        for column, value in ((SCORED_ON, self.node_id), (SCORED_WITH, self.kernel)):
            batch = _append_provenance(batch, column, value)
        return batch


def _append_provenance(batch: pa.Table, column: str, value: str) -> pa.Table:
    """Set `column` to `value`, or append it to an earlier shard's value: every shard that took part."""
    values = pa.array([value] * batch.num_rows, pa.string())
    if column in batch.column_names:
        values = pa.compute.binary_join_element_wise(batch.column(column), values, ",")
        batch = batch.drop_columns([column])
    return batch.append_column(column, values)


class Finisher:
    """Turns catalog positions into item ids, trims padding and adds the explanation column,
    then writes the finished rows into `write_to` (a staging folder) as parts of
    ``rows_per_file`` rows (one user partition each) and returns only their records
    (``recbatch.parts``) with the provenance: the lists never reach the driver.

    Rows are held until a whole part's worth has been scored, so part sizes follow
    ``score.rows_per_file``, not the kernel's batches; ``flush`` writes the rest at the end of
    each input batch (a partition), so every record is returned with the batch that made it.
    """

    def __init__(
        self,
        item_ids: Any,  # pa.Array [N], sorted: catalog position -> item id
        k: int,
        model_version: str,
        write_to: Location,  # the staging folder (folders.staging_for), on either kind of root
        id_type: str,
        rows_per_file: int,
        items: Any | None = None,  # [N, D] float32 (or ref): only for explanations
    ) -> None:
        self.item_ids = resolve_ref(item_ids)
        self.k = k
        self.model_version = model_version
        self.items = None if items is None else resolve_ref(items)
        self.write_to = write_to
        self.id_type = id_type
        self.rows_per_file = rows_per_file
        self._pending: list[pa.Table] = []  # finished rows not yet written, fewer than rows_per_file
        self._pending_rows = 0

    def start(self) -> None:
        """Hold nothing: a new input batch begins."""
        self._pending, self._pending_rows = [], 0

    def add(self, batch: pa.Table) -> Iterator[pa.Table]:
        """Finish `batch`; write (and yield the records of) every whole part now held."""
        self._pending.append(self.finish(batch))
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self.rows_per_file:
            rows = pa.concat_tables(self._pending)
            whole = rows.num_rows - rows.num_rows % self.rows_per_file
            yield self._write(rows.slice(0, whole))
            self._pending, self._pending_rows = [rows.slice(whole)], rows.num_rows - whole

    def flush(self) -> Iterator[pa.Table]:
        """Write (and yield the records of) the rows still held."""
        if self._pending_rows:
            yield self._write(pa.concat_tables(self._pending))
        self.start()

    def _write(self, rows: pa.Table) -> pa.Table:
        from recbatch.score.writer import write_parts

        return write_parts(rows, self.write_to, self.id_type, self.rows_per_file)

    def finish(self, batch: pa.Table) -> pa.Table:
        idx = fixed_lists_to_matrix(batch.column(TOP_INDEX), self.k)  # [B, k]
        scores = fixed_lists_to_matrix(batch.column(TOP_SCORE), self.k)  # [B, k]
        keep = idx >= 0
        columns = {
            "user_id": batch.column("user_id"),
            "item_ids": _take_lists(self.item_ids, idx, keep),
            "scores": matrix_to_list_column(scores.astype(np.float32), keep),
            "model_version": pa.array([self.model_version] * batch.num_rows, pa.string()),
        }
        if self.items is not None:
            because = most_similar_history(self.items, idx, batch.column(SEEN))  # [B, k]
            columns["because_item_ids"] = _take_lists(self.item_ids, because, keep)
        for column in (SCORED_ON, SCORED_WITH, PARTITION):  # the stage records these, they are not list rows
            if column in batch.column_names:
                columns[column] = batch.column(column)
        return pa.table(columns)


def _current_node_id() -> str:
    """The Ray node this actor runs on ("local" outside Ray, e.g. in unit tests)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _take_lists(item_ids: pa.Array, idx: np.ndarray, keep: np.ndarray) -> pa.Array:
    """Item ids at catalog positions `idx` [B, k], as list rows trimmed by `keep`; -1 gives null."""
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    chosen = idx[keep]
    values = item_ids.take(pa.array(chosen, mask=chosen < 0))  # -1 (no such item) -> null
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def most_similar_history(items: np.ndarray, recommended: np.ndarray, history: pa.ChunkedArray) -> np.ndarray:
    """For each recommended item, the user's history item with the highest inner product.

    ``items`` [N, D]; ``recommended`` [B, k] catalog positions (-1 padded);
    ``history`` B lists of catalog positions. Returns [B, k] positions, -1
    where the slot is padding or the user has no history.
    """
    if isinstance(history, pa.ChunkedArray):
        history = history.combine_chunks()
    offsets = history.offsets.to_numpy()
    flat = history.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    out = np.full(recommended.shape, -1, dtype=np.int64)
    for row in range(len(recommended)):
        past = flat[offsets[row] : offsets[row + 1]]
        recs = recommended[row]
        valid = recs >= 0
        if len(past) == 0 or not valid.any():
            continue
        similarity = items[recs[valid]] @ items[past].T  # [k', H]
        out[row, valid] = past[np.argmax(similarity, axis=1)]
    return out
