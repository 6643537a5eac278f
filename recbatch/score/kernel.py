"""Exact top-K inner-product search, tile by tile, with threshold pruning.

Two implementations of one contract (same results, same tie rule):

* the fused native kernel (``native.py`` + ``native_topk.c``, the CPU
  default): a C micro-kernel computes an 8-user (AVX-512) x 32-item block of
  scores in registers and compares it with the users' thresholds right there, so no
  score tile is ever written to memory and read back; only the rare scores
  that beat a threshold leave the registers. Built with the system C
  compiler on first use; without one, ``kernel="auto"`` falls back to:
* the tiled torch kernel (``torch_kernel.py``: CUDA, fp16, and the CPU
  fallback), imported only when it runs: a scoring worker on the native
  kernel never loads torch.

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

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from recbatch.score import native

PAD_INDEX = -1
PAD_SCORE = float("-inf")


def topk(
    user_emb: np.ndarray,  # or a torch.Tensor
    item_emb: np.ndarray,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    item_mask: np.ndarray | None = None,
    user_block: int = 1024,
    item_tile: int = 1024,
    device: str = "cpu",  # or a torch.device
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

    fused = _native_kernel(kernel, _device_type(device), native_build)
    out_idx = np.full((n_users, k), PAD_INDEX, dtype=np.int64)
    out_val = np.full((n_users, k), PAD_SCORE, dtype=np.float32)
    if len(kept) == 0:
        return out_idx, out_val
    if fused is not None:
        idx, val = fused.topk(user_emb, item_emb, k, exclude, user_block, threads)  # kept-item positions
    else:
        from recbatch.score import torch_kernel  # torch is loaded only where its kernel runs

        idx, val = torch_kernel.topk(user_emb, item_emb, k, exclude, user_block=user_block, item_tile=item_tile,
                                     device=str(device), precision=precision, threads=threads)
    return np.where(idx >= 0, kept[np.maximum(idx, 0)], PAD_INDEX), val


def kernel_used(
    kernel: Literal["auto", "native", "torch"], device: str = "cpu",
    native_build: native.NativeBuild | None = None,
) -> Literal["native", "torch"]:
    """Which implementation `topk(..., kernel=kernel)` runs here: "auto" resolved (building on first use).

    Callers record it (the run manifest's ``scoring_kernels``) so a silent fallback shows.
    """
    return "torch" if _native_kernel(kernel, _device_type(device), native_build) is None else "native"


def _native_kernel(kernel: str, device: str, build: native.NativeBuild | None) -> native.NativeKernel | None:
    """The native kernel when `kernel` asks for it (or "auto" gets it), else None for the torch path."""
    build = build or native.NativeBuild()
    if kernel == "torch":
        return None
    if kernel == "native":
        if device != "cpu":
            raise ValueError(f"the native top-K kernel runs on CPU only, not {device}: use kernel='torch' or 'auto'")
        return native.load(build)
    if kernel == "auto":
        return native.load_or_warn(build) if device == "cpu" else None
    raise ValueError(f"kernel must be 'auto', 'native' or 'torch', got {kernel!r}")


def _device_type(device: Any) -> str:
    """"cpu" or "cuda" of a device name ("cuda:1") or a ``torch.device``, without importing torch."""
    return str(device).split(":")[0]


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-K lists (global item indices) into one top-K per user.

    Used by item-sharded scoring: each shard returns its own [U, k] lists;
    the union holds the global top-K, so one exact selection finishes the job:
    score descending, then item index ascending, padding (-1, -inf) last.
    """
    idx = np.concatenate([p[0] for p in parts], axis=1)  # [U, S * k]
    vals = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)  # [U, S * k]
    index_key = np.where(idx < 0, np.iinfo(np.int64).max, idx)
    order = np.lexsort((index_key, -vals), axis=-1)[:, :k]  # the last key sorts first: -score, then index
    idx, vals = np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)
    return np.where(np.isneginf(vals), PAD_INDEX, idx), vals


def _as_float32_numpy(x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray) and hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.require(x, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])  # torch wants writeable memory
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got shape {x.shape}")
    return x
