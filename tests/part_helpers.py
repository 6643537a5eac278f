"""Checks of folders written by workers as parts (recbatch/parts.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from recbatch.data.partition import user_partition
from recbatch.parts import partition_of_name


def assert_parts_by_partition(folder: Path, manifest: dict, partitions: int, max_rows: int | None = None) -> None:
    """Each part holds only the users of the partition its name gives (at most `max_rows` of them),
    and the parts together hold the manifest's rows."""
    rows = 0
    for name in manifest["files"]:
        users = pq.read_table(folder / name, columns=["user_id"]).column("user_id")
        assert (user_partition(users, partitions) == partition_of_name(name)).all(), name
        assert max_rows is None or len(users) <= max_rows, name
        rows += len(users)
    assert rows == manifest["rows"]
