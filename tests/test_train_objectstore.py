"""``recbatch train`` on a local root and on an object-store root (``s3://``, a real S3 server: SeaweedFS).

On a local root the flags land in the published model card.

``recbatch train`` on an ``s3://`` root reads the snapshot there, prepares its
inputs and keeps Ray Train's checkpoints under the root (where every worker
reaches them), and publishes the artifact there through the object-store
protocol; the artifact loads from the store and scores as the same training on
a local root does. ``recbatch embed`` there publishes the vectors the model gives
in-process, and its rerun reuses every row (the previous embeddings read on the
store). Nothing lands in a local folder named ``s3:``. (Resuming
from a checkpoint goes through the same ``storage_path``/``storage_filesystem``;
the ZeRO tests of test_train.py cover resume itself, on a local root.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from embed_helpers import reference_embeddings
from s3_helpers import assert_refused_with_wrong_credentials, credentials_env, storage_flags

from recbatch.cli import main
from recbatch.data.snapshot import Snapshot
from recbatch.embed.store import EmbeddingsFolder, list_column_to_matrix
from recbatch.folders import publish, read_committed, staging_for, write_manifest, write_parquet_part
from recbatch.folders import verify_manifest as verify_folder
from recbatch.fs import Location
from recbatch.layout import RunLayout
from recbatch.model.artifact import load_artifact, read_model_card
from recbatch.storage import verify_manifest

# A few steps of a tiny model: the test is about where things are written, not about learning.
TRAIN = ["--workers", "1", "--max-steps", "2", "--batch-size", "8", "--epochs", "3", "--zero-stage", "1",
         "--precision", "fp32", "--gpu", "false", "--set", "model.embedding_dim=8", "--set", "model.history_length=4",
         "--set", "model.max_text_tokens=16", "--set", "train.validate_users=10"]


def _printed(out: str) -> dict:
    return json.loads(out[out.index("{"):])


def _embeddings(folder: Location, id_column: str) -> pa.Table:
    """A published embeddings folder's ids and vectors, by id."""
    return EmbeddingsFolder.open(folder).read([id_column, "embedding"]).sort_by(id_column)


