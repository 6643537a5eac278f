"""Validation: parse raw tables into typed ones, and explain every rejected row.

Two kinds of problems, treated differently on purpose:

* **Structural** (a missing or wrongly typed column, an empty file, bad
  encoding, ids of different types across tables): the source as a whole is
  wrong, so ingest always fails, whatever ``ingest.on_bad_rows`` says.
* **Row-level** (null ids, unparsable or out-of-range timestamps, ratings off
  the source's scale (``RawSource.rating_scale``), duplicate
  item ids, empty titles, references to unknown items/users): with
  ``on_bad_rows="fail"`` the first kind found raises one paragraph naming the
  file, column, number of bad rows and a few examples; with ``"quarantine"``
  the rows are set aside with a ``reason`` and counted, and the rest is kept.

Nothing is dropped silently: every row read is either in a clean table or in
a quarantine table.

Types: Parquet columns keep their types; text files (CSV, MovieLens) are read
as text and parsed here (ids that are all plain integers become int64,
anything else stays text, so ``u000123`` and ``000123`` keep their zeros).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from recbatch.data.readers import RatingScale, RawSource, RawTable
from recbatch.errors import DataValidationError
from recbatch.schemas import IdType

ROW = "__row"  # 1-based data row number in the source file, for messages
RAW = "__raw_"  # prefix of the source value kept beside each parsed column
EARLIEST_TS = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
PLAIN_INTEGER = r"^-?(0|[1-9][0-9]*)$"  # no leading zeros: "000123" is a text id
TIMESTAMP_FORMATS = (  # tried in turn; the first that parses a value wins
    None,  # polars' inference from the first value
    "%Y-%m-%dT%H:%M:%S%.f%#z",  # ISO-8601 with an offset or Z (fraction optional)
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",  # naive: read as UTC
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%d",
)

Kind = Literal["id", "timestamp", "number", "text", "flag"]

KIND_EXPECTED = {
    "id": "integer or text ids",
    "timestamp": "a timestamp (datetime, date, unix seconds or ISO-8601 text)",
    "number": "numbers",
    "text": "text (or a list of text)",
    "flag": "true/false",
}


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: Kind
    required: bool = False


INTERACTION_COLUMNS = (
    ColumnSpec("user_id", "id", True),
    ColumnSpec("item_id", "id", True),
    ColumnSpec("ts", "timestamp", True),
    ColumnSpec("rating", "number"),
    ColumnSpec("weight", "number"),
)
ITEM_COLUMNS = (
    ColumnSpec("item_id", "id", True),
    ColumnSpec("title", "text", True),
    ColumnSpec("genres", "text"),
    ColumnSpec("tags", "text"),
    ColumnSpec("description", "text"),
    ColumnSpec("available", "flag"),
)
USER_COLUMNS = (ColumnSpec("user_id", "id", True),)


@dataclass
class CleanTables:
    """Validated, typed tables plus everything that was set aside."""

    id_type: IdType
    interactions: pl.DataFrame  # user_id, item_id, ts (datetime[us, UTC]), [rating], [weight]
    items: pl.DataFrame  # item_id, title, genres, tags, description, available, attributes...
    users: pl.DataFrame  # user_id, features...
    quarantine: dict[str, pl.DataFrame] = field(default_factory=dict)  # table -> rows as text + reason
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RowCheck:
    """One row-level rule: which column, the quarantine reason, the sentence for errors."""

    column: str
    reason: str
    explains: str
    bad: pl.Expr


# --------------------------------------------------------------------------- structure


def _accepts(kind: Kind, dtype: pl.DataType) -> bool:
    if dtype == pl.Null:
        return True
    if kind == "id":
        return dtype.is_integer() or dtype == pl.String
    if kind == "timestamp":
        return dtype.is_numeric() or isinstance(dtype, pl.Datetime) or dtype in (pl.Date, pl.String)
    if kind == "number":
        return dtype.is_numeric() or dtype == pl.String
    if kind == "text":
        return dtype in (pl.String, pl.Categorical) or (isinstance(dtype, pl.List) and dtype.inner == pl.String)
    return dtype == pl.Boolean or dtype.is_integer() or dtype == pl.String  # flag


def check_structure(table: RawTable, specs: tuple[ColumnSpec, ...]) -> None:
    """Fail on a missing required column or a column of the wrong type."""
    frame = table.frame
    for spec in specs:
        if spec.name not in frame.columns:
            if spec.required:
                raise DataValidationError(
                    f"{table.path}: column '{spec.name}' is missing from the {table.name} table, so all "
                    f"{frame.height} rows lack it (found columns: {', '.join(frame.columns)}). Rename the "
                    f"source column with --map {spec.name}=<source column> (config ingest.column_map)."
                )
            continue
        dtype = frame.schema[spec.name]
        if not _accepts(spec.kind, dtype):
            examples = ", ".join(repr(v) for v in frame[spec.name].drop_nulls().head(3).to_list())
            raise DataValidationError(
                f"{table.path}: column '{spec.name}' has type {dtype}, but it must hold "
                f"{KIND_EXPECTED[spec.kind]}; all {frame.height} rows are affected (e.g. {examples}). "
                "A wrongly typed column always fails: fix the export or map another column."
            )


# --------------------------------------------------------------------------- parsing


def _parse_id(frame: pl.DataFrame, name: str, from_text: bool) -> pl.Expr:
    col = pl.col(name)
    dtype = frame.schema[name]
    if dtype.is_integer():
        return col.cast(pl.Int64)
    if dtype == pl.Null:
        return col.cast(pl.Int64)
    values = frame[name].drop_nulls()
    if from_text and len(values) > 0 and values.str.contains(PLAIN_INTEGER).all():
        return col.cast(pl.Int64)
    return col


def parse_timestamp(dtype: pl.DataType, name: str) -> pl.Expr:
    """Column `name` of type `dtype` as datetime[us, UTC]; unparsable values become null.

    The one reading of a source timestamp (datetimes, dates, unix seconds as
    numbers or text, ISO-8601 text), so every reader of raw times agrees with validation.
    """
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        as_us = col.cast(pl.Datetime("us", dtype.time_zone))
        return as_us.dt.convert_time_zone("UTC") if dtype.time_zone else as_us.dt.replace_time_zone("UTC")
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype.is_integer():
        return pl.from_epoch(col.cast(pl.Int64), time_unit="s").dt.replace_time_zone("UTC")
    if dtype.is_float():
        micros = pl.when(col.is_finite()).then(col * 1_000_000).cast(pl.Int64, strict=False)
        return pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")
    if dtype == pl.Null:
        return col.cast(pl.Datetime("us", "UTC"))
    # text: unix seconds, else ISO-8601 in one of the usual shapes
    text = col.str.strip_chars()
    seconds = text.str.to_integer(strict=False)
    not_integer = pl.when(seconds.is_null()).then(text)
    parsed = [
        not_integer.str.to_datetime(fmt, strict=False, time_zone="UTC", time_unit="us") for fmt in TIMESTAMP_FORMATS
    ]
    from_seconds = pl.from_epoch(seconds, time_unit="s").dt.replace_time_zone("UTC")
    return pl.coalesce(from_seconds, *parsed)


def _parse_number(dtype: pl.DataType, name: str) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.String:
        return col.str.strip_chars().cast(pl.Float64, strict=False)
    return col.cast(pl.Float64)


def _parse_text(dtype: pl.DataType, name: str) -> pl.Expr:
    col = pl.col(name)
    if isinstance(dtype, pl.List):
        return col.list.join(", ")
    return col.cast(pl.String)


def _parse_flag(dtype: pl.DataType, name: str) -> pl.Expr:
    col = pl.col(name)
    if dtype == pl.Boolean:
        return col
    if dtype.is_integer():
        return col != 0
    if dtype == pl.Null:
        return col.cast(pl.Boolean)
    words = {"true": True, "t": True, "yes": True, "1": True, "false": False, "f": False, "no": False, "0": False}
    return col.str.strip_chars().str.to_lowercase().replace_strict(words, default=None, return_dtype=pl.Boolean)


def _infer_text_type(series: pl.Series) -> pl.Series:
    """A text attribute column from a text file, as int64 or float64 when every value is one."""
    values = series.drop_nulls()
    if len(values) == 0:
        return series
    if values.str.contains(PLAIN_INTEGER).all():
        return series.cast(pl.Int64)
    as_float = values.str.strip_chars().cast(pl.Float64, strict=False)
    if as_float.null_count() == 0:
        return series.str.strip_chars().cast(pl.Float64)
    return series


def parse_table(table: RawTable, specs: tuple[ColumnSpec, ...]) -> pl.DataFrame:
    """Typed canonical columns, each with its source value beside it (``__raw_<name>``).

    Other columns pass through (text-file attributes get int/float types when
    every value fits) and ``__row`` numbers the rows for messages.
    """
    frame = table.frame
    from_text = not table.typed
    parsers = {
        "timestamp": parse_timestamp,
        "number": _parse_number,
        "text": _parse_text,
        "flag": _parse_flag,
    }
    exprs: list[pl.Expr] = [pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ROW)]
    for spec in specs:
        if spec.name not in frame.columns:
            continue
        dtype = frame.schema[spec.name]
        parsed = (
            _parse_id(frame, spec.name, from_text)
            if spec.kind == "id"
            else parsers[spec.kind](dtype, spec.name)
        )
        exprs += [parsed.alias(spec.name), pl.col(spec.name).alias(RAW + spec.name)]
    known = {s.name for s in specs}
    passthrough = [c for c in frame.columns if c not in known]
    out = frame.select(exprs + [pl.col(c) for c in passthrough])
    if from_text:
        out = out.with_columns(_infer_text_type(out[c]) for c in passthrough if out.schema[c] == pl.String)
    return out


# --------------------------------------------------------------------------- row checks


def _null(name: str) -> RowCheck:
    return RowCheck(name, f"null {name}", f"have no {name} (null or empty)", pl.col(name).is_null())


def _unparsable(name: str, what: str) -> RowCheck:
    bad = pl.col(name).is_null() & pl.col(RAW + name).is_not_null()
    return RowCheck(name, f"unparsable {name}", f"have a {name} that cannot be read as {what}", bad)


def _duplicate(name: str) -> RowCheck:
    return RowCheck(
        name,
        f"duplicate {name}",
        "repeat a value another row also has (all copies are bad)",
        pl.col(name).is_duplicated(),
    )


def _unknown(name: str, known: pl.Series, table_path: Path) -> RowCheck:
    bad = pl.col(name).is_not_null() & ~pl.col(name).is_in(known.implode())
    return RowCheck(name, f"unknown {name}", f"refer to an unknown {name} (not in {table_path})", bad)


def interaction_checks(now: dt.datetime) -> list[RowCheck]:
    ts = pl.col("ts")
    checks = [
        _null("user_id"),
        _null("item_id"),
        RowCheck("ts", "null ts", "have no timestamp", pl.col(RAW + "ts").is_null()),
        _unparsable("ts", "a timestamp (unix seconds or ISO-8601)"),
        RowCheck(
            "ts",
            "ts out of range",
            f"have a timestamp before {EARLIEST_TS.date()} or in the future (after {now:%Y-%m-%d %H:%M} UTC)",
            (ts < EARLIEST_TS) | (ts > now),
        ),
    ]
    return checks


def rating_check(scale: RatingScale) -> RowCheck:
    """Ratings off the source's documented scale (a null rating is no rating, not a bad one)."""
    rating = pl.col("rating")
    off = rating.is_nan() | (rating < scale.low) | (rating > scale.high)
    if scale.step:
        steps = (rating - scale.low) / scale.step
        off = off | ((steps - steps.round()).abs() > 1e-6)
    return RowCheck("rating", "rating out of range", f"have a rating outside {scale.describe()}", off)


