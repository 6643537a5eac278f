"""`recbatch score`: exact top-K for every user, written to the staged folder of a run date.

    recbatch score --root runs/demo                              # latest snapshot and model, today
    recbatch score --root runs/demo --run-date 2026-11-29 --k 50 --actors 2 --item-shards 3 --explanations
    recbatch score --snapshot S --items E/items --users E/users  # explicit embedding folders

The output is staged (``staged/dt=YYYY-MM-DD``), not published: the nightly
job gates it on quality and ``recbatch.publish.publish_run`` makes it live.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from recbatch.config import Config
from recbatch.errors import UsageError

HELP = "score every user against the whole catalog (exact top-K) into staged/dt=<date>"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-date", type=dt.date.fromisoformat, default=None,
                   help="run date YYYY-MM-DD, as for `recbatch nightly` (default: today, UTC)")
    p.add_argument("--date", type=dt.date.fromisoformat, default=None,
                   help="deprecated spelling of --run-date (warns; kept for old scripts)")
    p.add_argument("--snapshot", help="snapshot folder (default: the latest under --root)")
    p.add_argument("--model", help="model artifact folder whose embeddings to use (default: the latest)")
    p.add_argument("--items", help="item embeddings folder (default: embeddings/<model_version>/items)")
    p.add_argument("--users", help="user embeddings folder (default: embeddings/<model_version>/users)")
    p.add_argument("--k", type=int, help="list length (config key score.k)")
    p.add_argument("--actors", type=int, help="scoring actors per item shard (config key score.num_actors)")
    p.add_argument("--item-shards", type=int, help="item shards, merged per user (config key score.item_shards)")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per actor, 0 = CPU (config key score.gpus_per_actor)")
    p.add_argument("--blocklist", help="Parquet of item_id or user_id,item_id to exclude (config key score.blocklist)")
    p.add_argument("--explanations", action="store_true", help="add because_item_ids (config key score.explanations)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "score.k": args.k,
        "score.num_actors": args.actors,
        "score.item_shards": args.item_shards,
        "score.gpus_per_actor": args.gpus_per_actor,
        "score.blocklist": args.blocklist,
        "score.explanations": True if args.explanations else None,
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch import folders
    from recbatch.commands.inputs import model_from, snapshot_from
    from recbatch.fs import locate
    from recbatch.layout import RunLayout, model_version_of
    from recbatch.score.stage import score

    if args.date is not None:
        if args.run_date is not None and args.run_date != args.date:
            raise UsageError(f"--date {args.date} and --run-date {args.run_date} disagree: give --run-date only")
        print("recbatch score: --date is deprecated, use --run-date (the nightly's name)", file=sys.stderr)
    layout = RunLayout.of(cfg.root, cfg.storage)
    snapshot = snapshot_from(args.snapshot, layout, cfg.storage)
    items = locate(args.items, cfg.storage) if args.items else None
    users = locate(args.users, cfg.storage) if args.users else None
    if items is None or users is None:
        model_dir = model_from(args.model, layout, cfg.storage, alternative=" (or --items and --users)")
        version = model_version_of(folders.read_manifest(model_dir), model_dir.path)
        items = items or layout.at.embeddings(version, "items")
        users = users or layout.at.embeddings(version, "users")
    for name, folder in (("items", items), ("users", users)):
        if not folders.is_complete(folder):
            raise UsageError(f"{name} embeddings {folder} do not exist: run `recbatch embed` first")
    run_date = args.run_date or args.date or dt.datetime.now(dt.timezone.utc).date()
    staged = score(cfg, snapshot, items, users, run_date)
    manifest = folders.read_manifest(staged)
    print(f"scored {manifest['users']} users (k={manifest['k']}, model {manifest['model_version']}) "
          f"in {manifest.get('timings')}\n  {staged}")
    return 0
