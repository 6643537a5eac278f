"""Reaching Redis: where the URL comes from, and errors that never leak it.

The URL may carry a password (``redis://:secret@host``) and TLS (``rediss://``),
so it is treated as a secret: it comes from config or from the environment
variable that config names (the one place recbatch reads the environment, and
only because config asked), and every message shows it masked.

The URL may name one Redis or any node of a Redis Cluster: ``connect`` asks the
node (``INFO cluster``) and, for a cluster, returns redis-py's ``RedisCluster``,
which discovers the other nodes and routes each key to its slot's primary.
Auth and TLS come from the same URL either way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from recbatch.config import mask_url_password, ServingConfig
from recbatch.errors import ServingStoreError, UsageError

MASK = "***"

# Either kind of client; every serving function takes both (the differences live in loader.py,
# reader.py and here).
Store = redis.Redis | RedisCluster


def resolve_redis_url(cfg: ServingConfig, override: str | None = None) -> str:
    """The Redis URL: an explicit override, else ``serving.redis_url``, else the named env var."""
    if override:
        return override
    if cfg.redis_url:
        return cfg.redis_url
    if cfg.redis_url_env:
        url = os.environ.get(cfg.redis_url_env)
        if not url:
            raise UsageError(
                f"serving.redis_url_env names the environment variable '{cfg.redis_url_env}', "
                "which is not set"
            )
        return url
    raise UsageError("no Redis URL: set serving.redis_url or serving.redis_url_env, or pass --redis-url")


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (user name and host kept)."""
    return mask_url_password(url)


def scrub(text: str, url: str) -> str:
    """Remove the URL's password (raw or percent-decoded) from any text."""
    password = urlsplit(url).password
    for secret in {password, unquote(password)} if password else ():
        text = text.replace(secret, MASK)
    return text


def is_cluster(client: Store) -> bool:
    return isinstance(client, RedisCluster)


def describe(client: Store) -> str:
    """``host:port/db`` of a client, for messages: built from its settings, so no secret."""
    if is_cluster(client):
        primaries = client.get_primaries()
        first = describe(primaries[0].redis_connection).rsplit("/", 1)[0]
        return f"{first} (cluster of {len(primaries)} primaries)"
    kw = client.connection_pool.connection_kwargs
    scheme = "rediss" if issubclass(client.connection_pool.connection_class, redis.SSLConnection) else "redis"
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"{scheme}://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


@contextmanager
def store_errors(where: str, doing: str, url: str | None = None) -> Iterator[None]:
    """Turn redis-py errors into ServingStoreError (exit code 6) with secrets scrubbed."""
    try:
        yield
    except redis.AuthenticationError as exc:
        raise ServingStoreError(
            _clean(f"Redis at {where} refused the credentials while {doing}: {exc}", url)
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServingStoreError(_clean(f"could not reach Redis at {where} while {doing}: {exc}", url)) from None
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:  # the latter: no RedisError
        reason = _PIPELINE_PREFIX.sub("", str(exc))  # drop the echoed command and its binary values
        raise ServingStoreError(_clean(f"Redis at {where} failed while {doing}: {reason}", url)) from None


_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*\) of pipeline caused error: ", re.S)


def _clean(message: str, url: str | None) -> str:
    return scrub(message, url) if url else message


def connect(cfg: ServingConfig, url: str | None = None) -> Store:
    """A client for the configured Redis or Redis Cluster, checked with PING (auth and TLS happen here)."""
    url = resolve_redis_url(cfg, url)
    where = mask_url(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=10, socket_timeout=60)
    except ValueError as exc:
        raise UsageError(scrub(f"bad Redis URL {where}: {exc}", url)) from None
    with store_errors(where, "connecting", url):
        try:
            client.ping()
            if client.info("cluster").get("cluster_enabled") == 1:
                client.close()
                client = RedisCluster.from_url(url, socket_connect_timeout=10, socket_timeout=60)
        except TypeError as exc:  # redis-py creates connections lazily, so bad URL options surface here
            raise UsageError(scrub(f"bad option in Redis URL {where}: {exc}", url)) from None
    return client
