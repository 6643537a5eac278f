"""The inference artifact: a trained model that needs neither DeepSpeed nor Ray.

    models/<model_version>/
      encoder/            plain HF directory (AutoModel + AutoTokenizer), fine-tuned weights
      towers.pt           state dict of everything else (projections, id vectors, user tower)
      item_vocab.parquet  item_id per learned id row (row i -> id index i + 1; 0 = cold)
      model_card.json     model config, snapshot hash, step, metrics, model_version, ...
      loss_curve.json     training loss per logged step (empty for an untrained model)
      _manifest.json, _SUCCESS

``model_version`` is a hash of every weight, the model config and the id
vocabulary, so two artifacts with the same version score identically and the
embedding stage may safely reuse rows keyed by it.

The models folder is a ``fs.Location``: on an object-store root the artifact is
published through recbatch/folders.py (attempt, manifest, marker) and read back
through its marker and manifest; Hugging Face and torch read and write local
files, so the files pass through a temporary local folder on the way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recbatch import folders, storage
from recbatch.errors import IntegrityError
from recbatch.fs import Location, access, as_location, read_bytes
from recbatch.model.features import UserFeatureSpec
from recbatch.model.two_tower import TwoTower, TwoTowerConfig
from recbatch.runtime import Precision, torch_dtype

ARTIFACT_FORMAT = 1
ENCODER_DIR = "encoder"
TOWERS_FILE = "towers.pt"
VOCAB_FILE = "item_vocab.parquet"
CARD_FILE = "model_card.json"
LOSS_CURVE_FILE = "loss_curve.json"
_ENCODER_PREFIX = "item_tower.encoder."

if TYPE_CHECKING:
    from recbatch.config import Config
    from recbatch.data.snapshot import Snapshot


def model_version_of(model: TwoTower, item_ids: Sequence[Any], card_model: dict[str, Any]) -> str:
    """Hash of all weights (in a fixed order), the model config and the id vocabulary."""
    h = hashlib.sha256()
    h.update(json.dumps(card_model, sort_keys=True).encode())
    h.update(json.dumps([str(i) for i in item_ids]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_artifact(model: TwoTower, tokenizer: Any, models_dir: str | Path, **fields: Any) -> Path:
    """``publish_artifact`` into a local folder, for callers that hold local paths."""
    return Path(publish_artifact(model, tokenizer, as_location(models_dir), **fields).path)


def publish_artifact(
    model: TwoTower,
    tokenizer: Any,
    models: Location,
    *,
    item_ids: Sequence[Any],
    user_features: UserFeatureSpec,
    max_text_tokens: int,
    id_type: str = "int",
    snapshot_hash: str | None = None,
    step: int = 0,
    metrics: dict[str, float] | None = None,
    loss_curve: list[dict[str, float]] | None = None,
    extra_card: dict[str, Any] | None = None,
) -> Location:
    """Publish the artifact as ``models/<model_version>``, complete or absent; return that folder.

    `item_ids` lists the warm ids in id-embedding row order (row i + 1).
    """
    if len(item_ids) != model.config.num_item_ids:
        raise ValueError(f"{len(item_ids)} item ids for {model.config.num_item_ids} id-embedding rows")
    model_cfg = dataclasses.asdict(model.config)
    version = model_version_of(model, item_ids, model_cfg)
    final = models.join(version)
    with folders.building(final) as built:  # Hugging Face and torch write local files
        _write_files(built, model, tokenizer, item_ids, id_type, loss_curve, {
            "format": ARTIFACT_FORMAT,
            "model_version": version,
            "model": model_cfg,
            "max_text_tokens": max_text_tokens,
            "user_features": dataclasses.asdict(user_features),
            "id_type": id_type,
            "snapshot_hash": snapshot_hash,
            "step": step,
            "metrics": metrics or {},
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra_card or {}),
        })
        folders.publish_built(built, final, {"kind": "model", "model_version": version, "snapshot_hash": snapshot_hash})
    return final


def _write_files(
    staging: Path, model: TwoTower, tokenizer: Any, item_ids: Sequence[Any], id_type: str,
    loss_curve: list[dict[str, float]] | None, card: dict[str, Any],
) -> None:
    """The artifact's files (everything but the manifest) into a local folder."""
    encoder = model.item_tower.encoder
    encoder.save_pretrained(staging / ENCODER_DIR)
    tokenizer.save_pretrained(staging / ENCODER_DIR)
    towers = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(_ENCODER_PREFIX)}
    torch.save(towers, staging / TOWERS_FILE)
    id_arrow = pa.int64() if id_type == "int" else pa.string()
    pq.write_table(pa.table({"item_id": pa.array(list(item_ids), type=id_arrow)}), staging / VOCAB_FILE)
    (staging / LOSS_CURVE_FILE).write_text(json.dumps(loss_curve or []))
    (staging / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True))


