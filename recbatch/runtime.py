"""Device, precision and Ray start-up decisions, made in one place.

Stages never read environment variables or probe hardware on their own: they
ask this module, which applies the config. That keeps a CPU laptop, a CI box
and a 16-GPU cluster on the same code path, differing only in config.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Literal

from recbatch.config import RayConfig
from recbatch.errors import UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "bf16"]


def cuda_available() -> bool:
    import torch  # here, not at the top: a CPU scoring worker imports this module and never needs torch

    return torch.cuda.is_available()


def resolve_use_gpu(setting: str) -> bool:
    """'auto' means: use GPUs when this process can see one."""
    if setting == "auto":
        return cuda_available()
    return setting == "true"


def resolve_precision(setting: str, on_gpu: bool) -> Precision:
    """'auto' is fp16 on GPU and fp32 on CPU.

    Half-precision matmuls on CPU run 10-18x slower than fp32 (measured on the
    2-core dev machine), so half precision is never chosen for CPU by default.
    """
    if setting == "auto":
        return "fp16" if on_gpu else "fp32"
    return setting  # type: ignore[return-value]


def torch_dtype(precision: Precision) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def local_logical_cpus() -> int:
    """Logical CPUs for a local Ray when the config names none: at least 4.

    Logical CPUs only gate scheduling. A 2-core laptop or CI box running two
    train workers or an actor pool of one CPU each must still have room for
    Ray Data's read/write tasks, or the pipeline waits forever.
    """
    return max(4, os.cpu_count() or 1)


def require_resources(
    resource: Literal["CPU", "GPU"], need: float, what: str, *, remedy: str = "", spare_for: str | None = None
) -> None:
    """Refuse workers or actors that the Ray cluster cannot schedule: Ray would wait for them forever, silently.

    `what` names the settings whose product is `need` (e.g. ``"embed.gpus_per_actor x embed.num_actors"``);
    with `spare_for` some of `resource` must stay free for that (e.g. Ray Data's read tasks), so taking
    every unit is refused too. The one home of the "need X, the cluster has Y" check of every stage.
    """
    import ray

    have = ray.cluster_resources().get(resource, 0)
    advice = f": {remedy}" if remedy else ""
    if spare_for is not None and need >= have:
        raise UsageError(f"{what} = {need:g} {resource}s leaves none of the Ray cluster's {have:g} for {spare_for}{advice}")
    if need > have:
        raise UsageError(f"{what} = {need} {resource}s, but the Ray cluster has {have}{advice}")


def ensure_ray(cfg: RayConfig, *, log_to_driver: bool = False) -> None:
    """Connect to the configured cluster, or start a local Ray on 127.0.0.1.

    Inside ``ray job submit`` the job already has a cluster (``RAY_ADDRESS`` is
    set by Ray itself), and ``ray.init()`` with no address joins it.
    """
    import ray

    if ray.is_initialized():
        return
    if cfg.address:
        ray.init(address=cfg.address, log_to_driver=log_to_driver)
        return
    if os.environ.get("RAY_ADDRESS"):  # set by Ray for submitted jobs, not by us
        ray.init(log_to_driver=log_to_driver)
        return
    ray.init(
        # "local": always a fresh in-process cluster, never one that `ray start`
        # left running on this machine (ray.init() alone would join that one).
        address="local",
        num_cpus=cfg.num_cpus if cfg.num_cpus is not None else local_logical_cpus(),
        num_gpus=cfg.num_gpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=log_to_driver,
        configure_logging=False,
    )
    log.info("started a local Ray runtime: %s", ray.cluster_resources())
