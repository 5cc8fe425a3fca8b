"""Job handles (what :func:`launch` returns), the local executor's job, and how the layer waits and stops.

Waiting is on observable state only: a process's exit (``Popen.wait``) where one can be waited
for, else :func:`poll_until` -- a condition polled with a deadline (a process group, a Slurm job,
a parent process give no event to block on).
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from contextlib import suppress
from pathlib import Path
from typing import Callable, Optional

#: seconds a stopped job (SIGTERM) has to end before it is killed (SIGKILL)
STOP_GRACE_S = 10.0


def poll_until(ready: Callable[[], bool], timeout: Optional[float], interval: float) -> bool:
    """True as soon as ``ready()`` is; False when ``timeout`` seconds passed first (None: no limit).

    ``ready`` is asked every ``interval`` seconds, and once more at the deadline.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while not ready():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        time.sleep(interval if left is None else min(interval, left))
    return True


def exited_within(proc: subprocess.Popen, timeout: Optional[float]) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit; whether it has."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def stop(send: Callable[[int], None], ended_within: Callable[[float], bool], grace_s: float = STOP_GRACE_S) -> None:
    """``send(SIGTERM)``; ``send(SIGKILL)`` unless ``ended_within(grace_s)`` sees the target end in time.

    A ``ProcessLookupError`` from ``send`` means the target is already gone.
    """
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return
    if not ended_within(grace_s):
        with suppress(ProcessLookupError):
            send(signal.SIGKILL)


class JobHandle(ABC):
    """A started job: ``job_id``, ``stdout``/``stderr`` log paths, ``wait()``, ``done()``, ``cancel()``."""

    job_id: str
    name: str
    executor: str
    stdout: Path
    stderr: Path

    #: seconds between two looks at a job that gives no event to wait for
    poll_interval: float = 0.25

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

    def ended_within(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` seconds (None: no limit) for the job to end; whether it has."""
        return poll_until(self.done, timeout, self.poll_interval)

    def record(self) -> dict:
        return {"name": self.name, "job_id": self.job_id, "executor": self.executor,
                "stdout": str(self.stdout), "stderr": str(self.stderr)}

    def __repr__(self):
        return f"{type(self).__name__}(job_id={self.job_id!r}, name={self.name!r})"


class LocalJob(JobHandle):
    """A job run as a subprocess of this machine, in its own session (so cancel stops all its children)."""

    executor = "local"
    poll_interval = 0.05

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

    def ended_within(self, timeout: Optional[float]) -> bool:
        return exited_within(self._proc, timeout)

    def state(self) -> str:
        rc = self._proc.poll()
        return "RUNNING" if rc is None else ("COMPLETED" if rc == 0 else "FAILED")

    def _group_gone(self) -> bool:
        self._proc.poll()  # reap the leader
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:  # the whole group is gone
            return True
        return False

    def cancel(self) -> None:
        # our own session: the process and its children (the group id stays ours while it exists)
        stop(lambda sig: os.killpg(self.pid, sig),
             lambda grace: poll_until(self._group_gone, grace, self.poll_interval))
        self._proc.wait()

    def record(self) -> dict:
        return {**super().record(), "pid": self.pid}
