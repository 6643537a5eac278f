"""The model API without Ray: encoder resolution, features, towers, the inference artifact."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest
import torch

from recbatch.config import load_config
from recbatch.errors import IntegrityError, UsageError
from recbatch.model.artifact import init_artifact, load_artifact, save_artifact
from recbatch.model.encoder import resolve_encoder
from recbatch.model.features import (
    UserFeatureSpec,
    item_input_hash,
    render_item_text,
    user_histories,
    user_input_hash,
)
from recbatch.model.two_tower import TwoTowerConfig, build_two_tower


@pytest.fixture(scope="module")
def small_snapshot(tmp_path_factory):
    """A generated catalog, ingested into a real snapshot (no Ray involved)."""
    from recbatch.data.generate import generate_demo
    from recbatch.data.ingest import ingest

    base = tmp_path_factory.mktemp("model_snapshot")
    cfg = load_config(
        None,
        {"root": str(base / "root"), "ingest.source": str(base / "source"),
         "generate.users": 60, "generate.items": 40, "generate.interactions_per_user": 10},
    )
    generate_demo(cfg.generate, cfg.ingest.source)
    return ingest(cfg)


def _config(tiny_bert_dir, **overrides):
    base = {"model.encoder": str(tiny_bert_dir), "model.embedding_dim": 16, "model.history_length": 4,
            "model.user_layers": 1, "model.max_text_tokens": 16}
    base.update(overrides)
    return load_config(None, base)


# --------------------------------------------------------------------------- encoder


def test_resolve_encoder_packaged_local_and_missing(tiny_bert_dir, tmp_path):
    assert (resolve_encoder("minilm") + "/config.json").endswith("config.json")
    assert resolve_encoder(str(tiny_bert_dir)) == str(tiny_bert_dir)
    assert resolve_encoder("bert-base-uncased") == "bert-base-uncased"  # a hub id, read from the local cache
    with pytest.raises(UsageError, match="does not exist"):
        resolve_encoder(str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="config.json"):
        resolve_encoder(str(tmp_path))


# --------------------------------------------------------------------------- features


def test_render_item_text_fixed_order_and_empty_parts_dropped():
    items = pl.DataFrame(
        {
            "item_id": [1, 2],
            "description": ["A heist.", ""],
            "tags": [None, "cult"],
            "title": ["Heat", "Brazil"],
            "genres": ["Action|Crime", None],
        }
    )
    assert render_item_text(items).to_list() == [
        "Heat | genres: Action, Crime | A heist.",
        "Brazil | tags: cult",
    ]


def test_item_input_hash_tracks_text_and_id_only():
    a = pl.DataFrame({"item_id": [1, 2], "title": ["Heat", "Heat"], "popularity": [5, 9]})
    h = item_input_hash(a).to_list()
    assert h[0] != h[1]  # same text, different id: the id vector differs
    assert item_input_hash(a.with_columns(popularity=pl.lit(0))).to_list() == h  # not an input
    assert item_input_hash(a.with_columns(title=pl.lit("Heat 2"))).to_list()[0] != h[0]


def test_user_histories_most_recent_last_and_truncated():
    ts = [dt.datetime(2024, 1, d, tzinfo=dt.timezone.utc) for d in (3, 1, 2, 5, 4)]
    inter = pl.LazyFrame({"user_id": [1, 1, 1, 2, 2], "item_id": [30, 10, 20, 50, 40], "ts": ts})
    got = user_histories(inter, history_length=2).collect().sort("user_id")
    assert got["history"].to_list() == [[20, 30], [40, 50]]


def test_user_input_hash_follows_history_items_and_features():
    hist = pl.DataFrame({"user_id": [1, 2], "history": [[10, 20], [10, 20]], "country": ["DE", "FR"]})
    items = pl.DataFrame({"item_id": [10, 20], "input_hash": ["a", "b"]})
    base = user_input_hash(hist, items, ["country"]).to_list()
    assert base[0] != base[1]  # features differ
    assert user_input_hash(hist, items).to_list()[0] == user_input_hash(hist, items).to_list()[1]
    edited = items.with_columns(input_hash=pl.Series(["a", "b2"]))
    assert user_input_hash(hist, edited, ["country"]).to_list()[0] != base[0]  # an edited item invalidates


def test_user_feature_spec_hashes_categoricals_and_standardises_numerics():
    users = pl.DataFrame({"user_id": [1, 2, 3], "country": ["DE", None, "DE"], "activity": [1.0, 3.0, None]})
    spec = UserFeatureSpec.from_users(users)
    assert spec.categorical == ["country"] and spec.numeric == ["activity"]
    cat, num = spec.encode(users, 3)
    assert cat[0, 0] == cat[2, 0] != 0 and cat[1, 0] == 0  # null -> bucket 0
    assert num[:, 0].tolist() == pytest.approx([-0.7071, 0.7071, 0.0], abs=1e-3)
    cat_none, num_none = spec.encode(None, 2)
    assert cat_none.shape == (2, 1) and not num_none.any()


# --------------------------------------------------------------------------- towers


def test_user_tower_padding_side_and_empty_history(tiny_bert_dir):
    torch.manual_seed(0)
    model, _ = build_two_tower(str(tiny_bert_dir), TwoTowerConfig(embedding_dim=16, history_length=4, user_heads=4))
    model.eval()
    items = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    none = torch.zeros(1, 0)
    right = torch.zeros(1, 4, 16)
    right[0, 2:] = items  # oldest first, left padding
    left = torch.zeros(1, 4, 16)
    left[0, :2] = items  # right padding
    kwargs = dict(user_categorical=none.long(), user_numeric=none)
    with torch.no_grad():
        a = model("users", history=right, history_mask=torch.tensor([[False, False, True, True]]), **kwargs)
        b = model("users", history=left, history_mask=torch.tensor([[True, True, False, False]]), **kwargs)
        empty = model("users", history=torch.zeros(1, 4, 16), history_mask=torch.zeros(1, 4, dtype=torch.bool), **kwargs)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.isfinite(empty).all() and torch.allclose(empty.norm(dim=-1), torch.ones(1))


def test_embedding_dim_must_split_into_heads():
    with pytest.raises(UsageError, match="divisible"):
        TwoTowerConfig(embedding_dim=10, user_heads=4)


# --------------------------------------------------------------------------- artifact


def test_init_artifact_round_trip(tiny_bert_dir, small_snapshot, tmp_path):
    cfg = _config(tiny_bert_dir)
    path = init_artifact(cfg, str(tiny_bert_dir), small_snapshot, tmp_path / "models")
    art = load_artifact(path)
    assert path.name == art.model_version and art.embedding_dim == 16
    assert art.card["snapshot_hash"] == small_snapshot.hash and art.card["trained"] is False
    assert art.user_features.columns == ["country", "age_band", "activity"]
    items = small_snapshot.items().collect().head(5)
    vectors = art.encode_items(render_item_text(items).to_list(), items["item_id"].to_list())
    assert vectors.shape == (5, 16) and torch.allclose(vectors.norm(dim=-1), torch.ones(5), atol=1e-5)
    users = small_snapshot.users().collect().head(3)
    u = art.encode_users(vectors[:4].expand(3, 4, 16), torch.ones(3, 4, dtype=torch.bool), users)
    assert u.shape == (3, 16)
    assert not torch.allclose(u[0], u[1])  # different features, same history
    # same seed, same inputs -> same weights -> same version (published in place)
    assert init_artifact(cfg, str(tiny_bert_dir), small_snapshot, tmp_path / "models") == path


def test_warm_ids_get_their_vector_and_cold_ids_text_only(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = build_two_tower(str(tiny_bert_dir), TwoTowerConfig(embedding_dim=16, num_item_ids=2))
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1:] = torch.randn(2, 16)
    path = save_artifact(model, tokenizer, tmp_path, item_ids=[7, 9], user_features=UserFeatureSpec(), max_text_tokens=16)
    art = load_artifact(path)
    texts = ["same words"] * 3
    warm7, warm9, cold = art.encode_items(texts, [7, 9, 12345])
    assert not torch.allclose(warm7, warm9)
    text_only = torch.nn.functional.normalize(
        model.item_tower.projection(model.item_tower.pooled(**_tokens(tokenizer, texts[:1]))), dim=-1
    )
    assert torch.allclose(cold, text_only[0].detach(), atol=1e-5)
    assert json.loads((path / "model_card.json").read_text())["model"]["num_item_ids"] == 2


def _tokens(tokenizer, texts):
    t = tokenizer(texts, max_length=16, padding=True, truncation=True, return_tensors="pt")
    return {"input_ids": t["input_ids"], "attention_mask": t["attention_mask"]}


def test_model_version_changes_with_weights_and_tampering_is_detected(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = build_two_tower(str(tiny_bert_dir), TwoTowerConfig(embedding_dim=16))
    kwargs = dict(item_ids=[], user_features=UserFeatureSpec(), max_text_tokens=16)
    first = save_artifact(model, tokenizer, tmp_path, **kwargs)
    with torch.no_grad():
        model.user_tower.projection.bias += 0.01
    second = save_artifact(model, tokenizer, tmp_path, **kwargs)
    assert first.name != second.name
    (second / "towers.pt").write_bytes(b"truncated")
    with pytest.raises(IntegrityError):
        load_artifact(second)


def test_half_precision_inference_matches_fp32_closely(tiny_bert_dir, tmp_path):
    torch.manual_seed(0)
    model, tokenizer = build_two_tower(str(tiny_bert_dir), TwoTowerConfig(embedding_dim=16))
    path = save_artifact(model, tokenizer, tmp_path, item_ids=[], user_features=UserFeatureSpec(), max_text_tokens=16)
    texts = ["a quiet drama", "space opera lasers"]
    full = load_artifact(path).encode_items(texts, [1, 2])
    half = load_artifact(path, precision="bf16").encode_items(texts, [1, 2])
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, atol=0.05)


def test_training_pair_from_cached_pooled_equals_the_bert_pass_and_id_dropout_only_trains(tiny_bert_dir):
    """A frozen encoder's cache gives the same positives as running BERT; id dropout sends
    candidates down the cold (id 0) path in training only."""
    torch.manual_seed(0)
    model, tokenizer = build_two_tower(str(tiny_bert_dir), TwoTowerConfig(embedding_dim=16, num_item_ids=50))
    with torch.no_grad():
        model.item_tower.id_embedding.weight[1:] = torch.randn(50, 16)
    model.eval()
    tokens = _tokens(tokenizer, ["alpha beta", "gamma", "delta epsilon zeta"])
    ids = torch.tensor([3, 0, 7])
    common = {
        "id_index": ids,
        "history_pooled": torch.randn(3, 4, model.config.encoder_hidden),
        "history_id_index": torch.tensor([[1, 2, 0, 0]] * 3),
        "history_mask": torch.tensor([[True, True, False, False]] * 3),
        "user_categorical": torch.zeros(3, 0, dtype=torch.long),
        "user_numeric": torch.zeros(3, 0),
    }
    with torch.no_grad():
        users_a, items_a = model("train", **common, **tokens)
        pooled = model("pooled", **tokens)
        users_b, items_b = model("train", **common, positive_pooled=pooled)
    assert torch.allclose(users_a, users_b) and torch.allclose(items_a, items_b, atol=1e-6)
    with pytest.raises(ValueError, match="positive_pooled"):
        model("train", **common)

    model.config.id_dropout = 0.5
    many = torch.arange(1, 51).repeat(40)  # [2000] warm ids
    assert torch.equal(model._drop_ids(many), many)  # eval: never dropped
    model.train()
    dropped = (model._drop_ids(many) == 0).float().mean().item()
    assert 0.4 < dropped < 0.6
    model.config.id_dropout = 0.0
    assert torch.equal(model._drop_ids(many), many)


def test_history_dropout_hides_whole_histories_in_training_only(tiny_bert_dir):
    torch.manual_seed(0)
    model, _ = build_two_tower(str(tiny_bert_dir), TwoTowerConfig(embedding_dim=16, history_dropout=0.25))
    mask = torch.ones(4000, 6, dtype=torch.bool)
    mask[:, :2] = False  # left padding stays padding
    model.eval()
    assert torch.equal(model._drop_histories(mask), mask)
    model.train()
    dropped = model._drop_histories(mask)
    emptied = ~dropped.any(1)  # [B]: users left with no history at all
    assert 0.2 < emptied.float().mean().item() < 0.3
    assert torch.equal(dropped[~emptied], mask[~emptied])  # the others keep every item


def test_example_age_picks_a_bucket_vector_and_scoring_reads_the_newest(tiny_bert_dir):
    torch.manual_seed(0)
    cfg = TwoTowerConfig(embedding_dim=16, history_length=4, user_heads=4, example_age_days=[30.0, 365.0])
    model, _ = build_two_tower(str(tiny_bert_dir), cfg)
    model.eval()
    with torch.no_grad():
        model.user_tower.age.weight.copy_(torch.randn(3, 16))  # buckets: [0, 30), [30, 365), >= 365 days
    B = 4
    inputs = dict(history=torch.randn(B, 4, 16), history_mask=torch.ones(B, 4, dtype=torch.bool),
                  user_categorical=torch.zeros(B, 0, dtype=torch.long), user_numeric=torch.zeros(B, 0))
    inputs["history"][1:] = inputs["history"][0]  # one user, seen at four ages
    with torch.no_grad():
        aged = model("users", **inputs, example_age_days=torch.tensor([0.0, 29.9, 30.0, 4000.0]))
        now = model("users", **inputs)  # what the embed stage asks for
    assert torch.allclose(aged[0], aged[1]) and torch.allclose(now[0], aged[0])  # same bucket, and None = age 0
    assert not torch.allclose(aged[1], aged[2], atol=1e-3)  # the 30-day edge starts the next bucket
    assert not torch.allclose(aged[2], aged[3], atol=1e-3)
    half = model.user_tower.to(torch.bfloat16)  # what a bf16 engine does: the edges buffer is cast too
    assert half.age_edges.dtype == torch.bfloat16
    with torch.no_grad():
        buckets_kept = half(**{**inputs, "history": inputs["history"].bfloat16()},
                            example_age_days=torch.tensor([0.0, 29.9, 30.0, 4000.0]))
    assert torch.allclose(buckets_kept[0], buckets_kept[1]) and not torch.allclose(buckets_kept[1], buckets_kept[2])


def test_example_age_edges_must_increase():
    with pytest.raises(UsageError, match="example_age_days"):
        load_config(None, {"model.example_age_days": [365, 30]})
    with pytest.raises(UsageError, match="example_age_days"):
        load_config(None, {"model.example_age_days": [0, 30]})
    assert load_config(None, {"model.example_age_days": [30, 365]}).model.example_age_days == [30.0, 365.0]


def test_training_examples_carry_their_age_in_days(ray_local, small_snapshot, tmp_path):
    from recbatch.train.examples import prepare_inputs

    prepared = prepare_inputs(small_snapshot, tmp_path, history_length=4, use_item_ids=True, validate_users=10)
    ages = pl.read_parquet(prepared.examples.path)["age_days"]
    train_ts = small_snapshot.split("train").collect()["ts"]
    expected = sorted((train_ts.max() - t).total_seconds() / 86400 for t in train_ts.to_list())
    assert ages.len() == len(expected) and min(expected) == 0.0 and max(expected) > 1.0
    assert ages.sort().to_list() == pytest.approx(expected, rel=1e-6, abs=1e-3)


def test_a_training_step_feeds_each_example_its_age(tiny_bert_dir):
    """Ray Data batch (numpy columns) -> step tensors -> loss: only the age buckets present get gradient."""
    import numpy as np

    from recbatch.train.examples import CatalogTensors
    from recbatch.train.loop import LoopConfig, batch_tensors, step_loss

    torch.manual_seed(0)
    cfg = TwoTowerConfig(embedding_dim=16, history_length=3, user_heads=4, num_item_ids=6,
                         example_age_days=[30.0, 365.0, 3650.0])
    model, _ = build_two_tower(str(tiny_bert_dir), cfg, freeze_encoder=True)
    M, H = 6, cfg.encoder_hidden
    catalog = CatalogTensors(
        input_ids=torch.zeros(M, 4, dtype=torch.long), attention_mask=torch.ones(M, 4, dtype=torch.long),
        id_index=torch.arange(1, M + 1), probability=torch.full((M,), 1 / M, dtype=torch.float64),
    )
    batch = {  # what ray.data's iter_batches hands a worker: object arrays for list columns
        "target": np.array([0, 1, 2, 3]),
        "history": np.array([np.array([-1, 4, 5]), np.array([-1, -1, 5]), np.array([4, 5, 0]), np.array([-1, -1, -1])],
                            dtype=object),
        "user_cat": np.array([np.zeros(0)] * 4, dtype=object),
        "user_num": np.array([np.zeros(0)] * 4, dtype=object),
        "age_days": np.array([0.5, 10.0, 400.0, 500.0], dtype=np.float32),  # buckets 0, 0, 2, 2
    }
    t = batch_tensors(batch, torch.device("cpu"))
    loop = LoopConfig(encoder_dir="", tower={}, train={}, user_features={}, loss="softmax", temperature=0.1,
                      logq_correction=True, extra_negatives=0, freeze_encoder=True, max_text_tokens=4,
                      catalog_path="", validation_path="", total_steps=1)
    loss = step_loss(model, t, torch.randn(M, H), catalog, loop, torch.Generator().manual_seed(0))
    loss.backward()
    touched = model.user_tower.age.weight.grad.abs().sum(dim=1)  # [4] buckets
    assert touched[0] > 0 and touched[2] > 0
    assert touched[1] == 0 and touched[3] == 0  # no example was 30-365 days or 10+ years old
