"""Errors that end a run with a clear message and a documented exit code.

The CLI turns each into one paragraph on stderr and the exit code below, so
the on-call person can tell from the code alone which kind of failure it was.
"""

from __future__ import annotations


class RecbatchError(Exception):
    """Base class: a failure we expected and can explain."""

    exit_code = 1


class UsageError(RecbatchError):
    """Wrong flags or configuration; nothing was run."""

    exit_code = 2


class DataValidationError(RecbatchError):
    """Input data broke its contract (file, column, count of bad rows, examples)."""

    exit_code = 3


class QualityGateError(RecbatchError):
    """The new run's metrics regressed beyond tolerance; nothing was published."""

    exit_code = 4


class IntegrityError(RecbatchError):
    """A published folder does not match its manifest, or is incomplete."""

    exit_code = 5


class ServingStoreError(RecbatchError):
    """The serving store (Redis) refused, failed or could not be reached."""

    exit_code = 6


class StageFailed(RecbatchError):
    """A nightly stage failed; the message names the stage.

    Exit code: the cause's own code when the cause is a ``RecbatchError`` (bad data 3,
    a refused gate 4, ...), else 7 (docs/ARCHITECTURE.md, the errors row).
    """

    exit_code = 7

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:  # the cause's code: bad data in ingest stays 3, a refused gate 4
            self.exit_code = exit_code


class RootBusy(RecbatchError):
    """Another run holds the root's lease; nothing was run."""

    exit_code = 8


class StorageAccessError(RecbatchError):
    """The storage behind a root (an object-store bucket) refused access or could not be reached; nothing was published."""

    exit_code = 9


EXIT_CODES = {
    0: "success",
    1: "unexpected error (a bug or an unhandled failure: see the traceback)",
    2: UsageError.__doc__,
    3: DataValidationError.__doc__,
    4: QualityGateError.__doc__,
    5: IntegrityError.__doc__,
    6: ServingStoreError.__doc__,
    7: StageFailed.__doc__,
    8: RootBusy.__doc__,
    9: StorageAccessError.__doc__,
}
