"""Jobs of a setup directory: a training job submitted and recorded, and :func:`status` of what runs or ran."""

from __future__ import annotations

import contextlib
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


#: text logs under ``log/``: training's ``train.log``, the worker logs of the blockwise stages
_LOG_SUFFIXES = (".log", ".out", ".err")


def _newest_log(setup_dir: Path) -> Optional[Path]:
    """The most recently written text log under ``SETUP_DIR/log/`` (TensorBoard event files are not logs)."""
    logs = [p for p in (setup_dir / "log").rglob("*") if p.suffix in _LOG_SUFFIXES and p.is_file()] \
        if (setup_dir / "log").is_dir() else []
    return max(logs, key=lambda p: p.stat().st_mtime, default=None)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _prediction_status(setup_dir: Path) -> dict:
    """What a prediction setup has: the checkpoint it predicts with and the blocks of predict and extract.

    ``{"checkpoint": {"iteration", "path", "exists"} or None, "predict": {"done", "total", "complete"} or
    None, "extract": {...} or None}``; a stage is None until its first run finished (its record is written
    at the end of a run; while one runs, the log tail shows its progress).
    """
    from ..config import ConfigError, read_predict_config

    out: dict = {"checkpoint": None, "predict": None, "extract": None}
    try:
        cfg = read_predict_config(setup_dir / "predict_config.ini").prediction
    except ConfigError as e:
        out["error"] = str(e)
        return out
    from ..train import checkpoint_path

    path = checkpoint_path(cfg.train_setup, cfg.iteration)
    out["checkpoint"] = {"iteration": cfg.iteration, "path": str(path), "exists": path.is_file()}
    for meta_path in sorted(Path(cfg.out_container).parent.glob("*_prediction.json")):
        try:
            b = json.loads(meta_path.read_text())["blocks"]
            out["predict"] = {"done": int(b["processed"]) + int(b["skipped"]), "total": int(b["total"]),
                              "complete": int(b["processed"]) + int(b["skipped"]) == int(b["total"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    from ..extract.common import SUMMARY_FILE

    # no or an unreadable summary: extraction has not finished a run, and status says "not run yet"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        s = json.loads((setup_dir / SUMMARY_FILE).read_text())
        total = int(s["blocks_total"])
        # the summary keeps failures, not completions: the rest of the blocks are done
        out["extract"] = {"done": total if s["complete"] else total - int(s["blocks_failed"]), "total": total,
                          "complete": bool(s["complete"])}
    return out


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

    Returns ``{"dir", "kind": "train" / "predict" / None, "jobs": [record + "state"] (oldest first),
    "last_checkpoint": {"iteration", "path"} or None (training setups), "prediction": see
    :func:`_prediction_status` (prediction setups), "runs": [{"file", "complete", "blocks"}] of
    blockwise stages, "log_tail": {"stdout": [...], "stderr": [...]} of the newest job, "log":
    {"path", "lines"} of the newest text log under ``log/`` when it is newer than that job's
    output (local training writes ``log/train.log``) or there is no job, else None}``.  Jobs are
    those :func:`launch` recorded in ``SETUP_DIR/jobs/`` and ``SETUP_DIR/log/<stage>/``.  Raises
    :class:`ClusterError` for a missing directory.
    """
    setup_dir = Path(setup_dir).resolve()
    if not setup_dir.is_dir():
        raise ClusterError(f"{setup_dir}: no such directory")
    records = [r for d in _record_dirs(setup_dir) for r in read_job_records(d)]
    records.sort(key=lambda r: r.get("submitted", ""))
    jobs = [{**r, "state": job_state(r["job_id"])} for r in records]
    is_train = (setup_dir / "train_config.ini").is_file()
    is_predict = (setup_dir / "predict_config.ini").is_file()
    last = _last_checkpoint(setup_dir) if is_train else None
    newest = jobs[-1] if jobs else None
    log = _newest_log(setup_dir)
    if log is not None and newest is not None and _mtime(log) <= _mtime(Path(newest["stdout"])):
        log = None  # the newest job's output is the newer news
    return {
        "dir": str(setup_dir),
        "kind": "train" if is_train else "predict" if is_predict else None,
        "jobs": jobs,
        "last_checkpoint": None if last is None else {"iteration": last[0], "path": str(last[1])},
        "prediction": _prediction_status(setup_dir) if is_predict else None,
        "log": None if log is None else {"path": str(log), "lines": _tail(log, tail)},
        "runs": _blockwise_runs(setup_dir),
        "log_tail": {} if newest is None else {"stdout": _tail(Path(newest["stdout"]), tail),
                                               "stderr": _tail(Path(newest["stderr"]), tail)},
    }


def format_status(st: dict) -> str:
    """Human-readable text of a :func:`status` dict."""
    lines = [f"setup: {st['dir']}"]
    lc, pred = st["last_checkpoint"], st.get("prediction")
    if pred is not None:
        ck = pred.get("checkpoint")
        if pred.get("error"):
            lines.append(f"config: {pred['error']}")
        if ck is not None:
            lines.append(f"checkpoint: iteration {ck['iteration']} ({ck['path']}"
                         + ("" if ck["exists"] else ", MISSING") + ")")
        for stage in ("predict", "extract"):
            b = pred.get(stage)
            lines.append(f"{stage}: " + ("not run yet" if b is None else f"{b['done']}/{b['total']} blocks done"
                                          + ("" if b["complete"] else " (INCOMPLETE: rerun to resume)")))
    elif st.get("kind") != "predict":
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
    if st.get("log") and st["log"]["lines"]:
        lines.append(f"--- {st['log']['path']} (last {len(st['log']['lines'])} lines) ---")
        lines += st["log"]["lines"]
    return "\n".join(lines)

