"""Offline quality on MovieLens ml-latest-small: every baseline (and the two-tower) on both protocols.

    .venv/bin/python bench/quality.py [--data ../shared/data/ml-latest-small] [--root /tmp/recbatch-quality]
        [--model leave_last_n=DIR --model temporal=DIR]   # two-tower artifacts trained on that protocol's snapshot
        [--backtest-model temporal=DIR]                   # one trained on the temporal backtest snapshot
        [--protocols leave_last_n] [--baselines bpr,sasrec] [--set train.seed=1 ...]   # a part; another seed
    .venv/bin/python bench/quality.py --scale-users 1000000   # evaluation time and peak memory at scale
    .venv/bin/python bench/quality.py --write-history DIR      # ml-latest-small minus each user's last 5, as a release
    .venv/bin/python bench/quality.py --next-items NAME=RUN_DIR [--next-items ...]   # published lists vs the last 5

Protocols (config ``split``):
  leave_last_n  per user, the last 5 interactions are test, for users with >= 10 interactions
  temporal      global time cut at the 90th percentile of timestamps; later rows are test,
                and items first seen after the cut are cold

For each protocol the script ingests a snapshot (read from --data, never copied
elsewhere than the snapshot), trains each baseline (grid-searched on the
validation carve-out, refit on train + validation), evaluates it on the test
split, and prints a table with NDCG@10 relative to the best baseline -- the
reference measured in the same run -- plus the seconds the evaluation of one
run took. A report folder per protocol is written under --root/reports/.

The two-tower's scoring settings (the popularity prior, ``score.popularity_*``)
are picked the same way, never on test: on the validation carve-out for
leave_last_n; for temporal, whose newcomers and drift a per-user carve-out
does not mirror, on a *backtest*: the same protocol replayed on the data before
the test cutoff (ratings and tags up to it, written under --root/backtest-source
and ingested; it prints the snapshot to train the --backtest-model on).

``--write-history DIR`` and ``--next-items`` replay the nightly job as a user
meets it: DIR is ml-latest-small without each user's last 5 ratings (the
leave_last_n protocol's test rows; tags written after the newest kept rating
are dropped too), to feed ``recbatch nightly --source DIR`` as the whole
history; ``--next-items NAME=RUN_DIR`` then scores that night's *published*
lists (seen items filtered, as served) against each user's 5 real next items.

``--scale-users N`` instead measures the metric code alone on a synthetic run
of N users x 100 items (100k-item catalog, 5 test and 10 history rows per
user), in a child process so its peak RSS is measured; the reference is the
same with N/10 users. Bounded memory shows as a peak that grows far slower
than N.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from recbatch.config import Config, parse_override  # noqa: E402
from recbatch.data.ingest import ingest  # noqa: E402
from recbatch.eval.baselines import run_baseline  # noqa: E402
from recbatch.eval.holdout import evaluate_model  # noqa: E402
from recbatch.eval.metrics import evaluate_run  # noqa: E402
from recbatch.eval.report import write_report  # noqa: E402

PROTOCOLS = {
    "leave_last_n": {"split.protocol": "leave_last_n", "split.leave_last_n": 5, "split.min_user_interactions": 10},
    "temporal": {"split.protocol": "temporal", "split.temporal_train_fraction": 0.9},
}
COLUMNS = ("ndcg@10", "recall@10", "mrr@10", "map@10", "hit_rate@10", "coverage@10", "avg_popularity@10",
           "cold/recall@10", "seen_share@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/ml-latest-small"))
    parser.add_argument("--root", default="/tmp/recbatch-quality")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--baselines", default="random,most_popular,recent_popular,item_knn,als,bpr,sasrec,content")
    parser.add_argument("--model", action="append", default=[], metavar="PROTOCOL=DIR")
    parser.add_argument("--backtest-model", action="append", default=[], metavar="PROTOCOL=DIR",
                        help="temporal: a model trained on the backtest snapshot, to pick the scoring settings on")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every protocol (repeatable): train.seed=1 seeds the baselines")
    parser.add_argument("--scale-users", type=int, help="only measure evaluation at this many users")
    parser.add_argument("--write-history", metavar="DIR", help="write ml-latest-small minus each user's last 5 to DIR")
    parser.add_argument("--next-items", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="score a published run against each user's 5 real next items")
    args = parser.parse_args()
    if args.scale_users:
        scale(args.scale_users, Path(args.root) / "scale")
        return
    if args.write_history or args.next_items:
        replay(Path(args.data), Path(args.root), args.write_history, dict(s.split("=", 1) for s in args.next_items))
        return
    logging.basicConfig(level=logging.WARNING)
    models = dict(spec.split("=", 1) for spec in args.model)
    backtest_models = dict(spec.split("=", 1) for spec in args.backtest_model)

    for protocol in args.protocols.split(","):
        cfg = protocol_config(protocol, args.data, args.root, dict(parse_override(o) for o in args.overrides))
        started = time.perf_counter()
        snapshot = ingest(cfg)
        counts = snapshot.counts
        print(f"\n== {protocol}: snapshot {snapshot.hash} ({time.perf_counter() - started:.1f} s) "
              f"train {counts['train']} validation {counts['validation']} test {counts['test']} "
              f"cold items {counts.get('cold_items')}")

        results, eval_seconds = run_baselines(args.baselines.split(","), snapshot, cfg, Path(args.root))
        settings = {}
        if protocol == "temporal":
            backtest = ingest(cfg.with_overrides({
                "root": str(Path(args.root) / "backtest"),
                "ingest.source": str(backtest_source(Path(args.data), Path(args.root) / "backtest-source", cfg)),
            }))
            print(f"  backtest snapshot {backtest.path} (train a --backtest-model on it): "
                  f"train {backtest.counts['train']} test {backtest.counts['test']}")
        if protocol in models:
            if protocol == "temporal" and protocol in backtest_models:
                settings = tune_scoring(cfg, backtest, backtest_models[protocol], "test", Path(args.root))
            else:
                if protocol == "temporal":
                    print("  (no --backtest-model temporal=...: scoring settings picked on the validation carve-out)")
                settings = tune_scoring(cfg, snapshot, models[protocol], "validation", Path(args.root))
            result, eval_seconds["two_tower"] = evaluate_two_tower(cfg, snapshot, models[protocol], settings)
            results.append(result)

        print_table(results, eval_seconds, two_towers={"two_tower"})
        report = Path(args.root) / "reports" / protocol
        write_report(results, report, context={"snapshot": snapshot.hash, "protocol": protocol,
                                               "evaluate_seconds": eval_seconds, "two_tower_scoring": settings})
        print(f"report: {report}")


def protocol_config(protocol: str, data: str | Path, root: str | Path, overrides: dict | None = None) -> Config:
    """The config `protocol`'s snapshot is ingested with and every model on it ranked (K = 100) and scored with."""
    return Config().with_overrides(
        {"root": str(root), "ingest.source": str(data), "score.k": 100, **PROTOCOLS[protocol], **(overrides or {})})


