"""The Slurm executor: resource syntax, partition checks (sinfo), job states (squeue/sacct), submitit jobs."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..config import SBATCH_OPTION_RE, SLURM_MEM_RE, SLURM_TIME_RE, Worker
from .errors import ClusterError, logger
from .handles import JobHandle, exited_within, poll_until, stop
from .profiles import resolve_worker

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
#: seconds a job that Slurm reports finished has for its result file to appear
_RESULT_GRACE_S = 1.0


# --------------------------------------------------------------------------------------
# resources
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


def check_slurm_worker(worker: Worker) -> None:
    """The slurm executor's checks of a profile-resolved [Worker] section (see :func:`check_worker`)."""
    parse_time_limit(worker.time_limit)
    mem_mb = parse_mem(worker.mem)
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
    if part.max_mem_mb and mem_mb > part.max_mem_mb:
        raise ClusterError(f"[Worker] mem = {worker.mem}: nodes of partition '{worker.queue}' have at most "
                           f"{part.max_mem_mb} MB")


# --------------------------------------------------------------------------------------
# job states
# --------------------------------------------------------------------------------------

def slurm_state(job_id: str) -> str:
    """Slurm's state of a job id (PENDING, RUNNING, COMPLETED, CANCELLED, ...) or UNKNOWN.

    From ``squeue -t all`` (which keeps finished jobs for MinJobAge) and, where accounting runs, ``sacct``.
    """
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


# --------------------------------------------------------------------------------------
# submitit jobs
# --------------------------------------------------------------------------------------

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
                stop(proc.send_signal, lambda grace: exited_within(proc, grace))


class SlurmJob(JobHandle):
    """A Slurm job submitted through submitit.

    State comes from :func:`slurm_state` (``squeue``, then ``sacct``); the result (the command's
    exit code) from submitit's result file.
    """

    executor = "slurm"
    poll_interval = 0.5

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
        self._state = slurm_state(self.job_id)
        return self._state

    def done(self) -> bool:
        # Not submitit's job.state / job.done(): its watcher asks only sacct, which fails where Slurm keeps
        # no accounting (as on the test cluster): the state stays UNKNOWN and a job that ended without a
        # result (cancelled, timed out) is never done; and it asks at most every 600 s once a job is old.
        if self._result_ready():
            return True
        now = time.monotonic()
        if now >= self._next_query:  # ask the scheduler with a growing gap (1 s ... 30 s)
            self._next_query = now + self._query_gap
            self._query_gap = min(30.0, self._query_gap * 2)
            if self.state() in FINISHED_STATES or self._state == "UNKNOWN":
                poll_until(self._result_ready, _RESULT_GRACE_S, 0.05)  # a result written just before the end
                return True
        return False

    def wait(self) -> int:
        self.ended_within(None)
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
        # scancel itself, not submitit's job.cancel(): that has no timeout and lets scancel's messages
        # (e.g. "job already completing") through to this process's output
        if not self.done():
            subprocess.run(["scancel", self.job_id], capture_output=True, timeout=60)


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


def submit_slurm(worker: Worker, cmd: list[str], *, name: str, log_dir: Path, env: dict) -> SlurmJob:
    """Submit ``cmd`` (already in its container) as a submitit job of a checked [Worker] section."""
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
