"""The Redis serving store, against a real redis-server (fixtures in conftest.py).

Runs are written with the real recommendations writer; every expected list is
computed from the run's seed, so a read that returns another run's list, or
another user's, fails.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch.cli import main as cli_main
from recbatch.config import ServingConfig
from recbatch.errors import DataValidationError, IntegrityError, ServingStoreError, UsageError
from recbatch.layout import RunLayout
from recbatch.schemas import id_arrow_type
from recbatch.score.writer import write_recommendations
from recbatch.serving import get_recommendations, load_run
from recbatch.serving.codec import decode
from recbatch.serving.connection import mask_url
from recbatch.serving.keys import KeyLayout
from recbatch.serving.versions import history, registered_versions, version_info

REPO = Path(__file__).resolve().parents[1]
PREFIX = "t"


# --------------------------------------------------------------------------- test runs


def expected_items(run: int, user: int, k: int, id_type: str = "int") -> list:
    """Run `run`'s list for `user`: distinct per run and per user, length varying with the user."""
    ids = [run * 100_000 + user * 10 + j for j in range(1 + user % k)]
    return [f"item-{i}" for i in ids] if id_type == "string" else ids


def expected_scores(user: int, k: int) -> list[float]:
    return [1.0 - 0.01 * j - 0.0001 * user for j in range(1 + user % k)]


def user_key(user: int, id_type: str) -> int | str:
    return f"user-{user}" if id_type == "string" else user


def make_run(
    root: Path, run: int, users: int = 60, k: int = 5, id_type: str = "int", because: bool = False
) -> Path:
    """Publish run number `run` (run date 2026-01-<run+1>) with the real writer."""
    t = id_arrow_type(id_type)
    columns = {
        "user_id": pa.array([user_key(u, id_type) for u in range(users)], t),
        "item_ids": pa.array([expected_items(run, u, k, id_type) for u in range(users)], pa.list_(t)),
        "scores": pa.array([expected_scores(u, k) for u in range(users)], pa.list_(pa.float32())),
        "model_version": pa.array([f"model-{run}"] * users),
    }
    if because:
        columns["because_item_ids"] = pa.array(
            [expected_items(run + 7, u, k, id_type) if u % 3 else None for u in range(users)], pa.list_(t)
        )
    run_date = f"2026-01-{run + 1:02d}"
    out = RunLayout.of(root).recommendations_for(run_date)
    write_recommendations(
        [pa.table(columns)],
        out,
        id_type=id_type,
        rows_per_file=max(1, users // 3),
        manifest_fields={"run_date": run_date, "model_version": f"model-{run}", "k": k},
    )
    return out


def serving_cfg(server, **overrides) -> ServingConfig:
    return ServingConfig(redis_url=server.url, key_prefix=PREFIX, **overrides)


def version_keys(client, version: str) -> list[bytes]:
    """Every key of a version: its user keys (on every node of a cluster) and its meta hash."""
    keys = KeyLayout(PREFIX)
    users = list(client.scan_iter(match=keys.version_pattern(version), count=1000))
    return users + [keys.meta(version).encode()] * client.exists(keys.meta(version))


def assert_serves_run(client, run: int, users: int, k: int = 5, id_type: str = "int") -> str:
    """Every user reads back exactly run `run`'s list, all from one version; returns it."""
    seen = set()
    for u in range(users):
        recs = get_recommendations(client, user_key(u, id_type), prefix=PREFIX)
        assert recs is not None, f"user {u} missing"
        assert recs.item_ids == expected_items(run, u, k, id_type)
        assert recs.scores == pytest.approx(expected_scores(u, k), abs=1e-6)
        seen.add(recs.version)
    assert len(seen) == 1
    return seen.pop()


# --------------------------------------------------------------------------- load and read


@pytest.fixture(params=["redis", "cluster"])
def store(request):
    """The serving store on one Redis and on a 3-master Redis Cluster with a password (conftest.py)."""
    return request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")



@pytest.mark.parametrize("id_type", ["int", "string"])
def test_load_reads_back_every_user_exactly(tmp_path, store, id_type):
    run_dir = make_run(tmp_path, run=1, users=60, id_type=id_type, because=True)
    client = store.client()

    result = load_run(run_dir, serving_cfg(store, batch_size=16))

    assert (result.users, result.batches, result.previous_version) == (60, 6, None)  # 3 files x 2
    assert assert_serves_run(client, 1, 60, id_type=id_type) == result.version
    for u in (1, 2, 4):  # because lists where written, None where null
        recs = get_recommendations(client, user_key(u, id_type), prefix=PREFIX)
        assert recs.because_item_ids == (expected_items(8, u, 5, id_type) if u % 3 else None)
    top2 = get_recommendations(client, user_key(9, id_type), k=2, prefix=PREFIX)
    assert top2.item_ids == expected_items(1, 9, 5, id_type)[:2] and len(top2.scores) == 2
    assert get_recommendations(client, user_key(999, id_type), prefix=PREFIX) is None
    assert get_recommendations(client, 1, prefix="other-prefix") is None  # nothing live there

    keys = KeyLayout(PREFIX)
    assert client.get(keys.pointer).decode() == result.version
    meta = version_info(client, keys, result.version).meta
    assert meta["state"] == "complete" and meta["run_date"] == "2026-01-02"
    assert meta["model_version"] == "model-1" and meta["users"] == meta["written"] == "60"
    assert meta["loaded_at"] and meta["activated_at"] and meta["id_type"] == id_type
    assert len(version_keys(client, result.version)) == 60 + 1  # users + meta


def test_load_command_prints_result_and_defaults_to_newest_run(tmp_path, redis_server, capsys):
    make_run(tmp_path, run=1, users=10)
    make_run(tmp_path, run=2, users=12)

    code = cli_main(["load", "--root", str(tmp_path), "--redis-url", redis_server.url,
                     "--set", f"serving.key_prefix={PREFIX}"])

    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_date"] == "2026-01-03" and printed["users"] == 12
    assert_serves_run(redis_server.client(), 2, 12)


# --------------------------------------------------------------------------- refusing bad runs


def _rewrite_manifest(run_dir: Path, **changes) -> None:
    path = run_dir / "_manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def _tamper_checksum(run_dir: Path) -> None:
    """One byte changed, same size: only the sha256 can tell."""
    first = sorted(run_dir.glob("part-*.parquet"))[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))


