"""The fused native top-K kernel: built from ``native_topk.c`` on first use, called through ctypes.

Why it beats the torch kernel: the torch kernel writes each score tile to
memory and reads it back to compare it with the running thresholds, and that
pass plus the survivor bookkeeping cost more than the matrix product itself.
The C kernel computes a block of 8 users (3 without AVX-512) x 32 items of
scores in registers, compares it with the users' thresholds while it is still
there, and touches memory only for the few scores that beat them. See the C
file for the layout, the loop order and the tie rule (among equal scores the
lower index wins).

Memory: a packed copy of the items, plus per running user block its users'
candidate buffers (user_block x 4K x 8 bytes: 3.2 MB at 1024 users, K=100).

Build: the system C compiler (``$CC``, Python's configured ``CC``, then
``cc``/``gcc``/``clang``) with ``-O3 -march=native -shared -fPIC``, into a
cache directory (default ``~/.cache/recbatch/kernels``) under a name that
hashes the source, the flags, the compiler's version and the CPU (machine,
model and feature flags), so a home directory shared by different nodes never
loads a library built for another CPU. The library is compiled to a temporary
name and renamed into place, so concurrent processes (Ray actors) never load a
half-written file. Each process builds or loads it once per ``NativeBuild``;
a failure is remembered too, so the warning is logged once.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_topk.c")
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC")
PORTABLE_FLAG = "-DRECBATCH_PORTABLE"  # plain-C micro-kernel even where AVX-512 is available
DEFAULT_CACHE_DIR = Path("~/.cache/recbatch/kernels")
# Items per L2 panel = this many bytes of packed items (1024 items at d=64; a 1 MiB L2 keeps
# the panel and a block of users).
PANEL_BYTES = 256 * 1024
ALIGN = 64  # bytes: one cache line, one zmm load


class NativeKernelUnavailable(RuntimeError):
    """The native kernel could not be built or loaded (no compiler, compile error, unwritable cache)."""


@dataclass(frozen=True)
class NativeBuild:
    """How to build the kernel. The defaults suit production; tests vary them."""

    compiler: str | None = None  # a path or a name on PATH; None: $CC, sysconfig CC, cc, gcc, clang
    cache_dir: str | None = None  # None: ~/.cache/recbatch/kernels
    portable: bool = False  # build the plain-C micro-kernel (what non-AVX-512 CPUs get)


class NativeKernel:
    """A loaded build of the kernel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))  # CDLL calls release the GIL: user blocks run in parallel
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.rb_topk_range.argtypes = [ptr, i64, ptr, i64, ptr, ptr, i64, i64, i64, i64, ptr, ptr]
        lib.rb_topk_range.restype = ctypes.c_int
        self._lib = lib
        self.avx512 = bool(lib.rb_variant())
        self.micro_items = int(lib.rb_micro_items())

    def topk(
        self,
        users: np.ndarray,  # [U, D] float32, C order
        items: np.ndarray,  # [N, D] float32, C order
        k: int,
        exclude: sp.csr_matrix | None,  # [U, N]
        user_block: int,
        threads: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item rows per user: ([U, k] int64 -1 padded, [U, k] float32 -inf padded)."""
        n_users, dim = users.shape
        packed = self.pack_items(items)
        out_idx = np.empty((n_users, k), dtype=np.int64)
        out_val = np.empty((n_users, k), dtype=np.float32)
        indptr = indices = None
        if exclude is not None and exclude.nnz:
            exclude = exclude.copy() if not exclude.has_sorted_indices else exclude
            exclude.sort_indices()  # the kernel walks each row's exclusions in ascending order
            indptr = np.ascontiguousarray(exclude.indptr, dtype=np.int64)
            indices = np.ascontiguousarray(exclude.indices, dtype=np.int64)
        panel_items = max(self.micro_items, PANEL_BYTES // (4 * dim) // self.micro_items * self.micro_items)

        def score_range(start: int) -> None:
            stop = min(start + user_block, n_users)
            rc = self._lib.rb_topk_range(
                users.ctypes.data, dim, packed.ctypes.data, len(items),
                None if indptr is None else indptr.ctypes.data, None if indices is None else indices.ctypes.data,
                k, start, stop, panel_items, out_idx.ctypes.data, out_val.ctypes.data,
            )
            if rc == -2:
                raise ValueError(f"the native top-K kernel takes fewer than 2**31 items, got {len(items)}")
            if rc != 0:
                raise MemoryError(f"native top-K: out of memory scoring users {start}..{stop}")

        starts = range(0, n_users, user_block)
        if threads <= 1 or len(starts) <= 1:
            for start in starts:
                score_range(start)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(score_range, starts))  # list(): re-raise any block's error
        return out_idx, out_val

    def pack_items(self, items: np.ndarray) -> np.ndarray:
        """[N, D] -> [ceil(N / MI), D, MI]: each micro-panel transposed, zero padded, cache-line aligned."""
        n, dim = items.shape
        width = self.micro_items
        n_panels = -(-n // width)
        padded = np.zeros((n_panels * width, dim), dtype=np.float32)
        padded[:n] = items
        packed = _aligned_empty((n_panels, dim, width))
        packed[...] = padded.reshape(n_panels, width, dim).transpose(0, 2, 1)
        return packed


def _aligned_empty(shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    raw = np.empty(size + ALIGN // 4, dtype=np.float32)
    skip = (-raw.ctypes.data % ALIGN) // 4
    return raw[skip : skip + size].reshape(shape)


# --------------------------------------------------------------------------- build and load

_loaded: dict[NativeBuild, NativeKernel | NativeKernelUnavailable] = {}
_lock = threading.Lock()


def load(build: NativeBuild = NativeBuild()) -> NativeKernel:
    """The kernel for `build`, compiled on first use; raises NativeKernelUnavailable (remembered)."""
    with _lock:
        if build not in _loaded:
            try:
                _loaded[build] = NativeKernel(_build_library(build))
            except NativeKernelUnavailable as err:
                _loaded[build] = err
        result = _loaded[build]
    if isinstance(result, NativeKernelUnavailable):
        raise result
    return result


def expected_here() -> bool:
    """Whether the kernel must build on this machine: Linux on x86-64 with a C compiler.

    That is every CI runner and production CPU node, where a build failure is a
    bug that would cost 2-3x in scoring time behind a silent fallback; so the
    tests fail there instead of skipping (elsewhere the torch fallback is the design).
    """
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        _find_compiler(None)
    except NativeKernelUnavailable:
        return False
    return True


def load_or_warn(build: NativeBuild = NativeBuild()) -> NativeKernel | None:
    """The kernel, or None after one logged warning per process and build."""
    with _lock:
        first_failure = build not in _loaded
    try:
        return load(build)
    except NativeKernelUnavailable as err:
        if first_failure:
            log.warning("native top-K kernel unavailable, using the torch kernel: %s", err)
        return None


def _build_library(build: NativeBuild) -> Path:
    compiler = _find_compiler(build.compiler)
    flags = list(FLAGS) + ([PORTABLE_FLAG] if build.portable else [])
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([
        source, " ".join(flags).encode(), _compiler_version(compiler).encode(),
        platform.machine().encode(), _cpu_identity().encode(),
    ])).hexdigest()[:20]
    cache = Path(build.cache_dir).expanduser() if build.cache_dir else DEFAULT_CACHE_DIR.expanduser()
    target = cache / f"native_topk-{key}{'-portable' if build.portable else ''}.so"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=cache)
        os.close(fd)
    except OSError as err:
        raise NativeKernelUnavailable(f"cannot write the kernel cache {cache}: {err}") from err
    try:
        proc = subprocess.run([*compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip()[-2000:]
            raise NativeKernelUnavailable(f"{shlex.join(compiler)} failed (exit {proc.returncode}):\n{tail}")
        os.chmod(tmp, 0o755)  # mkstemp made it private; a library is read by whoever runs as this user
        os.replace(tmp, target)  # atomic: another process sees no library or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _find_compiler(requested: str | None) -> list[str]:
    """The compiler command (a list: sysconfig's CC may carry flags, e.g. ``gcc -pthread``)."""
    if requested is not None:
        candidates = [requested]
    else:
        candidates = [os.environ.get("CC", ""), sysconfig.get_config_var("CC") or "", "cc", "gcc", "clang"]
    for candidate in candidates:
        words = shlex.split(candidate)
        if words and (path := shutil.which(words[0])):
            return [path, *words[1:]]
    raise NativeKernelUnavailable(
        f"no C compiler found (tried {', '.join(repr(c) for c in candidates if c)})"
    )


def _compiler_version(compiler: list[str]) -> str:
    try:
        proc = subprocess.run([compiler[0], "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        raise NativeKernelUnavailable(f"cannot run {compiler[0]} --version: {err}") from err
    return proc.stdout + proc.stderr


def _cpu_identity() -> str:
    """CPU model and feature flags: what -march=native compiles for."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "features", "cpu part", "cpu implementer")
    seen: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in wanted and name not in seen:  # the first CPU's; all cores of a node match
            seen[name] = value.strip()
    return repr(sorted(seen.items())) if seen else platform.processor()
