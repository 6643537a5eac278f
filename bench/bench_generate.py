"""Demo-data generation at scale: wall time and peak memory vs the 4 GiB target.

    .venv/bin/python bench/bench_generate.py                      # 1M users x 100k items
    .venv/bin/python bench/bench_generate.py --users 200000       # quicker
    .venv/bin/python bench/bench_generate.py --ingest             # then ingest the full output too

Each generation runs in a fresh subprocess (`recbatch generate`), and its peak
RSS is read with resource.getrusage(RUSAGE_CHILDREN). The reference, measured
in the same run, is the same catalog with 10x fewer users: if memory is
bounded by the chunk size rather than the data size, the two peaks are about
equal while the time grows about 10x.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_GIB = 4.0


def generate(users: int, items: int, id_type: str, out: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS GiB of all children so far, interactions written)."""
    cmd = [
        sys.executable, "-m", "recbatch.cli", "generate", "--out", str(out),
        "--users", str(users), "--items", str(items), "--id-type", id_type,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    interactions = int(next(line for line in result.stdout.splitlines() if '"interactions"' in line).split(":")[1].strip(" ,"))
    return seconds, peak_gib, interactions


def ingest(source: Path, root: Path) -> tuple[float, float]:
    """(seconds, peak RSS GiB of all children so far) for `recbatch ingest` of a generated folder."""
    cmd = [sys.executable, "-m", "recbatch.cli", "ingest", "--source", str(source), "--root", str(root)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--id-type", choices=["int", "string"], default="int")
    parser.add_argument("--ingest", action="store_true", help="also time `recbatch ingest` of the full output")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        # the smaller reference first: RUSAGE_CHILDREN keeps the maximum over children
        ref_users = max(args.users // 10, 1)
        ref_s, ref_gib, ref_rows = generate(ref_users, args.items, args.id_type, Path(tmp) / "reference")
        s, gib, rows = generate(args.users, args.items, args.id_type, Path(tmp) / "full")
        size_mib = sum(p.stat().st_size for p in (Path(tmp) / "full").glob("*.parquet")) / 2**20
        if args.ingest:
            ingest_s, after_gib = ingest(Path(tmp) / "full", Path(tmp) / "root")

    print(f"generate {args.users:,} users x {args.items:,} items ({args.id_type} ids): {rows:,} interactions")
    print(f"  wall time        {s:8.1f} s   ({rows / s / 1e6:.2f} M interactions/s)")
    print(f"  peak RSS         {gib:8.2f} GiB (target < {TARGET_GIB} GiB: {gib / TARGET_GIB:.0%} of it)")
    print(f"  output Parquet   {size_mib:8.1f} MiB")
    print(f"reference: {ref_users:,} users x {args.items:,} items: {ref_rows:,} interactions, {ref_s:.1f} s, peak <= {ref_gib:.2f} GiB")
    print(f"  ratio full/reference: time {s / ref_s:.1f}x, interactions {rows / ref_rows:.1f}x, peak RSS {gib / ref_gib:.2f}x")
    print("  PASS" if gib < TARGET_GIB else "  FAIL: over the memory target")
    if args.ingest:
        peak = f"{after_gib:.2f} GiB" if after_gib > gib else f"<= {gib:.2f} GiB"
        print(f"ingest of the full output (validate, split, hash, write): {ingest_s:.1f} s, peak RSS {peak}")
        print(f"  ratio ingest/generate: time {ingest_s / s:.1f}x")


if __name__ == "__main__":
    main()
