"""The suppression list: which users the next ingest must leave out, without naming them.

The source data still holds an erased user until its owner deletes them
there, so every later ingest has to recognise and drop their rows. The list
that makes that possible keeps no id: only a keyed hash (HMAC-SHA256) of each
id, under a random key made once per root. Ingest hashes the source's ids
with the same key and drops the matches. Why a key and not a plain hash: ids
are small (often integers), so an unkeyed hash is reversed by hashing every
candidate id; without the key the list says nothing about who is in it.

    <root>/erasure/_key              32 random bytes (hex), owner-only permissions on a local root
    <root>/erasure/suppressed.parquet  user_hash (hex), request_id: one row per erased user

Both live on either kind of root. The key is created exactly once, even by
two requests at once (``fs.write_new``: ``O_EXCL`` locally, a conditional PUT
on S3); the list is replaced whole, so a reader finds the old list or the new.
On an object store the key is as private as the bucket's access policy makes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import secrets
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from recbatch.config import StorageConfig
from recbatch.data.validate import Partition
from recbatch.fs import access, is_file, write_bytes, write_new
from recbatch.layout import RunLayout
from recbatch.parquet_io import read_parquet

KEY_BYTES = 32


def _read_key(layout: RunLayout) -> bytes | None:
    """The root's key (on either kind of root), or None before its first erasure."""
    key = layout.at.erasure_key
    if not is_file(key):
        return None
    with access(key, "read the erasure key"), key.filesystem.open_input_stream(key.path) as f:
        return bytes.fromhex(f.read().decode().strip())


def _key(layout: RunLayout, storage: StorageConfig) -> bytes:
    """The root's key, made on first use; of two requests making it at once, one writes and both use it."""
    if not is_file(layout.at.erasure_key):
        write_new(layout.at.erasure_key, secrets.token_hex(KEY_BYTES).encode(), storage)
    key = _read_key(layout)
    assert key is not None  # made above
    return key


def hash_ids(key: bytes, ids: list) -> list[str]:
    """The keyed hash of each id's text (an integer id as its decimal text)."""
    return [hmac.new(key, str(i).encode(), hashlib.sha256).hexdigest() for i in ids]


@dataclass(frozen=True)
class SuppressionList:
    """The erased users' hashes under one root, and the key that made them."""

    key: bytes
    hashes: frozenset[str]

    @classmethod
    def load(cls, layout: RunLayout) -> "SuppressionList | None":
        """The root's list, or None when nobody was ever erased there."""
        key = _read_key(layout)
        if key is None or not is_file(layout.at.suppression_list):
            return None
        hashes = read_parquet([layout.at.suppression_list], columns=["user_hash"])["user_hash"]
        return cls(key, frozenset(hashes.to_list()))

    def erased_ids(self, ids: pl.Series) -> pl.Series:
        """Those of `ids` (any type) that belong to erased users; each distinct id is hashed once."""
        distinct = ids.drop_nulls().unique()
        if distinct.is_empty():
            return distinct
        text = distinct.cast(pl.String).str.strip_chars().to_list()
        hit = [h in self.hashes for h in hash_ids(self.key, text)]
        return distinct.filter(pl.Series(hit, dtype=pl.Boolean))

    def drop_erased(self, frame: pl.DataFrame, column: str = "user_id") -> tuple[pl.DataFrame, int]:
        """`frame` without the erased users' rows, and how many rows went."""
        if column not in frame.columns:
            return frame, 0
        kept = frame.filter(~pl.col(column).is_in(self.erased_ids(frame[column]).implode()))
        return kept, frame.height - kept.height


def add_to_suppression_list(layout: RunLayout, ids: pa.Array, request_id: str, storage: StorageConfig) -> int:
    """Record `ids` as erased (hashes only); returns how many were not on the list yet.

    The list is written whole over the old one (``fs.write_bytes``), so a
    reader finds the old list or the new one, never a torn file.
    """
    key = _key(layout, storage)
    new = pl.DataFrame({"user_hash": hash_ids(key, ids.to_pylist()), "request_id": request_id})
    location = layout.at.suppression_list
    if is_file(location):
        old = read_parquet([location])
        new = new.filter(~pl.col("user_hash").is_in(old["user_hash"].implode()))
        table = pl.concat([old, new])
    else:
        table = new
    data = io.BytesIO()
    table.sort("user_hash").write_parquet(data)
    write_bytes(location, data.getvalue())
    return new.height


def without_erased_users(partition: Partition, suppressed: SuppressionList) -> tuple[Partition, dict[str, int]]:
    """One validated user partition minus the erased users' rows (quarantined rows too), and counts of what went.

    Ingest calls it only when the root has a suppression list, so snapshots of
    a root that never erased anyone carry no erasure counts.
    """
    interactions, n_interactions = suppressed.drop_erased(partition.interactions)
    users, n_users = suppressed.drop_erased(partition.users)
    quarantine, n_quarantined = {}, 0
    for name, frame in partition.quarantine.items():
        quarantine[name], n = suppressed.drop_erased(frame)
        n_quarantined += n
    counts = {"erased_interactions": n_interactions, "erased_users": n_users,
              "erased_quarantined_rows": n_quarantined}
    return dataclasses.replace(partition, interactions=interactions, users=users, quarantine=quarantine), counts
