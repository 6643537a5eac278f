"""`recbatch forget`: erase users from everything under the root and from Redis (recbatch/erasure)."""

from __future__ import annotations

import argparse
import json

from recbatch.config import Config

HELP = (
    "erase users (a Parquet or CSV file with a user_id column) from snapshots, embeddings, runs and every "
    "Redis version now, and from every later ingest; marks models trained on them for retraining"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", required=True, help="Parquet or CSV file with a user_id column")
    p.add_argument("--redis-url", help="redis:// or rediss:// URL (config key serving.redis_url)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {"serving.redis_url": args.redis_url}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.erasure.forget import forget
    from recbatch.layout import RunLayout
    from recbatch.lease import root_lease

    with root_lease(cfg.root, cfg.storage, "forget"):  # never while a nightly is writing or loading this root
        record = forget(cfg, args.users)
    summary = {
        "request_id": record["request_id"],
        "log": RunLayout.of(cfg.root, cfg.storage).at.erasure_request(record["request_id"]).uri,
        "users_requested": record["users_requested"],
        "folders_rewritten": [r["folder"] for r in record["rewritten"]],
        "copies_removed": record["copies_removed"],
        "training_runs_removed": record["training_runs_removed"],
        "models_marked_for_retraining": record["models_marked"],
        "redis": record["redis"],
    }
    print(json.dumps(summary, indent=2))
    return 0
