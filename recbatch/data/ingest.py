"""Ingest: source files -> a validated, split, content-addressed snapshot, one user partition at a time.

    pass 1  streaming aggregates over each whole table: sizes, structure, id types (validate.table_facts);
            items validated whole (they grow with items, not users)
    stage   interactions and users parsed and cut by user partition into scratch files (data/staging.py)
    check   per staged partition: validate (exact counts + earliest examples, added up across partitions),
            erase (recbatch forget's list), injected-profile evidence (per-item totals, burst profiles)
    suspect with ratings, each staged partition's profiles scored against the exact item means; then the
            injected-profile suspects of both signals (data/profiles.py)
    write   per snapshot partition: set suspected profiles aside, split (a time cut's cutoff is a global,
            bounded streaming quantile), write the partition files and their digests; then items, quarantine
    publish hash of the digests + settings names the folder; manifest, rename

No step holds a whole per-user table: the driver's memory follows
``ingest.users_per_partition``, not the size of the input (what is still
whole: items, quarantine tables, per-item and burst-profile evidence; see docs/ARCHITECTURE.md).
The scratch files live in a staging folder under ``snapshots/`` that is
removed however ingest ends, so a rejected source leaves nothing there. The
folder name is a hash of the written tables and the split settings: the same
data ingested again (even from CSV instead of Parquet) maps to the same
snapshot, and re-ingesting is a no-op that returns it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from recbatch.config import Config, IngestConfig, SplitConfig
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
    profile_evidence,
    rating_deviation,
    set_aside,
)
from recbatch.data.readers import RawSource, find_table_file, read_canonical, require_source_dir
from recbatch.data.snapshot import Snapshot, partition_file_name
from recbatch.data.split import global_cutoff, mark_cold_items, split_counts, split_interactions, train_items
from recbatch.data.staging import part_path, read_partition, scan_parts, stage_by_user, write_part
from recbatch.data.validate import (
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ROW,
    USER_COLUMNS,
    SourceChecks,
    TableFacts,
    Tally,
    add_tallies,
    check_id_types,
    check_structure,
    ignored_interaction_columns,
    nothing_left,
    parse_table,
    parsed_id_type,
    raise_first_problem,
    table_facts,
    user_checks,
    validate_items,
    validate_partition,
)
from recbatch.erasure.suppression import SuppressionList, without_erased_users
from recbatch.errors import UsageError
from recbatch.layout import RunLayout
from recbatch.schemas import TIMESTAMP_TYPE, IdType
from recbatch.storage import is_complete, publish_dir, sha256_file, staging_dir_for, write_manifest

log = logging.getLogger(__name__)

HASH_LENGTH = 16  # hex characters of sha256 in the folder name
ROW_GROUP_ROWS = 1 << 20


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


# --------------------------------------------------------------------------- the stage


@dataclass
class Written:
    """The snapshot files written so far, with their content digests."""

    folder: Path
    digests: dict[str, str] = field(default_factory=dict)

    def write(self, name: str, frame: pl.DataFrame) -> None:
        table = _arrow(frame)
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS)
        self.digests[name] = table_digest(table)


def _validated_partitions(
    source: RawSource, facts: dict[str, TableFacts], id_type: IdType, items: pl.DataFrame, work: Path, cfg: Config
) -> tuple[int, Counter, list[ProfileEvidence]]:
    """Stage the per-user tables by user partition, validate and erase one partition at a time.

    Writes ``clean/<table>/`` and ``bad/<table>/`` parts under `work`; raises
    (fail mode) with the totals of every partition once all are checked.
    Returns the staging partition count, counts, and the injected-profile evidence.
    """
    users_seen = max(f.distinct_users for f in facts.values())
    staged = partition_count(users_seen, cfg.ingest.users_per_partition)
    tables = [(source.interactions, INTERACTION_COLUMNS)]
    if source.users is not None:
        tables.append((source.users, USER_COLUMNS))
    for table, specs in tables:
        with table.reading():
            stage_by_user(parse_table(table, specs, facts[table.name], id_type), work / "raw" / table.name, staged)

    context = SourceChecks(
        items=items,
        items_path=source.items.path,
        users_path=source.users.path if source.users is not None else None,
        rating_scale=source.rating_scale,
        on_bad_rows=cfg.ingest.on_bad_rows,
        now=dt.datetime.now(dt.UTC),
    )
    suppressed = SuppressionList.load(RunLayout.of(cfg.root))  # recbatch forget's requests
    counts: Counter = Counter()
    reasons: Counter = Counter()  # interaction quarantine reasons, for "every row is bad"
    interaction_tallies: list[Tally] = []
    user_tallies: list[Tally] = []
    evidence: list[ProfileEvidence] = []
    for q in range(staged):
        users = pl.read_parquet(part_path(work / "raw" / "users", q)) if source.users is not None else None
        part = validate_partition(pl.read_parquet(part_path(work / "raw" / "interactions", q)), users, context)
        interaction_tallies = add_tallies(interaction_tallies, part.interaction_tallies)
        user_tallies = add_tallies(user_tallies, part.user_tallies)
        counts["valid_interactions"] += part.interactions.height
        if "interactions" in part.quarantine:
            reasons.update(dict(part.quarantine["interactions"]["reason"].value_counts().iter_rows()))
        if suppressed is not None:
            part, erased = without_erased_users(part, suppressed)
            counts.update(erased)
        write_part(work / "clean" / "interactions", q, part.interactions)
        write_part(work / "clean" / "users", q, part.users)
        for name, bad in part.quarantine.items():
            write_part(work / "bad" / name, q, bad)
            counts[f"quarantined_{name}"] += bad.height
        counts["users"] += part.users.height
        if cfg.ingest.detect_injected_profiles:
            evidence.append(profile_evidence(part.interactions))

    if source.users is not None:
        raise_first_problem(source.users, facts["users"].rows, user_checks(), user_tallies)
    raise_first_problem(source.interactions, facts["interactions"].rows, part.interaction_checks, interaction_tallies)
    if counts.pop("valid_interactions") == 0:
        raise nothing_left(source.interactions, facts["interactions"].rows, reasons.most_common())
    return staged, counts, evidence


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


def _suspected_profiles(work: Path, staged: int, evidence: ProfileEvidence) -> pl.DataFrame:
    """``user_id``, ``reason`` of the injected-profile suspects (data/profiles.py): coordinated bursts, and
    with ratings, profiles rated far from the population, scored one staged partition at a time."""
    found = [find_bursts(evidence)]
    means = item_mean_ratings(evidence)
    if means is not None:
        for q in range(staged):
            interactions = pl.read_parquet(part_path(work / "clean" / "interactions", q))
            write_part(work / "deviation", q, rating_deviation(interactions, means))
        found.append(find_rating_outliers(scan_parts(work / "deviation")))
    return merge_suspects(found)


def _write_snapshot(
    work: Path, staged: int, counts: Counter, suspects: pl.DataFrame | None, items: pl.DataFrame,
    bad_items: pl.DataFrame | None, cfg: Config,
) -> tuple[Written, int]:
    """Pass 3, one final user partition at a time: set suspects aside, split, write; then items and quarantine."""
    if suspects is not None:
        counts["users"] -= suspects.height
        counts["quarantined_profiles"] = suspects.height
        counts["quarantined_profile_interactions"] = 0
    partitions = partition_count(counts["users"], cfg.ingest.users_per_partition)
    clean = work / "clean"
    kept = scan_parts(clean / "interactions")
    if suspects is not None:
        kept = kept.filter(~pl.col("user_id").is_in(suspects["user_id"].implode()))
    cutoff = global_cutoff(kept, cfg.split)
    out = Written(work / "out")
    warm: list[pl.Series] = []
    for p in range(partitions):
        interactions = read_partition(clean / "interactions", p, partitions, staged)
        users = read_partition(clean / "users", p, partitions, staged)
        if suspects is not None:
            interactions, users, moved = set_aside(interactions, users, suspects)
            counts["quarantined_profile_interactions"] += moved.height
            if moved.height:
                write_part(work / "bad" / "profiles", p, moved)
        split = split_interactions(interactions.drop(ROW), cfg.split, cutoff)
        out.write(partition_file_name("interactions", p), split.drop("split"))
        out.write(partition_file_name("users", p), users.sort("user_id"))
        out.write(partition_file_name("split", p), split)
        counts["interactions"] += split.height
        counts.update(split_counts(split))
        warm.append(train_items(split))
        if cfg.ingest.min_rating is not None and "rating" in split.columns:
            # kept in the snapshot (training skips them as positives); counted so it is never silent
            counts["below_min_rating"] += int((split["rating"] < cfg.ingest.min_rating).sum())
    items = mark_cold_items(items, pl.concat(warm).unique()).sort("item_id")
    out.write("items.parquet", items)
    counts["items"] = items.height
    counts["unavailable_items"] = int((~items["available"]).sum())
    counts["cold_items"] = int(items["is_cold"].sum())
    counts["quarantined_items"] = bad_items.height if bad_items is not None else 0
    if bad_items is not None:
        out.write("quarantine/items.parquet", bad_items)
    for name in ("interactions", "users", "profiles"):
        if (work / "bad" / name).is_dir():
            order = ROW if name == "profiles" else "source_row"  # the source's row order
            bad = scan_parts(work / "bad" / name).sort(order).collect(engine="streaming")
            out.write(f"quarantine/{name}.parquet", bad.drop(ROW, strict=False))
    return out, partitions


def ingest(cfg: Config) -> Snapshot:
    """Read, validate and split ``cfg.ingest.source``; publish (or reuse) its snapshot."""
    source = read_source(cfg.ingest, cfg.split)
    facts, id_type, items, bad_items = _validated_source(source, cfg)
    layout = RunLayout.of(cfg.root)
    work = staging_dir_for(layout.snapshot("ingest"))  # scratch files, gone however ingest ends
    try:
        staged, counts, evidence = _validated_partitions(source, facts, id_type, items, work, cfg)
        suspects = _suspected_profiles(work, staged, combine(evidence)) if cfg.ingest.detect_injected_profiles else None
        out, partitions = _write_snapshot(work, staged, counts, suspects, items, bad_items, cfg)
        for name in ("interactions", "users"):
            counts.setdefault(f"quarantined_{name}", 0)
        counts.update(source.counts)
        snapshot_hash = snapshot_digest(out.digests, cfg)
        final = layout.snapshot(snapshot_hash)
        if is_complete(final):
            log.info("snapshot %s already exists: nothing to do", final)
            return Snapshot.open(final)
        write_manifest(
            out.folder,
            {
                "snapshot_hash": snapshot_hash,
                "id_type": id_type,
                "format": source.format,
                "counts": dict(counts),
                "sources": _describe_sources(Path(cfg.ingest.source), source.files),
                "split": dataclasses.asdict(cfg.split),
                "ingest": {"on_bad_rows": cfg.ingest.on_bad_rows, "min_rating": cfg.ingest.min_rating},
                "ignored_columns": _ignored(facts),
                "partitioning": {"by": "user_id", "scheme": PARTITION_SCHEME, "partitions": partitions},
            },
        )
        publish_dir(out.folder, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
