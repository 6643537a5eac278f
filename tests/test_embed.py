"""The embedding stage on real Ray, real Parquet and a real (tiny) model.

Snapshots are written by hand in the documented layout so a test controls
exactly which item texts change between two runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from recbatch.config import Config, config_from_dict
from recbatch.data.snapshot import Snapshot, partitioned_files
from recbatch.fs import Location
from recbatch.layout import RunLayout, local_path
from recbatch.schemas import check_schema, embeddings_schema
from recbatch.storage import publish_dir, staging_dir_for, verify_manifest, write_manifest
from embed_helpers import reference_embeddings
from part_helpers import assert_parts_by_partition

N_ITEMS = 200
N_USERS = 40
EVENTS_PER_USER = 8
PARTITIONS = 4
GENRES = ["Drama", "Comedy", "Action|Thriller", "Sci-Fi", "Romance|Comedy", "Documentary"]


def make_items(id_type: str, edited: set[int] = frozenset()) -> pl.DataFrame:
    """Items with texts of very different lengths (bucketing has something to do)."""
    rows = []
    for i in range(N_ITEMS):
        title = f"Item {i} " + " ".join(["long"] * (i % 17)) + (" (edited)" if i in edited else "")
        rows.append(
            {
                "item_id": _id(i, id_type),
                "title": title,
                "genres": GENRES[i % len(GENRES)],
                "description": None if i % 3 else f"a story about topic {i % 7}",
                "available": True,
                "is_cold": False,
            }
        )
    return pl.DataFrame(rows)


def make_snapshot(root: Path, id_type: str, edited: set[int] = frozenset()) -> Snapshot:
    """A published snapshot: items, users with features, interactions and a split."""
    rng = np.random.default_rng(3)
    items = make_items(id_type, edited)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    events = [
        {"user_id": _id(u, id_type), "item_id": _id(int(i), id_type), "ts": start + dt.timedelta(hours=u * 100 + k)}
        for u in range(N_USERS)
        for k, i in enumerate(rng.choice(N_ITEMS, EVENTS_PER_USER, replace=False))
    ]
    interactions = pl.DataFrame(events).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    position = pl.int_range(pl.len()).over("user_id")
    split = interactions.with_columns(
        pl.when(position >= EVENTS_PER_USER - 2)
        .then(pl.lit("test"))
        .when(position == EVENTS_PER_USER - 3)
        .then(pl.lit("validation"))
        .otherwise(pl.lit("train"))
        .alias("split")
    )
    users = pl.DataFrame(
        {
            "user_id": [_id(u, id_type) for u in range(N_USERS + 2)],  # two users with no interactions
            "country": [["fr", "de", None][u % 3] for u in range(N_USERS + 2)],
            "age": [float(18 + u % 40) for u in range(N_USERS + 2)],
        }
    )
    digest = hashlib.sha256(items.write_json().encode() + interactions.write_json().encode()).hexdigest()[:12]
    final = RunLayout.of(root).snapshot(digest)
    staging = staging_dir_for(final)
    tables = {f"{name}.parquet": table.to_arrow() for name, table in
              [("items", items), ("users", users), ("interactions", interactions), ("split", split)]}
    for name, table in partitioned_files(tables, PARTITIONS):  # users embedded a partition per actor call
        (staging / name).parent.mkdir(exist_ok=True)
        pq.write_table(table, staging / name)
    counts = {"items": N_ITEMS, "users": users.height, "interactions": interactions.height}
    write_manifest(staging, {"snapshot_hash": digest, "id_type": id_type, "counts": counts,
                             "partitioning": {"partitions": PARTITIONS}})
    return Snapshot.open(publish_dir(staging, final))


def _id(i: int, id_type: str):
    return i if id_type == "int" else f"id-{i:04d}"


def make_config(root: Path, tiny_bert_dir: Path, **embed) -> Config:
    return config_from_dict(
        {
            "root": str(root),
            "model": {"encoder": str(tiny_bert_dir), "embedding_dim": 16, "user_heads": 2, "history_length": 5,
                      "max_text_tokens": 32},
            "embed": {"batch_size": 16, "num_actors": 2, "cpus_per_actor": 1.0, **embed},
        }
    )


def read_embeddings(published: Location, id_column: str) -> pl.DataFrame:
    """A published embeddings folder (on a local root), checked against the schema contract."""
    folder = local_path(published)
    frame = pl.read_parquet(folder / "*.parquet")
    id_type = "int" if frame[id_column].dtype.is_integer() else "string"
    for part in folder.glob("*.parquet"):
        check_schema(pq.read_schema(part), embeddings_schema(id_type, id_column), str(part))
    return frame.sort(id_column)


def matrix(frame: pl.DataFrame) -> np.ndarray:
    return np.asarray(frame["embedding"].to_list(), dtype=np.float32)


def top_k(users: np.ndarray, items: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-K item rows per user, ties by row (what any scorer must agree on)."""
    scores = users @ items.T  # [U, N]
    return np.lexsort((np.broadcast_to(np.arange(items.shape[0]), scores.shape), -scores.round(5)), axis=1)[:, :k]


