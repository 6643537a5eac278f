"""Injected-profile attacks on ml-latest-small: the target's exposure without and with the defence.

    .venv/bin/python bench/attacks.py [--data ../shared/data/ml-latest-small] [--root /tmp/recbatch-attacks]
        [--share 0.01] [--spread-days 0] [--models item_knn,als,two_tower] [--kinds average,bandwagon]
        [--two-tower-config bench/quality-two-tower.yaml] [--two-tower-epochs 2]

For each attack kind (average, bandwagon; ``recbatch/data/attacks.py``) the
script injects ``--share`` fake profiles pushing one unpopular item (the
smallest id among items with exactly 5 interactions; made in one burst, or
with ``--spread-days`` started over that many days), then fits each model
three times: on the clean snapshot (the reference, measured in the same run),
on the attacked one, and on the attacked one ingested with
``ingest.detect_injected_profiles``. The co-occurrence baselines are tuned on
validation as in the nightly evaluation; the two-tower is the nightly's own
model, trained by ``recbatch.train.trainer.train`` with ``--two-tower-config``
(its epochs cut to ``--two-tower-epochs``: a quality bench, not a timing one)
and ranked for every real user by ``recbatch.eval.holdout.holdout_lists``
(the scoring stage's rules, history before test). It prints, on the real users only:

* the target's exposure@10 (share of real users with it in their top 10),
  and the share of the attack's exposure gain the defence removes:
  (attacked - defended) / (attacked - clean);
* NDCG@10 on the real users' test split, defended vs clean (the defence's cost);

and writes them as a section of an evaluation report (``<root>/reports/attacks``)
beside the clean models' usual tables. Fitted lists are kept per snapshot under
--root, so a rerun only fits what is new; a defended snapshot holding exactly the
clean rows (every fake set aside, no real user) reuses the clean fits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402

from recbatch.config import Config, load_config  # noqa: E402
from recbatch.data.attacks import ATTACK_KINDS, inject_attack  # noqa: E402
from recbatch.data.ingest import ingest  # noqa: E402
from recbatch.eval.baselines import run_baseline  # noqa: E402
from recbatch.eval.exposure import target_exposure  # noqa: E402
from recbatch.eval.metrics import EvalResult, evaluate, heldout_and_history, scan_recommendations  # noqa: E402
from recbatch.eval.report import Section, write_report  # noqa: E402

K = 10
TARGET_INTERACTIONS = 5  # the pushed item: a real but unpopular one
TWO_TOWER = "two_tower"


def fitted_lists(cfg: Config, tower_cfg: Config, snapshot, model: str, real_users: pl.Series, root: Path) -> pl.LazyFrame:
    """`model`'s top-K lists, fitted on `snapshot` once and kept under `root`."""
    if model != TWO_TOWER:
        out = root / "baselines" / snapshot.hash / model
        if not out.exists():
            run_baseline(model, snapshot, cfg, out)
        return scan_recommendations(out)
    from recbatch.eval.holdout import holdout_lists
    from recbatch.train.trainer import train

    out = root / "two-tower" / snapshot.hash / "lists.parquet"
    if not out.exists():
        artifact = train(tower_cfg, snapshot)
        out.parent.mkdir(parents=True, exist_ok=True)
        holdout_lists(tower_cfg, snapshot, artifact, None, real_users, K).write_parquet(out)
    return pl.scan_parquet(out)


def same_rows(a, b) -> bool:
    """Whether two snapshots hold the same users and split interactions (a defence that set aside exactly
    the fakes leaves the clean data): then a model fitted on one is the model of the other."""
    def rows(snapshot, table: str) -> pl.DataFrame:
        frame = snapshot.split() if table == "split" else snapshot.users()
        return frame.collect().sort(pl.all())
    return all(rows(a, t).equals(rows(b, t)) for t in ("split", "users"))


