"""Loss maths on hand-made tensors: logQ correction, accidental hits, extra negatives, BCE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from recbatch.model.loss import bce_loss, candidate_log_q, sampled_softmax_loss, two_tower_loss


def _unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_softmax_matches_hand_computation():
    users = _unit([[1.0, 0.0], [0.0, 1.0]])
    items = _unit([[1.0, 0.0], [1.0, 1.0]])
    ids = torch.tensor([10, 11])
    loss = sampled_softmax_loss(users, items, ids, temperature=1.0)
    s = 1 / math.sqrt(2)
    # row 0: logits [1, s], target 0; row 1: logits [0, s], target 1
    expected = (-(1 - math.log(math.exp(1) + math.exp(s))) - (s - math.log(1 + math.exp(s)))) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_logq_subtracts_log_probability_from_every_column():
    users = _unit([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    items = _unit([[1.0, 0.2], [0.1, 1.0], [0.5, 0.5]])
    ids = torch.tensor([0, 1, 2])
    log_q = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    got = sampled_softmax_loss(users, items, ids, log_q=log_q, temperature=0.5)
    logits = users @ items.T / 0.5 - log_q
    expected = F.cross_entropy(logits, torch.arange(3))
    assert torch.allclose(got, expected)
    plain = sampled_softmax_loss(users, items, ids, temperature=0.5)
    assert not torch.allclose(got, plain)


def test_logq_lowers_the_pull_of_popular_negatives():
    # The popular item (column 1) is row 0's negative: correcting for its high
    # sampling probability lowers its logit, so row 0's loss drops.
    users = _unit([[1.0, 0.0], [0.0, 1.0]])
    items = _unit([[1.0, 0.0], [0.6, 0.8]])
    ids = torch.tensor([0, 1])
    log_q = torch.log(torch.tensor([0.01, 0.9]))
    row0 = lambda lq: sampled_softmax_loss(users[:1], items, ids, log_q=lq, temperature=0.1)
    assert row0(log_q) < row0(None)


def test_accidental_hit_is_masked_not_scored_as_negative():
    # rows 0 and 2 share item 7: for row 0, column 2 is its own positive again
    users = _unit([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    items = _unit([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    ids = torch.tensor([7, 8, 7])
    got = sampled_softmax_loss(users, items, ids, temperature=0.1)
    logits = users @ items.T / 0.1
    per_row = []
    for i, keep in enumerate([[0, 1], [0, 1, 2], [1, 2]]):
        row = logits[i, keep]
        per_row.append(-(logits[i, i] - torch.logsumexp(row, 0)))
    assert torch.allclose(got, torch.stack(per_row).mean(), atol=1e-5)
    # without masking, row 0 would see an identical "negative" and pay log 2 at least
    unmasked = F.cross_entropy(logits, torch.arange(3))
    assert got < unmasked


def test_extra_uniform_negatives_add_columns_and_mask_hits():
    users = _unit([[1.0, 0.0], [0.0, 1.0]])
    candidates = _unit([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.0]])  # 2 positives + 2 uniform
    ids = torch.tensor([3, 4, 5, 3])  # the last uniform negative is row 0's own item
    got = sampled_softmax_loss(users, candidates, ids, temperature=1.0)
    logits = users @ candidates.T
    row0 = -(logits[0, 0] - torch.logsumexp(logits[0, [0, 1, 2]], 0))
    row1 = -(logits[1, 1] - torch.logsumexp(logits[1, [0, 1, 2, 3]], 0))
    assert torch.allclose(got, (row0 + row1) / 2, atol=1e-5)


def test_candidate_log_q_is_the_mixture_expected_count():
    p = torch.tensor([0.5, 0.25, 0.25])
    got = candidate_log_q(p, batch_size=4, extra_negatives=6, num_items=3)
    assert torch.allclose(got, torch.log(torch.tensor([4 * 0.5 + 2, 4 * 0.25 + 2, 4 * 0.25 + 2])))


def test_bce_averages_positive_and_negative_terms():
    users = _unit([[1.0, 0.0], [0.0, 1.0]])
    items = _unit([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([1, 2])
    got = bce_loss(users, items, ids, temperature=1.0)
    pos = F.softplus(-torch.tensor(1.0))  # -log sigmoid(1)
    neg = F.softplus(torch.tensor(0.0))  # -log(1 - sigmoid(0))
    assert torch.allclose(got, pos + neg, atol=1e-6)
    assert torch.allclose(two_tower_loss("bce", users, items, ids, temperature=1.0), got)


def test_gradients_flow_to_both_towers():
    users = torch.randn(4, 8, requires_grad=True)
    items = torch.randn(4, 8, requires_grad=True)
    loss = sampled_softmax_loss(F.normalize(users, dim=-1), F.normalize(items, dim=-1), torch.arange(4))
    loss.backward()
    assert users.grad.abs().sum() > 0 and items.grad.abs().sum() > 0