def run_baselines(names: list[str], snapshot, cfg: Config, root: Path) -> tuple[list, dict[str, float]]:
    """Tune, fit, write and evaluate each baseline on `snapshot`'s test split: (results, evaluation seconds by name)."""
    results, eval_seconds = [], {}
    for name in names:
        out = root / "baselines" / snapshot.hash / name
        started = time.perf_counter()
        manifest = run_baseline(name, snapshot, cfg, out)
        fit_seconds = time.perf_counter() - started
        started = time.perf_counter()
        results.append(evaluate_run(out, snapshot, ks=cfg.eval.ks, name=name))
        eval_seconds[name] = time.perf_counter() - started
        print(f"  {name:<13} params {manifest['baseline']['params']}  "
              f"tune+fit+write {fit_seconds:.1f} s, evaluate {eval_seconds[name]:.2f} s", flush=True)
    return results, eval_seconds


def evaluate_two_tower(cfg: Config, snapshot, model_dir: str | Path, settings: dict, name: str = "two_tower") -> tuple:
    """`model_dir` on `snapshot`'s test split, ranked with the scoring `settings` (``tune_scoring``'s): (result, seconds)."""
    started = time.perf_counter()
    result = evaluate_model(cfg.with_overrides(settings), snapshot, model_dir, name=name)
    seconds = time.perf_counter() - started
    print(f"  {name:<13} {settings}: encode+rank+evaluate {seconds:.1f} s", flush=True)
    return result, seconds


