"""The two-tower model in one file: item tower, user tower, and the pair.

    item text ──BERT──mean-pool──proj──(+ id vector if warm)──L2──▶ item vector [D]
    history item vectors + recency ──┐
    user features + example age ──▶ [USER] token ──┴─transformer──[USER] out──proj──L2──▶ user vector [D]
    score(user, item) = <user, item>   (cosine, both sides are unit length)

With ``train.objective: causal`` the user tower attends causally instead and the
user vector is its output at the last history position (``UserTower``).

Why the user tower reads *item vectors* rather than text: a user's history is
tens of items, and running BERT with gradients over every history item of every
example would multiply the cost of a step by the history length. Instead the
trainer refreshes a per-epoch cache of the encoder's pooled outputs for the
whole catalog (no grad, one cheap pass) and builds history vectors from it
through the *current* projection and id embedding (which do get gradients).
Only the in-batch candidates run BERT with gradients. At inference the
embedding stage feeds the user tower the item embeddings it already computed,
so users never need a BERT pass at all.

Why a hybrid id embedding: text alone cannot tell two similar-sounding items
apart once interaction data says they differ. Warm items (seen in training)
get a learned offset; cold items get index 0, a zero vector, i.e. text only.
It is initialised to zero, so an untrained model is purely text-based.

Why an example-age input (optional): a log spans years, and what people pick
drifts. Told how old each training example is, the user tower learns that
drift instead of averaging it away, and scoring asks for age 0: "now".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from recbatch.config import ConfigError


@dataclass
class TwoTowerConfig:
    embedding_dim: int = 64  # D: the shared space of user and item vectors
    encoder_hidden: int = 384  # H: the HF encoder's hidden size (set from its config)
    num_item_ids: int = 0  # warm items with a learned id vector; 0 = text only
    history_length: int = 20  # L: most recent interactions the user tower reads
    user_layers: int = 2
    user_heads: int = 4
    user_categorical: list[str] = field(default_factory=list)
    user_numeric: list[str] = field(default_factory=list)
    user_buckets: int = 1024  # hash buckets per categorical user feature
    dropout: float = 0.1
    id_dropout: float = 0.0  # training only: share of candidates scored from text alone
    history_dropout: float = 0.0  # training only: share of examples whose user is scored without history
    example_age_days: list[float] = field(default_factory=list)  # bucket edges; empty = no age input
    causal: bool = False  # the user tower attends causally and reads out at the last position (train.objective)

    def __post_init__(self) -> None:
        if self.embedding_dim % self.user_heads:
            raise ConfigError(
                f"model.embedding_dim = {self.embedding_dim} must be divisible by model.user_heads = {self.user_heads}"
            )


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states that are not padding: [B, T, H], [B, T] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class ItemTower(nn.Module):
    def __init__(self, encoder: nn.Module, cfg: TwoTowerConfig):
        super().__init__()
        self.encoder = encoder  # a HF AutoModel (BERT-like)
        self.projection = nn.Linear(cfg.encoder_hidden, cfg.embedding_dim)
        # Row 0 is the "cold / unknown" row: always zero, never trained.
        self.id_embedding = nn.Embedding(cfg.num_item_ids + 1, cfg.embedding_dim, padding_idx=0)
        nn.init.zeros_(self.id_embedding.weight)

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's mean-pooled text representation: [B, T] -> [B, H]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        return mean_pool(hidden, attention_mask)

    def from_pooled(self, pooled: torch.Tensor, id_index: torch.Tensor) -> torch.Tensor:
        """Project pooled text and add the id vector: [B, H], [B] -> unit vectors [B, D]."""
        vec = self.projection(pooled.to(self.projection.weight.dtype)) + self.id_embedding(id_index)  # [B, D]
        return F.normalize(vec.float(), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, id_index: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(self.pooled(input_ids, attention_mask), id_index)


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """[length, length] bool, True where a query (row) may not attend to a key (column): every later one."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(diagonal=1)


