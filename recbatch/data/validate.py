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

Validation never needs a whole per-user table at once. One streaming pass
over each table (:func:`table_facts`) gathers what parsing must decide for the
whole column (are all text ids plain integers?); the per-row and per-user
rules then run on one user partition at a time (:func:`validate_partition`),
each partition reporting how many rows broke each rule and its first few
(:class:`Tally`); the tallies add up to exactly the counts and examples that
a check of the whole table would give. Duplicate and unknown user ids are
per-user questions, so one partition answers them for its users.

Types: Parquet columns keep their types; text files (CSV, MovieLens) are read
as text and parsed here (ids that are all plain integers become int64,
anything else stays text, so ``u000123`` and ``000123`` keep their zeros).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import polars as pl

from recbatch.data.readers import RatingScale, RawTable, empty_file_error
from recbatch.errors import DataValidationError
from recbatch.schemas import IdType

ROW = "__row"  # 1-based data row number in the source file, for messages
EXAMPLES = 3  # bad rows quoted in an error message
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


@dataclass(frozen=True)
class RowCheck:
    """One row-level rule: which column, the quarantine reason, the sentence for errors."""

    column: str
    reason: str
    explains: str
    bad: pl.Expr


# --------------------------------------------------------------------------- pass 1: facts


@dataclass(frozen=True)
class TableFacts:
    """What one streaming pass over a whole table tells parsing and the partitioner."""

    rows: int
    schema: pl.Schema  # as read (text files: all text)
    plain_integers: dict[str, bool]  # text column -> it has values and every one is a plain integer
    numbers: dict[str, bool]  # text column -> every value reads as a number
    non_null: dict[str, int]  # id column -> rows that have one
    distinct_users: int  # about how many user ids (HyperLogLog): sizes the staging partitions


def table_facts(table: RawTable, specs: tuple[ColumnSpec, ...]) -> TableFacts:
    """One streaming pass over `table`: row count and the whole-column facts parsing needs."""
    frame = table.scan()
    with table.reading():
        schema = frame.collect_schema()
    text = [c for c in schema.names() if schema[c] == pl.String]
    ids = [s.name for s in specs if s.kind == "id" and s.name in schema]
    aggs = [pl.len().alias("rows")]
    for c in text:
        values = pl.col(c).drop_nulls()
        aggs += [
            (values.str.contains(PLAIN_INTEGER).all() & (values.len() > 0)).alias(f"int:{c}"),
            ((values.str.strip_chars().cast(pl.Float64, strict=False).null_count() == 0) & (values.len() > 0)).alias(
                f"num:{c}"
            ),
        ]
    aggs += [pl.col(c).count().alias(f"nn:{c}") for c in ids]
    aggs.append(pl.col("user_id").approx_n_unique().alias("users") if "user_id" in schema else pl.lit(0).alias("users"))
    with table.reading():
        row = frame.select(aggs).collect(engine="streaming").row(0, named=True)
    if row["rows"] == 0:
        what = "a schema but no rows" if table.typed else "a header but no data rows"
        raise empty_file_error(table.path, what)
    return TableFacts(
        rows=int(row["rows"]),
        schema=schema,
        plain_integers={c: bool(row[f"int:{c}"]) for c in text},
        numbers={c: bool(row[f"num:{c}"]) for c in text},
        non_null={c: int(row[f"nn:{c}"]) for c in ids},
        distinct_users=int(row["users"]),
    )


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


def check_structure(table: RawTable, specs: tuple[ColumnSpec, ...], facts: TableFacts) -> None:
    """Fail on a missing required column or a column of the wrong type."""
    columns = facts.schema.names()
    for spec in specs:
        if spec.name not in columns:
            if spec.required:
                raise DataValidationError(
                    f"{table.path}: column '{spec.name}' is missing from the {table.name} table, so all "
                    f"{facts.rows} rows lack it (found columns: {', '.join(columns)}). Rename the "
                    f"source column with --map {spec.name}=<source column> (config ingest.column_map)."
                )
            continue
        dtype = facts.schema[spec.name]
        if not _accepts(spec.kind, dtype):
            with table.reading():
                head = table.scan().select(pl.col(spec.name).drop_nulls().head(3)).collect(engine="streaming")
            examples = ", ".join(repr(v) for v in head[spec.name].to_list())
            raise DataValidationError(
                f"{table.path}: column '{spec.name}' has type {dtype}, but it must hold "
                f"{KIND_EXPECTED[spec.kind]}; all {facts.rows} rows are affected (e.g. {examples}). "
                "A wrongly typed column always fails: fix the export or map another column."
            )


