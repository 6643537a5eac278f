"""Both top-K kernels (fused native, tiled torch) against a brute-force NumPy reference.

tests/test_native_kernel.py covers what is specific to the native kernel (its
build, fallback and portable variant).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from score_helpers import load_native_or_skip

from recbatch.score.kernel import merge_topk, topk


@pytest.fixture(params=["native", "torch"])
def kernel(request):
    if request.param == "native":
        load_native_or_skip()
    return request.param


def reference_topk(users, items, k, exclude=None, item_mask=None):
    """Full score matrix, filters as -inf, lexsort by (score desc, index asc)."""
    scores = (users @ items.T).astype(np.float32)  # same fp32 products as the kernel's sgemm
    if exclude is not None:
        scores[exclude.toarray().astype(bool)] = -np.inf
    if item_mask is not None:
        scores[:, ~item_mask] = -np.inf
    n_items = items.shape[0]
    out_idx = np.full((len(users), k), -1, dtype=np.int64)
    out_val = np.full((len(users), k), -np.inf, dtype=np.float32)
    for u, row in enumerate(scores):
        order = np.lexsort((np.arange(n_items), -row))
        order = order[np.isfinite(row[order])][:k]
        out_idx[u, : len(order)] = order
        out_val[u, : len(order)] = row[order]
    return out_idx, out_val


def random_case(seed, n_users, n_items, dim, density=0.05):
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    exclude = sp.random(n_users, n_items, density=density, format="csr", random_state=seed)
    return users, items, exclude


def assert_same(got, want):
    got_idx, got_val = got
    want_idx, want_val = want
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_allclose(got_val, want_val, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("user_block,item_tile", [(7, 13), (64, 1000), (1000, 50)])
def test_matches_reference_with_filters(user_block, item_tile, kernel):
    users, items, exclude = random_case(0, 60, 300, 8, density=0.1)
    mask = np.random.default_rng(1).random(300) > 0.2
    got = topk(users, items, 10, exclude=exclude, item_mask=mask, user_block=user_block, item_tile=item_tile,
               kernel=kernel)
    assert_same(got, reference_topk(users, items, 10, exclude, mask))


def test_ties_broken_by_lower_index(kernel):
    rng = np.random.default_rng(2)
    # Integer-valued vectors make many exact ties, including across tile borders.
    users = rng.integers(-1, 2, size=(40, 4)).astype(np.float32)
    items = rng.integers(-1, 2, size=(200, 4)).astype(np.float32)
    got = topk(users, items, 15, user_block=16, item_tile=32, kernel=kernel)
    want = reference_topk(users, items, 15)
    assert (np.diff(want[1], axis=1) == 0).any(), "the case must contain ties"
    assert_same(got, want)


def test_k_larger_than_eligible_pads_and_seen_everything_gives_empty(kernel):
    users, items, _ = random_case(3, 5, 20, 4)
    exclude = sp.lil_matrix((5, 20))
    exclude[0, :] = 1  # user 0 has seen every item
    exclude[1, :15] = 1  # user 1 has 5 eligible items
    mask = np.ones(20, dtype=bool)
    mask[17:] = False  # 3 unavailable items
    idx, val = topk(users, items, 30, exclude=exclude.tocsr(), item_mask=mask, item_tile=6, kernel=kernel)
    assert (idx[0] == -1).all() and np.isneginf(val[0]).all()
    assert (idx[1] >= 0).sum() == 2  # items 15, 16 (17..19 unavailable)
    assert set(idx[1][idx[1] >= 0]) == {15, 16}
    assert ((idx[2:] >= 0).sum(axis=1) == 17).all()
    assert_same((idx, val), reference_topk(users, items, 30, exclude.tocsr(), mask))


def test_unavailable_items_never_returned(kernel):
    users, items, _ = random_case(4, 30, 100, 6)
    mask = np.zeros(100, dtype=bool)
    mask[::3] = True
    idx, _ = topk(users, items, 10, item_mask=mask, item_tile=17, kernel=kernel)
    assert mask[idx[idx >= 0]].all()


def test_sharded_merge_equals_unsharded(kernel):
    users, items, exclude = random_case(5, 50, 310, 8)
    k = 12
    bounds = np.linspace(0, 310, 4).astype(int)  # 3 shards
    parts = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx, val = topk(users, items[lo:hi], k, exclude=exclude[:, lo:hi], item_tile=40, kernel=kernel)
        parts.append((np.where(idx >= 0, idx + lo, -1), val))
    assert_same(merge_topk(parts, k), reference_topk(users, items, k, exclude))


@pytest.mark.gpu
def test_cuda_fp16_agrees_with_fp32():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    users, items, exclude = random_case(6, 512, 5000, 64)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    want = reference_topk(users, items, 50, exclude)
    def overlap(idx):
        return np.mean([len(set(a) & set(b)) / 50 for a, b in zip(idx, want[0])])

    idx32, val32 = topk(users, items, 50, exclude=exclude, device="cuda", item_tile=2048)
    np.testing.assert_allclose(val32, want[1], atol=1e-4)  # cuBLAS sums in another order
    assert overlap(idx32) >= 0.999
    idx16, _ = topk(users, items, 50, exclude=exclude, device="cuda", precision="fp16", item_tile=2048)
    assert overlap(idx16) >= 0.99
    seen = exclude.toarray().astype(bool)
    assert not seen[np.arange(len(idx16))[:, None], idx16].any()  # filters hold in fp16 too
