"""Garbage collection of old version namespaces.

Which versions go: every registered version except those the caller keeps
(the live one, its rollback target, the newest ``keep_versions``, and a load
in progress). That includes versions of killed loads, which never reached the
history. How: per version, a SCAN with ``MATCH P:v:<version>:*`` (Redis filters
server-side, so only that version's keys come back; on a cluster, every primary
is scanned), UNLINK in batches (Redis frees the memory in a background thread),
then the meta hash and the registry entry last, so an interrupted collection is
simply finished by the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable


from recbatch.serving.connection import Store
from recbatch.serving.keys import KeyLayout

log = logging.getLogger(__name__)


def versions_to_keep(history: list[str], keep_versions: int, loading: str | None = None) -> set[str]:
    """Versions to keep: the newest `keep_versions` (counting the live one), never fewer than
    the live one and its rollback target.

    With `loading` (a load in progress, which will head the history once live), the
    version count is taken as if it were already live, while the current live version
    and its rollback target stay safe in case the load fails.
    """
    wanted = max(2, keep_versions)
    if loading is None:
        return set(history[:wanted])
    return set(history[: max(2, wanted - 1)]) | {loading}


def collect_garbage(
    client: Store, keys: KeyLayout, keep: Iterable[str], *, batch_size: int = 1000
) -> list[str]:
    """Delete every registered version not in `keep`; returns the versions deleted."""
    keep = set(keep)
    doomed = [v for v in (m.decode() for m in client.zrange(keys.registry, 0, -1)) if v not in keep]
    delete_versions(client, keys, doomed, batch_size=batch_size)
    return doomed


def delete_versions(
    client: Store, keys: KeyLayout, versions: Iterable[str], *, batch_size: int = 1000
) -> int:
    """UNLINK every key of `versions`, then their meta and registry entries; returns keys deleted."""
    doomed = sorted(set(versions))
    deleted = 0
    for version in doomed:  # the meta key (not matched: keys.py) goes last, it marks unfinished work
        batch: list[bytes] = []
        # On a cluster redis-py scans every primary in turn, and UNLINK splits the keys by slot.
        for key in client.scan_iter(match=keys.version_pattern(version), count=batch_size):
            batch.append(key)
            if len(batch) >= batch_size:
                deleted += client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += client.unlink(*batch)
    if doomed:
        # Not MULTI: Redis refuses every command queued in a MULTI once memory is full, and
        # cleaning up after an out-of-memory load is exactly when this must work. Order is enough.
        pipe = client.pipeline(transaction=False)
        for version in doomed:
            pipe.unlink(keys.meta(version))
            pipe.zrem(keys.registry, version)
            pipe.lrem(keys.history, 0, version)
        pipe.execute()
        log.info("deleted %d version(s) (%d keys): %s", len(doomed), deleted, doomed)
    return deleted
