"""Which partition a user belongs to: a stable hash of ``user_id``.

Every table that grows with users (interactions, users, the split, user
embeddings) is written as one file per partition, and a user's rows all land
in the same partition of every table. A later stage then joins a user's
history, embedding and seen list by reading partition ``p`` of each table on
one worker, never gathering users on the driver.

The hash is defined here, bit for bit, rather than borrowed from a library
whose hash may change between versions: a snapshot written today must be
readable, partition for partition, by next year's code. Integer ids go through
the splitmix64 finaliser; string ids through FNV-1a 64 over their UTF-8 bytes,
then the same finaliser. The partition count is a power of two, so when it
grows (more users) or shrinks, partition ``p`` of one count holds exactly the
users of the partitions ``q`` of the other count with ``q % min == p % min``
(``matching_partitions``): incremental work can still find a user's old rows.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Recorded in the snapshot manifest: a reader with another scheme must not guess.
SCHEME = "splitmix64(int) / fnv1a64+splitmix64(utf8) mod partitions"

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def partition_count(users: int, users_per_partition: int) -> int:
    """The smallest power of two that keeps every partition under `users_per_partition` users on average."""
    needed = max(1, math.ceil(users / max(1, users_per_partition)))
    return 1 << (needed - 1).bit_length()


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: every input bit moves every output bit (uint64 -> uint64)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _fnv1a64(strings: pa.Array) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, vectorised over rows (a loop over byte positions only)."""
    strings = strings.cast(pa.large_string())
    if not len(strings):
        return np.zeros(0, dtype=np.uint64)
    _, offsets, data = strings.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data = np.frombuffer(data, dtype=np.uint8)
    lengths = np.diff(offsets)  # [n]
    h = np.full(len(strings), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            rows = np.flatnonzero(lengths > j)
            h[rows] = (h[rows] ^ data[offsets[rows] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def user_hash(user_ids: pa.Array | pa.ChunkedArray, salt: int | None = None) -> np.ndarray:
    """The stable 64-bit hash ``[n]`` uint64 of each id (int64 or string ids; never null).

    With a `salt` (e.g. a seed) it is another, equally stable hash: a seeded
    sample of users ("the users with the smallest salted hash") is then the
    same whichever partition or worker looks at a user.
    """
    if isinstance(user_ids, pa.ChunkedArray):
        user_ids = user_ids.combine_chunks()
    if pa.types.is_integer(user_ids.type):
        keys = user_ids.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
    else:
        keys = _fnv1a64(pc.cast(user_ids, pa.string()))
    if salt is not None:
        keys = keys ^ _splitmix64(np.array([salt], dtype=np.int64).view(np.uint64))
    return _splitmix64(keys)


def user_partition(user_ids: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """The partition ``[n]`` int32 of each id (int64 or string ids; never null: ingest rejects those)."""
    if partitions & (partitions - 1) or partitions < 1:
        raise ValueError(f"partitions must be a power of two, got {partitions}")
    return (user_hash(user_ids) & np.uint64(partitions - 1)).astype(np.int32)


def matching_partitions(partition: int, partitions: int, other_partitions: int) -> list[int]:
    """The partitions of an `other_partitions`-way layout that hold the users of `partition`
    (of a `partitions`-way layout), both powers of two."""
    common = min(partitions, other_partitions)
    return [q for q in range(other_partitions) if q % common == partition % common]
