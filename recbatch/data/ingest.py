"""Ingest: source files -> a validated, split, content-addressed snapshot, one user partition per Ray task.

    pass 1  (driver) streaming aggregates over each whole table: sizes, structure, id types
            (validate.table_facts); items validated whole (they grow with items, not users)
    stage   (a task per table) interactions and users parsed and cut by user partition into scratch files
    check   (a task per staged partition) validate (exact counts + earliest examples, added up across
            partitions), erase (recbatch forget's list), injected-profile evidence (per-item totals, burst profiles)
    suspect with ratings, each staged partition's profiles scored against the exact item means (a task each);
            then the injected-profile suspects of both signals (data/profiles.py)
    write   (a task per snapshot partition) set suspected profiles aside, split (a time cut's cutoff is a
            global, bounded streaming quantile), write the partition files and their digests; then items,
            and each quarantine table (a task each)
    publish hash of the digests + settings names the folder; manifest, rename

The tasks (``data/ingest_tasks.py``) return small records (counts, tallies of
bad rows, digests, per-item evidence) that the driver adds up in partition
order: the driver never holds a user's rows, and its memory follows the item
catalog, not the size of the input. A worker holds one user partition
(``ingest.users_per_partition``), or one quarantine table. A source of one
user partition is ingested in the driver itself, under the same bound,
without starting Ray.
The scratch files live in a staging folder under ``snapshots/``, on the
root's own storage (a local or shared disk, or an attempt prefix on an object
store: the tasks that read them may run on any node), and are removed however
ingest ends, so a rejected source leaves nothing there. The folder name is a
hash of the written tables and the split settings: the same data ingested
again (even from CSV instead of Parquet) maps to the same snapshot, and
re-ingesting is a no-op that returns it. Only once the hash is known is the
snapshot put in place (``folders.publish_written``: a rename on a local root,
a copy inside the store, manifest and commit marker on an object store).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from recbatch.config import Config, IngestConfig, SplitConfig
from recbatch.data.ingest_tasks import (
    CheckTask,
    DeviationTask,
    StageTask,
    WriteTask,
    check_partition,
    map_tasks,
    runs_on_workers,
    stage_table,
    write_deviation,
    write_partition,
    write_quarantine,
    write_table,
)
from recbatch.data.movielens import READERS, detect_layout
from recbatch.data.partition import SCHEME as PARTITION_SCHEME
from recbatch.data.partition import partition_count
from recbatch.data.profiles import (
    ProfileEvidence,
    combine,
    find_bursts,
    find_rating_outliers,
    item_mean_ratings,
    merge_suspects,
)
from recbatch.data.readers import RawSource, find_table_file, read_canonical, require_source_dir
from recbatch.data.snapshot import Snapshot
from recbatch.data.split import global_cutoff, mark_cold_items
from recbatch.data.staging import scan_parts, staged_parts
from recbatch.data.validate import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    USER_COLUMNS,
    SourceChecks,
    TableFacts,
    Tally,
    add_tallies,
    check_id_types,
    check_structure,
    ignored_interaction_columns,
    nothing_left,
    parsed_id_type,
    raise_first_problem,
    table_facts,
    validate_items,
)
from recbatch.errors import UsageError
from recbatch.folders import is_complete, publish_written, staging_for
from recbatch.fs import Location, check_access, remove_tree
from recbatch.layout import RunLayout
from recbatch.schemas import IdType
from recbatch.storage import sha256_file

log = logging.getLogger(__name__)

HASH_LENGTH = 16  # hex characters of sha256 in the folder name


def detect_format(cfg: IngestConfig) -> str:
    """``ingest.format``, or the layout recognised from the files in the source folder."""
    folder = require_source_dir(cfg.source)
    if cfg.format != "auto":
        return cfg.format
    layout = detect_layout(folder)
    if layout is not None:
        return layout
    if find_table_file(folder, cfg.interactions_file) is not None:
        return "canonical"
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise UsageError(
        f"cannot tell the layout of {folder} (it holds {present}): expected {cfg.interactions_file}.parquet/.csv "
        "+ items, or a MovieLens release (ratings.csv+movies.csv, u.data+u.item, ratings.dat+movies.dat); "
        "name it with --format"
    )


def read_source(cfg: IngestConfig, split: SplitConfig | None = None) -> RawSource:
    """The raw tables; `split` lets a reader keep item text from after a time cutoff out."""
    fmt = detect_format(cfg)
    if fmt == "canonical":
        return read_canonical(cfg)
    if fmt == "movielens-latest":
        return READERS[fmt](Path(cfg.source), split=split)
    return READERS[fmt](Path(cfg.source))


# --------------------------------------------------------------------------- content hash


def snapshot_digest(digests: dict[str, str], cfg: Config) -> str:
    """The snapshot's identity: the digest of every file it will hold (``table_digest``, one per
    user partition of the per-user tables) plus the settings that shaped them."""
    h = hashlib.sha256()
    settings = {"split": dataclasses.asdict(cfg.split), "min_rating": cfg.ingest.min_rating}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(digests):
        h.update(name.encode())
        h.update(digests[name].encode())
    return h.hexdigest()[:HASH_LENGTH]


# --------------------------------------------------------------------------- the stage (driver side)


def _validated_partitions(
    source: RawSource, facts: dict[str, TableFacts], id_type: IdType, items: pl.DataFrame, work: Location,
    staged: int, layout: RunLayout, cfg: Config,
) -> tuple[Counter, ProfileEvidence | None]:
    """Stage the per-user tables in `staged` user partitions, then validate and erase each partition.

    The tasks write ``clean/<table>/`` and ``bad/<table>/`` parts under `work`;
    this raises (fail mode) with the totals of every partition once all are checked.
    Returns the counts and the injected-profile evidence (None: detection off).
    """
    on_workers = runs_on_workers(staged)
    tables = [(source.interactions, INTERACTION_COLUMNS)]
    if source.users is not None:
        tables.append((source.users, USER_COLUMNS))
    for _ in map_tasks(stage_table, StageTask(facts, id_type, staged, work), tables, on_workers=on_workers):
        pass

    context = SourceChecks(
        items=items,
        items_path=source.items.path,
        users_path=source.users.path if source.users is not None else None,
        rating_scale=source.rating_scale,
        on_bad_rows=cfg.ingest.on_bad_rows,
        now=dt.datetime.now(dt.UTC),
    )
    task = CheckTask(context, layout, cfg.ingest.detect_injected_profiles, work)
    counts: Counter = Counter()
    reasons: Counter = Counter()  # interaction quarantine reasons, for "every row is bad"
    interaction_tallies: list[Tally] = []
    user_tallies: list[Tally] = []
    evidence: ProfileEvidence | None = None
    for record in map_tasks(check_partition, task, range(staged), on_workers=on_workers):
        counts.update(record.counts)
        reasons.update(record.reasons)
        interaction_tallies = add_tallies(interaction_tallies, record.interaction_tallies)
        user_tallies = add_tallies(user_tallies, record.user_tallies)
        if record.evidence is not None:
            evidence = record.evidence if evidence is None else combine([evidence, record.evidence])

    if source.users is not None:
        raise_first_problem(source.users, facts["users"].rows, user_tallies)
    raise_first_problem(source.interactions, facts["interactions"].rows, interaction_tallies)
    if counts.pop("valid_interactions") == 0:
        raise nothing_left(source.interactions, facts["interactions"].rows, reasons.most_common())
    return counts, evidence


def _validated_source(source: RawSource, cfg: Config) -> tuple[dict[str, TableFacts], IdType, pl.DataFrame, pl.DataFrame | None]:
    """Pass 1 (streaming, whole tables): sizes, structure, id types; then the items, which are few."""
    specs = {"interactions": INTERACTION_COLUMNS, "items": ITEM_COLUMNS, "users": USER_COLUMNS}
    tables = [t for t in (source.interactions, source.items, source.users) if t is not None]
    facts = {t.name: table_facts(t, specs[t.name]) for t in tables}
    for t in (source.items, source.interactions, source.users):
        if t is not None:
            check_structure(t, specs[t.name], facts[t.name])
    id_columns = [(source.items, "item_id"), (source.interactions, "item_id"), (source.interactions, "user_id")]
    if source.users is not None:
        id_columns.append((source.users, "user_id"))
    id_type = check_id_types(
        [(t, facts[t.name], c, parsed_id_type(t, specs[t.name], facts[t.name], c)) for t, c in id_columns]
    )
    items, bad_items = validate_items(source.items, facts["items"], id_type, cfg.ingest.on_bad_rows)
    return facts, id_type, items, bad_items


def _suspected_profiles(work: Location, staged: int, evidence: ProfileEvidence) -> pl.DataFrame:
    """``user_id``, ``reason`` of the injected-profile suspects (data/profiles.py): coordinated bursts, and
    with ratings, profiles rated far from the population, scored one staged partition per task."""
    found = [find_bursts(evidence)]
    means = item_mean_ratings(evidence)
    if means is not None:
        on_workers = runs_on_workers(staged)
        for _ in map_tasks(write_deviation, DeviationTask(means, work), range(staged), on_workers=on_workers):
            pass
        found.append(find_rating_outliers(scan_parts(work.join("deviation"))))
    return merge_suspects(found)


def _write_snapshot(
    work: Location, staged: int, counts: Counter, suspects: pl.DataFrame | None, items: pl.DataFrame,
    bad_items: pl.DataFrame | None, cfg: Config,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Pass 3, one final user partition per task: set suspects aside, split, write; then items and quarantine.

    Returns every file written into ``work/out`` (its digest and manifest record, ``write_table``)
    and the snapshot's partition count.
    """
    if suspects is not None:
        counts["users"] -= suspects.height
        counts["quarantined_profiles"] = suspects.height
        counts["quarantined_profile_interactions"] = 0
    partitions = partition_count(counts["users"], cfg.ingest.users_per_partition)
    kept = scan_parts(work.join("clean", "interactions"))
    if suspects is not None:
        kept = kept.filter(~pl.col("user_id").is_in(suspects["user_id"].implode()))
    cutoff = global_cutoff(kept, cfg.split)
    task = WriteTask(staged, partitions, suspects, cfg.split, cutoff, cfg.ingest.min_rating, work)
    written: dict[str, dict[str, Any]] = {}
    warm: list[pl.Series] = []
    for record in map_tasks(write_partition, task, range(partitions), on_workers=runs_on_workers(staged)):
        written |= record.written
        counts.update(record.counts)
        warm.append(record.warm_items)
    items = mark_cold_items(items, pl.concat(warm).unique()).sort("item_id")
    out = work.join("out")
    written |= write_table(out, "items.parquet", items)
    counts["items"] = items.height
    counts["unavailable_items"] = int((~items["available"]).sum())
    counts["cold_items"] = int(items["is_cold"].sum())
    counts["quarantined_items"] = bad_items.height if bad_items is not None else 0
    if bad_items is not None:
        written |= write_table(out, "quarantine/items.parquet", bad_items)
    quarantined = [name for name in ("interactions", "users", "profiles") if staged_parts(work.join("bad", name))]
    for table in map_tasks(write_quarantine, work, quarantined, on_workers=runs_on_workers(staged)):
        written |= table
    return written, partitions


