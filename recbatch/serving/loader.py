"""Load a published run into Redis under a new version, then flip the pointer.

Order of work, and why:

1. Verify the run (``_SUCCESS``, manifest, checksums, schema, row counts):
   a bad run is refused before a single key is written. The run is read
   through its marker and manifest (published_run.py), on a local or an
   object-store root alike.
2. Register a new version namespace (state ``loading``) so that, should this
   process die, the next load's garbage collection finds what it left.
3. Stream the Parquet in batches of ``serving.batch_size`` rows (memory stays
   bounded by two batches, whatever the run's size), encode each user's list
   (codec.py), and write each batch with one MSETNX in a non-transactional
   pipeline, encoding the next batch while one is on the wire. MSETNX refuses
   if any key exists, so a user written twice is caught by Redis itself. On
   Redis Cluster the batch is one ``SET NX`` per key, pipelined per primary.
   Meanwhile a background thread deletes old versions.
4. Check the written count against the manifest, mark the version complete,
   and flip the pointer with one Lua script that re-checks the count. Readers
   switch from the whole old run to the whole new one in that instant.

A load killed anywhere before step 4 leaves the pointer, and so every reader,
on the previous version.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis

from recbatch.config import ServingConfig
from recbatch.errors import DataValidationError
from recbatch.fs import Location
from recbatch.serving import versions
from recbatch.serving.codec import encode_batch
from recbatch.serving.connection import Store, connect, describe, is_cluster, store_errors
from recbatch.serving.gc import collect_garbage, delete_versions, versions_to_keep
from recbatch.serving.keys import KeyLayout
from recbatch.serving.published_run import PublishedRun, open_published_run

log = logging.getLogger(__name__)

# Called after each batch is acknowledged by Redis: (batches so far, users so far).
BatchHook = Callable[[int, int], None]


@dataclass(frozen=True)
class LoadResult:
    """What a load did (no secrets: the store is described without credentials)."""

    version: str
    previous_version: str | None
    run_dir: str
    run_date: str
    model_version: str
    users: int
    batches: int
    seconds: float
    users_per_second: float
    garbage_collected: list[str]
    store: str
    key_prefix: str


def load_run(
    run: str | os.PathLike[str] | Location,
    cfg: ServingConfig,
    *,
    redis_url: str | None = None,
    client: Store | None = None,
    on_batch: BatchHook | None = None,
) -> LoadResult:
    """Load a published run and make it live; raises before writing if the run is bad.

    `run`: a local path, or a Location on either kind of root (``fs.locate(uri, cfg.storage)``).
    `client` reuses an open connection (tests, benchmarks); otherwise one is made
    from `redis_url` or the config. `on_batch` observes progress.
    """
    with open_published_run(run) as published:
        return _load(published, cfg, redis_url, client, on_batch)


def _load(
    run: PublishedRun,
    cfg: ServingConfig,
    redis_url: str | None,
    client: redis.Redis | None,
    on_batch: BatchHook | None,
) -> LoadResult:
    if run.users == 0:
        raise DataValidationError(f"{run.location}: the run has no users; refusing to serve an empty version")
    client = client if client is not None else connect(cfg, redis_url)
    where = describe(client)
    keys = KeyLayout(cfg.key_prefix)
    version = versions.new_version_id(run.run_date)
    started = time.perf_counter()

    with store_errors(where, f"registering version {version}"):
        keep = versions_to_keep(versions.history(client, keys), cfg.keep_versions, loading=version)
        versions.register_version(client, keys, version, _meta_of(run), cfg.version_ttl_seconds)
    log.info("loading %s (%d users) into %s as version %s", run.location, run.users, where, version)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recbatch-gc") as pool:
        gc_done = pool.submit(collect_garbage, client, keys, keep, batch_size=cfg.batch_size)
        try:
            with store_errors(where, f"writing version {version}"):
                written, batches = _write_users(client, keys, version, run, cfg, on_batch)
            if written != run.users:
                raise DataValidationError(
                    f"{run.location}: wrote {written} users but the manifest says users = {run.users}"
                )
            with store_errors(where, f"activating version {version}"):
                versions.mark_complete(client, keys, version, written)
                previous = versions.activate(client, keys, version)
        except Exception:
            _discard(client, keys, version, gc_done)
            raise
        collected = _gc_result(gc_done)
        # Keeping the old rollback target through the load may leave one version too many.
        collected += _gc_result(pool.submit(_collect_after_flip, client, keys, cfg))

    seconds = time.perf_counter() - started
    log.info("version %s is live (%d users in %.1f s); previous %s", version, written, seconds, previous)
    return LoadResult(
        version=version,
        previous_version=previous,
        run_dir=run.location.uri,
        run_date=run.run_date,
        model_version=run.model_version,
        users=written,
        batches=batches,
        seconds=round(seconds, 3),
        users_per_second=round(written / seconds, 1) if seconds > 0 else 0.0,
        garbage_collected=collected,
        store=where,
        key_prefix=cfg.key_prefix,
    )


def _meta_of(run: PublishedRun) -> dict[str, object]:
    return {
        "run_dir": run.location.name,
        "run_date": run.run_date,
        "model_version": run.model_version,
        "snapshot_hash": run.manifest.get("snapshot_hash"),
        "id_type": run.id_type,
        "k": run.k,
        "users": run.users,
        "rows": run.rows,
        "format": "RBR1",
    }


def _write_users(
    client: Store,
    keys: KeyLayout,
    version: str,
    run: PublishedRun,
    cfg: ServingConfig,
    on_batch: BatchHook | None,
) -> tuple[int, int]:
    """Write every user of the run under `version`; returns (users written, batches).

    Batch i+1 is read and encoded while batch i is on the wire (one writer thread,
    one batch in flight), so the loader's CPU work overlaps Redis's. Batches are
    still acknowledged in order, each before the next is sent.
    """
    root = keys.version_root(version)
    written = batches = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="recbatch-write") as writer:
        in_flight: tuple[Future, str, int] | None = None
        for path, batch in _batches(run, cfg.batch_size):
            _check_batch(batch, path, run)
            user_keys = [f"{root}u:{uid}" for uid in batch.column("user_id").to_pylist()]
            pairs = dict(zip(user_keys, encode_batch(batch, version)))
            if in_flight is not None:
                written, batches = _acknowledge(in_flight, written, batches, on_batch)
            sent = writer.submit(_send_batch, client, pairs, cfg.version_ttl_seconds)
            in_flight = (sent, path, batch.num_rows)
        if in_flight is not None:
            written, batches = _acknowledge(in_flight, written, batches, on_batch)
    return written, batches


def _send_batch(client: Store, pairs: dict[str, bytes], ttl_seconds: int | None) -> bool:
    """One MSETNX (plus EXPIREs) in a non-transactional pipeline; False if any key existed.

    On a cluster MSETNX cannot span slots: one ``SET NX`` per key instead, which
    redis-py's cluster pipeline groups by slot owner, one round trip per primary.
    """
    if is_cluster(client):
        pipe = client.pipeline()
        for key, value in pairs.items():
            pipe.set(key, value, nx=True, ex=ttl_seconds)
        return all(pipe.execute())
    pipe = client.pipeline(transaction=False)
    pipe.msetnx(pairs)
    if ttl_seconds:
        for key in pairs:
            pipe.expire(key, ttl_seconds)
    return bool(pipe.execute()[0])


def _acknowledge(
    in_flight: tuple[Future, str, int], written: int, batches: int, on_batch: BatchHook | None
) -> tuple[int, int]:
    """Wait for a sent batch; a refused MSETNX means a user already written earlier."""
    sent, path, rows = in_flight
    if not sent.result():
        raise DataValidationError(
            f"{path}: a user among run rows {written}..{written + rows - 1} already has a row "
            "earlier in the run (column 'user_id' must be unique)"
        )
    if on_batch is not None:
        on_batch(batches + 1, written + rows)
    return written + rows, batches + 1


def _batches(run: PublishedRun, batch_size: int) -> Iterator[tuple[str, pa.RecordBatch]]:
    """Record batches of every file, read a batch at a time (no whole-row-group pre-buffering)."""
    for path, pinned in run.files:
        parquet = pq.ParquetFile(pinned, pre_buffer=False, buffer_size=1 << 20)
        columns = ["user_id", "item_ids", "scores", "model_version"]
        if "because_item_ids" in parquet.schema_arrow.names:
            columns.append("because_item_ids")
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            yield path, batch


def _check_batch(batch: pa.RecordBatch, path: str, run: PublishedRun) -> None:
    """Row-level contract: no null ids or lists, equal list lengths, <= k, one model version."""
    users = batch.column("user_id")
    _refuse_rows(path, "user_id", "is null", pc.is_null(users), users)
    for name in ("item_ids", "scores"):
        _refuse_rows(path, name, "is null", pc.is_null(batch.column(name)), users)
    n_items = pc.list_value_length(batch.column("item_ids"))
    mismatch = pc.not_equal(n_items, pc.list_value_length(batch.column("scores")))
    _refuse_rows(path, "scores", "differs in length from 'item_ids'", mismatch, users)
    if run.k is not None:
        _refuse_rows(path, "item_ids", f"is longer than k = {run.k}", pc.greater(n_items, run.k), users)
    counts = pc.value_counts(users)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(repeated):
        raise DataValidationError(
            f"{path}: column 'user_id' repeats {len(repeated)} users, e.g. {repeated.slice(0, 5).to_pylist()}"
        )
    other = pc.not_equal(batch.column("model_version"), run.model_version)
    _refuse_rows(path, "model_version", f"differs from the manifest's {run.model_version!r}", other, users)


def _refuse_rows(path: str, column: str, problem: str, bad: pa.Array, users: pa.Array) -> None:
    count = pc.sum(pc.fill_null(bad, True)).as_py() or 0
    if count:
        examples = users.filter(pc.fill_null(bad, True)).slice(0, 5).to_pylist()
        raise DataValidationError(
            f"{path}: column '{column}' {problem} in {count} rows, e.g. users {examples}"
        )


def _discard(client: Store, keys: KeyLayout, version: str, gc_done: Future) -> None:
    """Best effort after a failed load: stop waiting for GC, delete the partial version."""
    _gc_result(gc_done)
    try:
        delete_versions(client, keys, [version])
    except redis.RedisError as exc:  # the next load's GC will finish the job
        log.warning("could not delete partial version %s now (%s); the next load will", version, exc)


def _collect_after_flip(client: Store, keys: KeyLayout, cfg: ServingConfig) -> list[str]:
    keep = versions_to_keep(versions.history(client, keys), cfg.keep_versions)
    return collect_garbage(client, keys, keep, batch_size=cfg.batch_size)


def _gc_result(gc_done: Future) -> list[str]:
    """Old-version deletion never fails a load; a failure is logged and retried next time."""
    try:
        return gc_done.result()
    except redis.RedisError as exc:
        log.warning("garbage collection failed (%s); the next load retries it", exc)
        return []
