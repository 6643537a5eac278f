"""Top-K index matrices -> recommendation rows, for every list producer in evaluation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def lists_table(
    user_ids: pa.Array,  # [B]
    idx: np.ndarray,  # [B, k] int64 rows of `item_ids`, -1 padded (score.ranking.rank output)
    scores: np.ndarray,  # [B, k] float32
    item_ids: pa.Array,  # [N] the catalog the indices point into
    model_version: str,
) -> pa.Table:
    """Rows of ``recommendations_schema``: padding dropped, so short lists stay short."""
    valid = idx >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
    return pa.table(
        {
            "user_id": user_ids,
            "item_ids": pa.ListArray.from_arrays(offsets, item_ids.take(pa.array(idx[valid]))),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(scores[valid], pa.float32())),
            "model_version": pa.array([model_version] * len(user_ids)),
        }
    )
