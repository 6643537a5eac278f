"""The scoring stage end to end on Ray, against a brute-force NumPy reference."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbatch.cli import main
from recbatch.config import Config
from recbatch.data.snapshot import Snapshot, partitioned_files
from recbatch.errors import DataValidationError, UsageError
from recbatch.fs import Location, as_location, local
from recbatch.parts import partition_of_name
from recbatch.schemas import embeddings_schema
from recbatch.score import native
from recbatch.score.kernel import kernel_used
from recbatch.score.stage import score
from recbatch.storage import SUCCESS, verify_manifest, write_manifest
from part_helpers import assert_parts_by_partition
from score_helpers import read_staged

RUN_DATE = dt.date(2026, 11, 29)
K = 8


SNAPSHOT_PARTITIONS = 4
EMBEDDING_PARTITIONS = 2


def partition_tables(table: pa.Table, partitions: int) -> list[pa.Table]:
    """`table`'s rows cut by user partition."""
    return [table for _, table in partitioned_files({"users.parquet": table}, partitions)]


def make_world(root: Path, id_type: str = "int", n_users: int = 40, n_items: int = 60, dim: int = 8, seed: int = 0):
    """A snapshot and item/user embeddings written by hand in the layout's formats."""
    rng = np.random.default_rng(seed)

    def item_id(i):
        return 1000 + 7 * i if id_type == "int" else f"item-{i:03d}"

    def user_id(u):
        return 5 * u + 3 if id_type == "int" else f"user-{u:03d}"

    items = [item_id(i) for i in rng.permutation(n_items)]  # unsorted on purpose
    users = [user_id(u) for u in range(n_users)]
    available = rng.random(n_items) > 0.15
    pairs = {(u, i) for u in range(n_users) for i in rng.choice(n_items, size=rng.integers(0, min(12, n_items)), replace=False)}
    pairs |= {(1, i) for i in range(n_items)}  # user 1 has seen everything
    pairs |= {(2, i) for i in range(n_items) if i >= 3}  # user 2: at most 3 eligible items
    pairs = sorted(pairs)
    snap = root / "snapshots" / "s1"
    snap.mkdir(parents=True)
    ts = pa.array([0] * len(pairs), pa.timestamp("us", tz="UTC"))
    interactions = pa.table({"user_id": [users[u] for u, _ in pairs], "item_id": [items[i] for _, i in pairs], "ts": ts})
    pq.write_table(pa.table({"item_id": items, "title": [f"t{i}" for i in range(n_items)], "available": available}),
                   snap / "items.parquet")
    tables = {"interactions.parquet": interactions, "users.parquet": pa.table({"user_id": users})}
    for name, table in partitioned_files(tables, SNAPSHOT_PARTITIONS):
        (snap / name).parent.mkdir(exist_ok=True)
        pq.write_table(table, snap / name)
    write_manifest(snap, {"snapshot_hash": "s1", "id_type": id_type, "counts": {"users": n_users, "items": n_items},
                          "partitioning": {"partitions": SNAPSHOT_PARTITIONS}})

    # Quarter-integer components: every inner product is exact in float32 whatever
    # the summation order, so the many exact ties must be broken by id alone.
    item_vectors = (rng.integers(-4, 5, size=(n_items, dim)) / 4).astype(np.float32)
    item_vectors[5] = item_vectors[9]
    user_vectors = (rng.integers(-4, 5, size=(n_users, dim)) / 4).astype(np.float32)
    dirs = {}
    for kind, ids, vectors, column in (("items", items, item_vectors, "item_id"), ("users", users, user_vectors, "user_id")):
        folder = root / "embeddings" / "m1" / kind
        folder.mkdir(parents=True)
        table = pa.table(
            {column: ids, "embedding": [list(v) for v in vectors], "input_hash": ["h"] * len(ids),
             "model_version": ["m1"] * len(ids)},
            schema=embeddings_schema(id_type, column),
        )
        if kind == "users":  # by user partition, fewer than the snapshot's: read by matching partitions
            for p, part in enumerate(partition_tables(table, EMBEDDING_PARTITIONS)):
                pq.write_table(part, folder / f"part-{p:05d}-0.parquet")
            write_manifest(folder, {"model_version": "m1", "rows": len(ids),
                                    "partitioning": {"partitions": EMBEDDING_PARTITIONS}})
        else:
            half = len(ids) // 2
            pq.write_table(table.slice(0, half), folder / "part-00000.parquet")
            pq.write_table(table.slice(half), folder / "part-00001.parquet")
            write_manifest(folder, {"model_version": "m1"})
        dirs[kind] = folder
    world = {
        "items": items, "users": users, "available": available, "pairs": pairs,
        "item_vectors": item_vectors, "user_vectors": user_vectors,
    }
    return Snapshot.open(snap), dirs, world


