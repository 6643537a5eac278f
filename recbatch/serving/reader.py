"""Reading recommendations: one round trip, always one whole version.

``get_recommendations`` runs a Lua script that reads the pointer and then the
user's value under the version it names. Redis runs the script atomically, so
a reader can never combine a pointer from before a flip with a value from
after it, and it pays one network round trip, not two.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from recbatch.serving.codec import decode
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
    client: redis.Redis, user_id: int | str, k: int | None = None, prefix: str = "recbatch"
) -> Recommendations | None:
    """The live recommendations for `user_id` (top `k` if given), or None if there are none."""
    keys = KeyLayout(prefix)
    reply = run_script(client, READ, [keys.pointer], [f"{prefix}:v:", f":u:{user_id}"])
    if not reply or len(reply) < 2 or reply[1] is None:
        return None
    value = decode(reply[1], k)
    if value.version != reply[0].decode():  # the loader tags values with their namespace
        raise ValueError(f"{keys.user(reply[0].decode(), user_id)} holds a value tagged {value.version}")
    return Recommendations(user_id, value.version, value.item_ids, value.scores, value.because_item_ids)
