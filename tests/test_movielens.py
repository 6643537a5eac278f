"""Each MovieLens layout, from small files written here exactly as the releases ship them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from recbatch.cli import main
from recbatch.config import load_config
from recbatch.data.ingest import ingest
from recbatch.data.snapshot import Snapshot

# Ingest runs its per-partition work as Ray tasks: share the session's Ray (starting one costs seconds).
pytestmark = pytest.mark.usefixtures("ray_local")

REAL_ML_LATEST_SMALL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ml-latest-small"


def config(tmp_path: Path, source: Path, **overrides):
    base = {"root": str(tmp_path / "root"), "ingest.source": str(source), "split.min_user_interactions": 2}
    base.update(overrides)
    return load_config(None, base)


def by_id(frame: pl.DataFrame, key: str) -> dict:
    return {row[key]: row for row in frame.iter_rows(named=True)}


def write_ml_latest(folder: Path) -> Path:
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n1,2,3.5,964981247\n1,3,5.0,964982224\n"
        "2,1,2.0,1445714994\n2,3,4.5,1445715054\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Strange Film (2001),(no genres listed)\n"
    )
    (folder / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "2,1,pixar,1445714994\n1,1,Pixar,1445714996\n2,1,fun,1445714997\n2,2,politics,1445714998\n"
    )
    return folder


def test_ml_latest_layout(tmp_path):
    # leave-last-n: no time cut, so every tag is item text (a time cut's case is the next test)
    snapshot = ingest(config(tmp_path, write_ml_latest(tmp_path / "ml-latest-small"), **{"split.protocol": "leave_last_n"}))
    assert snapshot.manifest["format"] == "movielens-latest"
    assert snapshot.id_type == "int"
    assert snapshot.counts["interactions"] == 5 and snapshot.counts["items"] == 3 and snapshot.counts["users"] == 2

    items = by_id(snapshot.items().collect(), "item_id")
    assert items[1]["genres"] == "Adventure, Animation, Children"
    assert items[1]["tags"] == "pixar, fun"  # case-insensitive duplicates merged, most used first
    assert items[2]["title"] == "American President, The (1995)"
    assert items[3]["genres"] is None  # "(no genres listed)" is not text to learn from

    inter = snapshot.interactions().collect()
    first = inter.filter((pl.col("user_id") == 1) & (pl.col("item_id") == 1)).row(0, named=True)
    assert first["rating"] == 4.0
    assert first["ts"] == dt.datetime.fromtimestamp(964982703, dt.UTC)
    assert sorted(snapshot.users().collect()["user_id"].to_list()) == [1, 2]  # derived from the ratings


def test_ml_100k_layout_latin1_and_genre_flags(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n")
    flags_toy = ["0", "0", "0", "1", "1", "1"] + ["0"] * 13  # Animation, Children's, Comedy
    flags_cafe = ["0"] * 8 + ["1"] + ["0"] * 10  # Drama
    (folder / "u.item").write_bytes(
        (
            "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
            + "|".join(flags_toy)
            + "\n2|Café au lait (1993)|01-Jan-1993||http://us.imdb.com/x|"
            + "|".join(flags_cafe)
            + "\n"
        ).encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    snapshot = ingest(config(tmp_path, folder))

    assert snapshot.manifest["format"] == "ml-100k"
    items = by_id(snapshot.items().collect(), "item_id")
    assert items[1]["genres"] == "Animation, Children's, Comedy"
    assert items[2]["title"] == "Café au lait (1993)"  # decoded from latin-1, stored as UTF-8
    assert items[2]["genres"] == "Drama"
    users = by_id(snapshot.users().collect(), "user_id")
    assert users[1]["age"] == 24 and users[1]["occupation"] == "technician"
    assert snapshot.counts["interactions"] == 3
    assert snapshot.interactions().collect()["rating"].to_list() == [5.0, 3.0, 4.0]


def test_ml_1m_layout_double_colon_latin1(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Amélie: A Tale (2001)::Comedy|Romance\n".encode(
            "latin-1"
        )
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    snapshot = ingest(config(tmp_path, folder, **{"ingest.min_rating": 4.0}))

    assert snapshot.manifest["format"] == "ml-1m"
    items = by_id(snapshot.items().collect(), "item_id")
    assert items[661]["title"] == "Amélie: A Tale (2001)"  # single colons inside titles survive
    assert items[661]["genres"] == "Comedy, Romance"
    assert by_id(snapshot.users().collect(), "user_id")[2]["gender"] == "M"
    # min_rating keeps the rows and says how many fall below it
    assert snapshot.counts["interactions"] == 3
    assert snapshot.counts["below_min_rating"] == 1


def test_format_flag_overrides_detection_and_cli_prints_counts(tmp_path, capsys):
    source = write_ml_latest(tmp_path / "renamed")
    code = main(["ingest", "--root", str(tmp_path / "root"), "--source", str(source), "--format", "movielens-latest"])
    out = capsys.readouterr().out
    assert code == 0
    assert "snapshots/" in out and '"interactions": 5' in out


def test_wrong_format_flag_fails_clearly(tmp_path, capsys):
    source = write_ml_latest(tmp_path / "ml")
    code = main(["ingest", "--root", str(tmp_path / "root"), "--source", str(source), "--format", "ml-1m"])
    err = capsys.readouterr().err
    assert code == 3
    assert "ratings.dat" in err
    assert not (tmp_path / "root" / "snapshots").exists()


@pytest.mark.skipif(not REAL_ML_LATEST_SMALL.is_dir(), reason="../shared/data/ml-latest-small is not present")
def test_real_ml_latest_small_counts_match_its_readme(tmp_path):
    snapshot = ingest(config(tmp_path, REAL_ML_LATEST_SMALL, **{"split.min_user_interactions": 10}))
    assert snapshot.counts["interactions"] == 100_836
    assert snapshot.counts["users"] == 610
    assert snapshot.counts["items"] == 9_742
    assert snapshot.counts["quarantined_interactions"] == 0
    reopened = Snapshot.open(snapshot.path)
    assert reopened.split().collect().height == 100_836


def test_temporal_split_keeps_tags_written_after_the_cutoff_out_of_item_text(tmp_path):
    """Tags are item text the model trains on: a replay of a nightly job must not see the test period's."""
    source = write_ml_latest(tmp_path / "ml-latest-small")
    (source / "tags.csv").write_text(
        "userId,movieId,tag,timestamp\n"
        "1,1,early,964982000\n"  # before the cutoff: kept
        "2,1,late,1445715000\n2,2,politics,1445715001\n"  # after the last train rating: left out
    )
    # 5 ratings; the 0.6 quantile (lower) is the 3rd ts, 964982703: user 2's two ratings are test
    snapshot = ingest(config(tmp_path, source, **{"split.protocol": "temporal", "split.temporal_train_fraction": 0.6}))
    items = by_id(snapshot.items().collect(), "item_id")
    assert items[1]["tags"] == "early" and items[2]["tags"] is None
    assert snapshot.manifest["counts"]["tag_rows_after_cutoff"] == 2
    assert snapshot.split("test").collect()["user_id"].to_list() == [2, 2]

    leave_last = ingest(config(tmp_path / "b", source, **{"split.protocol": "leave_last_n"}))  # no cut: all tags
    assert by_id(leave_last.items().collect(), "item_id")[1]["tags"] in ("early, late", "late, early")


