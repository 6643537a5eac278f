"""``recbatch evaluate`` and the gate's inputs on an object-store root (``s3://``, a real S3 server: SeaweedFS).

On an ``s3://`` root the evaluation reads the snapshot, a model, a run made
elsewhere and its baselines through their commit markers and manifests,
publishes the baselines and the report there, and measures exactly what the
same evaluation on a local root measures; wrong credentials exit 9 naming the
bucket. The gate compares with the runs the root has published: on a store,
only folders committed by marker count.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from eval_helpers import write_run
from s3_helpers import assert_refused_with_wrong_credentials, storage_flags

from recbatch import folders
from recbatch.cli import main
from recbatch.config import Config
from recbatch.data.snapshot import Snapshot
from recbatch.eval.gate import last_published_manifest
from recbatch.fs import local
from recbatch.layout import RunLayout
from recbatch.model.artifact import init_artifact
from recbatch.storage import read_manifest

EVAL = ["--baselines", "most_popular", "--set", "score.k=10", "--set", "eval.ks=[5,10]"]
REPORT_FILES = {"report.md", "report.html", "report.json", "metrics_at_k.png", "popularity.png", "cold_vs_warm.png"}


def _copy_published(folder: Path, final) -> None:
    """Publish a complete local folder's files and manifest fields at `final` (the test's own set-up)."""
    fields = {k: v for k, v in read_manifest(folder).items() if k != "files"}
    with folders.building(final) as built:
        for path in folder.rglob("*"):
            if path.is_file():
                (built / path.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
                (built / path.relative_to(folder)).write_bytes(path.read_bytes())
        folders.publish_built(built, final, fields)


def _report_of(out: str) -> str:
    return out.rsplit("report: ", 1)[1].strip()


def _report_json(report) -> dict:
    with folders.open_folder(report) as pinned:
        return json.loads(pinned.files["report.json"].read())


def test_evaluate_on_an_s3_root_publishes_there_what_a_local_root_measures(
    tmp_path, s3_root, tiny_bert_dir, ray_with_credentials, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # where a path "s3://..." would have become a local folder "s3:"
    source, local_root = tmp_path / "source", tmp_path / "root"
    assert main(["generate", "--out", str(source), "--users", "40", "--items", "30", "--root", str(local_root)]) == 0
    for root in (str(local_root), s3_root.uri):
        assert main(["ingest", "--source", str(source), "--root", root, *storage_flags(s3_root)]) == 0
    snapshot = Snapshot.open(RunLayout.of(local_root).at.latest_snapshot())
    model_cfg = Config().with_overrides({"model.embedding_dim": 16, "model.history_length": 8})
    model = init_artifact(model_cfg, str(tiny_bert_dir), snapshot, local_root / "models")  # untrained: text only
    hand = write_run(tmp_path / "hand", {u: [1, 2, 3] for u in range(1, 41)})  # a run from elsewhere
    on_store = RunLayout.of(s3_root.uri, s3_root.storage).at
    _copy_published(model, on_store.model(model.name))
    _copy_published(hand, on_store.root.join("hand"))
    capsys.readouterr()

    assert main(["evaluate", "--root", str(local_root), "--model", f"tiny={model}", "--run", f"hand={hand}",
                 *EVAL]) == 0
    here = _report_json(local(_report_of(capsys.readouterr().out)))
    assert main(["evaluate", "--root", s3_root.uri, "--model", f"tiny={on_store.model(model.name).uri}",
                 "--run", f"hand={s3_root.uri}/hand", *EVAL, *storage_flags(s3_root)]) == 0
    report = s3_root.locate(_report_of(capsys.readouterr().out).removeprefix(s3_root.uri + "/"))

    # the report is committed on the store, every file named by its manifest, and measures what the local one does
    assert report.uri.startswith(f"{s3_root.uri}/reports/dt=")
    manifest = folders.verify_manifest(report)
    assert set(manifest["files"]) == REPORT_FILES and manifest["kind"] == "report"
    there = _report_json(report)
    assert there["context"]["snapshot"] == here["context"]["snapshot"] == snapshot.hash
    assert there["context"]["runs"]["tiny"] == on_store.model(model.name).uri
    metrics_here = {m["name"]: m["metrics"] for m in here["models"]}
    metrics_there = {m["name"]: m["metrics"] for m in there["models"]}
    assert set(metrics_there) == {"hand", "most_popular", "tiny"} and metrics_here.keys() == metrics_there.keys()
    for name, values in metrics_here.items():
        assert metrics_there[name] == pytest.approx(values), name
    assert metrics_there["tiny"]["seen_share@10"] == 0.0 and metrics_there["most_popular"]["ndcg@10"] > 0.0

    # the baseline's lists are published on the store too, and read back there by a rerun
    baseline = on_store.baseline_run(snapshot.hash, "most_popular")
    assert folders.read_manifest(baseline)["k"] == 10
    local_names = {p.name for p in Path(tmp_path).rglob("*")}
    assert not any(n.startswith("s3:") for n in local_names) and s3_root.bucket not in local_names


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_gate_compares_with_the_last_committed_run_of_either_kind_of_root(tmp_path, request, kind):
    """A staged attempt (a publish killed before its commit) is no published run; tonight's rerun is not either."""
    root = str(tmp_path / "root") if kind == "local" else request.getfixturevalue("s3_root").uri
    storage = None if kind == "local" else request.getfixturevalue("s3_root").storage
    at = RunLayout.of(root, storage).at
    assert at.published_runs() == [] and last_published_manifest(at, "dt=2026-11-30") is None
    for day in ("2026-11-29", "2026-11-27"):  # published out of date order: the dates decide "oldest first"
        final = at.recommendations_for(day)
        staging = folders.staging_for(final)
        record = folders.write_parquet_part(pa.table({"x": [1]}), staging.join("part-00000.parquet"))
        folders.write_manifest(staging, {"run_date": day}, files={"part-00000.parquet": record})
        folders.publish(staging, final)
    killed = folders.staging_for(at.recommendations_for("2026-11-30"))
    folders.write_parquet_part(pa.table({"x": [1]}), killed.join("part-00000.parquet"))

    assert [run.name for run in at.published_runs()] == ["dt=2026-11-27", "dt=2026-11-29"]
    assert last_published_manifest(at, "dt=2026-11-30")["run_date"] == "2026-11-29"
    assert last_published_manifest(at, "dt=2026-11-29")["run_date"] == "2026-11-27"  # a rerun of that night


def test_evaluate_with_wrong_credentials_names_the_bucket_and_exits_9(tmp_path, s3_root, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert_refused_with_wrong_credentials(s3_root, ["evaluate", *EVAL], monkeypatch, capsys, tmp_path)
