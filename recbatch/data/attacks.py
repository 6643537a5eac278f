"""Injected-profile ("shilling") attacks on a snapshot, to measure what a defence is worth.

A few fake accounts that all interact with one target item, dressed in
camouflage so they look like real users, can lift that item into many real
users' lists: a model that learns from co-occurrence learns "people who liked
X liked the target". The two classic forms (Mobasher et al., 2007):

* ``average``: the target plus filler items drawn uniformly from the catalog,
  each filler rated at its mean rating (when the data has ratings);
* ``bandwagon``: the target plus the most popular items (so the fakes resemble
  many real users), topped up with a few random fillers.

The attacked data is written as a canonical ingest source (interactions,
items, users Parquet) plus ``attack.json`` (the kind, the target and the fake
ids: the ground truth for measuring a defence, never read by ingest). Every
fake profile has the real users' median length and is created in one burst,
as a scripted campaign would be, or, with ``spread_days``, the profiles start
evenly over that many days before it (a patient campaign, which no burst gives
away). The campaign ends where the model's training rows end (``campaign_end``):
the snapshot's newest event, or under a time cut (the nightly's ``recent_days``)
the last event before the test window, so the night's training learns from it.
The target sits in the first third of each profile, so it lands in the train
split under leave-last-n too (a median profile of 10 items keeps its first 4 in
train under leave-last-5 with one validation row).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recbatch.data.snapshot import Snapshot
from recbatch.errors import UsageError

ATTACK_KINDS = ("average", "bandwagon")
BURST_MINUTES = 60  # every fake profile is created within this window
SECONDS_BETWEEN_EVENTS = 20  # a script clicks fast
BANDWAGON_POOL = 50  # the bandwagon's fillers come from this many most popular items...
BANDWAGON_RANDOM_SHARE = 0.2  # ...except this share, drawn from the whole catalog
FAKE_STRING_PREFIX = "x"  # text ids of fake users: x000001, ... (ids play no part in detection)


def campaign_end(snapshot: Snapshot) -> Any:
    """When the fake profiles' burst ends: the newest event the snapshot's model trains on
    (its newest event under leave-last-n; the last one before the test window under a time cut)."""
    rows = snapshot.split()
    if snapshot.manifest["split"]["protocol"] != "leave_last_n":
        rows = rows.filter(pl.col("split") != "test")
    return rows.select(pl.col("ts").max()).collect().item()


def inject_attack(
    snapshot: Snapshot, out_dir: str | Path, *, kind: str, target: int | str, share: float, seed: int = 0,
    spread_days: float = 0.0,
) -> dict[str, Any]:
    """Write `snapshot`'s data plus ``ceil(share * users)`` fake profiles pushing `target` to `out_dir`;
    with `spread_days` > 0 their starts are spread over that many days instead of one burst."""
    if kind not in ATTACK_KINDS:
        raise UsageError(f"attack kind {kind!r}: choose one of {', '.join(ATTACK_KINDS)}")
    if not 0 < share < 1:
        raise UsageError(f"attack share {share} must be between 0 and 1 (a share of the real users)")
    rng = np.random.default_rng(seed)
    interactions = snapshot.interactions().collect()
    items = snapshot.items().collect().drop("is_cold")  # ingest recomputes it
    users = snapshot.users().collect()
    target_id = _target(target, items, snapshot)

    n_fake = math.ceil(round(share * users.height, 6))  # 0.05 * 120 is 6.000000000000001
    length = max(3, int(interactions.group_by("user_id").len()["len"].median()))
    popular = interactions.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    candidates = items.filter(pl.col("item_id") != target_id)["item_id"].to_numpy()
    pool = popular.filter(pl.col("item_id") != target_id)["item_id"].head(BANDWAGON_POOL).to_numpy()
    fake_ids = _fake_ids(users["user_id"], n_fake, snapshot.id_type)
    newest = campaign_end(snapshot)

    rows = []
    for i, user in enumerate(fake_ids):
        fillers = _fillers(kind, length - 1, candidates, pool, rng)
        profile = list(fillers)
        profile.insert(int(rng.integers(0, max(1, length // 3))), target_id)
        start = newest - dt.timedelta(minutes=BURST_MINUTES) + dt.timedelta(seconds=float(rng.uniform(0, 60 * BURST_MINUTES // 2)))
        start -= dt.timedelta(days=spread_days * (n_fake - i) / n_fake)  # 0: all in the burst
        for j, item in enumerate(profile):
            rows.append({"user_id": user, "item_id": item, "ts": start + dt.timedelta(seconds=j * SECONDS_BETWEEN_EVENTS)})
    fake = pl.DataFrame(rows, schema={"user_id": interactions.schema["user_id"],
                                      "item_id": interactions.schema["item_id"], "ts": interactions.schema["ts"]})
    fake = _with_ratings(fake, interactions, target_id)
    fake = fake.with_columns(pl.lit(1.0).alias(c) for c in interactions.columns if c not in fake.columns)

    # Fake users copy random real users' features: features alone must not give them away.
    donors = users.sample(n=n_fake, with_replacement=True, seed=seed).with_columns(pl.Series("user_id", fake_ids))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pl.concat([interactions, fake.select(interactions.columns)]).write_parquet(out / "interactions.parquet")
    items.write_parquet(out / "items.parquet")
    pl.concat([users, donors.select(users.columns)]).write_parquet(out / "users.parquet")
    truth = {"kind": kind, "target": target_id, "share": share, "seed": seed, "spread_days": spread_days,
             "fake_users": len(fake_ids),
             "profile_length": length, "snapshot": snapshot.hash, "fake_user_ids": fake_ids}
    (out / "attack.json").write_text(json.dumps(truth, indent=2, default=str))
    return {k: v for k, v in truth.items() if k != "fake_user_ids"} | {"out_dir": str(out)}


def _target(target: int | str, items: pl.DataFrame, snapshot: Snapshot) -> Any:
    """The target as the snapshot's id type (a command line gives text); it must be an item."""
    target = str(target)
    if snapshot.id_type == "int":
        try:
            target = int(target)
        except ValueError:
            raise UsageError(f"--target {target!r}: snapshot {snapshot.hash} has integer item ids") from None
    if items.filter(pl.col("item_id") == target).height == 0:
        raise UsageError(f"--target {target!r} is not an item of snapshot {snapshot.hash}")
    return target