def measure(lists: pl.LazyFrame, clean, model: str, target, real_users: pl.Series, ks: list[int]) -> dict:
    """Exposure of `target` in `lists` and their metrics on the real users' test split (`clean`'s)."""
    heldout, history = heldout_and_history(clean, "test")
    result = evaluate(lists, heldout, history, clean.items(), ks=ks, name=model, source=f"{model} lists")
    return {"exposure": target_exposure(lists, target, k=K, real_users=real_users),
            "ndcg": result.metrics()[f"ndcg@{K}"], "result": result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/ml-latest-small"))
    parser.add_argument("--root", default="/tmp/recbatch-attacks")
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--spread-days", type=float, default=0.0, help="start the fake profiles over this many days")
    parser.add_argument("--models", default=f"item_knn,als,{TWO_TOWER}")
    parser.add_argument("--kinds", default=",".join(ATTACK_KINDS))
    parser.add_argument("--two-tower-config", default=str(REPO / "bench" / "quality-two-tower.yaml"))
    parser.add_argument("--two-tower-epochs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root)
    # An offline comparison: leave-last-5 gives every real user held-out rows to score NDCG@10 on.
    common = {"root": str(root), "ingest.source": args.data, "score.k": K, "split.protocol": "leave_last_n"}
    cfg = Config().with_overrides(common)
    tower_cfg = load_config(args.two_tower_config, {**common, "train.epochs": args.two_tower_epochs})
    models = args.models.split(",")
    clean = ingest(cfg)
    interactions = clean.interactions().collect()
    real_users = clean.users().collect()["user_id"]
    counts = interactions.group_by("item_id").len()
    target = counts.filter(pl.col("len") == TARGET_INTERACTIONS)["item_id"].min()
    print(f"clean snapshot {clean.hash}: {real_users.len()} users, target item {target} "
          f"({TARGET_INTERACTIONS} interactions), {args.share:.1%} attackers, spread over {args.spread_days:g} days")

    rows = []
    clean_results: dict[str, EvalResult] = {}
    for kind in args.kinds.split(","):
        source = root / f"source-{kind}-{args.share:g}-{args.spread_days:g}d"
        started = time.perf_counter()
        attack = inject_attack(clean, source, kind=kind, target=str(target), share=args.share,
                               spread_days=args.spread_days)
        fakes = set(json.loads((source / "attack.json").read_text())["fake_user_ids"])
        attacked = ingest(cfg.with_overrides({"ingest.source": str(source)}))
        defended = ingest(cfg.with_overrides({"ingest.source": str(source), "ingest.detect_injected_profiles": True}))
        caught = set(pl.read_parquet(defended.path / "quarantine" / "profiles.parquet")["user_id"]) \
            if defended.counts.get("quarantined_profiles") else set()
        print(f"\n== {kind}: {attack['fake_users']} fake profiles of {attack['profile_length']} events; "
              f"quarantined {len(caught & fakes)} of them and {len(caught - fakes)} real users "
              f"(snapshots: attacked {attacked.hash}, defended {defended.hash})")
        defended_is_clean = same_rows(defended, clean)
        if defended_is_clean:
            print("  the defended snapshot holds exactly the clean rows: its models are the clean ones")
        for model in models:
            base, hit, safe = (
                measure(fitted_lists(cfg, tower_cfg, snapshot, model, real_users, root), clean, model, target,
                        real_users, cfg.eval.ks)
                for snapshot in (clean, attacked, clean if defended_is_clean else defended)
            )
            clean_results[model] = base["result"]
            gain = hit["exposure"] - base["exposure"]
            removed = f"{(hit['exposure'] - safe['exposure']) / gain:.0%}" if gain > 0 else "no gain"
            cost = safe["ndcg"] / base["ndcg"] - 1
            rows.append((kind, model, base, hit, safe, removed, cost))
            print(f"  {model:<9} exposure@{K}: clean {base['exposure']:.4f}  attacked {hit['exposure']:.4f}  "
                  f"defended {safe['exposure']:.4f}  gain removed {removed}   "
                  f"ndcg@{K}: clean {base['ndcg']:.4f}  attacked {hit['ndcg']:.4f}  defended {safe['ndcg']:.4f} "
                  f"({cost:+.2%} vs clean)  [{time.perf_counter() - started:.0f} s]", flush=True)

    header = ["attack", "model", f"exposure@{K} clean", "attacked", "defended", "gain removed",
              f"NDCG@{K} clean", "attacked", "defended", "cost"]
    table = [[kind, model, f"{base['exposure']:.4f}", f"{hit['exposure']:.4f}", f"{safe['exposure']:.4f}",
              removed, f"{base['ndcg']:.4f}", f"{hit['ndcg']:.4f}", f"{safe['ndcg']:.4f}", f"{cost:+.2%}"]
             for kind, model, base, hit, safe, removed, cost in rows]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    print("\n".join("| " + " | ".join(row) + " |" for row in table))
    section = Section(f"Injected profiles: target {target} exposure and real-user NDCG ({args.share:.1%} attackers)",
                      header, table)
    report = write_report(list(clean_results.values()), root / "reports" / "attacks", headline_k=K,
                          context={"snapshot": clean.hash, "target": target, "share": args.share,
                                   "spread_days": args.spread_days}, sections=[section])
    print(f"\nreport: {report.join('report.md')}")


if __name__ == "__main__":
    main()
