"""`recbatch load`: put a published run into Redis and make it live (see recbatch/serving)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from recbatch.config import Config
from recbatch.errors import UsageError

if TYPE_CHECKING:  # pyarrow stays out of `--help`
    from recbatch.fs import Location
    from recbatch.layout import RootLocations

HELP = "load a published run into Redis under a new version, then flip readers to it atomically"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="published run folder, a local path or s3://bucket/... "
                   "(default: the newest under <root>/recommendations)")
    p.add_argument(
        "--redis-url",
        help="redis:// or rediss:// URL (config key serving.redis_url; prefer serving.redis_url_env "
        "for URLs with a password, which command lines expose)",
    )


def config_overrides(args: argparse.Namespace) -> dict:
    return {"serving.redis_url": args.redis_url}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dataclasses import asdict

    from recbatch.fs import locate
    from recbatch.layout import RunLayout
    from recbatch.serving.loader import load_run

    run = locate(args.run, cfg.storage) if args.run else _newest_run(RunLayout.of(cfg.root, cfg.storage).at)
    result = load_run(run, cfg.serving)
    print(json.dumps(asdict(result), indent=2))
    return 0


def _newest_run(at: RootLocations) -> Location:
    """The newest committed run under the root, on either kind of root."""
    runs = at.published_runs()
    if not runs:
        raise UsageError(f"no published runs under {at.recommendations}; pass --run DIR")
    return runs[-1]
