"""What `ray job submit --working-dir .` uploads, with and without cluster/runtime_env.yaml's excludes.

    .venv/bin/python bench/bench_working_dir.py

Walks the checkout with Ray's own packaging code (the function `ray job submit`
uses), once with the runtime env's `excludes` and once with none (the
reference: what a bare `--working-dir .` would try to send, .gitignore aside),
and zips the excluded variant as Ray would. Prints files, bytes, the zip's
size and Ray's upload limit. No Ray runtime is started.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import yaml
from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE, _dir_travel, _get_excludes, create_package

REPO = Path(__file__).resolve().parents[1]


def walk(excludes: list[str]) -> tuple[int, int, float]:
    """(files, bytes, seconds) that Ray's packager would visit, .gitignore not consulted."""
    files, size = 0, 0

    def count(path: Path) -> None:
        nonlocal files, size
        if path.is_file():
            files += 1
            size += path.stat().st_size

    start = time.perf_counter()
    _dir_travel(REPO, [_get_excludes(REPO, excludes)], count, include_gitignore=False)
    return files, size, time.perf_counter() - start


def main() -> None:
    excludes = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())["excludes"]
    kept_files, kept_bytes, kept_s = walk(excludes)
    all_files, all_bytes, all_s = walk([])
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "working_dir.zip"
        start = time.perf_counter()
        create_package(str(REPO), package, include_gitignore=False, excludes=excludes)
        zip_s, zip_bytes = time.perf_counter() - start, package.stat().st_size
    mib = 1 << 20
    print(f"{'':28}{'files':>10}{'MiB':>12}{'walk s':>9}")
    print(f"{'with runtime_env excludes':28}{kept_files:>10,}{kept_bytes / mib:>12.1f}{kept_s:>9.2f}")
    print(f"{'no excludes (reference)':28}{all_files:>10,}{all_bytes / mib:>12.1f}{all_s:>9.2f}")
    print(f"ratio: {kept_bytes / all_bytes:.5f} of the bytes, {kept_files / all_files:.4f} of the files")
    print(f"zip as uploaded: {zip_bytes / mib:.2f} MiB in {zip_s:.2f} s; "
          f"Ray's limit {GCS_STORAGE_MAX_SIZE / mib:.0f} MiB; reference is "
          f"{all_bytes / GCS_STORAGE_MAX_SIZE:.1f}x the limit before compression")


if __name__ == "__main__":
    main()
