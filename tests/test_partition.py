"""The user partition hash: stable by definition, and consistent across partition counts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recbatch.data.partition import matching_partitions, partition_count, user_partition

MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:  # the published reference, one int at a time
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def test_the_hash_is_the_documented_one_for_int_and_string_ids():
    ints = [0, 1, 7, -3, 2**40 + 11, 123456789]
    strings = ["", "a", "user-0042", "é-ünïcode", "x" * 70]
    assert user_partition(pa.array(ints, pa.int64()), 64).tolist() == [_splitmix64(i & MASK) % 64 for i in ints]
    assert user_partition(pa.array(strings), 64).tolist() == [_splitmix64(_fnv1a64(s.encode())) % 64 for s in strings]
    sliced = pa.array(strings).slice(2, 2)  # an Arrow slice starts mid-buffer
    assert user_partition(sliced, 64).tolist() == user_partition(pa.array(strings[2:4]), 64).tolist()


def test_a_user_moves_only_between_matching_partitions_when_the_count_changes():
    ids = pa.array([f"u{i}" for i in range(5000)])
    small, large = user_partition(ids, 4), user_partition(ids, 32)
    for p in range(32):
        assert set(small[large == p].tolist()) <= set(matching_partitions(p, 32, 4))
    for p in range(4):
        assert set(large[small == p].tolist()) == set(matching_partitions(p, 4, 32))
    assert np.bincount(large, minlength=32).min() > 100  # spread evenly enough (156 expected)


def test_partition_count_is_the_power_of_two_that_bounds_partition_size():
    assert [partition_count(n, 100) for n in (0, 1, 100, 101, 399, 400, 401)] == [1, 1, 1, 2, 4, 4, 8]
