"""Ingest's work on the per-user tables, run as Ray tasks: the driver adds up small records, never rows.

Each task reads its own scratch files (``data/staging.py``), writes its output
beside them (``fs.Location``s under the run root, which every node reaches: a
local root's shared disk or an object store), and returns a record: counts, the
tallies of bad rows (count + first examples per check), file digests,
per-item evidence. A record grows with the items or the bad rows' examples,
never with the users, so the driver's memory follows the catalog and the
config, not the size of the input. The driver (``data/ingest.py``) folds the
records in partition order, so counts, error messages and digests are those
of one process doing the partitions in turn.

    stage_table        a source table parsed and cut into staged user partitions (one task per table)
    check_partition    validate, erase, injected-profile evidence            -> CheckRecord
    write_deviation    the partition's profiles scored against the item means (written beside)
    write_partition    set suspects aside, split, write the snapshot's files  -> WriteRecord
    write_quarantine   one quarantine table gathered in source order, written -> its digest + record
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import polars as pl
import pyarrow as pa

from recbatch.config import SplitConfig
from recbatch.data.profiles import ProfileEvidence, profile_evidence, rating_deviation, set_aside
from recbatch.data.readers import RawTable
from recbatch.data.snapshot import partition_file_name
from recbatch.data.split import split_counts, split_interactions, train_items
from recbatch.data.staging import part_path, read_partition, scan_parts, stage_by_user, write_part
from recbatch.data.validate import (
    ROW,
    ColumnSpec,
    SourceChecks,
    TableFacts,
    Tally,
    parse_table,
    validate_partition,
)
from recbatch.erasure.suppression import SuppressionList, without_erased_users
from recbatch.errors import RecbatchError
from recbatch.folders import write_parquet_part
from recbatch.fs import Location
from recbatch.layout import RunLayout
from recbatch.parquet_io import read_parquet
from recbatch.schemas import TIMESTAMP_TYPE, IdType

ROW_GROUP_ROWS = 1 << 20
TASK_CPUS = 1  # each task holds one user partition (ingest.users_per_partition bounds it); one core's work

Shared = TypeVar("Shared")
Key = TypeVar("Key")


# --------------------------------------------------------------------------- driver side


def runs_on_workers(partitions: int) -> bool:
    """Whether per-partition work runs as Ray tasks (`map_tasks`): the work of one user partition runs in
    this process, since a task would hold the same rows and only add a worker's start-up."""
    return partitions > 1


