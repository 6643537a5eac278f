"""`recbatch evaluate`: score runs and baselines on a snapshot's held-out split, write a report.

    recbatch evaluate --snapshot runs/demo/snapshots/<hash> \\
        --run nightly=runs/demo/recommendations/dt=2026-11-29 \\
        --model two_tower=runs/demo/models/<version> --baselines --out report/

Every run is read through the same metric code (recbatch.eval.metrics), and
the baselines are produced through the same writer as the scoring stage, so
the table compares like with like.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

from recbatch.config import Config
from recbatch.errors import UsageError

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


def parse_named_dirs(specs: list[str], flag: str) -> dict[str, Path]:
    """``["a=dir1", "b=dir2"]`` -> ``{"a": Path("dir1"), ...}``; names must be unique."""
    runs: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"{flag} expects NAME=DIR, got {spec!r}")
        if name in runs:
            raise UsageError(f"{flag} name {name!r} given twice")
        if not Path(folder).is_dir():
            raise UsageError(f"{flag} {name}: {folder} is not a folder")
        runs[name] = Path(folder)
    return runs


def run(args: argparse.Namespace, cfg: Config) -> int:
    from recbatch.commands.inputs import snapshot_from
    from recbatch.eval.baselines import baseline_class, run_baseline
    from recbatch.eval.holdout import evaluate_model
    from recbatch.eval.metrics import evaluate_run
    from recbatch.eval.report import headline_table, write_report
    from recbatch.layout import RunLayout
    from recbatch.storage import is_complete, read_manifest

    runs = parse_named_dirs(args.run, "--run")
    models = parse_named_dirs(args.model, "--model")
    layout = RunLayout.of(cfg.root)
    snapshot = snapshot_from(args.snapshot, layout)

    names = []
    if args.baselines:
        names = cfg.eval.baselines if args.baselines == "config" else args.baselines.split(",")
        for name in names:
            baseline_class(name)  # unknown names fail before any work
    for name in names:
        folder = layout.baseline_run(snapshot.hash, name)
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
    out = Path(args.out) if args.out else layout.report(dt.datetime.now(dt.timezone.utc).date())
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
