"""The ``recbatch`` command itself: every subcommand is registered, and ``recbatch demo``
(the README's first command) runs on the shipped ``recbatch/configs/demo.yaml``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from recbatch import cli
from recbatch.commands import demo
from recbatch.config import load_config
from recbatch.layout import RunLayout
from recbatch.storage import read_parquet_folder, verify_manifest


def test_every_command_module_is_registered():
    modules = {p.stem for p in Path(cli.__file__).with_name("commands").glob("*.py")} - {"__init__", "inputs"}
    assert set(cli.COMMANDS) == modules
    parser = cli.build_parser()
    assert set(parser._subparsers._group_actions[0].choices) == modules


def test_a_command_that_cannot_be_imported_fails_loudly(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "no_such_command"])
    with pytest.raises(ModuleNotFoundError, match="recbatch.commands.no_such_command"):
        cli.build_parser()


def test_the_shipped_demo_config_loads_with_its_documented_sizes():
    cfg = load_config(demo.DEFAULT_CONFIG)
    assert (cfg.generate.users, cfg.generate.items) == (1000, 600)
    assert cfg.model.encoder == "minilm" and cfg.model.freeze_encoder and cfg.score.k == 20
    assert cfg.train.epochs == 6 and cfg.train.max_steps is None


@pytest.mark.ray
def test_demo_end_to_end_at_reduced_size(ray_local, tmp_path, capsys):
    """The shipped config, shrunk by flags: generates data, runs every stage, prints where the output is."""
    root = tmp_path / "demo"
    code = cli.main([
        "demo", "--root", str(root), "--run-date", "2026-11-28", "--users", "80", "--items", "50",
        "--set", "train.num_workers=1", "--set", "train.max_steps=2", "--set", "train.validate_users=20",
        # 80 users and 2 steps cannot beat popularity: the floor is tested in test_nightly/test_gate_cli;
        # here the shipped config's plumbing is, with the gate's documented off switch.
        "--set", "eval.gate_enabled=false",
        "--set", "eval.holdout_users=40", "--set", "model.max_text_tokens=16",
    ])
    out = capsys.readouterr().out
    assert code == 0, out
    layout = RunLayout.of(root)
    final = layout.recommendations_for(dt.date(2026, 11, 28))
    assert f"recommendations: {final}" in out and "generating demo data (80 users x 50 items)" in out
    manifest = verify_manifest(final)
    assert manifest["k"] == 20  # the demo config's score.k reached the published run
    assert manifest["config"]["model"]["encoder"] == "minilm"
    assert manifest["gate"]["passed"] is True and "gate disabled" in manifest["gate"]["reason"]
    assert manifest["users"] == 80
    recs = pl.from_arrow(read_parquet_folder(final))
    assert recs.height == 80 and recs["item_ids"].list.len().max() == 20
    seen = pl.read_parquet(root / "demo-source" / "interactions.parquet").group_by("user_id").agg("item_id")
    overlap = recs.join(seen, on="user_id").select(
        pl.col("item_ids").list.set_intersection(pl.col("item_id")).list.len().sum()).item()
    assert overlap == 0  # nothing the user already saw


@pytest.mark.ray
def test_embed_and_score_resolve_the_latest_snapshot_model_and_embeddings(ray_local, tmp_path, tiny_bert_dir, capsys):
    """``recbatch embed`` / ``score`` with only --root: each finds the latest complete input,
    or says which command to run first (exit 2); ``embed --full`` re-encodes every row."""
    from recbatch.config import Config
    from recbatch.data.snapshot import Snapshot
    from recbatch.model.artifact import init_artifact

    root = tmp_path / "root"
    common = ["--root", str(root), "--set", f"model.encoder={tiny_bert_dir}", "--set", "embed.cpus_per_actor=0.5",
              "--set", "score.cpus_per_actor=0.5"]

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli.main([*argv, *common])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, _, err = run("score", "--date", "2026-11-28")  # the old spelling still works, with a warning
    assert "--date is deprecated, use --run-date" in err
    assert code == 2 and "no --snapshot given and no snapshot under" in err and "recbatch ingest" in err
    source = tmp_path / "src"
    assert run("generate", "--out", str(source), "--users", "30", "--items", "20")[0] == 0
    assert run("ingest", "--source", str(source))[0] == 0
    code, _, err = run("score", "--run-date", "2026-11-28")
    assert code == 2 and "no --model (or --items and --users) given and no model under" in err
    code, _, err = run("embed")
    assert code == 2 and "no --model given" in err and "recbatch train" in err

    layout = RunLayout.of(root)
    snapshot = Snapshot.open(layout.latest_snapshot())
    cfg = Config().with_overrides({"model.embedding_dim": 8, "model.history_length": 4})
    model = init_artifact(cfg, str(tiny_bert_dir), snapshot, layout.models)  # an untrained model will do
    code, _, err = run("score", "--run-date", "2026-11-28")
    assert code == 2 and f"{layout.embeddings(model.name, 'items')} do not exist: run `recbatch embed` first" in err

    code, out, err = run("embed")
    assert code == 0, err
    assert f"model {model.name}: items 20 encoded, 0 reused; users 30 encoded, 0 reused" in out
    code, out, err = run("embed", "--full")  # the same model again: without --full all 50 rows are reused
    assert code == 0 and "items 20 encoded, 0 reused; users 30 encoded, 0 reused" in out, err

    code, out, err = run("score", "--run-date", "2026-11-28", "--k", "5")
    assert code == 0, err
    staged = layout.staged_for(dt.date(2026, 11, 28))
    manifest = verify_manifest(staged)
    assert f"scored 30 users (k=5, model {model.name})" in out and str(staged) in out
    assert manifest["model_version"] == model.name and manifest["snapshot_hash"] == snapshot.hash
    assert pl.read_parquet(sorted(staged.glob("*.parquet")))["item_ids"].list.len().max() == 5


def test_evaluate_config_baselines_on_the_validation_split(ray_local, tmp_path, capsys):
    """``--baselines`` alone takes eval.baselines; ``--split validation`` reaches the metrics."""
    import json

    from recbatch.data.snapshot import Snapshot
    from recbatch.eval.metrics import evaluate_run

    root, source, out = tmp_path / "root", tmp_path / "src", tmp_path / "report"
    common = ["--root", str(root), "--set", "score.k=10", "--set", "eval.ks=[5, 10]"]
    assert cli.main(["generate", "--out", str(source), "--users", "60", "--items", "40", *common]) == 0
    assert cli.main(["ingest", "--source", str(source), *common]) == 0
    snapshot = Snapshot.open(RunLayout.of(root).latest_snapshot())

    code = cli.main(["evaluate", "--baselines", "--split", "validation", "--out", str(out), *common,
                     "--set", "eval.baselines=[most_popular, random]"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["context"]["split"] == "validation"
    got = {m["name"]: m["metrics"] for m in report["models"]}
    assert list(got) == ["most_popular", "random"]  # eval.baselines, in order
    folder = RunLayout.of(root).baseline_run(snapshot.hash, "most_popular")
    on_validation = evaluate_run(folder, snapshot, ks=[5, 10], split="validation").metrics()
    on_test = evaluate_run(folder, snapshot, ks=[5, 10], split="test").metrics()
    assert got["most_popular"] == pytest.approx(on_validation)
    assert on_validation["recall@10"] != on_test["recall@10"]  # so the split did matter
    assert verify_manifest(folder)["k"] == 10

    model = tmp_path / "some-model"
    model.mkdir()
    code = cli.main(["evaluate", "--model", f"m={model}", "--split", "validation", *common])
    assert code == 2 and "--model is evaluated on the test split only" in capsys.readouterr().err
