"""Where a root lives: a local folder or an object-store prefix, as one pyarrow filesystem and a path.

A root (and any path under it) is spelled either as a local path or as
``s3://bucket/prefix`` / ``gs://bucket/prefix``. ``locate`` turns that text into a
``Location``: a ``pyarrow.fs`` filesystem plus the path inside it, the same layer
Ray Data's readers and writers and Ray Train's ``storage_path`` use, so a stage
hands one value to all of them.

Endpoint, region and scheme come from ``cfg.storage`` (``StorageConfig``).
Credentials never do: pyarrow and boto3 find them in their default chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_PROFILE`` and ``~/.aws``, an instance or pod role). Nothing here is given a
key, so no filesystem pickled to a Ray worker, no manifest and no log line can
carry one; each process resolves its own.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.fs as pafs

from recbatch.config import StorageConfig
from recbatch.errors import StorageAccessError, UsageError

OBJECT_STORE_SCHEMES = ("s3", "gs")


@dataclass(frozen=True)
class Location:
    """A folder or file: the filesystem that holds it and its path inside that filesystem.

    `path` is absolute on the local filesystem and ``bucket/key...`` on an
    object store (pyarrow's own convention), never with a trailing slash.
    """

    filesystem: pafs.FileSystem
    path: str
    scheme: str  # "file", "s3" or "gs"

    @property
    def uri(self) -> str:
        """The text a person writes for it: a local path or ``s3://bucket/key``."""
        return self.path if self.scheme == "file" else f"{self.scheme}://{self.path}"

    @property
    def is_object_store(self) -> bool:
        return self.scheme in OBJECT_STORE_SCHEMES

    @property
    def bucket(self) -> str:
        """The bucket of an object-store location (what an access error names)."""
        if not self.is_object_store:
            raise ValueError(f"{self.uri} is a local path: it has no bucket")
        return self.path.split("/", 1)[0]

    @property
    def key(self) -> str:
        """The object key inside the bucket ("" for the bucket itself)."""
        return self.path.split("/", 1)[1] if "/" in self.path else ""

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> "Location":
        return Location(self.filesystem, posixpath.dirname(self.path), self.scheme)

    def join(self, *names: str) -> "Location":
        return Location(self.filesystem, posixpath.join(self.path, *names), self.scheme)

    def __str__(self) -> str:
        return self.uri


def is_object_store_uri(path: str | os.PathLike[str]) -> bool:
    """True for ``s3://...`` and ``gs://...``: a root that `locate` puts on an object store."""
    scheme, sep, _ = os.fspath(path).partition("://")
    return bool(sep) and scheme in OBJECT_STORE_SCHEMES


def locate(path: str | os.PathLike[str], storage: StorageConfig) -> Location:
    """Resolve a local path or an ``s3://``/``gs://`` URI; raises UsageError for any other scheme."""
    text = os.fspath(path)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme == "file":
        return local(rest if sep else text)
    if scheme not in OBJECT_STORE_SCHEMES:
        raise UsageError(f"{text}: unsupported storage scheme '{scheme}://'; use a local path, s3:// or gs://")
    rest = rest.strip("/")
    if not rest:
        raise UsageError(f"{text}: names no bucket")
    return Location(object_store(scheme, storage), rest, scheme)


def local(path: str | os.PathLike[str]) -> Location:
    """A local path as a Location (made absolute: Ray workers run in other directories)."""
    return Location(pafs.LocalFileSystem(), str(Path(path).expanduser().absolute()), "file")


def as_location(path: "str | os.PathLike[str] | Location") -> Location:
    """`path` as a Location: a Location as it is, any other path as a local one (``local``)."""
    return path if isinstance(path, Location) else local(path)


def object_store(scheme: str, storage: StorageConfig) -> pafs.FileSystem:
    """The pyarrow filesystem for `scheme` as `storage` configures it; credentials from the default chain.

    Buckets are never created here (``allow_bucket_creation`` stays off): a bucket
    is infrastructure, and a typo in a root must fail, naming the bucket, not make one.
    """
    if scheme == "s3":
        return pafs.S3FileSystem(region=storage.region, scheme=storage.scheme, endpoint_override=storage.endpoint)
    if scheme == "gs":
        return pafs.GcsFileSystem(scheme=storage.scheme, endpoint_override=storage.endpoint)
    raise UsageError(f"unsupported storage scheme '{scheme}://'")


def s3_client(storage: StorageConfig) -> Any:
    """A boto3 S3 client for the same endpoint, for what pyarrow cannot do (conditional writes).

    boto3 resolves credentials through the same default chain as pyarrow, in a
    session of its own: boto3's shared default session would keep the
    credentials it found first for the life of the process.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    endpoint = f"{storage.scheme}://{storage.endpoint}" if storage.endpoint else None
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=storage.region,
        # A few quick retries: a lease call that hangs for minutes is worse than a clear failure.
        config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=30),
    )


@contextlib.contextmanager
def access(location: Location, doing: str) -> Iterator[None]:
    """Turn an object store's refusal (credentials, permissions, unreachable) into StorageAccessError.

    The message names the bucket and what was being done; it is built from the
    store's own error text, which never contains the secret key. A missing object
    (FileNotFoundError) passes through: callers decide what absence means.
    Local paths are left alone: their OSErrors already name the path.
    """
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not location.is_object_store:
            raise
        raise StorageAccessError(
            f"{location.uri}: could not {doing} in bucket '{location.bucket}': {str(exc).strip()}"
        ) from exc


def make_parent(location: Location) -> None:
    """Create the local folder `location` goes in; object stores have no folders to make."""
    if not location.is_object_store:
        location.filesystem.create_dir(location.parent.path, recursive=True)


def is_file(location: Location) -> bool:
    """Whether a file (an object) is at `location`."""
    with access(location, f"look up {location.key if location.is_object_store else location.path}"):
        return location.filesystem.get_file_info(location.path).type == pafs.FileType.File


def list_files(folder: Location, prefix: str = "") -> list[Location]:
    """The files directly in `folder` whose names start with `prefix`, by name; none when it is absent.

    For a writer's own scratch files only: a published folder is read through
    its manifest (recbatch/folders.py), never listed.
    """
    return _listed(folder, prefix, pafs.FileType.File)


def _listed(folder: Location, prefix: str, kind: pafs.FileType) -> list[Location]:
    """The entries of `kind` directly in `folder` whose names start with `prefix`, by name."""
    selector = pafs.FileSelector(folder.path, recursive=False, allow_not_found=True)
    with access(folder, "list"):
        infos = folder.filesystem.get_file_info(selector)
    names = sorted(i.base_name for i in infos if i.type == kind and i.base_name.startswith(prefix))
    return [folder.join(name) for name in names]


def remove_file(location: Location) -> None:
    """Delete the file (object) at `location`, if it is there (a writer's own scratch)."""
    _remove(location, location.filesystem.delete_file)


def list_folders(folder: Location, prefix: str = "") -> list[Location]:
    """The folders (object-store prefixes) directly in `folder` whose names start with `prefix`, by name.

    For outputs that are not published folders (Ray Train's run folders): a
    published folder is found through its marker (recbatch/folders.py), never listed.
    """
    return _listed(folder, prefix, pafs.FileType.Directory)


def remove_tree(location: Location) -> None:
    """Delete `location` and everything under it, if it is there (scratch nobody will publish)."""
    _remove(location, location.filesystem.delete_dir)


def _remove(location: Location, delete: Callable[[str], None]) -> None:
    with access(location, f"delete {location.key if location.is_object_store else location.path}"):
        try:
            delete(location.path)
        except FileNotFoundError:
            pass


def check_access(location: Location) -> None:
    """Fail early, naming the bucket, when an object-store root's bucket is missing or refuses us."""
    if not location.is_object_store:
        return
    with access(location, "look up the bucket"):
        info = location.filesystem.get_file_info(location.bucket)
    if info.type == pafs.FileType.NotFound:
        raise StorageAccessError(
            f"{location.uri}: bucket '{location.bucket}' does not exist (recbatch never creates one)"
        )


def read_bytes(location: Location) -> bytes:
    """The whole file (object) at `location` (FileNotFoundError when absent)."""
    with access(location, f"read {location.key if location.is_object_store else location.path}"):
        with location.filesystem.open_input_stream(location.path) as f:
            return f.read()


def write_bytes(location: Location, data: bytes) -> None:
    """Write one small file whole: an object PUT on a store; a temporary file renamed into place locally,
    so a reader never sees half of it either way."""
    make_parent(location)
    if location.is_object_store:
        with access(location, f"write {location.key}"), location.filesystem.open_output_stream(location.path) as out:
            out.write(data)
        return
    temporary = f"{location.path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as out:
        out.write(data)
    os.replace(temporary, location.path)


def write_new(location: Location, data: bytes, storage: StorageConfig) -> bool:
    """Write a small file only if nothing is at `location` yet; False when something was (then nothing is written).

    Of any number of processes racing to create it, exactly one writes: locally
    ``O_EXCL`` (owner-only permissions: it is for secrets such as a key), on S3 a
    conditional PUT (``If-None-Match: *``, as the root's lease uses).
    """
    if not location.is_object_store:
        make_parent(location)
        try:
            fd = os.open(location.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return True
    if location.scheme != "s3":
        raise UsageError(f"{location.uri}: creating a file exactly once is not implemented on {location.scheme}://")
    import botocore.exceptions

    try:
        s3_client(storage).put_object(Bucket=location.bucket, Key=location.key, Body=data, IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return False
        raise StorageAccessError(f"{location.uri}: could not write in bucket '{location.bucket}': {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:  # no credentials, endpoint unreachable
        raise StorageAccessError(f"{location.uri}: could not write in bucket '{location.bucket}': {exc}") from exc
    return True
