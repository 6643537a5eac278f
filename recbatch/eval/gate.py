"""The publish gate: a new run may not go live if it is clearly worse than the live one.

Offline metrics are the only check that stands between a broken model (bad
data, a training bug, a mis-tokenised catalog) and every user's homepage. So
the nightly run compares the new run's ``eval.gate_metric`` on the fixed
holdout slice with the ``metrics`` recorded in the last published run's
manifest, and refuses to publish when it dropped by more than
``eval.gate_tolerance`` (relative). Refusing leaves the previous run live.

An operator who knows better (e.g. an intended catalog change) passes
``force=True``; the result then records ``forced: true``, which goes into the
published manifest so the override stays visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from recbatch.config import EvalConfig
from recbatch.errors import QualityGateError


@dataclass(frozen=True)
class GateResult:
    """What the gate decided and why; ``asdict`` of it goes into the run manifest."""

    passed: bool  # the metric held up (or there was nothing to compare with)
    forced: bool  # ``force`` was given: publish regardless of `passed`
    metric: str
    value: float | None  # the new run's value
    baseline_value: float | None  # the last published run's value
    baseline_run: str | None  # that run's run_date (or model_version)
    relative_change: float | None  # (value - baseline) / baseline
    tolerance: float
    reason: str

    @property
    def publish(self) -> bool:
        return self.passed or self.forced

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)


def check_gate(
    new_metrics: dict[str, Any],
    last_manifest: dict[str, Any] | None,
    cfg: EvalConfig,
    force: bool = False,
) -> GateResult:
    """Compare the new run with the last published one; raise QualityGateError on regression.

    Passes when the gate is disabled, on the first run (no previous manifest)
    and when the previous run recorded no value for the metric. Raises when
    the metric dropped by more than ``cfg.gate_tolerance`` relative to the
    previous value, unless `force` is true.
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
    if last_manifest is None:
        return GateResult(passed=True, baseline_value=None, baseline_run=None,
                          relative_change=None, reason="first run: nothing published to compare with", **base)

    baseline_run = last_manifest.get("run_date") or last_manifest.get("model_version")
    previous = (last_manifest.get("metrics") or {}).get(metric)
    if previous is None:
        return GateResult(passed=True, baseline_value=None, baseline_run=baseline_run, relative_change=None,
                          reason=f"the last published run ({baseline_run}) recorded no '{metric}'", **base)

    previous = float(previous)
    change = (value - previous) / previous if previous > 0 else 0.0
    passed = change >= -cfg.gate_tolerance
    verdict = "within" if passed else "beyond"
    reason = (
        f"{metric} {value:.4f} vs {previous:.4f} in the last published run ({baseline_run}): "
        f"{change:+.1%}, {verdict} the allowed drop of {cfg.gate_tolerance:.1%}"
    )
    if force and not passed:
        reason += "; published anyway because of --force"
    result = GateResult(passed=passed, baseline_value=previous, baseline_run=baseline_run,
                        relative_change=change, reason=reason, **base)
    if not result.publish:
        raise QualityGateError(
            f"quality gate refused to publish: {reason}. The previous run stays live; "
            "rerun with --force to publish anyway."
        )
    return result
