"""Ingest-time defence against injected profiles: two signals, each with its own reason.

A shilling campaign (recbatch/data/attacks.py) needs many fake accounts that
all touch its target, dressed as real users. Two fingerprints give them away.

**Coordinated bursts.** A script makes each whole profile within minutes, all
of them within the same hour or so. Real users do rate in one sitting too
(MovieLens users mostly do), and two of them may start in the same hour, but
many such users sharing one item is rare unless the item is so popular that
the overlap is expected. So a group is quarantined when

* each of its profiles spans at most ``BURST_HOURS`` (first to last event)
  and has at least ``MIN_PROFILE_EVENTS`` events,
* the profiles started within ``WINDOW_HOURS`` of each other,
* all of them hold the same item, at least ``MIN_GROUP`` profiles, and
* that is ``MIN_LIFT`` times more than expected from the item's share of all
  users (so a burst of real fans of a blockbuster is not a campaign).

**Ratings far from the population** (rated data only), which catches
campaigns spread over days or weeks. A fake profile must rate its camouflage
somehow, and the cheap, classic way is each item's mean rating: real people
disagree with the crowd by most of a star on average, an "average" or
"bandwagon" profile by the half-star rounding only. A profile's *deviation* is
its mean ``|rating - item mean|`` over its ratings except the one furthest
from its item's mean (the would-be target, named in the reason), for profiles
with at least ``MIN_RATINGS`` ratings. On a log scale these are roughly normal
across real users, so a profile is quarantined when its log deviation is more
than ``DEVIATION_Z`` robust standard deviations (interquartile range / 1.349,
which a few hundred fakes barely move) from the median, on either side: far
too typical, or far too contrary (random or "nuke" ratings).

Both need whole-population facts but never hold every user at once: per user
partition, ``profile_evidence`` takes small per-item totals (users, rating
sums) and the burst profiles; ``combine`` adds them up exactly (users are
disjoint across partitions); ``rating_deviation`` then scores one partition's
profiles against the exact item means, and ``find_rating_outliers`` takes the
quantiles over the scored parts in bounded streaming passes
(``split.lower_quantile``).

What neither catches: profiles rated like real people (noisy ratings, spread
out in time), and campaigns of short profiles, which say too little to judge
(and push little). Quarantined profiles leave the interactions and users
tables and go to ``quarantine/profiles.parquet`` with their reasons, where an
operator can review them (docs/operations.md).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from recbatch.data.split import lower_quantile

if TYPE_CHECKING:
    from recbatch.data.snapshot import Snapshot

BURST_HOURS = 2.0  # a profile made in one sitting
WINDOW_HOURS = 2.0  # sittings that started together
MIN_PROFILE_EVENTS = 3  # shorter profiles say too little to judge (and push little)
MIN_GROUP = 5  # fewer accounts than this are not a campaign worth the risk of a false alarm
MIN_LIFT = 10.0  # how much more often than chance the group shares the item

MIN_RATINGS = 10  # a profile's agreement with the crowd over fewer ratings is mostly chance
MIN_RATED_PROFILES = 20  # fewer profiles to compare with are no population
DEVIATION_Z = 4.5  # robust z of the log deviation; real ml-latest-small users reach -3.4 and +3.9, 1-20% fakes -5.2 or less
DEVIATION_FLOOR = 0.01  # stars: a profile that copies the means exactly gets a finite log
IQR_PER_SIGMA = 1.349  # interquartile range of a normal distribution, in standard deviations
LOG_UNITS = 1_000_000  # log deviations as integers for the exact streaming quantile (split.lower_quantile)

BURST_SIGNAL = "coordinated burst"  # every reason starts with its signal's name and a colon
RATING_SIGNAL = "ratings far from the population"
SIGNALS = (BURST_SIGNAL, RATING_SIGNAL)
QUARANTINE_FILE = "quarantine/profiles.parquet"  # inside the snapshot folder


@dataclass
class ProfileEvidence:
    """What detection needs from a set of users: small next to their interactions.

    Built per user partition (``profile_evidence``) and added up (``combine``):
    users are disjoint across partitions, so the per-item counts and sums add, and
    only the burst profiles (not every user) travel to the one place that judges them.
    """

    users: int  # users seen
    bursts: pl.DataFrame  # user_id, start: the profiles made in one sitting
    item_users: pl.DataFrame  # item_id, users, rating_sum, ratings: per item, users holding it and their ratings
    held: pl.DataFrame  # item_id, user_id, start: the items the burst profiles hold


def profile_evidence(interactions: pl.DataFrame) -> ProfileEvidence:
    """The evidence of one user partition (every row of its users)."""
    profiles = interactions.group_by("user_id").agg(
        start=pl.col("ts").min(), end=pl.col("ts").max(), events=pl.len()
    )
    bursts = profiles.filter(
        (pl.col("end") - pl.col("start") <= dt.timedelta(hours=BURST_HOURS))
        & (pl.col("events") >= MIN_PROFILE_EVENTS)
    ).select("user_id", "start")
    rating = pl.col("rating") if "rating" in interactions.columns else pl.lit(None, pl.Float64)
    item_users = interactions.group_by("item_id").agg(
        users=pl.col("user_id").n_unique().cast(pl.Int64),
        rating_sum=rating.sum().cast(pl.Float64),
        ratings=rating.count().cast(pl.Int64),
    )
    held = interactions.join(bursts, on="user_id").select("item_id", "user_id", "start").unique()
    return ProfileEvidence(profiles.height, bursts, item_users, held)


def combine(evidence: list[ProfileEvidence]) -> ProfileEvidence:
    """The evidence of the union of disjoint sets of users."""
    return ProfileEvidence(
        users=sum(e.users for e in evidence),
        bursts=pl.concat([e.bursts for e in evidence]),
        item_users=pl.concat([e.item_users for e in evidence]).group_by("item_id").agg(pl.all().sum()),
        held=pl.concat([e.held for e in evidence]),
    )


def item_mean_ratings(evidence: ProfileEvidence) -> pl.DataFrame | None:
    """``item_id``, ``mean``: every rated item's mean rating; None when the data has no ratings."""
    rated = evidence.item_users.filter(pl.col("ratings") > 0)
    if rated.is_empty():
        return None
    return rated.select("item_id", mean=pl.col("rating_sum") / pl.col("ratings"))


