"""Injected-profile attacks (`recbatch generate --attack`) and the ingest-time defence that quarantines them."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recbatch.cli import main
from recbatch.data.attacks import BANDWAGON_POOL, BANDWAGON_RANDOM_SHARE, BURST_MINUTES
from recbatch.data.ingest import ingest
from recbatch.data.profiles import BURST_SIGNAL, RATING_SIGNAL, quarantined_by_signal


@pytest.mark.parametrize("protocol", ["recent_days", "leave_last_n"])  # the nightly's time window, and per user
def test_attacks_add_fake_profiles_that_push_the_target_into_train(ray_local, tiny_pipeline_config, demo_source, tmp_path,
                                                                    protocol):
    cfg = tiny_pipeline_config(**{"generate.id_type": "string", "split.protocol": protocol})
    demo_source(cfg)
    clean = ingest(cfg)
    popularity = pl.read_parquet(clean.table_path("interactions")).group_by("item_id").len()
    target = popularity.sort(["len", "item_id"])["item_id"][0]  # the least popular item
    pool = set(popularity.sort(["len", "item_id"], descending=[True, False])["item_id"].head(BANDWAGON_POOL + 1))
    expected = math.ceil(0.05 * clean.counts["users"])  # fake profiles at --share 0.05

    for kind in ("average", "bandwagon"):
        out = tmp_path / kind
        assert main(["generate", "--root", cfg.root, "--attack", kind, "--target", target, "--share", "0.05",
                     "--snapshot", str(clean.path), "--out", str(out)]) == 0
        truth = json.loads((out / "attack.json").read_text())
        fakes = truth["fake_user_ids"]
        assert len(fakes) == expected and truth["target"] == target

        attacked = ingest(cfg.with_overrides({"ingest.source": str(out)}))
        assert attacked.counts["users"] == clean.counts["users"] + expected
        split = pl.read_parquet(attacked.table_path("split")).filter(pl.col("user_id").is_in(fakes))
        train_targets = split.filter((pl.col("split") == "train") & (pl.col("item_id") == target))
        assert train_targets["user_id"].n_unique() == expected  # every fake profile teaches the target
        span = split["ts"].max() - split["ts"].min()
        assert span.total_seconds() <= BURST_MINUTES * 60
        per_profile = split.filter(pl.col("item_id") != target).group_by("user_id").agg(
            n=pl.len(), popular=pl.col("item_id").is_in(list(pool)).sum(), distinct=pl.col("item_id").n_unique()
        )
        assert (per_profile["n"] == per_profile["distinct"]).all()  # no filler twice
        if kind == "bandwagon":  # camouflage: mostly the popular items
            assert (per_profile["popular"] >= per_profile["n"] - (per_profile["n"] * BANDWAGON_RANDOM_SHARE).round()).all()
        real = pl.read_parquet(attacked.table_path("interactions")).filter(~pl.col("user_id").is_in(fakes))
        assert real.height == clean.counts["interactions"]

        # The defence: every fake profile quarantined with its reason, no real user touched.
        defended = ingest(cfg.with_overrides({"ingest.source": str(out), "ingest.detect_injected_profiles": True}))
        assert defended.counts["quarantined_profiles"] == expected
        assert defended.counts["users"] == clean.counts["users"]
        quarantined = pl.read_parquet(defended.path / "quarantine" / "profiles.parquet")
        assert set(quarantined["user_id"]) == set(fakes)
        assert quarantined["reason"].str.contains(f"item {target}").all()
        assert quarantined_by_signal(defended).row(0) == (BURST_SIGNAL, expected, quarantined.height)
        kept = pl.read_parquet(defended.table_path("interactions"))
        assert kept.sort("user_id", "ts").equals(pl.read_parquet(clean.table_path("interactions")).sort("user_id", "ts"))

    unattacked = ingest(cfg.with_overrides({"ingest.detect_injected_profiles": True}))
    assert unattacked.hash == clean.hash  # no real user quarantined: the same tables, the same snapshot


def _rate_like_people(source: Path, seed: int = 0) -> None:
    """Give a generated source's interactions ratings as people give them: each item's own
    level plus about a star of personal taste, in half stars from 0.5 to 5."""
    rng = np.random.default_rng(seed)
    interactions = pl.read_parquet(source / "interactions.parquet")
    items = interactions["item_id"].unique().sort()
    level = pl.DataFrame({"item_id": items, "level": rng.uniform(2.5, 4.5, items.len())})
    taste = pl.Series(rng.normal(0.0, 0.9, interactions.height))
    rated = interactions.join(level, on="item_id", maintain_order="left").with_columns(
        rating=((pl.col("level") + taste) * 2).round().clip(1, 10) / 2
    )
    rated.drop("level").write_parquet(source / "interactions.parquet")


def test_ratings_far_from_the_population_catch_a_campaign_spread_over_weeks(
    ray_local, tiny_pipeline_config, demo_source, tmp_path
):
    cfg = tiny_pipeline_config()
    _rate_like_people(Path(demo_source(cfg)))
    clean = ingest(cfg)
    defence = {"ingest.detect_injected_profiles": True}
    assert ingest(cfg.with_overrides(defence)).hash == clean.hash  # no real user quarantined

    target = pl.read_parquet(clean.table_path("interactions")).group_by("item_id").len().sort("len", "item_id")["item_id"][0]
    out = tmp_path / "slow-average"  # a patient campaign: profiles started over 60 days, so no burst to see
    assert main(["generate", "--root", cfg.root, "--attack", "average", "--target", str(target), "--share", "0.05",
                 "--spread-days", "60", "--snapshot", str(clean.path), "--out", str(out)]) == 0
    fakes = json.loads((out / "attack.json").read_text())["fake_user_ids"]
    starts = pl.read_parquet(out / "interactions.parquet").filter(pl.col("user_id").is_in(fakes)).group_by("user_id").agg(
        pl.col("ts").min())["ts"].sort()
    assert (starts.diff().drop_nulls() > dt.timedelta(days=1)).all()

    caught = []
    for users_per_partition in (1_000, 16):  # one partition, then many: the same suspects, the same reasons
        snapshot = ingest(cfg.with_overrides({"root": str(tmp_path / f"root-{users_per_partition}"), "ingest.source": str(out),
                                              "ingest.users_per_partition": users_per_partition, **defence}))
        caught.append(pl.read_parquet(snapshot.path / "quarantine" / "profiles.parquet")
                      .select("user_id", "reason").unique().sort("user_id"))
    assert snapshot.partitions > 1
    assert caught[0].equals(caught[1])
    assert set(caught[0]["user_id"]) == set(fakes)
    by_signal = dict((signal, (n, rows)) for signal, n, rows in quarantined_by_signal(snapshot).iter_rows())
    assert by_signal == {BURST_SIGNAL: (0, 0), RATING_SIGNAL: (len(fakes), snapshot.counts["quarantined_profile_interactions"])}
    for reason in caught[0]["reason"]:  # too typical: fillers at their item's mean (the target is pulled up by the fakes)
        assert reason.startswith("ratings far from the population: ") and "closer than real people rate" in reason
        assert "coordinated burst" not in reason and "furthest from its mean: item " in reason


def test_attack_refuses_an_unknown_target(ray_local, tiny_pipeline_config, demo_source, capsys):
    cfg = tiny_pipeline_config()
    demo_source(cfg)
    ingest(cfg)
    assert main(["generate", "--root", cfg.root, "--attack", "average", "--target", "999999"]) == 2
    assert "999999" in capsys.readouterr().err
    assert not (Path(cfg.root) / "attacked-source-average").exists()


def test_target_exposure_counts_real_users_with_the_target_in_their_top_k():
    from recbatch.eval.exposure import target_exposure

    recs = pl.LazyFrame({"user_id": [1, 2, 3, 99], "item_ids": [[7, 5], [5, 6, 7], [6, 5], [7, 8]]})
    real = pl.Series([1, 2, 3, 4])  # user 4 has no list; user 99 is fake
    assert target_exposure(recs, 7, k=2, real_users=real) == 0.25  # only user 1 has 7 in the top 2
    assert target_exposure(recs, 7, k=3, real_users=real) == 0.5
    assert target_exposure(recs, 5, k=1, real_users=real) == 0.25
