"""A scoring actor killed mid-run: Ray restarts it, retries its block, and the
run still has exactly one row per user, equal to an undisturbed run."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
from score_helpers import RUN_DATE, read_staged, write_random_embeddings

from recbatch.data.ingest import ingest
from recbatch.layout import RunLayout
from recbatch.score.stage import score


def _scorer_pids() -> list[int]:
    """Processes of live ShardScorer actors (Ray titles them after the class)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "ShardScorer" in " ".join(proc.info["cmdline"] or []):
            pids.append(proc.info["pid"])
    return pids


@pytest.mark.ray
def test_killed_scoring_actor_is_retried_without_losing_or_duplicating_users(
    ray_local, tmp_path, tiny_pipeline_config, demo_source
):
    cfg = tiny_pipeline_config(**{
        "generate.users": 3000, "generate.items": 400,
        "score.user_block": 2, "score.rows_per_file": 100, "score.num_actors": 1,
    })
    demo_source(cfg)
    snapshot = ingest(cfg)
    items_dir, users_dir = write_random_embeddings(snapshot, tmp_path / "emb", dim=16)
    reference, _ = read_staged(score(cfg.with_overrides({"root": str(tmp_path / "ref")}), snapshot, items_dir, users_dir, RUN_DATE))

    staged_parent = RunLayout.of(cfg.root).staged_for(RUN_DATE).parent
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(staged=score(cfg, snapshot, items_dir, users_dir, RUN_DATE)))
    runner.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and runner.is_alive():
        written = list(staged_parent.glob(".staging-*/*.parquet"))
        pids = _scorer_pids()
        if written and pids:  # mid-run: some output written, the actor still working
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    runner.join(timeout=300)
    assert killed is not None, "the scoring run ended before an actor could be killed"
    assert not runner.is_alive()

    recs, manifest = read_staged(result["staged"])
    assert recs.height == reference.height == manifest["users"]
    assert recs["user_id"].n_unique() == recs.height
    assert recs.select("user_id", "item_ids").equals(reference.select("user_id", "item_ids"))