def _tamper_count(run_dir: Path) -> None:
    _rewrite_manifest(run_dir, rows=61, users=61)


def _tamper_success(run_dir: Path) -> None:
    (run_dir / "_SUCCESS").unlink()


def _tamper_schema(run_dir: Path) -> None:
    _rewrite_manifest(run_dir, id_type="string")  # the files hold int64 ids


@pytest.mark.parametrize(
    "tamper, error, words",
    [
        (_tamper_checksum, IntegrityError, "sha256"),
        (_tamper_count, IntegrityError, "61"),
        (_tamper_success, IntegrityError, "_SUCCESS"),
        (_tamper_schema, DataValidationError, "user_id"),
    ],
    ids=["checksum", "count", "no-success", "schema"],
)
def test_bad_run_is_refused_before_any_write(tmp_path, redis_server, tamper, error, words):
    client = redis_server.client()
    live = load_run(make_run(tmp_path, run=1), serving_cfg(redis_server)).version
    keys_before = client.dbsize()
    bad = make_run(tmp_path, run=2)
    tamper(bad)

    with pytest.raises(error, match=words):
        load_run(bad, serving_cfg(redis_server))

    assert client.dbsize() == keys_before and registered_versions(client, KeyLayout(PREFIX)) == [live]
    assert assert_serves_run(client, 1, 60) == live