class UserTower(nn.Module):
    """A small transformer over [USER] + history.

    The [USER] token carries the user's features (sum of hashed categorical
    embeddings and a linear map of numerics), so features and history meet in
    self-attention rather than being glued on at the end. It also means a user
    with no history still gets a vector (from features alone).

    Two ways to read it, fixed by the config (``causal``, from ``train.objective``):

    - bidirectional (the default): every token sees every other; the vector is
      read out at [USER], plus a masked mean of the history so that
      ``user_layers = 0`` still sees it. History items carry their recency
      (1 = the most recent).
    - causal: each position sees only [USER] and the items before it, so the
      output at position t is the user after their t-th item, and training
      asks every position for its next item in one pass (``sequence``). Items
      carry their position from the oldest one of the window (1 = oldest): it
      means the same at every position, which recency counted from the end
      would not. The vector of a user is the output at the last position: the
      very output trained to predict what comes next.

    ``forward`` is the one readout, used by training's validation and by
    inference (``model/artifact.py`` ``encode_users``: the embedding stage and
    the holdout evaluation).
    """

    def __init__(self, cfg: TwoTowerConfig):
        super().__init__()
        d = cfg.embedding_dim
        self.causal = cfg.causal
        self.user_token = nn.Parameter(torch.zeros(d))
        # Recency (bidirectional) or position (causal) of each history item; 0 = the [USER] token.
        self.recency = nn.Embedding(cfg.history_length + 1, d)
        nn.init.normal_(self.recency.weight, std=0.02)
        self.categorical = nn.ModuleList(nn.Embedding(cfg.user_buckets, d, padding_idx=0) for _ in cfg.user_categorical)
        self.numeric = nn.Linear(len(cfg.user_numeric), d) if cfg.user_numeric else None
        # Bucket 0 is "younger than the first edge": what scoring (age 0) reads.
        self.register_buffer("age_edges", torch.tensor(cfg.example_age_days, dtype=torch.float32), persistent=False)
        self.age = nn.Embedding(len(cfg.example_age_days) + 1, d) if cfg.example_age_days else None
        if self.age is not None:
            nn.init.normal_(self.age.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.user_heads, dim_feedforward=4 * d, dropout=cfg.dropout, batch_first=True, norm_first=True
        )
        self.layers = (
            nn.TransformerEncoder(layer, cfg.user_layers, enable_nested_tensor=False) if cfg.user_layers else None
        )
        self.norm = nn.LayerNorm(d)
        self.projection = nn.Linear(d, d)
        self.history_length = cfg.history_length

    def forward(
        self,
        history: torch.Tensor,  # [B, L, D] item vectors, oldest first, most recent last
        history_mask: torch.Tensor,  # [B, L] bool, True = a real item
        user_categorical: torch.Tensor,  # [B, C] int64 hash buckets (0 = null)
        user_numeric: torch.Tensor,  # [B, F] float32, standardised
        example_age_days: torch.Tensor | None = None,  # [B] float32 in training; None = scoring now (age 0)
    ) -> torch.Tensor:
        """The user vector [B, D] (unit length)."""
        history = history[:, -self.history_length :]
        history_mask = history_mask[:, -self.history_length :].bool()
        if self.causal:
            outputs = self.sequence(history, history_mask, user_categorical, user_numeric)  # [B, 1+L, D]
            keep = torch.cat([history_mask.new_ones(history.shape[0], 1), history_mask], dim=1)  # [B, 1+L]
            positions = torch.arange(keep.shape[1], device=keep.device)
            last = (keep * positions).argmax(dim=1)  # [B] the last real position ([USER] = 0 for no history)
            return outputs[torch.arange(history.shape[0], device=keep.device), last]
        seq = self._encode(history, history_mask, user_categorical, user_numeric, example_age_days)  # [B, 1+L, D]
        # read out at [USER], plus a masked mean of the history so L=0 layers still see it
        hist = seq[:, 1:] * history_mask.unsqueeze(-1)
        hist_mean = hist.sum(1) / history_mask.sum(1, keepdim=True).clamp(min=1)
        out = self.projection(self.norm(seq[:, 0] + hist_mean))  # [B, D]
        return F.normalize(out.float(), dim=-1)

    def sequence(
        self,
        history: torch.Tensor,  # [B, L, D] item vectors, oldest first; left or right padding
        history_mask: torch.Tensor,  # [B, L] bool
        user_categorical: torch.Tensor,  # [B, C]
        user_numeric: torch.Tensor,  # [B, F]
    ) -> torch.Tensor:
        """Causal outputs at every position, unit vectors [B, 1+L, D]: index 0 is [USER] (the user
        before any item), index j the user after history item j. Only for a causal tower."""
        if not self.causal:
            raise ValueError("UserTower.sequence needs a causal tower (train.objective = 'causal')")
        seq = self._encode(history, history_mask.bool(), user_categorical, user_numeric, None)  # [B, 1+L, D]
        return F.normalize(self.projection(self.norm(seq)).float(), dim=-1)

    def _encode(
        self,
        history: torch.Tensor,  # [B, L, D]
        history_mask: torch.Tensor,  # [B, L] bool
        user_categorical: torch.Tensor,
        user_numeric: torch.Tensor,
        example_age_days: torch.Tensor | None,
    ) -> torch.Tensor:
        """[USER] + history through the transformer: [B, 1+L, D] hidden states."""
        B, L, D = history.shape
        if self.causal:  # position from the oldest real item: the same meaning at every position
            order = torch.cumsum(history_mask.long(), 1) * history_mask  # [B, L]
        else:  # recency rank from the most recent *real* item, so left- or right-padding both work
            order = torch.flip(torch.cumsum(torch.flip(history_mask.long(), [1]), 1), [1]) * history_mask  # [B, L]
        tokens = history.to(self.recency.weight.dtype) + self.recency(order)  # [B, L, D]
        user = self.user_token.expand(B, D)  # [B, D]
        for j, emb in enumerate(self.categorical):
            user = user + emb(user_categorical[:, j])
        if self.numeric is not None:
            user = user + self.numeric(user_numeric.to(self.numeric.weight.dtype))
        if self.age is not None:
            if example_age_days is None:
                bucket = torch.zeros(B, dtype=torch.long, device=user.device)  # [B] now
            else:
                # compared in fp32: a half-precision engine also halves the edges buffer
                bucket = torch.bucketize(example_age_days.float(), self.age_edges.float(), right=True)  # [B]
            user = user + self.age(bucket)
        seq = torch.cat([user.unsqueeze(1), tokens], dim=1)  # [B, 1+L, D]
        keep = torch.cat([history_mask.new_ones(B, 1), history_mask], dim=1)  # [B, 1+L]
        if self.layers is None:
            return seq
        # [USER] is never masked, so no query row is left without a key (no NaN rows)
        attend = causal_mask(1 + L, seq.device) if self.causal else None
        return self.layers(seq, mask=attend, src_key_padding_mask=~keep)  # [B, 1+L, D]


