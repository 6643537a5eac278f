"""The nightly on a Ray cluster without a shared disk: an ``s3://`` root, scoring on worker nodes only.

`ray.cluster_utils.Cluster` runs a head and two worker nodes as separate raylets
on this machine. The head offers no `scorer` resource; each worker node offers
one unit and each scoring actor asks for one, so the scoring actors run on the
worker nodes, never on the head. Every stage reads and writes the root on a
real S3 server (SeaweedFS): no process can see another's local files through
the root. The published lists equal a single-node scoring of the same
embeddings.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from score_helpers import RUN_DATE

from recbatch.data.snapshot import Snapshot
from recbatch.folders import read_manifest, read_parquet_folder
from recbatch.layout import RunLayout


def _rows(folder) -> pl.DataFrame:
    frame = pl.from_arrow(read_parquet_folder(folder))  # the reader contract: marker, manifest, its files
    assert isinstance(frame, pl.DataFrame)
    return frame.sort("user_id")


@pytest.mark.ray
@pytest.mark.slow
def test_the_nightly_on_an_s3_root_scores_on_worker_nodes_only_like_a_single_node(
    tmp_path, tiny_pipeline_config, demo_source, s3_root, monkeypatch
):
    import ray
    from ray.cluster_utils import Cluster

    from recbatch.config import RayConfig
    from recbatch.pipeline import run_nightly
    from recbatch.runtime import ensure_ray
    from recbatch.score.stage import score

    storage = s3_root.storage
    cfg = tiny_pipeline_config(root=s3_root.uri, **{
        "storage.endpoint": storage.endpoint, "storage.scheme": storage.scheme, "storage.region": storage.region,
        "score.num_actors": 2, "score.cpus_per_actor": 0.5, "score.actor_resources": {"scorer": 1},
        "ingest.users_per_partition": 100, "ray.num_cpus": None,
    })
    demo_source(cfg)
    monkeypatch.chdir(tmp_path)  # where a path "s3://..." would have become a local folder "s3:"

    if ray.is_initialized():
        ray.shutdown()
    # The nodes inherit this process's environment: the AWS variables s3_root set (a node's role, in production).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    for _ in range(2):
        cluster.add_node(num_cpus=2, resources={"scorer": 1})
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        workers = {n["NodeID"] for n in ray.nodes() if n["Alive"] and "scorer" in n["Resources"]}
        summary = run_nightly(cfg, RUN_DATE)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert summary.failed_stage is None, summary.render()
    assert [s.status for s in summary.stages] == ["ran", "ran", "ran", "ran", "ran", "ran", "skipped"]
    layout = RunLayout.of(cfg.root, cfg.storage).at
    final = layout.recommendations_for(RUN_DATE)
    manifest = read_manifest(final)
    assert summary.output == final.uri and manifest["gate"]["passed"] is True
    nodes = set(manifest["scoring_nodes"])
    # Worker nodes scored, the head did not. (Both, or the one whose actor started first: 300 users
    # take less time to score than an actor takes to start, so how many varies with the machine's load.)
    assert len(workers) == 2 and nodes and nodes <= workers, (nodes, workers)
    published = _rows(final)
    snapshot = Snapshot.open(layout.latest_snapshot())
    assert snapshot.partitions == 4
    assert published.height == snapshot.users().collect().height == manifest["users"]
    assert not (tmp_path / "s3:").exists()

    # The same embeddings scored by one actor on one node, staged on a local root.
    ensure_ray(RayConfig(num_cpus=4))
    version = manifest["model_version"]
    single_cfg = cfg.with_overrides({"root": str(tmp_path / "single"), "score.num_actors": 1,
                                     "score.actor_resources": {}})
    single = _rows(score(single_cfg, snapshot, layout.embeddings(version, "items"),
                         layout.embeddings(version, "users"), RUN_DATE))
    assert published.select("user_id", "item_ids").equals(single.select("user_id", "item_ids"))
    np.testing.assert_allclose(
        np.concatenate(published["scores"].to_list()), np.concatenate(single["scores"].to_list()), rtol=1e-5
    )
