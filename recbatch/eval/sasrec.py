"""SASRec: the sequential reference the two-tower's user tower has to beat.

Kang & McAuley 2018, "Self-Attentive Sequential Recommendation": item +
learned position embeddings, causal self-attention blocks, and the hidden state
at each position predicts the next item. Trained, as later work found strongest
(Klenitskiy & Vasilev 2023), with cross-entropy over the whole catalog rather
than the paper's one sampled negative. Early stopping watches each user's last
training item, predicted from the items before it; the epoch count it picks is
what a refit on more rows reuses (``Training.best_epochs``), so the search for
it is paid once.

A whole idea in one file: the module, the training loop and the ranking
vectors. ``baselines.SASRecBaseline`` puts it behind the baseline contract.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recbatch.score.torch_kernel import torch_threads

log = logging.getLogger(__name__)

PAD = 0  # token 0 pads; item column c is token c + 1


@dataclass(frozen=True)
class SASRecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 200  # the most recent items a user is represented by
    dropout: float = 0.2
    learning_rate: float = 1e-3
    batch_size: int = 32  # sequences per step; the logits are [batch x max_len, catalog]
    max_epochs: int = 200
    # Epochs without a better validation NDCG@10 before stopping (RecBole's default; the
    # paper's code has none). An epoch over ml-latest-small costs ~45 s on a busy 2-core box.
    patience: int = 10
    seed: int = 0
    # torch's intra-op threads while fitting and encoding. Its default, a thread per core,
    # spins on a busy 2-core box: an epoch of the ring-walk test took 1.3-5.8 s against 0.1 s
    # on one thread (load 3-7, 2026-12-02).
    threads: int = 1


@dataclass(frozen=True)
class Training:
    """How a fit went: what early stopping chose and what it cost."""

    best_epochs: int  # epochs behind the weights kept: the best validation check
    epochs_run: int  # best_epochs + the epochs patience waited for a better one, or max_epochs
    validation_ndcg: float  # NDCG@10 of each user's last item at best_epochs


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(n_items + 1, cfg.hidden, padding_idx=PAD)  # shared with the output layer
        self.positions = nn.Embedding(cfg.max_len, cfg.hidden)
        # Glorot-initialised tables, as the paper's code: torch's N(0, 1) default, scaled by
        # sqrt(hidden), drowned the positions and began ~20 nats above a uniform guess (loss
        # 30 against ln 9,742 = 9.2); on ml-latest-small it reached validation NDCG@10 0.0005
        # after 2 epochs, Glorot 0.020 (2026-12-02).
        for table in (self.items, self.positions):
            nn.init.xavier_uniform_(table.weight)
        with torch.no_grad():
            self.items.weight[PAD].zero_()
        self.dropout = nn.Dropout(cfg.dropout)
        block = nn.TransformerEncoderLayer(
            cfg.hidden, cfg.heads, dim_feedforward=cfg.hidden, dropout=cfg.dropout,
            activation="relu", batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.hidden)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L] (left-padded, most recent last) -> hidden states [B, L, H]."""
        length = tokens.shape[1]
        real = (tokens != PAD).unsqueeze(-1)  # [B, L, 1]
        x = self.items(tokens) * math.sqrt(self.cfg.hidden) + self.positions.weight[-length:]  # [B, L, H]
        x = self.dropout(x) * real  # pads stay zero, as in the paper's timeline mask
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)  # [L, L]
        return self.norm(self.blocks(x, mask=causal, is_causal=True)) * real

    def item_vectors(self) -> torch.Tensor:
        """[N, H]: the output layer is the item embedding table (pad row dropped)."""
        return self.items.weight[1:]


def left_padded(sequences: list[np.ndarray], length: int) -> torch.Tensor:
    """Item columns per user -> tokens [U, length], the last `length` items right-aligned."""
    out = np.zeros((len(sequences), length), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-length:] + 1
        if len(tail):
            out[row, -len(tail):] = tail
    return torch.from_numpy(out)


