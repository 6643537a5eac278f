"""Submit the nightly job to a real local Ray head with the real `ray job` CLI.

The head is started by this test (`ray start --head --block` on 127.0.0.1, its
dashboard/job server bound to loopback) and stopped by terminating that one
process, which takes its own children down with it: nothing broader.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
import yaml

from recbatch.layout import RunLayout
from recbatch.storage import verify_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture()
def ray_head(tmp_path):
    """A Ray head of our own on loopback; yields the job server address."""
    gcs_port, dash_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Without this Ray advertises the machine's network address even with
        # --node-ip-address=127.0.0.1 (measured here); the test stays on loopback.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        # Ray 2.60 turns on token auth by default; this throwaway loopback head
        # runs without it so the plain `ray job` CLI can talk to it.
        "RAY_AUTH_MODE": "disabled",
    }
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         "--num-cpus=4", "--disable-usage-stats",
         # Fixed default ports (e.g. the agent's 52365) may be held by another Ray
         # on this machine, such as the tests' in-process one: take free ones.
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
         f"--ray-client-server-port={_free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_http(f"{address}/api/version", timeout=90)
        yield address, env
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        log.close()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_the_nightly_and_publishes(ray_head, tmp_path, tiny_pipeline_config, demo_source):
    address, env = ray_head
    cfg = tiny_pipeline_config(root=tmp_path / "root")
    demo_source(cfg)
    config_file = tmp_path / "nightly.yaml"
    data = cfg.to_dict()
    data["ray"] = {"address": None, "num_cpus": None, "num_gpus": None}  # join the job's cluster
    config_file.write_text(yaml.safe_dump(data))

    for _ in range(40):  # the head's job agent comes up a while after its HTTP server
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait",
             "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--working-dir", str(REPO),
             "--", "python", "jobs/nightly.py", "--config", str(config_file), "--run-date", "2026-11-28"],
            env=env, capture_output=True, text=True, timeout=120,
        )
        if "No available agent" not in submit.stderr + submit.stdout:
            break
        time.sleep(5)
    assert submit.returncode == 0, submit.stderr + submit.stdout
    job_id = next(
        word.strip("'\"") for line in submit.stdout.splitlines() for word in line.split()
        if word.strip("'\"").startswith("raysubmit_")
    )

    status = ""
    deadline = time.monotonic() + 480
    while time.monotonic() < deadline:
        done = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id],
                              env=env, capture_output=True, text=True, timeout=60)
        out = (done.stdout + done.stderr).lower()  # "Job '...' succeeded", on stderr
        if any(s in out for s in ("succeeded", "failed", "stopped")):
            status = out
            break
        time.sleep(3)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job_id],
                          env=env, capture_output=True, text=True, timeout=60).stdout
    assert "succeeded" in status, f"status: {status}\nlogs:\n{logs[-4000:]}"
    assert "recommendations:" in logs  # the run summary printed by the job

    final = RunLayout.of(cfg.root).recommendations_for(dt.date(2026, 11, 28))
    manifest = verify_manifest(final)
    recs = pl.read_parquet(sorted(final.glob("*.parquet")))
    assert recs.height == manifest["users"] > 0