def print_table(results: list, eval_seconds: dict[str, float], two_towers: set[str]) -> None:
    """One row of ``COLUMNS`` per result, with NDCG@10 relative to the best baseline (not random, not a two-tower)."""
    baselines = [r for r in results if r.name not in two_towers | {"random"}]
    best = max(baselines, key=lambda r: r.at("ndcg", 10))
    print(f"\n{'model':<14}" + "".join(f"{c:>18}" for c in COLUMNS) + f"{'ndcg@10 / best':>16}{'eval s':>8}")
    for r in results:
        m = r.metrics()
        print(f"{r.name:<14}" + "".join(f"{m[c]:>18.4f}" for c in COLUMNS)
              + f"{m['ndcg@10'] / best.at('ndcg', 10):>16.2f}{eval_seconds[r.name]:>8.2f}")
    print(f"(reference: best baseline by NDCG@10 = {best.name}; users evaluated {best.users})")


PRIOR_GRID = [{"score.popularity_prior_weight": 0.0}] + [
    {"score.popularity_prior_weight": w, "score.popularity_half_life_days": h, "score.popularity_pseudo_count": a,
     "score.popularity_new_item_quantile": q}
    for w in (0.5, 1.0) for h in (None, 365.0, 1095.0) for a in (1.0, 10.0) for q in (0.5, 0.9)
]


MIN_GAIN = 0.02  # relative NDCG@10 a prior setting must add on the tuning split to be used


def tune_scoring(cfg: Config, snapshot, model_dir: str, split: str, root: Path) -> dict:
    """The ``PRIOR_GRID`` point with the best NDCG@10 for `model_dir` on `snapshot`'s `split`, among
    those that beat the prior off by at least ``MIN_GAIN`` and keep new items' reach (cold Recall@10 at
    least the prior-off point's); the prior off when none does.

    The gain threshold keeps a setting that only wins by noise out; the cold floor
    because a prior can only lower new items (they have no count), and accuracy
    bought by hiding them is not what a catalog with fresh items wants.
    """
    from recbatch.eval.holdout import catalog_vectors
    from recbatch.model.artifact import load_artifact
    from recbatch.storage import write_manifest

    items_dir = root / "two-tower-items" / f"{Path(model_dir).name}-{snapshot.hash}"
    if not (items_dir / "_SUCCESS").exists():  # the catalog encoded once, not once per grid point
        import polars as pl

        from recbatch.embed.store import matrix_to_list_array

        ids, matrix = catalog_vectors(load_artifact(model_dir), snapshot, None, cfg.embed.batch_size)
        items_dir.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({"item_id": pl.Series(ids), "embedding": pl.Series(matrix_to_list_array(matrix))}) \
            .write_parquet(items_dir / "part-0.parquet")
        write_manifest(items_dir, {"model_version": Path(model_dir).name})
    trials = []
    for point in PRIOR_GRID:
        result = evaluate_model(cfg.with_overrides(point), snapshot, model_dir, items_dir, split=split)
        trials.append((result.at("ndcg", 10), point, result.metrics().get("cold/recall@10", 0.0)))
        print(f"    tune on {snapshot.hash} {split}: {point} ndcg@10 {trials[-1][0]:.4f} "
              f"cold recall@10 {trials[-1][2]:.4f}", flush=True)
    off = trials[0]  # PRIOR_GRID[0]: the prior off
    better = [t for t in trials[1:] if t[0] >= off[0] * (1 + MIN_GAIN) and t[2] >= off[2]]
    return max(better, key=lambda t: t[0])[1] if better else off[1]


def replay(data: Path, root: Path, history_dir: str | None, runs: dict[str, str]) -> None:
    """``--write-history`` / ``--next-items``: see the module docstring."""
    import polars as pl

    cfg = Config().with_overrides({"root": str(root), "ingest.source": str(data), **PROTOCOLS["leave_last_n"]})
    snapshot = ingest(cfg)  # the truth: its test rows are each user's 5 real next items
    if history_dir:
        out = Path(history_dir)
        out.mkdir(parents=True, exist_ok=True)
        ratings = pl.read_csv(data / "ratings.csv")
        test = snapshot.split("test").select(
            pl.col("user_id").alias("userId"), pl.col("item_id").alias("movieId"),
            pl.col("ts").dt.epoch("s").alias("timestamp"),
        ).collect()
        kept = ratings.join(test, on=["userId", "movieId", "timestamp"], how="anti")
        kept.write_csv(out / "ratings.csv")
        tags = pl.read_csv(data / "tags.csv")
        tags.filter(pl.col("timestamp") <= kept["timestamp"].max()).write_csv(out / "tags.csv")
        (out / "movies.csv").write_bytes((data / "movies.csv").read_bytes())
        print(f"{out}: {kept.height} of {ratings.height} ratings ({ratings.height - kept.height} held out, "
              f"snapshot {snapshot.hash})")
    for name, run_dir in runs.items():
        m = evaluate_run(run_dir, snapshot, ks=cfg.eval.ks, name=name).metrics()
        print(f"{name:<10} NDCG@10 {m['ndcg@10']:.4f}  Recall@10 {m['recall@10']:.4f}  "
              f"seen_share@10 {m['seen_share@10']:.4f}  ({run_dir})")


