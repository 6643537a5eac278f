"""Exact top-K scoring: throughput, Ray overhead, memory and scale.

    .venv/bin/python bench/bench_score.py                  # kernels vs FAISS, Ray stage vs kernel, RSS at 100k users
    .venv/bin/python bench/bench_score.py --scale          # + 1M users x 100k items (RSS and wall time)
    .venv/bin/python bench/bench_score.py --device cuda    # fp16 vs fp32 on a GPU (skips without one)

Every figure is a ratio against a reference measured in the same run:
  1. the fused native kernel and the torch kernel (``topk(kernel=...)``) vs
     FAISS IndexFlatIP.search on the same embeddings and threads, seen-item
     filtering on for all three (FAISS searches K + max seen, then drops
     seen items: the usual way to filter with it). Target >= 1.5x.
  2. the Ray Data stage end to end (read, score, write Parquet) vs the bare
     kernel on the same users and items. Target >= 0.85x.
  3. peak RSS of streamed scoring (the actor's code path: batches in,
     Parquet out) at 100k and 1M users. Target: flat.
  4. --scale: 1M users x 100k items, d=64, K=100, wall time. Target <= 300 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIM, K, SEEN_PER_USER = 64, 100, 20


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def seen_matrix(n_users: int, n_items: int, seed: int = 1):
    """SEEN_PER_USER random items per user as a CSR [U, N]."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cols = rng.integers(0, n_items, size=(n_users, SEEN_PER_USER))
    rows = np.repeat(np.arange(n_users), SEEN_PER_USER)
    m = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols.ravel())), shape=(n_users, n_items))
    m.sum_duplicates()
    return m


# --------------------------------------------------------------------------- 1. kernel vs FAISS


def faiss_filtered(users, items, seen, k: int, threads: int):
    """FAISS exact search for k + max seen, then seen items dropped and lists cut to k."""
    import faiss

    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    extra = int(np.diff(seen.indptr).max())
    scores, idx = index.search(users, k + extra)  # [U, k + extra]
    keys = np.arange(len(users))[:, None] * items.shape[0] + idx
    seen_keys = np.repeat(np.arange(len(users)), np.diff(seen.indptr)) * items.shape[0] + seen.indices
    drop = np.isin(keys, seen_keys)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept results first, in rank order
    return np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)


def bench_kernel_vs_faiss(n_users: int, n_items: int, threads: int) -> dict:
    from recbatch.score import native
    from recbatch.score.kernel import topk

    rng = np.random.default_rng(0)
    users, items = unit_rows(rng, n_users), unit_rows(rng, n_items)
    seen = seen_matrix(n_users, n_items)
    flops = 2.0 * n_users * n_items * DIM
    try:
        built = native.load()  # compile (or load the cached build) outside the timings
        kernels = ["native", "torch"]
    except native.NativeKernelUnavailable as err:
        print(f"[1] native kernel skipped: {err}")
        built, kernels = None, ["torch"]
    t0 = time.perf_counter()
    f_idx, _ = faiss_filtered(users, items, seen, K, threads)
    faiss_s = time.perf_counter() - t0
    out = {"users": n_users, "items": n_items, "threads": threads,
           "faiss_s": round(faiss_s, 2), "faiss_gflops": round(flops / faiss_s / 1e9, 1)}
    lines = [f"    FAISS  {faiss_s:7.2f} s  {out['faiss_gflops']:6.1f} GFLOP/s"]
    for name in kernels:
        t0 = time.perf_counter()
        r_idx, _ = topk(users, items, K, exclude=seen, threads=threads, kernel=name)
        seconds = time.perf_counter() - t0
        overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(f_idx[:2000], r_idx[:2000])])
        out.update({f"{name}_s": round(seconds, 2), f"{name}_gflops": round(flops / seconds / 1e9, 1),
                    f"{name}_vs_faiss": round(faiss_s / seconds, 2),
                    f"{name}_topk_overlap_with_faiss": round(float(overlap), 4)})
        lines.append(f"    {name:<6} {seconds:7.2f} s  {out[f'{name}_gflops']:6.1f} GFLOP/s   -> "
                     f"{out[f'{name}_vs_faiss']}x FAISS; same lists: {out[f'{name}_topk_overlap_with_faiss']}")
    if built is not None:
        out["native_variant"] = "avx512" if built.avx512 else "portable"
    print(f"[1] top-K kernels vs FAISS IndexFlatIP, {n_users} users x {n_items} items, d={DIM}, K={K}, "
          f"{threads} threads, seen filtering on (target: native >= 1.5x FAISS):\n" + "\n".join(lines))
    return out


