"""Version namespaces: start one, complete it, make it live, roll back.

A version's life: ``loading`` (registered, keys being written; invisible to
readers) -> ``complete`` (every user written and counted) -> live (the pointer
names it; it heads the history) -> retired (a newer one is live; kept for
rollback until garbage collection). Only the pointer decides what readers see.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import redis

from recbatch.errors import ServingStoreError
from recbatch.serving.connection import Store
from recbatch.serving.keys import KeyLayout
from recbatch.serving.scripts import FLIP, ROLLBACK, run_script


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def new_version_id(run_date: str) -> str:
    """``YYYYMMDD-<8 hex>``: readable, sortable by run date, unique per load attempt."""
    return f"{run_date.replace('-', '')}-{secrets.token_hex(4)}"


def register_version(
    client: Store, keys: KeyLayout, version: str, meta: dict[str, Any], ttl_seconds: int | None
) -> None:
    """Record a version as ``loading`` before its first key is written, so GC can find it."""
    pipe = client.pipeline(transaction=True)
    pipe.zadd(keys.registry, {version: int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)})
    pipe.hset(keys.meta(version), mapping={**_strings(meta), "state": "loading", "started_at": utc_now()})
    if ttl_seconds:
        pipe.expire(keys.meta(version), ttl_seconds)
    pipe.execute()


def mark_complete(client: Store, keys: KeyLayout, version: str, written: int) -> None:
    client.hset(keys.meta(version), mapping={"state": "complete", "written": written, "loaded_at": utc_now()})


def activate(client: Store, keys: KeyLayout, version: str) -> str | None:
    """Flip the pointer to a complete version atomically; returns the previous live version."""
    previous = run_script(client, FLIP, [keys.pointer, keys.history, keys.meta(version)], [version, utc_now()])
    return previous.decode() if previous else None


def rollback(client: Store, keys: KeyLayout) -> tuple[str, str]:
    """Make the previous version live again; returns (rolled back from, now live)."""
    try:
        current, target = run_script(
            client, ROLLBACK, [keys.pointer, keys.history], [keys.meta_root, utc_now()]
        )
    except redis.ResponseError as exc:
        raise ServingStoreError(f"rollback refused: {str(exc).removeprefix('RECBATCH ')}") from None
    return current.decode(), target.decode()


def live_version(client: Store, keys: KeyLayout) -> str | None:
    value = client.get(keys.pointer)
    return value.decode() if value else None


def history(client: Store, keys: KeyLayout) -> list[str]:
    """Activated versions, newest (live) first."""
    return [v.decode() for v in client.lrange(keys.history, 0, -1)]


def registered_versions(client: Store, keys: KeyLayout) -> list[str]:
    """Every version started and not yet garbage-collected, oldest first."""
    return [v.decode() for v in client.zrange(keys.registry, 0, -1)]


@dataclass(frozen=True)
class VersionInfo:
    """What the meta hash of a version records."""

    version: str
    meta: dict[str, str]

    @property
    def state(self) -> str | None:
        return self.meta.get("state")


def version_info(client: Store, keys: KeyLayout, version: str) -> VersionInfo:
    raw = client.hgetall(keys.meta(version))
    return VersionInfo(version, {k.decode(): v.decode() for k, v in raw.items()})


def _strings(meta: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in meta.items()}