def _hand_made_run(folder: Path, users: list[int], items: list[list[int]], model_versions: list[str]) -> Path:
    """A run that breaks a row rule the writer would have enforced (so built with pyarrow)."""
    from recbatch.storage import write_manifest

    folder.mkdir()
    pq.write_table(pa.table({
        "user_id": pa.array(users, pa.int64()),
        "item_ids": pa.array(items, pa.list_(pa.int64())),
        "scores": pa.array([[0.5] * len(row) for row in items], pa.list_(pa.float32())),
        "model_version": model_versions,
    }), folder / "part-00000.parquet")
    n = len(users)
    write_manifest(folder, {"run_date": "2026-02-01", "model_version": "m", "id_type": "int",
                            "users": n, "rows": n, "k": 2})
    return folder


@pytest.mark.parametrize(
    "users, items, model_versions, batch_size, words",
    [
        ([0, 1, 2, 3, 1], [[5]] * 5, ["m"] * 5, 2, "already has a row"),  # MSETNX refuses
        ([0, 1, 2, 3, 1], [[5]] * 5, ["m"] * 5, 10, r"'user_id' repeats 1 users, e.g. \[1\]"),
        ([0, 1, 2, 3], [[5], [5], [5, 6, 7], [5]], ["m"] * 4, 10, r"longer than k = 2 in 1 rows, e.g. users \[2\]"),
        ([0, 1, 2, 3], [[5]] * 4, ["m", "m", "m", "other"], 2, r"'model_version' differs .* e.g. users \[3\]"),
    ],
    ids=["duplicate-across-batches", "duplicate-within-a-batch", "longer-than-k", "model-version"],
)
def test_bad_rows_are_refused_and_the_partial_version_discarded(
    tmp_path, redis_server, users, items, model_versions, batch_size, words
):
    run_dir = _hand_made_run(tmp_path / "bad", users, items, model_versions)
    client = redis_server.client()

    with pytest.raises(DataValidationError, match=words):
        load_run(run_dir, serving_cfg(redis_server, batch_size=batch_size))

    assert client.get(KeyLayout(PREFIX).pointer) is None
    assert client.dbsize() == 0  # the partial version was deleted


def test_empty_run_is_refused(tmp_path, redis_server):
    client = redis_server.client()
    live = load_run(make_run(tmp_path, run=1), serving_cfg(redis_server)).version
    empty = make_run(tmp_path, run=2, users=0)

    with pytest.raises(DataValidationError, match="no users"):
        load_run(empty, serving_cfg(redis_server))

    assert assert_serves_run(client, 1, 60) == live


# --------------------------------------------------------------------------- crash safety


KILLED_LOADER = """
import sys, time
from recbatch.config import ServingConfig
from recbatch.serving.loader import load_run

def stall_after_three_batches(batches, users):
    if batches == 3:
        print("WROTE", users, flush=True)
        time.sleep(120)  # the test kills us here

load_run(sys.argv[1], ServingConfig(redis_url=sys.argv[2], key_prefix=sys.argv[3], batch_size=10),
         on_batch=stall_after_three_batches)
"""


