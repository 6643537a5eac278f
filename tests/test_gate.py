"""The publish gate both ways: a regression blocks, an improvement passes, --force records."""

from __future__ import annotations

import pytest
import torch

from recbatch.config import EvalConfig
from recbatch.errors import QualityGateError, UsageError
from recbatch.eval.gate import check_gate

CFG = EvalConfig(gate_metric="ndcg@10", gate_tolerance=0.05, min_holdout_users=20)
LAST = {"run_date": "2026-11-28", "metrics": {"ndcg@10": 0.20, "recall@10": 0.3}}


def test_first_run_passes():
    result = check_gate({"ndcg@10": 0.01}, None, CFG)
    assert result.passed and result.publish and not result.forced
    assert result.baseline_value is None


def test_improvement_and_small_drop_pass():
    better = check_gate({"ndcg@10": 0.25}, LAST, CFG)
    assert better.passed and better.relative_change == pytest.approx(0.25)
    within = check_gate({"ndcg@10": 0.191}, LAST, CFG)  # -4.5% with 5% allowed
    assert within.passed and within.baseline_run == "2026-11-28"


def test_regression_beyond_tolerance_blocks():
    with pytest.raises(QualityGateError, match=r"ndcg@10 0\.1800 vs 0\.2000.*-10\.0%.*--force") as err:
        check_gate({"ndcg@10": 0.18}, LAST, CFG)
    assert err.value.exit_code == 4


def test_force_publishes_a_regression_and_records_it():
    result = check_gate({"ndcg@10": 0.18}, LAST, CFG, force=True)
    assert result.publish and not result.passed and result.forced
    manifest = result.to_manifest()
    assert manifest["forced"] is True and manifest["passed"] is False
    assert manifest["relative_change"] == pytest.approx(-0.1)


POPULARITY = {"ndcg@10": 0.15, "recall@10": 0.2}  # the floor baseline's metrics on the same holdout users


def test_first_run_below_the_popularity_floor_is_refused():
    with pytest.raises(QualityGateError, match=r"ndcg@10 0\.1000 is below the most_popular baseline's 0\.1500 "
                                               r"on the same holdout users \(0\.67x\).*--force") as err:
        check_gate({"ndcg@10": 0.10}, None, CFG, floor_metrics=POPULARITY)
    assert err.value.exit_code == 4


def test_floor_passes_at_or_above_popularity_and_records_the_ratio():
    result = check_gate({"ndcg@10": 0.30}, None, CFG, floor_metrics=POPULARITY)
    assert result.passed and result.floor_model == "most_popular"
    assert result.floor_value == 0.15 and result.floor_ratio == pytest.approx(2.0)
    assert result.to_manifest()["floor_ratio"] == pytest.approx(2.0)
    assert check_gate({"ndcg@10": 0.15}, None, CFG, floor_metrics=POPULARITY).passed  # a tie is not below


def test_floor_and_last_run_are_both_checked():
    # above the floor, but a regression against the last published run
    with pytest.raises(QualityGateError, match=r"ndcg@10 0\.1800 vs 0\.2000"):
        check_gate({"ndcg@10": 0.18}, LAST, CFG, floor_metrics=POPULARITY)
    # no regression against a weak last run, but below the floor
    weak_last = {"run_date": "2026-11-27", "metrics": {"ndcg@10": 0.10}}
    with pytest.raises(QualityGateError, match="below the most_popular baseline"):
        check_gate({"ndcg@10": 0.12}, weak_last, CFG, floor_metrics=POPULARITY)


def test_force_publishes_below_the_floor_and_records_it():
    result = check_gate({"ndcg@10": 0.05}, None, CFG, force=True, floor_metrics=POPULARITY)
    assert result.publish and result.forced and not result.passed
    assert "below the most_popular baseline" in result.reason and "--force" in result.reason
    assert result.floor_ratio == pytest.approx(1 / 3)


def test_disabled_gate_ignores_the_floor():
    off = EvalConfig(gate_metric="ndcg@10", gate_enabled=False)
    assert check_gate({"ndcg@10": 0.0}, None, off, floor_metrics=POPULARITY).passed


def test_previous_run_without_the_metric_passes():
    result = check_gate({"ndcg@10": 0.1}, {"run_date": "2026-11-27", "metrics": {}}, CFG)
    assert result.passed and "recorded no" in result.reason


def test_disabled_gate_passes_and_missing_metric_is_an_error():
    off = EvalConfig(gate_metric="ndcg@10", gate_enabled=False)
    assert check_gate({"ndcg@10": 0.0}, LAST, off).passed
    with pytest.raises(QualityGateError, match="no metric 'ndcg@10'"):
        check_gate({"recall@10": 0.5}, LAST, CFG)


