"""`recbatch ingest`: validate a source and publish its snapshot.

Prints the snapshot folder (a local path, or ``s3://...`` on an object-store
root) and its counts. Bad input exits with code 3 and a
paragraph naming the file, column, number of bad rows and examples; with
``--on-bad-rows quarantine`` bad rows are set aside and counted instead.
"""

from __future__ import annotations

import argparse
import json

from recbatch.config import Config
from recbatch.errors import UsageError

HELP = "read, validate and split a source (canonical Parquet/CSV or a MovieLens release) into a snapshot"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", help="folder with the source tables (ingest.source)")
    p.add_argument(
        "--format",
        choices=["auto", "canonical", "movielens-latest", "ml-100k", "ml-1m"],
        help="source layout; auto detects it from the files present (ingest.format)",
    )
    p.add_argument(
        "--on-bad-rows",
        choices=["fail", "quarantine"],
        help="fail, or set bad rows aside with a reason (ingest.on_bad_rows)",
    )
    p.add_argument(
        "--map",
        dest="column_map",
        action="append",
        default=[],
        metavar="CANONICAL=SOURCE",
        help="read canonical column CANONICAL from source column SOURCE, e.g. --map user_id=uid "
        "or --map items.title=name (repeatable; ingest.column_map)",
    )
    p.add_argument("--protocol", choices=["leave_last_n", "temporal", "recent_days"], help="split protocol (split.protocol)")
    p.add_argument("--leave-last-n", type=int, help="test events per user (split.leave_last_n)")
    p.add_argument(
        "--min-user-interactions", type=int, help="users with fewer stay in train (split.min_user_interactions)"
    )
    p.add_argument("--temporal-train-fraction", type=float, help="time cutoff quantile (split.temporal_train_fraction)")
    p.add_argument("--validation-n", type=int, help="validation events per user (split.validation_n)")
    p.add_argument("--min-rating", type=float, help="ratings below it are not positives; counted (ingest.min_rating)")


def _column_map(pairs: list[str]) -> dict[str, str] | None:
    mapping = {}
    for pair in pairs:
        canonical, sep, source = pair.partition("=")
        if not sep or not canonical.strip() or not source.strip():
            raise UsageError(f"--map expects CANONICAL=SOURCE (e.g. user_id=uid), got {pair!r}")
        mapping[canonical.strip()] = source.strip()
    return mapping or None


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "ingest.source": args.source,
        "ingest.format": args.format,
        "ingest.on_bad_rows": args.on_bad_rows,
        "ingest.column_map": _column_map(args.column_map),
        "ingest.min_rating": args.min_rating,
        "split.protocol": args.protocol,
        "split.leave_last_n": args.leave_last_n,
        "split.min_user_interactions": args.min_user_interactions,
        "split.temporal_train_fraction": args.temporal_train_fraction,
        "split.validation_n": args.validation_n,
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.data.ingest import ingest

    snapshot = ingest(cfg)
    print(f"snapshot {snapshot.location}")
    print(json.dumps(snapshot.counts, indent=2, sort_keys=True))
    quarantined = {k: v for k, v in snapshot.counts.items() if k.startswith("quarantined_") and v}
    if quarantined:
        print(f"quarantined rows (see {snapshot.files_at.join('quarantine')}): {quarantined}")
    return 0