@dataclass
class Artifact:
    """A loaded model ready to encode items and users (eval mode, no grad)."""

    path: Location  # where it was published
    model: TwoTower
    tokenizer: Any
    card: dict[str, Any]
    item_index: dict[Any, int]  # warm item id -> id-embedding row (cold ids are absent -> 0)
    user_features: UserFeatureSpec
    device: torch.device
    precision: Precision

    @property
    def model_version(self) -> str:
        return self.card["model_version"]

    @property
    def embedding_dim(self) -> int:
        return int(self.card["model"]["embedding_dim"])

    @property
    def history_length(self) -> int:
        return int(self.card["model"]["history_length"])

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch_dtype(self.precision))

    def id_index(self, item_ids: Sequence[Any]) -> torch.Tensor:
        """Id-embedding rows for `item_ids`: [B] int64, 0 for cold/unknown ids."""
        return torch.tensor([self.item_index.get(i, 0) for i in item_ids], dtype=torch.long)

    @torch.no_grad()
    def encode_items(self, texts: list[str], item_ids: Sequence[Any]) -> torch.Tensor:
        """Unit item vectors [B, D] float32 on CPU, from rendered texts (features.render_item_text)."""
        if len(texts) != len(item_ids):
            raise ValueError(f"{len(texts)} texts for {len(item_ids)} item ids")
        tokens = self.tokenizer(
            list(texts), max_length=self.card["max_text_tokens"], padding=True, truncation=True, return_tensors="pt"
        )
        with self._autocast():
            vectors = self.model(
                "items",
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
                id_index=self.id_index(item_ids).to(self.device),
            )  # [B, D]
        return vectors.float().cpu()

    @torch.no_grad()
    def encode_users(
        self,
        history_vectors: torch.Tensor,  # [B, L, D] item vectors, most recent last
        history_mask: torch.Tensor,  # [B, L] bool
        features: pl.DataFrame | None = None,  # B rows of user feature columns (or None)
    ) -> torch.Tensor:
        """Unit user vectors [B, D] float32 on CPU."""
        B = history_vectors.shape[0]
        categorical, numeric = self.user_features.encode(features, B)
        with self._autocast():
            vectors = self.model(
                "users",
                history=history_vectors.to(self.device, torch.float32),
                history_mask=history_mask.to(self.device).bool(),
                user_categorical=categorical.to(self.device),
                user_numeric=numeric.to(self.device),
            )  # [B, D]
        return vectors.float().cpu()


def trained_temperature(card: dict[str, Any]) -> float | None:
    """The softmax temperature the model was trained with (its logits are cosine / temperature)."""
    value = card.get("config", {}).get("model", {}).get("temperature")
    return float(value) if value is not None else None


def read_model_card(model_dir: str | Path | Location, *, check_complete: bool = True) -> dict[str, Any]:
    """The card of a model artifact, without loading weights: the one reader of ``model_card.json``.

    `check_complete` first verifies the folder's manifest (a published artifact);
    retention reads the cards of folders that may be half-written and passes False.
    On an object store the card is read from the committed attempt (always a published artifact).
    """
    location = as_location(model_dir)
    if check_complete:
        folders.verify_manifest(location, checksums=False)
    if not location.is_object_store:
        return json.loads((Path(location.path) / CARD_FILE).read_text())
    _, files_at = folders.read_committed(location)
    card = files_at.join(CARD_FILE)
    return json.loads(read_bytes(card))


@contextlib.contextmanager
def local_copy(model_dir: str | Path | Location) -> Iterator[Path]:
    """A published artifact as a local folder, checked against its manifest (sizes and sha256 on an
    object store, sizes locally): the folder itself on a local root; on an object store exactly the
    manifest's files of the committed attempt, copied into a temporary folder for the block."""
    location = as_location(model_dir)
    if not location.is_object_store:
        storage.verify_manifest(location.path, checksums=False)
        yield Path(location.path)
        return
    with tempfile.TemporaryDirectory(prefix="recbatch-model-") as folder, folders.open_folder(location) as pinned:
        for name, source in pinned.files.items():
            target = Path(folder) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with access(location, f"read {name}"):
                target.write_bytes(source.read())
        (Path(folder) / storage.MANIFEST).write_text(json.dumps(pinned.manifest))
        (Path(folder) / storage.SUCCESS).touch()
        storage.verify_manifest(folder)  # what is loaded is what was published
        yield Path(folder)