def test_load_killed_midway_leaves_old_version_live(tmp_path, redis_server):
    client = redis_server.client()
    keys = KeyLayout(PREFIX)
    old = load_run(make_run(tmp_path, run=1), serving_cfg(redis_server)).version
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_LOADER, str(make_run(tmp_path, run=2)), redis_server.url, PREFIX],
        stdout=subprocess.PIPE, cwd=REPO, text=True,
    )
    try:
        assert proc.stdout.readline().split() == ["WROTE", "30"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    orphan = next(v for v in registered_versions(client, keys) if v != old)
    assert version_info(client, keys, orphan).state == "loading"
    assert len(version_keys(client, orphan)) == 30 + 1  # three batches + meta, never made live
    assert client.get(keys.pointer).decode() == old and history(client, keys) == [old]
    assert assert_serves_run(client, 1, 60) == old

    newest = load_run(make_run(tmp_path, run=3), serving_cfg(redis_server, keep_versions=3))
    assert orphan in newest.garbage_collected and version_keys(client, orphan) == []
    assert assert_serves_run(client, 3, 60) == newest.version


def test_load_that_does_not_fit_in_memory_fails_cleanly(tmp_path, redis_server, capsys):
    client = redis_server.client()
    live = load_run(make_run(tmp_path, run=1), serving_cfg(redis_server)).version
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", used + 100_000)  # room for a fraction of the next run
    too_big = make_run(tmp_path, run=2, users=3000)

    code = cli_main(["load", "--run", str(too_big), "--redis-url", redis_server.url,
                     "--set", f"serving.key_prefix={PREFIX}", "--set", "serving.batch_size=100"])

    err = capsys.readouterr().err
    assert code == 6 and "maxmemory" in err and "MSETNX" not in err, err
    assert registered_versions(client, KeyLayout(PREFIX)) == [live]  # the partial version was deleted
    assert assert_serves_run(client, 1, 60) == live


# --------------------------------------------------------------------------- concurrency


def test_readers_never_see_missing_or_mixed_versions(tmp_path, store):
    users, k = 150, 5
    runs = [make_run(tmp_path, run=r, users=users, k=k) for r in range(4)]
    cfg = serving_cfg(store, batch_size=10, keep_versions=2)
    run_of_version = {load_run(runs[0], cfg).version: 0}
    reads: list[tuple[int, str, list]] = []
    failures: list[str] = []
    done = threading.Event()
    progress = threading.Condition()  # notified on every read (or failure)

    def reader(seed: int) -> None:
        client, rng = store.client(), random.Random(seed)
        for _ in range(1_000_000):  # bounded; normally ended by `done`
            if done.is_set():
                return
            user = rng.randrange(users)
            try:
                recs = get_recommendations(client, user, prefix=PREFIX)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted below
                with progress:
                    failures.append(repr(exc))
                    progress.notify_all()
                return
            with progress:
                reads.append((user, recs.version, recs.item_ids) if recs else (user, "MISSING", []))
                progress.notify_all()

    def wait_for_reads(more: int) -> int:
        """Block until the readers have done `more` reads (or one failed); return how many they did."""
        with progress:
            before = len(reads)
            progress.wait_for(lambda: len(reads) >= before + more or failures, timeout=30)
            return len(reads) - before

    reads_during_loads = []

    def let_readers_in(batches: int, users_written: int) -> None:
        """Between batches of a load: wait for a read, so reads overlap every load by construction."""
        reads_during_loads.append(wait_for_reads(1))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for_reads(200)
        for r in (1, 2):
            run_of_version[load_run(runs[r], cfg, on_batch=let_readers_in).version] = r
            wait_for_reads(200)
        rolled_back_to = json.loads(_cli_out(["rollback", "--redis-url", store.url,
                                               "--set", f"serving.key_prefix={PREFIX}"]))["live"]
        assert run_of_version[rolled_back_to] == 1
        wait_for_reads(200)
        run_of_version[load_run(runs[3], cfg, on_batch=let_readers_in).version] = 3
        wait_for_reads(200)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)

    assert not failures
    assert not [r for r in reads if r[1] == "MISSING"]
    mixed = [r for r in reads if r[2] != expected_items(run_of_version[r[1]], r[0], k)]
    assert not mixed, mixed[:3]
    assert {run_of_version[v] for _, v, _ in reads} == {0, 1, 2, 3}  # every live version was read
    assert sum(reads_during_loads) > 0  # and reads did overlap the loads
    client = store.client()
    assert len(registered_versions(client, KeyLayout(PREFIX))) == 2  # keep_versions