def test_holdout_metrics_of_a_real_model_feed_the_gate(ray_local, tmp_path, tiny_bert_dir):
    """An (untrained, text-only) two-tower artifact is ranked on the fixed holdout slice."""
    from eval_helpers import synthetic_snapshot
    from recbatch.config import Config
    from recbatch.data.snapshot import Snapshot
    from recbatch.eval.holdout import evaluate_baseline, evaluate_holdout, holdout_user_ids
    from recbatch.model.artifact import init_artifact

    snapshot = Snapshot.open(synthetic_snapshot(tmp_path / "snap", users=60, items=80))
    cfg = Config().with_overrides({
        "eval.holdout_users": 40, "eval.ks": [5, 10], "model.embedding_dim": 16, "model.history_length": 8,
    })
    model_dir = init_artifact(cfg, str(tiny_bert_dir), snapshot, tmp_path / "models")
    metrics = evaluate_holdout(cfg, snapshot, model_dir)
    assert metrics["holdout_users"] == 40.0
    assert metrics["seen_share@10"] == 0.0  # pre-test history is filtered
    assert 0.0 <= metrics["ndcg@10"] <= 1.0 and metrics["coverage@10"] > 0.0
    # The embed stage's item vectors (a folder) give the same numbers as encoding here.
    items_dir = _write_item_embeddings(tmp_path / "emb", model_dir, snapshot)
    assert evaluate_holdout(cfg, snapshot, model_dir, items_dir) == pytest.approx(metrics)
    # The ranking runs in a Ray task holding a scoring actor's CPUs: more than the cluster has is refused.
    with pytest.raises(UsageError, match="the holdout ranking task"):
        evaluate_holdout(cfg.with_overrides({"score.cpus_per_actor": 64.0}), snapshot, model_dir, items_dir)
    # A GPU config (score.gpus_per_actor) on a driver without one: the gate ranks on the CPU, not fail.
    on_gpu_actors = cfg.with_overrides({"score.gpus_per_actor": 1})
    if not torch.cuda.is_available():
        assert evaluate_holdout(on_gpu_actors, snapshot, model_dir, items_dir) == pytest.approx(metrics)
        assert evaluate_baseline(on_gpu_actors, snapshot, "most_popular").metrics() == pytest.approx(
            evaluate_baseline(cfg, snapshot, "most_popular").metrics())
    first = check_gate(metrics, None, CFG)
    assert first.passed
    # the floor: most_popular on the same fixed slice, fit on the rows before test
    popular = evaluate_baseline(cfg, snapshot, "most_popular")
    assert popular.users["all"] == 40
    assert popular.metrics()["seen_share@10"] == 0.0 and popular.metrics()["ndcg@10"] > metrics["ndcg@10"]
    with pytest.raises(QualityGateError, match="below the most_popular baseline"):
        check_gate(metrics, None, CFG, floor_metrics=popular.metrics())
    better_last_run = {"run_date": "x", "metrics": {"ndcg@10": metrics["ndcg@10"] + 0.5}}
    with pytest.raises(QualityGateError):
        check_gate(metrics, better_last_run, CFG)


