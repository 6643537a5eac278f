"""Building blocks for the operations tests: reading what a Pushgateway holds, and a root of
older nights (published runs, a model with its embeddings) written by the real writers.

The folders go through ``storage.write_manifest`` and ``publish.publish_run`` exactly like
production output, so retention reads them as it would read a real root.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path


def sample_series(samples, name: str, **labels: str) -> list:
    """The samples of metric `name` whose labels include `labels` (from ``Pushgateway.samples()``)."""
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def sample_value(samples, name: str, **labels: str) -> float:
    """The value of the one sample of `name` with `labels`; fails if there is none or several."""
    (sample,) = sample_series(samples, name, **labels)
    return sample.value


def complete_folder(path: Path, fields: dict, payload: int, mtime: float | None = None) -> Path:
    """A complete output folder: a data file of `payload` bytes, a real manifest and _SUCCESS."""
    from recbatch.storage import write_manifest

    path.mkdir(parents=True)
    (path / "data.bin").write_bytes(b"x" * payload)
    write_manifest(path, fields)
    if mtime is not None:
        age(path, mtime)
    return path


def age(folder: Path, mtime: float) -> None:
    """Set every entry of `folder` (and itself) to `mtime`, as if written then."""
    import os

    for p in [*folder.rglob("*"), folder]:
        os.utime(p, (mtime, mtime))


def _recs(users: range, model_version: str):
    import pyarrow as pa

    return pa.table({
        "user_id": pa.array(list(users), pa.int64()),
        "item_ids": pa.array([[u % 7, u % 7 + 1] for u in users], pa.list_(pa.int64())),
        "scores": pa.array([[0.9, 0.5] for _ in users], pa.list_(pa.float32())),
        "model_version": pa.array([model_version] * len(users)),
    })


def publish_night(layout, run_date: str, model_version: str, snapshot_hash: str) -> Path:
    """A published run for a date, written and published by the real writer and publish step."""
    from recbatch.publish import publish_run
    from recbatch.score.writer import write_recommendations

    staged = layout.staged_for(run_date)
    write_recommendations([_recs(range(20), model_version)], staged, id_type="int", rows_per_file=10,
                          manifest_fields={"run_date": run_date, "model_version": model_version,
                                           "snapshot_hash": snapshot_hash, "k": 2})
    return publish_run(staged, layout.recommendations_for(run_date), {"metrics": {}, "gate": {"passed": True}})


def snapshot_hash(night: int) -> str:
    """A made-up snapshot hash for night `night`, distinct per night."""
    return f"{night:02d}" * 8


def fake_model(layout, version: str, snapshot_hash: str, train_run: Path, mtime: float) -> None:
    """A model artifact folder as train() leaves it: card naming its training run, manifest, _SUCCESS."""
    from recbatch.storage import write_manifest

    model = layout.model(version)
    model.mkdir(parents=True)
    (model / "towers.pt").write_bytes(b"w" * 300)
    created = dt.datetime.fromtimestamp(mtime, dt.timezone.utc).isoformat()  # what the cadence reads
    card = {"model_version": version, "train_run": str(train_run), "created_at": created}
    (model / "model_card.json").write_text(json.dumps(card))
    write_manifest(model, {"kind": "model", "model_version": version, "snapshot_hash": snapshot_hash})
    age(model, mtime)
    for kind in ("items", "users"):
        complete_folder(layout.embeddings(version, kind), {"kind": kind, "model_version": version}, 200)