def ingest(cfg: Config) -> Snapshot:
    """Read, validate and split ``cfg.ingest.source``; publish (or reuse) its snapshot under ``cfg.root``
    (a local folder or an ``s3://``/``gs://`` prefix reached as ``cfg.storage`` says)."""
    from recbatch.runtime import ensure_ray

    layout = RunLayout.of(cfg.root, cfg.storage)
    check_access(layout.at.root)  # a wrong bucket or credentials: refused, naming the bucket, before any work
    source = read_source(cfg.ingest, cfg.split)
    facts, id_type, items, bad_items = _validated_source(source, cfg)
    staged = partition_count(max(f.distinct_users for f in facts.values()), cfg.ingest.users_per_partition)
    if runs_on_workers(staged):
        ensure_ray(cfg.ray)  # after pass 1: a source with a structural problem is refused without starting Ray
    work = staging_for(layout.at.ingest_scratch)  # scratch files, gone however ingest ends
    try:
        counts, evidence = _validated_partitions(source, facts, id_type, items, work, staged, layout, cfg)
        suspects = _suspected_profiles(work, staged, evidence) if evidence is not None else None
        written, partitions = _write_snapshot(work, staged, counts, suspects, items, bad_items, cfg)
        for name in ("interactions", "users"):
            counts.setdefault(f"quarantined_{name}", 0)
        counts.update(source.counts)
        snapshot_hash = snapshot_digest({name: w["digest"] for name, w in written.items()}, cfg)
        final = layout.at.snapshot(snapshot_hash)
        if is_complete(final):
            log.info("snapshot %s already exists: nothing to do", final)
            return Snapshot.open(final)
        fields = {
            "snapshot_hash": snapshot_hash,
            "id_type": id_type,
            "format": source.format,
            "counts": dict(counts),
            "sources": _describe_sources(Path(cfg.ingest.source), source.files),
            "split": dataclasses.asdict(cfg.split),
            "ingest": {"on_bad_rows": cfg.ingest.on_bad_rows, "min_rating": cfg.ingest.min_rating},
            "ignored_columns": _ignored(facts),
            "partitioning": {"by": "user_id", "scheme": PARTITION_SCHEME, "partitions": partitions},
        }
        files = {name: {"bytes": w["bytes"], "sha256": w["sha256"]} for name, w in written.items()}
        publish_written(work.join("out"), final, fields, files)
    finally:
        remove_tree(work)
    log.info("published snapshot %s (%s)", final, dict(counts))
    return Snapshot.open(final)


def _ignored(facts: dict[str, TableFacts]) -> dict[str, list[str]]:
    ignored = ignored_interaction_columns(facts["interactions"])
    return {"interactions": ignored} if ignored else {}


def _describe_sources(folder: Path, files: list[Path]) -> dict[str, dict[str, object]]:
    """Each source file by its path inside the source folder, with size and sha256."""
    return {
        str(p.relative_to(folder)): {"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in files
    }
