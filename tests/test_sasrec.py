"""SASRec, the sequential baseline: it must learn what only order reveals."""

from __future__ import annotations

import numpy as np
import pytest

from eval_helpers import write_snapshot
from recbatch.config import Config
from recbatch.data.snapshot import Snapshot
from recbatch.eval.baselines import run_baseline
from recbatch.eval.metrics import evaluate_run

ITEMS = 80


@pytest.fixture(scope="module")
def walks(tmp_path_factory):
    """Each user walks the item ring one step at a time from a random start (a few random
    detours): the next item follows from the last one, and every item is equally popular."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(160):
        item, walk = int(rng.integers(ITEMS)), []
        while len(walk) < 12:
            item = (item + 1) % ITEMS if rng.random() > 0.1 else int(rng.integers(ITEMS))
            if item not in walk:
                walk.append(item)
        rows += [(u, i, "train") for i in walk[:10]] + [(u, walk[10], "validation"), (u, walk[11], "test")]
    items = [{"item_id": i, "title": f"item {i}", "is_cold": False, "available": True} for i in range(ITEMS)]
    return Snapshot.open(write_snapshot(tmp_path_factory.mktemp("walks") / "snap", rows, items))


def test_sasrec_learns_the_order_popularity_cannot_see(walks, tmp_path):
    cfg = Config().with_overrides({"score.k": 10})
    ndcg, manifests = {}, {}
    for name in ("most_popular", "sasrec"):
        manifests[name] = run_baseline(name, walks, cfg, tmp_path / name)
        ndcg[name] = evaluate_run(tmp_path / name, walks, ks=[10]).metrics()["ndcg@10"]
        assert manifests[name]["users"] == 160
    # Popularity is flat here (chance level); the next step of a walk is one item.
    assert ndcg["sasrec"] > 0.6 > 3 * ndcg["most_popular"], ndcg  # measured: 0.93 vs 0.08

    # The learning rate is picked on the validation split, not on test.
    trials = manifests["sasrec"]["baseline"]["validation"]
    assert [t["params"] for t in trials] == [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]
    assert manifests["sasrec"]["baseline"]["params"] == max(trials, key=lambda t: t["ndcg@10"])["params"]