def _fake_ids(real: pl.Series, n: int, id_type: str) -> list:
    if id_type == "int":
        first = int(real.max()) + 1
        return list(range(first, first + n))
    return [f"{FAKE_STRING_PREFIX}{i:06d}" for i in range(1, n + 1)]


def _fillers(kind: str, n: int, candidates: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "average":
        return rng.choice(candidates, size=min(n, len(candidates)), replace=False)
    n_random = int(round(n * BANDWAGON_RANDOM_SHARE))
    popular = rng.choice(pool, size=min(n - n_random, len(pool)), replace=False)
    others = np.setdiff1d(candidates, popular)
    return np.concatenate([popular, rng.choice(others, size=min(n_random, len(others)), replace=False)])


def _with_ratings(fake: pl.DataFrame, interactions: pl.DataFrame, target: Any) -> pl.DataFrame:
    """Fillers at their item's mean rating (the "average" profile), the target at the top rating."""
    if "rating" not in interactions.columns:
        return fake
    means = interactions.group_by("item_id").agg(mean=pl.col("rating").mean())
    top = interactions["rating"].max()
    overall = interactions["rating"].mean()
    return fake.join(means, on="item_id", how="left", maintain_order="left").with_columns(
        rating=pl.when(pl.col("item_id") == target).then(pl.lit(top))
        .otherwise((pl.col("mean").fill_null(overall) * 2).round() / 2)
    ).drop("mean")