def test_train_flags_reach_the_model_and_an_s3_root_gets_what_a_local_root_gets(
    tmp_path, s3_root, tiny_bert_dir, ray_with_credentials, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # where a path "s3://..." would have become a local folder "s3:"
    source, local_root = tmp_path / "source", tmp_path / "root"
    flags = [*TRAIN, "--encoder", str(tiny_bert_dir), *storage_flags(s3_root)]
    assert main(["generate", "--out", str(source), "--users", "40", "--items", "30", "--root", str(local_root)]) == 0
    for root in (str(local_root), s3_root.uri):
        assert main(["ingest", "--source", str(source), "--root", root, *storage_flags(s3_root)]) == 0
    capsys.readouterr()

    assert main(["train", "--root", str(local_root), *flags]) == 0
    here = _printed(capsys.readouterr().out)
    # on the local root: the flags land in the model card; the printed folder is a complete artifact of that version
    local_model = Path(here["model"])
    assert local_model.parent == RunLayout.of(local_root).models and local_model.name == here["model_version"]
    verify_manifest(local_model)
    local_card = json.loads((local_model / "model_card.json").read_text())
    assert here["step"] == local_card["step"] == local_card["total_steps"] == 2  # --max-steps caps --epochs
    train = local_card["config"]["train"]
    assert (train["num_workers"], train["batch_size"], train["epochs"], train["zero_stage"]) == (1, 8, 3, 1)
    assert (train["precision"], train["use_gpu"]) == ("fp32", "false")
    assert local_card["config"]["model"]["encoder"] == str(tiny_bert_dir) and "trained_for" not in local_card

    assert main(["train", "--root", s3_root.uri, *flags]) == 0
    there = _printed(capsys.readouterr().out)

    # the same seed and data: the same weights, so the same model version, published on the store
    assert there["model_version"] == here["model_version"] and there["step"] == here["step"] == 2
    model = s3_root.locate("models", there["model_version"])
    assert there["model"] == model.uri
    manifest, files_at = read_committed(model)
    assert {"encoder/config.json", "towers.pt", "model_card.json", "item_vocab.parquet"} <= set(manifest["files"])
    card = read_model_card(model)
    assert card["model_version"] == there["model_version"] and card["trained"] is True

    # it loads from the store and scores exactly as the local one
    mine, theirs = load_artifact(model), load_artifact(here["model"])
    assert mine.path == model and mine.item_index == theirs.item_index
    texts, ids = ["a quiet drama", "space opera lasers"], list(theirs.item_index)[:2]
    assert torch.equal(mine.encode_items(texts, ids), theirs.encode_items(texts, ids))

    # inputs and checkpoints are under the root on the store (every worker reads them there)
    run = card["train_run"]
    assert run.startswith(f"{s3_root.uri}/checkpoints/")
    run_keys = [k for k in s3_root.keys() if f"s3://{k}".startswith(run + "/")]
    assert any("/checkpoint_" in k and k.endswith("/state/mp_rank_00_model_states.pt") for k in run_keys), run_keys
    assert any(k.endswith("/inputs/examples/part-00000.parquet") for k in run_keys), run_keys

    # recbatch embed on the store publishes there the vectors the model gives in-process
    embed_flags = ["--actors", "1", "--batch-size", "8", *storage_flags(s3_root)]
    assert main(["embed", "--root", s3_root.uri, *embed_flags]) == 0
    snapshot = Snapshot.open(s3_root.locate("snapshots", card["snapshot_hash"]))
    for (kind, id_column), expected in zip((("items", "item_id"), ("users", "user_id")),
                                           reference_embeddings(model, snapshot)):
        folder = s3_root.locate("embeddings", there["model_version"], kind)
        verify_folder(folder)  # every file the manifest names, with the size and sha256 it records
        published = _embeddings(folder, id_column)
        assert published.column(id_column).to_pylist() == expected[id_column].to_list() and len(expected), kind
        assert published.column(id_column).type == pa.int64(), kind  # the generated ids are integers, kept so
        np.testing.assert_allclose(list_column_to_matrix(published.column("embedding")),
                                   np.asarray(expected["embedding"].to_list(), dtype=np.float32), atol=2e-5)
    # a rerun on the store reuses every row: the previous embeddings are read there, through their manifests
    assert main(["embed", "--root", s3_root.uri, *embed_flags]) == 0
    for kind in ("items", "users"):
        rerun = EmbeddingsFolder.open(s3_root.locate("embeddings", there["model_version"], kind)).manifest
        assert (rerun["encoded"], rerun["reused"]) == (0, rerun["rows"]) and rerun["rows"] > 0, kind
    assert f"{s3_root.uri}/embeddings/{there['model_version']}/users" in capsys.readouterr().out
    local_names = {p.name for p in Path(tmp_path).rglob("*")}
    assert not any(n.startswith("s3:") for n in local_names) and s3_root.bucket not in local_names


def test_train_with_wrong_credentials_names_the_bucket_and_exits_9(tmp_path, s3_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_refused_with_wrong_credentials(s3_root, ["train", *TRAIN], monkeypatch, capsys, tmp_path)


@pytest.mark.parametrize("kind", ["snapshot", "model"])
def test_the_latest_output_on_an_s3_root_is_the_last_committed(s3_root, kind):
    """``recbatch train`` without --snapshot takes the latest snapshot: on a store, by commit marker."""
    layout = RunLayout.of(s3_root.uri, s3_root.storage)
    parent = layout.at.snapshots if kind == "snapshot" else layout.at.models
    latest = layout.at.latest_snapshot if kind == "snapshot" else layout.at.latest_model
    assert latest() is None
    for name in ("b-first", "a-second"):  # committed in this order: names do not decide
        folder = parent.join(name)
        attempt = staging_for(folder)
        record = write_parquet_part(pa.table({"x": [1]}), attempt.join("part-00000.parquet"))
        write_manifest(attempt, {}, files={"part-00000.parquet": record})
        publish(attempt, folder)
    stray = parent.join("c-uncommitted")  # a killed writer's attempt: no marker, never the latest
    write_parquet_part(pa.table({"x": [1]}), staging_for(stray).join("part-00000.parquet"))
    assert latest() == parent.join("a-second")
