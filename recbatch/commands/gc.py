"""`recbatch gc`: delete old published runs and what only they needed (see recbatch/retention.py)."""

from __future__ import annotations

import argparse

from recbatch.config import Config

HELP = ("delete published runs beyond the newest N, stale staged output, and models, embeddings, "
        "checkpoints and snapshots nothing kept needs (never the live run)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-runs", type=int, help="published runs to keep (config key retention.keep_runs)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted and the bytes freed; delete nothing")
    p.add_argument("--redis-url", help="the serving Redis, whose live and rollback versions are kept "
                   "(config key serving.redis_url)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {"retention.keep_runs": args.keep_runs, "serving.redis_url": args.redis_url}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.lease import root_lease
    from recbatch.retention import apply_plan, plan_for

    with root_lease(cfg.root, cfg.storage, "gc"):  # never while a nightly is writing this root
        plan = plan_for(cfg)
        print(plan.render())
        if args.dry_run:
            print(f"dry run: would free {plan.bytes:,} bytes")
        else:
            print(f"freed {apply_plan(plan):,} bytes")
    return 0