def _init_model(cfg: Config, tiny_bert_dir: Path, snapshot: Snapshot) -> Path:
    from recbatch.model.artifact import init_artifact

    return init_artifact(cfg, str(tiny_bert_dir), snapshot, RunLayout.of(cfg.root).models)


@pytest.mark.ray
def test_rerun_reencodes_only_changed_items_and_their_users(tmp_path, ray_local, tiny_bert_dir):
    """A first run encodes every row (checked as it is published); after 1% of the item texts
    change, the rerun re-encodes only those items and the users whose recent history holds one,
    and the result equals the in-process model's on every row (reused ones included, so the first
    run's vectors are checked against the model too). (Integer ids: test_train_objectstore.py.)"""
    from recbatch.embed.stage import embed

    from recbatch.cli import main

    cfg = make_config(tmp_path, tiny_bert_dir, num_actors=1)
    before = make_snapshot(tmp_path, "string")
    model_dir = _init_model(cfg, tiny_bert_dir, before)
    # the first run goes through the CLI (the model's shape comes from its card, not the config),
    # with 2 actors writing the users' parts
    assert main(["embed", "--root", str(tmp_path), "--snapshot", str(before.path), "--model", str(model_dir),
                 "--actors", "2", "--batch-size", "16"]) == 0
    _assert_a_first_run_published_every_row(cfg, before, model_dir.name)

    edited = {7, 123}  # 1% of the catalog
    after = make_snapshot(tmp_path, "string", edited=edited)
    result = embed(cfg, after, model_dir)

    edited_ids = {_id(i, "string") for i in edited}
    history = after.interactions().collect()  # every row: what is served
    recent = history.sort("ts").group_by("user_id").agg(pl.col("item_id").tail(5))
    affected = recent.filter(pl.col("item_id").list.eval(pl.element().is_in(list(edited_ids))).list.any())
    assert 0 < affected.height < N_USERS  # the test would prove nothing otherwise
    assert (result.items_encoded, result.items_reused) == (len(edited), N_ITEMS - len(edited))
    assert (result.users_encoded, result.users_reused) == (affected.height, N_USERS + 2 - affected.height)

    items, users = read_embeddings(result.items_dir, "item_id"), read_embeddings(result.users_dir, "user_id")
    assert items["item_id"].dtype == pl.String and users["user_id"].dtype == pl.String
    ref_items, ref_users = reference_embeddings(model_dir, after)
    assert items["item_id"].to_list() == ref_items["item_id"].to_list()
    assert users["user_id"].to_list() == ref_users["user_id"].to_list()
    np.testing.assert_allclose(matrix(items), matrix(ref_items), atol=2e-5)
    np.testing.assert_allclose(matrix(users), matrix(ref_users), atol=2e-5)
    assert (top_k(matrix(users), matrix(items)) == top_k(matrix(ref_users), matrix(ref_items))).all()


def _assert_a_first_run_published_every_row(cfg: Config, snapshot: Snapshot, model_version: str) -> None:
    """A model's first embeddings of `snapshot`: every item and every user encoded (the two with
    no interactions too), unit-norm user vectors, the manifests' counts and provenance, and the
    users' folder written by the actors as a part per user partition."""
    layout = RunLayout.of(cfg.root).at
    items_dir, users_dir = layout.embeddings(model_version, "items"), layout.embeddings(model_version, "users")
    items, users = read_embeddings(items_dir, "item_id"), read_embeddings(users_dir, "user_id")
    assert (items.height, users.height) == (N_ITEMS, N_USERS + 2)
    assert set(items["model_version"]) == set(users["model_version"]) == {model_version}
    np.testing.assert_allclose(np.linalg.norm(matrix(users), axis=1), 1.0, atol=1e-5)
    manifest = verify_manifest(local_path(items_dir))
    assert (manifest["encoded"], manifest["reused"], manifest["rows"]) == (N_ITEMS, 0, N_ITEMS)
    assert manifest["snapshot_hash"] == snapshot.hash and manifest["model_version"] == model_version
    assert manifest["temperature"] == cfg.model.temperature  # the model card's, for the scoring stage's prior
    users_manifest = verify_manifest(local_path(users_dir))
    assert (users_manifest["encoded"], users_manifest["reused"]) == (N_USERS + 2, 0)
    assert users_manifest["partitioning"]["partitions"] == PARTITIONS and len(users_manifest["files"]) == PARTITIONS
    assert_parts_by_partition(local_path(users_dir), users_manifest, PARTITIONS)


