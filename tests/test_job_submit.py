"""Submit the nightly job to a real local Ray head with the real `ray job` CLI.

The head is started by this test (`ray start --head --block` on 127.0.0.1, its
dashboard/job server bound to loopback) in a session of its own, and stopped by
terminating that session's processes: nothing broader.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def _wait_http(url: str, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Ray head exited with code {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def _log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _start_head(env: dict[str, str], temp_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start a blocking Ray head on fresh loopback ports; return it and its job server address."""
    dash_port = _free_port()
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block",
             "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
             "--num-cpus=4", "--disable-usage-stats",
             # Its own session folder: the tests' in-process Ray keeps /tmp/ray.
             f"--temp-dir={temp_dir}",
             # Fixed default ports (e.g. the agent's 52365) may be held by another Ray
             # on this machine, such as the tests' in-process one: take free ones.
             f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
             f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}",
             f"--ray-client-server-port={_free_port()}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return head, f"http://127.0.0.1:{dash_port}"


def _stop_head(head: subprocess.Popen) -> None:
    """Terminate the head's own session (it was started in a new one): its raylet, GCS, dashboard
    and workers get the signal at once instead of one after another from `ray start` (~30 s);
    whatever is left after a grace period is killed."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 60)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            break  # the whole session is gone
        try:
            head.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    head.wait()


@pytest.fixture()
def ray_head(tmp_path):
    """A Ray head of our own on loopback; yields the job server address.

    A head that has not answered after 180 s (or has exited) is stopped and
    started once more on fresh ports: on a loaded 2-core CI box a port picked
    free can be taken before Ray binds it. If the second start fails too, the
    error carries the head's own log, so the cause is in the CI output.
    """
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
    # Short: Ray puts unix sockets under it, and their paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayh-", dir="/tmp"))
    failures = []
    try:
        for attempt in (1, 2):
            log_path = tmp_path / f"ray-head-{attempt}.log"
            head, address = _start_head(env, temp_dir, log_path)
            try:
                _wait_http(f"{address}/api/version", timeout=180, process=head)
            except (TimeoutError, RuntimeError) as exc:
                _stop_head(head)
                failures.append(f"attempt {attempt}: {exc}\n--- {log_path.name} ---\n{_log_tail(log_path)}")
                continue
            try:
                yield address, env
            finally:
                _stop_head(head)
            return
        raise RuntimeError("the test's Ray head never served its dashboard:\n" + "\n".join(failures))
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_runs_the_nightly_and_publishes(
    ray_head, tmp_path, tiny_pipeline_config, demo_source, tiny_bert_dir
):
    """This test is about the job mechanics: the job reuses an untrained model made here
    (``train.cadence: never``) and publishes past the quality gate's popularity floor with --force.
    Training is covered where it is cheaper: in-process (test_train.py), in the nightly on a
    two-node cluster (test_nightly.py), and through the CLI (test_gate_cli.py, test_cli.py).
    A Ray Train run inside the job cost 50-60 s here of Ray Train's own start-up."""
    from recbatch.data.ingest import ingest
    from recbatch.model.artifact import init_artifact

    address, env = ray_head
    cfg = tiny_pipeline_config(root=tmp_path / "root", **{"train.cadence": "never"})
    demo_source(cfg)
    snapshot = ingest(cfg)  # one user partition: in this process, no Ray
    model = init_artifact(cfg, str(tiny_bert_dir), snapshot, RunLayout.of(cfg.root).models)
    config_file = tmp_path / "nightly.yaml"
    data = cfg.to_dict()
    data["ray"] = {"address": None, "num_cpus": None, "num_gpus": None}  # join the job's cluster
    config_file.write_text(yaml.safe_dump(data))

    # Without --no-wait, `ray job submit` tails the job's logs until it ends and exits 1 if it failed:
    # one process waits, instead of a `ray job status` process (a whole Ray import) every few seconds.
    for _ in range(40):  # the head's job agent comes up a while after its HTTP server
        submit = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", address,
             "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--working-dir", str(REPO),
             "--", "python", "jobs/nightly.py", "--config", str(config_file), "--run-date", "2026-11-28", "--force"],
            env=env, capture_output=True, text=True, timeout=600,
        )
        if "No available agent" not in submit.stderr + submit.stdout:
            break
        time.sleep(5)
    logs = submit.stdout + submit.stderr
    assert submit.returncode == 0, logs[-4000:]
    job_id = next(
        word.strip("'\"") for line in logs.splitlines() for word in line.split()
        if word.strip("'\"").startswith("raysubmit_")
    )
    done = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job_id],
                          env=env, capture_output=True, text=True, timeout=60)
    status = (done.stdout + done.stderr).lower()  # "Job '...' succeeded", on stderr
    assert "succeeded" in status, f"status: {status}\nlogs:\n{logs[-4000:]}"
    assert "recommendations:" in logs  # the run summary printed by the job

    final = RunLayout.of(cfg.root).recommendations_for(dt.date(2026, 11, 28))
    manifest = verify_manifest(final)
    recs = pl.read_parquet(sorted(final.glob("*.parquet")))
    assert recs.height == manifest["users"] > 0
    assert manifest["gate"]["floor_model"] == "most_popular"  # the gate ran; --force is recorded if it refused
    assert manifest["gate"]["forced"] is True
    assert manifest["model_version"] == model.name  # the job found the root's model and did not train
    assert not RunLayout.of(cfg.root).checkpoints.exists()
