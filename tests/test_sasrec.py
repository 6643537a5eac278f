"""SASRec, the sequential baseline: it must learn what only order reveals."""

from __future__ import annotations

import math

import pytest
import torch

from eval_helpers import ring_walks_snapshot
from recbatch.config import Config
from recbatch.data.snapshot import Snapshot
from recbatch.eval.baselines import run_baseline, training_data
from recbatch.eval.metrics import evaluate_run
from recbatch.eval.sasrec import SASRec, SASRecConfig, fit_sasrec, left_padded

ITEMS = 80


@pytest.fixture(scope="module")
def walks(tmp_path_factory):
    """The ring walks (eval_helpers.ring_walks_snapshot): the next item follows from the last one."""
    return Snapshot.open(ring_walks_snapshot(tmp_path_factory.mktemp("walks") / "snap", ITEMS))


def test_sasrec_learns_the_order_popularity_cannot_see(walks, tmp_path):
    cfg = Config().with_overrides({"score.k": 10})
    ndcg, manifests = {}, {}
    for name in ("most_popular", "sasrec"):
        manifests[name] = run_baseline(name, walks, cfg, tmp_path / name)
        ndcg[name] = evaluate_run(tmp_path / name, walks, ks=[10]).metrics()["ndcg@10"]
        assert manifests[name]["users"] == 160
    # Popularity is flat here (chance level); the next step of a walk is one item.
    assert ndcg["sasrec"] > 0.6 > 3 * ndcg["most_popular"], ndcg  # measured: 0.93 vs 0.08

    # The learning rate is picked on the validation split, not on test; the refit on
    # train + validation trains at most as many epochs as that fit's early stopping chose.
    trials = manifests["sasrec"]["baseline"]["validation"]
    assert [t["params"] for t in trials] == [{"learning_rate": 1e-3}, {"learning_rate": 3e-3}]
    best = max(trials, key=lambda t: t["ndcg@10"])
    assert 1 <= best["refit"]["max_epochs"] < SASRecConfig().max_epochs, best  # it stopped early
    assert manifests["sasrec"]["baseline"]["params"] == {**best["params"], **best["refit"]}


def test_early_stopping_keeps_the_best_epoch_and_waits_patience_epochs(walks):
    sequences = training_data(walks, ["train"]).sequences
    # A learning rate of 0: every check scores as the first, so the first epoch stays the best.
    _, frozen = fit_sasrec(sequences, ITEMS, SASRecConfig(learning_rate=0.0, patience=3, max_epochs=50))
    assert (frozen.best_epochs, frozen.epochs_run) == (1, 4)
    # A model still improving runs to max_epochs, which is how a refit is capped.
    _, capped = fit_sasrec(sequences, ITEMS, SASRecConfig(learning_rate=3e-3, max_epochs=3))
    assert capped.epochs_run == 3 and 1 <= capped.best_epochs <= 3



def test_a_fresh_model_starts_near_a_uniform_guess(walks):
    """Glorot-initialised tables, as the paper's code: with torch's N(0, 1) default the first
    loss here was ~57 nats above ln(catalog), and on ml-latest-small the first epochs went
    to unlearning that."""
    sequences = training_data(walks, ["train"]).sequences
    torch.manual_seed(0)
    model = SASRec(ITEMS, SASRecConfig()).eval()
    with torch.no_grad():
        last = model(left_padded([s[:-1] for s in sequences], 9))[:, -1]  # [U, H]
        targets = torch.tensor([int(s[-1]) for s in sequences])  # [U]
        loss = torch.nn.functional.cross_entropy(last @ model.item_vectors().T, targets)
    assert loss.item() < 2 * math.log(ITEMS), loss.item()  # measured 6.7 (ln 80 = 4.4); N(0, 1): 61