def map_tasks(
    fn: Callable[[Shared, Key], Any], shared: Shared, keys: Iterable[Key], *, on_workers: bool = True
) -> Iterator[Any]:
    """``fn(shared, key)`` as one Ray task per key, at most a task per cluster CPU in flight; results in key order.

    `shared` goes to the object store once. A task's expected failure (a
    ``RecbatchError``: bad input) is raised here as itself, its message intact.
    However the caller stops, every task has ended when this generator closes,
    so none still writes into a scratch folder the caller then removes. Tasks
    are waited for, never cancelled: a ``ray.cancel`` that races a finishing
    task aborts the driver inside Ray (``Check failed: it !=
    submissible_tasks_.end()``, ray-project/ray#54846), and the window bounds
    that wait to the tasks already running.
    ``on_workers=False`` runs the same calls in this process, in turn: for a
    source of one user partition, where a task would hold the same rows and
    only add a worker's start-up.
    """
    if not on_workers:
        for key in keys:
            yield fn(shared, key)
        return
    import ray

    remote = ray.remote(num_cpus=TASK_CPUS)(fn)
    shared_ref = ray.put(shared)
    window = max(1, int(ray.cluster_resources().get("CPU", 1) // TASK_CPUS))
    pending = iter(keys)
    in_flight: deque[Any] = deque()  # object refs, in key order

    def submit(n: int) -> None:
        for key in itertools.islice(pending, n):
            in_flight.append(remote.remote(shared_ref, key))

    try:
        submit(window)
        while in_flight:
            ref = in_flight.popleft()  # the caller holds the record: the object store may drop it
            try:
                record = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, RecbatchError):
                    raise exc.cause from None
                raise
            submit(1)
            yield record
    finally:
        if in_flight:
            ray.wait(list(in_flight), num_returns=len(in_flight))


# --------------------------------------------------------------------------- snapshot files


def _arrow(frame: pl.DataFrame) -> pa.Table:
    """Arrow with the snapshot's physical types: plain strings, ts as timestamp[us, UTC]."""
    table = frame.to_arrow()
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            t = pa.string()
        elif pa.types.is_timestamp(t):
            t = TIMESTAMP_TYPE
        fields.append(pa.field(f.name, t))
    return table.cast(pa.schema(fields))


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's schema and values, independent of how it was chunked."""
    h = hashlib.sha256(table.schema.serialize().to_pybytes())
    for batch in table.combine_chunks().to_batches(max_chunksize=ROW_GROUP_ROWS):
        h.update(batch.serialize())
    return h.hexdigest()


def write_table(folder: Location, name: str, frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Write one snapshot file (`name` inside `folder`); returns ``{name: {"digest": its content digest,
    "bytes", "sha256": its manifest record}}`` (the digest names the snapshot, the record is checked
    against the file)."""
    table = _arrow(frame)
    record = write_parquet_part(table, folder.join(name), row_group_size=ROW_GROUP_ROWS)
    return {name: {"digest": table_digest(table), **record}}


# --------------------------------------------------------------------------- stage


@dataclass(frozen=True)
class StageTask:
    """How the source tables parse and how many staged partitions they are cut into."""

    facts: dict[str, TableFacts]
    id_type: IdType
    partitions: int
    work: Location


def stage_table(task: StageTask, table: tuple[RawTable, tuple[ColumnSpec, ...]]) -> None:
    """Parse one source table and stream it into ``raw/<table>/part-PPPPP.parquet``."""
    raw, specs = table
    with raw.reading():
        stage_by_user(parse_table(raw, specs, task.facts[raw.name], task.id_type), task.work.join("raw", raw.name),
                      task.partitions)


# --------------------------------------------------------------------------- check


@dataclass(frozen=True)
class CheckTask:
    """What every staged partition's check needs: the good items, the source's settings, the root."""

    context: SourceChecks
    layout: RunLayout  # its erasure/ folder holds recbatch forget's suppression list
    detect_profiles: bool  # ingest.detect_injected_profiles
    work: Location


@dataclass
class CheckRecord:
    """What the driver learns of one checked partition."""

    counts: Counter  # valid_interactions, users, quarantined_<table>, erased_*
    reasons: Counter  # quarantine reason -> interaction rows (for "every row is bad")
    interaction_tallies: list[Tally]  # fail mode: per check, its bad rows' count and first examples
    user_tallies: list[Tally]
    evidence: ProfileEvidence | None  # per-item totals and burst profiles (injected-profile detection)


def check_partition(task: CheckTask, partition: int) -> CheckRecord:
    """Validate and erase one staged partition, write its clean and bad rows, and gather its evidence."""
    work = task.work
    users = None
    if task.context.users_path is not None:
        users = read_parquet([part_path(work.join("raw", "users"), partition)])
    part = validate_partition(read_parquet([part_path(work.join("raw", "interactions"), partition)]), users,
                              task.context)
    counts: Counter = Counter(valid_interactions=part.interactions.height)
    reasons: Counter = Counter()
    if "interactions" in part.quarantine:
        reasons.update(dict(part.quarantine["interactions"]["reason"].value_counts().iter_rows()))
    suppressed = SuppressionList.load(task.layout)  # recbatch forget's requests
    if suppressed is not None:
        part, erased = without_erased_users(part, suppressed)
        counts.update(erased)
    write_part(work.join("clean", "interactions"), partition, part.interactions)
    write_part(work.join("clean", "users"), partition, part.users)
    for name, bad in part.quarantine.items():
        write_part(work.join("bad", name), partition, bad)
        counts[f"quarantined_{name}"] += bad.height
    counts["users"] += part.users.height
    evidence = profile_evidence(part.interactions) if task.detect_profiles else None
    return CheckRecord(counts, reasons, part.interaction_tallies, part.user_tallies, evidence)


# --------------------------------------------------------------------------- injected profiles


@dataclass(frozen=True)
class DeviationTask:
    means: pl.DataFrame  # item_id, mean: every rated item's mean rating
    work: Location


def write_deviation(task: DeviationTask, partition: int) -> None:
    """Score one staged partition's profiles against the item means, into ``deviation/``."""
    interactions = read_parquet([part_path(task.work.join("clean", "interactions"), partition)])
    write_part(task.work.join("deviation"), partition, rating_deviation(interactions, task.means))


# --------------------------------------------------------------------------- write


@dataclass(frozen=True)
class WriteTask:
    """What every snapshot partition's writer needs: small, the same for every partition."""

    staged: int  # partitions of the scratch files
    partitions: int  # partitions of the snapshot
    suspects: pl.DataFrame | None  # user_id, reason of the injected-profile suspects (None: detection off)
    split: SplitConfig
    cutoff: dt.datetime | None  # the time cut (split.global_cutoff), None for per-user protocols
    min_rating: float | None
    work: Location


@dataclass
class WriteRecord:
    """What the driver learns of one written snapshot partition."""

    written: dict[str, dict[str, Any]]  # snapshot file -> content digest and manifest record (write_table)
    counts: Counter  # interactions, rows per split, quarantined_profile_interactions, below_min_rating
    warm_items: pl.Series  # items with a train interaction here (the rest of the catalog is cold)


def write_partition(task: WriteTask, partition: int) -> WriteRecord:
    """One snapshot partition: set the suspects aside, split, write interactions, users and split."""
    clean, out = task.work.join("clean"), task.work.join("out")
    interactions = read_partition(clean.join("interactions"), partition, task.partitions, task.staged)
    users = read_partition(clean.join("users"), partition, task.partitions, task.staged)
    counts: Counter = Counter()
    if task.suspects is not None:
        interactions, users, moved = set_aside(interactions, users, task.suspects)
        counts["quarantined_profile_interactions"] += moved.height
        if moved.height:
            write_part(task.work.join("bad", "profiles"), partition, moved)
    split = split_interactions(interactions.drop(ROW), task.split, task.cutoff)
    written = write_table(out, partition_file_name("interactions", partition), split.drop("split"))
    written |= write_table(out, partition_file_name("users", partition), users.sort("user_id"))
    written |= write_table(out, partition_file_name("split", partition), split)
    counts["interactions"] += split.height
    counts.update(split_counts(split))
    if task.min_rating is not None and "rating" in split.columns:
        # kept in the snapshot (training skips them as positives); counted so it is never silent
        counts["below_min_rating"] += int((split["rating"] < task.min_rating).sum())
    return WriteRecord(written, counts, train_items(split))


def write_quarantine(work: Location, name: str) -> dict[str, dict[str, Any]]:
    """``quarantine/<name>.parquet`` from every partition's bad rows, in the source's row order."""
    order = ROW if name == "profiles" else "source_row"
    bad = scan_parts(work.join("bad", name)).sort(order).collect(engine="streaming")
    return write_table(work.join("out"), f"quarantine/{name}.parquet", bad.drop(ROW, strict=False))
