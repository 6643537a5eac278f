"""`recbatch rollback`: make the previous Redis version live again."""

from __future__ import annotations

import argparse
import json

from recbatch.config import Config

HELP = "flip Redis readers back to the previously live version (the current one is dropped at the next load)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help="redis:// or rediss:// URL (config key serving.redis_url)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {"serving.redis_url": args.redis_url}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.serving.connection import connect, describe, store_errors
    from recbatch.serving.keys import KeyLayout
    from recbatch.serving.versions import rollback, version_info

    client = connect(cfg.serving)
    keys = KeyLayout(cfg.serving.key_prefix)
    with store_errors(describe(client), "rolling back"):
        rolled_back, live = rollback(client, keys)
        meta = version_info(client, keys, live).meta
    print(json.dumps({"rolled_back": rolled_back, "live": live, "live_run_date": meta.get("run_date"),
                      "live_model_version": meta.get("model_version")}, indent=2))
    return 0
