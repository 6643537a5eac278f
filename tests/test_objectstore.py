"""Complete-or-absent folders on a real S3 server (SeaweedFS), through the one API both kinds of root share.

The object-store protocol (recbatch/objectstore.py): parts under an attempt
prefix, then its manifest, then the commit marker; readers go marker ->
manifest -> files. Each test runs against ``weed server`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from recbatch import folders, objectstore
from recbatch.config import StorageConfig, load_config
from recbatch.errors import IntegrityError, StorageAccessError, UsageError
from recbatch.fs import Location, check_access, local, locate, read_bytes
from recbatch.storage import MANIFEST, RETIRED_GRACE_SECONDS, SUCCESS


@pytest.fixture(params=["posix", "s3"])
def runs(request, tmp_path) -> Location:
    """The parent of the output folders: a local folder, or a prefix in a fresh S3 bucket."""
    if request.param == "posix":
        return local(tmp_path / "root" / "recommendations")
    return request.getfixturevalue("s3_root").locate("recommendations")


def _publish(final: Location, tables: dict[str, pa.Table], **fields) -> dict:
    """What a stage does: parts into a fresh staging location, the manifest, the publish."""
    staging = folders.staging_for(final)
    for name, table in tables.items():
        pq.write_table(table, staging.join(name).path, filesystem=staging.filesystem)
    manifest = folders.write_manifest(staging, fields)
    folders.publish(staging, final)
    return manifest


def _users(first: int, n: int) -> pa.Table:
    return pa.table({"user_id": pa.array(range(first, first + n), pa.int64())})


def test_locate_spells_each_kind_of_root():
    storage = StorageConfig(endpoint="127.0.0.1:9", scheme="http", region="eu-west-1")
    s3 = locate("s3://bucket/some/root/", storage)
    assert isinstance(s3.filesystem, pafs.S3FileSystem) and s3.filesystem.region == "eu-west-1"
    assert (s3.path, s3.bucket, s3.key, s3.uri) == ("bucket/some/root", "bucket", "some/root", "s3://bucket/some/root")
    assert s3.join("dt=2026-11-28", SUCCESS).uri == f"s3://bucket/some/root/dt=2026-11-28/{SUCCESS}"
    assert s3.join("a").parent == s3 and s3.is_object_store
    gs = locate("gs://bucket/r", storage)
    assert isinstance(gs.filesystem, pafs.GcsFileSystem) and gs.uri == "gs://bucket/r"
    here = locate("relative/dir", storage)
    assert isinstance(here.filesystem, pafs.LocalFileSystem) and here.path == os.path.abspath("relative/dir")
    assert not here.is_object_store and locate("file:///tmp/x", storage).path == "/tmp/x"
    with pytest.raises(UsageError, match="unsupported storage scheme 'hdfs://'"):
        locate("hdfs://nn/root", storage)
    with pytest.raises(UsageError, match="names no bucket"):
        locate("s3://", storage)


def test_storage_config_keys_and_their_overrides():
    cfg = load_config(None, {"storage.endpoint": "127.0.0.1:8333", "storage.scheme": "http",
                             "storage.region": "us-east-1", "root": "s3://bucket/recbatch"})
    assert (cfg.storage.endpoint, cfg.storage.scheme, cfg.storage.region) == ("127.0.0.1:8333", "http", "us-east-1")
    assert cfg.root == "s3://bucket/recbatch"  # not made into a local absolute path
    assert cfg.to_record()["storage"] == {"endpoint": "127.0.0.1:8333", "region": "us-east-1", "scheme": "http"}
    with pytest.raises(UsageError, match="'storage.endpoint'.*host\\[:port\\].*storage.scheme"):
        load_config(None, {"storage.endpoint": "http://127.0.0.1:8333"})
    with pytest.raises(UsageError, match="'storage.scheme'"):
        load_config(None, {"storage.scheme": "ftp"})


def test_publish_then_read_round_trip(runs):
    final = runs.join("dt=2026-11-28")
    assert not folders.is_complete(final)
    with pytest.raises(IntegrityError, match=f"no {SUCCESS} marker"):
        folders.open_folder(final)
    manifest = _publish(final, {"part-00000.parquet": _users(0, 5), "part-00001.parquet": _users(5, 3)}, rows=8)
    assert sorted(manifest["files"]) == ["part-00000.parquet", "part-00001.parquet"]
    assert folders.is_complete(final)
    assert folders.read_manifest(final)["rows"] == 8
    assert folders.verify_manifest(final)["files"] == manifest["files"]
    assert folders.read_parquet_folder(final)["user_id"].to_pylist() == list(range(8))
    with folders.open_folder(final) as pinned:
        assert [name for name, _ in pinned.parquet_files()] == ["part-00000.parquet", "part-00001.parquet"]
        assert pq.ParquetFile(pinned.parquet_files()[1][1]).read()["user_id"].to_pylist() == [5, 6, 7]


def test_a_rerun_replaces_the_folder_whole_and_a_pinned_reader_keeps_its_run(runs):
    final = runs.join("dt=2026-11-28")
    _publish(final, {f"part-{i:05d}-a.parquet": _users(10 * i, 2) for i in range(3)}, run="a")
    before = folders.open_folder(final)  # pinned before the rerun
    _publish(final, {"part-00000-b.parquet": _users(100, 4)}, run="b")
    assert folders.read_manifest(final)["run"] == "b"
    assert folders.read_parquet_folder(final)["user_id"].to_pylist() == [100, 101, 102, 103]  # nothing of run a
    folders.verify_manifest(final)
    with before:  # the run it pinned is still there, whole, through the grace period
        assert before.manifest["run"] == "a"
        before.verify()
        assert before.read_table()["user_id"].to_pylist() == [0, 1, 10, 11, 20, 21]
    assert folders.remove_stale_staging(runs) == []  # run a is within its grace period: kept
    if final.is_object_store:
        (retired,) = objectstore.retired_copies(final)
        later = time.time_ns() + RETIRED_GRACE_SECONDS * 1_000_000_000
        assert objectstore.remove_stale_staging(runs, now_ns=later) == [retired]
        assert objectstore.data_files(retired) == {}  # run a's objects are gone
        _publish(final, {"part-00000-c.parquet": _users(7, 1)}, run="c")
        assert folders.read_parquet_folder(final)["user_id"].to_pylist() == [7]
        assert objectstore.read_marker(final)["attempt"] == objectstore.attempts(final)[-1].name


def test_parts_reported_by_their_writers_are_not_read_back_but_checked(runs):
    final = runs.join("dt=2026-11-28")
    staging = folders.staging_for(final)
    names = ["part-00000.parquet", "part-00001.parquet"]
    records = {name: folders.write_parquet_part(_users(10 * i, 3), staging.join(name)) for i, name in enumerate(names)}
    stray = staging.join("part-00002.parquet")  # written, but its writer's record never arrived
    folders.write_parquet_part(_users(99, 1), stray)
    with pytest.raises(IntegrityError, match="extra \\['part-00002.parquet'\\]"):
        folders.write_manifest(staging, {"run": "a"}, files=records)
    stray.filesystem.delete_file(stray.path)
    wrong = {**records, "part-00001.parquet": {**records["part-00001.parquet"], "bytes": 1}}
    with pytest.raises(IntegrityError, match="wrong size \\['part-00001.parquet'\\]"):
        folders.write_manifest(staging, {"run": "a"}, files=wrong)
    assert not folders.is_complete(final)  # nothing published by the refusals
    manifest = folders.write_manifest(staging, {"run": "a"}, files=records)
    folders.publish(staging, final)
    assert folders.verify_manifest(final, checksums=True)["files"] == manifest["files"] == records
    assert folders.read_parquet_folder(final)["user_id"].to_pylist() == [0, 1, 2, 10, 11, 12]


WRITER_KILLED_BEFORE_ITS_MARKER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa, pyarrow.parquet as pq
    from recbatch import folders
    from recbatch.config import StorageConfig
    from recbatch.fs import locate

    final = locate(sys.argv[1], StorageConfig(endpoint=sys.argv[2] or None, scheme="http", region="us-east-1"))
    staging = folders.staging_for(final)
    for i in range(3):
        pq.write_table(pa.table({"user_id": pa.array([1000 + i], pa.int64())}),
                       staging.join(f"part-{i:05d}-killed.parquet").path, filesystem=staging.filesystem)
    folders.write_manifest(staging, {"run": "killed"})
    print(staging.path, flush=True)
    sys.stdin.read()  # killed here: parts and manifest written, the marker not
    folders.publish(staging, final)
    """
)


