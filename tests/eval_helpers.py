"""Tiny snapshot and run folders built by hand, for the evaluation tests.

They follow the documented layout (docs/ARCHITECTURE.md) and go through
``storage.write_manifest`` exactly like the real writers, so the code under
test reads them as it would read production output.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recbatch.data.snapshot import partitioned_files
from recbatch.schemas import recommendations_schema
from recbatch.storage import write_manifest

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def write_snapshot(
    folder: Path, rows: list[tuple[Any, Any, str]], items: list[dict[str, Any]], id_type: str = "int",
    partitions: int | None = None,
) -> Path:
    """rows: (user_id, item_id, split) in time order; items: dicts with item_id, title, is_cold...

    `partitions`: write the per-user tables cut into that many user partitions, as ingest does
    (None: one file per table, the layout from before partitioning)."""
    folder.mkdir(parents=True, exist_ok=True)
    split = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "ts": [T0 + dt.timedelta(minutes=i) for i in range(len(rows))],
            "split": [r[2] for r in rows],
        }
    ).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    pl.DataFrame(items).write_parquet(folder / "items.parquet")
    tables = {"split.parquet": split, "interactions.parquet": split.drop("split"),
              "users.parquet": split.select("user_id").unique().sort("user_id")}
    if partitions is None:
        for name, table in tables.items():
            table.write_parquet(folder / name)
    else:
        for name, table in partitioned_files({k: v.to_arrow() for k, v in tables.items()}, partitions):
            (folder / name).parent.mkdir(exist_ok=True)
            pq.write_table(table, folder / name)
    counts = {s: int((split["split"] == s).sum()) for s in ("train", "validation", "test")}
    write_manifest(
        folder,
        {"snapshot_hash": folder.name, "id_type": id_type, "counts": {**counts, "items": len(items)},
         "partitioning": {"partitions": partitions or 1}},
    )
    return folder


def ring_walks_snapshot(folder: Path, items: int = 80, users: int = 160) -> Path:
    """Each user walks the item ring one step at a time from a random start (a few random
    detours): 10 train steps, then one validation and one test step. The next item follows
    from the last one, and every item is equally popular: only order tells them apart."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for u in range(users):
        item, walk = int(rng.integers(items)), []
        while len(walk) < 12:
            item = (item + 1) % items if rng.random() > 0.1 else int(rng.integers(items))
            if item not in walk:
                walk.append(item)
        rows += [(u, i, "train") for i in walk[:10]] + [(u, walk[10], "validation"), (u, walk[11], "test")]
    catalog = [{"item_id": i, "title": f"item {i}", "is_cold": False, "available": True} for i in range(items)]
    return write_snapshot(folder, rows, catalog)


def write_run(folder: Path, lists: dict[Any, list[Any]], id_type: str = "int") -> Path:
    """A recommendations folder: one row per user, descending made-up scores."""
    folder.mkdir(parents=True, exist_ok=True)
    users = list(lists)
    table = pa.table(
        {
            "user_id": users,
            "item_ids": [lists[u] for u in users],
            "scores": [[float(len(lists[u]) - i) for i in range(len(lists[u]))] for u in users],
            "model_version": ["hand"] * len(users),
        },
        schema=recommendations_schema(id_type),
    )
    pq.write_table(table, folder / "part-00000.parquet")
    write_manifest(folder, {"model_version": "hand", "id_type": id_type, "users": len(users)})
    return folder


TOPIC_WORDS = ["space rocket alien", "love wedding romance", "murder detective crime", "dragon magic quest"]


def synthetic_snapshot(folder: Path, users: int = 200, items: int = 200, seed: int = 0, newcomers: int = 0,
                       partitions: int | None = None) -> Path:
    """Users prefer one topic; item titles name their topic; popularity is global and skewed.

    Per user, in random time order: 12 train, 2 validation, 2 test interactions
    drawn by popularity x topic affinity, then 1 test interaction with a cold
    item of the user's topic (cold: it has no train row), which only a
    text-aware model can find. `newcomers` more users have only 3 test
    interactions, drawn by popularity.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    topics = len(TOPIC_WORDS)
    topic_of = np.arange(items) % topics
    is_cold = np.zeros(items, dtype=bool)
    for t in range(topics):
        is_cold[rng.choice(np.flatnonzero(topic_of == t), size=2, replace=False)] = True
    # Each title: its topic's words plus two of that topic's eight flavour words.
    flavour = [" ".join(rng.choice([f"t{topic_of[i]}w{j}" for j in range(8)], size=2, replace=False))
               for i in range(items)]
    popularity = 1.0 / (1 + rng.permutation(items)) ** 0.7
    rows = []
    for u in range(users):
        t = u % topics
        weights = popularity * np.where(topic_of == t, 6.0, 1.0) * ~is_cold
        picked = rng.choice(items, size=16, replace=False, p=weights / weights.sum())
        rng.shuffle(picked)
        cold_pick = int(rng.choice(np.flatnonzero(is_cold & (topic_of == t))))
        rows += [(u, int(i), "train") for i in picked[:12]]
        rows += [(u, int(i), "validation") for i in picked[12:14]]
        rows += [(u, int(i), "test") for i in picked[14:]] + [(u, cold_pick, "test")]
    for u in range(users, users + newcomers):  # only test rows: no history before them
        warm = popularity * ~is_cold
        rows += [(u, int(i), "test") for i in rng.choice(items, size=3, replace=False, p=warm / warm.sum())]
    item_rows = [
        {"item_id": i, "title": f"{TOPIC_WORDS[topic_of[i]]} {flavour[i]}", "genres": f"g{topic_of[i]}",
         "is_cold": bool(is_cold[i]), "available": True}
        for i in range(items)
    ]
    return write_snapshot(folder, rows, item_rows, partitions=partitions)
