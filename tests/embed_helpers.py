"""What the embedding stage must produce, computed without it (tests/test_embed.py, the object-store tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from recbatch.data.snapshot import Snapshot
from recbatch.fs import Location


def reference_embeddings(model_dir: Path | Location, snapshot: Snapshot) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Items and users encoded in-process, one row at a time, with no bucketing or reuse.

    The oracle the stage must match, on either kind of root: a plain loop over the model's own API.
    """
    from recbatch.model.artifact import load_artifact
    from recbatch.model.features import render_item_text

    artifact = load_artifact(model_dir)
    items = snapshot.items().collect().sort("item_id")
    texts = render_item_text(items).to_list()
    ids = items["item_id"].to_list()
    item_vectors = torch.cat([artifact.encode_items([t], [i]) for t, i in zip(texts, ids)]).numpy()  # [N, D]
    row_of = {item_id: row for row, item_id in enumerate(ids)}

    events = snapshot.interactions().collect()  # every interaction, test rows included: what is served
    users = snapshot.users().collect().sort("user_id")
    L = artifact.history_length
    user_vectors = []
    for user in users.iter_rows(named=True):
        seen = events.filter(pl.col("user_id") == user["user_id"]).sort("ts")["item_id"].to_list()[-L:]
        history = np.zeros((1, L, artifact.embedding_dim), dtype=np.float32)
        mask = np.zeros((1, L), dtype=bool)
        for k, item_id in enumerate(seen):
            history[0, L - len(seen) + k] = item_vectors[row_of[item_id]]
            mask[0, L - len(seen) + k] = True
        features = pl.DataFrame([user]).select(artifact.user_features.columns)
        user_vectors.append(artifact.encode_users(torch.from_numpy(history), torch.from_numpy(mask), features))
    return (
        pl.DataFrame({"item_id": ids, "embedding": item_vectors}),
        pl.DataFrame({"user_id": users["user_id"], "embedding": torch.cat(user_vectors).numpy()}),
    )
