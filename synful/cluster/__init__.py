"""Where a stage runs: this machine or Slurm (through submitit), optionally inside a container.

The cluster layer turns a ``[Worker]`` section (see :class:`synful.config.Worker`)
and a command -- always an argument list, never a shell string -- into a
running job:

- :func:`container_command` wraps a command in ``singularity exec --nv -B ...
  IMAGE ...`` when ``singularity_container`` is set;
- :func:`launch` starts it with the ``local`` executor (a subprocess, one
  GPU chosen through ``CUDA_VISIBLE_DEVICES``) or the ``slurm`` executor (a
  submitit job with partition, GPUs, CPUs, memory, time limit, account and
  extra sbatch options), after checking partition, container and mount
  directories, so bad input fails before anything is submitted;
- :func:`submit_training` submits ``synful train`` as one job and records it
  in the setup directory; :func:`status` reports recorded jobs, the last
  checkpoint and the log tail;
- :func:`discover_gpus` lists the GPUs of this machine through NVML, and
  :func:`block_worker_count` sizes the blockwise workers by them (each
  worker takes a free GPU through a file lock, :mod:`synful.predict`);
- :func:`serve_blocks` is the block loop of every blockwise worker: it ends the
  worker when its daisy scheduler is gone (:class:`SchedulerLost`).

Workers never outlive their run.  :func:`run` (what a daisy worker slot calls to
start one worker) cancels the job when the slot is interrupted, terminated, or
orphaned -- its parent, the scheduler process, ended, even by SIGKILL -- and a
worker that loses its connection to the scheduler exits (:func:`serve_blocks`),
so a Slurm worker job whose slot died with the scheduler ends by itself too.

Cluster profiles (YAML in ``configs/clusters/``) hold site defaults.  A
``[Worker]`` key still at its built-in default takes the profile's value; a
key set to anything else keeps it.  Profile layout::

    description: one line
    defaults:            # any [Worker] keys
      executor: slurm
      queue: gpu
      time_limit: "24:00:00"   # quote times: YAML reads 24:00:00 as a number
    setup:               # optional shell lines run in the job script before the job
      - module load apptainer
    container_runtime: singularity   # or apptainer

Every job started by :func:`launch` is appended to ``<log_dir>/jobs.jsonl``
(name, job id, executor, log paths, command), which :func:`status` reads.

Modules, one concern each (every public name is importable from ``synful.cluster``):

- :mod:`.errors` -- :class:`ClusterError`, :class:`SchedulerLost`, the layer's logger;
- :mod:`.gpus` -- NVML GPU discovery, blockwise worker count;
- :mod:`.profiles` -- cluster profiles and :func:`resolve_worker`;
- :mod:`.containers` -- :func:`container_command`, :func:`synful_command`;
- :mod:`.handles` -- :class:`JobHandle`, :class:`LocalJob`, waiting and stopping;
- :mod:`.slurm` -- Slurm resources and partitions, job states, submitit jobs (:class:`SlurmJob`);
- :mod:`.records` -- ``jobs.jsonl`` records, :func:`job_state`;
- :mod:`.executors` -- :func:`check_worker`, :func:`launch`;
- :mod:`.workers` -- :func:`run` (a worker slot's job), :func:`serve_blocks`;
- :mod:`.setups` -- :func:`submit_training`, :func:`status`, :func:`format_status`.
"""

from __future__ import annotations

# names outside __all__ are imported here too: tests and benchmarks use _import_nvml, _import_submitit,
# ACTIVE_STATES and EXIT_NO_RESULT, and pickles of jobs submitted before the package split name
# synful.cluster._JobCommand
from .containers import container_command, synful_command
from .errors import ClusterError, SchedulerLost
from .executors import check_worker, launch
from .gpus import _import_nvml, block_worker_count, discover_gpus  # noqa: F401
from .handles import JobHandle, LocalJob
from .profiles import PROFILE_DIR, Profile, load_profile, resolve_worker
from .records import JOBS_FILE, job_state, read_job_records  # noqa: F401
from .setups import format_status, status, submit_training
from .slurm import (ACTIVE_STATES, EXIT_NO_RESULT, FINISHED_STATES, SlurmJob, _import_submitit,  # noqa: F401
                    _JobCommand, parse_mem, parse_sbatch_extra, parse_time_limit)
from .workers import run, serve_blocks

__all__ = [
    "ClusterError",
    "SchedulerLost",
    "PROFILE_DIR",
    "Profile",
    "JobHandle",
    "LocalJob",
    "SlurmJob",
    "discover_gpus",
    "block_worker_count",
    "load_profile",
    "resolve_worker",
    "container_command",
    "synful_command",
    "check_worker",
    "launch",
    "run",
    "serve_blocks",
    "job_state",
    "read_job_records",
    "submit_training",
    "status",
    "format_status",
    "parse_time_limit",
    "parse_mem",
    "parse_sbatch_extra",
]
