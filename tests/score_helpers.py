"""Test helpers for the scoring stage: embeddings written straight from random vectors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch.folders import open_folder
from recbatch.fs import Location
from recbatch.schemas import embeddings_schema
from recbatch.score import native
from recbatch.storage import publish_dir, staging_dir_for, write_manifest

RUN_DATE = dt.date(2026, 11, 28)


def load_native_or_skip(build: native.NativeBuild = native.NativeBuild()) -> native.NativeKernel:
    """The native kernel; a test failure where it must build (x86-64 Linux with a C compiler, as CI),
    a skip only on machines where the torch fallback is the design."""
    try:
        return native.load(build)
    except native.NativeKernelUnavailable as err:
        if native.expected_here():
            pytest.fail(f"the native top-K kernel must build on this machine (x86-64 Linux, C compiler): {err}")
        pytest.skip(f"no native kernel here: {err}")


def _write(folder: Path, ids: list, vectors: np.ndarray, id_column: str, id_type: str) -> None:
    staging = staging_dir_for(folder)
    table = pa.table(
        {
            id_column: pa.array(ids),
            "embedding": pa.array(list(vectors.astype(np.float32)), type=pa.list_(pa.float32())),
            "input_hash": pa.array(["h"] * len(ids)),
            "model_version": pa.array(["mv-test"] * len(ids)),
        }
    ).cast(embeddings_schema(id_type, id_column))
    pq.write_table(table, staging / "part-00000.parquet")
    write_manifest(staging, {"model_version": "mv-test", "rows": len(ids)})
    publish_dir(staging, folder)


def write_random_embeddings(snapshot, out: Path, dim: int, seed: int = 0) -> tuple[Path, Path]:
    """Item and user embedding folders for every item and user of `snapshot`."""
    rng = np.random.default_rng(seed)
    items = pl.read_parquet(snapshot.table_path("items"))
    users = pl.read_parquet(snapshot.table_path("users"))
    items_dir, users_dir = out / "items", out / "users"
    _write(items_dir, items["item_id"].to_list(), rng.normal(size=(items.height, dim)), "item_id", snapshot.id_type)
    _write(users_dir, users["user_id"].to_list(), rng.normal(size=(users.height, dim)), "user_id", snapshot.id_type)
    return items_dir, users_dir


def read_staged(staged: Location) -> tuple[pl.DataFrame, dict]:
    """A scored run's rows (sorted by user) and its verified manifest, staged or published, on either kind of root."""
    with open_folder(staged) as pinned:
        pinned.verify()
        return pl.from_arrow(pinned.read_table()).sort("user_id"), pinned.manifest
