"""`recbatch nightly`: every due stage for one run date (see recbatch/pipeline.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from recbatch.config import Config
from recbatch.pipeline import STAGES

HELP = ("run the nightly pipeline for a run date: ingest, train when due, embed, score, gate, publish, load, "
        "then gc when retention.keep_runs is set")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-date", type=dt.date.fromisoformat, help="YYYY-MM-DD (default: today, UTC)")
    p.add_argument("--train", action="store_true", help="retrain even when the cadence says not due")
    p.add_argument("--force", action="store_true", help="publish even when the quality gate refuses (recorded)")
    p.add_argument("--stop-after", choices=STAGES, help="end the run after this stage (e.g. score: scored, not published)")
    p.add_argument("--source", help="input data folder (config key ingest.source)")
    p.add_argument("--redis-url", help="load into this Redis after publishing (config key serving.redis_url)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {"ingest.source": args.source, "serving.redis_url": args.redis_url}


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.pipeline import run_nightly

    summary = run_nightly(
        cfg, args.run_date, force_train=args.train, force_publish=args.force, stop_after=args.stop_after
    )
    print(summary.render())
    sys.stdout.flush()
    return 0