def _cli_out(argv: list[str]) -> str:
    """Run the CLI in-process and return its stdout (exit code must be 0)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(argv) == 0
    return out.getvalue()


# --------------------------------------------------------------------------- rollback, GC, TTL


def test_rollback_flips_back_and_refuses_without_previous(tmp_path, store, capsys):
    client = store.client()
    cfg = serving_cfg(store)
    argv = ["rollback", "--redis-url", store.url, "--set", f"serving.key_prefix={PREFIX}"]
    first = load_run(make_run(tmp_path, run=1), cfg).version

    assert cli_main(argv) == 6  # nothing to go back to
    assert "no previous version" in capsys.readouterr().err

    second = load_run(make_run(tmp_path, run=2), cfg).version
    assert cli_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["rolled_back"] == second
    assert assert_serves_run(client, 1, 60) == first
    assert version_info(client, KeyLayout(PREFIX), second).meta["rolled_back_at"]

    third = load_run(make_run(tmp_path, run=3), cfg)  # the rolled-back version is dropped now
    assert third.previous_version == first and second in third.garbage_collected


def test_old_versions_beyond_keep_versions_are_deleted(tmp_path, store):
    client = store.client()
    keys = KeyLayout(PREFIX)
    cfg = serving_cfg(store, keep_versions=3)
    loaded = [load_run(make_run(tmp_path, run=r, users=20), cfg).version for r in range(5)]

    assert history(client, keys) == loaded[::-1][:3]
    assert registered_versions(client, keys) == loaded[2:]
    for gone in loaded[:2]:
        assert version_keys(client, gone) == []
    for kept in loaded[2:]:
        assert len(version_keys(client, kept)) == 20 + 1
    assert len(list(client.scan_iter(count=1000))) == 3 * 21 + 3  # + pointer, history, registry (every node)

    # keep_versions=1 still keeps the rollback target
    load_run(make_run(tmp_path, run=5, users=20), serving_cfg(store, keep_versions=1))
    assert len(registered_versions(client, keys)) == 2


def test_version_ttl_is_set_when_configured(tmp_path, store):
    client = store.client()
    without = load_run(make_run(tmp_path, run=1, users=10), serving_cfg(store)).version
    with_ttl = load_run(make_run(tmp_path, run=2, users=10), serving_cfg(store, version_ttl_seconds=3600)).version

    assert {client.ttl(key) for key in version_keys(client, without)} == {-1}
    ttls = {client.ttl(key) for key in version_keys(client, with_ttl)}
    assert ttls and all(3500 < t <= 3600 for t in ttls)
    assert client.ttl(KeyLayout(PREFIX).pointer) == -1  # the pointer itself never expires


# --------------------------------------------------------------------------- auth and secrets


def test_wrong_password_fails_clearly_without_leaking_it(tmp_path, redis_server_auth, capsys):
    run_dir = make_run(tmp_path, run=1, users=10)
    wrong = redis_server_auth.url.replace(redis_server_auth.password, "Wr0ng-Pa55")

    for url in (wrong, redis_server_auth.url.replace(f":{redis_server_auth.password}@", "")):
        code = cli_main(["load", "--run", str(run_dir), "--redis-url", url])
        captured = capsys.readouterr()
        assert code == 6
        assert "credentials" in captured.err or "Authentication" in captured.err, captured.err
        assert "127.0.0.1" in captured.err
        for secret in ("Wr0ng-Pa55", redis_server_auth.password):
            assert secret not in captured.err + captured.out


def test_password_url_from_named_env_var_loads(tmp_path, redis_server_auth, monkeypatch, caplog):
    run_dir = make_run(tmp_path, run=1, users=10)
    monkeypatch.setenv("RECBATCH_TEST_REDIS_URL", redis_server_auth.url)
    cfg = ServingConfig(redis_url_env="RECBATCH_TEST_REDIS_URL", key_prefix=PREFIX)

    with caplog.at_level("DEBUG"):
        result = load_run(run_dir, cfg)

    assert redis_server_auth.password not in json.dumps(result.__dict__) + caplog.text
    assert_serves_run(redis_server_auth.client(), 1, 10)
    monkeypatch.delenv("RECBATCH_TEST_REDIS_URL")
    with pytest.raises(UsageError, match="RECBATCH_TEST_REDIS_URL"):
        load_run(run_dir, cfg)


def test_unreachable_store_is_a_serving_error(tmp_path, redis_server):
    url = redis_server.url
    redis_server.stop()
    with pytest.raises(ServingStoreError, match="could not reach Redis"):
        load_run(make_run(tmp_path, run=1, users=5), ServingConfig(redis_url=url))


def test_mask_url_hides_only_the_password():
    assert mask_url("rediss://app:p%40ss@cache.internal:6380/2") == "rediss://app:***@cache.internal:6380/2"
    assert mask_url("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# --------------------------------------------------------------------------- other languages


@pytest.mark.parametrize("id_type", ["int", "string"])
def test_documented_javascript_reader_decodes_a_stored_value(tmp_path, redis_server, id_type):
    """The JavaScript reader in docs/serving.md, run with node against the live server."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    doc = (REPO / "docs" / "serving.md").read_text()
    script = re.search(r"```js\n(.*?)```", doc, re.S).group(1)
    (tmp_path / "reader.js").write_text(script)
    load_run(make_run(tmp_path, run=1, users=10, id_type=id_type, because=True), serving_cfg(redis_server))
    client = redis_server.client()

    for user in (user_key(4, id_type), user_key(6, id_type)):  # with and without because ids
        out = subprocess.run(
            [node, str(tmp_path / "reader.js"), "127.0.0.1", str(redis_server.port), PREFIX, str(user)],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        from_js = json.loads(out)
        recs = get_recommendations(client, user, prefix=PREFIX)
        assert from_js["version"] == recs.version and from_js["itemIds"] == recs.item_ids
        assert from_js["scores"] == pytest.approx(recs.scores) and from_js["becauseItemIds"] == recs.because_item_ids


def test_codec_rejects_foreign_values():
    with pytest.raises(ValueError, match="RBR1"):
        decode(b'{"json": true}' + b"\0" * 16)


@pytest.fixture(params=["redis", "cluster"])
def tls_store(request):
    """A password-protected, TLS-only store: one Redis, or a 3-master cluster (conftest.py)."""
    return request.getfixturevalue("redis_server_tls" if request.param == "redis" else "redis_cluster_tls")


def test_tls_url_with_password_loads_and_reads(tmp_path, tls_store, capsys):
    """On one Redis and on a cluster whose nodes speak only TLS (client, bus, replication)."""
    run_dir = make_run(tmp_path, run=1, users=10)
    plain = tls_store.url.replace("rediss://", "redis://").split("?")[0]

    result = load_run(run_dir, serving_cfg(tls_store))

    assert result.store.startswith("rediss://127.0.0.1") and tls_store.password not in result.store
    assert_serves_run(tls_store.client(), 1, 10)
    rollback = ["rollback", "--redis-url", tls_store.url, "--set", f"serving.key_prefix={PREFIX}"]
    assert cli_main(rollback) == 6  # reached over TLS: nothing to go back to yet
    assert "no previous version" in capsys.readouterr().err
    assert cli_main(["load", "--run", str(run_dir), "--redis-url", plain]) == 6  # no TLS: refused
    assert tls_store.password not in capsys.readouterr().err
    bad_option = f"{plain}?ssl_cert_reqs=required"
    assert cli_main(["load", "--run", str(run_dir), "--redis-url", bad_option]) == 2
    err = capsys.readouterr().err
    assert "ssl_cert_reqs" in err and tls_store.password not in err


# --------------------------------------------------------------------------- Redis Cluster specifics


def test_cluster_load_spreads_users_over_every_master_and_refuses_a_repeated_user(tmp_path, redis_cluster):
    run_dir = make_run(tmp_path, run=1, users=300)
    out = json.loads(_cli_out(["load", "--run", str(run_dir), "--redis-url", redis_cluster.url,
                               "--set", f"serving.key_prefix={PREFIX}"]))
    assert out["store"].endswith("(cluster of 3 primaries)") and redis_cluster.password not in json.dumps(out)
    client = redis_cluster.client()
    assert assert_serves_run(client, 1, 300) == out["version"]
    per_node = [redis_cluster.node(port).dbsize() for port in redis_cluster.ports]
    assert sum(per_node) == 300 + 1 + 3 and min(per_node) > 50  # users spread; meta + 3 control keys
    keys = KeyLayout(PREFIX)
    control = (keys.pointer, keys.history, keys.registry, keys.meta(out["version"]))
    assert len({client.keyslot(key) for key in control}) == 1  # the flip script's keys share a slot

    # A user repeated across batches: SET NX refuses it on a cluster as MSETNX does on one node.
    bad = _hand_made_run(tmp_path / "bad", [0, 1, 2, 3, 1], [[5]] * 5, ["m"] * 5)
    with pytest.raises(DataValidationError, match="already has a row"):
        load_run(bad, serving_cfg(redis_cluster, batch_size=2))
    assert client.get(keys.pointer).decode() == out["version"]
    assert registered_versions(client, keys) == [out["version"]]
    assert sum(redis_cluster.node(port).dbsize() for port in redis_cluster.ports) == 300 + 1 + 3


def test_cluster_wrong_password_fails_clearly_without_leaking_it(tmp_path, redis_cluster, capsys):
    url = redis_cluster.url.replace(redis_cluster.password, "wrong-Pa55word")
    code = cli_main(["load", "--run", str(make_run(tmp_path, run=1, users=10)), "--redis-url", url])
    assert code == 6
    err = capsys.readouterr().err
    assert "credentials" in err and "wrong-Pa55word" not in err


def test_cluster_master_killed_during_a_load_never_shows_readers_a_mixed_or_missing_version(
    tmp_path, redis_cluster_with_replicas
):
    """3 masters + 3 replicas: a master is SIGKILLed mid-load. The load completes after the
    failover or fails cleanly (exit code 6, pointer unchanged); either way every reader gets the
    whole previous run or the whole new one (or, during the failover, an error), never a mix or a gap."""
    cluster = redis_cluster_with_replicas
    users, k = 300, 5
    cfg = ServingConfig(redis_url=cluster.url, key_prefix=PREFIX, batch_size=20)
    runs = [make_run(tmp_path, run=r, users=users, k=k) for r in (1, 2)]
    run_of_version = {load_run(runs[0], cfg).version: 1}
    client = cluster.client()
    primaries = [node.port for node in client.get_primaries()]
    for port in primaries:  # the first version is on the replicas before anything fails
        assert cluster.node(port).execute_command("WAIT", 1, 10_000) == 1
    victim = next(p for p in primaries if p != cluster.ports[0])  # the URL's node stays up

    reads: list[tuple[int, str, list]] = []
    errors: list[str] = []
    done = threading.Event()

    def reader(seed: int) -> None:
        rng, own = random.Random(seed), cluster.client()
        while not done.is_set():
            user = rng.randrange(users)
            try:
                recs = get_recommendations(own, user, prefix=PREFIX)
            except Exception as exc:  # noqa: BLE001 - unavailability during the failover is allowed
                errors.append(type(exc).__name__)
                time.sleep(0.01)
                continue
            reads.append((user, recs.version, recs.item_ids) if recs else (user, "MISSING", []))

    def kill_victim(batches: int, users_written: int) -> None:
        if batches == 5:
            os.kill(cluster.processes[cluster.ports.index(victim)].pid, signal.SIGKILL)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(2)]
    for t in threads:
        t.start()
    try:
        try:
            run_of_version[load_run(runs[1], cfg, on_batch=kill_victim).version] = 2
            outcome = "completed"
        except ServingStoreError as exc:
            outcome = f"failed cleanly: {exc}"
        for port in cluster.ports:
            if port != victim:
                cluster.wait_until_ok(port)
        settled = len(reads)
        deadline = time.monotonic() + 20
        while len(reads) < settled + 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)

    live = cluster.client().get(KeyLayout(PREFIX).pointer).decode()
    assert run_of_version[live] == (2 if outcome == "completed" else 1), outcome
    assert assert_serves_run(cluster.client(), run_of_version[live], users, k) == live
    assert not [r for r in reads if r[1] == "MISSING"]
    mixed = [r for r in reads if r[2] != expected_items(run_of_version[r[1]], r[0], k)]
    assert not mixed, mixed[:3]
    assert len(reads) > 200, (len(reads), errors[:5])

    # After the failover the next load goes through and collects whatever the broken one left.
    again = load_run(runs[1], cfg)
    assert assert_serves_run(cluster.client(), 2, users, k) == again.version
    assert registered_versions(cluster.client(), KeyLayout(PREFIX)) == sorted({live, again.version})
