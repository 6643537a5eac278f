"""The demo generator: determinism, shape, id types, chunked writing, and that its text carries taste."""

from __future__ import annotations

import re

import polars as pl
import pyarrow.parquet as pq

from recbatch.cli import main
from recbatch.config import GenerateConfig
from recbatch.data.generate import generate_demo, users_per_chunk

TABLES = ("interactions", "items", "users")


def read(folder, table: str) -> pl.DataFrame:
    return pl.read_parquet(folder / f"{table}.parquet")


def test_same_seed_same_rows_other_seed_other_rows(tmp_path):
    cfg = GenerateConfig(users=80, items=50, topics=5, interactions_per_user=8, seed=3)
    generate_demo(cfg, tmp_path / "a")
    generate_demo(cfg, tmp_path / "b")
    generate_demo(GenerateConfig(users=80, items=50, topics=5, interactions_per_user=8, seed=4), tmp_path / "c")
    for table in TABLES:
        assert read(tmp_path / "a", table).equals(read(tmp_path / "b", table))
    assert not read(tmp_path / "a", "interactions").equals(read(tmp_path / "c", "interactions"))


def test_tables_have_the_canonical_columns_and_plausible_content(tmp_path):
    cfg = GenerateConfig(users=300, items=1000, topics=6, interactions_per_user=10)
    summary = generate_demo(cfg, tmp_path)
    items, users, inter = read(tmp_path, "items"), read(tmp_path, "users"), read(tmp_path, "interactions")

    assert items.columns == ["item_id", "title", "genres", "tags", "description", "available", "year"]
    assert items.height == 1000 and items["item_id"].n_unique() == 1000
    assert (items["title"].str.strip_chars().str.len_chars() > 0).all()
    assert 0.01 <= 1 - items["available"].mean() <= 0.06  # a few percent unavailable
    assert users.columns == ["user_id", "country", "age_band", "activity"] and users.height == 300
    assert inter.columns == ["user_id", "item_id", "ts"] and inter.height == summary["interactions"]
    assert 7 <= inter.height / 300 <= 12  # about interactions_per_user each
    assert inter.select(pl.struct("user_id", "item_id").is_duplicated().any()).item() is False  # no repeats
    per_user_sorted = inter.group_by("user_id").agg((pl.col("ts").diff().drop_nulls() >= 0).all().alias("ok"))
    assert per_user_sorted["ok"].all()  # each user's events come in time order
    assert set(inter["item_id"].unique().to_list()) <= set(items["item_id"].to_list())


def test_string_ids_look_like_u000123_and_i000045(tmp_path):
    generate_demo(GenerateConfig(users=20, items=30, topics=3, interactions_per_user=5, id_type="string"), tmp_path)
    inter = read(tmp_path, "interactions")
    assert inter.schema["user_id"] == pl.String and inter.schema["item_id"] == pl.String
    assert all(re.fullmatch(r"u\d{6}", u) for u in inter["user_id"].to_list())
    assert all(re.fullmatch(r"i\d{6}", i) for i in read(tmp_path, "items")["item_id"].to_list())


def test_users_are_written_in_chunks_of_bounded_size(tmp_path):
    cfg = GenerateConfig(users=2500, items=200, topics=200, interactions_per_user=20)
    assert users_per_chunk(cfg) < 2500
    generate_demo(cfg, tmp_path)
    assert pq.ParquetFile(tmp_path / "interactions.parquet").metadata.num_row_groups > 1
    users = read(tmp_path, "users")["user_id"]
    assert users.to_list() == list(range(2500))  # chunks join up: every user once, in order


def test_item_text_carries_the_users_taste(tmp_path):
    """A user's most frequent genre so far predicts their last item's genre far better than chance."""
    generate_demo(GenerateConfig(users=500, items=400, topics=8, interactions_per_user=15), tmp_path)
    genre = read(tmp_path, "items").select("item_id", pl.col("genres").str.split(", ").list.first().alias("genre"))
    inter = read(tmp_path, "interactions").join(genre, on="item_id").sort("user_id", "ts")
    per_user = inter.group_by("user_id").agg(
        pl.col("genre").last().alias("last"),
        pl.col("genre").head(pl.len() - 1).mode().sort().first().alias("usual"),
    )
    hit = (per_user["usual"] == per_user["last"]).mean()
    chance = (per_user["usual"] == per_user["last"].shift(1)).mean()  # someone else's last item
    assert hit > 2 * chance


def test_generate_command_maps_flags_to_config(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        ["generate", "--out", str(out), "--users", "25", "--items", "15", "--topics", "3",
         "--interactions-per-user", "4", "--seed", "11", "--id-type", "string"]
    )  # fmt: skip
    assert code == 0
    assert '"interactions"' in capsys.readouterr().out
    assert read(out, "users").height == 25 and read(out, "items").height == 15
    assert read(out, "items")["item_id"][0] == "i000000"
