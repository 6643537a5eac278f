"""`recbatch generate`: write the seeded demo catalog (canonical Parquet tables).

The output folder is a canonical ingest source: ``recbatch ingest --source DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recbatch.config import Config

HELP = "write a seeded demo catalog (interactions, items, users as Parquet) whose item text carries the taste signal"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="output folder (default: <root>/demo-source)")
    p.add_argument("--users", type=int, help="number of users (config key generate.users)")
    p.add_argument("--items", type=int, help="number of items (generate.items)")
    p.add_argument("--topics", type=int, help="latent topics behind tastes and item text (generate.topics)")
    p.add_argument(
        "--interactions-per-user", type=int, help="mean interactions per user (generate.interactions_per_user)"
    )
    p.add_argument("--seed", type=int, help="random seed; the same seed writes the same rows (generate.seed)")
    p.add_argument("--id-type", choices=["int", "string"], help="int64 ids or text ids like u000123 (generate.id_type)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "generate.users": args.users,
        "generate.items": args.items,
        "generate.topics": args.topics,
        "generate.interactions_per_user": args.interactions_per_user,
        "generate.seed": args.seed,
        "generate.id_type": args.id_type,
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.data.generate import generate_demo

    out = Path(args.out) if args.out else Path(cfg.root) / "demo-source"
    summary = generate_demo(cfg.generate, out)
    print(json.dumps(summary, indent=2))
    return 0
