"""The nightly's *published* lists on ml-latest-small, scored against each user's 5 real next items, over seeds.

    .venv/bin/python bench/quality.py --root /tmp/q/truth --write-history /tmp/q/ml-hist   # once
    .venv/bin/python bench/quality_published.py --config bench/quality-two-tower.yaml --history /tmp/q/ml-hist \\
        --truth-root /tmp/q/truth --root /tmp/q/published --seeds 0,1,2 [--set KEY=VALUE ...] \\
        [--next-items sasrec=DIR ...]   # other runs (e.g. SASRec's lists) scored the same way, as references

For each seed, in its own root under --root, as a user runs it:
1. ``recbatch nightly`` on the history (ml-latest-small less each user's last 5):
   trains the recipe, embeds, scores, gates and publishes with the popularity
   prior off (``--force``: a gate refusal is printed, and the lists are still
   scored, since their quality is what is measured);
2. the prior is picked for that model on the nightly snapshot's ``validation``
   carve-out (``quality.tune_scoring``: the grid, the 2% bar, the cold floor),
   never on the 5 real next items;
3. when a prior setting wins, the same date is run again with it and
   ``train.cadence: never`` (the model and its item vectors are reused; the
   rerun replaces the published run whole).
Both published runs are scored against the real next items (``evaluate_run``:
seen items filtered as served, K = 10), and the table gives every seed, the
mean and the spread (max - min). The references in the same table: the prior-off
lists of the same seeds, and every ``--next-items`` run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import statistics
from pathlib import Path

from quality import REPO, PROTOCOLS, tune_scoring

# imported after `quality`, which puts this checkout first on sys.path
from recbatch.config import Config, load_config, parse_override  # noqa: E402
from recbatch.data.ingest import ingest  # noqa: E402
from recbatch.data.snapshot import Snapshot  # noqa: E402
from recbatch.eval.metrics import evaluate_run  # noqa: E402
from recbatch.layout import RunLayout, local_path  # noqa: E402
from recbatch.pipeline import run_nightly  # noqa: E402

RUN_DATE = dt.date(2026, 12, 1)  # any date after the data's newest row; one date per seed root
SHOWN = ("ndcg@10", "recall@10", "cold/recall@10")


def night(cfg: Config, **overrides) -> tuple[str, dict]:
    """One nightly for ``RUN_DATE`` with `overrides`: (published run folder, {stage: seconds})."""
    summary = run_nightly(cfg.with_overrides(overrides) if overrides else cfg, RUN_DATE, force_publish=True)
    print(summary.render(), flush=True)
    if summary.failed_stage or not summary.output:
        raise SystemExit(f"nightly failed at {summary.failed_stage} (root {cfg.root})")
    gate = summary.stage("evaluate").details.get("gate", {})
    print(f"gate: {'passed' if gate.get('passed') else 'REFUSED (published with --force)'}: {gate}", flush=True)
    return summary.output, {s.name: s.seconds for s in summary.stages if s.status == "ran"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the recipe: a recbatch config file")
    parser.add_argument("--history", required=True, help="bench/quality.py --write-history's folder")
    parser.add_argument("--truth-root", required=True, help="the --root that --write-history was given")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/ml-latest-small"))
    parser.add_argument("--root", default="/tmp/recbatch-quality-published")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--next-items", action="append", default=[], metavar="NAME=RUN_DIR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    truth_cfg = Config().with_overrides({"root": args.truth_root, "ingest.source": args.data,
                                         **PROTOCOLS["leave_last_n"]})
    truth = ingest(truth_cfg)  # the same snapshot --write-history cut: its test rows are the real next items
    rows: dict[str, list[dict]] = {"prior off": [], "prior picked on validation": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        root = Path(args.root) / f"seed-{seed}"
        overrides = {**dict(parse_override(o) for o in args.overrides), "root": str(root),
                     "ingest.source": args.history, "train.seed": seed}
        cfg = load_config(args.config, overrides)
        off_run, seconds = night(cfg)
        off = evaluate_run(off_run, truth, ks=[10], name=f"off-{seed}").metrics()
        layout = RunLayout.of(cfg.root, cfg.storage).at
        snapshot = Snapshot.open(layout.latest_snapshot())
        model_dir = str(local_path(layout.latest_model()))
        settings = tune_scoring(cfg, snapshot, model_dir, "validation", root)
        if settings.get("score.popularity_prior_weight", 0.0) > 0:
            picked_run, _ = night(cfg, **settings, **{"train.cadence": "never"})
            picked = evaluate_run(picked_run, truth, ks=[10], name=f"picked-{seed}").metrics()
        else:
            picked = off
        rows["prior off"].append(off)
        rows["prior picked on validation"].append(picked)
        print(f"seed {seed}: train {seconds.get('train', 0):.0f} s, prior {settings}; published NDCG@10 "
              f"off {off['ndcg@10']:.4f}, picked {picked['ndcg@10']:.4f}", flush=True)
    for spec in args.next_items:
        name, run_dir = spec.split("=", 1)
        rows.setdefault(name, []).append(evaluate_run(run_dir, truth, ks=[10], name=name).metrics())

    print(f"\n{'lists':<30}" + "".join(f"{c:>36}" for c in SHOWN))
    for name, runs in rows.items():
        cells = []
        for column in SHOWN:
            values = [m.get(column, 0.0) for m in runs]
            cells.append(f"{statistics.mean(values):.4f} ({' / '.join(f'{v:.4f}' for v in values)})")
        print(f"{name:<30}" + "".join(f"{c:>36}" for c in cells))
    print("(mean over the runs, each run in brackets; spread = max - min of the bracketed values)")


if __name__ == "__main__":
    main()
