"""Scoring across several Ray nodes gives the same output as on one node.

`ray.cluster_utils.Cluster` runs a head and two worker nodes as separate raylets
on this machine. Each worker node offers one unit of a custom `scorer`
resource and each scoring actor asks for one, so the two actors must land on
different nodes.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from score_helpers import RUN_DATE, read_staged, write_random_embeddings

from recbatch.data.ingest import ingest


def _score_output(cfg, snapshot, items_dir, users_dir) -> tuple[pl.DataFrame, dict]:
    from recbatch.score.stage import score

    return read_staged(score(cfg, snapshot, items_dir, users_dir, RUN_DATE))


@pytest.mark.ray
@pytest.mark.slow
def test_scoring_spreads_over_nodes_and_matches_single_node(tmp_path, tiny_pipeline_config, demo_source):
    import ray
    from ray.cluster_utils import Cluster

    cfg = tiny_pipeline_config(**{"score.num_actors": 2, "score.cpus_per_actor": 0.5, "score.user_block": 4,
                                  "generate.users": 4000, "ingest.users_per_partition": 1000})
    demo_source(cfg)
    snapshot = ingest(cfg)
    assert snapshot.partitions == 4  # read by tasks on any node, scored by the actors on the worker nodes
    users = snapshot.users().collect()
    items_dir, users_dir = write_random_embeddings(snapshot, tmp_path / "emb", dim=16)

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
