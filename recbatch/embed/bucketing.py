"""Length bucketing: batch texts of similar token length together.

A BERT batch is padded to its longest member, and every padding token costs a
full pass through attention and the feed-forward layers for nothing. Item
texts vary a lot in length (a bare title next to a title with tags and a
description), so batching them in arrival order wastes a large share of the
work. Sorting a window of rows by length before cutting it into batches keeps
each batch's members close in length, so almost no padding is computed.

The functions here are pure (lengths in, index arrays out) so the saving can
be measured and tested without a model.
"""

from __future__ import annotations

import numpy as np


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of at most `batch_size`, longest first.

    Longest first so the first batch shows the peak memory of the window
    (an out-of-memory error surfaces at once rather than at the end). The sort
    is stable, so equal lengths keep their arrival order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def token_budget_batches(lengths: np.ndarray, max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Length-sorted batches holding at most `max_tokens` padded tokens (and `max_rows` rows).

    Sorting alone still pads a whole batch to its longest member, and a few
    long texts (a title with a description) at the head of a batch of short
    ones dominate its cost. Capping the padded size instead gives long texts
    small batches and short texts large ones, so every batch costs about the
    same and almost nothing is padding.
    """
    if max_tokens < 1 or max_rows < 1:
        raise ValueError(f"max_tokens and max_rows must be >= 1, got {max_tokens}, {max_rows}")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))  # sorted: the first row is the longest
        rows = max(1, min(max_rows, max_tokens // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def arrival_order_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """The batches a plain loop would form: the reference bucketing is measured against."""
    order = np.arange(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def padded_token_count(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens the encoder computes when each batch is padded to its longest member."""
    lengths = np.asarray(lengths)
    return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))


def padding_fraction(lengths: np.ndarray, batches: list[np.ndarray]) -> float:
    """Share of the computed tokens that are padding (0 = no waste)."""
    computed = padded_token_count(lengths, batches)
    return 0.0 if computed == 0 else 1.0 - float(np.sum(lengths)) / computed
