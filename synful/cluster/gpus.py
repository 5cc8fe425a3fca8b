"""GPUs of this machine (NVML) and how many blockwise workers use them."""

from __future__ import annotations

import os
import warnings
from typing import Optional

from ..config import Worker


def _import_nvml():
    with warnings.catch_warnings():  # the 'pynvml' shim warns about its own name on import
        warnings.simplefilter("ignore", FutureWarning)
        import pynvml
    return pynvml


def discover_gpus() -> list[int]:
    """Indices of the GPUs this process may use, from NVML.

    The indices are physical NVML indices, suitable for ``CUDA_VISIBLE_DEVICES``.
    When ``CUDA_VISIBLE_DEVICES`` is already set (e.g. inside a Slurm job) only
    the devices it names are returned (integers or ``GPU-...`` UUIDs); an empty
    value means no GPUs.  Without NVML (no driver, no GPU) the result is ``[]``
    and a ``RuntimeWarning`` says that workers will run on CPUs.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return []
    try:
        nvml = _import_nvml()
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        warnings.warn(f"no GPUs found (NVML unavailable: {e}); workers run on CPUs", RuntimeWarning, stacklevel=2)
        return []
    try:
        count = nvml.nvmlDeviceGetCount()
        if visible is None:
            return list(range(count))
        uuids = {}
        for i in range(count):
            u = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))
            uuids[u.decode() if isinstance(u, bytes) else u] = i
        out = []
        for item in (v.strip() for v in visible.split(",") if v.strip()):
            if item.isdigit() and int(item) < count:
                out.append(int(item))
            else:
                out += [i for u, i in uuids.items() if u.startswith(item)]
        return out
    finally:
        nvml.nvmlShutdown()


def block_worker_count(worker_cfg: Worker, gpus: Optional[list[int]] = None) -> int:
    """How many blockwise workers a stage starts.

    ``num_block_workers`` when > 0.  Otherwise: local executor -> one per GPU
    (``gpus``, default :func:`discover_gpus`), or one per 2 CPUs without GPUs;
    slurm executor -> 1.
    """
    if worker_cfg.num_block_workers > 0:
        return worker_cfg.num_block_workers
    if worker_cfg.executor == "slurm":
        return 1
    gpus = discover_gpus() if gpus is None else gpus
    return len(gpus) if gpus else max(1, (os.cpu_count() or 2) // 2)

