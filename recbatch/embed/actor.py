"""The part of an encoding actor that items and users share.

Ray Data's actor pool instantiates a callable class once per actor, so the
model is loaded once per actor (not once per batch) and stays on its device.
This lives in the package because Ray workers import it by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from recbatch.embed.store import matrix_to_list_array
from recbatch.fs import Location
from recbatch.runtime import Precision
from recbatch.schemas import embeddings_schema, id_type_of


class EncoderActor:
    """What item and user encoders share: one model per actor, pinned threads and device.

    `threads` is set explicitly because an actor with fractional ``num_cpus``
    would otherwise let torch use every core of the node and fight its
    neighbours for them.
    """

    def __init__(
        self, model_dir: str | Path | Location, device: str, precision: Precision, threads: int, batch_size: int
    ):
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
