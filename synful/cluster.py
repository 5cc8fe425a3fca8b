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
  :func:`block_worker_count` / :func:`worker_gpu` spread blockwise workers
  over them;
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
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .config import (SBATCH_OPTION_RE, SLURM_MEM_RE, SLURM_TIME_RE, ConfigError, Worker, check_worker_section,
                     read_worker_config)
from .errors import SynfulError

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
    "worker_gpu",
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

logger = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).resolve().parent.parent / "configs" / "clusters"
JOBS_FILE = "jobs.jsonl"

#: Slurm states after which a job will not run again.
FINISHED_STATES = frozenset({"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                             "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
#: Slurm states of a job that is waiting or running.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
                           "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED",
                           "RESV_DEL_HOLD", "UPDATE_DB", "POWER_UP_NODE"})
#: exit code :meth:`SlurmJob.wait` returns for a job that ended without a result (cancelled, timed out,
#: node failure): like a process killed by SIGTERM.
EXIT_NO_RESULT = -int(signal.SIGTERM)


class ClusterError(SynfulError):
    """A worker config, container, mount, partition or job cannot be used; the message names it."""


class SchedulerLost(ClusterError):
    """A blockwise worker (or the slot waiting for it) lost the daisy scheduler of its run: no block will come."""


# --------------------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------------------

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


def worker_gpu(worker_id: int, gpus: Sequence[int]) -> Optional[int]:
    """The GPU of local blockwise worker ``worker_id`` (round robin over ``gpus``); None without GPUs."""
    return gpus[int(worker_id) % len(gpus)] if gpus else None


# --------------------------------------------------------------------------------------
# profiles
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Profile:
    """A cluster profile: site defaults for [Worker] keys, job-script setup lines, container runtime."""

    name: str
    path: Path
    description: str = ""
    defaults: dict = dataclasses.field(default_factory=dict)
    setup: tuple[str, ...] = ()
    container_runtime: str = "singularity"


def _profile_path(name: str) -> Path:
    if "/" in name or name.endswith((".yaml", ".yml")):
        return Path(os.path.expanduser(name))
    return PROFILE_DIR / f"{name}.yaml"


