"""Reading source files into raw tables, before any validation.

A reader's only job is to get the bytes of a source into polars with the
canonical column names, changing as little as possible: values stay as they
were in the file (text files are read as all-text columns) so that validation
can point at the exact bad value and row. Parsing ids, timestamps and numbers
is validation's business (``recbatch/data/validate.py``).

The canonical layout is a folder with ``interactions``, ``items`` and
(optionally) ``users`` tables, each a Parquet or CSV file; ``ingest.column_map``
renames other column names to the canonical ones. MovieLens layouts live in
``recbatch/data/movielens.py`` and produce the same :class:`RawSource`.
"""

from __future__ import annotations

import codecs
import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import polars as pl

from recbatch.config import IngestConfig
from recbatch.errors import DataValidationError, UsageError

TABLE_NAMES = ("interactions", "items", "users")


@dataclass
class RawTable:
    """One table as read: canonical column names, source values, and where it came from.

    The canonical layout's tables are lazy scans (ingest streams them, never
    holding a whole table); MovieLens releases are small and read eagerly.
    """

    name: str  # "interactions" | "items" | "users"
    frame: pl.DataFrame | pl.LazyFrame
    path: Path  # the file (or folder of Parquet parts) named in error messages
    typed: bool = False  # Parquet: keep its types; text: validation parses the values

    def scan(self) -> pl.LazyFrame:
        return self.frame.lazy()

    def columns(self) -> list[str]:
        return self.scan().collect_schema().names()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Turn a failure to read the file (met whenever the lazy scan runs) into a clear error."""
        try:
            yield
        except pl.exceptions.NoDataError:
            raise empty_file_error(self.path) from None
        except (pl.exceptions.ComputeError, pl.exceptions.SchemaError, OSError) as exc:
            if self.typed:
                raise DataValidationError(f"{self.path}: not readable as Parquet ({_first_line(exc)})") from None
            raise unparsable_text_error(self.path, ",", exc) from None


@dataclass(frozen=True)
class RatingScale:
    """The ratings a source can hold: `low` to `high`, in steps of `step` from `low` (None: any value).

    A rating off the scale (55.0 where stars go to 5) is a typo or a unit
    mix-up, never a strong preference, so validation treats it as a bad row.
    """

    low: float
    high: float
    step: float | None = None
    origin: str = "ingest.rating_range"  # where the scale comes from, for messages

    def describe(self) -> str:
        steps = f" in steps of {self.step:g}" if self.step else ""
        return f"{self.low:g} to {self.high:g}{steps} ({self.origin})"


@dataclass
class RawSource:
    """Everything one source provided, ready for validation."""

    format: str
    interactions: RawTable
    items: RawTable
    users: RawTable | None  # None: users are derived from the interactions
    files: list[Path]  # every file read, recorded with its sha256 in the manifest
    counts: dict[str, int] = field(default_factory=dict)  # reader-level facts (e.g. tags read)
    rating_scale: RatingScale | None = None  # None: ratings are not range-checked


# --------------------------------------------------------------------------- byte-level checks


def check_utf8(path: Path, separator: str = ",", chunk_bytes: int = 1 << 24) -> None:
    """Fail with the bad lines (and their column) when a file declared UTF-8 is not.

    The fast path decodes in large chunks at C speed; only a failing file is
    scanned line by line to build the report.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk_bytes):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        return
    except UnicodeDecodeError:
        pass
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8", errors="replace").rstrip("\r\n").split(separator)
        bad: list[tuple[int, str, bytes]] = []
        count = 0
        for line_no, line in enumerate(f, start=2):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                count += 1
                if len(bad) < 3:
                    fields = line.rstrip(b"\r\n").split(separator.encode())
                    bad_fields = [i for i, value in enumerate(fields) if not _is_utf8(value)]
                    col = next((header[i] if i < len(header) else f"#{i + 1}" for i in bad_fields), "?")
                    bad.append((line_no, col, line[:60]))
    columns = sorted({c for _, c, _ in bad})
    examples = "; ".join(f"line {n} column '{c}': {raw!r}" for n, c, raw in bad)
    raise DataValidationError(
        f"{path}: column {', '.join(repr(c) for c in columns)}: {count} line(s) are not valid UTF-8, "
        f"although the format declares UTF-8 (e.g. {examples}). Re-encode the file as UTF-8; "
        "bad encoding always fails, it is never quarantined."
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def empty_file_error(path: Path, what: str = "no data rows") -> DataValidationError:
    return DataValidationError(
        f"{path}: the file is empty ({what}); every column is missing, 0 rows could be read. "
        "An empty input is never treated as 'no change': check the export that produced it."
    )


def unparsable_text_error(path: Path, separator: str, exc: Exception) -> DataValidationError:
    return DataValidationError(
        f"{path}: the file could not be parsed as {separator!r}-separated text ({_first_line(exc)}); "
        "check the separator, quoting and that every row has the same number of fields."
    )


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# --------------------------------------------------------------------------- file readers


def read_delimited(
    path: Path,
    *,
    separator: str = ",",
    encoding: str = "utf-8",
    has_header: bool = True,
    columns: list[str] | None = None,
    quote_char: str | None = '"',
) -> pl.DataFrame:
    """Read a delimited text file with every column as text.

    Handles what polars' reader does not: latin-1 files (decoded here) and
    multi-character separators such as MovieLens-1M's ``::`` (rewritten to a
    tab, which never occurs inside those files' fields).
    """
    if path.stat().st_size == 0:
        raise empty_file_error(path, "0 bytes")
    if encoding.replace("-", "").lower() == "utf8":
        check_utf8(path, separator)
    needs_rewrite = encoding.replace("-", "").lower() != "utf8" or len(separator) > 1
    source: Path | io.BytesIO = path
    if needs_rewrite:
        text = path.read_bytes().decode(encoding)
        if len(separator) > 1:
            text = text.replace(separator, "\t")
            separator = "\t"
        source = io.BytesIO(text.encode("utf-8"))
    try:
        frame = pl.read_csv(
            source,
            separator=separator,
            has_header=has_header,
            new_columns=columns,
            infer_schema=False,
            quote_char=quote_char,
        )
    except pl.exceptions.NoDataError:
        raise empty_file_error(path) from None
    except pl.exceptions.PolarsError as exc:
        raise unparsable_text_error(path, separator, exc) from None
    if frame.height == 0:
        raise empty_file_error(path, "a header but no data rows")
    return frame


def parquet_parts(path: Path) -> list[Path]:
    """The Parquet files of a table: the file itself, or a folder's ``*.parquet`` parts in name order."""
    return sorted(path.glob("*.parquet")) if path.is_dir() else [path]


def read_table_file(name: str, path: Path) -> RawTable:
    """A canonical table as a lazy scan of CSV (all text, parsed later) or Parquet (types kept;
    a file or a folder of parts). Emptiness and unreadable rows are found when it is scanned."""
    if path.suffix.lower() == ".csv":
        if path.stat().st_size == 0:
            raise empty_file_error(path, "0 bytes")
        check_utf8(path)
        return RawTable(name, pl.scan_csv(path, infer_schema=False, quote_char='"'), path)
    parts = parquet_parts(path)
    if not parts or all(p.stat().st_size == 0 for p in parts):
        raise empty_file_error(path, "no Parquet data")
    try:
        frame = pl.scan_parquet(parts)
        frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataValidationError(f"{path}: not readable as Parquet ({_first_line(exc)})") from None
    return RawTable(name, frame, path, typed=True)


def find_table_file(folder: Path, name: str) -> Path | None:
    """``name`` as given (a file, or a folder of Parquet parts), or with a .parquet / .csv extension."""
    for candidate in (folder / name, folder / f"{name}.parquet", folder / f"{name}.csv"):
        if candidate.is_file() or (candidate.is_dir() and any(candidate.glob("*.parquet"))):
            return candidate
    return None


def apply_column_map(frame: pl.LazyFrame, table: str, column_map: dict[str, str]) -> pl.LazyFrame:
    """Rename source columns to canonical names.

    Keys are ``canonical`` (applies to every table that has the source column)
    or ``table.canonical`` (only that table), values the source column name.
    """
    renames: dict[str, str] = {}
    columns = frame.collect_schema().names()
    for key, source_col in column_map.items():
        scope, _, canonical = key.rpartition(".")
        if scope and scope != table:
            continue
        if source_col in columns and source_col != canonical:
            renames[source_col] = canonical
    return frame.rename(renames)


def read_canonical(cfg: IngestConfig) -> RawSource:
    """The canonical folder layout: interactions + items (+ users), Parquet or CSV."""
    folder = Path(cfg.source)
    tables: dict[str, RawTable] = {}
    for table, file_name in (
        ("interactions", cfg.interactions_file),
        ("items", cfg.items_file),
        ("users", cfg.users_file),
    ):
        path = find_table_file(folder, file_name)
        if path is None:
            if table == "users":
                continue
            raise DataValidationError(
                f"{folder}: no {table} table found (looked for {file_name}, {file_name}.parquet, "
                f"{file_name}.csv); the canonical layout needs interactions and items."
            )
        raw = read_table_file(table, path)
        raw.frame = apply_column_map(raw.frame, table, cfg.column_map)
        tables[table] = raw
    return RawSource(
        format="canonical",
        interactions=tables["interactions"],
        items=tables["items"],
        users=tables.get("users"),
        files=[part for t in tables.values() for part in parquet_parts(t.path)],
        rating_scale=RatingScale(*cfg.rating_range) if cfg.rating_range else None,
    )


def require_source_dir(source: str) -> Path:
    """The source folder, or a usage error saying what is wrong with it."""
    if not source:
        raise UsageError("no input given: set ingest.source (recbatch ingest --source DIR)")
    folder = Path(source)
    if not folder.exists():
        raise UsageError(f"ingest source {folder} does not exist")
    if not folder.is_dir():
        raise UsageError(f"ingest source {folder} must be a folder holding the tables, not a file")
    return folder