# --------------------------------------------------------------------------- parsing


def _parse_id(dtype: pl.DataType, name: str, plain_integers: bool) -> pl.Expr:
    col = pl.col(name)
    if dtype.is_integer() or dtype == pl.Null or plain_integers:
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


def _infer_text_type(name: str, facts: TableFacts) -> pl.Expr:
    """A text attribute column from a text file, as int64 or float64 when every value is one."""
    col = pl.col(name)
    if facts.plain_integers[name]:
        return col.cast(pl.Int64)
    if facts.numbers[name]:
        return col.str.strip_chars().cast(pl.Float64)
    return col


def parse_table(table: RawTable, specs: tuple[ColumnSpec, ...], facts: TableFacts, id_type: IdType) -> pl.LazyFrame:
    """Typed canonical columns, each with its source value beside it (``__raw_<name>``).

    Other columns pass through (text-file attributes get int/float types when
    every value fits) and ``__row`` numbers the rows for messages. Ids get the
    source's `id_type` (an all-null id column has no type of its own).
    """
    schema = facts.schema
    from_text = not table.typed
    parsers = {
        "timestamp": parse_timestamp,
        "number": _parse_number,
        "text": _parse_text,
        "flag": _parse_flag,
    }
    id_dtype = pl.Int64 if id_type == "int" else pl.String
    exprs: list[pl.Expr] = [pl.col(ROW).cast(pl.Int64)]
    for spec in specs:
        if spec.name not in schema:
            continue
        dtype = schema[spec.name]
        if spec.kind == "id":
            parsed = _parse_id(dtype, spec.name, from_text and facts.plain_integers.get(spec.name, False))
            parsed = parsed.cast(id_dtype)
        else:
            parsed = parsers[spec.kind](dtype, spec.name)
        exprs += [parsed.alias(spec.name), pl.col(spec.name).alias(RAW + spec.name)]
    known = {s.name for s in specs}
    for c in schema.names():
        if c in known:
            continue
        exprs.append(_infer_text_type(c, facts).alias(c) if from_text and schema[c] == pl.String else pl.col(c))
    return table.scan().with_row_index(ROW, offset=1).select(exprs)


def parsed_id_type(table: RawTable, specs: tuple[ColumnSpec, ...], facts: TableFacts, name: str) -> IdType:
    """The type column `name` parses to on its own (before the source agrees on one)."""
    dtype = facts.schema[name]
    as_int = dtype.is_integer() or dtype == pl.Null or (not table.typed and facts.plain_integers.get(name, False))
    return "int" if as_int else "string"


# --------------------------------------------------------------------------- row checks


def _null(name: str) -> RowCheck:
    return RowCheck(name, f"null {name}", f"have no {name} (null or empty)", pl.col(name).is_null())


def _unparsable(name: str, what: str) -> RowCheck:
    bad = pl.col(name).is_null() & pl.col(RAW + name).is_not_null()
    return RowCheck(name, f"unparsable {name}", f"have a {name} that cannot be read as {what}", bad)


def _duplicate(name: str) -> RowCheck:
    """Every copy of a repeated value (a user's rows are all in one partition, so one partition sees them all)."""
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


@dataclass
class Tally:
    """How many rows of a table broke one check, and the first few of them (row number, source value).

    It names its check's column and sentence, so an error can be written from
    the tallies alone (a partition's worker returns tallies, not the checks).
    """

    column: str
    explains: str
    count: int = 0
    examples: list[tuple[int, object]] = field(default_factory=list)

    def add(self, other: "Tally") -> None:
        """Fold in another partition's tally: counts add up, the earliest rows stay examples."""
        self.count += other.count
        self.examples = sorted(self.examples + other.examples, key=lambda e: e[0])[:EXAMPLES]


def tally(frame: pl.DataFrame, checks: list[RowCheck]) -> list[Tally]:
    """Per check (each judged on its own, not only the first a row fails), its bad rows in `frame`."""
    if not checks:
        return []
    counts = frame.select(c.bad.fill_null(False).sum().alias(str(i)) for i, c in enumerate(checks)).row(0)
    tallies = []
    for check, count in zip(checks, counts):
        examples: list[tuple[int, object]] = []
        if count:
            raw_column = RAW + check.column if RAW + check.column in frame.columns else check.column
            sample = frame.filter(check.bad).sort(ROW).head(EXAMPLES)
            examples = list(zip(sample[ROW].to_list(), sample[raw_column].to_list()))
        tallies.append(Tally(check.column, check.explains, int(count), examples))
    return tallies


