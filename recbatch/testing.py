"""Test-only fault hooks: never part of the product config.

Like Ray's ``RAY_testing_*`` flags, each hook is one environment variable, read
here and nowhere else, so a production config cannot switch it on by accident
and no config key exists only for tests. The driver reads a hook and hands its
value to the code that acts on it as a plain argument (e.g. ``LoopConfig``), so
workers never read the environment themselves.
"""

from __future__ import annotations

import os

from recbatch.errors import UsageError

# One training worker (the last rank) exits once at this optimizer step, as a
# crashed worker would; Ray Train must restart the group from the last checkpoint.
FAIL_AT_STEP = "RECBATCH_TESTING_FAIL_AT_STEP"
# Ray Train controller polls the dying worker waits out first, so the controller has
# registered the last reported checkpoint and the restart resumes from it, as after a
# real crash (which comes long after a checkpoint).
FAULT_WAIT_POLLS = 8


def fail_at_step() -> int | None:
    """The step at which a training worker is made to die (``RECBATCH_TESTING_FAIL_AT_STEP``), else None."""
    value = os.environ.get(FAIL_AT_STEP, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{FAIL_AT_STEP} = {value!r} must be a step number >= 1")
    return int(value)


def fault_wait_s() -> float:
    """Seconds the dying worker waits: ``FAULT_WAIT_POLLS`` of Ray Train's poll interval, read as Ray
    reads it (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: 2 s by default, 0.25 s in the tests' conftest)."""
    from ray.train.v2._internal.constants import DEFAULT_HEALTH_CHECK_INTERVAL_S, HEALTH_CHECK_INTERVAL_S_ENV_VAR

    return FAULT_WAIT_POLLS * float(os.environ.get(HEALTH_CHECK_INTERVAL_S_ENV_VAR, DEFAULT_HEALTH_CHECK_INTERVAL_S))
