"""MovieLens layouts, read as they ship, into the canonical raw tables.

Four releases, three on-disk shapes:

=================  ==========================================  ==========  ==========
format             files                                       separator   encoding
=================  ==========================================  ==========  ==========
movielens-latest   ratings.csv, movies.csv, [tags.csv]         ``,``       UTF-8
(ml-latest-small, ml-25m)
ml-100k            u.data, u.item, [u.user, u.genre]           tab / ``|`` latin-1
ml-1m              ratings.dat, movies.dat, [users.dat]        ``::``      latin-1
=================  ==========================================  ==========  ==========

Ratings become interactions with ``rating`` and ``ts`` (unix seconds, parsed by
validation). Genres become readable text (``Adventure, Children``) because the
item tower reads text; free-text tags are aggregated per movie into ``tags``.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recbatch.config import SplitConfig
from recbatch.data.readers import RatingScale, RawSource, RawTable, read_delimited
from recbatch.errors import DataValidationError

# Files whose presence identifies each layout (checked in this order).
LAYOUT_FILES: dict[str, tuple[str, ...]] = {
    "movielens-latest": ("ratings.csv", "movies.csv"),
    "ml-100k": ("u.data", "u.item"),
    "ml-1m": ("ratings.dat", "movies.dat"),
}

# u.genre of ml-100k, in flag order (used when u.genre itself is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

NO_GENRES = "(no genres listed)"

# The documented rating scale of each layout (the releases' README files).
RATING_SCALES: dict[str, RatingScale] = {
    "movielens-latest": RatingScale(0.5, 5.0, 0.5, "MovieLens: half stars from 0.5 to 5.0"),
    "ml-100k": RatingScale(1.0, 5.0, 1.0, "ml-100k: whole stars from 1 to 5"),
    "ml-1m": RatingScale(1.0, 5.0, 1.0, "ml-1m: whole stars from 1 to 5"),
}


def detect_layout(folder: Path) -> str | None:
    """The MovieLens layout whose files are all present in `folder`, if any."""
    for name, files in LAYOUT_FILES.items():
        if all((folder / f).is_file() for f in files):
            return name
    return None


def require_layout_files(folder: Path, layout: str) -> None:
    """Fail naming the missing files when a folder does not hold the layout it was read as."""
    missing = [f for f in LAYOUT_FILES[layout] if not (folder / f).is_file()]
    if missing:
        raise DataValidationError(
            f"{folder}: {', '.join(missing)} missing: the {layout} layout needs "
            f"{', '.join(LAYOUT_FILES[layout])}; check --format (or use --format auto)."
        )


def readable_genres(column: str = "genres") -> pl.Expr:
    """``Adventure|Children`` -> ``Adventure, Children``; MovieLens' no-genre marker -> null."""
    col = pl.col(column)
    readable = col.str.replace_all("|", ", ", literal=True)
    return pl.when(col.is_null() | (col == NO_GENRES)).then(None).otherwise(readable).alias(column)