def reference(world, k, blocked=frozenset(), blocked_for=frozenset()):
    """Per user: eligible items by (score desc, id asc), exhaustively."""
    seen = {(u, i) for u, i in world["pairs"]}
    scores = world["user_vectors"] @ world["item_vectors"].T
    out = {}
    for u, uid in enumerate(world["users"]):
        ranked = [
            (-scores[u, i], iid, i)
            for i, iid in enumerate(world["items"])
            if world["available"][i] and (u, i) not in seen and iid not in blocked and (uid, iid) not in blocked_for
        ]
        ranked.sort()
        out[uid] = ([iid for _, iid, _ in ranked[:k]], [-s for s, _, _ in ranked[:k]])
    return out


def read_rows(folder: Path | Location) -> dict:
    df, _ = read_staged(as_location(folder))
    return {r["user_id"]: r for r in df.iter_rows(named=True)}


def assert_matches(rows, want):
    assert set(rows) == set(want)
    for uid, (ids, scores) in want.items():
        assert rows[uid]["item_ids"] == ids, uid
        np.testing.assert_allclose(rows[uid]["scores"], scores, rtol=1e-5, atol=1e-5)


@pytest.mark.ray
@pytest.mark.parametrize("shards", [1, 3])
def test_stage_matches_reference_with_all_filters(ray_local, tmp_path, shards):
    snapshot, dirs, world = make_world(tmp_path)
    blocked = {world["items"][0], world["items"][1]}
    blocked_for = {(world["users"][0], world["items"][i]) for i in range(2, 30)}
    blocklist = tmp_path / "blocklist.parquet"
    pq.write_table(
        pa.table({
            "user_id": [None, None] + [u for u, _ in sorted(blocked_for)],
            "item_id": sorted(blocked) + [i for _, i in sorted(blocked_for)],
        }, schema=pa.schema([("user_id", pa.int64()), ("item_id", pa.int64())])),
        blocklist,
    )
    cfg = Config(root=str(tmp_path)).with_overrides({
        # user_block 2: the workers score 8 users a call, so a partition's ~10 users take two calls
        "score.k": K, "score.item_shards": shards, "score.user_block": 2, "score.item_tile": 16,
        "score.rows_per_file": 3, "score.blocklist": str(blocklist), "score.num_actors": 2,
        "score.cpus_per_actor": 0.5,
    })
    staged = tmp_path / "staged" / "dt=2026-11-29"
    assert score(cfg, snapshot, dirs["items"], dirs["users"], RUN_DATE) == local(staged)

    assert (staged / SUCCESS).exists()
    manifest = verify_manifest(staged)
    assert manifest["users"] == manifest["rows"] == len(world["users"])
    assert manifest["model_version"] == "m1" and manifest["snapshot_hash"] == "s1" and manifest["k"] == K
    assert "score_and_write" in manifest["timings"]
    assert_parts_by_partition(staged, manifest, SNAPSHOT_PARTITIONS, max_rows=3)
    if shards == 1:  # a partition in one call: its parts hold rows_per_file rows, all but its last one
        sizes = {name: pq.ParquetFile(staged / name).metadata.num_rows for name in manifest["files"]}
        short = Counter(partition_of_name(name) for name, rows in sizes.items() if rows < 3)
        assert max(short.values(), default=0) <= 1, sizes
    assert all(0 < info["bytes"] for info in manifest["files"].values())
    # kernel="auto": the fused C kernel wherever it must build (CI); a fallback would show here
    assert manifest["scoring_kernels"] == ["native" if native.expected_here() else kernel_used("auto")]
    rows = read_rows(staged)
    want = reference(world, K, blocked, blocked_for)
    assert_matches(rows, want)
    assert rows[world["users"][1]]["item_ids"] == []  # has seen everything
    assert 0 < len(rows[world["users"][2]]["item_ids"]) <= 3
    assert all(len(r["item_ids"]) == K for uid, r in rows.items() if uid not in world["users"][:3])


