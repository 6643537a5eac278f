"""Serving load benchmark: users/s into a real redis-server, the loader's peak RSS, read latency.

    .venv/bin/python bench/bench_load.py                 # 1M and 100k users x K=100
    .venv/bin/python bench/bench_load.py --users 200000 --small-users 20000   # quicker

What it measures, each against a reference taken in the same run:
- throughput of `load_run` (batched MSETNX pipeline) against a naive loader that sends one
  SET per round trip (same values, on a 10k-user slice);
- peak RSS of a `load_run` process for the small and the large run (the target is flat:
  memory bounded by one batch, not by the number of users);
- latency of `get_recommendations` (one Lua round trip) against two plain GETs;
- the large load and the reads again on a 3-master Redis Cluster (`--cluster-masters`, 0 = skip),
  beside the single node of the same run: users/s, CPU seconds (loader + every node), and read
  latency of `get_recommendations` on the cluster (two GETs + the version-tag check).

It starts its own redis-servers (no persistence) on free 127.0.0.1 ports and stops them at the end.
Generated runs are kept under --workdir so reruns skip generation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import redis

from recbatch.score.writer import write_recommendations
from recbatch.serving.codec import encode_batch

LOADER = """
import json, sys
from recbatch.config import ServingConfig
from recbatch.serving.loader import load_run
result = load_run(sys.argv[1], ServingConfig(redis_url=sys.argv[2], key_prefix="bench", batch_size=int(sys.argv[3])))
print(json.dumps({"users": result.users, "seconds": result.seconds}))
"""


def generate_run(out: Path, users: int, k: int, chunk: int = 50_000, seed: int = 0) -> Path:
    """A published run of `users` rows, K random int64 items each, written by the real writer."""
    if (out / "_SUCCESS").exists():
        return out
    rng = np.random.default_rng(seed)

    def tables():
        for start in range(0, users, chunk):
            n = min(chunk, users - start)
            offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
            items = rng.integers(0, 2_000_000, size=n * k, dtype=np.int64)  # (n * k,)
            scores = -np.sort(-rng.random((n, k), dtype=np.float32), axis=1).ravel()  # (n * k,) descending
            yield pa.table({
                "user_id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                "item_ids": pa.ListArray.from_arrays(offsets, pa.array(items)),
                "scores": pa.ListArray.from_arrays(offsets, pa.array(scores)),
                "model_version": pa.array(["bench"] * n),
            })

    write_recommendations(tables(), out, id_type="int", rows_per_file=250_000,
                          manifest_fields={"run_date": "2026-01-01", "model_version": "bench", "k": k})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(data_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--save", "", "--appendonly", "no", "--loglevel", "warning", *extra],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            if redis.Redis.from_url(url).ping():
                return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start")


def start_cluster(data_dir: Path, masters: int) -> tuple[list[subprocess.Popen], list[str]]:
    """`masters` cluster-mode redis-servers joined by `redis-cli --cluster create`; waits for state ok."""
    nodes = []
    for i in range(masters):
        (data_dir / str(i)).mkdir()
        nodes.append(start_redis(data_dir / str(i), "--cluster-enabled", "yes",
                                 "--cluster-port", str(_free_port())))
    procs, urls = [p for p, _ in nodes], [u for _, u in nodes]
    addresses = [u.removeprefix("redis://").removesuffix("/0") for u in urls]
    subprocess.run(["redis-cli", "--cluster", "create", *addresses, "--cluster-yes"], check=True,
                   capture_output=True, timeout=60)
    for url in urls:
        for _ in range(600):
            if redis.Redis.from_url(url).cluster("info")["cluster_state"] == "ok":
                break
            time.sleep(0.05)
    return procs, urls


def load_in_subprocess(run_dir: Path, url: str, batch_size: int) -> dict:
    """Run the loader in its own process so its peak RSS is its own (wait4 rusage)."""
    proc = subprocess.Popen([sys.executable, "-c", LOADER, str(run_dir), url, str(batch_size)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"loader failed with status {status}")
    cpu = usage.ru_utime + usage.ru_stime
    return {**json.loads(out), "peak_rss_mib": usage.ru_maxrss / 1024, "cpu_seconds": cpu}


def server_cpu(*urls: str) -> float:
    """CPU seconds the redis-servers have used so far (their share of the work)."""
    infos = [redis.Redis.from_url(url).info("cpu") for url in urls]
    return sum(info["used_cpu_user"] + info["used_cpu_sys"] for info in infos)


def naive_load(run_dir: Path, url: str, users: int) -> dict:
    """Reference: the same values, one SET per round trip."""
    import pyarrow.parquet as pq

    client = redis.Redis.from_url(url)
    first = sorted(run_dir.glob("part-*.parquet"))[0]
    batch = next(pq.ParquetFile(first).iter_batches(batch_size=users))
    started, cpu = time.perf_counter(), time.process_time()
    for uid, value in zip(batch.column("user_id").to_pylist(), encode_batch(batch, "naive")):
        client.set(f"naive:{uid}", value)
    return {"users": users, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}


def read_latency(url: str, users: int, reads: int = 20_000) -> tuple[float, float, float, float]:
    """(p50, p99) microseconds of get_recommendations and of two plain GETs (one Redis or a cluster)."""
    from recbatch.config import ServingConfig
    from recbatch.serving import get_recommendations
    from recbatch.serving.connection import connect
    from recbatch.serving.keys import KeyLayout

    client, keys = connect(ServingConfig(redis_url=url)), KeyLayout("bench")
    rng = np.random.default_rng(1)
    ours, plain = [], []
    for uid in rng.integers(0, users, size=reads).tolist():
        t = time.perf_counter()
        assert get_recommendations(client, uid, prefix="bench") is not None
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        version = client.get(keys.pointer).decode()
        client.get(keys.user(version, uid))
        plain.append(time.perf_counter() - t)
    q = lambda xs, p: float(np.percentile(xs, p)) * 1e6  # noqa: E731
    return q(ours, 50), q(ours, 99), q(plain, 50), q(plain, 99)


def time_gc(url: str) -> tuple[float, int]:
    """Seconds to delete every version but the live one (SCAN of the whole db + UNLINK)."""
    from recbatch.serving.gc import collect_garbage
    from recbatch.serving.keys import KeyLayout
    from recbatch.serving.versions import live_version

    client, keys = redis.Redis.from_url(url), KeyLayout("bench")
    total = client.dbsize()
    started = time.perf_counter()
    collect_garbage(client, keys, {live_version(client, keys)})
    return time.perf_counter() - started, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--small-users", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--naive-users", type=int, default=10_000)
    parser.add_argument("--cluster-masters", type=int, default=3, help="0: skip the Redis Cluster part")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "recbatch-bench-load"))
    args = parser.parse_args()

    work = Path(args.workdir)
    t = time.perf_counter()
    small = generate_run(work / f"run-{args.small_users}x{args.k}", args.small_users, args.k)
    large = generate_run(work / f"run-{args.users}x{args.k}", args.users, args.k)
    print(f"generated runs in {time.perf_counter() - t:.0f} s (cached under {work})")

    data_dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    proc, url = start_redis(data_dir)
    try:
        runs = {}
        for name, job in (
            ("naive", lambda: naive_load(small, url, args.naive_users)),
            ("small", lambda: load_in_subprocess(small, url, args.batch_size)),
            ("large", lambda: load_in_subprocess(large, url, args.batch_size)),
        ):
            before = server_cpu(url)
            runs[name] = {**job(), "server_cpu_seconds": 0.0}
            runs[name]["server_cpu_seconds"] = server_cpu(url) - before
        p50, p99, plain50, plain99 = read_latency(url, args.users)
        used = redis.Redis.from_url(url).info("memory")["used_memory"] / 2**30
        gc_seconds, gc_keys = time_gc(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)

    if args.cluster_masters:
        data_dir = Path(tempfile.mkdtemp(prefix="bench-redis-cluster-"))
        procs, urls = start_cluster(data_dir, args.cluster_masters)
        try:
            before = server_cpu(*urls)
            runs["cluster"] = {**load_in_subprocess(large, urls[0], args.batch_size), "server_cpu_seconds": 0.0}
            runs["cluster"]["server_cpu_seconds"] = server_cpu(*urls) - before
            c50, c99, cplain50, cplain99 = read_latency(urls[0], args.users)
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
            shutil.rmtree(data_dir, ignore_errors=True)

    def figures(r: dict) -> str:
        wall = r["users"] / r["seconds"]
        per_cpu = r["users"] / (r["cpu_seconds"] + r["server_cpu_seconds"])
        return (f"{r['seconds']:7.1f} s wall {wall:>9,.0f} users/s | loader {r['cpu_seconds']:6.1f} + "
                f"redis {r['server_cpu_seconds']:5.1f} CPU s = {per_cpu:>9,.0f} users per CPU-second")

    naive = runs["naive"]
    naive_per_cpu = naive["users"] / (naive["cpu_seconds"] + naive["server_cpu_seconds"])
    print(f"\nreference: naive loader, one SET per round trip, {args.naive_users:>9,} users: {figures(naive)}")
    for name, n in (("small", args.small_users), ("large", args.users)):
        r = runs[name]
        per_cpu = r["users"] / (r["cpu_seconds"] + r["server_cpu_seconds"])
        print(f"load_run {n:>9,} users x K={args.k}: {figures(r)}  "
              f"(x{r['users'] / r['seconds'] / (naive['users'] / naive['seconds']):.1f} naive wall, "
              f"x{per_cpu / naive_per_cpu:.1f} per CPU-s)  peak RSS {r['peak_rss_mib']:.0f} MiB")
    rss = [runs[name]["peak_rss_mib"] for name in ("small", "large")]
    print(f"peak RSS ratio {args.users:,} / {args.small_users:,} users: {rss[1] / rss[0]:.2f} "
          f"(users ratio {args.users / args.small_users:.0f})")
    print(f"read get_recommendations (Lua, 1 round trip): p50 {p50:.0f} us  p99 {p99:.0f} us; "
          f"reference two GETs: p50 {plain50:.0f} us  p99 {plain99:.0f} us  (p50 ratio {p50 / plain50:.2f})")
    if args.cluster_masters:
        r, one = runs["cluster"], runs["large"]
        print(f"cluster of {args.cluster_masters} masters, load_run {args.users:>9,} users: {figures(r)}  "
              f"(x{(r['users'] / r['seconds']) / (one['users'] / one['seconds']):.2f} the single node's users/s)")
        print(f"read on the cluster (2 GETs + tag check): p50 {c50:.0f} us  p99 {c99:.0f} us; plain two GETs "
              f"p50 {cplain50:.0f} us  p99 {cplain99:.0f} us; single-node Lua read p50 {p50:.0f} us "
              f"(cluster / single p50 {c50 / p50:.2f})")
    print(f"redis used_memory with both versions loaded: {used:.2f} GiB")
    print(f"garbage collection of the {args.small_users:,}-user version in a {gc_keys:,}-key database: "
          f"{gc_seconds:.1f} s")


if __name__ == "__main__":
    main()