def test_a_publish_killed_before_its_marker_leaves_the_previous_run(runs, request):
    final = runs.join("dt=2026-11-28")
    _publish(final, {"part-00000-ok.parquet": _users(0, 3)}, run="ok")
    endpoint = request.getfixturevalue("s3_server").endpoint if runs.is_object_store else ""
    writer = subprocess.Popen([sys.executable, "-c", WRITER_KILLED_BEFORE_ITS_MARKER, final.uri, endpoint],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        staging_path = writer.stdout.readline().strip()
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # as a crash would, before the marker
        writer.wait()
        writer.stdin.close()
        writer.stdout.close()
    staging = Location(final.filesystem, staging_path, final.scheme)
    assert len(objectstore.data_files(staging)) == 3  # its parts were written ...
    assert folders.read_manifest(final)["run"] == "ok"  # ... and no reader sees them
    assert folders.read_parquet_folder(final)["user_id"].to_pylist() == [0, 1, 2]
    folders.verify_manifest(final)
    (removed,) = folders.remove_stale_staging(runs)  # the next night's cleanup
    assert removed.path == staging_path
    assert final.filesystem.get_file_info(staging_path).type == pafs.FileType.NotFound
    assert folders.read_parquet_folder(final)["user_id"].to_pylist() == [0, 1, 2]


def test_readers_take_only_the_files_the_manifest_names(s3_root):
    final = s3_root.locate("recommendations", "dt=2026-11-28")
    _publish(final, {"part-00000.parquet": _users(0, 2)})
    (attempt,) = objectstore.attempts(final)
    stray = attempt.join("part-99999-stray.parquet")  # e.g. a copy someone dropped in
    pq.write_table(_users(500, 1), stray.path, filesystem=stray.filesystem)
    assert folders.read_parquet_folder(final)["user_id"].to_pylist() == [0, 1]
    with pytest.raises(IntegrityError, match="extra \\['part-99999-stray.parquet'\\]"):
        folders.verify_manifest(final)
    stray.filesystem.delete_file(stray.path)
    part = attempt.join("part-00000.parquet")
    kept = part.filesystem.open_input_stream(part.path).read()
    part.filesystem.delete_file(part.path)
    with pytest.raises(IntegrityError, match="missing"):
        folders.open_folder(final)
    with part.filesystem.open_output_stream(part.path) as out:
        out.write(kept)
    folders.verify_manifest(final)
    with part.filesystem.open_output_stream(part.path) as out:  # a part overwritten in place: caught
        out.write(b"not the published bytes")
    with pytest.raises(IntegrityError, match="size 23 != manifest"):
        folders.verify_manifest(final)
    assert not folders.is_complete(final)
    marker = final.join(SUCCESS)
    with marker.filesystem.open_output_stream(marker.path) as out:
        out.write(b"")  # an empty POSIX-style _SUCCESS is no commit marker here
    with pytest.raises(IntegrityError, match="not a commit marker"):
        folders.open_folder(final)
    with pytest.raises(IntegrityError, match=f"no {MANIFEST}"):
        objectstore.publish(final.join(f"{objectstore.ATTEMPT_PREFIX}1-empty"), final)


def test_wrong_credentials_fail_naming_the_bucket_and_publish_nothing(s3_root, monkeypatch, caplog):
    from s3_helpers import credentials_env

    wrong = "wr0ng-Secret-Key-5d1e"
    credentials_env(monkeypatch, secret=wrong)
    caplog.set_level(logging.DEBUG)
    final = s3_root.locate("recommendations", "dt=2026-11-28")  # a new filesystem: resolves the new keys
    with pytest.raises(StorageAccessError) as err:
        check_access(final)
    with pytest.raises(StorageAccessError) as err_publish:
        _publish(final, {"part-00000.parquet": _users(0, 2)})
    for exc in (err.value, err_publish.value):
        assert exc.exit_code == 9
        assert f"bucket '{s3_root.bucket}'" in str(exc) and final.uri in str(exc)
        assert wrong not in str(exc) and wrong not in repr(exc.__cause__)
    assert wrong not in caplog.text
    assert s3_root.keys() == []  # nothing written, nothing published
    credentials_env(monkeypatch)
    assert not folders.is_complete(s3_root.locate("recommendations", "dt=2026-11-28"))


def test_a_missing_bucket_is_named(s3_root):
    root = locate("s3://no-such-bucket-here/root", s3_root.storage)
    with pytest.raises(StorageAccessError, match="bucket 'no-such-bucket-here' does not exist"):
        check_access(root)
    check_access(s3_root.locate())  # the fixture's bucket is there


def test_a_marker_replaced_while_it_is_read_is_read_again_not_called_corrupt(s3_root, monkeypatch):
    """pyarrow's S3 reader sizes an object with a HEAD, then GETs that range: a publish landing in
    between gives a reader the old length of the new marker. The nightly's readers met it on CI
    ("not a commit marker"); here the interleaving is forced on the real server."""
    final = s3_root.locate("recommendations", "dt=2026-11-28")
    _publish(final, {"part-00000.parquet": _users(0, 3)})
    marker = final.join(SUCCESS)
    replaced = json.dumps({**objectstore.read_marker(final), "retired": [{"attempt": "x" * 80, "retired_at_ns": time.time_ns()}]}).encode()

    def torn_once(location):  # open (HEAD: the old size), replace the marker, then read
        monkeypatch.setattr(objectstore, "read_bytes", read_bytes)
        stream = location.filesystem.open_input_stream(location.path)
        with location.filesystem.open_output_stream(location.path) as out:
            out.write(replaced)
        with stream:
            return stream.read()

    torn = torn_once(marker)
    assert len(torn) < len(replaced) and torn == replaced[: len(torn)]  # the server really tore it
    with pytest.raises(json.JSONDecodeError):
        json.loads(torn)

    _publish(final, {"part-00000.parquet": _users(0, 3)})  # a fresh, shorter marker
    monkeypatch.setattr(objectstore, "read_bytes", torn_once)
    # The published marker lists two retired attempts, so it is longer than `replaced`: the first read asks
    # for more bytes than the new object holds (on CI SeaweedFS returned bytes that were not even UTF-8).
    assert len(read_bytes(marker)) > len(replaced)
    assert objectstore.read_marker(final) == json.loads(replaced)  # read again, whole
