"""Exact top-K inner-product search, tile by tile, with threshold pruning.

Two implementations of one contract (same results, same tie rule):

* the fused native kernel (``native.py`` + ``native_topk.c``, the CPU
  default): a C micro-kernel computes an 8-user (AVX-512) x 32-item block of
  scores in registers and compares it with the users' thresholds right there, so no
  score tile is ever written to memory and read back; only the rare scores
  that beat a threshold leave the registers. Built with the system C
  compiler on first use; without one, ``kernel="auto"`` falls back to:
* the torch kernel described below (CUDA, fp16, and the CPU fallback).

Why not ``torch.topk`` over a users x items score matrix: on CPU the selection
costs more than the matrix product (5-7 ns per score against 0.7 ns for an
in-cache sgemm at d=64), and the matrix does not fit in memory at 1M users.
So scores are computed one cache-sized tile (``user_block`` x ``item_tile``)
at a time and each user keeps a running top-K whose K-th score is a
*threshold*: a later item can only enter the list if it beats it. After the
first few tiles almost every score is below the threshold, so a tile costs a
matrix product, one comparison and a short list of survivors. Survivors are
collected over several tiles and merged into the running top-K only when
enough have piled up, which keeps the expensive selection on small inputs.

Determinism: ties are broken by item index, lower first. Callers that pass
items sorted by id get ties broken by id. Filtered entries (seen items,
unavailable items) never appear; a user with fewer than K eligible items gets
a shorter list, padded with index -1 and score -inf.

Working memory is one tile plus the candidate buffer, independent of the
number of users and items; only the [U, k] result grows with the users given
(the scoring stage calls this once per batch of users). The same code runs on CUDA (in fp16 when asked)
where the tiles are simply larger.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Literal

import numpy as np
import scipy.sparse as sp
import torch

from recbatch.score import native

PAD_INDEX = -1
PAD_SCORE = float("-inf")


def topk(
    user_emb: np.ndarray | torch.Tensor,
    item_emb: np.ndarray | torch.Tensor,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    item_mask: np.ndarray | None = None,
    user_block: int = 1024,
    item_tile: int = 1024,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    threads: int = 1,
    kernel: Literal["auto", "native", "torch"] = "auto",
    native_build: native.NativeBuild | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The K highest inner products of each user with the items, best first.

    Args:
        user_emb: [U, D] user vectors.
        item_emb: [N, D] item vectors; row order is the tie-break order.
        k: list length wanted.
        exclude: [U, N] sparse; a stored entry (u, i) removes item i for user u
            (items seen, per-user blocklist).
        item_mask: [N] bool; False removes the item for every user
            (unavailable, globally blocked).
        user_block, item_tile: tile shape. The CPU defaults keep one float32
            tile (4 MiB) in cache, where sgemm at d=64 ran ~3x faster than
            on a tile that spills to memory; on a GPU use far larger tiles.
        device: "cpu" or a CUDA device.
        precision: "fp32", or "fp16" (CUDA only: half-precision products,
            selection in fp32).
        threads: CPU only: user blocks scored concurrently, each op on one
            thread. Torch's own intra-op threads spin-wait between the many
            small per-tile ops and collapse on a shared machine (measured:
            10x slower than single-threaded under load), so parallelism
            comes from whole blocks instead; torch is held at one intra-op
            thread for the duration of the call. The native kernel runs the
            same user blocks on these threads (ctypes releases the GIL).
        kernel: "native": the fused C kernel (CPU, fp32; raises
            ``native.NativeKernelUnavailable`` when it cannot be built);
            "torch": the tiled torch kernel; "auto": native on CPU when it
            builds (else one logged warning and torch), torch on CUDA.
            The native kernel uses `user_block` as its unit of work per
            thread and picks its own item panel (`item_tile` is torch's).
        native_build: compiler, cache directory and variant of the native
            build (default: the system compiler, ``~/.cache/recbatch/kernels``).

    Returns:
        (indices [U, k] int64 into item_emb rows, padded with -1;
         scores [U, k] float32, padded with -inf)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    user_emb = _as_float32_numpy(user_emb)
    item_emb = _as_float32_numpy(item_emb)
    n_users, dim = user_emb.shape
    n_items = item_emb.shape[0]
    if item_emb.shape[1] != dim:
        raise ValueError(f"user dim {dim} != item dim {item_emb.shape[1]}")
    if exclude is not None and exclude.shape != (n_users, n_items):
        raise ValueError(f"exclude has shape {exclude.shape}, expected {(n_users, n_items)}")

    # Globally removed items are dropped from the matrix itself: cheaper than masking.
    kept = np.arange(n_items) if item_mask is None else np.flatnonzero(item_mask)
    if item_mask is not None:
        item_emb = item_emb[kept]
        if exclude is not None:
            exclude = exclude[:, kept]
    exclude = None if exclude is None else sp.csr_matrix(exclude)

    device = torch.device(device)
    dtype = _dtype_for(precision, device)
    fused = _native_kernel(kernel, device, native_build)
    out_idx = np.full((n_users, k), PAD_INDEX, dtype=np.int64)
    out_val = np.full((n_users, k), PAD_SCORE, dtype=np.float32)
    if len(kept) == 0:
        return out_idx, out_val
    if fused is not None:
        idx, val = fused.topk(user_emb, item_emb, k, exclude, user_block, threads)  # kept-item positions
        return np.where(idx >= 0, kept[np.maximum(idx, 0)], PAD_INDEX), val
    items = torch.from_numpy(item_emb).to(device=device, dtype=dtype)  # [N', D]

    scorer = _BlockScorer(items, k, item_tile, device, dtype)

    def score_block(start: int) -> None:
        stop = min(start + user_block, n_users)
        users = torch.from_numpy(user_emb[start:stop]).to(device=device, dtype=dtype)  # [B, D]
        seen = None if exclude is None else exclude[start:stop]
        idx, val = scorer.score(users, seen)  # [B, k] each, on device
        idx_np = idx.cpu().numpy()
        out_idx[start:stop] = np.where(idx_np >= 0, kept[np.maximum(idx_np, 0)], PAD_INDEX)
        out_val[start:stop] = val.float().cpu().numpy()

    starts = range(0, n_users, user_block)
    if device.type != "cpu" or threads <= 1:
        with torch_threads(1 if device.type == "cpu" else torch.get_num_threads()):
            for start in starts:
                score_block(start)
        return out_idx, out_val
    with torch_threads(1), ThreadPoolExecutor(threads) as pool:
        list(pool.map(score_block, starts))  # list(): re-raise any block's error
    return out_idx, out_val


def kernel_used(
    kernel: Literal["auto", "native", "torch"], device: str | torch.device = "cpu",
    native_build: native.NativeBuild | None = None,
) -> Literal["native", "torch"]:
    """Which implementation `topk(..., kernel=kernel)` runs here: "auto" resolved (building on first use).

    Callers record it (the run manifest's ``scoring_kernels``) so a silent fallback shows.
    """
    return "torch" if _native_kernel(kernel, torch.device(device), native_build) is None else "native"


def _native_kernel(kernel: str, device: torch.device, build: native.NativeBuild | None) -> native.NativeKernel | None:
    """The native kernel when `kernel` asks for it (or "auto" gets it), else None for the torch path."""
    build = build or native.NativeBuild()
    if kernel == "torch":
        return None
    if kernel == "native":
        if device.type != "cpu":
            raise ValueError(f"the native top-K kernel runs on CPU only, not {device}: use kernel='torch' or 'auto'")
        return native.load(build)
    if kernel == "auto":
        return native.load_or_warn(build) if device.type == "cpu" else None
    raise ValueError(f"kernel must be 'auto', 'native' or 'torch', got {kernel!r}")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op pool at `n` threads, then restore it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _BlockScorer:
    """Running top-K of one user block over all item tiles (state lives per call)."""

    def __init__(self, items: torch.Tensor, k: int, item_tile: int, device, dtype) -> None:
        self.items = items  # [N, D]
        self.k = k
        self.item_tile = item_tile
        self.device = device
        self.dtype = dtype

    def score(self, users: torch.Tensor, seen: sp.csr_matrix | None) -> tuple[torch.Tensor, torch.Tensor]:
        k, tile, dev = self.k, self.item_tile, self.device
        n_items = self.items.shape[0]
        n_block = users.shape[0]
        seen_rows, seen_cols = _block_exclusions(seen, dev)
        starts = list(range(0, n_items, tile))
        if seen_cols is not None:  # where each tile's exclusions begin in the column-sorted list
            edges = torch.tensor(starts + [n_items], device=dev)
            seen_at = torch.searchsorted(seen_cols, edges).tolist()
        pending = _Candidates(n_block, dev)
        budget = 2 * n_block * k  # merge once about two lists per user have piled up
        tile_buf = torch.empty((n_block, min(tile, n_items)), device=dev, dtype=self.dtype)
        mask_buf = torch.empty(tile_buf.shape, device=dev, dtype=torch.bool)

        for t, t0 in enumerate(starts):
            t1 = min(t0 + tile, n_items)
            scores = tile_buf[:, : t1 - t0]
            torch.mm(users, self.items[t0:t1].T, out=scores)  # [B, T]
            if seen_cols is not None and seen_at[t + 1] > seen_at[t]:
                lo, hi = seen_at[t], seen_at[t + 1]
                scores[seen_rows[lo:hi], seen_cols[lo:hi] - t0] = PAD_SCORE
            if t == 0:  # nothing to prune against yet: plain selection on the first tile
                first_idx = torch.arange(t0, t1, device=dev).expand(n_block, -1)
                best_val, best_idx = select_topk(scores.float(), first_idx, k)
                continue
            threshold = best_val[:, k - 1 :].to(self.dtype)  # [B, 1]: the K-th best so far
            survivors = _greater(scores, threshold, out=mask_buf[:, : t1 - t0])  # [B, T] bool
            rows, cols = _true_positions(survivors)  # row-major: ascending item per row
            if rows.numel():
                pending.add(rows, cols + t0, scores[rows, cols].float())
            if pending.size >= budget:
                best_val, best_idx = pending.merge_into(best_val, best_idx, k)
        if pending.size:
            best_val, best_idx = pending.merge_into(best_val, best_idx, k)
        return _order_by_score_then_index(best_idx, best_val)


class _Candidates:
    """Survivors of the threshold test, laid out per user in ascending item order."""

    def __init__(self, n_rows: int, device) -> None:
        self.n_rows = n_rows
        self.device = device
        self.per_row = torch.zeros(n_rows, dtype=torch.int64, device=device)
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.size = 0

    def add(self, rows: torch.Tensor, items: torch.Tensor, values: torch.Tensor) -> None:
        """`rows` must be sorted (as ``nonzero`` returns them) and items ascending within a row."""
        counts = torch.bincount(rows, minlength=self.n_rows)  # [B]
        row_start = torch.cumsum(counts, 0) - counts  # first entry of each row in this batch
        rank = torch.arange(rows.numel(), device=self.device) - row_start[rows]
        slot = self.per_row[rows] + rank
        self.parts.append((rows, slot, items, values))
        self.per_row += counts
        self.size += rows.numel()

    def merge_into(
        self, best_val: torch.Tensor, best_idx: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """New running top-K from the old one plus every pending candidate."""
        width = int(self.per_row.max())
        cand_val = torch.full((self.n_rows, width), PAD_SCORE, device=self.device)
        cand_idx = torch.full((self.n_rows, width), PAD_INDEX, dtype=torch.int64, device=self.device)
        for rows, slot, items, values in self.parts:
            cand_val[rows, slot] = values
            cand_idx[rows, slot] = items
        self.parts.clear()
        self.per_row.zero_()
        self.size = 0
        vals = torch.cat([best_val, cand_val], dim=1)  # [B, k + width]
        idx = torch.cat([best_idx, cand_idx], dim=1)
        return select_topk(vals, idx, k)


def select_topk(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top `k` columns of each row by score; among equal scores the lower item index wins.

    ``torch.topk`` is fast but breaks ties arbitrarily, which only matters when
    a tie straddles the K-th place; those (rare) rows are redone with a stable
    sort on (score desc, index asc). Returns [B, k] values and indices, padded
    with -inf / -1 when a row has fewer than `k` columns.
    """
    n_rows, width = vals.shape
    if width < k:
        vals = torch.cat([vals, vals.new_full((n_rows, k - width), PAD_SCORE)], dim=1)
        idx = torch.cat([idx, idx.new_full((n_rows, k - width), PAD_INDEX)], dim=1)
        width = k
    take = min(k + 1, width)
    top_val, pos = torch.topk(vals, take, dim=1, sorted=True)  # [B, take]
    top_idx = torch.gather(idx, 1, pos)
    if take > k:
        kth, next_ = top_val[:, k - 1], top_val[:, k]
        straddle = (kth == next_) & torch.isfinite(kth)
        if bool(straddle.any()):
            rows = straddle.nonzero().squeeze(1)
            exact_idx, exact_val = _order_by_score_then_index(idx[rows], vals[rows])
            top_val[rows, :k] = exact_val[:, :k]
            top_idx[rows, :k] = exact_idx[:, :k]
    return top_val[:, :k].contiguous(), top_idx[:, :k].contiguous()


def topk_of_scores(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`topk`'s contract for a score block computed elsewhere (scores that are no inner product):
    each row's K best columns [B, N], ties by lower column, -inf entries (filtered) never returned.

    Returns (indices [B, k] int64, padded with -1; scores [B, k] float32, padded with -inf).
    """
    index = torch.arange(scores.shape[1]).expand_as(scores)  # [B, N]
    vals, idx = select_topk(scores.float(), index, k)  # the right K, in torch.topk's order among ties
    idx, vals = _order_by_score_then_index(idx, vals)
    return idx.numpy(), vals.numpy()


def _order_by_score_then_index(idx: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score descending, then item index ascending; pads go last as -1."""
    vals = vals.float()
    # Padding (-inf) must not outrank real items on the index key.
    sort_key = torch.where(idx < 0, torch.iinfo(torch.int64).max, idx)
    by_index = torch.argsort(sort_key, dim=1, stable=True)
    vals, idx = torch.gather(vals, 1, by_index), torch.gather(idx, 1, by_index)
    by_score = torch.argsort(vals, dim=1, descending=True, stable=True)
    vals, idx = torch.gather(vals, 1, by_score), torch.gather(idx, 1, by_score)
    idx = torch.where(torch.isneginf(vals), PAD_INDEX, idx)
    return idx, vals


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-K lists (global item indices) into one top-K per user.

    Used by item-sharded scoring: each shard returns its own [U, k] lists;
    the union holds the global top-K, so one exact selection finishes the job.
    """
    idx = torch.from_numpy(np.concatenate([p[0] for p in parts], axis=1))
    vals = torch.from_numpy(np.concatenate([p[1] for p in parts], axis=1).astype(np.float32))
    idx, vals = _order_by_score_then_index(idx, vals)
    return idx[:, :k].numpy(), vals[:, :k].numpy()


def _greater(scores: torch.Tensor, threshold: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``scores > threshold`` row-wise into `out`; on CPU NumPy's loop measured 2.5x faster than torch's."""
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        np.greater(scores.numpy(), threshold.numpy(), out=out.numpy())
        return out
    return torch.gt(scores, threshold, out=out)


def _true_positions(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the True entries of a sparse [B, T] bool mask, in row-major order.

    ``nonzero`` scans every byte; reading the mask as int64 words first scans
    8x fewer elements, and only the few non-zero words are opened up.
    """
    n_rows, width = mask.shape
    if width % 8 or not mask.is_contiguous():
        return mask.nonzero().unbind(1)
    flat = mask.view(-1)  # [B * T]
    words = flat.view(torch.int64)  # [B * T / 8]: 8 flags per word
    word_at = words.nonzero().squeeze(1)  # [W]
    positions = (word_at[:, None] * 8 + torch.arange(8, device=mask.device)).view(-1)  # [W * 8]
    positions = positions[flat.index_select(0, positions)]
    rows = torch.div(positions, width, rounding_mode="floor")
    return rows, positions - rows * width


def _block_exclusions(seen: sp.csr_matrix | None, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows, cols) of a block's excluded entries, sorted by column so tiles slice them."""
    if seen is None or seen.nnz == 0:
        return None, None
    coo = seen.tocoo()
    order = np.argsort(coo.col, kind="stable")
    rows = torch.from_numpy(coo.row[order].astype(np.int64)).to(device)
    cols = torch.from_numpy(coo.col[order].astype(np.int64)).to(device)
    return rows, cols


def _dtype_for(precision: str, device: torch.device) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("fp16 scoring is for CUDA; CPU half-precision matmuls are 10x slower")
        return torch.float16
    raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")


def _as_float32_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.require(x, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])  # torch wants writeable memory
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    return x
