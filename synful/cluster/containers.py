"""Commands: a worker's command wrapped in its container, and ``python -m synful ...`` for it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

from ..config import Worker
from .errors import ClusterError
from .profiles import resolve_worker


def _mount_args(mount_dirs: Sequence[str]) -> list[str]:
    args = []
    for spec in mount_dirs:
        src = spec.split(":", 1)[0]
        if not src or not Path(os.path.expanduser(src)).is_dir():
            raise ClusterError(f"[Worker] mount_dirs: {src or spec!r}: no such directory")
        args += ["-B", spec]
    return args


def container_command(worker_cfg: Worker, argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped to run inside the worker's container; ``argv`` unchanged without one.

    With ``singularity_container`` set the result is
    ``[runtime, "exec", "--nv", "-B", mount, ..., image, *argv]`` (runtime
    ``singularity`` unless the cluster profile names ``apptainer``; ``--nv``
    exposes the host's NVIDIA driver and ``CUDA_VISIBLE_DEVICES``).  Each
    ``mount_dirs`` entry is ``SRC`` or ``SRC:DST[:OPTS]``; SRC must be an
    existing directory.  Raises :class:`ClusterError` for a missing image or
    mount directory.  Never goes through a shell.
    """
    worker_cfg, profile = resolve_worker(worker_cfg)
    argv = [str(a) for a in argv]
    if not argv:
        raise ClusterError("empty command")
    if not worker_cfg.singularity_container:
        return argv
    image = Path(os.path.expanduser(worker_cfg.singularity_container))
    if not image.is_file():
        raise ClusterError(f"[Worker] singularity_container: {image}: no such file (build it with "
                           f"'make -C singularity')")
    runtime = profile.container_runtime if profile else "singularity"
    return [runtime, "exec", "--nv", *_mount_args(worker_cfg.mount_dirs), str(image), *argv]


def synful_command(worker_cfg: Worker, args: Sequence[str]) -> list[str]:
    """``python -m synful ARGS`` for :func:`launch`: this interpreter, or the container's ``python``.

    Not yet wrapped in the container (:func:`launch` does that).
    """
    resolved, _ = resolve_worker(worker_cfg)
    python = "python" if resolved.singularity_container else sys.executable
    return [python, "-m", "synful", *map(str, args)]