@pytest.mark.ray
def test_cli_with_string_ids_and_explanations(ray_local, tmp_path):
    snapshot, dirs, world = make_world(tmp_path, id_type="string", n_users=12, n_items=30)
    code = main([
        "score", "--root", str(tmp_path), "--snapshot", str(snapshot.path), "--items", str(dirs["items"]),
        "--users", str(dirs["users"]), "--run-date", "2026-11-29", "--k", "5", "--explanations",
        "--set", "score.cpus_per_actor=0.5", "--set", "score.kernel=torch",
    ])
    assert code == 0
    assert verify_manifest(tmp_path / "staged" / "dt=2026-11-29")["scoring_kernels"] == ["torch"]
    rows = read_rows(tmp_path / "staged" / "dt=2026-11-29")
    assert_matches(rows, reference(world, 5))
    position = {iid: i for i, iid in enumerate(world["items"])}
    history = {}
    for u, i in world["pairs"]:
        history.setdefault(world["users"][u], []).append(i)
    vectors = world["item_vectors"]
    for uid, row in rows.items():
        assert len(row["because_item_ids"]) == len(row["item_ids"])
        if uid not in history:
            assert set(row["because_item_ids"]) <= {None}
            continue
        for rec, because in zip(row["item_ids"], row["because_item_ids"]):
            similarity = {world["items"][h]: float(vectors[position[rec]] @ vectors[h]) for h in history[uid]}
            assert similarity[because] == pytest.approx(max(similarity.values()), abs=1e-5)


@pytest.mark.ray
def test_bad_embeddings_stage_nothing(ray_local, tmp_path):
    """A NaN user vector, found by the worker that reads its partition, fails the stage: nothing is staged."""
    snapshot, dirs, world = make_world(tmp_path, n_users=6, n_items=10)
    folder = dirs["users"]
    manifest = verify_manifest(folder)
    part = folder / sorted(manifest["files"])[-1]
    table = pq.read_table(part)
    vectors = table.column("embedding").to_pylist()
    vectors[0][1] = float("nan")
    table = table.set_column(1, "embedding", pa.array(vectors, pa.list_(pa.float32())))
    pq.write_table(table, part)
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "files"})
    with pytest.raises(DataValidationError, match=r"embedding.*1 rows.*NaN"):
        score(Config(root=str(tmp_path)).with_overrides({"score.cpus_per_actor": 0.5}), snapshot, dirs["items"],
              dirs["users"], RUN_DATE)
    assert not (tmp_path / "staged").exists() or not any((tmp_path / "staged").iterdir())


