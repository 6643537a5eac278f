"""The Redis key layout, spelled in exactly one place.

Everything lives under ``serving.key_prefix`` (``P`` below). A load writes a
whole new *version* namespace and then flips one pointer, so readers resolve
the pointer first and never see a half-written run:

    {P}:current                string  the live version id
    {P}:history                list    activated versions, newest first (head = live)
    {P}:versions               zset    every version ever started (score = start ms),
                                       including killed loads, so garbage collection finds them
    {P}:v:<version>:meta       hash    load metadata (run date, model version, counts, times, state)
    P:v:<version>:u:<user_id>  string  one user's recommendations (see codec.py)

``<user_id>`` is the decimal text of an integer id or the string id itself.

Why the braces: on Redis Cluster a key's slot is the hash of the part in
``{...}``, so every control key shares one slot and the flip and rollback
scripts, which touch several of them, can run atomically on one node; user
keys carry no braces and spread over every slot. A standalone Redis ignores
the braces, so the layout is the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyLayout:
    """Key names for one prefix; readers in other languages follow docs/serving.md."""

    prefix: str = "recbatch"

    @property
    def control(self) -> str:
        """``{P}``: the hash-tagged prefix of every control key (one cluster slot)."""
        return "{" + self.prefix + "}"

    @property
    def pointer(self) -> str:
        return f"{self.control}:current"

    @property
    def history(self) -> str:
        return f"{self.control}:history"

    @property
    def registry(self) -> str:
        return f"{self.control}:versions"

    @property
    def meta_root(self) -> str:
        """``{P}:v:`` — a version's meta key is this + ``<version>:meta`` (rollback's script builds it)."""
        return f"{self.control}:v:"

    def meta(self, version: str) -> str:
        return f"{self.meta_root}{version}:meta"

    def version_root(self, version: str) -> str:
        """``P:v:<version>:`` — every user key of a version starts with this."""
        return f"{self.prefix}:v:{version}:"

    def user(self, version: str, user_id: int | str) -> str:
        return f"{self.version_root(version)}u:{user_id}"

    def version_pattern(self, version: str) -> str:
        """SCAN pattern matching every user key of one version (Redis does the matching)."""
        return _glob_escape(self.version_root(version)) + "*"


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a prefix like ``a*b`` matches literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