def find_bursts(evidence: ProfileEvidence) -> pl.DataFrame:
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
            reason = (f"{BURST_SIGNAL}: {size} profiles, each made within {BURST_HOURS:g} h and started within "
                      f"{WINDOW_HOURS:g} h of {times[first]}, all hold item {item} ({size / max(expected, 1e-9):.0f}x "
                      f"the {expected:.2f} expected from its share of users)")
            for user in group["user_id"][members.start : members.stop]:
                flagged.setdefault(user, reason)
    return pl.DataFrame({"user_id": list(flagged), "reason": list(flagged.values())}, schema=schema)


def rating_deviation(interactions: pl.DataFrame, means: pl.DataFrame) -> pl.DataFrame:
    """One user partition's profiles of at least ``MIN_RATINGS`` ratings, scored against the item `means`.

    ``user_id``, ``ratings``, ``deviation`` (mean ``|rating - item mean|`` but
    for the furthest rating), ``log_key`` (its log in integer ``LOG_UNITS``), and
    the furthest rating itself: ``furthest_item``, ``furthest_rating``, ``furthest_mean``.
    """
    gap = pl.col("gap")
    furthest = gap.arg_max()
    return (
        interactions.filter(pl.col("rating").is_not_null())
        .join(means, on="item_id")
        .sort("user_id", "item_id")  # ties of the furthest rating go to the smallest item id
        .with_columns(gap=(pl.col("rating") - pl.col("mean")).abs())
        .group_by("user_id", maintain_order=True)
        .agg(
            ratings=pl.len(),
            deviation=(gap.sum() - gap.max()) / (pl.len() - 1),
            furthest_item=pl.col("item_id").get(furthest),
            furthest_rating=pl.col("rating").get(furthest),
            furthest_mean=pl.col("mean").get(furthest),
        )
        .filter(pl.col("ratings") >= MIN_RATINGS)
        .with_columns(
            log_key=(pl.col("deviation").clip(DEVIATION_FLOOR).log() * LOG_UNITS).round().cast(pl.Int64)
        )
    )


