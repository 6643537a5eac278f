"""Folders written as parts by workers and committed by the driver from their records."""

from __future__ import annotations

import pyarrow as pa
import pytest

from recbatch.errors import IntegrityError
from recbatch.parts import PARTITION, commit_parts, partition_of_name, write_part, write_partitioned
from recbatch.storage import staging_dir_for, verify_manifest, write_manifest


def test_a_part_no_worker_reported_is_deleted_at_commit(tmp_path):
    staging = staging_dir_for(tmp_path / "out")
    kept = write_part(pa.table({"user_id": [1, 2]}), staging, partition=0)
    orphan = write_part(pa.table({"user_id": [1]}), staging, partition=0)  # a killed attempt's part
    manifest = commit_parts(staging, [kept], {"kind": "test"})
    assert set(manifest["files"]) == {kept["file"]} and manifest["rows"] == 2
    assert not (staging / orphan["file"]).exists()
    assert verify_manifest(staging)["files"][kept["file"]]["sha256"] == kept["sha256"]  # the worker's checksum holds


def test_a_record_without_its_file_fails_the_commit(tmp_path):
    staging = staging_dir_for(tmp_path / "out")
    record = write_part(pa.table({"user_id": [1]}), staging, partition=3)
    (staging / record["file"]).unlink()
    with pytest.raises(IntegrityError, match=r"missing \[.part-00003"):
        write_manifest(staging, {}, files={record["file"]: {"bytes": 1, "sha256": "x"}})


def test_rows_are_cut_into_parts_by_partition_and_size(tmp_path):
    table = pa.table({"user_id": list(range(7)), PARTITION: pa.array([2, 0, 2, 2, 0, 2, 2], pa.int32())})
    records = write_partitioned(table, tmp_path, max_rows=3)
    by_partition = sorted((partition_of_name(r["file"]), r["rows"]) for r in records)
    assert by_partition == [(0, 2), (2, 2), (2, 3)]