def find_bad_rows(frame: pl.DataFrame, checks: list[RowCheck]) -> pl.Series:
    """Per row, the reason of the first failing check, or null for a good row."""
    if not checks:
        return pl.Series("reason", [None] * frame.height, dtype=pl.String)
    reason = pl.coalesce([pl.when(c.bad).then(pl.lit(c.reason)) for c in checks]).alias("reason")
    return frame.select(reason).to_series()


def raise_first_problem(table: RawTable, frame: pl.DataFrame, checks: list[RowCheck]) -> None:
    """Fail mode: one paragraph about the first check that any row fails."""
    if not checks:
        return
    counts = frame.select(c.bad.fill_null(False).sum().alias(str(i)) for i, c in enumerate(checks)).row(0)
    for check, count in zip(checks, counts):
        if count == 0:
            continue
        sample = frame.filter(check.bad).head(3)
        raw_column = RAW + check.column if RAW + check.column in frame.columns else check.column
        examples = ", ".join(
            f"row {row}: {_show(value)}" for row, value in zip(sample[ROW].to_list(), sample[raw_column].to_list())
        )
        raise DataValidationError(
            f"{table.path}: column '{check.column}': {count} of {frame.height} {table.name} rows "
            f"{check.explains} (e.g. {examples}). Fix the source, or ingest with --on-bad-rows quarantine "
            "to set such rows aside (with a reason) and keep the good ones."
        )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def split_good_bad(
    table: RawTable, frame: pl.DataFrame, checks: list[RowCheck], on_bad_rows: str
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Good rows (typed, without helper columns) and bad rows (source values as text + reason)."""
    if on_bad_rows == "fail":
        raise_first_problem(table, frame, checks)
        return _clean_columns(frame), None
    reasons = find_bad_rows(frame, checks)
    is_bad = reasons.is_not_null()
    good = _clean_columns(frame.filter(~is_bad))
    if not is_bad.any():
        return good, None
    bad = frame.filter(is_bad).with_columns(reasons.filter(is_bad))
    return good, _quarantine_rows(bad)


def _clean_columns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(c for c in frame.columns if not c.startswith(RAW) and c != ROW)


def _quarantine_rows(bad: pl.DataFrame) -> pl.DataFrame:
    """Bad rows as the source had them (text, so any value fits), with row number and reason."""
    value_columns = [c for c in bad.columns if c not in (ROW, "reason")]
    parsed_with_raw = {c[len(RAW) :] for c in value_columns if c.startswith(RAW)}
    keep = [c for c in value_columns if c not in parsed_with_raw]
    return bad.select(
        pl.col(ROW).alias("source_row"),
        *[_as_text(bad, c).alias(c.removeprefix(RAW)) for c in keep],
        pl.col("reason"),
    )


def _as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    dtype = frame.schema[name]
    if isinstance(dtype, (pl.List, pl.Array, pl.Struct)):
        return pl.col(name).map_elements(str, return_dtype=pl.String)
    return pl.col(name).cast(pl.String)


# --------------------------------------------------------------------------- whole source


def _id_kind(frame: pl.DataFrame, name: str) -> IdType:
    return "int" if frame.schema[name] == pl.Int64 else "string"


def check_id_types(pairs: list[tuple[RawTable, pl.DataFrame, str]]) -> IdType:
    """All id columns must share one type, since the snapshot has one ``id_type``.

    A column of only nulls has no type of its own; its rows fail the null-id check instead.
    """
    typed = [(table, frame, name) for table, frame, name in pairs if frame[name].null_count() < frame.height]
    kinds = [(table, name, _id_kind(frame, name)) for table, frame, name in typed]
    if not kinds:
        table, _, name = pairs[0]
        raise DataValidationError(f"{table.path}: column '{name}': all {table.frame.height} rows have no id (null)")
    first_table, first_name, first_kind = kinds[0]
    for table, name, kind in kinds[1:]:
        if kind != first_kind:
            raise DataValidationError(
                f"{table.path}: column '{name}' holds {_id_words(kind)} ids but {first_table.path} column "
                f"'{first_name}' holds {_id_words(first_kind)} ids; all "
                f"{table.frame.height} rows are affected. Ids must have one type across tables (all integers "
                "or all text) so they survive to the recommendations unchanged."
            )
    return first_kind


def _cast_ids(frame: pl.DataFrame, id_type: IdType) -> pl.DataFrame:
    """Give all-null id columns (which have no type of their own) the source's id type."""
    dtype = pl.Int64 if id_type == "int" else pl.String
    return frame.with_columns(pl.col(c).cast(dtype) for c in ("item_id", "user_id") if c in frame.columns)


def _id_words(kind: IdType) -> str:
    return "integer" if kind == "int" else "text"


def validate_source(
    source: RawSource, on_bad_rows: Literal["fail", "quarantine"] = "fail", now: dt.datetime | None = None
) -> CleanTables:
    """Parse and check a source: items first, then users, then interactions against both."""
    now = now or dt.datetime.now(dt.UTC)
    quarantine: dict[str, pl.DataFrame] = {}

    check_structure(source.items, ITEM_COLUMNS)
    check_structure(source.interactions, INTERACTION_COLUMNS)
    if source.users is not None:
        check_structure(source.users, USER_COLUMNS)

    items_frame = parse_table(source.items, ITEM_COLUMNS)
    interactions_frame = parse_table(source.interactions, INTERACTION_COLUMNS)
    users_frame = parse_table(source.users, USER_COLUMNS) if source.users is not None else None
    id_pairs = [(source.items, items_frame, "item_id"), (source.interactions, interactions_frame, "item_id")]
    id_pairs.append((source.interactions, interactions_frame, "user_id"))
    if source.users is not None:
        id_pairs.append((source.users, users_frame, "user_id"))
    id_type = check_id_types(id_pairs)
    items_frame = _cast_ids(items_frame, id_type)
    interactions_frame = _cast_ids(interactions_frame, id_type)
    users_frame = _cast_ids(users_frame, id_type) if users_frame is not None else None

    item_checks = [
        _null("item_id"),
        _duplicate("item_id"),
        RowCheck("title", "empty title", "have an empty title", pl.col("title").fill_null("").str.strip_chars() == ""),
    ]
    if "available" in items_frame.columns:
        item_checks.append(_unparsable("available", "true/false"))
    items, bad_items = split_good_bad(source.items, items_frame, item_checks, on_bad_rows)

    users = None
    if source.users is not None:
        users, bad_users = split_good_bad(
            source.users, users_frame, [_null("user_id"), _duplicate("user_id")], on_bad_rows
        )
        if bad_users is not None:
            quarantine["users"] = bad_users

    checks = interaction_checks(now)
    for number in ("rating", "weight"):
        if number in interactions_frame.columns:
            checks.append(_unparsable(number, "a number"))
    if source.rating_scale is not None and "rating" in interactions_frame.columns:
        checks.append(rating_check(source.rating_scale))
    checks.append(_unknown("item_id", items["item_id"], source.items.path))
    if users is not None:
        checks.append(_unknown("user_id", users["user_id"], source.users.path))
    interactions, bad_interactions = split_good_bad(source.interactions, interactions_frame, checks, on_bad_rows)
    if bad_items is not None:
        quarantine["items"] = bad_items
    if bad_interactions is not None:
        quarantine["interactions"] = bad_interactions

    for table, kept in ((source.items, items), (source.interactions, interactions)):
        if kept.height == 0:
            reasons = quarantine[table.name]["reason"].value_counts(sort=True).iter_rows()
            summary = ", ".join(f"{n} {reason}" for reason, n in reasons)
            raise DataValidationError(
                f"{table.path}: every one of the {table.frame.height} {table.name} rows is bad ({summary}), "
                "so quarantine would leave nothing to publish; fix the source."
            )

    canonical = [s.name for s in INTERACTION_COLUMNS if s.name in interactions.columns]
    ignored = {"interactions": [c for c in interactions.columns if c not in canonical]}
    interactions = interactions.select(canonical)
    if users is None:
        users = interactions.select("user_id").unique().sort("user_id")
    return CleanTables(
        id_type=id_type,
        interactions=interactions,
        items=_with_item_defaults(items),
        users=users,
        quarantine=quarantine,
        ignored_columns={k: v for k, v in ignored.items() if v},
    )


def _with_item_defaults(items: pl.DataFrame) -> pl.DataFrame:
    """Every optional text column present (null when the source had none), ``available`` true by default."""
    text = [pl.lit(None, pl.String).alias(c) for c in ("genres", "tags", "description") if c not in items.columns]
    items = items.with_columns(text)
    available = pl.col("available").fill_null(True) if "available" in items.columns else pl.lit(True)
    items = items.with_columns(available.alias("available"))
    leading = ["item_id", "title", "genres", "tags", "description", "available"]
    return items.select(leading + [c for c in items.columns if c not in leading])
