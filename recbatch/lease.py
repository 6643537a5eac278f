"""One nightly run per root at a time: a lease on the root.

A nightly owns its root while it runs: it clears staging leftovers of killed
runs and republishes folders, so a second run on the same root (a manual rerun
started during the scheduled one) would delete the first one's work in progress
or interleave its publishes. The second run is refused before any work.

On a POSIX root the lease is an exclusive ``flock`` on ``<root>/_nightly.lease``
held for the whole run: the kernel releases it the moment its holder exits,
however it dies (also ``kill -9``), so a dead holder never blocks the next
night. The file itself only describes the holder, for the refusal message.
(Object-store roots need a conditional write with an expiry instead; they are
not supported by the storage layer yet, see docs/operations.md.)
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
from pathlib import Path

from recbatch.errors import RootBusy

LEASE_FILE = "_nightly.lease"


class RootLease:
    """Held while the object lives inside a ``with`` block; see the module doc."""

    def __init__(self, root: str | Path, description: str) -> None:
        self.path = Path(root) / LEASE_FILE
        self.description = description  # what the holder is doing, e.g. "nightly 2026-11-28"
        self._fd: int | None = None

    def __enter__(self) -> "RootLease":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RootBusy(
                f"root {self.path.parent} is in use by another run ({holder}); two runs on one root would "
                f"interleave. Wait for it to finish, or stop it: its lease ({self.path}) is released when "
                "its process exits."
            ) from None
        holder = {
            "what": self.description,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except json.JSONDecodeError:
        return "holder unknown"
    if not holder:
        return "holder unknown"
    return f"{holder.get('what')} on {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"
