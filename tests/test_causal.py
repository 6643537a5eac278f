"""The causal objective (train.objective: causal): a causal user tower, windows with shifted
targets, and a training that learns from order what popularity cannot."""

from __future__ import annotations

import polars as pl
import pytest
import torch

from eval_helpers import ring_walks_snapshot
from recbatch.config import Config, load_config
from recbatch.data.snapshot import Snapshot
from recbatch.errors import UsageError
from recbatch.model.two_tower import TwoTowerConfig, UserTower
from recbatch.train.examples import PAD, causal_windows


def _tower(causal: bool) -> UserTower:
    torch.manual_seed(0)
    tower = UserTower(TwoTowerConfig(embedding_dim=16, history_length=6, user_layers=2, user_heads=2, causal=causal))
    return tower.eval()


def _no_features(batch: int) -> dict[str, torch.Tensor]:
    return {"user_categorical": torch.zeros(batch, 0, dtype=torch.long), "user_numeric": torch.zeros(batch, 0)}


def test_a_causal_position_sees_only_the_items_before_it():
    tower = _tower(causal=True)
    history = torch.randn(2, 6, 16)  # [B, L, D]
    mask = torch.tensor([[True] * 6, [False, False, True, True, True, True]])  # row 1 left-padded
    with torch.no_grad():
        before = tower.sequence(history, mask, **_no_features(2))  # [B, 1+L, D]
        changed = history.clone()
        changed[:, 3] = torch.randn(2, 16)  # history item 3 sits at sequence index 4
        after = tower.sequence(changed, mask, **_no_features(2))
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)  # [USER] and the items before it
    assert (before[:, 4:] - after[:, 4:]).abs().amax(dim=-1).min() > 1e-4  # that item and every later one


def test_the_served_vector_is_the_output_at_the_last_position():
    """`forward` (what encode_users, the embedding stage and the holdout evaluation call) reads the
    causal outputs at the user's last item, whichever side the padding is on."""
    tower = _tower(causal=True)
    items = torch.randn(1, 4, 16)  # one user with 4 items
    left = torch.cat([torch.zeros(1, 2, 16), items], dim=1)  # [1, 6, D]
    right = torch.cat([items, torch.zeros(1, 2, 16)], dim=1)
    left_mask = torch.tensor([[False, False, True, True, True, True]])
    with torch.no_grad():
        outputs = tower.sequence(left, left_mask, **_no_features(1))  # [1, 7, D]
        served_left = tower(left, left_mask, **_no_features(1))  # [1, D]
        served_right = tower(right, left_mask.flip(1), **_no_features(1))
        newcomer = tower(torch.zeros(1, 6, 16), torch.zeros(1, 6, dtype=torch.bool), **_no_features(1))
        user_alone = tower.sequence(torch.zeros(1, 6, 16), torch.zeros(1, 6, dtype=torch.bool), **_no_features(1))
    assert torch.allclose(served_left, outputs[:, -1], atol=1e-6)
    assert torch.allclose(served_right, served_left, atol=1e-5)
    assert torch.allclose(newcomer, user_alone[:, 0], atol=1e-6)  # no history: the [USER] position


def test_windows_shift_each_users_items_into_next_item_targets():
    L = 3
    rows = list(range(10, 19))  # user 1: 9 items -> windows [10] | [11..14] | [15..18], newest full
    train = pl.DataFrame({"user_id": [1] * 9 + [2] * 2, "row": rows + [5, 6]}).lazy()
    got = {(r["user_id"], r["first"]): (r["history"], r["next"]) for r in causal_windows(train, L).collect().to_dicts()}
    assert got == {
        (1, 10): ([PAD, PAD, PAD], [PAD, PAD, PAD]),
        (1, 11): ([11, 12, 13], [12, 13, 14]),
        (1, 15): ([15, 16, 17], [16, 17, 18]),
        (2, 5): ([PAD, PAD, 5], [PAD, PAD, 6]),
    }
    targets = sorted([first for _, first in got] + [t for _, nxt in got.values() for t in nxt if t != PAD])
    assert targets == sorted(rows + [5, 6])  # every interaction is a target exactly once


def test_the_causal_objective_refuses_what_it_cannot_train():
    base = {"train.objective": "causal", "model.freeze_encoder": True}
    assert load_config(None, base).train.objective == "causal"
    for key, value in (("model.freeze_encoder", False), ("model.example_age_days", [30]),
                       ("model.history_dropout", 0.1)):
        with pytest.raises(UsageError, match=key.replace(".", r"\.")):
            load_config(None, {**base, key: value})


@pytest.mark.ray
@pytest.mark.parametrize("full_softmax", [True, False], ids=["full-softmax", "sampled-logq"])
def test_causal_training_learns_the_order_popularity_cannot_see(ray_local, tiny_bert_dir, tmp_path, full_softmax):
    from recbatch.model.artifact import tower_config
    from recbatch.train.examples import load_catalog, load_validation, prepare_inputs
    from recbatch.train.plain import train_plain
    from recbatch.train.trainer import make_loop_config
    from recbatch.train.validation import full_ranking_metrics, item_vectors, pooled_catalog

    walks = Snapshot.open(ring_walks_snapshot(tmp_path / "walks"))
    cfg = Config().with_overrides({
        "train.objective": "causal", "model.freeze_encoder": True, "model.encoder": str(tiny_bert_dir),
        "model.full_softmax_items": 1000 if full_softmax else 0,
        "model.embedding_dim": 32, "model.user_heads": 2, "model.user_layers": 1, "model.history_length": 10,
        "model.max_text_tokens": 8, "train.batch_size": 16, "train.learning_rate": 3e-3,
    })
    prepared = prepare_inputs(walks, tmp_path / "inputs", history_length=10, use_item_ids=True,
                              validate_users=160, objective="causal")
    assert prepared.num_examples == 160  # 10 train items per user: one window each
    loop = make_loop_config(cfg, str(tiny_bert_dir), tower_config(cfg, prepared.user_features, 80), prepared, 300)
    assert loop.full_softmax is full_softmax
    run = train_plain(cfg, loop, prepared, steps=300)

    model = run.model.eval()
    catalog = load_catalog(prepared.catalog, model_tokenizer(tiny_bert_dir), 8)
    validation = load_validation(prepared.validation, 10, prepared.user_features)
    items = item_vectors(model, pooled_catalog(model, catalog, torch.arange(catalog.size), torch.device("cpu")),
                         catalog)
    learned = full_ranking_metrics(model, items, validation, k=10)["ndcg@10"]
    popular = full_ranking_metrics(  # every user gets the same vector: a popularity ranking
        lambda kind, **inputs: catalog.probability.float().unsqueeze(0).expand(inputs["history"].shape[0], -1),
        torch.eye(catalog.size), validation, k=10,
    )["ndcg@10"]
    # Popularity is flat here (chance level); the next step of a walk is one item.
    assert learned > 0.5 > 3 * popular, (learned, popular)  # measured: 0.92 (both softmaxes) vs 0.08


def model_tokenizer(encoder_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(encoder_dir))
