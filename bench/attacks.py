"""Injected-profile attacks on ml-latest-small: the target's exposure without and with the defence.

    .venv/bin/python bench/attacks.py [--data ../shared/data/ml-latest-small] [--root /tmp/recbatch-attacks]
        [--share 0.01] [--models item_knn,als]

For each attack kind (average, bandwagon; ``recbatch/data/attacks.py``) the
script injects ``--share`` fake profiles pushing one unpopular item (the
smallest id among items with exactly 5 interactions), then fits each
co-occurrence model (the baselines, tuned on validation as in the nightly
evaluation) three times: on the clean snapshot (the reference, measured in the
same run), on the attacked one, and on the attacked one ingested with
``ingest.detect_injected_profiles``. It prints, on the real users only:

* the target's exposure@10 (share of real users with it in their top 10),
  and the share of the attack's exposure gain the defence removes:
  (attacked - defended) / (attacked - clean);
* NDCG@10 on the real users' test split, defended vs clean (the defence's cost);

and writes them as a section of an evaluation report (``<root>/reports/attacks``)
beside the clean models' usual tables.

The two-tower model is not in this table: it needs a training run per
snapshot (train one on each snapshot printed and compare with
``recbatch.eval.exposure.target_exposure``).
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

from recbatch.config import Config  # noqa: E402
from recbatch.data.attacks import ATTACK_KINDS, inject_attack  # noqa: E402
from recbatch.data.ingest import ingest  # noqa: E402
from recbatch.eval.baselines import run_baseline  # noqa: E402
from recbatch.eval.exposure import target_exposure  # noqa: E402
from recbatch.eval.metrics import evaluate_run, scan_recommendations  # noqa: E402
from recbatch.eval.report import Section, write_report  # noqa: E402

K = 10
TARGET_INTERACTIONS = 5  # the pushed item: a real but unpopular one


def measure(cfg: Config, snapshot, clean, model: str, target, real_users: pl.Series, root: Path) -> dict:
    """Exposure of `target` and NDCG@K on the real users for `model` fitted on `snapshot`."""
    out = root / "baselines" / snapshot.hash / model
    if not out.exists():
        run_baseline(model, snapshot, cfg, out)
    exposure = target_exposure(scan_recommendations(out), target, k=K, real_users=real_users)
    ndcg = evaluate_run(out, clean, ks=[K], name=model).metrics()[f"ndcg@{K}"]  # the real users' test split
    return {"exposure": exposure, "ndcg": ndcg}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/ml-latest-small"))
    parser.add_argument("--root", default="/tmp/recbatch-attacks")
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--models", default="item_knn,als")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root)
    cfg = Config().with_overrides({"root": str(root), "ingest.source": args.data, "score.k": K})
    clean = ingest(cfg)
    interactions = clean.interactions().collect()
    real_users = clean.users().collect()["user_id"]
    counts = interactions.group_by("item_id").len()
    target = counts.filter(pl.col("len") == TARGET_INTERACTIONS)["item_id"].min()
    print(f"clean snapshot {clean.hash}: {real_users.len()} users, target item {target} "
          f"({TARGET_INTERACTIONS} interactions), {args.share:.1%} attackers")

    rows = []
    for kind in ATTACK_KINDS:
        source = root / f"source-{kind}"
        started = time.perf_counter()
        attack = inject_attack(clean, source, kind=kind, target=str(target), share=args.share)
        fakes = set(json.loads((source / "attack.json").read_text())["fake_user_ids"])
        attacked = ingest(cfg.with_overrides({"ingest.source": str(source)}))
        defended = ingest(cfg.with_overrides({"ingest.source": str(source), "ingest.detect_injected_profiles": True}))
        caught = set(pl.read_parquet(defended.path / "quarantine" / "profiles.parquet")["user_id"]) \
            if defended.counts.get("quarantined_profiles") else set()
        print(f"\n== {kind}: {attack['fake_users']} fake profiles of {attack['profile_length']} events; "
              f"quarantined {len(caught & fakes)} of them and {len(caught - fakes)} real users "
              f"(snapshots: attacked {attacked.hash}, defended {defended.hash})")
        for model in args.models.split(","):
            base = measure(cfg, clean, clean, model, target, real_users, root)
            hit = measure(cfg, attacked, clean, model, target, real_users, root)
            safe = measure(cfg, defended, clean, model, target, real_users, root)
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
    results = [evaluate_run(root / "baselines" / clean.hash / m, clean, ks=cfg.eval.ks, name=m)
               for m in args.models.split(",")]
    report = write_report(results, root / "reports" / "attacks", headline_k=K,
                          context={"snapshot": clean.hash, "target": target, "share": args.share}, sections=[section])
    print(f"\nreport: {report / 'report.md'}")


if __name__ == "__main__":
    main()
