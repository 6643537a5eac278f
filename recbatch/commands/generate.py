"""`recbatch generate`: write the seeded demo catalog, or a snapshot with injected fake profiles (canonical Parquet).

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
    p.add_argument(
        "--attack", choices=["average", "bandwagon"],
        help="instead: copy a snapshot and inject fake profiles pushing --target (generate.attack)",
    )
    p.add_argument("--target", help="item the attack pushes (generate.attack_target)")
    p.add_argument("--share", type=float, help="fake profiles per real user, e.g. 0.01 (generate.attack_share)")
    p.add_argument("--spread-days", type=float,
                   help="start the fake profiles over this many days instead of one burst (generate.attack_spread_days)")
    p.add_argument("--snapshot", help="snapshot folder to attack (default: the latest under <root>/snapshots)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "generate.users": args.users,
        "generate.items": args.items,
        "generate.topics": args.topics,
        "generate.interactions_per_user": args.interactions_per_user,
        "generate.seed": args.seed,
        "generate.id_type": args.id_type,
        "generate.attack": args.attack,
        "generate.attack_target": args.target,
        "generate.attack_share": args.share,
        "generate.attack_spread_days": args.spread_days,
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.data.generate import generate_demo

    g = cfg.generate
    if g.attack != "none":
        summary = _attack(args, cfg)
    else:
        summary = generate_demo(g, Path(args.out) if args.out else Path(cfg.root) / "demo-source")
    print(json.dumps(summary, indent=2))
    return 0


def _attack(args: argparse.Namespace, cfg: Config) -> dict:
    from recbatch.commands.inputs import snapshot_from
    from recbatch.data.attacks import inject_attack
    from recbatch.errors import UsageError
    from recbatch.layout import RunLayout

    g = cfg.generate
    if g.attack_target is None:
        raise UsageError("--attack needs --target ITEM (config key generate.attack_target)")
    snapshot = snapshot_from(args.snapshot, RunLayout.of(cfg.root))
    out = Path(args.out) if args.out else Path(cfg.root) / f"attacked-source-{g.attack}"
    return inject_attack(snapshot, out, kind=g.attack, target=g.attack_target, share=g.attack_share, seed=g.seed,
                         spread_days=g.attack_spread_days)