def load_profile(name: str) -> Profile:
    """Read and validate cluster profile ``name`` (a name in configs/clusters/ or a YAML path)."""
    import yaml

    path = _profile_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
        raise ClusterError(f"[Worker] cluster_profile: no profile '{name}' ({path} not found; "
                           f"known: {', '.join(known) or 'none'})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ClusterError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ClusterError(f"{path}: expected a mapping with 'defaults', 'setup', 'container_runtime'")
    unknown = sorted(set(data) - {"description", "defaults", "setup", "container_runtime"})
    if unknown:
        raise ClusterError(f"{path}: unknown key '{unknown[0]}' (known: description, defaults, setup, "
                           f"container_runtime)")
    defaults = data.get("defaults") or {}
    fields = {f.name: f for f in dataclasses.fields(Worker)}
    hints = {f.name: f.type for f in dataclasses.fields(Worker)}
    for k, v in defaults.items():
        if k not in fields or k == "cluster_profile":
            raise ClusterError(f"{path} defaults: unknown [Worker] key '{k}'")
        _check_profile_value(path, k, hints[k], v)
    try:  # a profile's strings reach job scripts exactly like a worker_config.ini's
        check_worker_section(dataclasses.replace(Worker(), **defaults), f"{path} defaults:")
    except ConfigError as e:
        raise ClusterError(str(e)) from None
    setup = data.get("setup") or []
    if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
        raise ClusterError(f"{path} setup: expected a list of shell lines")
    runtime = data.get("container_runtime") or "singularity"
    if runtime not in ("singularity", "apptainer"):
        raise ClusterError(f"{path} container_runtime: expected singularity or apptainer, got '{runtime}'")
    if defaults.get("singularity_container"):
        defaults = dict(defaults)
        defaults["singularity_container"] = str((path.parent / os.path.expanduser(
            defaults["singularity_container"])).resolve())
    return Profile(name=name, path=path, description=str(data.get("description") or ""),
                   defaults=dict(defaults), setup=tuple(setup), container_runtime=runtime)


def _check_profile_value(path, k, hint, v):
    hint = str(hint)
    if v is None and "Optional" in hint:
        return
    if "list" in hint:
        ok = isinstance(v, list) and all(isinstance(x, str) for x in v)
        want = "a list of strings"
    elif "int" in hint:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        want = "a non-negative integer"
    else:
        ok = isinstance(v, str)
        want = "a string" + (' (quote times, e.g. "24:00:00")' if isinstance(v, int) else "")
    if not ok:
        raise ClusterError(f"{path} defaults: {k}: expected {want}, got {v!r}")
    if k == "executor" and v not in ("local", "slurm"):
        raise ClusterError(f"{path} defaults: executor: expected local or slurm, got {v!r}")


def resolve_worker(worker_cfg: Worker) -> tuple[Worker, Optional[Profile]]:
    """Apply the worker's cluster profile: keys still at their built-in default take the profile's value."""
    if not worker_cfg.cluster_profile:
        return worker_cfg, None
    profile = load_profile(worker_cfg.cluster_profile)
    builtin = Worker()
    changes = {}
    for k, v in profile.defaults.items():
        if getattr(worker_cfg, k) == getattr(builtin, k):
            changes[k] = v
    return dataclasses.replace(worker_cfg, **changes), profile


# --------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# validation of Slurm resources
# --------------------------------------------------------------------------------------

def parse_time_limit(value: str) -> int:
    """Slurm time limit -> minutes (rounded up).  Accepts MM, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    v = str(value).strip()
    m = SLURM_TIME_RE.fullmatch(v)
    if not m:
        raise ClusterError(f"[Worker] time_limit: expected MM, HH:MM:SS or D-HH:MM:SS, got '{value}'")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = (nums + [0, 0])[:3]
        total = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif len(nums) == 1:  # minutes
        total = nums[0] * 60
    elif len(nums) == 2:  # MM:SS
        total = nums[0] * 60 + nums[1]
    else:
        total = nums[0] * 3600 + nums[1] * 60 + nums[2]
    if total <= 0:
        raise ClusterError(f"[Worker] time_limit: must be positive, got '{value}'")
    return -(-total // 60)


def parse_mem(value: str) -> int:
    """Slurm memory (e.g. ``25G``, ``500M``, ``1T``, plain number = MB) -> MB."""
    m = SLURM_MEM_RE.fullmatch(str(value).strip())
    if not m:
        raise ClusterError(f"[Worker] mem: expected a size like 500M or 25G, got '{value}'")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2).upper()]
    mb = int(-(-float(m.group(1)) * factor // 1))
    if mb <= 0:
        raise ClusterError(f"[Worker] mem: must be positive, got '{value}'")
    return mb


def parse_sbatch_extra(items: Sequence[str]) -> dict:
    """``--key=value`` / ``--flag`` strings -> submitit ``additional_parameters`` ({key: value or True})."""
    out = {}
    for item in items:
        m = SBATCH_OPTION_RE.fullmatch(item.strip())
        if not m:
            raise ClusterError(f"[Worker] sbatch_extra: {item!r}: use the long form --option=value "
                               f"(e.g. --qos=high) or --flag")
        out[m.group(1)] = True if m.group(2) is None else m.group(2)
    return out


@dataclass
class _Partition:
    gres: set = dataclasses.field(default_factory=set)
    max_cpus: int = 0
    max_mem_mb: int = 0


def _gpu_count(gres: str) -> int:
    """GPUs in a node gres string such as ``gpu:2`` or ``gpu:a100:4(S:0-1),shard:8``."""
    n = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu":
            n += int(parts[-1]) if parts[-1].isdigit() else 1
    return n


def _slurm_partitions() -> dict[str, _Partition]:
    """{partition: its node gres strings, largest CPU count and memory (MB)}, from sinfo."""
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%P|%G|%c|%m"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterError(f"executor = slurm: cannot run sinfo ({e})") from None
    if res.returncode != 0:
        raise ClusterError(f"executor = slurm: sinfo failed: {res.stderr.strip() or res.stdout.strip()}")
    parts: dict[str, _Partition] = {}
    for line in res.stdout.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 4:
            continue
        part = parts.setdefault(fields[0].rstrip("*"), _Partition())
        part.gres.add(fields[1])
        digits = [re.sub(r"\D", "", f) for f in fields[2:]]
        part.max_cpus = max(part.max_cpus, int(digits[0] or 0))
        part.max_mem_mb = max(part.max_mem_mb, int(digits[1] or 0))
    return parts


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
    try:
        check_worker_section(worker_cfg)  # before the profile is looked up by a name that could be anything
    except ConfigError as e:
        raise ClusterError(str(e)) from None
    worker, _ = resolve_worker(worker_cfg)
    container_command(worker_cfg, ["true"])
    if worker.executor != "slurm":
        return worker
    parse_time_limit(worker.time_limit)
    parse_mem(worker.mem)
    parse_sbatch_extra(worker.sbatch_extra)
    if shutil.which("sbatch") is None:
        raise ClusterError("[Worker] executor = slurm: sbatch not found on PATH (not a Slurm submit host?)")
    parts = _slurm_partitions()
    if worker.queue not in parts:
        raise ClusterError(f"[Worker] queue: unknown Slurm partition '{worker.queue}' "
                           f"(known: {', '.join(sorted(parts)) or 'none'})")
    part = parts[worker.queue]
    # a request no node can satisfy would pend forever: refuse it here
    max_gpus = max((_gpu_count(g) for g in part.gres), default=0)
    if worker.gpus > max_gpus:
        raise ClusterError(f"[Worker] gpus = {worker.gpus}: nodes of partition '{worker.queue}' have at most "
                           f"{max_gpus} GPUs (gres: {', '.join(sorted(part.gres))})")
    if part.max_cpus and worker.num_cpus > part.max_cpus:
        raise ClusterError(f"[Worker] num_cpus = {worker.num_cpus}: nodes of partition '{worker.queue}' have at "
                           f"most {part.max_cpus} CPUs")
    if part.max_mem_mb and parse_mem(worker.mem) > part.max_mem_mb:
        raise ClusterError(f"[Worker] mem = {worker.mem}: nodes of partition '{worker.queue}' have at most "
                           f"{part.max_mem_mb} MB")
    return worker


# --------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------

class JobHandle(ABC):
    """A started job: ``job_id``, ``stdout``/``stderr`` log paths, ``wait()``, ``done()``, ``cancel()``."""

    job_id: str
    name: str
    executor: str
    stdout: Path
    stderr: Path

    @abstractmethod
    def wait(self) -> int:
        """Block until the job ends; its exit code (0 = success)."""
        ...

    @abstractmethod
    def done(self) -> bool:
        """True once the job has ended (successfully or not)."""
        ...

    @abstractmethod
    def cancel(self) -> None:
        """Stop the job (no-op when it has ended)."""
        ...

    @abstractmethod
    def state(self) -> str:
        """RUNNING, PENDING, COMPLETED, FAILED, CANCELLED, ... (Slurm vocabulary)."""
        ...

    def record(self) -> dict:
        return {"name": self.name, "job_id": self.job_id, "executor": self.executor,
                "stdout": str(self.stdout), "stderr": str(self.stderr)}

    def __repr__(self):
        return f"{type(self).__name__}(job_id={self.job_id!r}, name={self.name!r})"


class LocalJob(JobHandle):
    """A job run as a subprocess of this machine, in its own session (so cancel stops all its children)."""

    executor = "local"

    def __init__(self, argv: list[str], *, name: str, log_dir: Path, env: dict):
        self.name = name
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        self.stdout = log_dir / f"{name}_{stamp}.out"
        self.stderr = log_dir / f"{name}_{stamp}.err"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self._proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.pid = self._proc.pid
        self.job_id = f"local-{self.pid}"

    def wait(self) -> int:
        return self._proc.wait()

    def done(self) -> bool:
        return self._proc.poll() is not None

    def state(self) -> str:
        rc = self._proc.poll()
        return "RUNNING" if rc is None else ("COMPLETED" if rc == 0 else "FAILED")

    def cancel(self) -> None:
        try:  # our own session: the process and its children (the group id stays ours while it exists)
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self._proc.poll()  # reap the leader
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:  # the whole group is gone
                break
            time.sleep(0.05)
        else:
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
        self._proc.wait()

    def record(self) -> dict:
        return {**super().record(), "pid": self.pid}


class _JobCommand:
    """Picklable callable that submitit runs on the node: the command, with its output in the job's logs.

    Returns the command's exit code; the job's environment (exported from the
    submitting shell plus Slurm's, e.g. CUDA_VISIBLE_DEVICES) is updated with ``env``.
    """

    def __init__(self, argv: list[str], env: dict):
        self.argv = list(argv)
        self.env = dict(env)

    def __call__(self) -> int:
        env = {**os.environ, **self.env}
        sys.stdout.flush()
        sys.stderr.flush()
        print(f"running: {self.argv} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')})", flush=True)
        proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL)
        try:
            return proc.wait()
        finally:  # the job is being torn down (scancel, time limit): take the command with it
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()


class SlurmJob(JobHandle):
    """A Slurm job submitted through submitit.

    State comes from ``squeue`` (which keeps finished jobs for MinJobAge) and,
    where accounting runs, ``sacct``; the result (the command's exit code) from
    submitit's result file.
    """

    executor = "slurm"

    def __init__(self, job, *, name: str):
        self._job = job
        self.name = name
        self.job_id = str(job.job_id)
        self.stdout = Path(job.paths.stdout)
        self.stderr = Path(job.paths.stderr)
        self._next_query = 0.0
        self._query_gap = 1.0
        self._state = "PENDING"

    def _result_ready(self) -> bool:
        p = self._job.paths.result_pickle
        with suppress(OSError):  # refresh the directory entry on network file systems
            p.parent.chmod(p.parent.stat().st_mode)
        return p.exists()

    def state(self) -> str:
        self._state = job_state(self.job_id)
        return self._state

    def done(self) -> bool:
        if self._result_ready():
            return True
        now = time.monotonic()
        if now >= self._next_query:  # ask the scheduler with a growing gap (1 s ... 30 s)
            self._next_query = now + self._query_gap
            self._query_gap = min(30.0, self._query_gap * 2)
            if self.state() in FINISHED_STATES or self._state == "UNKNOWN":
                time.sleep(1.0)  # a result written just before the job ended
                return True
        return False

    def wait(self) -> int:
        while not self.done():
            time.sleep(0.5)
        if not self._result_ready():
            logger.warning("Slurm job %s (%s) ended without a result (state %s); log: %s", self.job_id,
                           self.name, self._state, self.stdout)
            return EXIT_NO_RESULT
        try:
            return int(self._job.result())
        except Exception as e:  # the job's python failed before or around the command
            logger.warning("Slurm job %s (%s) failed: %s", self.job_id, self.name, str(e).splitlines()[:1])
            return 1

    def cancel(self) -> None:
        if not self.done():
            subprocess.run(["scancel", self.job_id], capture_output=True, timeout=60)


def job_state(job_id: str) -> str:
    """Scheduler state of a job id: Slurm's (PENDING, RUNNING, COMPLETED, CANCELLED, ...) or UNKNOWN.

    ``local-<pid>`` ids give RUNNING while that process lives, else ENDED.
    """
    job_id = str(job_id)
    if job_id.startswith("local-"):
        pid = int(job_id.split("-", 1)[1])
        try:
            os.kill(pid, 0)
            return "RUNNING"
        except ProcessLookupError:
            return "ENDED"
        except PermissionError:
            return "RUNNING"
    for cmd in (["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"]):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = [ln.strip() for ln in res.stdout.splitlines() if ln.strip()]
        if res.returncode == 0 and lines:
            return lines[0].split()[0].rstrip("+")  # 'CANCELLED by 0' -> CANCELLED
    return "UNKNOWN"


def _append_record(log_dir: Path, record: dict) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    # O_APPEND: concurrent writers (many workers) each add whole lines
    fd = os.open(log_dir / JOBS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_job_records(log_dir) -> list[dict]:
    """The jobs :func:`launch` recorded in ``log_dir`` (oldest first)."""
    path = Path(log_dir) / JOBS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return out


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
        handle = _submit_slurm(worker, cmd, name=name, log_dir=log_dir, env=env)
    _append_record(log_dir, {**handle.record(), "argv": cmd,
                             "submitted": _dt.datetime.now().isoformat(timespec="seconds")})
    logger.info("started %s job %s (%s); log %s", handle.executor, handle.job_id, name, handle.stdout)
    return handle


_SUBMITIT_IMPORT = threading.Lock()


def _import_submitit():
    """submitit, imported without the logging set-up it does at import.

    At import submitit calls ``logging.config.dictConfig``, which closes every logging handler of this
    process (``logging.shutdown``), those of other libraries included.  absl's (TensorFlow imports it)
    closes the stream it writes to unless that is the current ``sys.stderr``/``sys.stdout``: a stream
    that was ``sys.stderr`` when TensorFlow was imported and has since been swapped (pytest's capture, a
    ``contextlib.redirect_stderr``) is closed under its owner.  submitit's documented
    ``SUBMITIT_LOG_LEVEL=NOCONFIG`` skips that set-up; it is set for the import only (the environment
    exported to jobs is unchanged), and the ``submitit`` logger gets the level SUBMITIT_LOG_LEVEL names
    (default INFO), logging through this process's handlers.
    """
    with _SUBMITIT_IMPORT:
        if "submitit" not in sys.modules:
            saved = os.environ.get("SUBMITIT_LOG_LEVEL")
            os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
            try:
                import submitit  # noqa: F401
            finally:
                if saved is None:
                    os.environ.pop("SUBMITIT_LOG_LEVEL", None)
                else:
                    os.environ["SUBMITIT_LOG_LEVEL"] = saved
            level = (saved or "INFO").strip().upper()
            if level != "NOCONFIG":
                with suppress(ValueError, TypeError):  # a level logging does not know: left unset
                    logging.getLogger("submitit").setLevel(int(level) if level.isdigit() else level)
    import submitit

    return submitit


def _submit_slurm(worker: Worker, cmd: list[str], *, name: str, log_dir: Path, env: dict) -> SlurmJob:
    submitit = _import_submitit()
    _, profile = resolve_worker(worker)
    extra = {"mem": f"{parse_mem(worker.mem)}M", **parse_sbatch_extra(worker.sbatch_extra)}
    params = dict(job_name=name, partition=worker.queue, cpus_per_task=worker.num_cpus,
                  time=parse_time_limit(worker.time_limit), ntasks_per_node=1, nodes=1,
                  additional_parameters=extra)
    if worker.gpus > 0:
        params["gpus_per_node"] = worker.gpus
    if worker.account:
        params["account"] = worker.account
    if profile and profile.setup:
        params["setup"] = list(profile.setup)
    executor = submitit.SlurmExecutor(folder=log_dir, max_num_timeout=0)
    executor.update_parameters(**params)
    try:
        job = executor.submit(_JobCommand(cmd, env))
    except Exception as e:  # sbatch refused the job (e.g. resources the partition cannot give)
        msg = str(e).strip().splitlines()
        raise ClusterError(f"sbatch refused job {name}: {msg[-1] if msg else e}") from None
    return SlurmJob(job, name=name)


#: seconds between two looks of a waiting worker slot at its job and its parent
_SLOT_POLL_S = 0.25


def run(worker_cfg: Worker, argv: Sequence[str], *, name: str, log_dir, env: Optional[dict] = None,
        gpu: Optional[int] = None) -> int:
    """:func:`launch` and wait; the exit code.  What a daisy worker slot calls to run one worker.

    The job never outlives this call.  It is cancelled (``scancel``, or the local process group
    stopped) before this function leaves by an exception: when this process is interrupted
    (Ctrl-C) or terminated (SIGTERM), and when it is orphaned -- its parent process, the scheduler
    that started this slot, ended, even by SIGKILL; that is seen within a fraction of a second and
    raises :class:`SchedulerLost`.  So use :func:`launch` for a job that must outlive the process
    that starts it (e.g. a script under ``nohup`` whose shell exits).
    """
    parent = os.getppid()  # the scheduler (daisy spawns each worker slot as its child)
    handle = launch(worker_cfg, argv, name=name, log_dir=log_dir, env=env, gpu=gpu)

    def _term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = None
    with suppress(ValueError):  # not the main thread: no handler, the caller owns cancellation
        old = signal.signal(signal.SIGTERM, _term)
    try:
        # poll rather than block in wait(): a SIGKILLed parent sends no signal, reparenting is the only trace
        while not handle.done():
            if os.getppid() != parent:
                raise SchedulerLost(f"the scheduler process (pid {parent}) that started {handle.executor} job "
                                    f"{handle.job_id} ({name}) ended; cancelling the job")
            time.sleep(_SLOT_POLL_S)
        return handle.wait()
    except BaseException:
        handle.cancel()
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def serve_blocks(client, process, *, keep_going: bool = False) -> int:
    """The block loop of a blockwise worker: ``process(block)`` for every block that the daisy ``client``
    (a ``daisy.Client``) hands out, until the scheduler has none left; returns the blocks processed.

    - A block whose ``process`` raises is reported to the scheduler as failed (it retries the block,
      up to ``max_retries``).  ``keep_going=True`` logs the error and asks for the next block;
      otherwise the exception ends the worker (the scheduler counts a worker failure).
    - Any other exception comes from the connection to the scheduler (acquiring or releasing a
      block): the scheduler is gone (killed, crashed, its host down) and no block will ever come,
      so the loop raises :class:`SchedulerLost` and the worker exits.  Retrying instead would spin
      on the dead socket at full CPU, and on Slurm hold the job until its time limit.
    - A scheduler already gone when the client was made (a worker started after its run ended)
      hands out no block: the loop returns 0.
    """
    done = 0
    while True:
        failed = None
        try:
            with client.acquire_block() as block:
                if block is None:
                    return done
                try:
                    process(block)
                except Exception as e:
                    failed = e
                    raise
            done += 1
        except Exception as e:
            if failed is None:  # not the block's own error: the scheduler connection broke
                where = f"{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}"
                raise SchedulerLost(f"lost the daisy scheduler at {where} ({type(e).__name__}: {e}) after "
                                    f"{done} block(s); the worker exits") from e
            if not keep_going:
                raise
            # the failure went to the scheduler with its traceback; if reporting it broke the
            # connection, the next acquire_block() raises and ends the loop above
            logger.error("block failed: %s: %s", type(failed).__name__, failed)


# --------------------------------------------------------------------------------------
# training jobs and status
# --------------------------------------------------------------------------------------

def _jobs_dir(setup_dir: Path) -> Path:
    return setup_dir / "jobs"


def submit_training(setup_dir, iterations: Optional[int] = None, *, executor: str = "slurm") -> JobHandle:
    """Submit ``synful train SETUP_DIR [--iterations N]`` as one job with the setup's worker_config.ini.

    ``executor`` overrides the config's (``slurm`` for ``--submit``).  The job
    id and log paths go to ``SETUP_DIR/jobs/jobs.jsonl`` (see :func:`status`);
    training itself resumes from the last checkpoint, so resubmitting after a
    crash or time limit continues.  Raises :class:`ClusterError` when an
    earlier training job of this setup is still pending or running.
    """
    from .scaffold import run_ids

    setup_dir = Path(setup_dir).resolve()
    ids = run_ids(setup_dir)
    if ids.predict_id is not None or not (setup_dir / "train_config.ini").is_file():
        raise ClusterError(f"{setup_dir}: not a training setup (no train_config.ini)")
    worker = dataclasses.replace(read_worker_config(setup_dir / "worker_config.ini"), executor=executor)
    name = f"train_{ids.name}"
    for rec in reversed(read_job_records(_jobs_dir(setup_dir))):
        if rec.get("name") == name:
            st = job_state(rec["job_id"])
            if st in ACTIVE_STATES:
                raise ClusterError(f"{setup_dir}: training job {rec['job_id']} is still {st}; "
                                   f"cancel it first (scancel {rec['job_id']})")
            break
    args = ["train", str(setup_dir)] + ([] if iterations is None else ["--iterations", str(int(iterations))])
    return launch(worker, synful_command(worker, args), name=name, log_dir=_jobs_dir(setup_dir))


def _last_checkpoint(setup_dir: Path) -> Optional[tuple[int, Path]]:
    from .train import latest_checkpoint  # the training stage owns the checkpoint naming

    return latest_checkpoint(setup_dir)


def _tail(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return f.read().decode(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def _record_dirs(setup_dir: Path) -> list[Path]:
    """Where a setup's job records live: ``jobs/`` (training) and ``log/<stage>/`` (blockwise workers)."""
    dirs = [_jobs_dir(setup_dir)]
    if (setup_dir / "log").is_dir():
        dirs += sorted(p for p in (setup_dir / "log").iterdir() if p.is_dir())
    return [d for d in dirs if (d / JOBS_FILE).is_file()]


def _blockwise_runs(setup_dir: Path) -> list[dict]:
    """Run metadata JSONs (``<run>_<stage>.json`` with ``blocks`` and ``complete``) in a setup directory."""
    out = []
    for p in sorted(setup_dir.glob("*.json")):
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and "blocks" in meta and "complete" in meta:
            out.append({"file": p.name, "complete": bool(meta["complete"]), "blocks": meta["blocks"]})
    return out


def status(setup_dir, *, tail: int = 20) -> dict:
    """What runs or ran for a setup directory.

    Returns ``{"dir", "jobs": [record + "state"] (oldest first), "last_checkpoint": {"iteration",
    "path"} or None, "runs": [{"file", "complete", "blocks"}] of blockwise stages, "log_tail":
    {"stdout": [...], "stderr": [...]} of the newest job}``.  Jobs are those :func:`launch`
    recorded in ``SETUP_DIR/jobs/`` and ``SETUP_DIR/log/<stage>/``.  Raises :class:`ClusterError`
    for a missing directory.
    """
    setup_dir = Path(setup_dir).resolve()
    if not setup_dir.is_dir():
        raise ClusterError(f"{setup_dir}: no such directory")
    records = [r for d in _record_dirs(setup_dir) for r in read_job_records(d)]
    records.sort(key=lambda r: r.get("submitted", ""))
    jobs = [{**r, "state": job_state(r["job_id"])} for r in records]
    last = _last_checkpoint(setup_dir) if (setup_dir / "train_config.ini").is_file() else None
    newest = jobs[-1] if jobs else None
    return {
        "dir": str(setup_dir),
        "jobs": jobs,
        "last_checkpoint": None if last is None else {"iteration": last[0], "path": str(last[1])},
        "runs": _blockwise_runs(setup_dir),
        "log_tail": {} if newest is None else {"stdout": _tail(Path(newest["stdout"]), tail),
                                               "stderr": _tail(Path(newest["stderr"]), tail)},
    }


def format_status(st: dict) -> str:
    """Human-readable text of a :func:`status` dict."""
    lines = [f"setup: {st['dir']}"]
    lc = st["last_checkpoint"]
    lines.append("last checkpoint: " + ("none" if lc is None else f"iteration {lc['iteration']} ({lc['path']})"))
    for r in st.get("runs", []):
        b = r["blocks"]
        lines.append(f"run {r['file']}: {'complete' if r['complete'] else 'INCOMPLETE'}"
                     + (f", blocks {b}" if isinstance(b, dict) else ""))
    if not st["jobs"]:
        lines.append("jobs: none recorded")
    for j in st["jobs"]:
        lines.append(f"job {j['job_id']} {j['name']} [{j['executor']}] {j['state']} "
                     f"submitted {j.get('submitted', '?')} log {j['stdout']}")
    for stream in ("stdout", "stderr"):
        if st["log_tail"].get(stream):
            lines.append(f"--- {stream} of the newest job (last {len(st['log_tail'][stream])} lines) ---")
            lines += st["log_tail"][stream]
    return "\n".join(lines)
