"""Jobs of a setup directory: a training job submitted and recorded, and :func:`status` of what runs or ran."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

from ..config import read_worker_config
from .containers import synful_command
from .errors import ClusterError
from .executors import launch
from .handles import JobHandle
from .records import JOBS_FILE, job_state, read_job_records
from .slurm import ACTIVE_STATES


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
    from ..scaffold import run_ids

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
    from ..train import latest_checkpoint  # the training stage owns the checkpoint naming

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