class TwoTower(nn.Module):
    """Both towers. ``forward(kind, ...)`` dispatches, so a DeepSpeed engine
    (which wraps one module and hooks its forward) can run either tower."""

    def __init__(self, encoder: nn.Module, cfg: TwoTowerConfig):
        super().__init__()
        self.config = cfg
        self.item_tower = ItemTower(encoder, cfg)
        self.user_tower = UserTower(cfg)

    def forward(self, kind: str, **inputs: torch.Tensor) -> torch.Tensor:
        if kind == "items":  # input_ids, attention_mask, id_index -> [B, D]
            return self.item_tower(**inputs)
        if kind == "pooled":  # input_ids, attention_mask -> [B, H]
            return self.item_tower.pooled(**inputs)
        if kind == "items_from_pooled":  # pooled, id_index -> [B, D]
            return self.item_tower.from_pooled(**inputs)
        if kind == "users":  # history, history_mask, user_categorical, user_numeric[, example_age_days] -> [B, D]
            return self.user_tower(**inputs)
        if kind == "train":
            return self.training_pair(**inputs)
        if kind == "train_sequence":
            return self.training_sequence(**inputs)
        raise ValueError(f"unknown forward kind {kind!r}")

    def training_pair(
        self,
        id_index: torch.Tensor,  # [B] the positives' id rows
        history_pooled: torch.Tensor,  # [B, L, H] cached encoder output of the history items (no grad)
        history_id_index: torch.Tensor,  # [B, L]
        history_mask: torch.Tensor,  # [B, L] bool
        user_categorical: torch.Tensor,  # [B, C]
        user_numeric: torch.Tensor,  # [B, F]
        negative_pooled: torch.Tensor | None = None,  # [N, H] cached, uniformly sampled extra negatives
        negative_id_index: torch.Tensor | None = None,  # [N]
        input_ids: torch.Tensor | None = None,  # [B, T] positive tokens: the only BERT pass with grad
        attention_mask: torch.Tensor | None = None,  # [B, T]
        positive_pooled: torch.Tensor | None = None,  # [B, H] cached instead (frozen encoder: no BERT pass)
        example_age_days: torch.Tensor | None = None,  # [B] days before the latest training event
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward for a training step: (users [B, D], candidates [B + N, D]).

        A single call keeps DeepSpeed's hooks (ZeRO-3 gathers, fp16 casting)
        in one forward/backward pair. Positives come either from tokens (the
        encoder is fine-tuned) or from the cache (it is frozen).
        """
        B, L, H = history_pooled.shape
        id_index = self._drop_ids(id_index)
        if positive_pooled is not None:
            positives = self.item_tower.from_pooled(positive_pooled, id_index)  # [B, D]
        elif input_ids is not None and attention_mask is not None:
            positives = self.item_tower(input_ids, attention_mask, id_index)  # [B, D]
        else:
            raise ValueError("training_pair needs input_ids + attention_mask or positive_pooled")
        history = self.item_tower.from_pooled(history_pooled.reshape(B * L, H), history_id_index.reshape(B * L))
        history_mask = self._drop_histories(history_mask)
        users = self.user_tower(
            history.reshape(B, L, -1), history_mask, user_categorical, user_numeric, example_age_days
        )  # [B, D]
        if negative_pooled is None:
            return users, positives
        negatives = self.item_tower.from_pooled(negative_pooled, self._drop_ids(negative_id_index))  # [N, D]
        return users, torch.cat([positives, negatives])

    def training_sequence(
        self,
        history_pooled: torch.Tensor,  # [B, L, H] cached encoder output of each window's items but the last
        history_id_index: torch.Tensor,  # [B, L]
        history_mask: torch.Tensor,  # [B, L] bool
        user_categorical: torch.Tensor,  # [B, C]
        user_numeric: torch.Tensor,  # [B, F]
        candidate_pooled: torch.Tensor,  # [N, H] cached: the whole catalog, or the batch's targets (+ negatives)
        candidate_id_index: torch.Tensor,  # [N]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward for a causal training step: (outputs at every position [B, 1+L, D], candidates [N, D])."""
        B, L, H = history_pooled.shape
        history = self.item_tower.from_pooled(history_pooled.reshape(B * L, H), history_id_index.reshape(B * L))
        outputs = self.user_tower.sequence(history.reshape(B, L, -1), history_mask, user_categorical, user_numeric)
        candidates = self.item_tower.from_pooled(candidate_pooled, self._drop_ids(candidate_id_index))  # [N, D]
        return outputs, candidates

    def _drop_histories(self, history_mask: torch.Tensor) -> torch.Tensor:
        """In training, hide the whole history of a random share of examples: [B, L] -> [B, L].

        Only each user's first interaction has no history, too few examples to teach
        the no-history path what a newcomer picks; hiding histories at random trains
        it on the marginal of all examples (what a newcomer gets at inference).
        """
        p = self.config.history_dropout
        if not self.training or p <= 0:
            return history_mask
        keep = torch.rand(history_mask.shape[0], 1, device=history_mask.device) >= p  # [B, 1]
        return history_mask & keep

    def _drop_ids(self, id_index: torch.Tensor) -> torch.Tensor:
        """In training, send a random share of candidates down the cold (text-only) path: [N] -> [N]."""
        p = self.config.id_dropout
        if not self.training or p <= 0:
            return id_index
        drop = torch.rand(id_index.shape, device=id_index.device) < p
        return id_index.masked_fill(drop, 0)


def build_two_tower(
    encoder_dir: str, cfg: TwoTowerConfig, freeze_encoder: bool = False
) -> tuple[TwoTower, object]:
    """A freshly initialised model around the pretrained encoder, plus its tokenizer.

    With `freeze_encoder` the encoder's weights take no gradient (``model.freeze_encoder``).
    """
    from recbatch.model.encoder import load_encoder

    encoder, tokenizer = load_encoder(encoder_dir)
    encoder.requires_grad_(not freeze_encoder)
    cfg.encoder_hidden = int(encoder.config.hidden_size)
    return TwoTower(encoder, cfg), tokenizer
