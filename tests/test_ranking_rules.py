"""One ranking rule: only score/ranking.py (and the bare-kernel benchmarks) call the top-K kernel,
and a precomputed score block is cut exactly as the kernel cuts the same scores."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa

from recbatch.score.ranking import rank, rank_scores

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "recbatch.score.kernel"
KERNELS = {KERNEL, "recbatch.score.torch_kernel"}  # the contract and dispatch; the torch implementation
RANKING_FUNCTIONS = {"topk", "topk_of_scores", "select_topk"}  # what ranks; merge_topk and kernel_used do not
# The one caller in the product, the kernel dispatching to its torch implementation, and the
# benchmarks that measure the bare kernel itself.
MAY_RANK = {"recbatch/score/ranking.py", "recbatch/score/kernel.py", "bench/bench_score.py", "bench/bench_sizing.py"}


def kernel_imports(path: Path) -> list[str]:
    """What `path` takes from the kernel module that could rank (a name, or the module itself)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name in KERNELS]
        elif isinstance(node, ast.ImportFrom):
            base = module.split(".")[: -node.level] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if source in KERNELS:
                found += [alias.name for alias in node.names if alias.name in RANKING_FUNCTIONS | {"*"}]
            elif source == "recbatch.score":
                found += [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in KERNELS]
    return found


def test_only_the_ranking_module_imports_the_kernel_to_rank():
    files = [p for folder in ("recbatch", "bench") for p in sorted((ROOT / folder).rglob("*.py"))]
    callers = {str(p.relative_to(ROOT)): kernel_imports(p) for p in files}
    callers = {path: names for path, names in callers.items() if names}
    assert "recbatch/score/ranking.py" in callers  # the scan sees an import where there is one
    assert set(callers) <= MAY_RANK, {path: names for path, names in callers.items() if path not in MAY_RANK}


def test_the_scan_sees_every_form_of_import(tmp_path, monkeypatch):
    forms = {
        "a.py": "from recbatch.score.kernel import topk\n",
        "b.py": "import recbatch.score.kernel\n",
        "c.py": "from recbatch.score import kernel\n",
        "score/d.py": "from .kernel import select_topk\n",
        "e.py": "from recbatch.score.kernel import merge_topk, kernel_used\n",  # merging, not ranking
        "f.py": "from recbatch.score import torch_kernel\n",
        "g.py": "from recbatch.score.torch_kernel import topk_of_scores, torch_threads\n",
    }
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    for name, text in forms.items():
        (tmp_path / "recbatch" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "recbatch" / name).write_text(text)
    found = {name: kernel_imports(tmp_path / "recbatch" / name) for name in forms}
    assert found == {"a.py": ["topk"], "b.py": [KERNEL], "c.py": ["recbatch.score.kernel"],
                     "score/d.py": ["select_topk"], "e.py": [], "f.py": ["recbatch.score.torch_kernel"],
                     "g.py": ["topk_of_scores"]}


def test_a_score_block_is_ranked_as_the_kernel_ranks_the_same_scores():
    """`rank_scores` (baselines whose scores are no inner product) against `rank` on users x items:
    the same eligibility, per-user exclusions, seen switch, tie rule (small integers: many ties) and padding.
    (The baselines' own score-block ranking, before it moved here, picked the right K but left ties inside
    a list in ``torch.topk``'s order, not by item id: this test fails on it.)"""
    rng = np.random.default_rng(0)
    users = rng.integers(-2, 3, size=(40, 4)).astype(np.float32)  # [B, D]
    items = rng.integers(-2, 3, size=(30, 4)).astype(np.float32)  # [N, D]
    eligible = rng.random(30) > 0.2
    seen = pa.array([sorted(rng.choice(30, size=rng.integers(0, 8), replace=False).tolist()) for _ in range(40)],
                    pa.list_(pa.int64()))
    blocked = pa.array([sorted(rng.choice(30, size=rng.integers(0, 3), replace=False).tolist()) for _ in range(40)],
                       pa.list_(pa.int64()))
    for filter_seen in (True, False):
        for k in (5, 30):  # 30: more than any user may receive, so the lists are padded
            expected = rank(users, items, eligible, seen, blocked, k=k, filter_seen=filter_seen, kernel="torch")
            got = rank_scores(users @ items.T, eligible, seen, blocked, k=k, filter_seen=filter_seen)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
    assert (expected[0] == -1).any()