def backtest_source(data: Path, out: Path, cfg: Config) -> Path:
    """ml-latest-small cut at the temporal protocol's cutoff: the protocol replayed one window earlier."""
    import polars as pl

    ratings = pl.read_csv(data / "ratings.csv")
    cutoff = int(ratings["timestamp"].quantile(cfg.split.temporal_train_fraction, interpolation="lower"))
    out.mkdir(parents=True, exist_ok=True)
    ratings.filter(pl.col("timestamp") <= cutoff).write_csv(out / "ratings.csv")
    pl.read_csv(data / "tags.csv").filter(pl.col("timestamp") <= cutoff).write_csv(out / "tags.csv")
    (out / "movies.csv").write_bytes((data / "movies.csv").read_bytes())
    return out


def _synthetic_run(folder: Path, users: int, items: int = 100_000, k: int = 100, chunk: int = 100_000) -> None:
    """recs/part-*.parquet, test.parquet, history.parquet, items.parquet of a random run."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    (folder / "recs").mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, users, chunk)):
        n = min(chunk, users - start)
        ids = np.arange(start, start + n)
        # k distinct items per user: a random offset into a random stride walk of the catalog
        lists = (rng.integers(0, items, (n, 1)) + np.arange(k) * 7919) % items  # [n, k]
        item_ids = pa.FixedSizeListArray.from_arrays(pa.array(lists.reshape(-1)), k).cast(pa.list_(pa.int64()))
        pq.write_table(pa.table({"user_id": ids, "item_ids": item_ids}), folder / "recs" / f"part-{part:05d}.parquet")
        for name, per_user in (("test", 5), ("history", 10)):
            pl.DataFrame({
                "user_id": np.repeat(ids, per_user), "item_id": rng.integers(0, items, n * per_user),
            }).write_parquet(folder / f"{name}-{part:05d}.parquet")
    catalog = pl.DataFrame({"item_id": np.arange(items), "is_cold": np.arange(items) % 50 == 0})
    catalog.write_parquet(folder / "items.parquet")


def _evaluate_synthetic(folder: str, queue) -> None:
    import polars as pl

    from recbatch.eval.metrics import evaluate

    folder_ = Path(folder)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = evaluate(
        pl.scan_parquet(folder_ / "recs" / "*.parquet"), pl.scan_parquet(folder_ / "test-*.parquet"),
        pl.scan_parquet(folder_ / "history-*.parquet"), pl.scan_parquet(folder_ / "items.parquet"),
        ks=[10, 100], name="synthetic",
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    queue.put((seconds, cpu, result.at("ndcg", 10), result.users["all"],
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))


def scale(users: int, root: Path) -> None:
    """Evaluation time and peak RSS at `users` and at users / 10 (reference), same process layout."""
    rows = []
    for n in (users // 10, users):
        folder = root / f"users-{n}"
        if not (folder / "items.parquet").exists():
            started = time.perf_counter()
            _synthetic_run(folder, n)
            print(f"generated {n:,} users in {time.perf_counter() - started:.1f} s", flush=True)
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(target=_evaluate_synthetic, args=(str(folder), queue))
        child.start()
        child.join()  # the result is a few numbers: it fits the queue's pipe without a reader
        if child.exitcode != 0:
            raise SystemExit(f"evaluation of {folder} failed (exit code {child.exitcode}); see the traceback above")
        seconds, cpu, ndcg, evaluated, peak_gib = queue.get()
        rows.append((n, cpu, peak_gib))
        print(f"{n:>10,} users x 100: evaluate {seconds:6.1f} s wall, {cpu:6.1f} s CPU, peak RSS {peak_gib:.2f} GiB "
              f"(ndcg@10 {ndcg:.5f}, {evaluated:,} users)", flush=True)
    (small, t_small, m_small), (big, t_big, m_big) = rows
    print(f"ratios vs reference ({small:,} users): {big / small:.0f}x users -> {t_big / t_small:.1f}x CPU time, "
          f"{m_big / m_small:.2f}x peak memory")


if __name__ == "__main__":
    main()
