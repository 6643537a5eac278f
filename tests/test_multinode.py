"""Scoring across several Ray nodes gives the same output as on one node.

`ray.cluster_utils.Cluster` runs a head and two worker nodes as separate raylets
on this machine. Each worker node offers one unit of a custom `scorer`
resource and each scoring actor asks for one, so the two actors must land on
different nodes.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch.data.ingest import ingest
from recbatch.schemas import embeddings_schema
from recbatch.storage import staging_dir_for, publish_dir, write_manifest, verify_manifest

RUN_DATE = dt.date(2026, 11, 28)


def _write_embeddings(folder, ids, vectors, id_column, id_type) -> None:
    staging = staging_dir_for(folder)
    table = pa.table(
        {
            id_column: pa.array(ids),
            "embedding": pa.array(list(vectors.astype(np.float32)), type=pa.list_(pa.float32())),
            "input_hash": pa.array(["h"] * len(ids)),
            "model_version": pa.array(["mv-test"] * len(ids)),
        }
    ).cast(embeddings_schema(id_type, id_column))
    pq.write_table(table, staging / "part-00000.parquet")
    write_manifest(staging, {"model_version": "mv-test", "rows": len(ids)})
    publish_dir(staging, folder)


def _score_output(cfg, snapshot, items_dir, users_dir) -> pl.DataFrame:
    from recbatch.score.stage import score

    staged = score(cfg, snapshot, items_dir, users_dir, RUN_DATE)
    manifest = verify_manifest(staged)
    df = pl.read_parquet(sorted(staged.glob("*.parquet"))).sort("user_id")
    return df, manifest


@pytest.mark.ray
@pytest.mark.slow
def test_scoring_spreads_over_nodes_and_matches_single_node(tmp_path, tiny_pipeline_config, demo_source):
    import ray
    from ray.cluster_utils import Cluster

    cfg = tiny_pipeline_config(**{"score.num_actors": 2, "score.cpus_per_actor": 0.5, "score.user_block": 4,
                                  "generate.users": 600})
    demo_source(cfg)
    snapshot = ingest(cfg)
    items = pl.read_parquet(snapshot.table_path("items"))
    users = pl.read_parquet(snapshot.table_path("users"))
    rng = np.random.default_rng(0)
    items_dir, users_dir = tmp_path / "emb" / "items", tmp_path / "emb" / "users"
    _write_embeddings(items_dir, items["item_id"].to_list(), rng.normal(size=(items.height, 16)), "item_id", snapshot.id_type)
    _write_embeddings(users_dir, users["user_id"].to_list(), rng.normal(size=(users.height, 16)), "user_id", snapshot.id_type)

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(2):
        cluster.add_node(num_cpus=2, resources={"scorer": 1})
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        spread_cfg = cfg.with_overrides({"score.actor_resources": {"scorer": 1}, "root": str(tmp_path / "multi")})
        multi, multi_manifest = _score_output(spread_cfg, snapshot, items_dir, users_dir)
        single_cfg = cfg.with_overrides({"score.num_actors": 1, "root": str(tmp_path / "single")})
        single, _ = _score_output(single_cfg, snapshot, items_dir, users_dir)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert len(set(multi_manifest["scoring_nodes"])) >= 2
    assert multi.height == users.height
    assert multi["user_id"].n_unique() == multi.height
    assert multi.select("user_id", "item_ids").equals(single.select("user_id", "item_ids"))
    np.testing.assert_allclose(
        np.concatenate(multi["scores"].to_list()), np.concatenate(single["scores"].to_list()), rtol=1e-5
    )
