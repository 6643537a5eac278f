"""Training objectives for the two towers: in-batch sampled softmax (and a BCE variant),
and the full softmax over the catalog that the causal objective uses when it fits.

Each row i of a batch is (user_i, positive item_i). The other rows' positives
serve as row i's negatives, optionally plus a few items drawn uniformly from
the whole catalog (mixed negative sampling, Yang et al. WWW 2020), which
keeps rarely-interacted items from never being pushed away.

In-batch negatives are drawn in proportion to popularity, so a plain softmax
over them learns "popular items are bad". The logQ correction (Yi et al.,
RecSys 2019) subtracts the log of each candidate's sampling probability from
its logit, which makes the sampled softmax an unbiased estimate of the full
softmax. With the mixture proposal the expected number of copies of item j
among the candidates is ``B * p_j + N_uniform / M``, and that is what we use.

"Accidental hits" are candidates that are the row's own positive item
appearing in another row (popular items do): they would be scored as
negatives while being positives, so their logits are masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_MASKED = -1e9  # logit of a masked candidate: exp() underflows to exactly 0


def candidate_log_q(
    item_probability: torch.Tensor,  # [N] p_j: each candidate item's share of training interactions
    batch_size: int,
    extra_negatives: int,
    num_items: int,
) -> torch.Tensor:
    """log of each candidate's expected count under the in-batch + uniform mixture: [N]."""
    expected = batch_size * item_probability + extra_negatives / max(num_items, 1)
    return torch.log(expected.clamp(min=1e-12))


def _logits(
    users: torch.Tensor,  # [B, D] unit vectors
    candidates: torch.Tensor,  # [N, D] unit vectors; rows 0..B-1 are the positives, B.. extra negatives
    candidate_ids: torch.Tensor,  # [N] item ids (any integer code) for accidental-hit detection
    log_q: torch.Tensor | None,  # [N] or None
    temperature: float,
) -> torch.Tensor:
    B = users.shape[0]
    logits = users.float() @ candidates.float().T / temperature  # [B, N]
    if log_q is not None:
        logits = logits - log_q.float().unsqueeze(0)
    same_item = candidate_ids.unsqueeze(0) == candidate_ids[:B].unsqueeze(1)  # [B, N]
    own = torch.zeros_like(same_item)
    own[:, :B] = torch.eye(B, dtype=torch.bool, device=users.device)
    return logits.masked_fill(same_item & ~own, _MASKED)  # accidental hits removed


def sampled_softmax_loss(
    users: torch.Tensor,
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor,
    log_q: torch.Tensor | None = None,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Mean cross-entropy of each user's positive against all other candidates (scalar)."""
    logits = _logits(users, candidates, candidate_ids, log_q, temperature)  # [B, N]
    target = torch.arange(users.shape[0], device=users.device)
    return F.cross_entropy(logits, target)


def bce_loss(
    users: torch.Tensor,
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor,
    log_q: torch.Tensor | None = None,
    temperature: float = 0.05,
) -> torch.Tensor:
    """Pointwise variant: each positive is a 1, each non-hit candidate a 0.

    Positive and negative terms are averaged separately and summed, so the
    B positives are not drowned by the B * (N - 1) negatives.
    """
    logits = _logits(users, candidates, candidate_ids, log_q, temperature)  # [B, N]
    B, N = logits.shape
    positive = torch.zeros(B, N, dtype=torch.bool, device=logits.device)
    positive[:, :B] = torch.eye(B, dtype=torch.bool, device=logits.device)
    negative = (logits > _MASKED / 2) & ~positive
    per_pair = F.binary_cross_entropy_with_logits(logits, positive.float(), reduction="none")  # [B, N]
    pos_loss = per_pair[positive].mean()
    neg_loss = per_pair[negative].mean() if negative.any() else logits.new_zeros(())
    return pos_loss + neg_loss


def full_softmax_loss(
    users: torch.Tensor,  # [P, D] unit vectors, one per predicting position
    items: torch.Tensor,  # [M, D] unit vectors of the whole catalog
    targets: torch.Tensor,  # [P] catalog rows
    temperature: float = 0.05,
) -> torch.Tensor:
    """Mean cross-entropy of each position's next item against every item (scalar).

    Nothing is sampled, so there is nothing to correct: no logQ, no accidental hits.
    """
    logits = users.float() @ items.float().T / temperature  # [P, M]
    return F.cross_entropy(logits, targets)


def two_tower_loss(kind: str, *args, **kwargs) -> torch.Tensor:
    """Dispatch on ``model.loss`` ("softmax" or "bce")."""
    if kind == "softmax":
        return sampled_softmax_loss(*args, **kwargs)
    if kind == "bce":
        return bce_loss(*args, **kwargs)
    raise ValueError(f"unknown loss {kind!r}")
