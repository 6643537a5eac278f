"""The item side of the embedding stage: model inputs and the encoding actor.

``item_hashes`` runs on the driver: the reuse plan needs only ids and hashes.
``ItemEncoder`` runs inside Ray workers (which is why it lives in the
package): it is the callable class an actor pool instantiates once per actor,
so the model loads once per actor rather than once per batch, and it renders
the text of the snapshot rows it is handed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch.embed.bucketing import length_sorted_batches
from recbatch.embed.store import matrix_to_list_array
from recbatch.model.features import item_input_hash, render_item_text
from recbatch.runtime import Precision
from recbatch.schemas import embeddings_schema, id_type_of

def item_hashes(items: pl.DataFrame) -> pa.Table:
    """``(item_id, input_hash)``: all the reuse plan needs, computed without the model.

    The hash is of exactly what the model sees (the rendered text and the
    id), so an edit to any text column invalidates the item's vector.
    """
    return pa.table({"item_id": items["item_id"].to_arrow(), "input_hash": item_input_hash(items).to_arrow()})


class EncoderActor:
    """What item and user encoders share: one model per actor, pinned threads and device.

    `threads` is set explicitly because an actor with fractional ``num_cpus``
    would otherwise let torch use every core of the node and fight its
    neighbours for them.
    """

    def __init__(self, model_dir: str | Path, device: str, precision: Precision, threads: int, batch_size: int):
        import torch

        from recbatch.model.artifact import load_artifact

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.artifact = load_artifact(model_dir, device=device, precision=precision)
        self.batch_size = batch_size

    def rows(self, id_column: str, ids: pa.Array, vectors: np.ndarray, hashes: pa.Array) -> pa.Table:
        """Output rows in the embeddings schema (plain list<float32>, not a tensor type)."""
        n = len(ids)
        table = pa.table(
            {
                id_column: ids,
                "embedding": matrix_to_list_array(vectors),
                "input_hash": hashes,
                "model_version": pa.array([self.artifact.model_version] * n, pa.string()),
            }
        )
        return table.cast(embeddings_schema(id_type_of(ids.type), id_column))


class ItemEncoder(EncoderActor):
    """Encodes rendered item texts, batching them by token length to cut padding.

    Ray Data hands the actor a window of several model batches; the actor
    sorts the window by token length and encodes it in `batch_size` slices,
    so each slice is padded only to a length its members nearly share.
    """

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        items = pl.from_arrow(batch)  # snapshot item rows: item_id, title, genres, ...
        assert isinstance(items, pl.DataFrame)
        texts = render_item_text(items).to_list()
        ids = batch.column("item_id").combine_chunks()
        lengths = self.token_lengths(texts)
        vectors = np.empty((len(texts), self.artifact.embedding_dim), dtype=np.float32)  # [N, D]
        with torch.inference_mode():
            for rows in length_sorted_batches(lengths, self.batch_size):
                vectors[rows] = self.artifact.encode_items(
                    [texts[i] for i in rows], ids.take(pa.array(rows)).to_pylist()
                ).numpy()  # [b, D]
        return self.rows("item_id", ids, vectors, item_input_hash(items).to_arrow())

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token count of each text after truncation (what the model will actually see)."""
        max_tokens = int(self.artifact.card["max_text_tokens"])
        encoded = self.artifact.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens)
        return np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
