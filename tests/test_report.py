"""`recbatch evaluate` end to end: a hand-made run plus baselines -> a rendered report."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from eval_helpers import synthetic_snapshot, write_run
from recbatch.cli import main
from recbatch.fs import local
from recbatch.storage import verify_manifest


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_bert_dir):
    from recbatch.config import Config
    from recbatch.data.snapshot import Snapshot
    from recbatch.model.artifact import init_artifact

    root = tmp_path_factory.mktemp("root")
    snap = synthetic_snapshot(root / "snapshots" / "synthetic")
    model_cfg = Config().with_overrides({"model.embedding_dim": 16, "model.history_length": 8})
    model_dir = init_artifact(model_cfg, str(tiny_bert_dir), Snapshot.open(snap), root / "models")
    # A run that puts each user's own test items first: an oracle, so its numbers are known.
    import polars as pl

    test = pl.read_parquet(snap / "split.parquet").filter(pl.col("split") == "test")
    lists = {u: items for u, items in test.group_by("user_id").agg("item_id").iter_rows()}
    write_run(root / "oracle", lists)
    out = root / "report"
    rc = main([
        "evaluate", "--root", str(root), "--snapshot", str(snap), "--run", f"oracle={root / 'oracle'}",
        "--model", f"tiny={model_dir}", "--baselines", "random,most_popular", "--out", str(out),
        "--set", "score.k=20", "--set", "eval.ks=[5,10,20]",
    ])
    assert rc == 0
    return out


def test_report_files_and_numbers(report):
    verify_manifest(report)
    payload = json.loads((report / "report.json").read_text())
    models = {m["name"]: m for m in payload["models"]}
    assert set(models) == {"oracle", "tiny", "random", "most_popular"}
    assert models["tiny"]["users"]["all"] == 200 and models["tiny"]["metrics"]["seen_share@20"] == 0.0
    assert models["oracle"]["metrics"]["ndcg@10"] == pytest.approx(1.0)
    assert models["oracle"]["metrics"]["cold/recall@5"] == pytest.approx(1.0)
    assert len(models["random"]["curves"]["all"]["ndcg"]) == 100
    assert models["most_popular"]["metrics"]["ndcg@10"] > models["random"]["metrics"]["ndcg@10"]
    md = (report / "report.md").read_text()
    assert "| oracle | 200 | " in md and "ndcg@10" in md
    # the first model against each other one on the gate metric, as a ratio
    assert "## oracle against the others on ndcg@10" in md
    popular = models["most_popular"]["metrics"]["ndcg@10"]
    assert f"| most_popular | {popular:.4f} | {1.0 / popular:.2f}x |" in md
    assert "| oracle | 1.0000 | 1.00x |" in md
    assert "<table>" in (report / "report.html").read_text()


@pytest.mark.parametrize("name", ["metrics_at_k.png", "popularity.png", "cold_vs_warm.png"])
def test_plots_are_real_images(report, name):
    image = matplotlib.image.imread(report / name)  # [H, W, 4]
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_bad_run_flag_is_a_usage_error(tmp_path, capsys):
    rc = main(["evaluate", "--root", str(tmp_path), "--snapshot", str(tmp_path), "--run", "nodir"])
    assert rc == 2
    assert "--run expects NAME=DIR" in capsys.readouterr().err


def test_a_section_measured_elsewhere_is_rendered_and_kept_in_the_json(tmp_path):
    from recbatch.data.snapshot import Snapshot
    from recbatch.eval.metrics import evaluate_run
    from recbatch.eval.report import Section, write_report

    snap = Snapshot.open(synthetic_snapshot(tmp_path / "snapshot"))
    write_run(tmp_path / "run", {1: [1, 2, 3]})
    section = Section("Injected profiles", ["attack", "gain removed"], [["average", "100%"]])
    out = tmp_path / "report"
    assert write_report([evaluate_run(tmp_path / "run", snap, ks=[5, 10])], out, sections=[section]) == local(out)
    assert "## Injected profiles\n\n| attack | gain removed |" in (out / "report.md").read_text()
    assert "<h2>Injected profiles</h2>" in (out / "report.html").read_text()
    assert json.loads((out / "report.json").read_text())["sections"] == [
        {"title": "Injected profiles", "header": ["attack", "gain removed"], "rows": [["average", "100%"]]}
    ]
