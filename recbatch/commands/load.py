"""`recbatch load`: put a published run into Redis and make it live (see recbatch/serving)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from recbatch.config import Config
from recbatch.errors import UsageError

HELP = "load a published run into Redis under a new version, then flip readers to it atomically"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="published run folder (default: the newest under <root>/recommendations)")
    p.add_argument(
        "--redis-url",
        help="redis:// or rediss:// URL (config key serving.redis_url; prefer serving.redis_url_env "
        "for URLs with a password, which command lines expose)",
    )


def config_overrides(args: argparse.Namespace) -> dict:
    return {"serving.redis_url": args.redis_url}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dataclasses import asdict

    from recbatch.layout import RunLayout
    from recbatch.serving.loader import load_run

    run_dir = Path(args.run) if args.run else _newest_run(RunLayout.of(cfg.root))
    result = load_run(run_dir, cfg.serving)
    print(json.dumps(asdict(result), indent=2))
    return 0


def _newest_run(layout) -> Path:
    runs = layout.published_runs()
    if not runs:
        raise UsageError(f"no published runs under {layout.recommendations}; pass --run DIR")
    return runs[-1]
