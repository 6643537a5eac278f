"""Distributed training end to end: Ray Train + DeepSpeed on 2 CPU workers, tiny BERT.

Two Ray Train runs in the whole file (each costs a worker-group start and a
DeepSpeed initialisation), so each run checks several things:

1. ZeRO-2 with a worker killed once mid-training: the run restarts from its
   checkpoint, finishes, exports an artifact that loads and scores, and that
   artifact beats random widely and popularity on held-out test interactions.
2. ZeRO-3: the checkpoint holds every rank's shards, the exported artifact
   reproduces the engine's validation scores exactly, and ``resume=True``
   continues the stopped run (here: already at its last step) to the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from recbatch.config import ConfigError, TrainConfig, config_from_dict, load_config
from recbatch.errors import UsageError
from recbatch.model.artifact import load_artifact
from recbatch.model.features import render_item_text, user_histories
from recbatch.testing import FAIL_AT_STEP
from recbatch.train.deepspeed_config import build_deepspeed_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "cluster" / "presets").glob("*.yaml"))


# --------------------------------------------------------------------------- pure: configs


def test_deepspeed_config_follows_train_section():
    t = TrainConfig(zero_stage=3, offload_optimizer=True, batch_size=16, gradient_accumulation_steps=4,
                    gradient_clipping=0.5, warmup_fraction=0.1, precision="auto")
    gpu = build_deepspeed_config(t, on_gpu=True, world_size=8, total_steps=1000, group_learning_rates=[1e-5, 1e-3])
    assert gpu["train_batch_size"] == 16 * 4 * 8
    assert gpu["zero_optimization"]["stage"] == 3
    assert gpu["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert gpu["fp16"]["enabled"] and gpu["fp16"]["loss_scale"] == 0 and not gpu["bf16"]["enabled"]
    sched = gpu["scheduler"]["params"]
    assert sched["warmup_num_steps"] == 100 and sched["total_num_steps"] == 1000
    assert sched["warmup_max_lr"] == [1e-5, 1e-3]
    assert "optimizer" not in gpu  # a torch AdamW is passed in (no fused_adam JIT build)
    cpu = build_deepspeed_config(t, on_gpu=False, world_size=2, total_steps=10)
    assert not cpu["fp16"]["enabled"] and not cpu["bf16"]["enabled"]  # fp32 on CPU
    bf16 = build_deepspeed_config(TrainConfig(precision="bf16"), on_gpu=True, world_size=1, total_steps=10)
    assert bf16["bf16"]["enabled"] and not bf16["fp16"]["enabled"]


def test_no_warmup_is_a_schedule_deepspeed_accepts():
    """train.warmup_fraction 0 passes config checks, so DeepSpeed's scheduler must take what it builds."""
    from deepspeed.runtime.lr_schedules import WarmupDecayLR

    params = build_deepspeed_config(TrainConfig(warmup_fraction=0.0), on_gpu=False, world_size=1,
                                    total_steps=10)["scheduler"]["params"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    WarmupDecayLR(optimizer, **{k: (v[0] if isinstance(v, list) else v) for k, v in params.items()})


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_gpu_presets_validate_and_build_a_deepspeed_config(preset):
    cfg = load_config(preset)
    assert cfg.train.use_gpu == "true"
    ds = build_deepspeed_config(cfg.train, on_gpu=True, world_size=cfg.train.num_workers, total_steps=1000)
    assert ds["train_batch_size"] == cfg.train.batch_size * cfg.train.gradient_accumulation_steps * cfg.train.num_workers
    assert ds["fp16"]["enabled"] or ds["bf16"]["enabled"]


def test_presets_exist():
    names = {p.name for p in PRESETS}
    assert "gpu-bert-large-zero3.yaml" in names


# --------------------------------------------------------------------------- data for the Ray runs


@pytest.fixture(scope="module")
def demo_snapshot(tmp_path_factory, tiny_bert_dir):
    """Generated data where item text carries the taste signal, ingested into a partitioned snapshot."""
    from recbatch.data.generate import generate_demo
    from recbatch.data.ingest import ingest

    base = tmp_path_factory.mktemp("train")
    cfg = load_config(None, {
        "root": str(base / "root"), "ingest.source": str(base / "source"),
        "generate.users": 400, "generate.items": 150, "generate.interactions_per_user": 16,
        "ingest.users_per_partition": 128,  # 4 partitions: the workers stream several examples parts
        # an offline comparison: every user with 10+ events holds out their last 5 (the margins
        # below were measured so); the default window would hold out a few sparse users
        "split.protocol": "leave_last_n",
    })
    generate_demo(cfg.generate, cfg.ingest.source)
    return base / "root", ingest(cfg)


def _train_config(root: Path, tiny_bert_dir: Path, **overrides):
    base = {
        "root": str(root),
        "model.encoder": str(tiny_bert_dir),
        "model.embedding_dim": 32,
        "model.history_length": 8,
        "model.max_text_tokens": 32,
        "model.user_layers": 1,
        "model.temperature": 0.1,
        "train.num_workers": 2,
        "train.batch_size": 32,
        "train.learning_rate": 3e-3,
        "train.encoder_learning_rate": 1e-3,
        "train.validate_users": 400,
        "ray.num_cpus": 4,
    }
    base.update(overrides)
    return load_config(None, base)


def _heldout_recall(artifact_dir: Path, snapshot, k: int = 10) -> dict[str, float]:
    """Recall@k on the test split, ranking all items, for the artifact, popularity and random."""
    art = load_artifact(artifact_dir)
    items = snapshot.items().collect().sort("item_id")
    ids = items["item_id"].to_list()
    row = {item: r for r, item in enumerate(ids)}
    V = art.encode_items(render_item_text(items).to_list(), ids)  # [M, D]
    known = snapshot.split().filter(pl.col("split") != "test")
    frame = (
        snapshot.split("test").group_by("user_id").agg(targets=pl.col("item_id").unique())
        .join(user_histories(known, art.history_length), on="user_id", how="left")
        .join(known.group_by("user_id").agg(seen=pl.col("item_id")), on="user_id", how="left")
        .join(snapshot.users(), on="user_id", how="left")
        .sort("user_id")
        .collect()
    )
    L = art.history_length
    H, M = torch.zeros(frame.height, L, V.shape[1]), torch.zeros(frame.height, L, dtype=torch.bool)
    for u, history in enumerate(frame["history"].to_list()):
        rows = [row[i] for i in (history or [])][-L:]
        if rows:
            H[u, L - len(rows):] = V[rows]
            M[u, L - len(rows):] = True
    scores = {
        "model": art.encode_users(H, M, frame.select(art.user_features.columns)) @ V.T,
        "popularity": torch.zeros(len(ids)).index_add_(
            0, torch.tensor([row[i] for i in snapshot.split("train").collect()["item_id"].to_list()]),
            torch.ones(snapshot.counts["train"]),
        ).expand(frame.height, -1).clone(),
        "random": torch.rand(frame.height, len(ids), generator=torch.Generator().manual_seed(0)),
    }
    out = {}
    for name, s in scores.items():
        for u, seen in enumerate(frame["seen"].to_list()):
            s[u, [row[i] for i in (seen or [])]] = -float("inf")
        top = s.topk(k, dim=1).indices.tolist()
        recall = [len({row[i] for i in t} & set(top[u])) / min(len(t), k) for u, t in enumerate(frame["targets"].to_list())]
        out[name] = sum(recall) / len(recall)
    return out


def test_cli_train_without_a_snapshot_is_a_usage_error(tmp_path, capsys):
    from recbatch.cli import main

    assert main(["train", "--root", str(tmp_path), "--workers", "2", "--zero-stage", "3"]) == 2
    assert "no snapshot" in capsys.readouterr().err


# --------------------------------------------------------------------------- Ray runs


def test_fault_injection_must_leave_a_checkpoint_to_resume_from(demo_snapshot, tiny_bert_dir, monkeypatch):
    from recbatch.train.trainer import train

    root, snapshot = demo_snapshot
    monkeypatch.setenv(FAIL_AT_STEP, "5")
    cfg = _train_config(root, tiny_bert_dir, **{"train.checkpoint_every_steps": 10})
    with pytest.raises(UsageError, match=FAIL_AT_STEP):
        train(cfg, snapshot)


def test_loop_pieces_record_the_loss_curve_and_start_fresh_without_a_checkpoint():
    from recbatch.train.loop import TrainState, record_loss, restore

    state, window = TrainState(step=10), [1.0, 3.0]
    record_loss(state, window, lr=0.5, samples=64, seconds=2.0)
    assert state.loss_curve == [{"step": 10, "loss": 2.0, "lr": 0.5, "samples_per_s": 32.0}] and window == []
    assert restore(engine=None, checkpoint=None, rank=0) == (TrainState(), False)


def test_the_fault_hook_is_not_a_config_key(tmp_path):
    with pytest.raises(ConfigError, match="fail_at_step"):
        config_from_dict({"root": str(tmp_path), "train": {"fail_at_step": 5}})


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero2_two_workers_survive_a_killed_worker_and_beat_popularity(ray_local, demo_snapshot, tiny_bert_dir,
                                                                     monkeypatch):
    from recbatch.train.trainer import train

    root, snapshot = demo_snapshot
    monkeypatch.setenv(FAIL_AT_STEP, "40")
    cfg = _train_config(
        root, tiny_bert_dir,
        **{"train.zero_stage": 2, "train.epochs": 2, "train.checkpoint_every_steps": 25,
           "train.max_failures": 1, "train.keep_checkpoints": 2},
    )
    artifact = Path(train(cfg, snapshot).path)  # a local root

    card = json.loads((artifact / "model_card.json").read_text())
    run_dir = Path(card["train_run"])
    states = sorted(run_dir.glob("checkpoint_*/train_state.json"))
    assert len(states) == 2  # keep_checkpoints
    final_state = json.loads(states[-1].read_text())
    assert final_state["restarts"] == 1  # the killed worker's group restarted from a checkpoint once
    assert card["step"] == card["total_steps"] > 40  # past the step the worker died at
    ds_files = {p.name for p in (states[-1].parent / "state").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= ds_files

    curve = json.loads((artifact / "loss_curve.json").read_text())
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert card["metrics"]["recall@10"] > 0

    recall = _heldout_recall(artifact, snapshot)
    print("held-out recall@10:", recall)
    # Measured over train seeds 1-2 (the kill makes runs irreproducible): 3.70-4.01x random, 1.04-1.13x
    # popularity. The tiny random BERT learns little beyond popularity in 2 epochs, so this test asks for a
    # model that learnt (vs random, with margin) and is not worse than popularity by more than noise; the
    # frozen-MiniLM test below carries "beats popularity" with a measured margin.
    assert recall["model"] > 2.5 * recall["random"], recall
    assert recall["model"] > 0.9 * recall["popularity"], recall


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_zero3_checkpoint_exports_an_artifact_with_the_engines_scores(ray_local, demo_snapshot, tiny_bert_dir):
    from recbatch.data.snapshot import Snapshot
    from recbatch.model.features import UserFeatureSpec
    from recbatch.train.examples import EXAMPLES_DIR, VALIDATION_DIR, load_catalog, load_validation
    from recbatch.train.trainer import INPUTS_DIR, train
    from recbatch.train.validation import full_ranking_metrics, item_vectors, pooled_catalog

    root, snapshot = demo_snapshot
    cfg = _train_config(root, tiny_bert_dir, **{"train.zero_stage": 3, "train.max_steps": 4, "train.checkpoint_every_steps": 1000})
    artifact = Path(train(cfg, snapshot).path)  # a local root
    card = json.loads((artifact / "model_card.json").read_text())
    assert card["step"] == 4
    checkpoint = next(p for p in sorted(Path(card["train_run"]).glob("checkpoint_*")) if p.is_dir())
    shards = {p.name for p in (checkpoint / "state").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"} <= shards

    # the exported, DeepSpeed-free artifact ranks the validation users exactly as the engine did
    art = load_artifact(artifact)
    inputs = Path(card["train_run"]) / INPUTS_DIR
    assert len(list((inputs / EXAMPLES_DIR).glob("part-*.parquet"))) == snapshot.partitions == 4
    catalog = load_catalog(inputs / "catalog.parquet", art.tokenizer, art.card["max_text_tokens"])
    validation = load_validation(inputs / VALIDATION_DIR, art.history_length, UserFeatureSpec(**card["user_features"]))
    pooled = pooled_catalog(art.model, catalog, torch.arange(catalog.size), torch.device("cpu"))
    metrics = full_ranking_metrics(art.model, item_vectors(art.model, pooled, catalog), validation, cfg.train.validate_k)
    assert metrics == pytest.approx(card["metrics"], abs=1e-9)
    assert snapshot == Snapshot.open(snapshot.path)

    # resume: the stopped run continues from its latest checkpoint (already at max_steps: same model)
    resumed = Path(train(cfg, snapshot, resume=True).path)
    assert resumed == artifact
    assert json.loads((resumed / "model_card.json").read_text())["train_run"] == card["train_run"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_frozen_encoder_trains_the_towers_only_and_beats_popularity(ray_local, demo_snapshot, tiny_bert_dir):
    from transformers import AutoModel

    from recbatch.train.trainer import train

    from recbatch.model.encoder import resolve_encoder

    root, snapshot = demo_snapshot
    # The packaged MiniLM, frozen, as the demo recipe runs it: its text vectors carry the generated tastes.
    # (A frozen *random* tiny BERT carries none: its towers tied with popularity, 0.99-1.04x over seeds.)
    cfg = _train_config(
        root, tiny_bert_dir,
        **{"model.encoder": "minilm", "model.freeze_encoder": True, "model.id_dropout": 0.2,
           "train.num_workers": 1, "train.epochs": 4, "train.checkpoint_every_steps": 1000},
    )
    artifact = Path(train(cfg, snapshot).path)  # a local root
    art = load_artifact(artifact)
    pretrained = AutoModel.from_pretrained(resolve_encoder("minilm")).state_dict()
    trained = art.model.item_tower.encoder.state_dict()
    assert pretrained.keys() == trained.keys()
    assert all(torch.equal(trained[name], weights) for name, weights in pretrained.items())
    assert art.model.item_tower.id_embedding.weight[1:].abs().sum() > 0  # the towers did train
    assert json.loads((artifact / "model_card.json").read_text())["model"]["id_dropout"] == 0.2

    recall = _heldout_recall(artifact, snapshot)
    print("frozen encoder, held-out recall@10:", recall)
    assert recall["model"] > 1.1 * recall["popularity"], recall  # measured 1.22x, 1.30x, 1.29x at seeds 0-2


def test_a_worker_group_that_takes_every_cpu_is_refused(ray_local, demo_snapshot, tiny_bert_dir):
    from recbatch.train.trainer import train

    root, snapshot = demo_snapshot
    cpus = int(ray_local.cluster_resources()["CPU"])
    cfg = _train_config(root, tiny_bert_dir, **{"train.num_workers": cpus, "train.cpus_per_worker": 1.0})
    with pytest.raises(UsageError, match="reading the training data"):
        train(cfg, snapshot)
