"""Ingest-time defence against injected profiles: coordinated bursts around one item.

A shilling campaign (recbatch/data/attacks.py) needs many fake accounts that
all touch its target, and a script makes them quickly: each whole profile
within minutes, all of them within the same hour or so. Real users do rate in
one sitting too (MovieLens users mostly do), and two of them may start in the
same hour, but many such users sharing one item is rare unless the item is so
popular that the overlap is expected. So a group is quarantined when

* each of its profiles spans at most ``BURST_HOURS`` (first to last event)
  and has at least ``MIN_PROFILE_EVENTS`` events,
* the profiles started within ``WINDOW_HOURS`` of each other,
* all of them hold the same item, at least ``MIN_GROUP`` profiles, and
* that is ``MIN_LIFT`` times more than expected from the item's share of all
  users (so a burst of real fans of a blockbuster is not a campaign).

What it does not catch: campaigns spread out over days or weeks, and profiles
built slowly; their fingerprint is in the ratings, not in the timing.
Quarantined profiles leave the interactions and users tables and go to
``quarantine/profiles.parquet`` with their reason, where an operator can
review them (docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl


BURST_HOURS = 2.0  # a profile made in one sitting
WINDOW_HOURS = 2.0  # sittings that started together
MIN_PROFILE_EVENTS = 3  # shorter profiles say too little to judge (and push little)
MIN_GROUP = 5  # fewer accounts than this are not a campaign worth the risk of a false alarm
MIN_LIFT = 10.0  # how much more often than chance the group shares the item


@dataclass
class BurstEvidence:
    """What detection needs from a set of users: small next to their interactions.

    Built per user partition (``burst_evidence``) and added up (``combine``):
    users are disjoint across partitions, so the per-item user counts add, and
    only the burst profiles (not every user) travel to the one place that judges them.
    """

    users: int  # users seen
    bursts: pl.DataFrame  # user_id, start: the profiles made in one sitting
    item_users: pl.DataFrame  # item_id, users: how many users hold each item
    held: pl.DataFrame  # item_id, user_id, start: the items the burst profiles hold


def burst_evidence(interactions: pl.DataFrame) -> BurstEvidence:
    """The evidence of one user partition (every row of its users)."""
    profiles = interactions.group_by("user_id").agg(
        start=pl.col("ts").min(), end=pl.col("ts").max(), events=pl.len()
    )
    bursts = profiles.filter(
        (pl.col("end") - pl.col("start") <= dt.timedelta(hours=BURST_HOURS))
        & (pl.col("events") >= MIN_PROFILE_EVENTS)
    ).select("user_id", "start")
    item_users = interactions.group_by("item_id").agg(users=pl.col("user_id").n_unique().cast(pl.Int64))
    held = interactions.join(bursts, on="user_id").select("item_id", "user_id", "start").unique()
    return BurstEvidence(profiles.height, bursts, item_users, held)


def combine(evidence: list[BurstEvidence]) -> BurstEvidence:
    """The evidence of the union of disjoint sets of users."""
    return BurstEvidence(
        users=sum(e.users for e in evidence),
        bursts=pl.concat([e.bursts for e in evidence]),
        item_users=pl.concat([e.item_users for e in evidence]).group_by("item_id").agg(pl.col("users").sum()),
        held=pl.concat([e.held for e in evidence]),
    )


def find_injected_profiles(evidence: BurstEvidence) -> pl.DataFrame:
    """``user_id``, ``reason`` of every profile in a coordinated burst (see the module doc)."""
    bursts = evidence.bursts
    schema = {"user_id": bursts.schema["user_id"], "reason": pl.String}
    if bursts.height < MIN_GROUP:
        return pl.DataFrame(schema=schema)
    item_share = evidence.item_users.select("item_id", share=pl.col("users") / evidence.users)
    held = evidence.held.join(item_share, on="item_id").sort("item_id", "start", "user_id")
    starts = np.sort(bursts["start"].to_numpy())
    window = np.timedelta64(int(WINDOW_HOURS * 3600), "s")
    flagged: dict[object, str] = {}
    for (item,), group in held.group_by(["item_id"], maintain_order=True):
        if group.height < MIN_GROUP:
            continue
        times = group["start"].to_numpy()
        ends = np.searchsorted(times, times + window, side="right")  # [first, end) = a window's members
        first = int(np.argmax(ends - np.arange(len(times))))
        members = slice(first, int(ends[first]))
        size = members.stop - members.start
        in_window = int(np.searchsorted(starts, times[first] + window, side="right") - np.searchsorted(starts, times[first]))
        expected = in_window * float(group["share"][0])
        if size >= MIN_GROUP and size >= MIN_LIFT * expected:
            reason = (f"coordinated burst: {size} profiles, each made within {BURST_HOURS:g} h and started within "
                      f"{WINDOW_HOURS:g} h of {times[first]}, all hold item {item} ({size / max(expected, 1e-9):.0f}x "
                      f"the {expected:.2f} expected from its share of users)")
            for user in group["user_id"][members.start : members.stop]:
                flagged.setdefault(user, reason)
    return pl.DataFrame({"user_id": list(flagged), "reason": list(flagged.values())}, schema=schema)


def set_aside(
    interactions: pl.DataFrame, users: pl.DataFrame, suspects: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """One partition's interactions and users without the suspects, and the suspects' interactions with their reason."""
    is_suspect = pl.col("user_id").is_in(suspects["user_id"].implode())
    moved = interactions.filter(is_suspect).join(suspects, on="user_id", how="left")
    return interactions.filter(~is_suspect), users.filter(~is_suspect), moved
