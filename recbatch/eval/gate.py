"""The publish gate: a new run may not go live if it is clearly worse than the live one,
or worse than recommending the most popular items to everyone.

Offline metrics are the only check that stands between a broken model (bad
data, a training bug, a mis-tokenised catalog) and every user's homepage. So
the nightly run checks the new run's ``eval.gate_metric`` on the fixed
holdout slice twice:

* the **floor**: the popularity baseline on the same holdout users
  (``eval.holdout.evaluate_baseline``, ``FLOOR_BASELINE``). A model that does
  not beat counting is broken, whether or not anything was published before,
  so this guards the first run too;
* the **last published run**: refuse when the metric dropped by more than
  ``eval.gate_tolerance`` (relative) against the ``metrics`` recorded in its
  manifest.

Both need enough users to mean anything: with fewer than
``eval.min_holdout_users`` in the holdout (a window, ``split.holdout_days``,
too short for the catalog's traffic) the gate refuses rather than decide on noise.

Refusing leaves the previous run live (or nothing, on a first run). An
operator who knows better (e.g. an intended catalog change) passes
``force=True``; the result then records ``forced: true``, which goes into the
published manifest so the override stays visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from recbatch.config import EvalConfig
from recbatch.errors import QualityGateError

if TYPE_CHECKING:
    from recbatch.layout import RootLocations

FLOOR_BASELINE = "most_popular"  # the model must do at least as well as this on the same users


@dataclass(frozen=True)
class GateResult:
    """What the gate decided and why; ``asdict`` of it goes into the run manifest."""

    passed: bool  # the metric held up against the last run and the floor (or there was nothing to check)
    forced: bool  # ``force`` was given: publish regardless of `passed`
    metric: str
    value: float | None  # the new run's value
    baseline_value: float | None  # the last published run's value
    baseline_run: str | None  # that run's run_date (or model_version)
    relative_change: float | None  # (value - baseline) / baseline
    tolerance: float
    reason: str
    floor_model: str | None = None  # the baseline the model must not fall below
    floor_value: float | None = None  # its value on the same holdout users
    floor_ratio: float | None = None  # value / floor_value

    @property
    def publish(self) -> bool:
        return self.passed or self.forced

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)


def last_published_manifest(root: RootLocations, tonight: str) -> dict[str, Any] | None:
    """The manifest of the run the gate compares with: the newest run published under `root` other
    than `tonight` (a rerun's own date folder), read through its marker on either kind of root."""
    from recbatch import folders

    previous = [run for run in root.published_runs() if run.name != tonight]
    return folders.read_manifest(previous[-1]) if previous else None


def check_gate(
    new_metrics: dict[str, Any],
    last_manifest: dict[str, Any] | None,
    cfg: EvalConfig,
    force: bool = False,
    floor_metrics: dict[str, Any] | None = None,
    floor_model: str = FLOOR_BASELINE,
) -> GateResult:
    """Check the new run against the floor and the last published run; raise QualityGateError on failure.

    `floor_metrics` are `floor_model`'s metrics on the same holdout users (None:
    no floor). Passes when the gate is disabled. Otherwise fails when the metric
    is below the floor's, or dropped by more than ``cfg.gate_tolerance``
    relative to the last published run (none, or one without the metric:
    nothing to compare). Raises unless `force` is true.
    """
    metric = cfg.gate_metric
    if metric not in new_metrics:
        raise QualityGateError(
            f"quality gate: the new run has no metric '{metric}' (eval.gate_metric); "
            f"it has {sorted(new_metrics)[:8]}"
        )
    value = float(new_metrics[metric])
    base = dict(metric=metric, value=value, tolerance=cfg.gate_tolerance, forced=force)
    if not cfg.gate_enabled:
        return GateResult(passed=True, baseline_value=None, baseline_run=None,
                          relative_change=None, reason="gate disabled (eval.gate_enabled=false)", **base)

    floor: dict[str, Any] = {}
    checks: list[tuple[bool, str]] = []  # (held, why) per check
    users = new_metrics.get("holdout_users")
    if users is not None and users < cfg.min_holdout_users:
        checks.append((False, f"the holdout holds {int(users)} users, fewer than eval.min_holdout_users="
                              f"{cfg.min_holdout_users}: too few to judge the model on; widen the evaluation "
                              "window (split.holdout_days)"))
    if floor_metrics is not None:
        floor_value = float(floor_metrics[metric])
        ratio = value / floor_value if floor_value > 0 else None
        floor = dict(floor_model=floor_model, floor_value=floor_value, floor_ratio=ratio)
        held = value >= floor_value
        times = f" ({ratio:.2f}x)" if ratio is not None else ""
        checks.append((held, f"{metric} {value:.4f} is {'at or above' if held else 'below'} the {floor_model} "
                             f"baseline's {floor_value:.4f} on the same holdout users{times}"))

    baseline_run = previous = change = None
    if last_manifest is None:
        checks.append((True, "first run: nothing published to compare with"))
    else:
        baseline_run = last_manifest.get("run_date") or last_manifest.get("model_version")
        previous = (last_manifest.get("metrics") or {}).get(metric)
        if previous is None:
            checks.append((True, f"the last published run ({baseline_run}) recorded no '{metric}'"))
        else:
            previous = float(previous)
            change = (value - previous) / previous if previous > 0 else 0.0
            held = change >= -cfg.gate_tolerance
            checks.append((held, f"{metric} {value:.4f} vs {previous:.4f} in the last published run "
                                 f"({baseline_run}): {change:+.1%}, {'within' if held else 'beyond'} "
                                 f"the allowed drop of {cfg.gate_tolerance:.1%}"))

    passed = all(held for held, _ in checks)
    # A refusal names the failed checks first: that is what the operator has to act on.
    reason = "; ".join(why for _, why in sorted(checks, key=lambda c: c[0]))
    if force and not passed:
        reason += "; published anyway because of --force"
    result = GateResult(passed=passed, baseline_value=previous, baseline_run=baseline_run,
                        relative_change=change, reason=reason, **base, **floor)
    if not result.publish:
        raise QualityGateError(
            f"quality gate refused to publish: {reason}. The previous run (if any) stays live; "
            "rerun with --force to publish anyway."
        )
    return result