def find_rating_outliers(deviations: pl.LazyFrame) -> pl.DataFrame:
    """``user_id``, ``reason`` of every profile whose ratings are far from the population's (see the module doc).

    `deviations` are ``rating_deviation``'s rows of every partition; the
    quantiles are exact and taken in bounded streaming passes.
    """
    schema = {"user_id": deviations.collect_schema()["user_id"], "reason": pl.String}
    if deviations.select(pl.len()).collect(engine="streaming").item() < MIN_RATED_PROFILES:
        return pl.DataFrame(schema=schema)
    q1, median, q3 = (lower_quantile(deviations, "log_key", f) / LOG_UNITS for f in (0.25, 0.5, 0.75))
    sigma = (q3 - q1) / IQR_PER_SIGMA
    if sigma <= 0:
        return pl.DataFrame(schema=schema)
    z = (pl.col("log_key") / LOG_UNITS - median) / sigma
    far = deviations.with_columns(z=z).filter(z.abs() > DEVIATION_Z).collect(engine="streaming")
    reasons = [
        f"{RATING_SIGNAL}: {row['deviation']:.2f} stars from the item means on average over "
        f"{row['ratings'] - 1} ratings, {'closer' if row['z'] < 0 else 'further'} than real people rate (median "
        f"profile {math.exp(median):.2f}, robust z {row['z']:+.1f}, limit {DEVIATION_Z:g}); furthest from its mean: "
        f"item {row['furthest_item']} rated {row['furthest_rating']:g} against {row['furthest_mean']:.2f}"
        for row in far.iter_rows(named=True)
    ]
    return pl.DataFrame({"user_id": far["user_id"], "reason": reasons}, schema=schema)


def merge_suspects(found: list[pl.DataFrame]) -> pl.DataFrame:
    """One row per suspected profile: ``user_id`` and the reasons of every signal that caught it, joined by "; "."""
    return pl.concat(found).group_by("user_id", maintain_order=True).agg(pl.col("reason").str.join("; "))


def quarantined_by_signal(snapshot: Snapshot) -> pl.DataFrame:
    """``signal``, ``profiles``, ``interactions``: what each signal set aside in a snapshot (a profile
    caught by both counts under both), for the nightly report; zeros when nothing was.
    The file is found through the snapshot's manifest, on either kind of root."""
    from recbatch.parquet_io import scan_parquet

    quarantined = QUARANTINE_FILE in snapshot.manifest["files"]
    rows = []
    for signal in SIGNALS:
        profiles = interactions = 0
        if quarantined:
            reasons = scan_parquet([snapshot.files_at.join(QUARANTINE_FILE)])
            caught = reasons.filter(pl.col("reason").str.contains(f"{signal}:", literal=True))
            profiles, interactions = caught.select(pl.col("user_id").n_unique(), pl.len()).collect().row(0)
        rows.append({"signal": signal, "profiles": profiles, "interactions": interactions})
    return pl.DataFrame(rows, schema={"signal": pl.String, "profiles": pl.Int64, "interactions": pl.Int64})


def set_aside(
    interactions: pl.DataFrame, users: pl.DataFrame, suspects: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """One partition's interactions and users without the suspects, and the suspects' interactions with their reason."""
    is_suspect = pl.col("user_id").is_in(suspects["user_id"].implode())
    moved = interactions.filter(is_suspect).join(suspects, on="user_id", how="left")
    return interactions.filter(~is_suspect), users.filter(~is_suspect), moved
