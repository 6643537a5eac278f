"""Which moment a time-aware model is asked about: "now", or each user's own last event.

    .venv/bin/python bench/quality_user_age.py --root /tmp/q/pub/seed-0 --history /tmp/q/ml-hist \\
        --truth-root /tmp/q/truth

A model trained with example age (``model.example_age_days``) is asked, when it
scores, how old the interaction it predicts will be. The nightly asks for age 0,
"now": the list is served from tomorrow on. The published-list replay of
``bench/quality_published.py`` scores the lists against each user's 5 real next
items, and on ml-latest-small those came minutes after the user's last event,
a median of 11 years before the data's newest row: a hindcast, not tonight.

For the nightly under `--root` (its model, its item vectors), this encodes every
user twice from the same history (`--history`, the nightly's input), once at
age 0 and once at the age of the user's own last event, writes both as runs
and scores them as ``quality_published.py`` does (``evaluate_run``, K = 10,
seen items filtered). The age-0 run is the published one recomputed with the
popularity prior off: where the prior was off, its figure equals the published
run's, which is printed first as that check.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
import torch
from quality import PROTOCOLS, REPO

# imported after `quality`, which puts this checkout first on sys.path
from recbatch.config import Config  # noqa: E402
from recbatch.data.ingest import ingest  # noqa: E402
from recbatch.eval.metrics import evaluate_run  # noqa: E402
from recbatch.layout import RunLayout  # noqa: E402
from recbatch.model.artifact import load_artifact  # noqa: E402
from recbatch.score.writer import write_recommendations  # noqa: E402

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a nightly's root (one seed of quality_published.py)")
    parser.add_argument("--history", required=True, help="the nightly's input: bench/quality.py --write-history")
    parser.add_argument("--truth-root", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/ml-latest-small"))
    args = parser.parse_args()

    layout = RunLayout.of(args.root)  # a local root
    published = str(layout.published_runs()[-1])
    art = load_artifact(layout.latest_model())
    if not art.card["model"]["example_age_days"]:
        raise SystemExit(f"{args.root}: the model has no example age input; nothing to compare")
    items = pl.read_parquet(layout.embeddings(art.model_version, "items") / "*.parquet")
    item_ids = items["item_id"].to_numpy()
    row_of = {item: row for row, item in enumerate(item_ids.tolist())}
    vectors = torch.tensor(np.stack(items["embedding"].to_numpy()))  # [M, D]

    ratings = pl.read_csv(Path(args.history) / "ratings.csv").sort(["userId", "timestamp", "movieId"])
    newest = ratings["timestamp"].max()
    users = ratings.group_by("userId", maintain_order=True).agg("movieId", pl.col("timestamp").max())
    B, L, D = users.height, art.history_length, vectors.shape[1]
    history, mask = torch.zeros(B, L, D), torch.zeros(B, L, dtype=torch.bool)  # most recent last
    seen = []
    for b, movies in enumerate(users["movieId"].to_list()):
        rows = [row_of[m] for m in movies]
        recent = rows[-L:]
        history[b, L - len(recent):], mask[b, L - len(recent):] = vectors[recent], True
        seen.append(rows)
    last_event_age = torch.tensor(((newest - users["timestamp"]) / 86_400).to_numpy(), dtype=torch.float32)  # [B]

    truth_cfg = Config().with_overrides({"root": args.truth_root, "ingest.source": args.data,
                                         **PROTOCOLS["leave_last_n"]})
    truth = ingest(truth_cfg)
    none = torch.zeros(B, 0)
    print(f"published run {published}: NDCG@10 {evaluate_run(published, truth, ks=[K]).metrics()['ndcg@10']:.4f}")
    for name, age in (("age 0 (now)", None), ("age of the user's last event", last_event_age)):
        with torch.no_grad():
            user_vectors = art.model("users", history=history, history_mask=mask,
                                     user_categorical=none.long(), user_numeric=none, example_age_days=age)  # [B, D]
        scores = user_vectors @ vectors.T  # [B, M]
        for b, rows in enumerate(seen):
            scores[b, rows] = -torch.inf  # seen items filtered, as served
        top = torch.topk(scores, K)
        run_dir = Path(args.root) / "user-age" / name.split(" (")[0].replace(" ", "-").replace("'", "")
        lists = pl.DataFrame({"user_id": users["userId"], "item_ids": [item_ids[r].tolist() for r in top.indices.numpy()],
                              "scores": top.values.numpy().tolist(), "model_version": art.model_version})
        write_recommendations([lists], run_dir, id_type="int", rows_per_file=len(lists), manifest_fields={})
        m = evaluate_run(str(run_dir), truth, ks=[K], name=name).metrics()
        print(f"{name:<30} NDCG@10 {m['ndcg@10']:.4f}  Recall@10 {m['recall@10']:.4f}  "
              f"cold Recall@10 {m.get('cold/recall@10', 0.0):.4f}  ({run_dir})", flush=True)
    days = last_event_age.numpy()
    print(f"users' last-event age, days: median {np.median(days):.0f}, quartiles {np.percentile(days, 25):.0f} / "
          f"{np.percentile(days, 75):.0f}")


if __name__ == "__main__":
    main()
