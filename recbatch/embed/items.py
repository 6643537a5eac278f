"""The item side of the embedding stage: input hashes and the encoding actor.

``item_hashes`` runs on the driver: the reuse plan needs only ids and hashes.
``ItemEncoder`` runs in the actor pool: it renders the text of the snapshot
rows it is handed, buckets them by token length and encodes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from recbatch.embed.actor import EncoderActor
from recbatch.embed.bucketing import token_budget_batches
from recbatch.model.features import item_input_hash, render_item_text
from recbatch.fs import Location
from recbatch.runtime import Precision


def item_hashes(items: pl.DataFrame) -> pa.Table:
    """``(item_id, input_hash)``: all the reuse plan needs, computed without the model.

    The hash is of exactly what the model sees (the rendered text and the
    id), so an edit to any text column invalidates the item's vector.
    """
    return pa.table({"item_id": items["item_id"].to_arrow(), "input_hash": item_input_hash(items).to_arrow()})


class ItemEncoder(EncoderActor):
    """Encodes rendered item texts, batching them by token length to cut padding.

    Ray Data hands the actor a window of several model batches; the actor
    sorts the window by token length and cuts it into batches of at most
    `max_batch_tokens` padded tokens (and `batch_size` rows), so each batch
    is padded only to a length its members nearly share.
    """

    def __init__(self, model_dir: str | Path | Location, device: str, precision: Precision, threads: int,
                 batch_size: int, max_batch_tokens: int):
        super().__init__(model_dir, device, precision, threads, batch_size)
        self.max_batch_tokens = max_batch_tokens

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        items = pl.from_arrow(batch)  # snapshot item rows: item_id, title, genres, ...
        assert isinstance(items, pl.DataFrame)
        texts = render_item_text(items).to_list()
        ids = batch.column("item_id").combine_chunks()
        lengths = self.token_lengths(texts)
        vectors = np.empty((len(texts), self.artifact.embedding_dim), dtype=np.float32)  # [N, D]
        with torch.inference_mode():
            for rows in token_budget_batches(lengths, self.max_batch_tokens, self.batch_size):
                vectors[rows] = self.artifact.encode_items(
                    [texts[i] for i in rows], ids.take(pa.array(rows)).to_pylist()
                ).numpy()  # [b, D]
        return self.rows("item_id", ids, vectors, item_input_hash(items).to_arrow())

    def token_lengths(self, texts: list[str]) -> np.ndarray:
        """Token count of each text after truncation (what the model will actually see)."""
        max_tokens = int(self.artifact.card["max_text_tokens"])
        encoded = self.artifact.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_tokens)
        return np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
