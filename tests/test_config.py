"""The typed config: embedded default, YAML, overrides, and errors that name the bad key."""

from __future__ import annotations

import pytest

from recbatch.cli import main
from recbatch.config import Config, ConfigError, config_from_dict, load_config, parse_override


def test_embedded_default_needs_no_file():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.split.protocol == "recent_days" and cfg.ingest.on_bad_rows == "fail"  # the nightly's protocol


def test_yaml_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("root: /data/recs\nscore:\n  k: 50\ngenerate:\n  id_type: string\n")
    cfg = load_config(path, {"score.k": 20, "ingest.column_map": {"user_id": "uid"}})
    assert cfg.root == "/data/recs"
    assert cfg.score.k == 20  # the override wins over the file
    assert cfg.generate.id_type == "string"
    assert cfg.ingest.column_map == {"user_id": "uid"}


def test_override_values_are_read_as_yaml():
    assert parse_override("score.k=50") == ("score.k", 50)
    assert parse_override("split.temporal_train_fraction=0.8") == ("split.temporal_train_fraction", 0.8)
    assert parse_override("serving.redis_url=redis://h:6379/0") == ("serving.redis_url", "redis://h:6379/0")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("score.k")


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"score": {"kk": 5}}, ["unknown config key 'score.kk'", "allowed keys in 'score'", "k,"]),
        ({"nope": 1}, ["unknown config key 'nope'", "top level"]),
        ({"ingest": {"on_bad_rows": "skip"}}, ["'ingest.on_bad_rows'", "'skip'", "'fail', 'quarantine'"]),
        ({"split": {"leave_last_n": 0}}, ["'split.leave_last_n'", "out of range", ">= 1"]),
        ({"split": {"temporal_train_fraction": 1.5}}, ["'split.temporal_train_fraction'", "between 0.01 and 0.99"]),
        ({"generate": {"users": "many"}}, ["'generate.users'", "must be an integer", "'many'"]),
        ({"score": {"filter_seen": "yes"}}, ["'score.filter_seen'", "true or false"]),
        ({"score": 5}, ["config section 'score'", "mapping"]),
        ({"ingest": {"column_map": ["a"]}}, ["'ingest.column_map'", "mapping"]),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data, fragments):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_lossless_coercions_are_accepted():
    cfg = config_from_dict({"train": {"learning_rate": 1, "use_gpu": False}, "generate": {"users": 10.0}})
    assert cfg.train.learning_rate == 1.0 and isinstance(cfg.train.learning_rate, float)
    assert cfg.train.use_gpu == "false"  # YAML reads `false` as a bool; the literal is text
    assert cfg.generate.users == 10


def test_unknown_override_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'score.top_k'"):
        load_config(None, {"score.top_k": 5})
    with pytest.raises(ConfigError, match="unknown config key 'scoring'"):
        load_config(None, {"scoring.k": 5})


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("score: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listy)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("score:\n  k: -1\n")
    with pytest.raises(ConfigError, match=f"{wrong}: config key 'score.k'"):
        load_config(wrong)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    code = main(["ingest", "--root", str(tmp_path), "--set", "split.leave_last_n=0"])
    assert code == 2
    assert "configuration error: config key 'split.leave_last_n'" in capsys.readouterr().err
    code = main(["generate", "--out", str(tmp_path / "g"), "--id-type", "int", "--users", "0"])
    assert code == 2
    assert "'generate.users'" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_recorded_config_masks_the_redis_password():
    from recbatch.config import load_config

    cfg = load_config(None, {"serving.redis_url": "redis://:hunter2@127.0.0.1:6379/0"})
    recorded = cfg.to_record()
    assert recorded["serving"]["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert "hunter2" not in str(recorded)
    assert cfg.serving.redis_url.endswith("hunter2@127.0.0.1:6379/0")  # the live config keeps it


def test_relative_paths_become_absolute_once(tmp_path, monkeypatch):
    from recbatch.config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, {"root": "runs/demo", "ingest.source": "data", "score.blocklist": "s3://b/block.parquet"})
    assert cfg.root == str(tmp_path / "runs" / "demo")
    assert cfg.ingest.source == str(tmp_path / "data")
    assert cfg.score.blocklist == "s3://b/block.parquet"  # URIs are left alone
    assert load_config(None, {}).ingest.source == ""  # unset stays unset


def test_a_removed_key_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"'embed.history_splits' was removed: published lists .* every interaction"):
        config_from_dict({"embed": {"history_splits": ["train", "validation", "test"]}})
    with pytest.raises(ConfigError, match=r"'embed.history_splits' was removed"):
        Config().with_overrides({"embed.history_splits": ["train"]})
