"""One nightly run per root at a time: a lease on the root.

A nightly owns its root while it runs: it clears staging leftovers of killed
runs and republishes folders, so a second run on the same root (a manual rerun
started during the scheduled one) would delete the first one's work in progress
or interleave its publishes. The second run is refused before any work.

On a POSIX root the lease is an exclusive ``flock`` on ``<root>/_nightly.lease``
held for the whole run: the kernel releases it the moment its holder exits,
however it dies (also ``kill -9``), so a dead holder never blocks the next
night. The file itself only describes the holder, for the refusal message.

An object store has no locks and no process to watch, so on an ``s3://`` root
the lease is the object ``<root>/_nightly.lease``, created with a conditional
write (``If-None-Match: *``: exactly one of any number of racing writers
succeeds) and naming its holder. Its holder renews it (a conditional rewrite,
``If-Match`` its last ETag) every ``ttl / RENEWALS_PER_TTL`` seconds; one not
renewed for ``ttl`` seconds by the store's own clock (its ``Last-Modified``
against the ``Date`` of the reply, so no two machines' clocks are compared)
belongs to a dead holder and is taken over, again with ``If-Match``, so of two
runs that both found it expired one wins. A holder whose renewal finds another
run's lease has lost the root: ``check()`` (and leaving the ``with`` block)
raises instead of letting two runs interleave.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import fcntl
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

from recbatch.config import StorageConfig
from recbatch.errors import RootBusy, StorageAccessError, UsageError
from recbatch.fs import Location, locate, s3_client

log = logging.getLogger(__name__)

LEASE_FILE = "_nightly.lease"

# An object-store lease not renewed for this long belongs to a dead holder (kill -9, a lost node) and is
# taken over: the longest a dead run blocks the next one. Minutes, because a live holder must get a
# renewal through within it even when the store is slow.
LEASE_TTL_SECONDS = 120.0
# The holder renews this many times per TTL: a few renewals may fail (a network blip) before it lapses.
RENEWALS_PER_TTL = 4
# Stores stamp Last-Modified and Date to the second: a lease counts as expired only this much after
# its TTL, so truncation never makes a live lease look dead.
CLOCK_RESOLUTION_SECONDS = 1.0
# Rounds of create / read / take over when other runs race for the same lease; each round one of them wins.
ACQUIRE_ROUNDS = 3


def root_lease(root: str | Path, storage: StorageConfig, description: str) -> "RootLease | ObjectStoreLease":
    """The lease for `root`, whichever kind of root it is; use it as ``with root_lease(...):``."""
    where = locate(root, storage)
    if where.scheme == "s3":
        return ObjectStoreLease(where, storage, description)
    if where.is_object_store:
        raise UsageError(
            f"{where.uri}: a lease on {where.scheme}:// roots is not implemented (it needs the store's "
            "conditional create, e.g. GCS ifGenerationMatch=0); use a local or s3:// root"
        )
    return RootLease(where.path, description)


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
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(self.description)).encode(), 0)
        self._fd = fd
        return self

    def check(self) -> None:
        """Nothing to check: the kernel cannot take a held flock away."""

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # releases the flock
            self._fd = None


def _holder(description: str) -> dict[str, Any]:
    """Who holds a lease, for the message that refuses the next run."""
    return {
        "what": description,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        return "holder unknown"
    if not holder:
        return "holder unknown"
    return f"{holder.get('what')} on {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"


def _read_holder(fd: int) -> str:
    return _describe(os.pread(fd, 4096, 0))


class ObjectStoreLease:
    """The lease on an ``s3://`` root (see the module doc); held inside a ``with`` block.

    `ttl_seconds` is a parameter rather than config so that callers other than
    the nightly (and tests) can hold short leases; the nightly uses the default.
    """

    def __init__(
        self, root: Location, storage: StorageConfig, description: str, ttl_seconds: float = LEASE_TTL_SECONDS
    ) -> None:
        self.location = root.join(LEASE_FILE)
        self.storage = storage
        self.description = description
        self.ttl_seconds = ttl_seconds
        self.renewals = 0  # successful renewals so far
        self._client: Any = None
        self._etag: str | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> "ObjectStoreLease":
        self._client = s3_client(self.storage)
        body = json.dumps({**_holder(self.description), "ttl_seconds": self.ttl_seconds}).encode()
        for _ in range(ACQUIRE_ROUNDS):
            etag = self._put(body, IfNoneMatch="*")
            if etag is not None:
                break
            current = self._read()
            if current is None:
                continue  # released between our write and our read
            holder, current_etag, idle, ttl = current
            if idle < ttl + CLOCK_RESOLUTION_SECONDS:
                raise RootBusy(
                    f"root {self.location.parent.uri} is in use by another run ({_describe(holder)}); two runs on "
                    f"one root would interleave. Wait for it to finish, or stop it: its lease ({self.location.uri}) "
                    f"lapses {ttl:.0f} s after its last renewal ({idle:.0f} s ago) once its process is gone."
                )
            etag = self._put(body, IfMatch=current_etag)
            if etag is not None:
                log.warning("took over the lease %s of a run that stopped renewing it %.0f s ago (%s)",
                            self.location.uri, idle, _describe(holder))
                break
        else:
            raise RootBusy(f"root {self.location.parent.uri}: other runs keep taking its lease; try again")
        self._etag = etag
        self._renewer = threading.Thread(target=self._renew, args=(body,), name="lease-renewal", daemon=True)
        self._renewer.start()
        return self

    def check(self) -> None:
        """Raise RootBusy if another run took the lease over (this run failed to renew it in time)."""
        if self._lost is not None:
            raise RootBusy(self._lost)

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        # Release only if it is still ours (If-Match): never delete a successor's lease.
        try:
            if self._etag is not None and self._call("delete_object", IfMatch=self._etag) is None:
                self._lose("before this run released it")
        except StorageAccessError as exc:  # the run's work is done; an unreleased lease lapses on its own
            log.warning("could not release the lease %s (it lapses %.0f s after its last renewal): %s",
                        self.location.uri, self.ttl_seconds, exc)
        self._etag = None
        if exc_type is None:
            self.check()

    def _lose(self, when: str) -> None:
        if self._lost is None:
            self._lost = (
                f"root {self.location.parent.uri}: this run's lease ({self.location.uri}) was taken over by "
                f"another run {when} (it went unrenewed past its {self.ttl_seconds:.0f} s); stopped so the two "
                "do not interleave"
            )
            log.error("%s", self._lost)

    def _renew(self, body: bytes) -> None:
        every = self.ttl_seconds / RENEWALS_PER_TTL
        while not self._stop.wait(every):
            try:
                etag = self._put(body, IfMatch=self._etag)
            except StorageAccessError as exc:  # the next tick tries again, until the lease lapses
                log.warning("could not renew the lease %s: %s", self.location.uri, exc)
                continue
            if etag is None:
                self._lose("while it ran")
                return
            self._etag = etag
            self.renewals += 1

    # ------------------------------------------------------------------ conditional requests

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any] | None:
        """One S3 request; None when a precondition failed or the object is absent, else the reply."""
        import botocore.exceptions

        try:
            return getattr(self._client, operation)(Bucket=self.location.bucket, Key=self.location.key, **kwargs)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412"):
                return None
            raise StorageAccessError(
                f"{self.location.uri}: could not {operation} the lease in bucket '{self.location.bucket}': {exc}"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:  # no credentials, endpoint unreachable
            raise StorageAccessError(
                f"{self.location.uri}: could not {operation} the lease in bucket '{self.location.bucket}': {exc}"
            ) from exc

    def _put(self, body: bytes, **condition: str | None) -> str | None:
        """Write the lease if `condition` holds; its new ETag, or None when another run's lease is there."""
        reply = self._call("put_object", Body=body, **condition)
        return None if reply is None else reply["ETag"]

    def _read(self) -> tuple[bytes, str, float, float] | None:
        """The current lease: (holder, ETag, seconds since its last write by the store's clock, its TTL)."""
        reply = self._call("get_object")
        if reply is None:
            return None
        holder = reply["Body"].read()
        server_now = email.utils.parsedate_to_datetime(reply["ResponseMetadata"]["HTTPHeaders"]["date"])
        idle = (server_now - reply["LastModified"]).total_seconds()
        try:
            ttl = float(json.loads(holder)["ttl_seconds"])
        except (ValueError, KeyError, TypeError):
            ttl = LEASE_TTL_SECONDS  # unreadable: assume the default rather than steal a live lease early
        return holder, reply["ETag"], idle, ttl