def add_tallies(into: list[Tally], more: list[Tally]) -> list[Tally]:
    if not into:
        return more
    for mine, theirs in zip(into, more):
        mine.add(theirs)
    return into


def raise_first_problem(table: RawTable, rows: int, tallies: list[Tally]) -> None:
    """Fail mode: one paragraph about the first check that any row fails (`rows`: the table's size)."""
    for counted in tallies:
        if counted.count == 0:
            continue
        examples = ", ".join(f"row {row}: {_show(value)}" for row, value in counted.examples)
        raise DataValidationError(
            f"{table.path}: column '{counted.column}': {counted.count} of {rows} {table.name} rows "
            f"{counted.explains} (e.g. {examples}). Fix the source, or ingest with --on-bad-rows quarantine "
            "to set such rows aside (with a reason) and keep the good ones."
        )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def find_bad_rows(frame: pl.DataFrame, checks: list[RowCheck]) -> pl.Series:
    """Per row, the reason of the first failing check, or null for a good row."""
    if not checks:
        return pl.Series("reason", [None] * frame.height, dtype=pl.String)
    reason = pl.coalesce([pl.when(c.bad).then(pl.lit(c.reason)) for c in checks]).alias("reason")
    return frame.select(reason).to_series()


def split_good_bad(
    frame: pl.DataFrame, checks: list[RowCheck], on_bad_rows: str
) -> tuple[pl.DataFrame, pl.DataFrame | None, list[Tally]]:
    """Good rows (typed, with ``__row``), bad rows (source values as text + reason) and the tallies.

    With ``fail`` nothing is set aside here: the caller raises once every
    partition's tallies are in, naming the first check any row failed.
    """
    if on_bad_rows == "fail":
        return _clean_columns(frame), None, tally(frame, checks)
    reasons = find_bad_rows(frame, checks)
    is_bad = reasons.is_not_null()
    good = _clean_columns(frame.filter(~is_bad))
    if not is_bad.any():
        return good, None, []
    bad = frame.filter(is_bad).with_columns(reasons.filter(is_bad))
    return good, _quarantine_rows(bad), []


