"""The fused native top-K kernel: exact against a float64 reference, both builds, and the fallback.

Shapes are picked to hit the kernel's edges: item counts and user counts that
are not multiples of its 32-item / 8-user (portable: 3-user) micro-blocks, dims that are not
multiples of 16, several user ranges on several threads, buffers that fill
and compact many times (small K, many items), and exact ties at the K-th
place (duplicate item vectors and integer vectors).
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from score_helpers import load_native_or_skip

from recbatch.score import native
from recbatch.score.kernel import kernel_used, topk

TOL = 1e-5  # fp32 sums of O(1) terms, against float64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="module", params=["default", "portable"])
def build(request, cache_dir):
    """Both variants: the AVX-512 intrinsics one (where the CPU has it) and the plain-C one."""
    build = native.NativeBuild(cache_dir=cache_dir, portable=request.param == "portable")
    kernel = load_native_or_skip(build)
    if build.portable:
        assert not kernel.avx512
    return build


def reference(users, items, k, exclude=None, item_mask=None):
    """float64 scores; order by score desc, then index asc; filtered items never listed."""
    scores = users.astype(np.float64) @ items.astype(np.float64).T
    if exclude is not None:
        scores[exclude.toarray() != 0] = -np.inf
    if item_mask is not None:
        scores[:, ~item_mask] = -np.inf
    idx = np.full((len(users), k), -1, dtype=np.int64)
    val = np.full((len(users), k), -np.inf)
    for u, row in enumerate(scores):
        order = np.lexsort((np.arange(len(row)), -row))
        order = order[np.isfinite(row[order])][:k]
        idx[u, : len(order)] = order
        val[u, : len(order)] = row[order]
    return idx, val, scores


def assert_matches(got, want):
    """Scores equal within TOL at every rank; indices equal wherever the reference has no near-tie.

    Where the reference's scores come within TOL of each other the fp32 order
    is not defined by the data, so there the listed item must only be an
    eligible one with the listed score.
    """
    got_idx, got_val = got
    want_idx, want_val, scores = want
    assert got_idx.shape == want_idx.shape and got_idx.dtype == np.int64 and got_val.dtype == np.float32
    np.testing.assert_array_equal(got_idx < 0, want_idx < 0)  # same list lengths
    np.testing.assert_array_equal(np.isneginf(got_val), got_idx < 0)  # padding is -1 with -inf
    real = want_idx >= 0
    np.testing.assert_allclose(got_val[real], want_val[real], rtol=0, atol=TOL)
    for u in range(len(got_idx)):
        n = int(real[u].sum())
        listed = got_idx[u, :n]
        assert len(set(listed)) == n, "an item listed twice"
        np.testing.assert_allclose(scores[u, listed], got_val[u, :n], atol=TOL)  # eligible (finite) and its score
        below = np.sort(scores[u][np.isfinite(scores[u])])[::-1][n] if n < np.isfinite(scores[u]).sum() else -np.inf
        ranks = np.append(want_val[u, :n], below)
        gaps = np.diff(ranks)
        clear = np.ones(n, dtype=bool)
        clear[:-1] &= -gaps[:-1] > 2 * TOL  # apart from the next one
        clear[1:] &= -gaps[:-1] > 2 * TOL  # apart from the previous one
        clear[-1:] &= -gaps[-1:] > 2 * TOL  # apart from the first item left out
        np.testing.assert_array_equal(got_idx[u, :n][clear], want_idx[u, :n][clear])


def random_case(seed, n_users, n_items, dim, n_duplicates=0):
    """Unit-norm rows (scores in [-1, 1]); the last n_duplicates items copy earlier ones (exact ties)."""
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, dim)).astype(np.float32)
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    if n_duplicates:
        items[-n_duplicates:] = items[rng.integers(0, n_items - n_duplicates, n_duplicates)]
    exclude = sp.random(n_users, n_items, density=0.05, format="csr", random_state=seed, dtype=np.float32)
    return users, items, exclude


@pytest.mark.parametrize(
    "n_users,n_items,dim,k",
    [
        (1, 1, 3, 1),  # one of everything
        (3, 7, 3, 10),  # fewer items than K and than a micro-block
        (9, 33, 64, 5),  # one item past a micro-block, one user past a user block
        (21, 1000, 100, 7),  # dim not a multiple of 16; K=7: the buffer (64) fills and compacts often
        (13, 1100, 64, 100),  # more items than an L2 panel at d=64 (1024)
        (40, 2500, 17, 1),  # K=1
    ],
)
def test_matches_float64_reference(build, n_users, n_items, dim, k):
    users, items, exclude = random_case(n_users * n_items, n_users, n_items, dim, n_duplicates=n_items // 10)
    got = topk(users, items, k, exclude=exclude, kernel="native", native_build=build)
    assert_matches(got, reference(users, items, k, exclude))


def test_exact_ties_lower_index_wins(build):
    """Integer vectors: every fp32 sum is exact, so ties are exact and the order is fully defined."""
    rng = np.random.default_rng(7)
    for dim in (3, 64, 100):
        users = rng.integers(-1, 2, size=(19, dim)).astype(np.float32)
        items = rng.integers(-1, 2, size=(1500, dim)).astype(np.float32)
        exclude = sp.random(19, 1500, density=0.1, format="csr", random_state=dim, dtype=np.float32)
        for k in (1, 9, 100):
            idx, val = topk(users, items, k, exclude=exclude, kernel="native", native_build=build, user_block=8)
            want_idx, want_val, scores = reference(users, items, k, exclude)
            ranked = -np.sort(-scores, axis=1)
            assert (ranked[:, k - 1] == ranked[:, k]).any(), "the case must contain ties across the K-th place"
            np.testing.assert_array_equal(idx, want_idx)
            np.testing.assert_array_equal(val, want_val.astype(np.float32))


def test_filters_padding_and_empty_users(build):
    users, items, _ = random_case(3, 11, 70, 5)
    exclude = sp.lil_matrix((11, 70))
    exclude[0, :] = 1  # user 0 has seen every item
    exclude[1, :60] = 1  # user 1 has 10 items left, 4 of them unavailable
    exclude[2, ::2] = 1
    mask = np.ones(70, dtype=bool)
    mask[[3, 31, 32, 33, 62, 63, 64, 69]] = False  # unavailable, around micro-block borders
    exclude = exclude.tocsr()
    idx, val = topk(users, items, 40, exclude=exclude, item_mask=mask, kernel="native", native_build=build)
    assert (idx[0] == -1).all() and np.isneginf(val[0]).all()
    assert set(idx[1][idx[1] >= 0]) == {60, 61, 65, 66, 67, 68}
    assert mask[idx[idx >= 0]].all()
    assert_matches((idx, val), reference(users, items, 40, exclude, mask))


def test_threads_and_user_ranges(build):
    """Several C calls on several threads, ranges not aligned to the user micro-block."""
    users, items, exclude = random_case(11, 203, 517, 24, n_duplicates=40)
    want = reference(users, items, 12, exclude)
    for user_block, threads in ((5, 3), (64, 2), (1000, 1)):
        got = topk(users, items, 12, exclude=exclude, kernel="native", native_build=build,
                   user_block=user_block, threads=threads)
        assert_matches(got, want)


def test_native_agrees_with_torch_kernel(build):
    users, items, exclude = random_case(12, 300, 3000, 64, n_duplicates=300)
    mask = np.random.default_rng(0).random(3000) > 0.1
    fused = topk(users, items, 50, exclude=exclude, item_mask=mask, kernel="native", native_build=build, threads=2)
    tiled = topk(users, items, 50, exclude=exclude, item_mask=mask, kernel="torch")
    np.testing.assert_allclose(fused[1], tiled[1], atol=TOL)
    assert np.mean(fused[0] == tiled[0]) > 0.999  # only fp32 near-ties may differ
    assert_matches(fused, reference(users, items, 50, exclude, mask))


def test_unsorted_exclusions_are_honoured_and_left_unchanged(build):
    users, items, _ = random_case(13, 4, 200, 8)
    rows = np.repeat(np.arange(4), 3)
    cols = np.array([150, 20, 90] * 4)
    exclude = sp.csr_matrix((np.ones(12), (rows, cols)), shape=(4, 200))
    exclude.indices = exclude.indices.copy()
    exclude.indices[:3] = [150, 20, 90]  # scramble row 0's order
    exclude.has_sorted_indices = False
    before = exclude.indices.copy()
    idx, _ = topk(users, items, 200, exclude=exclude, kernel="native", native_build=build)
    assert not np.isin(idx, [20, 90, 150]).any()
    np.testing.assert_array_equal(exclude.indices, before)  # the caller's matrix is not sorted in place


# --------------------------------------------------------------------------- build, cache, fallback


def test_build_is_cached_atomically_per_variant(cache_dir, build):
    assert kernel_used("auto", "cpu", build) == "native" and kernel_used("torch", "cpu", build) == "torch"
    files = sorted(p.name for p in Path(cache_dir).iterdir())
    assert all(name.startswith("native_topk-") and name.endswith(".so") for name in files), files  # no temp files
    assert len([f for f in files if f.endswith("-portable.so") == build.portable]) == 1


def test_missing_compiler_auto_warns_once_and_falls_back(caplog, tmp_path):
    users, items, exclude = random_case(14, 30, 200, 8)
    build = native.NativeBuild(compiler=str(tmp_path / "no-such-cc"), cache_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="recbatch.score.native"):
        got = topk(users, items, 10, exclude=exclude, native_build=build)  # kernel="auto"
        again = topk(users, items, 10, exclude=exclude, native_build=build)
    warnings = [r for r in caplog.records if "native top-K kernel unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "no-such-cc" in warnings[0].getMessage()
    assert_matches(got, reference(users, items, 10, exclude))
    np.testing.assert_array_equal(again[0], got[0])
    with pytest.raises(native.NativeKernelUnavailable, match="no C compiler found"):
        topk(users, items, 10, kernel="native", native_build=build)
    assert kernel_used("auto", "cpu", build) == "torch"  # what the scoring stage records in its manifest


def test_failing_compiler_reports_its_stderr(caplog, tmp_path):
    cc = tmp_path / "broken-cc"
    cc.write_text("#!/bin/sh\necho 'broken-cc: error: cannot do that' >&2\nexit 3\n")
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)
    build = native.NativeBuild(compiler=str(cc), cache_dir=str(tmp_path / "cache"))
    users, items, _ = random_case(15, 5, 40, 4)
    with caplog.at_level(logging.WARNING, logger="recbatch.score.native"):
        idx, _ = topk(users, items, 3, native_build=build)
    assert "cannot do that" in caplog.text and "exit 3" in caplog.text
    np.testing.assert_array_equal(idx, reference(users, items, 3)[0])
    with pytest.raises(native.NativeKernelUnavailable, match="cannot do that"):
        topk(users, items, 3, kernel="native", native_build=build)
    assert not any(p.suffix == ".tmp" for p in (tmp_path / "cache").iterdir())  # no half-written library left


def test_native_is_cpu_only_and_kernel_name_checked():
    users, items, _ = random_case(16, 2, 10, 4)
    with pytest.raises(ValueError, match="CPU only"):
        topk(users, items, 3, kernel="native", device="cuda")
    with pytest.raises(ValueError, match="kernel must be"):
        topk(users, items, 3, kernel="fast")
