"""Reading recommendations: always one whole version.

On one Redis, ``get_recommendations`` runs a Lua script that reads the pointer
and then the user's value under the version it names. Redis runs the script
atomically, so a reader can never combine a pointer from before a flip with a
value from after it, and it pays one network round trip, not two.

On Redis Cluster the pointer and the user's key live in different slots, which
a script may not combine, so the reader does two GETs (two round trips): the
pointer, then the value under the version it names. Each value carries its
version tag (codec.py) and the tag is checked against the pointer read, so a
value of another version is never served. A flip between the two GETs is
harmless (the version just read stays in Redis as the rollback target); only
if that version were also deleted in between would the value be missing, and
then the pointer is read once more.
"""

from __future__ import annotations

from dataclasses import dataclass

from recbatch.serving.codec import decode
from recbatch.serving.connection import Store, is_cluster
from recbatch.serving.keys import KeyLayout
from recbatch.serving.scripts import READ, run_script


@dataclass(frozen=True)
class Recommendations:
    """A user's recommendations as served, with the version they came from."""

    user_id: int | str
    version: str  # the version tag stored inside the value
    item_ids: list[int] | list[str]
    scores: list[float]
    because_item_ids: list[int] | list[str] | None = None


def get_recommendations(
    client: Store, user_id: int | str, k: int | None = None, prefix: str = "recbatch"
) -> Recommendations | None:
    """The live recommendations for `user_id` (top `k` if given), or None if there are none."""
    keys = KeyLayout(prefix)
    if is_cluster(client):
        version, value = _read_pointer_then_value(client, keys, user_id)
    else:
        reply = run_script(client, READ, [keys.pointer], [f"{prefix}:v:", f":u:{user_id}"])
        version, value = (reply[0].decode(), reply[1]) if reply and len(reply) == 2 else (None, None)
    if value is None:
        return None
    decoded = decode(value, k)
    if decoded.version != version:  # the loader tags values with their namespace
        raise ValueError(f"{keys.user(version, user_id)} holds a value tagged {decoded.version}")
    return Recommendations(user_id, decoded.version, decoded.item_ids, decoded.scores, decoded.because_item_ids)


def _read_pointer_then_value(client: Store, keys: KeyLayout, user_id: int | str) -> tuple[str | None, bytes | None]:
    """Two GETs; a miss is retried once if the pointer moved meanwhile (see the module doc)."""
    pointer = client.get(keys.pointer)
    for _ in range(2):
        if pointer is None:
            return None, None
        version = pointer.decode()
        value = client.get(keys.user(version, user_id))
        if value is not None:
            return version, value
        moved = client.get(keys.pointer)
        if moved == pointer:
            return version, None  # the user is not in the live version
        pointer = moved
    return version, None
