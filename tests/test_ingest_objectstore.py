"""The snapshot stage on an object-store root (``s3://``), against a real S3 server (SeaweedFS).

Ingest to ``s3://bucket/prefix`` must publish what it publishes on a local root
(the same content hash, the same files byte for byte), through the
object-store protocol (attempt prefix, manifest, commit marker), with its
scratch files under the root where every Ray task reaches them, and gone
however ingest ends. The stages not converted yet refuse such a root.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from s3_helpers import assert_refused_with_wrong_credentials, storage_flags

from recbatch import objectstore
from recbatch.cli import main
from recbatch.config import GenerateConfig, load_config
from recbatch.data.generate import generate_demo
from recbatch.data.ingest import ingest
from recbatch.data.snapshot import PARTITIONED, TABLES, Snapshot
from recbatch.errors import UsageError
from recbatch.folders import read_committed
from recbatch.layout import OBJECT_STORE_STAGES, RunLayout

SMALL = dict(users=60, items=40, topics=4, interactions_per_user=12, id_type="string")
USERS_PER_PARTITION = 20  # 60 users -> 4 partitions: the per-partition work runs as Ray tasks


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The demo catalog with ratings, and an unknown item on every 7th interaction (bad rows)."""
    generated, folder = tmp_path_factory.mktemp("generated"), tmp_path_factory.mktemp("source")
    generate_demo(GenerateConfig(**SMALL), generated)
    for name in ("items.parquet", "users.parquet"):
        (folder / name).write_bytes((generated / name).read_bytes())
    row = pl.int_range(pl.len())
    pl.read_parquet(generated / "interactions.parquet").with_columns(
        item_id=pl.when(row % 7 == 0).then(pl.lit("no-such-item")).otherwise(pl.col("item_id")),
        rating=(row % 10 + 1) / 2,
    ).write_parquet(folder / "interactions.parquet")
    return folder


def _config(root: str, source: Path, s3_root):
    """Bad rows quarantined and injected profiles looked for: every scratch table of ingest is written."""
    storage = s3_root.storage
    return load_config(None, {
        "root": root, "ingest.source": str(source), "ingest.users_per_partition": USERS_PER_PARTITION,
        "ingest.on_bad_rows": "quarantine", "ingest.detect_injected_profiles": True,
        "storage.endpoint": storage.endpoint, "storage.scheme": storage.scheme, "storage.region": storage.region,
    })


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def test_an_s3_root_gets_the_snapshot_a_local_root_gets_and_a_rerun_is_a_noop(
    tmp_path, source, s3_root, ray_with_credentials
):
    here = ingest(_config(str(tmp_path / "root"), source, s3_root))
    there = ingest(_config(s3_root.uri, source, s3_root))

    assert there.hash == here.hash and there.partitions == here.partitions == 4
    assert there.location.uri == f"{s3_root.uri}/snapshots/{here.hash}"
    assert there.counts == here.counts and there.counts["quarantined_interactions"] > 0
    assert "quarantine/interactions.parquet" in there.manifest["files"]
    # the same files, byte for byte (sizes and sha256 in both manifests), under the committed attempt
    assert there.manifest["files"] == here.manifest["files"]
    marker = objectstore.read_marker(there.location)
    assert there.files_at == there.location.join(marker["attempt"])
    snapshot_keys = [k for k in s3_root.keys() if "/snapshots/" in k]
    assert sorted(snapshot_keys) == sorted(
        [f"{there.location.path}/_SUCCESS", f"{there.files_at.path}/_manifest.json"]
        + [f"{there.files_at.path}/{name}" for name in there.manifest["files"]]
    )  # the scratch files are gone

    reopened = Snapshot.open(s3_root.locate("snapshots", here.hash))
    for table in TABLES:
        assert _sorted(reopened.scan(table).collect()).equals(_sorted(here.scan(table).collect())), table
    for table in PARTITIONED:
        for p in range(here.partitions):
            mine, theirs = reopened.scan_partition(table, p).collect(), here.scan_partition(table, p).collect()
            assert mine.equals(theirs), (table, p)

    again = ingest(_config(s3_root.uri, source, s3_root))  # a rerun: nothing written
    assert again.hash == here.hash and objectstore.read_marker(there.location) == marker
    assert sorted(k for k in s3_root.keys() if "/snapshots/" in k) == sorted(snapshot_keys)


def test_snapshot_tables_are_the_files_the_manifest_names(tmp_path, source, s3_root, ray_with_credentials):
    """Readers take exactly the manifest's files: a stray object in the attempt is never read."""
    snapshot = ingest(_config(s3_root.uri, source, s3_root))
    rows = snapshot.interactions().collect().height
    partition = snapshot.scan_partition("interactions", 1).collect()
    stray = snapshot.files_at.join("interactions", "part-00001-stray.parquet")  # a listing would take it
    with stray.filesystem.open_output_stream(stray.path) as out:
        partition.write_parquet(out)
    reopened = Snapshot.open(snapshot.location)
    assert reopened.interactions().collect().height == rows
    assert reopened.scan_partition("interactions", 1).collect().equals(partition)
    manifest, files_at = read_committed(snapshot.location)
    assert "interactions/part-00001-stray.parquet" not in manifest["files"] and files_at == snapshot.files_at


def test_a_bad_source_publishes_nothing_and_leaves_no_scratch(source, s3_root, ray_with_credentials, capsys):
    """The unknown items fail the source (ingest.on_bad_rows: fail), found by the partition tasks
    after the scratch files were written."""
    code = main(["ingest", "--root", s3_root.uri, "--source", str(source),
                 "--set", f"ingest.users_per_partition={USERS_PER_PARTITION}", *storage_flags(s3_root)])
    assert code == 3
    err = capsys.readouterr().err
    assert "unknown item_id" in err and "interactions.parquet" in err
    assert s3_root.keys() == []  # no snapshot, no marker, no scratch


def test_wrong_credentials_name_the_bucket_and_exit_non_zero(source, s3_root, monkeypatch, capsys):
    assert_refused_with_wrong_credentials(s3_root, ["ingest", "--source", str(source)], monkeypatch, capsys)


def test_stages_not_converted_yet_refuse_an_s3_root(tmp_path, s3_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where a path "s3://..." would have become a local folder "s3:"
    code = main(["demo", "--root", s3_root.uri, *storage_flags(s3_root)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"recbatch demo does not run on an object-store root ({s3_root.uri}) yet" in err
    assert "do so far" in err and all(f"recbatch {stage}" in err for stage in OBJECT_STORE_STAGES)
    layout = RunLayout.of(s3_root.uri, s3_root.storage)
    assert layout.at.snapshot("abc").uri == f"{s3_root.uri}/snapshots/abc"
    with pytest.raises(UsageError, match=f"{s3_root.uri}/models is on an object store, where this stage cannot run"):
        layout.models
    assert not (tmp_path / "s3:").exists() and s3_root.keys() == []
