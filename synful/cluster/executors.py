"""Executors: a [Worker] section checked, and a command started as a ``local`` or ``slurm`` job."""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from ..config import Worker
from .containers import container_command
from .errors import ClusterError, check_section, logger
from .handles import JobHandle, LocalJob
from .profiles import resolve_worker
from .records import append_record
from .slurm import check_slurm_worker, submit_slurm


def check_worker(worker_cfg: Worker) -> Worker:
    """Validate a [Worker] section for launching; return it with its profile applied.

    Checks every string's syntax (:func:`synful.config.check_worker_section`: no control
    characters, Slurm syntax -- also for a Worker built in code or changed by a profile),
    container image and mount directories, and for the slurm executor:
    sbatch on PATH, the partition (``queue``) known to sinfo, a node in it
    with enough GPUs, CPUs and memory (a request no node can satisfy would
    pend forever), time limit, memory and extra sbatch options.
    Raises :class:`ClusterError` naming the key at fault.
    """
    check_section(worker_cfg)  # before the profile is looked up by a name that could be anything
    worker, _ = resolve_worker(worker_cfg)
    container_command(worker_cfg, ["true"])
    if worker.executor == "slurm":
        check_slurm_worker(worker)
    return worker


def launch(worker_cfg: Worker, argv: Sequence[str], *, name: str, log_dir, env: Optional[dict] = None,
           gpu: Optional[int] = None) -> JobHandle:
    """Start ``argv`` (an argument list) as a job as the [Worker] section says; returns its handle.

    - ``executor = local``: a subprocess of this machine; ``gpu`` (an NVML
      index) sets ``CUDA_VISIBLE_DEVICES``; logs ``<log_dir>/<name>_<time>.out/.err``.
    - ``executor = slurm``: a submitit job in partition ``queue`` with
      ``gpus``, ``num_cpus``, ``mem``, ``time_limit``, ``account`` and
      ``sbatch_extra``; Slurm assigns the GPU (``gpu`` is ignored); submitit's
      files (``<job id>_0_log.out``, ...) live in ``log_dir``, which must be on
      a file system the nodes share.

    The command is wrapped by :func:`container_command`.  ``env`` adds
    environment variables (e.g. ``DAISY_CONTEXT``).  Everything is validated
    (:func:`check_worker`) before anything starts.  The job is appended to
    ``<log_dir>/jobs.jsonl``.
    """
    worker = check_worker(worker_cfg)
    cmd = container_command(worker, argv)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ClusterError(f"job name {name!r}: use letters, digits, '_', '-' or '.'")
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {k: str(v) for k, v in (env or {}).items()}
    if worker.executor == "local":
        full_env = {**os.environ, **env}
        if gpu is not None:
            full_env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        handle: JobHandle = LocalJob(cmd, name=name, log_dir=log_dir, env=full_env)
    else:
        handle = submit_slurm(worker, cmd, name=name, log_dir=log_dir, env=env)
    append_record(log_dir, {**handle.record(), "argv": cmd,
                            "submitted": _dt.datetime.now().isoformat(timespec="seconds")})
    logger.info("started %s job %s (%s); log %s", handle.executor, handle.job_id, name, handle.stdout)
    return handle
