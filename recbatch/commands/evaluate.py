"""`recbatch evaluate`: score runs and baselines on a snapshot's held-out split, write a report.

    recbatch evaluate --snapshot runs/demo/snapshots/<hash> \\
        --run nightly=runs/demo/recommendations/dt=2026-11-29 \\
        --model two_tower=runs/demo/models/<version> --baselines --out report/

Every run is read through the same metric code (recbatch.eval.metrics), and
the baselines are produced through the same writer as the scoring stage, so
the table compares like with like.

The root and every folder given may be on an object store (``s3://...``,
reached as ``cfg.storage`` says): runs, models and the snapshot are read
through their manifests, and the baselines and the report are published there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from recbatch.config import Config, StorageConfig
from recbatch.errors import UsageError
from recbatch.fs import Location, locate

HELP = "evaluate recommendation runs and baselines on a snapshot's test split and write a report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--snapshot", help="snapshot folder (default: the latest under --root)")
    p.add_argument(
        "--run", action="append", default=[], metavar="NAME=DIR",
        help="a recommendations folder to evaluate under NAME (repeatable)",
    )
    p.add_argument(
        "--model", action="append", default=[], metavar="NAME=DIR",
        help="a two-tower model artifact to rank and evaluate under NAME (repeatable; test split, "
        "users from eval.holdout_users, encoded from their pre-test history)",
    )
    p.add_argument(
        "--baselines", nargs="?", const="config", metavar="A,B",
        help="also train and evaluate baselines: the ones in eval.baselines, or a comma list "
        "(random, most_popular, recent_popular, item_knn, als, bpr, sasrec, content)",
    )
    p.add_argument("--split", choices=("test", "validation"), default="test", help="held-out split")
    p.add_argument("--out", help="report folder (default: <root>/reports/dt=<today>)")


def parse_named_dirs(specs: list[str], flag: str, storage: StorageConfig) -> dict[str, Location]:
    """``["a=dir1", "b=s3://bucket/dir2"]`` -> ``{"a": <Location dir1>, ...}``; names must be unique.

    A local folder must exist; an object-store one is checked when it is read
    (through its commit marker, which names it when it is missing)."""
    runs: dict[str, Location] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"{flag} expects NAME=DIR, got {spec!r}")
        if name in runs:
            raise UsageError(f"{flag} name {name!r} given twice")
        location = locate(folder, storage)
        if not location.is_object_store and not Path(location.path).is_dir():
            raise UsageError(f"{flag} {name}: {folder} is not a folder")
        runs[name] = location
    return runs


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.commands.inputs import snapshot_from
    from recbatch.eval.baselines import baseline_class, run_baseline
    from recbatch.eval.holdout import evaluate_model
    from recbatch.eval.metrics import evaluate_run
    from recbatch.eval.report import headline_table, write_report
    from recbatch.folders import is_complete, read_manifest
    from recbatch.fs import check_access
    from recbatch.layout import RunLayout

    runs = parse_named_dirs(args.run, "--run", cfg.storage)
    models = parse_named_dirs(args.model, "--model", cfg.storage)
    layout = RunLayout.of(cfg.root, cfg.storage)
    check_access(layout.at.root)  # wrong credentials or bucket: refused, naming the bucket (exit 9)
    snapshot = snapshot_from(args.snapshot, layout, cfg.storage)

    names = []
    if args.baselines:
        names = cfg.eval.baselines if args.baselines == "config" else args.baselines.split(",")
        for name in names:
            baseline_class(name)  # unknown names fail before any work
    for name in names:
        folder = layout.at.baseline_run(snapshot.hash, name)
        if not is_complete(folder) or read_manifest(folder).get("k") != cfg.score.k:
            print(f"training baseline {name} on {snapshot.hash} ...")
            run_baseline(name, snapshot, cfg, folder)
        runs.setdefault(name, folder)
    if not runs and not models:
        raise UsageError("nothing to evaluate: give --run NAME=DIR, --model NAME=DIR and/or --baselines")
    if models and args.split != "test":
        raise UsageError("--model is evaluated on the test split only")

    results, seconds = [], {}
    for name, folder in runs.items():
        started = time.perf_counter()
        results.append(evaluate_run(folder, snapshot, ks=cfg.eval.ks, split=args.split, name=name))
        seconds[name] = round(time.perf_counter() - started, 3)
    for name, model_dir in models.items():
        started = time.perf_counter()
        results.append(evaluate_model(cfg, snapshot, model_dir, name=name))
        seconds[name] = round(time.perf_counter() - started, 3)

    headline_k = int(cfg.eval.gate_metric.split("@")[1]) if "@" in cfg.eval.gate_metric else 10
    out = locate(args.out, cfg.storage) if args.out else layout.at.report(dt.datetime.now(dt.timezone.utc).date())
    context = {
        "snapshot": snapshot.hash,
        "split": args.split,
        "runs": {name: str(folder) for name, folder in {**runs, **models}.items()},
        "evaluate_seconds": seconds,
    }
    write_report(results, out, headline_k=headline_k, context=context, gate_metric=cfg.eval.gate_metric)
    header, rows = headline_table(results, headline_k)
    width = max(len(r[0]) for r in rows)
    shown = ("ndcg", "recall", "cold/recall", "coverage")
    cols = [header.index(f"{c}@{headline_k}") for c in shown]
    print(f"{'model':<{width}}  " + "  ".join(f"{header[c]:>16}" for c in cols))
    for row in rows:
        print(f"{row[0]:<{width}}  " + "  ".join(f"{row[c]:>16}" for c in cols))
    print(f"report: {out}")
    return 0