# --------------------------------------------------------------------------- pure pieces (no Ray)


def test_length_bucketing_cuts_padding_and_covers_every_row():
    from recbatch.embed.bucketing import (
        arrival_order_batches, length_sorted_batches, padded_token_count, padding_fraction, token_budget_batches,
    )

    lengths = np.random.default_rng(0).integers(4, 64, size=1000)
    sorted_batches = length_sorted_batches(lengths, 32)
    plain = arrival_order_batches(len(lengths), 32)
    assert sorted(np.concatenate(sorted_batches).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in sorted_batches)
    # sorted batches waste less than a tenth of what arrival order wastes here
    assert padding_fraction(lengths, sorted_batches) < padding_fraction(lengths, plain) / 10
    assert padded_token_count(lengths, sorted_batches) >= lengths.sum()
    assert padding_fraction(np.full(10, 7), length_sorted_batches(np.full(10, 7), 4)) == 0.0

    budget = token_budget_batches(lengths, max_tokens=256, max_rows=32)
    assert sorted(np.concatenate(budget).tolist()) == list(range(1000))
    assert all(len(b) * lengths[b].max() <= 256 and len(b) <= 32 for b in budget)
    assert padding_fraction(lengths, budget) < padding_fraction(lengths, sorted_batches)
    assert [len(b) for b in token_budget_batches(np.array([300, 5]), max_tokens=100, max_rows=8)] == [1, 1]


def test_left_padded_puts_most_recent_last_and_truncates_old_items():
    import pyarrow as pa

    from recbatch.embed.users import left_padded

    lists = pa.array([[1, 2, 3], [], [4, 5, 6, 7, 8, 9], [10]], pa.list_(pa.int32()))
    index, mask = left_padded(lists.slice(1, 3), 4)  # a slice: offsets do not start at 0
    assert index.tolist() == [[0, 0, 0, 0], [6, 7, 8, 9], [0, 0, 0, 10]]
    assert mask.tolist() == [[False] * 4, [True] * 4, [False, False, False, True]]


def test_reuse_plan_reuses_equal_hashes_and_encodes_new_or_changed_rows():
    import pyarrow as pa

    from recbatch.embed.incremental import plan_reuse

    current = pa.table({"item_id": ["a", "b", "c", "d"], "input_hash": ["1", "2", "3x", "4"]})
    previous = pa.table({"item_id": ["a", "b", "c", "gone"], "input_hash": ["1", "2", "3", "9"]})
    plan = plan_reuse(current, previous, "item_id")
    assert sorted(plan.reuse_ids.to_pylist()) == ["a", "b"]
    assert sorted(plan.encode_ids.to_pylist()) == ["c", "d"]
    first = plan_reuse(current, None, "item_id")
    assert (first.encoded, first.reused) == (4, 0)


@pytest.mark.ray
def test_bad_requests_fail_before_any_work(tmp_path, ray_local, tiny_bert_dir):
    from recbatch.embed.stage import embed
    from recbatch.errors import UsageError

    snapshot = make_snapshot(tmp_path, "int")
    cfg = make_config(tmp_path, tiny_bert_dir)
    model_dir = _init_model(cfg, tiny_bert_dir, snapshot)
    gpus = ray_local.cluster_resources().get("GPU", 0)
    with pytest.raises(UsageError, match="GPUs, but the Ray cluster has"):
        embed(cfg.with_overrides({"embed.gpus_per_actor": 1.0, "embed.num_actors": int(gpus) + 1}), snapshot, model_dir)
    with pytest.raises(UsageError, match="trained on int ids"):
        embed(cfg, make_snapshot(tmp_path / "other", "string"), model_dir)
    assert not (tmp_path / "embeddings").exists()
