"""One prediction run: :func:`predict` checks the plan, prepares the outputs, lets daisy hand the blocks
to the workers, and writes the run metadata."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..config import Worker, read_worker_config, to_dict, write_config
from ..io.files import git_commit, write_json
from .arrays import indicator_scale, prepare_outputs, vectors_scale
from .network import BlockPredictor
from ..preflight import check_prediction_setup
from .plan import HEAD_INDICATOR, PredictionError, PredictionPlan, _fmt_roi, signature_path
from .progress import ProgressBar
from .workers import _WorkerSpawner

logger = logging.getLogger("synful.predict")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data, default=str, newline=True)


@dataclass(frozen=True)
class _Workers:
    """The block workers of a run: how many, the local GPUs they share, CPU threads each."""

    count: int
    gpus: list
    threads: int


def predict(predict_dir, overwrite: bool = False, *, progress: bool = True, in_process: bool = False,
            executor: str | None = None) -> dict:
    """Predict the ROI of ``PREDICT_DIR/predict_config.ini`` blockwise; return the run metadata.

    Workers come from ``PREDICT_DIR/worker_config.ini`` [Worker]: ``num_block_workers`` (0: one per
    GPU found, or one per 2 CPU cores without GPUs), ``executor`` (local or slurm), ``max_retries``
    (retries per block; the run tolerates ``max_retries x workers`` worker crashes).  A rerun resumes:
    blocks marked done are skipped; ``overwrite=True`` deletes the outputs and the done markers first.
    ``in_process=True`` runs every block in this process (daisy's serial mode; for debugging).
    ``executor`` (``local`` or ``slurm``) overrides the worker config's.

    Raises :class:`PredictionError` / ConfigError before anything is written or any worker starts for
    every problem :func:`synful.preflight.check_prediction_setup` finds (bad configs, a missing
    checkpoint, raw that is not uint8, an empty ROI or one outside the raw data, an input shape the
    network cannot take, a run directory or output container that cannot be written), and after the run
    when blocks remain undone (a rerun resumes).
    """
    worker_ini = Path(predict_dir).resolve() / "worker_config.ini"
    worker_cfg = read_worker_config(worker_ini) if worker_ini.is_file() else Worker()
    plan = check_prediction_setup(predict_dir)  # what `synful validate` checks, before anything is written
    worker_cfg = _checked_worker_config(worker_cfg, executor)
    _check_resumable(plan, overwrite)
    run_id, signature = _start_run(plan, overwrite)
    workers = _choose_workers(worker_cfg, in_process)
    start, t0 = _now(), time.time()
    state, stats = _run_blocks(plan, worker_cfg, workers, progress=progress, in_process=in_process)
    error = _abandon_reason(state)
    end, wall = _now(), time.time() - t0
    meta = _run_metadata(plan, state, stats, run_id=run_id, signature=signature, worker_cfg=worker_cfg,
                         workers=workers, in_process=in_process, start=start, end=end, wall=wall, error=error)
    _write_json(plan.metadata_path, meta)
    total, skipped, completed = meta["blocks"]["total"], meta["blocks"]["skipped"], _completed(state)
    if error is not None or completed != total:
        reason = error or f"{total - completed} of {total} blocks not done"
        raise PredictionError(f"prediction of {plan.predict_dir} did not finish: {reason}\n"
                              f"worker logs: {plan.log_dir}; rerun `synful predict {plan.predict_dir}` to resume")
    logger.info("predict %s: %d blocks: %d predicted, %d already done in %.1f s, %.0f voxels/s", plan.name, total,
                meta["blocks"]["processed"], skipped, wall,
                meta["voxels_per_second"] or 0.0)
    return meta


def _checked_worker_config(worker_cfg: Worker, executor: str | None) -> Worker:
    """The worker config, its executor overridden by ``executor`` if given, checked."""
    from ..cluster import check_worker

    if executor is not None:  # `synful predict --submit`: workers as Slurm jobs whatever the config says
        worker_cfg = replace(worker_cfg, executor=executor)
    return check_worker(worker_cfg)


def _check_resumable(plan: PredictionPlan, overwrite: bool):
    """Refuse to resume done markers of another configuration; ``overwrite`` deletes them instead."""
    sig_file = signature_path(plan)
    if overwrite:
        shutil.rmtree(plan.tracking_dir, ignore_errors=True)
        sig_file.unlink(missing_ok=True)
    elif sig_file.is_file():
        stored = json.loads(sig_file.read_text()).get("signature")
        if plan.from_older_version(stored):
            raise PredictionError(f"{plan.predict_dir}: these outputs were started by an earlier synful (encoding on "
                                  f"the host; values may differ by one at rounding boundaries); rerun with "
                                  f"--overwrite to start over")
        if not plan.matches(stored):
            raise PredictionError(f"{plan.predict_dir}: the configuration changed since the last (unfinished or "
                                  f"finished) run of these outputs; rerun with --overwrite to start over")
    elif plan.tracking_dir.exists():
        raise PredictionError(f"{plan.tracking_dir}: done markers without a run signature; "
                              f"rerun with --overwrite to start over")


def _start_run(plan: PredictionPlan, overwrite: bool) -> tuple[str, str]:
    """Prepare the outputs, record the run's signature and id, write its config; return (run id, signature)."""
    from ..io.volumes import VolumeError

    try:
        prepare_outputs(plan, overwrite=overwrite)
    except VolumeError as e:
        raise PredictionError(f"{e}\n(outputs of an earlier run with other settings: rerun with --overwrite)") from None
    except OSError as e:  # checked up front; this is a file system that changed since
        raise PredictionError(f"{e.filename or plan.prediction.out_container}: cannot write the prediction "
                              f"outputs: {e.strerror or e}") from None
    # a run id: kept while a run resumes, new whenever the outputs start over (--overwrite, first run);
    # extraction keys its done markers on it and refuses metadata of another id (an unfinished newer run)
    sig_file = signature_path(plan)
    run_id = (json.loads(sig_file.read_text()).get("run_id") if sig_file.is_file() else None) or uuid.uuid4().hex
    signature = plan.signature()
    _write_json(sig_file, {"signature": signature, "task_id": plan.task_id, "run_id": run_id})
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    write_config(plan.out_dir / f"{plan.name}_predict_config.ini", plan.prediction)
    return run_id, signature


def _choose_workers(worker_cfg: Worker, in_process: bool) -> _Workers:
    """How many block workers, on which local GPUs, with how many CPU threads each."""
    from ..cluster import block_worker_count, discover_gpus

    local = worker_cfg.executor == "local"
    gpus = discover_gpus() if (local and worker_cfg.gpus > 0 and not in_process) else []
    n_workers = block_worker_count(worker_cfg, gpus)
    if local:  # share this machine's cores (network on CPU workers; raw decoding and encoding on all)
        threads = max(1, (os.cpu_count() or 1) // max(1, n_workers))
    else:
        threads = int(worker_cfg.num_cpus)
    return _Workers(count=n_workers, gpus=gpus, threads=threads)


def _roi_voxels(plan: PredictionPlan) -> float:
    return float(np.prod(plan.roi.shape / plan.voxel_size))


def _run_blocks(plan: PredictionPlan, worker_cfg: Worker, workers: _Workers, *, progress: bool, in_process: bool):
    """Run the daisy task over the ROI; return (its final state or None, daisy's per-block statistics)."""
    import daisy.logging as daisy_logging
    import daisy.v2 as daisy

    p = plan.prediction
    voxels_per_block = _roi_voxels(plan) / plan.num_blocks  # on average: blocks at the far end are cropped
    observer = ProgressBar(plan.task_id, voxels_per_block, enabled=progress)
    total_roi, read_roi, write_roi = plan.task_rois()
    skip = plan.skip_mask()  # blocks without tissue: neither run nor missing
    common = dict(read_write_conflict=False, fit="overhang", max_retries=int(worker_cfg.max_retries),
                  tracking_path=str(plan.tracking_dir), timeout=float(p.block_timeout), skip_mask=skip)

    daisy_logging.set_log_basedir(str(plan.log_dir))
    logger.info("predict %s: ROI %s, %d blocks of %s nm, %d worker(s)%s", plan.name, _fmt_roi(plan.roi),
                plan.num_blocks, tuple(plan.block_write), workers.count,
                f" on GPUs {workers.gpus}" if workers.gpus else " on CPU")
    stats = {}
    if in_process:
        predictor = BlockPredictor(plan)
        task = daisy.Task(plan.task_id, total_roi, read_roi, write_roi, process_function=predictor.process,
                          max_workers=1, **common)
        states = daisy.run_blockwise(task, multiprocessing=False, return_states=True, progress=observer,
                                     summary=False)
    else:
        spawner = _WorkerSpawner(str(plan.predict_dir), worker_cfg, tuple(workers.gpus), workers.threads)
        task = daisy.Task(plan.task_id, total_roi, read_roi, write_roi, process_function=spawner,
                          max_workers=workers.count, max_worker_restarts=int(worker_cfg.max_retries) * workers.count,
                          resource_tracking=True, **common)
        server = daisy.Server()  # unlike run_blockwise, returns (not raises) when workers keep dying
        states = server.run_blockwise(task, progress=observer, summary=False,
                                      host="127.0.0.1" if worker_cfg.executor == "local" else None)
        stats = ((server.last_tracking_summary or {}).get("per_task") or {}).get(plan.task_id) or {}
    return states.get(plan.task_id) or observer.last, stats


def _abandon_reason(state) -> str | None:
    """Why daisy abandoned the task (with the first worker error's last lines), or None."""
    if state is None or not state.abandoned:
        return None
    error = f"task abandoned: {state.abandon_reason}"
    tail = str(state.first_worker_error or state.last_worker_error or "")
    if "RuntimeError: " in tail:  # skip daisy's traceback down to our message
        tail = tail[tail.rindex("RuntimeError: ") + len("RuntimeError: "):]
    if tail.strip():
        error += "\nfirst worker error: " + "\n".join(tail.strip().splitlines()[-8:])
    return error


def _completed(state) -> int:
    return int(state.completed_count) if state is not None else 0


def _run_metadata(plan: PredictionPlan, state, stats: dict, *, run_id: str, signature: str, worker_cfg: Worker,
                  workers: _Workers, in_process: bool, start: str, end: str, wall: float, error: str | None) -> dict:
    """What ``<run>_prediction.json`` records of a run: config, inputs, geometry, outputs, workers, counts, rates."""
    p = plan.prediction
    total = int(state.total_block_count) if state is not None else plan.num_blocks
    completed = _completed(state)
    skip = plan.skip_mask()
    masked = int(skip.sum()) if skip is not None else 0
    skipped = int(state.skipped_count) - masked if state is not None else 0  # done by an earlier run
    processed = completed - skipped - masked
    voxels = _roi_voxels(plan) * processed / max(total, 1)
    return {
        "run": plan.name,
        "run_id": run_id,
        "signature": signature,
        "predict_dir": str(plan.predict_dir),
        "config": to_dict(p),
        "train_setup": p.train_setup,
        "checkpoint": str(plan.checkpoint),
        "iteration": p.iteration,
        "synful_version": _version(),
        "git_commit": git_commit(),
        "start": start,
        "end": end,
        "wall_seconds": round(wall, 3),
        "raw": {"container": plan.raw_container, "dataset": plan.raw_dataset, "roi_offset": list(plan.raw_roi.offset),
                "roi_shape": list(plan.raw_roi.shape)},
        "roi_offset": list(plan.roi.offset),
        "roi_shape": list(plan.roi.shape),
        "voxel_size": list(plan.voxel_size),
        "input_shape": list(plan.input_shape),
        "output_shape": list(plan.output_shape),
        "downsample_factor": list(plan.downsample_factor),
        "tile_stride": list(plan.tile_stride),
        "block_write_shape": list(plan.block_write),
        "block_read_shape": list(plan.block_read),
        "outputs": {h: {"container": p.out_container, "dataset": d,
                        "dtype": p.indicator_dtype if h == HEAD_INDICATOR else p.vectors_dtype,
                        "scale": indicator_scale(p) if h == HEAD_INDICATOR else vectors_scale(p)}
                    for h, d in plan.datasets().items()},
        "workers": {"count": 1 if in_process else workers.count, "executor": "in_process" if in_process else
                    worker_cfg.executor, "gpus": workers.gpus, "threads_per_worker": workers.threads},
        "blocks": {"total": total, "processed": processed, "skipped": skipped, "without_tissue": masked,
                   "failed": int(state.failed_count) if state is not None else 0,
                   "orphaned": int(state.orphaned_count) if state is not None else 0,
                   "worker_restarts": int(state.worker_restart_count) if state is not None else 0},
        "voxels_processed": int(voxels),
        # end to end: zarr in, zarr out, worker start-up and model loading included
        "voxels_per_second": round(voxels / wall, 1) if wall > 0 else None,
        # end to end per worker (per GPU); daisy's per-block times overlap in a pipelined worker (up to three
        # blocks held at once), so their sum is no worker time
        "voxels_per_worker_second": (round(voxels / wall / max(1, workers.count if not in_process else 1), 1)
                                     if wall > 0 and processed else None),
        "block_seconds_mean": round(float(stats["mean_block_ms"]) / 1000, 4) if stats.get("mean_block_ms") else None,
        "peak_rss_bytes": int(stats["max_peak_rss_bytes"]) if stats.get("max_peak_rss_bytes") else None,
        "complete": error is None and completed == total,
    }


def _version() -> str:
    from .. import __version__

    return __version__