def _ratings(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(
        pl.col("userId").alias("user_id"),
        pl.col("movieId").alias("item_id"),
        pl.col("rating"),
        pl.col("timestamp").alias("ts"),
    )


def read_movielens_latest(folder: Path, split: SplitConfig | None = None) -> RawSource:
    """ml-latest-small / ml-25m: CSV with a header, UTF-8, titles quoted when they hold commas.

    With a time-cut `split` (temporal, recent_days), tags written after that
    split's cutoff are left out of the item text: item text is part of what the
    model sees at training time, and a replay of a nightly job must not know
    tags from the test period. They are counted (``tag_rows_after_cutoff``).
    """
    require_layout_files(folder, "movielens-latest")
    ratings_path, movies_path, tags_path = folder / "ratings.csv", folder / "movies.csv", folder / "tags.csv"
    interactions = _ratings(read_delimited(ratings_path))
    movies = read_delimited(movies_path).select(
        pl.col("movieId").alias("item_id"), pl.col("title"), readable_genres("genres")
    )
    files = [ratings_path, movies_path]
    counts: dict[str, int] = {}
    if tags_path.is_file():
        tags = read_delimited(tags_path)
        files.append(tags_path)
        counts["tag_rows"] = tags.height
        counts["tag_rows_unknown_movie"] = tags.filter(~pl.col("movieId").is_in(movies["item_id"].implode())).height
        if split is not None and split.protocol != "leave_last_n":
            tags, counts["tag_rows_after_cutoff"] = _tags_until_cutoff(tags, interactions, split)
        movies = movies.join(aggregate_tags(tags), on="item_id", how="left")
    return RawSource(
        format="movielens-latest",
        interactions=RawTable("interactions", interactions, ratings_path),
        items=RawTable("items", movies, movies_path),
        users=None,  # this release has no user table: users come from the ratings
        files=files,
        counts=counts,
        rating_scale=RATING_SCALES["movielens-latest"],
    )


def _tags_until_cutoff(tags: pl.DataFrame, ratings: pl.DataFrame, split: SplitConfig) -> tuple[pl.DataFrame, int]:
    """Tags written no later than the time-cut split's cutoff, and how many were later."""
    from recbatch.data.split import global_cutoff
    from recbatch.data.validate import parse_timestamp

    times = ratings.select(parse_timestamp(ratings.schema["ts"], "ts")).drop_nulls()
    cutoff = times.select(global_cutoff(times, split)).item()
    late = parse_timestamp(tags.schema["timestamp"], "timestamp") > cutoff
    return tags.filter(~late.fill_null(False)), tags.filter(late.fill_null(False)).height


def aggregate_tags(tags: pl.DataFrame) -> pl.DataFrame:
    """One ``tags`` text per movie: distinct tags (case-insensitive), most used first.

    Tags of movies missing from movies.csv cannot reach the snapshot; the
    reader counts them (``tag_rows_unknown_movie``) so the manifest says so.
    """
    return (
        tags.filter(pl.col("tag").is_not_null() & (pl.col("tag").str.strip_chars() != ""))
        .with_columns(pl.col("tag").str.strip_chars(), key=pl.col("tag").str.strip_chars().str.to_lowercase())
        .group_by("movieId", "key")
        .agg(pl.col("tag").first(), uses=pl.len())
        .sort(["movieId", "uses", "key"], descending=[False, True, False])
        .group_by("movieId", maintain_order=True)
        .agg(pl.col("tag").str.join(", ").alias("tags"))
        .rename({"movieId": "item_id"})
    )


def read_ml_100k(folder: Path) -> RawSource:
    """ml-100k: tab-separated u.data, ``|``-separated latin-1 u.item with 19 genre flags, u.user."""
    require_layout_files(folder, "ml-100k")
    data_path, item_path, user_path = folder / "u.data", folder / "u.item", folder / "u.user"
    interactions = read_delimited(
        data_path, separator="\t", has_header=False, columns=["user_id", "item_id", "rating", "ts"]
    )
    genre_names = list(ML100K_GENRES)
    if (folder / "u.genre").is_file():
        genre_table = read_delimited(
            folder / "u.genre", separator="|", encoding="latin-1", has_header=False, columns=["name", "index"]
        )
        genre_names = genre_table.sort(pl.col("index").cast(pl.Int64))["name"].to_list()
    item_columns = ["item_id", "title", "release_date", "video_release_date", "imdb_url"]
    raw_items = read_delimited(
        item_path,
        separator="|",
        encoding="latin-1",
        has_header=False,
        columns=item_columns + [f"g{i}" for i in range(len(genre_names))],
        quote_char=None,
    )
    genre_flags = [
        pl.when(pl.col(f"g{i}") == "1").then(pl.lit(name)) for i, name in enumerate(genre_names) if name != "unknown"
    ]
    items = raw_items.select(
        "item_id",
        "title",
        pl.concat_str(genre_flags, separator=", ", ignore_nulls=True).replace("", None).alias("genres"),
        "release_date",
    )
    return _with_optional_users(
        "ml-100k",
        RawTable("interactions", interactions, data_path),
        RawTable("items", items, item_path),
        user_path,
        ["user_id", "age", "gender", "occupation", "zip_code"],
        separator="|",
    )


def read_ml_1m(folder: Path) -> RawSource:
    """ml-1m: ``::``-separated latin-1 ratings.dat, movies.dat (genres ``|``), users.dat."""
    require_layout_files(folder, "ml-1m")
    ratings_path, movies_path, users_path = folder / "ratings.dat", folder / "movies.dat", folder / "users.dat"
    dat = dict(separator="::", encoding="latin-1", has_header=False, quote_char=None)
    interactions = read_delimited(ratings_path, columns=["user_id", "item_id", "rating", "ts"], **dat)
    items = read_delimited(movies_path, columns=["item_id", "title", "genres"], **dat).with_columns(
        readable_genres("genres")
    )
    return _with_optional_users(
        "ml-1m",
        RawTable("interactions", interactions, ratings_path),
        RawTable("items", items, movies_path),
        users_path,
        ["user_id", "gender", "age", "occupation", "zip_code"],
        separator="::",
    )


def _with_optional_users(
    fmt: str, interactions: RawTable, items: RawTable, users_path: Path, user_columns: list[str], separator: str
) -> RawSource:
    """A headerless latin-1 release's source, with its user table when the folder has one."""
    users = None
    files = [interactions.path, items.path]
    if users_path.is_file():
        frame = read_delimited(
            users_path, separator=separator, encoding="latin-1", has_header=False, columns=user_columns, quote_char=None
        )
        users = RawTable("users", frame, users_path)
        files.append(users_path)
    return RawSource(format=fmt, interactions=interactions, items=items, users=users, files=files,
                     rating_scale=RATING_SCALES[fmt])


READERS = {
    "movielens-latest": read_movielens_latest,
    "ml-100k": read_ml_100k,
    "ml-1m": read_ml_1m,
}