def _write_item_embeddings(folder, model_dir, snapshot):
    """An embeddings folder as the embed stage publishes it (embeddings_schema + manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recbatch.embed.store import matrix_to_list_array
    from recbatch.eval.holdout import catalog_vectors
    from recbatch.model.artifact import load_artifact
    from recbatch.schemas import embeddings_schema
    from recbatch.storage import write_manifest

    artifact = load_artifact(model_dir)
    ids, matrix = catalog_vectors(artifact, snapshot, None, batch=64)
    folder.mkdir()
    table = pa.table(
        [ids, matrix_to_list_array(matrix), pa.array(["h"] * len(ids)), pa.array([artifact.model_version] * len(ids))],
        schema=embeddings_schema("int"),
    )
    pq.write_table(table.slice(0, 50), folder / "part-00000.parquet")  # two files, as Ray Data writes
    pq.write_table(table.slice(50), folder / "part-00001.parquet")
    write_manifest(folder, {"model_version": artifact.model_version})
    return folder


def test_holdout_lists_on_validation_use_train_history_only_and_the_prior(tmp_path, tiny_bert_dir):
    """Tuning scoring settings on validation: a user's validation items are not "seen" there, but are for test."""
    import polars as pl

    from eval_helpers import synthetic_snapshot
    from recbatch.config import Config
    from recbatch.data.snapshot import Snapshot
    from recbatch.eval.holdout import holdout_lists, holdout_user_ids
    from recbatch.model.artifact import init_artifact

    snapshot = Snapshot.open(synthetic_snapshot(tmp_path / "snap", users=30, items=60))
    cfg = Config().with_overrides({"model.embedding_dim": 16, "model.history_length": 8})
    model_dir = init_artifact(cfg, str(tiny_bert_dir), snapshot, tmp_path / "models")
    users = holdout_user_ids(snapshot, 10, "validation")
    rows = snapshot.split().collect()

    def items_of(user, splits):
        return set(rows.filter((pl.col("user_id") == user) & pl.col("split").is_in(splits))["item_id"].to_list())

    on_validation = holdout_lists(cfg, snapshot, model_dir, None, users, 60, split="validation")
    on_test = holdout_lists(cfg, snapshot, model_dir, None, users, 60, split="test")
    for lists, before, held_out in ((on_validation, ["train"], ["validation"]),
                                    (on_test, ["train", "validation"], ["test"])):
        for row in lists.iter_rows(named=True):
            listed = set(row["item_ids"])
            assert not listed & items_of(row["user_id"], before)  # history is filtered ...
            assert items_of(row["user_id"], held_out) <= listed  # ... held-out items are not (k = every item)

    # with the prior on, the order changes and popular items climb
    with_prior = holdout_lists(cfg.with_overrides({"score.popularity_prior_weight": 5.0}), snapshot, model_dir,
                               None, users, 10, split="validation")
    assert with_prior["item_ids"].to_list() != on_validation["item_ids"].list.head(10).to_list()
    popularity = rows.filter(pl.col("split") == "train").group_by("item_id").len()
    mean_count = dict(zip(popularity["item_id"], popularity["len"]))

    def average(lists):
        return sum(mean_count.get(i, 0) for items in lists["item_ids"] for i in items[:10]) / (10 * lists.height)

    assert average(with_prior) > average(on_validation)



def test_holdout_slice_is_the_same_in_every_process(ray_local, tmp_path):
    """The gate compares nights, i.e. processes: the slice must not depend on per-process state
    (``hash()`` of a string id changes with PYTHONHASHSEED), so string ids are used here."""
    import json
    import os
    import subprocess
    import sys

    from recbatch.config import Config
    from recbatch.data.generate import generate_demo
    from recbatch.data.ingest import ingest
    from recbatch.eval.holdout import holdout_user_ids

    cfg = Config(root=str(tmp_path / "root")).with_overrides({
        "ingest.source": str(tmp_path / "src"), "generate.users": 150, "generate.items": 40,
        "generate.interactions_per_user": 8, "generate.id_type": "string",
        "split.holdout_days": 180,  # the generated data is sparse: the default week holds 6 users
    })
    generate_demo(cfg.generate, cfg.ingest.source)
    snapshot = ingest(cfg)
    here = holdout_user_ids(snapshot, 10).to_list()
    test_users = set(snapshot.split("test").select("user_id").collect()["user_id"].to_list())
    assert len(here) == 10 and set(here) < test_users and all(isinstance(u, str) for u in here)
    cut = ingest(cfg.with_overrides({"root": str(tmp_path / "cut"), "ingest.users_per_partition": 20}))
    assert cut.partitions == 8 and holdout_user_ids(cut, 10).to_list() == here  # found partition by partition

    code = (
        "import json, sys\n"
        "from recbatch.data.snapshot import Snapshot\n"
        "from recbatch.eval.holdout import holdout_user_ids\n"
        "print(json.dumps(holdout_user_ids(Snapshot.open(sys.argv[1]), 10).to_list()))\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run([sys.executable, "-c", code, str(snapshot.path)], env=env, check=True,
                             capture_output=True, text=True).stdout
        assert json.loads(out) == here, f"PYTHONHASHSEED={seed}"


def test_a_holdout_of_too_few_users_is_refused_and_force_records_it():
    cfg = EvalConfig(gate_metric="ndcg@10", min_holdout_users=50)
    few = {"ndcg@10": 0.30, "holdout_users": 7.0}
    with pytest.raises(QualityGateError, match=r"the holdout holds 7 users, fewer than eval.min_holdout_users=50"
                                               r".*split.holdout_days.*--force") as err:
        check_gate(few, None, cfg, floor_metrics=POPULARITY)
    assert err.value.exit_code == 4
    assert check_gate({**few, "holdout_users": 50.0}, None, cfg, floor_metrics=POPULARITY).passed  # at the minimum
    forced = check_gate(few, None, cfg, force=True, floor_metrics=POPULARITY)
    assert forced.publish and not forced.passed