def load_artifact(path: str | Path | Location, device: str = "cpu", precision: Precision = "fp32") -> Artifact:
    """Load a published artifact, on either kind of root (verifies its manifest first)."""
    with local_copy(path) as folder:
        return _load(folder, as_location(path), device, precision)


def _load(path: Path, published: Location, device: str, precision: Precision) -> Artifact:
    """Load the artifact in the local folder `path` (``published``: where it was published)."""
    from transformers import AutoModel, AutoTokenizer

    card = json.loads((path / CARD_FILE).read_text())
    if card.get("format") != ARTIFACT_FORMAT:
        raise IntegrityError(f"{path}: model artifact format {card.get('format')} is not {ARTIFACT_FORMAT}")
    encoder = AutoModel.from_pretrained(path / ENCODER_DIR, trust_remote_code=False, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path / ENCODER_DIR, trust_remote_code=False, local_files_only=True)
    model = TwoTower(encoder, TwoTowerConfig(**card["model"]))
    towers = torch.load(path / TOWERS_FILE, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(towers, strict=False)
    missing = [k for k in missing if not k.startswith(_ENCODER_PREFIX)]
    if missing or unexpected:
        raise IntegrityError(f"{path}/{TOWERS_FILE}: missing {missing[:3]} unexpected {unexpected[:3]}")
    vocab = pq.read_table(path / VOCAB_FILE).column("item_id").to_pylist()
    torch_device = torch.device(device)
    model.to(torch_device).eval()
    return Artifact(
        path=published,
        model=model,
        tokenizer=tokenizer,
        card=card,
        item_index={item_id: row + 1 for row, item_id in enumerate(vocab)},
        user_features=UserFeatureSpec(**card["user_features"]),
        device=torch_device,
        precision=precision,
    )


def init_artifact(cfg: "Config", encoder: str, snapshot: "Snapshot | None", out_dir: str | Path) -> Path:
    """A freshly initialised (untrained) artifact in ``out_dir/<model_version>``; returns its path.

    For tests of later stages and for a first nightly run without training:
    warm ids (items with a train interaction) and user features come from
    `snapshot` when given. The id vectors start at zero, so the model is text-only.
    """
    from recbatch.model.two_tower import build_two_tower

    item_ids, users, id_type, snapshot_hash = [], None, "int", None
    if snapshot is not None:
        id_type, snapshot_hash = snapshot.id_type, snapshot.hash
        if cfg.model.use_item_id_embedding:
            item_ids = warm_item_ids(snapshot)
        users = snapshot.users()  # the spec needs only column statistics: streamed, not loaded
    torch.manual_seed(cfg.train.seed)
    spec = UserFeatureSpec.from_users(users)
    model, tokenizer = build_two_tower(encoder, tower_config(cfg, spec, len(item_ids)))
    return save_artifact(
        model,
        tokenizer,
        out_dir,
        item_ids=item_ids,
        user_features=spec,
        max_text_tokens=cfg.model.max_text_tokens,
        id_type=id_type,
        snapshot_hash=snapshot_hash,
        extra_card={"config": cfg.to_record(), "trained": False},
    )


def warm_item_ids(snapshot: "Snapshot") -> list:
    """Items with at least one train interaction, sorted: the rows of the id embedding."""
    return snapshot.split("train").select("item_id").unique().sort("item_id").collect()["item_id"].to_list()


def tower_config(cfg: "Config", spec: UserFeatureSpec, num_item_ids: int) -> TwoTowerConfig:
    """The model shape from the ``model`` config section, the training objective and the snapshot's features."""
    model_cfg = cfg.model
    return TwoTowerConfig(
        embedding_dim=model_cfg.embedding_dim,
        num_item_ids=num_item_ids if model_cfg.use_item_id_embedding else 0,
        history_length=model_cfg.history_length,
        user_layers=model_cfg.user_layers,
        user_heads=model_cfg.user_heads,
        user_categorical=list(spec.categorical),
        user_numeric=list(spec.numeric),
        user_buckets=spec.buckets,
        id_dropout=model_cfg.id_dropout,
        history_dropout=model_cfg.history_dropout,
        example_age_days=list(model_cfg.example_age_days),
        causal=cfg.train.objective == "causal",
    )
