"""A scoring worker killed mid-run, after writing parts it never reported: Ray
restarts it and retries its partition, and the run still has exactly one row
per user, equal to an undisturbed run. The killed attempt's parts are orphans:
the commit deletes them (their rows were written again by the retry)."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
from score_helpers import RUN_DATE, read_staged, write_random_embeddings

from recbatch.data.ingest import ingest
from recbatch.fs import list_files
from recbatch.layout import RunLayout
from recbatch.score.stage import score


def _live_actors(ray, callable_name: str) -> dict[str, dict]:
    """This Ray job's live actors running `callable_name` by actor id, from the GCS actor table.

    Scoped by job id, so another Ray session or process on the machine is never touched.
    (``ray.util.state`` serves the same table through the dashboard, which the local test
    runtime does not start.) Ray Data runs every callable in a ``_MapWorker`` actor whose
    process title names the callable.
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
    while not killed and time.monotonic() < deadline and runner.is_alive():
        if list(staged_parent.glob(".staging-*/*.parquet")):  # it has written parts, reported none yet
            alive = _live_actors(ray_local, "ScoringWorker")
            if alive:
                killed["ScoringWorker"], info = next(iter(alive.items()))
                os.kill(info["Pid"], signal.SIGKILL)
        time.sleep(0.02)  # polling a file listing and the actor table: nothing to wait on
    runner.join(timeout=300)
    assert killed, "the run ended before a scoring worker had written a part"
    assert not runner.is_alive()

    # Ray restarted the killed actor and retried its partition (Ray Data's actors restart without limit).
    from ray._private import state

    for actor_id in killed.values():
        restarted = state.actors(actor_id=actor_id)
        assert restarted["NumRestarts"] >= 1, restarted
    recs, manifest = read_staged(result["staged"])
    assert recs.height == reference.height == manifest["users"]
    assert recs["user_id"].n_unique() == recs.height
    assert recs.select("user_id", "item_ids").equals(reference.select("user_id", "item_ids"))
    # The killed attempt's parts were deleted at commit: the folder holds exactly the reported parts.
    assert {part.name for part in list_files(result["staged"], "part-")} == set(manifest["files"])
