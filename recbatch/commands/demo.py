"""`recbatch demo`: the whole nightly job on the embedded default.

Local Ray started in-process, CPU, the packaged MiniLM encoder, and a generated
demo catalog whose item text carries the taste signal, so the run shows real
learning. Prints where the recommendations and the report are.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from recbatch.config import Config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"

HELP = "generate a demo catalog and run the nightly job on it end to end (local Ray, CPU, packaged MiniLM)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-date", type=dt.date.fromisoformat, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--users", type=int, help="demo users (config key generate.users)")
    p.add_argument("--items", type=int, help="demo items (config key generate.items)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {"generate.users": args.users, "generate.items": args.items}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.data.generate import generate_demo
    from recbatch.pipeline import run_nightly

    source = Path(cfg.ingest.source) if cfg.ingest.source else Path(cfg.root) / "demo-source"
    if not (source / "items.parquet").exists():
        print(f"generating demo data ({cfg.generate.users} users x {cfg.generate.items} items) in {source}")
        generate_demo(cfg.generate, source)
    cfg = cfg.with_overrides({"ingest.source": str(source)})
    summary = run_nightly(cfg, args.run_date)
    print(summary.render())
    return 0
