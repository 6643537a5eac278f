"""Polars frames to and from Parquet files at ``fs.Location``s, on either kind of root.

Local files go through polars' own reader and writer, as they did before a root
could be an object store. Files on an object store go through the Location's
pyarrow filesystem: the one endpoint and credential chain of recbatch/fs.py, no
second client with settings of its own. Lazy scans there are pyarrow datasets
read a record batch at a time (``pl.scan_pyarrow_dataset``), so they stay as
bounded as polars' own streaming scans.

These take the files to read as a list: a caller knows them (its own parts, or
a manifest's names, recbatch/folders.py); nothing here lists a folder.
"""

from __future__ import annotations

from typing import Any, Sequence

import polars as pl
import pyarrow.dataset as ds

from recbatch.fs import Location, access, make_parent

# Ray Data's default Parquet reader (DataSourceV2) starts a pool of footer-reading actors (32 by
# default) every time a dataset executes: each training epoch, each embed pass. On the 2-core CI box
# that cost 7-11 s an execution against 0.6-0.8 s for the V1 reader on the same parts (the tiny
# pipeline's 3 epochs: train 70 s -> 46 s). The price: V1 gathers the files' footer metadata on the
# driver. At 10M users (40 partitions of training examples) the training stage's driver peak rose
# from 952 to 1,244 MiB (bench/README.md, Scale); a dataset of very many files is V2's case.
RAY_PARQUET_DATASOURCE_V2 = False


def _object_store(files: Sequence[Location]) -> bool:
    """Whether `files` (all on one filesystem) are on an object store; refuses an empty list."""
    if not files:
        raise ValueError("no Parquet files to read")
    return files[0].is_object_store


def read_parquet(files: Sequence[Location], columns: list[str] | None = None) -> pl.DataFrame:
    """The rows of `files` (those `columns`, default all), in order, as one frame."""
    if not _object_store(files):
        return pl.read_parquet([f.path for f in files], columns=columns)
    frames = []
    for f in files:
        with access(f, f"read {f.key}"), f.filesystem.open_input_file(f.path) as source:
            frames.append(pl.read_parquet(source, columns=columns))
    return pl.concat(frames)


def scan_parquet(files: Sequence[Location]) -> pl.LazyFrame:
    """A lazy frame over `files`, in order (read when collected)."""
    if not _object_store(files):
        return pl.scan_parquet([f.path for f in files])
    dataset = ds.dataset([f.path for f in files], filesystem=files[0].filesystem, format="parquet")
    return pl.scan_pyarrow_dataset(dataset)


def read_dataset(paths: str | list[str], filesystem: Any, **options: Any) -> Any:
    """A lazy Ray dataset over `paths` (files, or a folder) on `filesystem`, read by Ray's workers.

    Through the reader ``RAY_PARQUET_DATASOURCE_V2`` names. Ray Data picks the reader when the
    dataset is created, so the setting changes for this call only; `options` go to
    ``ray.data.read_parquet``.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    previous = context.use_datasource_v2
    context.use_datasource_v2 = RAY_PARQUET_DATASOURCE_V2
    try:
        return ray.data.read_parquet(paths, filesystem=filesystem, **options)
    finally:
        context.use_datasource_v2 = previous


def write_parquet(frame: pl.DataFrame, file: Location, **options: Any) -> None:
    """Write `frame` to `file` (``options``: polars' ``write_parquet`` keywords)."""
    make_parent(file)
    if not file.is_object_store:
        frame.write_parquet(file.path, **options)
        return
    with access(file, f"write {file.key}"), file.filesystem.open_output_stream(file.path) as out:
        frame.write_parquet(out, **options)


def sink_parquet(frame: pl.LazyFrame, file: Location, **options: Any) -> None:
    """Stream `frame` into `file` with polars' streaming engine (``options``: ``sink_parquet`` keywords)."""
    make_parent(file)
    if not file.is_object_store:
        frame.sink_parquet(file.path, engine="streaming", **options)
        return
    with access(file, f"write {file.key}"), file.filesystem.open_output_stream(file.path) as out:
        frame.sink_parquet(out, engine="streaming", **options)
