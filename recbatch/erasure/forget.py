"""One erasure request, start to finish (``recbatch forget --users FILE``).

    read + check ids -> log the request -> suppression list (the next ingest leaves them out)
      -> rewrite every output holding them -> delete staging/retired copies and training runs holding them
      -> mark models trained on them -> delete their keys from every Redis version -> log what was done

The request is logged (``erasure/requests/<id>.json``, status ``recorded``)
and the suppression list updated before anything is rewritten, so a request
interrupted half-way is still honoured by the next ingest, and running it
again finishes it (every step skips what holds no erased row). The log keeps
what was done and when, and never the ids.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from pathlib import Path
from typing import Any

from recbatch.config import Config
from recbatch.erasure.ids import read_user_ids, reference_id_type
from recbatch.erasure.models import mark_models, remove_training_runs
from recbatch.erasure.rewrite import output_folders, remove_copies_holding, rewrite_folder
from recbatch.erasure.suppression import add_to_suppression_list
from recbatch.fs import Location, write_bytes
from recbatch.layout import RunLayout

log = logging.getLogger(__name__)


def new_request_id() -> str:
    """``YYYYMMDDTHHMMSSZ-<6 hex>``: sorts by time, unique per request."""
    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def forget(cfg: Config, users_file: str | Path) -> dict[str, Any]:
    """Apply an erasure request to everything under ``cfg.root`` and in Redis; returns its log entry."""
    layout = RunLayout.of(cfg.root, cfg.storage)
    at = layout.at
    ids = read_user_ids(users_file, reference_id_type(layout))  # refuses a bad file before any change
    request_id = new_request_id()
    record: dict[str, Any] = {
        "request_id": request_id,
        "requested_at": _now(),
        "status": "recorded",
        "source_file": Path(users_file).name,
        "users_requested": len(ids),
    }
    _write_record(layout, record)
    record["suppression_list"] = {
        "path": _relative(layout, at.suppression_list),
        "users_added": add_to_suppression_list(layout, ids, request_id, cfg.storage),
    }

    rewritten = [r for folder in output_folders(at.root, skip=(at.erasure, at.checkpoints))
                 if (r := rewrite_folder(folder, ids, request_id)) is not None]
    erased_snapshots = {r.manifest["snapshot_hash"] for r in rewritten if isinstance(r.manifest.get("counts"), dict)}
    record["rewritten"] = [
        {"folder": _relative(layout, r.folder), "rows_removed": r.rows_removed,
         "files": sorted(r.manifest["files"])}
        for r in rewritten
    ]
    record["copies_removed"] = [_relative(layout, p) for p in remove_copies_holding(at.root, ids)]
    record["training_runs_removed"] = [_relative(layout, p) for p in remove_training_runs(layout, erased_snapshots)]
    record["models_marked"] = mark_models(layout, erased_snapshots, request_id)
    record["redis"] = _erase_from_serving(cfg, ids.to_pylist())
    record.update(status="applied", applied_at=_now())
    _write_record(layout, record)
    log.info("erasure request %s applied: %d folders rewritten, %d models marked",
             request_id, len(rewritten), len(record["models_marked"]))
    return record


def _erase_from_serving(cfg: Config, user_ids: list) -> dict[str, Any]:
    if not (cfg.serving.redis_url or cfg.serving.redis_url_env):
        return {"skipped": "no serving.redis_url configured"}
    from recbatch.serving.connection import connect, describe, store_errors
    from recbatch.serving.erase import erase_users
    from recbatch.serving.keys import KeyLayout

    client = connect(cfg.serving)
    with store_errors(describe(client), "erasing users"):
        deleted = erase_users(client, KeyLayout(cfg.serving.key_prefix), user_ids)
    return {"store": describe(client), "key_prefix": cfg.serving.key_prefix, "keys_deleted": deleted}


def _write_record(layout: RunLayout, record: dict[str, Any]) -> None:
    write_bytes(layout.at.erasure_request(record["request_id"]), json.dumps(record, indent=2, default=str).encode())


def _relative(layout: RunLayout, location: Location) -> str:
    return location.path[len(layout.at.root.path) + 1 :]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
