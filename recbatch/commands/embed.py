"""`recbatch embed`: item and user embeddings of a snapshot with a model artifact.

    recbatch embed --root runs/demo                      # latest snapshot, latest model
    recbatch embed --snapshot runs/demo/snapshots/<hash> --model runs/demo/models/<version> --actors 2
    recbatch embed --root s3://bucket/recs --set storage.endpoint=...   # an object-store root

Incremental by default: rows whose input is unchanged since the last run of
the same model version are reused (``--full`` re-encodes everything).
"""

from __future__ import annotations

import argparse

from recbatch.config import Config

HELP = "embed a snapshot's items and users with a model (Ray Data actor pools, incremental)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", help="snapshot folder (default: the latest under --root)")
    p.add_argument("--model", help="model artifact folder (default: the latest under --root)")
    p.add_argument("--actors", type=int, help="encoder actors (config key embed.num_actors)")
    p.add_argument("--batch-size", type=int, help="rows per model batch (config key embed.batch_size)")
    p.add_argument("--gpus-per-actor", type=float, help="GPUs per actor, 0 = CPU (config key embed.gpus_per_actor)")
    p.add_argument("--full", action="store_true", help="re-encode every row (config key embed.incremental=false)")


def config_overrides(args: argparse.Namespace) -> dict:
    return {
        "embed.num_actors": args.actors,
        "embed.batch_size": args.batch_size,
        "embed.gpus_per_actor": args.gpus_per_actor,
        "embed.incremental": False if args.full else None,
    }


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.commands.inputs import model_from, snapshot_from
    from recbatch.embed.stage import embed
    from recbatch.fs import check_access
    from recbatch.layout import RunLayout

    layout = RunLayout.of(cfg.root, cfg.storage)
    check_access(layout.at.root)  # wrong credentials or bucket: refused, naming the bucket (exit 9)
    snapshot = snapshot_from(args.snapshot, layout, cfg.storage)
    result = embed(cfg, snapshot, model_from(args.model, layout, cfg.storage))
    print(
        f"model {result.model_version}: items {result.items_encoded} encoded, {result.items_reused} reused; "
        f"users {result.users_encoded} encoded, {result.users_reused} reused; {result.seconds:.1f} s\n"
        f"  {result.items_dir}\n  {result.users_dir}"
    )
    return 0