def fit_sasrec(sequences: list[np.ndarray], n_items: int, cfg: SASRecConfig) -> tuple[SASRec, Training]:
    """Train on every user's sequence (item columns, oldest first); early-stop on each last item.

    Returns the model at its best validation check, and how training went."""
    with torch_threads(cfg.threads):
        return _fit(sequences, n_items, cfg)


def _fit(sequences: list[np.ndarray], n_items: int, cfg: SASRecConfig) -> tuple[SASRec, Training]:
    torch.manual_seed(cfg.seed)
    model = SASRec(n_items, cfg)
    # Training sees each sequence without its last item; that item is the validation target.
    train = [s[:-1] for s in sequences if len(s) >= 3]
    val_prefix, val_target = [s[:-1] for s in sequences if len(s) >= 3], [s[-1] for s in sequences if len(s) >= 3]
    length = min(cfg.max_len, max((len(s) - 1 for s in train), default=1))  # no step pays for unused pads
    inputs = left_padded([s[:-1] for s in train], length)  # [U, L]
    targets = left_padded([s[1:] for s in train], length) - 1  # [U, L] item column; -1 = pad
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.98))
    generator = torch.Generator().manual_seed(cfg.seed)
    best, best_state, best_epochs, epochs = -1.0, None, 0, 0
    while epochs < cfg.max_epochs and epochs - best_epochs < cfg.patience:
        started = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(train), generator=generator).split(cfg.batch_size):
            hidden = model(inputs[batch])  # [B, L, H]
            target = targets[batch]  # [B, L]
            at = target >= 0
            logits = hidden[at] @ model.item_vectors().T  # [P, N] over the whole catalog
            loss = nn.functional.cross_entropy(logits, target[at])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epochs += 1
        trained = time.perf_counter()
        score = next_item_ndcg(model, val_prefix, np.asarray(val_target), k=10)
        log.debug("sasrec epoch %d: loss %.4f, validation ndcg@10 %.4f (train %.1f s, validate %.1f s)",
                  epochs, loss.item(), score, trained - started, time.perf_counter() - trained)
        if score > best:
            best, best_state, best_epochs = score, {k: v.clone() for k, v in model.state_dict().items()}, epochs
    if best_state is not None:
        model.load_state_dict(best_state)
    training = Training(best_epochs=best_epochs, epochs_run=epochs, validation_ndcg=best)
    log.info("sasrec: %s", training)
    model.eval()
    return model, training


@torch.no_grad()
def user_vectors(model: SASRec, sequences: list[np.ndarray]) -> np.ndarray:
    """[U, H]: the hidden state after each user's most recent item (a user with none: zeros)."""
    model.eval()
    length = min(model.cfg.max_len, max((len(s) for s in sequences), default=1))
    with torch_threads(model.cfg.threads):
        vectors = [model(left_padded(chunk, length))[:, -1] for chunk in _chunks(sequences, 256)]
    return torch.cat(vectors).numpy() if vectors else np.zeros((0, model.cfg.hidden), np.float32)


@torch.no_grad()
def next_item_ndcg(model: SASRec, prefixes: list[np.ndarray], targets: np.ndarray, k: int) -> float:
    """Mean NDCG@k of each target among all items the prefix has not seen (one relevant item)."""
    if not len(targets):
        return 0.0
    users = torch.from_numpy(user_vectors(model, prefixes))  # [U, H]
    scores = users @ model.item_vectors().T  # [U, N]
    for row, prefix in enumerate(prefixes):
        seen = torch.from_numpy(prefix[prefix != targets[row]])
        scores[row, seen] = float("-inf")
    target_score = scores[torch.arange(len(targets)), torch.from_numpy(targets)]  # [U]
    rank = (scores > target_score.unsqueeze(1)).sum(dim=1)  # [U] 0-based
    gains = torch.where(rank < k, 1.0 / torch.log2(rank.float() + 2), torch.zeros(()))
    return float(gains.mean())


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