def _ml_folder(tmp_path: Path, layout: str, ratings: list[str]) -> Path:
    """A minimal release of `layout` whose three ratings (of movies 1, 2, 1) are `ratings`, as text."""
    folder = tmp_path / layout
    if layout == "movielens-latest":
        write_ml_latest(folder)
        rows = zip((1, 1, 2), (1, 2, 1), ratings, (964982703, 964981247, 1445714994))
        (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(
            f"{u},{m},{r},{t}\n" for u, m, r, t in rows))
        return folder
    folder.mkdir()
    times = (874965758, 876893171, 888550871)
    if layout == "ml-100k":
        (folder / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in zip((1, 1, 2), (1, 2, 1), ratings, times)))
        (folder / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||x|" + "|".join(["0"] * 19) + "\n"
                                       "2|Heat (1995)|01-Jan-1995||x|" + "|".join(["0"] * 19) + "\n")
    else:
        (folder / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in zip((1, 1, 2), (1, 2, 1), ratings, times)))
        (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation\n2::Heat (1995)::Crime\n")
    return folder


RATING_FILES = {"movielens-latest": "ratings.csv", "ml-100k": "u.data", "ml-1m": "ratings.dat"}
# Per layout: two ratings off its documented scale (and one on it), and what the message names.
OFF_SCALE = {
    "movielens-latest": (["4.5", "55.0", "4.25"], "0.5 to 5 in steps of 0.5"),  # half stars only
    "ml-100k": (["5", "6", "0"], "1 to 5 in steps of 1"),
    "ml-1m": (["3", "4.5", "10"], "1 to 5 in steps of 1"),  # whole stars only
}


@pytest.mark.parametrize("layout", sorted(OFF_SCALE))
def test_ratings_off_the_documented_scale_fail_or_are_quarantined(tmp_path, capsys, layout):
    ratings, scale = OFF_SCALE[layout]
    folder = _ml_folder(tmp_path, layout, ratings)
    code = main(["ingest", "--root", str(tmp_path / "root"), "--source", str(folder)])
    err = capsys.readouterr().err
    assert code == 3, err
    for fragment in (RATING_FILES[layout], "column 'rating': 2 of 3", scale, ratings[1], ratings[2]):
        assert fragment in err, f"{fragment!r} not in: {err}"
    assert not (tmp_path / "root" / "snapshots").exists() or not list((tmp_path / "root" / "snapshots").iterdir())

    snapshot = ingest(config(tmp_path, folder, **{"ingest.on_bad_rows": "quarantine"}))
    assert snapshot.counts["interactions"] == 1 and snapshot.counts["quarantined_interactions"] == 2
    assert snapshot.interactions().collect()["rating"].to_list() == [float(ratings[0])]
    bad = pl.read_parquet(snapshot.path / "quarantine" / "interactions.parquet")
    assert bad["reason"].to_list() == ["rating out of range"] * 2
    assert bad["source_row"].to_list() == [2, 3]
