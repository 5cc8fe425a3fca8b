"""Job records: every job :func:`launch` starts is a line of ``<log_dir>/jobs.jsonl``; a recorded id's state."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .slurm import slurm_state

JOBS_FILE = "jobs.jsonl"


def append_record(log_dir: Path, record: dict) -> None:
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


def job_state(job_id: str) -> str:
    """Scheduler state of a job id: Slurm's (PENDING, RUNNING, COMPLETED, CANCELLED, ...) or UNKNOWN.

    ``local-<pid>`` ids give RUNNING while that process lives, else ENDED.
    """
    job_id = str(job_id)
    if not job_id.startswith("local-"):
        return slurm_state(job_id)
    pid = int(job_id.split("-", 1)[1])
    try:
        os.kill(pid, 0)
        return "RUNNING"
    except ProcessLookupError:
        return "ENDED"
    except PermissionError:
        return "RUNNING"
