"""The retraining cadence, decided from run dates only (never the wall clock)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from recbatch.pipeline import train_due, trained_for

RUN_DATE = dt.date(2026, 11, 28)


def days_before(n: int) -> dt.date:
    return RUN_DATE - dt.timedelta(days=n)


@pytest.mark.parametrize(
    "cadence,trained,due",
    [
        ("weekly", days_before(0), False),  # a rerun of the night that trained
        ("weekly", days_before(6), False),
        ("weekly", days_before(7), True),  # a week to the day
        ("weekly", days_before(30), True),
        ("weekly", RUN_DATE + dt.timedelta(days=3), False),  # a backfill before the model's date reuses it
        ("always", days_before(0), True),
        ("never", days_before(400), False),
        ("weekly", None, True),  # no model yet: every cadence trains
        ("never", None, True),
    ],
)
def test_cadence_counts_run_dates(cadence, trained, due):
    decided, reason = train_due(cadence, trained, RUN_DATE, force=False)
    assert decided is due
    assert (cadence in reason) if trained is not None else ("no model" in reason)


def test_train_flag_overrides_every_cadence():
    for cadence in ("weekly", "always", "never"):
        assert train_due(cadence, days_before(0), RUN_DATE, force=True) == (True, "--train given")


def test_trained_for_reads_the_model_card_run_date_else_its_creation_day(tmp_path, tiny_bert_dir):
    """A hand-trained model (no ``trained_for``) counts from the day its card was written."""
    from recbatch.config import Config
    from recbatch.model.artifact import CARD_FILE, init_artifact
    from recbatch.storage import write_manifest

    cfg = Config().with_overrides({"model.embedding_dim": 8, "model.history_length": 4})
    model = init_artifact(cfg, str(tiny_bert_dir), None, tmp_path / "models")
    card = json.loads((model / CARD_FILE).read_text())
    assert trained_for(model) == dt.date.fromisoformat(card["created_at"][:10])

    card["trained_for"] = "2026-11-20"
    (model / CARD_FILE).write_text(json.dumps(card))
    write_manifest(model, {"kind": "model", "model_version": card["model_version"]})  # the card is checksummed
    assert trained_for(model) == dt.date(2026, 11, 20)
