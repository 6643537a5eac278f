"""Erasure in the serving store: the erased users' keys go from every version still held.

Every registered version counts, not only the live one: the rollback target
would otherwise bring the users back with one ``recbatch rollback``, and a
killed load's leftovers still hold their lists. Each version's meta counts
(``users``, and ``written`` once complete) drop by the keys deleted in the
same script, so the counts the flip script checks stay true. A load in flight
meanwhile is refused at its flip when it had already written an erased user
(its ``written`` no longer matches ``users``); rerun it, and it reads the
rewritten run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import redis

from recbatch.serving.keys import KeyLayout
from recbatch.serving.scripts import ERASE, run_script
from recbatch.serving.versions import registered_versions

log = logging.getLogger(__name__)

BATCH = 1000  # user keys per script call: one call blocks Redis briefly


def erase_users(client: redis.Redis, keys: KeyLayout, user_ids: Sequence[int | str]) -> dict[str, int]:
    """Delete the users' keys from every registered version; returns keys deleted per version."""
    deleted: dict[str, int] = {}
    for version in registered_versions(client, keys):
        deleted[version] = sum(
            run_script(client, ERASE, [keys.meta(version), *(keys.user(version, u) for u in user_ids[i : i + BATCH])], [])
            for i in range(0, len(user_ids), BATCH)
        )
    log.info("erased %d user keys from %d version(s)", sum(deleted.values()), len(deleted))
    return deleted