# --------------------------------------------------------------------------- 2. Ray stage vs kernel


def write_world(root: Path, n_users: int, n_items: int) -> tuple[Path, Path, Path]:
    """A snapshot and item/user embedding folders in the layout's formats (int ids)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recbatch.config import IngestConfig
    from recbatch.data.partition import partition_count
    from recbatch.data.snapshot import partitioned_files
    from recbatch.embed.store import matrix_to_list_array
    from recbatch.storage import write_manifest

    rng = np.random.default_rng(0)
    snap = root / "snapshots" / "bench"
    snap.mkdir(parents=True)
    seen = seen_matrix(n_users, n_items).tocoo()
    interactions = pa.table({
        "user_id": seen.row.astype(np.int64), "item_id": seen.col.astype(np.int64),
        "ts": pa.array(np.zeros(seen.nnz, dtype="datetime64[us]")).cast(pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(pa.table({"item_id": np.arange(n_items), "title": ["t"] * n_items}), snap / "items.parquet")
    partitions = partition_count(n_users, IngestConfig().users_per_partition)  # as ingest cuts them
    tables = {"interactions.parquet": interactions, "users.parquet": pa.table({"user_id": np.arange(n_users)})}
    for name, table in partitioned_files(tables, partitions):
        (snap / name).parent.mkdir(exist_ok=True)
        pq.write_table(table, snap / name)
    write_manifest(snap, {"snapshot_hash": "bench", "id_type": "int", "counts": {},
                          "partitioning": {"partitions": partitions}})
    folders = []
    for kind, n, column in (("items", n_items, "item_id"), ("users", n_users, "user_id")):
        folder = root / "embeddings" / "bench" / kind
        folder.mkdir(parents=True)
        vectors = unit_rows(rng, n)
        table = pa.table({column: np.arange(n), "embedding": matrix_to_list_array(vectors),
                          "input_hash": ["h"] * n, "model_version": ["bench"] * n})
        if kind == "users":  # a part per user partition, as the embed stage writes them
            for name, part in partitioned_files({"users.parquet": table}, partitions):
                pq.write_table(part, folder / Path(name).name)
            write_manifest(folder, {"model_version": "bench", "rows": n, "partitioning": {"partitions": partitions}})
        else:
            pq.write_table(table, folder / "part-00000.parquet")
            write_manifest(folder, {"model_version": "bench"})
        folders.append(folder)
    return snap, folders[0], folders[1]


def bench_stage_vs_kernel(n_users: int, n_items: int, threads: int) -> dict:
    import ray

    from recbatch.config import Config
    from recbatch.data.snapshot import Snapshot
    from recbatch.embed.store import read_matrix
    from recbatch.folders import read_manifest
    from recbatch.runtime import ensure_ray
    from recbatch.score.kernel import topk
    from recbatch.score.stage import score

    with tempfile.TemporaryDirectory() as tmp:
        snap, items_dir, users_dir = write_world(Path(tmp), n_users, n_items)
        cfg = Config(root=tmp).with_overrides({
            "score.k": K, "score.num_actors": threads, "score.cpus_per_actor": 1.0,
            "ray.num_cpus": threads + 2,
        })
        ensure_ray(cfg.ray)
        t0 = time.perf_counter()
        staged = score(cfg, Snapshot.open(snap), items_dir, users_dir, dt.date(2026, 11, 29))
        stage_s = time.perf_counter() - t0
        timings = read_manifest(staged)["timings"]
        ray.shutdown()
        _, users = read_matrix(users_dir, "user_id")
        _, items = read_matrix(items_dir, "item_id")
        seen = seen_matrix(n_users, n_items)
        t0 = time.perf_counter()
        topk(users, items, K, exclude=seen, threads=threads)
        kernel_s = time.perf_counter() - t0
    out = {"users": n_users, "items": n_items, "stage_s": round(stage_s, 2), "stage_timings": timings,
           "kernel_s": round(kernel_s, 2), "stage_vs_kernel": round(kernel_s / stage_s, 2)}
    print(f"[2] Ray Data stage end to end vs bare kernel, {n_users} users x {n_items} items:\n"
          f"    stage  {stage_s:7.2f} s  (timings {timings})\n"
          f"    kernel {kernel_s:7.2f} s  -> stage throughput {out['stage_vs_kernel']}x kernel (target >= 0.85x)")
    return out


# --------------------------------------------------------------------------- 3./4. streamed RSS and scale


def streamed_scoring(n_users: int, n_items: int, threads: int, out_dir: str) -> None:
    """The actor's code path in one process: user batches in (seen lists as list columns, as the actor
    gets them), ranked by ``score.ranking.rank``, Parquet out; prints seconds and peak RSS."""
    import pyarrow as pa

    from recbatch.score.actors import matrix_to_list_column
    from recbatch.score.ranking import rank
    from recbatch.score.writer import write_recommendations

    batch = 32_768
    items = unit_rows(np.random.default_rng(0), n_items)
    ids = np.arange(n_items)
    eligible = np.ones(n_items, dtype=bool)

    def batches():
        for start in range(0, n_users, batch):
            n = min(batch, n_users - start)
            rng = np.random.default_rng(start)  # users are generated batch by batch, as read from Parquet
            csr = seen_matrix(n, n_items, seed=start)
            seen = pa.ListArray.from_arrays(pa.array(csr.indptr.astype(np.int32)), pa.array(csr.indices.astype(np.int64)))
            blocked = pa.array([[]] * n, pa.list_(pa.int64()))
            idx, val = rank(unit_rows(rng, n), items, eligible, seen, blocked, k=K, filter_seen=True, threads=threads)
            keep = idx >= 0
            yield pa.table({
                "user_id": np.arange(start, start + n), "item_ids": matrix_to_list_column(ids[np.maximum(idx, 0)], keep),
                "scores": matrix_to_list_column(val, keep), "model_version": pa.array(["bench"] * n),
            })

    t0 = time.perf_counter()
    write_recommendations(batches(), out_dir, id_type="int", rows_per_file=250_000, manifest_fields={})
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "peak_rss_mib": usage.ru_maxrss / 1024}))


def bench_rss(user_counts: list[int], n_items: int, threads: int) -> list[dict]:
    rows = []
    for n_users in user_counts:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, __file__, "--_streamed", str(n_users), str(n_items), str(threads), f"{tmp}/out"],
                capture_output=True, text=True, check=True,
            )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        flops = 2.0 * n_users * n_items * DIM
        rows.append({"users": n_users, "items": n_items, "seconds": round(result["seconds"], 1),
                     "cpu_seconds": round(result["cpu_seconds"], 1),
                     "gflops": round(flops / result["seconds"] / 1e9, 1), "peak_rss_mib": round(result["peak_rss_mib"])})
    print("[3] streamed scoring (kernel + Parquet writer), peak RSS by user count (target: flat):")
    for r in rows:
        print(f"    {r['users']:>9} users x {r['items']} items: {r['seconds']:7.1f} s ({r['cpu_seconds']} CPU s)  "
              f"{r['gflops']:6.1f} GFLOP/s  "
              f"peak RSS {r['peak_rss_mib']} MiB")
    if len(rows) > 1:
        print(f"    RSS ratio {rows[-1]['users'] // rows[0]['users']}x users: "
              f"{rows[-1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}x")
    return rows


# --------------------------------------------------------------------------- GPU


FP16_DENSE_PEAK_TFLOPS = {"H200": 989.5, "H100": 989.5, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}


def bench_cuda(n_users: int, n_items: int) -> dict | None:
    import torch

    from recbatch.score.kernel import topk

    if not torch.cuda.is_available():
        print("[gpu] skipped: no CUDA device visible")
        return None
    name = torch.cuda.get_device_name()
    peak = next((v for key, v in FP16_DENSE_PEAK_TFLOPS.items() if key in name), None)
    rng = np.random.default_rng(0)
    users, items = unit_rows(rng, n_users), unit_rows(rng, n_items)
    seen = seen_matrix(n_users, n_items)
    tiles = {"user_block": 16_384, "item_tile": 65_536}
    results = {}
    for precision in ("fp32", "fp16"):
        topk(users[:1024], items, K, exclude=seen[:1024], device="cuda", precision=precision, **tiles)  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        results[precision] = topk(users, items, K, exclude=seen, device="cuda", precision=precision, **tiles)
        torch.cuda.synchronize()
        results[precision + "_s"] = time.perf_counter() - t0
    overlap = np.mean([len(set(a[a >= 0]) & set(b[b >= 0])) / K for a, b in zip(results["fp32"][0], results["fp16"][0])])
    flops = 2.0 * n_users * n_items * DIM
    out = {"device": name, "users": n_users, "items": n_items,
           "fp32_s": round(results["fp32_s"], 3), "fp16_s": round(results["fp16_s"], 3),
           "fp16_tflops": round(flops / results["fp16_s"] / 1e12, 2), "fp16_peak_tflops": peak,
           "fp16_fraction_of_peak": round(flops / results["fp16_s"] / 1e12 / peak, 4) if peak else None,
           "topk_overlap_fp16_vs_fp32": round(float(overlap), 4)}
    print(f"[gpu] {name}: {n_users} users x {n_items} items, K={K}, seen filtering on\n"
          f"    fp32 {out['fp32_s']} s, fp16 {out['fp16_s']} s = {out['fp16_tflops']} TFLOP/s "
          f"({out['fp16_fraction_of_peak']} of fp16 dense peak {peak}); top-K overlap fp16 vs fp32 "
          f"{out['topk_overlap_fp16_vs_fp32']} (target >= 0.99)")
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_streamed":
        n_users, n_items, threads = map(int, sys.argv[2:5])
        streamed_scoring(n_users, n_items, threads, sys.argv[5])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=16_384, help="users for the kernel vs FAISS run")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--stage-users", type=int, default=50_000, help="users for the Ray stage vs kernel run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", action="store_true", help="also stream 1M users (RSS and wall time)")
    p.add_argument("--rss-items", type=int, help="items for the RSS runs (default --items; memory does not depend on it)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--only", choices=("faiss", "stage", "rss"), help="run one CPU section")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    print(f"bench_score: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    figures: dict = {}
    if args.device == "cuda":
        figures["gpu"] = bench_cuda(max(args.users, 65_536), args.items)
    else:
        if args.only in (None, "faiss"):
            figures["kernel_vs_faiss"] = bench_kernel_vs_faiss(args.users, args.items, args.threads)
        if args.only in (None, "stage"):
            figures["stage_vs_kernel"] = bench_stage_vs_kernel(args.stage_users, args.items, args.threads)
        if args.only in (None, "rss"):
            counts = [100_000, 1_000_000] if args.scale else [100_000]
            figures["streamed"] = bench_rss(counts, args.rss_items or args.items, args.threads)
            if args.scale and not args.rss_items:
                print(f"[4] scale: 1M users x {args.items} items, d={DIM}, K={K}: "
                      f"{figures['streamed'][-1]['seconds']} s (target <= 300 s)")
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
