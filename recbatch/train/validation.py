"""Full-ranking validation during training: Recall@K and NDCG@K over the whole catalog.

Same definitions as ``recbatch.eval.metrics`` (recall's denominator is
min(K, |targets|); binary-gain NDCG), computed in torch on the worker so
training can report them without writing a recommendations run. Items the
user saw in training are excluded from the ranking, as in the scoring stage.

The model is passed as a callable ``forward(kind, **inputs)`` so the same code
scores a live DeepSpeed engine and a loaded inference artifact, which is how
the tests check that an exported artifact reproduces the engine's scores.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from recbatch.train.examples import CatalogTensors, ValidationTensors

Forward = Callable[..., torch.Tensor]


@torch.no_grad()
def pooled_catalog(forward: Forward, catalog: CatalogTensors, rows: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor:
    """Mean-pooled encoder output for the given catalog rows: [R] -> [R, H] float32 on `device`."""
    out = []
    for start in range(0, len(rows), batch):
        r = rows[start : start + batch]
        out.append(
            forward(
                "pooled",
                input_ids=catalog.input_ids[r].to(device),
                attention_mask=catalog.attention_mask[r].to(device),
            ).float()
        )
    return torch.cat(out) if out else torch.zeros(0, device=device)


@torch.no_grad()
def item_vectors(forward: Forward, pooled: torch.Tensor, catalog: CatalogTensors, batch: int = 4096) -> torch.Tensor:
    """Unit item vectors for the whole catalog from the pooled cache: [M, H] -> [M, D]."""
    device = pooled.device
    chunks = [
        forward("items_from_pooled", pooled=pooled[s : s + batch], id_index=catalog.id_index[s : s + batch].to(device))
        for s in range(0, catalog.size, batch)
    ]
    return torch.cat(chunks).float()


def history_inputs(rows: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Catalog rows [B, L] (PAD = -1) -> (item vectors [B, L, D], mask [B, L] bool)."""
    mask = rows >= 0
    vectors = items[rows.clamp(min=0)] * mask.unsqueeze(-1)
    return vectors, mask


@torch.no_grad()
def full_ranking_metrics(
    forward: Forward, items: torch.Tensor, validation: ValidationTensors, k: int, batch: int = 512
) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over validation users, ranking all M items (seen excluded)."""
    device = items.device
    users = validation.history.shape[0]
    if users == 0:
        return {f"recall@{k}": 0.0, f"ndcg@{k}": 0.0}
    k_eff = min(k, items.shape[0])
    discounts = 1.0 / torch.log2(torch.arange(2, k_eff + 2, device=device, dtype=torch.float64))  # [k]
    recall_sum = ndcg_sum = 0.0
    for s in range(0, users, batch):
        sl = slice(s, s + batch)
        hist, mask = history_inputs(validation.history[sl].to(device), items)
        u = forward(
            "users",
            history=hist,
            history_mask=mask,
            user_categorical=validation.user_cat[sl].to(device),
            user_numeric=validation.user_num[sl].to(device),
        ).float()  # [b, D]
        scores = u @ items.T  # [b, M]
        seen = validation.seen[sl].to(device)  # [b, S]
        blocked = torch.zeros(scores.shape[0], scores.shape[1] + 1, dtype=torch.bool, device=device)  # +1: a sink for PAD
        blocked.scatter_(1, torch.where(seen >= 0, seen, scores.shape[1]), True)
        scores = scores.masked_fill(blocked[:, :-1], -math.inf)
        top = scores.topk(k_eff, dim=1).indices  # [b, k]
        targets = validation.targets[sl].to(device)  # [b, T], PAD never equals a rank's item row
        hits = (top.unsqueeze(-1) == targets.unsqueeze(1)).any(-1)  # [b, k]
        n_targets = (targets >= 0).sum(1).clamp(max=k_eff).to(torch.float64)  # [b]
        recall_sum += (hits.sum(1) / n_targets.clamp(min=1)).sum().item()
        idcg = torch.cumsum(discounts, 0)[(n_targets - 1).clamp(min=0).long()]  # [b]
        ndcg_sum += ((hits.to(torch.float64) * discounts).sum(1) / idcg).sum().item()
    return {f"recall@{k}": recall_sum / users, f"ndcg@{k}": ndcg_sum / users}
