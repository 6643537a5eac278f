"""Scoring actors killed mid-run: Ray restarts them and retries their blocks, and
the run still has exactly one row per user, equal to an undisturbed run. A
finisher killed after writing a part it never reported leaves an orphan part:
the commit deletes it (its rows were written again by the retry)."""

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


def _live_actors(ray, callable_name: str) -> dict[str, dict]:
    """This Ray job's live actors running `callable_name` by actor id, from the GCS actor table.

    Scoped by job id, so another Ray session or process on the machine is never touched.
    (``ray.util.state`` serves the same table through the dashboard, which the local test
    runtime does not start.) Ray Data runs every callable in a ``_MapWorker`` actor whose
    process title names the callable, so that title tells the scorers from the finisher.
    """
    from ray._private import state

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    scorers = {}
    for actor_id, info in state.actors(job_id=job, actor_state_name="ALIVE").items():
        try:
            title = " ".join(psutil.Process(info["Pid"]).cmdline())
        except psutil.NoSuchProcess:  # it ended since the table was read
            continue
        if callable_name in title:
            scorers[actor_id] = info
    return scorers


@pytest.mark.ray
def test_killed_scoring_actor_is_retried_without_losing_or_duplicating_users(
    ray_local, tmp_path, tiny_pipeline_config, demo_source
):
    cfg = tiny_pipeline_config(**{
        "generate.users": 3000, "generate.items": 400,
        "score.user_block": 1, "score.rows_per_file": 100, "score.num_actors": 1,
    })
    demo_source(cfg)
    snapshot = ingest(cfg)
    items_dir, users_dir = write_random_embeddings(snapshot, tmp_path / "emb", dim=16)
    reference, _ = read_staged(score(cfg.with_overrides({"root": str(tmp_path / "ref")}), snapshot, items_dir, users_dir, RUN_DATE))

    staged_parent = RunLayout.of(cfg.root).staged_for(RUN_DATE).parent
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(staged=score(cfg, snapshot, items_dir, users_dir, RUN_DATE)))
    runner.start()
    killed: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(killed) < 2 and time.monotonic() < deadline and runner.is_alive():
        if "ShardScorer" not in killed:  # mid-run: the scorer is up while the run goes on
            alive = _live_actors(ray_local, "ShardScorer")
            if alive:
                killed["ShardScorer"], info = next(iter(alive.items()))
                os.kill(info["Pid"], signal.SIGKILL)
        elif list(staged_parent.glob(".staging-*/*.parquet")):  # a finisher has written parts
            alive = _live_actors(ray_local, "Finisher")
            if alive:
                killed["Finisher"], info = next(iter(alive.items()))
                os.kill(info["Pid"], signal.SIGKILL)
        time.sleep(0.02)  # polling a file listing and the actor table: nothing to wait on
    runner.join(timeout=300)
    assert set(killed) == {"ShardScorer", "Finisher"}, f"the run ended before both were killed: {killed}"
    assert not runner.is_alive()

    # Ray restarted the killed actors and retried their blocks (Ray Data's actors restart without limit).
    from ray._private import state

    for actor_id in killed.values():
        restarted = state.actors(actor_id=actor_id)
        assert restarted["NumRestarts"] >= 1, restarted
    recs, manifest = read_staged(result["staged"])
    assert recs.height == reference.height == manifest["users"]
    assert recs["user_id"].n_unique() == recs.height
    assert recs.select("user_id", "item_ids").equals(reference.select("user_id", "item_ids"))