def _clean_columns(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select(c for c in frame.columns if not c.startswith(RAW))


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


def check_id_types(columns: list[tuple[RawTable, TableFacts, str, IdType]]) -> IdType:
    """All id columns (table, facts, column, parsed type) must share one type: the snapshot has one ``id_type``.

    A column of only nulls has no type of its own; its rows fail the null-id check instead.
    """
    kinds = [(table, facts, name, kind) for table, facts, name, kind in columns if facts.non_null[name] > 0]
    if not kinds:
        table, facts, name, _ = columns[0]
        raise DataValidationError(f"{table.path}: column '{name}': all {facts.rows} rows have no id (null)")
    first_table, _, first_name, first_kind = kinds[0]
    for table, facts, name, kind in kinds[1:]:
        if kind != first_kind:
            raise DataValidationError(
                f"{table.path}: column '{name}' holds {_id_words(kind)} ids but {first_table.path} column "
                f"'{first_name}' holds {_id_words(first_kind)} ids; all "
                f"{facts.rows} rows are affected. Ids must have one type across tables (all integers "
                "or all text) so they survive to the recommendations unchanged."
            )
    return first_kind


def _id_words(kind: IdType) -> str:
    return "integer" if kind == "int" else "text"


def item_checks(items: pl.DataFrame) -> list[RowCheck]:
    checks = [
        _null("item_id"),
        _duplicate("item_id"),
        RowCheck("title", "empty title", "have an empty title", pl.col("title").fill_null("").str.strip_chars() == ""),
    ]
    if "available" in items.columns:
        checks.append(_unparsable("available", "true/false"))
    return checks


def user_checks() -> list[RowCheck]:
    return [_null("user_id"), _duplicate("user_id")]


def interaction_row_checks(
    interactions: pl.DataFrame, rating_scale: RatingScale | None, now: dt.datetime
) -> list[RowCheck]:
    """The interaction rules that need no other table."""
    checks = interaction_checks(now)
    for number in ("rating", "weight"):
        if number in interactions.columns:
            checks.append(_unparsable(number, "a number"))
    if rating_scale is not None and "rating" in interactions.columns:
        checks.append(rating_check(rating_scale))
    return checks


@dataclass
class Partition:
    """One user partition after validation: its clean rows, its bad rows, its tallies."""

    interactions: pl.DataFrame  # canonical columns + __row, in source order
    users: pl.DataFrame  # user_id + features (from the interactions when the source has no users table)
    quarantine: dict[str, pl.DataFrame]
    interaction_tallies: list[Tally]  # one per check, the same checks in every partition (fail mode; else empty)
    user_tallies: list[Tally]  # one per ``user_checks()``


@dataclass
class SourceChecks:
    """The whole-table context a partition's checks need: the good items and the source's settings."""

    items: pl.DataFrame  # the good items
    items_path: Path
    users_path: Path | None  # None: the source has no users table
    rating_scale: RatingScale | None
    on_bad_rows: Literal["fail", "quarantine"]
    now: dt.datetime

    def interaction_checks(self, interactions: pl.DataFrame, users: pl.DataFrame | None) -> list[RowCheck]:
        checks = interaction_row_checks(interactions, self.rating_scale, self.now)
        checks.append(_unknown("item_id", self.items["item_id"], self.items_path))
        if users is not None and self.users_path is not None:
            checks.append(_unknown("user_id", users["user_id"], self.users_path))
        return checks


def validate_partition(
    interactions: pl.DataFrame, users: pl.DataFrame | None, context: SourceChecks
) -> Partition:
    """Check one user partition's interactions (and users rows) against the good items and users."""
    quarantine: dict[str, pl.DataFrame] = {}
    user_tallies: list[Tally] = []
    good_users = None
    if users is not None:
        good_users, bad_users, user_tallies = split_good_bad(users, user_checks(), context.on_bad_rows)
        if bad_users is not None:
            quarantine["users"] = bad_users
    checks = context.interaction_checks(interactions, good_users)
    good, bad, tallies = split_good_bad(interactions, checks, context.on_bad_rows)
    if bad is not None:
        quarantine["interactions"] = bad
    canonical = [s.name for s in INTERACTION_COLUMNS if s.name in good.columns]
    good = good.select(*canonical, ROW)
    if good_users is None:
        good_users = good.select("user_id").unique().sort("user_id")
    else:
        good_users = good_users.drop(ROW)
    return Partition(good, good_users, quarantine, tallies, user_tallies)


def validate_items(
    table: RawTable, facts: TableFacts, id_type: IdType, on_bad_rows: Literal["fail", "quarantine"]
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The good items (with defaults filled in) and the bad ones; items are few enough to check whole."""
    with table.reading():
        frame = parse_table(table, ITEM_COLUMNS, facts, id_type).collect(engine="streaming")
    checks = item_checks(frame)
    good, bad, tallies = split_good_bad(frame, checks, on_bad_rows)
    raise_first_problem(table, facts.rows, tallies)
    if good.height == 0:
        raise nothing_left(table, facts.rows, bad["reason"].value_counts(sort=True).iter_rows())
    return _with_item_defaults(good.drop(ROW)), bad


def nothing_left(table: RawTable, rows: int, reasons: Iterable[tuple[str, int]]) -> DataValidationError:
    """Quarantine set every row aside: there is nothing to publish."""
    summary = ", ".join(f"{n} {reason}" for reason, n in reasons)
    return DataValidationError(
        f"{table.path}: every one of the {rows} {table.name} rows is bad ({summary}), "
        "so quarantine would leave nothing to publish; fix the source."
    )


def ignored_interaction_columns(facts: TableFacts) -> list[str]:
    """Source interaction columns that are not canonical: read, reported, not kept."""
    known = {s.name for s in INTERACTION_COLUMNS}
    return [c for c in facts.schema.names() if c not in known]


def _with_item_defaults(items: pl.DataFrame) -> pl.DataFrame:
    """Every optional text column present (null when the source had none), ``available`` true by default."""
    text = [pl.lit(None, pl.String).alias(c) for c in ("genres", "tags", "description") if c not in items.columns]
    items = items.with_columns(text)
    available = pl.col("available").fill_null(True) if "available" in items.columns else pl.lit(True)
    items = items.with_columns(available.alias("available"))
    leading = ["item_id", "title", "genres", "tags", "description", "available"]
    return items.select(leading + [c for c in items.columns if c not in leading])