@pytest.mark.ray
def test_stage_adds_the_popularity_prior_to_the_logits(ray_local, tmp_path):
    """rank by u.v / temperature + weight * log p_now(i); p_now from every interaction, with decay."""
    snapshot, dirs, world = make_world(tmp_path)
    rng = np.random.default_rng(1)
    days_ago = rng.integers(0, 400, size=len(world["pairs"]))
    newest = dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    rows = pl.DataFrame({
        "user_id": [world["users"][u] for u, _ in world["pairs"]],
        "item_id": [world["items"][i] for _, i in world["pairs"]],
        "ts": [newest - dt.timedelta(days=int(d)) for d in days_ago],
        # test rows count too: served lists are built from every interaction, whatever the split
        "split": ["train", "validation", "test"] * (len(world["pairs"]) // 3) + ["test"] * (len(world["pairs"]) % 3),
    }).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    tables = {"split.parquet": rows.to_arrow(), "interactions.parquet": rows.drop("split").to_arrow()}
    for name, table in partitioned_files(tables, SNAPSHOT_PARTITIONS):
        (snapshot.path / name).parent.mkdir(exist_ok=True)
        pq.write_table(table, snapshot.path / name)
    weight, half_life, temperature = 2.0, 60.0, 0.25
    cfg = Config(root=str(tmp_path)).with_overrides({
        "score.k": K, "score.popularity_prior_weight": weight, "score.popularity_half_life_days": half_life,
        "model.temperature": temperature, "score.num_actors": 1, "score.cpus_per_actor": 0.5,
    })
    staged = score(cfg, snapshot, dirs["items"], dirs["users"], RUN_DATE)

    # the reference prior, counted by hand: decayed picks + 1, log share; never-picked items get the median
    counts = np.zeros(len(world["items"]))
    picked = np.zeros(len(world["items"]), dtype=bool)
    for (_, i), d in zip(world["pairs"], days_ago):
        counts[i] += 0.5 ** ((d - days_ago.min()) / half_life)
        picked[i] = True
    prior = np.log((counts + 1) / (counts + 1).sum())
    prior[~picked] = np.median(prior[picked])
    seen = set(world["pairs"])
    want = {}
    for u, uid in enumerate(world["users"]):
        logits = world["user_vectors"][u] @ world["item_vectors"].T + temperature * weight * prior  # cosine units
        ranked = sorted((-logits[i], iid) for i, iid in enumerate(world["items"])
                        if world["available"][i] and (u, i) not in seen)
        want[uid] = ([iid for _, iid in ranked[:K]], [-s for s, _ in ranked[:K]])
    rows = read_rows(staged)
    assert_matches(rows, want)
    assert any(rows[uid]["item_ids"] != ids for uid, (ids, _) in reference(world, K).items())  # the prior mattered


@pytest.mark.ray
@pytest.mark.parametrize("overrides,message", [
    ({"score.num_actors": 3, "score.cpus_per_actor": 1.0, "score.item_shards": 2},  # 2 x 3 x 1 > 4 CPUs
     r"score.item_shards x score.num_actors x score.cpus_per_actor = 6.0 CPUs, but the Ray cluster has 4.0"),
    ({"score.gpus_per_actor": 1.0}, r"= 1.0 GPUs, but the Ray cluster has 0"),
    ({"score.gpus_per_actor": 1.0, "score.kernel": "native"}, r"'native' is the CPU kernel"),
])
def test_resource_guards_refuse_a_pool_that_cannot_run(ray_local, tmp_path, overrides, message):
    """An actor pool that cannot be scheduled would wait forever, silently: refused, nothing staged."""
    snapshot, dirs, _ = make_world(tmp_path, n_users=6, n_items=10)
    cfg = Config(root=str(tmp_path)).with_overrides(overrides)
    with pytest.raises(UsageError, match=message):
        score(cfg, snapshot, dirs["items"], dirs["users"], RUN_DATE)
    assert not (tmp_path / "staged").exists() or not any((tmp_path / "staged").iterdir())


@pytest.mark.parametrize("table,error,message", [
    (None, UsageError, r"score.blocklist .*missing.parquet does not exist"),
    (pa.table({"id": [1007]}), DataValidationError, r"blocklist lacks column 'item_id' \(has \['id'\]\)"),
    (pa.table({"item_id": pa.array([1007, None, None], pa.int64())}), DataValidationError,
     r"column 'item_id' has 2 null rows"),
    (pa.table({"item_id": ["not-a-number"]}), DataValidationError, r"do not match the snapshot's id type int"),
])
def test_bad_blocklists_are_refused_naming_the_file(tmp_path, table, error, message):
    snapshot, dirs, _ = make_world(tmp_path, n_users=6, n_items=10)
    path = tmp_path / ("missing.parquet" if table is None else "blocklist.parquet")
    if table is not None:
        pq.write_table(table, path)
    cfg = Config(root=str(tmp_path)).with_overrides({"score.blocklist": str(path)})
    with pytest.raises(error, match=message) as raised:
        score(cfg, snapshot, dirs["items"], dirs["users"], RUN_DATE)
    assert str(path) in str(raised.value)
    assert not (tmp_path / "staged").exists()


@pytest.mark.ray
def test_published_lists_equal_the_holdout_ranking_of_the_same_inputs(ray_local, tmp_path):
    """The scoring stage and the holdout evaluation rank through one function (score/ranking.py): given
    the same vectors and history, the staged lists are exactly the ones offline metrics are computed on,
    with every filter (seen, unavailable, global and per-user blocklist) and the popularity prior on."""
    from recbatch.embed.store import read_matrix
    from recbatch.data.snapshot import serving_events
    from recbatch.eval.holdout import rank_with_history
    from recbatch.eval.lists import lists_table

    snapshot, dirs, world = make_world(tmp_path, n_users=30, n_items=50)
    blocklist = tmp_path / "blocklist.parquet"
    per_user = [(world["users"][0], world["items"][i]) for i in range(2, 30)]  # most of user 0's catalog
    pq.write_table(pa.table({"user_id": [None] + [u for u, _ in per_user],
                             "item_id": [world["items"][0]] + [i for _, i in per_user]},
                            schema=pa.schema([("user_id", pa.int64()), ("item_id", pa.int64())])), blocklist)
    cfg = Config(root=str(tmp_path)).with_overrides({
        "score.k": K, "score.item_shards": 2, "score.blocklist": str(blocklist), "score.num_actors": 1,
        "score.cpus_per_actor": 0.5, "score.popularity_prior_weight": 1.5, "model.temperature": 0.5,
    })
    published = read_rows(score(cfg, snapshot, dirs["items"], dirs["users"], RUN_DATE))

    item_ids, items = read_matrix(dirs["items"], "item_id")
    user_ids, users = read_matrix(dirs["users"], "user_id")
    idx, scores, catalog_ids = rank_with_history(cfg, snapshot, item_ids, items, user_ids, users,
                                                 serving_events(snapshot), cfg.model.temperature, K)
    evaluated = {r["user_id"]: r for r in lists_table(user_ids, idx, scores, catalog_ids, "m1").to_pylist()}

    assert set(evaluated) == set(published) == set(world["users"])
    for uid, row in published.items():
        assert row["item_ids"] == evaluated[uid]["item_ids"], uid
        np.testing.assert_allclose(row["scores"], evaluated[uid]["scores"], rtol=1e-6)
    assert world["items"][0] not in {i for r in published.values() for i in r["item_ids"]}  # the filters acted
    assert not set(published[world["users"][0]]["item_ids"]) & {i for _, i in per_user}
    assert published[world["users"][1]]["item_ids"] == []


def test_list_settings_name_what_the_lists_hold_not_how_they_are_computed(tmp_path):
    """The nightly rescores a date when these differ (``pipeline._same_inputs``): a changed K, prior or
    blocklist *content* must change them; a changed tiling or actor count must not."""
    import dataclasses
    import json

    from recbatch.config import ScoreConfig
    from recbatch.score.stage import list_settings

    base = ScoreConfig()
    assert list_settings(dataclasses.replace(
        base, num_actors=4, user_block=7, item_tile=64, item_shards=2, rows_per_file=10,
        actor_resources={"scorer": 1})) == list_settings(base)
    for changed in ({"k": 5}, {"popularity_prior_weight": 1.0}, {"filter_seen": False}):
        assert list_settings(dataclasses.replace(base, **changed)) != list_settings(base), changed
    blocklist = tmp_path / "blocklist.parquet"
    pl.DataFrame({"item_id": [1]}).write_parquet(blocklist)
    before = list_settings(dataclasses.replace(base, blocklist=str(blocklist)))
    pl.DataFrame({"item_id": [1, 2]}).write_parquet(blocklist)  # same path, another list
    assert list_settings(dataclasses.replace(base, blocklist=str(blocklist))) != before
    assert json.loads(json.dumps(before)) == before  # compared after a round trip through the manifest
    with pytest.raises(UsageError, match=r"score.blocklist .*gone.parquet does not exist"):
        list_settings(dataclasses.replace(base, blocklist=str(tmp_path / "gone.parquet")))



def test_a_worker_call_that_failed_leaves_no_held_rows_to_the_next(tmp_path):
    """The worker's finisher holds rows until a part is full; a call that raised before flushing must not
    hand them to the next call (its users would be written twice). The worker runs in this process."""
    from recbatch.parts import PARTITION
    from recbatch.score.actors import ScoringWorker

    def users(ids: list[int], dim: int = 2) -> pa.Table:
        return pa.table({
            "user_id": ids, "embedding": [[1.0] * dim for _ in ids],
            "seen": pa.array([[]] * len(ids), pa.list_(pa.int64())),
            "blocked": pa.array([[]] * len(ids), pa.list_(pa.int64())),
            PARTITION: pa.array([0] * len(ids), pa.int32()),
        })

    scorer = {"items": np.eye(2, dtype=np.float32), "eligible": np.ones(2, bool), "offset": 0, "k": 2,
              "filter_seen": True, "user_block": 1, "item_tile": 2, "device": "cpu", "precision": "fp32",
              "threads": 1}
    worker = ScoringWorker(scorer=scorer, item_ids=pa.array([10, 11]), batch_rows=2, finisher={
        "k": 2, "model_version": "m", "write_to": as_location(tmp_path), "id_type": "int", "rows_per_file": 5})
    failing = pa.concat_tables([users([1, 2]), users([3], dim=3).cast(users([1]).schema)])  # user 3: a bad vector
    with pytest.raises(ValueError):
        list(worker(failing))  # users 1 and 2 were scored and held when user 3 failed
    records = pa.concat_tables(list(worker(users([4, 5]))))
    assert sum(records.column("rows").to_pylist()) == 2
    written = pl.concat([pl.read_parquet(p) for p in tmp_path.glob("part-*.parquet")])
    assert sorted(written["user_id"].to_list()) == [4, 5]
