"""The blockwise driver: :func:`extract` runs :func:`process_block` over a prediction run with daisy,
locally or as Slurm worker jobs, and :func:`summarize` describes the result."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import SynfulError
from ..io.files import atomic_write
from ..io.partners import NO_ID
from .common import HISTOGRAM_FILE, SUMMARY_FILE, TASK_ID, TRACKING_DIR, ExtractionError, _write_json
from .partners import find_partners
from .run import _forget, _release, _Run, _run_for
from .signature import _check_and_claim, _redact

logger = logging.getLogger("synful.extract")


def process_block(predict_dir, block) -> dict:
    """Extract one daisy block of the run in ``predict_dir`` and replace its partners in the store.

    Raises on any error, so daisy never marks a failed block done.  Fails at once, before reading
    anything, when the store is known to be gone (:meth:`synful.store.Store.check_reachable`) or the
    run's inputs changed since the extraction started.  Returns the block's stats.
    """
    run = _run_for(predict_dir)
    run.store.check_reachable()
    run.check_signature()
    read_roi = block.read_roi
    ind = run.indicator.to_ndarray(read_roi, fill_value=0)
    prob = ind.astype(np.float32) * np.float32(run.indicator_scale)
    vec = run.vectors.to_ndarray(read_roi, fill_value=0)
    segments = run.segmentation.to_ndarray(read_roi, fill_value=0) if run.cfg.split_by_segment else None
    write_roi = block.write_roi.intersect(run.indicator.roi)
    stats: dict = {}
    partners = find_partners(prob, vec, run.indicator.voxel_size, read_roi.offset, run.cfg, roi=write_roi,
                             segmentation=run.segmentation, segments=segments, vectors_scale=run.vectors_scale,
                             stats=stats)
    run.store.write_block(int(block.block_id[1]), partners)
    if stats.get("truncated"):
        logger.warning("block %s: %d partner(s) from components cut by the read ROI; raise [Extraction] "
                       "context (now %s nm)", block.block_id[1], stats["truncated"], run.cfg.context)
    stats["partners"] = len(partners)
    return stats


def run_worker(predict_dir) -> None:
    """Worker entry point: take blocks from the daisy server named in $DAISY_CONTEXT until none are left.

    What a cluster job runs (``synful extract-worker PREDICT_DIR``); local runs use daisy's own workers.
    A failed block is reported to the server (not done) and the worker serves the next one; when the
    server is gone the worker exits with :class:`synful.cluster.SchedulerLost` (see
    :func:`synful.cluster.serve_blocks`).
    """
    import daisy.v2 as daisy

    from ..cluster import serve_blocks

    serve_blocks(daisy.Client(), functools.partial(process_block, predict_dir), keep_going=True)


class _ClusterWorker:
    """daisy's worker function for ``executor = slurm``: one ``synful extract-worker`` job through
    :func:`synful.cluster.run` (cancelled if this slot is stopped), connecting back over TCP."""

    def __init__(self, predict_dir: str, worker_cfg):
        self.predict_dir, self.worker_cfg = predict_dir, worker_cfg

    def __call__(self, *, context):
        from ..cluster import run, synful_command

        name = f"extract-worker-{context.get('worker_id', '0')}"
        log_dir = Path(self.predict_dir) / "log" / "extract"
        rc = run(self.worker_cfg, synful_command(self.worker_cfg, ["extract-worker", self.predict_dir]), name=name,
                 log_dir=log_dir, env={"DAISY_CONTEXT": context.to_env()})
        if rc != 0:
            raise RuntimeError(f"{name} exited with code {rc} (logs: {log_dir})")


def _worker_config(predict_dir: Path, executor: str | None):
    """The run's [Worker] (profile applied, validated), with ``executor`` overriding the config's."""
    from dataclasses import replace

    from ..cluster import check_worker
    from ..config import Worker, read_worker_config

    wc = predict_dir / "worker_config.ini"
    worker = read_worker_config(wc) if wc.is_file() else Worker()
    if executor is not None:
        worker = replace(worker, executor=executor)
    return check_worker(worker)


def _num_workers(predict_dir: Path) -> int:
    wc = predict_dir / "worker_config.ini"
    n = 0
    if wc.is_file():
        from ..config import read_worker_config

        n = read_worker_config(wc).num_block_workers
    return n if n > 0 else max(1, (os.cpu_count() or 2) // 2)


def extract(predict_dir, overwrite: bool = False, *, num_workers: int | None = None,
            multiprocessing: bool = True, progress: bool = False, executor: str | None = None) -> dict:
    """Extract the partners of the prediction run in ``predict_dir`` blockwise into its result collection.

    Reads predict_config.ini ([Prediction] outputs, [Extraction] method and
    store).  Blocks already done (daisy done markers in
    ``<predict_dir>/extract_tracking``) are skipped, but only when the
    extraction's signature is unchanged (:mod:`synful.extract`); otherwise, and for
    an unfinished prediction, a collection owned by another run, markers whose
    collection lost its record or a collection of unknown partners, it raises
    :class:`ExtractionError` before anything is written, naming what differs.
    ``overwrite`` drops this run's partners and the markers first (never
    another run's collection).  ``num_workers`` local worker processes
    (default: worker_config.ini ``num_block_workers``); ``multiprocessing=False``
    runs in-process.  An unreachable store fails before any block runs.
    With ``executor = slurm`` (worker_config.ini, or the ``executor``
    argument) each worker is a Slurm job (:func:`synful.cluster.run`); its
    resources, container and retries (``max_retries``) come from worker_config.ini.

    Returns the summary dict also written to ``extraction_summary.json``
    (with a score histogram ``extraction_scores.png``).  Raises
    :class:`ExtractionError` when blocks failed (they stay not done; rerun); a
    store that stops answering fails the run within about
    :data:`synful.store.OUTAGE_BUDGET_S` + 2 x its timeouts.
    """
    import daisy.logging as daisy_logging
    import daisy.v2 as daisy

    predict_dir = Path(predict_dir).resolve()
    run, worker_cfg = _start(predict_dir, overwrite, executor)
    store = run.store
    daisy_logging.set_log_basedir(predict_dir / "log" / "extract")
    workers = int(num_workers or _num_workers(predict_dir))
    task = _task(run, worker_cfg, workers, multiprocessing)
    _, _, write_roi = run.block_geometry()
    logger.info("extracting %s blocks of %s nm (context %s nm) with %d worker(s) into %s [%s]",
                task.block_grid_shape, write_roi.shape, write_roi.offset, workers, _redact(store.name),
                store.collection)
    try:
        states = daisy.run_blockwise([task], multiprocessing=multiprocessing, progress=progress,
                                     return_states=True, summary=False)
    except (SynfulError, KeyboardInterrupt):
        _release(run)
        raise
    except Exception as e:  # serial runs raise the first block error; worker runs report it in the states
        _release(run)
        raise ExtractionError(f"{predict_dir}: extraction stopped at a failed block ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); finished blocks stay done, "
                              f"rerun to continue") from e
    state = states[TASK_ID]
    summary = _run_summary(run, state, workers)
    _write_json(predict_dir / SUMMARY_FILE, summary)
    _release(run)
    if not summary["complete"]:
        err = (state.last_worker_error or "").strip().splitlines()
        raise ExtractionError(f"{predict_dir}: extraction finished {state.completed_count} of "
                              f"{state.total_block_count} blocks ({summary['blocks_failed']} failed"
                              + (f"; last error: {err[-1]}" if err else "")
                              + f"); see {predict_dir / 'log' / 'extract'}; rerun to retry the missing blocks")
    logger.info("%d partners (%d blocks: %d extracted, %d already done)", summary["partners"], summary["blocks_total"],
                summary["blocks_total"] - summary["blocks_skipped"], summary["blocks_skipped"])
    return summary


def _start(predict_dir: Path, overwrite: bool, executor: str | None):
    """(run, worker config) of an extraction allowed to start: config, worker setup, store and signature checked,
    the collection claimed (:func:`~.signature._check_and_claim`)."""
    from ..preflight import check_extraction_setup

    worker_cfg = _worker_config(predict_dir, executor)  # bad partition / container / mounts / injected lines first
    check_extraction_setup(predict_dir)  # what `synful validate` checks: config, predictions, segmentation
    _forget(predict_dir)  # reread the config: it may have changed since the last call
    run = _run_for(predict_dir)
    # fail fast on the store (opening it reaches the server), before anything is scheduled or marked
    _ = run.store
    _check_and_claim(run, overwrite)
    run._signature_checked = True  # serial blocks run in this process: checked just now
    return run, worker_cfg


def _task(run: _Run, worker_cfg, workers: int, multiprocessing: bool):
    """The daisy task over the run's blocks: Slurm worker jobs, local worker processes or serial blocks."""
    import daisy.v2 as daisy

    predict_dir = run.predict_dir
    total, read_roi, write_roi = run.block_geometry()
    if worker_cfg.executor == "slurm" and multiprocessing:
        cluster_opts = dict(process_function=_ClusterWorker(str(predict_dir), worker_cfg),
                            max_worker_restarts=int(worker_cfg.max_retries) * workers)
    else:
        # worker processes run the same loop a cluster job runs; serial runs call blocks directly
        cluster_opts = dict(process_function=functools.partial(run_worker if multiprocessing else process_block,
                                                                str(predict_dir)))
    return daisy.Task(TASK_ID, total_roi=total, read_roi=read_roi, write_roi=write_roi, **cluster_opts,
                      read_write_conflict=False, fit="overhang", max_workers=workers, max_retries=1,
                      tracking_path=str(predict_dir / TRACKING_DIR / "markers"), skip_mask=_skip_mask(run))


def _skip_mask(run: _Run):
    """daisy's skip mask of the run's blocks without tissue (uint8, 1 = skip), or None without a tissue mask.

    Those blocks were not predicted: they are neither extracted nor reported as missing."""
    import daisy.v2 as daisy

    from ..tissue import task_skip_mask

    if run.tissue_mask() is None:
        return None
    total, read_roi, write_roi = run.block_geometry()
    grid = daisy.Task(TASK_ID, total_roi=total, read_roi=read_roi, write_roi=write_roi, read_write_conflict=False,
                      fit="overhang").block_grid_shape
    return task_skip_mask(run.tissue_mask(), total, read_roi, write_roi, grid)


def _run_summary(run: _Run, state, workers: int) -> dict:
    """The summary of a finished daisy run (statistics of the collection only when every block is done)."""
    from ..config import to_dict

    store = run.store
    complete = state.completed_count == state.total_block_count
    skip = _skip_mask(run)
    masked = int(skip.sum()) if skip is not None else 0
    # after failed blocks the store may be what failed: no statistics then, which would wait on it again
    summary = summarize(run.predict_dir, run=run) if complete else {
        "store": _redact(store.name), "collection": store.collection, "partners": None}
    summary.update({
        "complete": complete,
        "blocks_total": int(state.total_block_count),
        "blocks_skipped": int(state.skipped_count) - masked,  # done by an earlier run
        "blocks_without_tissue": masked,
        "blocks_failed": int(state.failed_count + state.orphaned_count),
        "workers": workers,
        "config": {k: v for k, v in to_dict(run.cfg).items()},
    })
    summary["config"]["store_url"] = _redact(summary["config"]["store_url"])
    return summary



def summarize(predict_dir, *, run: _Run | None = None, bins: int = 50) -> dict:
    """Counts and score statistics of the run's collection; writes the score histogram PNG beside it."""
    from ..store import redact_url

    predict_dir = Path(predict_dir).resolve()
    run = run or _run_for(predict_dir)
    partners = run.store.query()
    scores = partners["score"]
    dist = np.linalg.norm(np.stack([partners[f"pre_{a}"] - partners[f"post_{a}"] for a in "zyx"], 1)
                          .astype(float), axis=1) if len(partners) else np.zeros(0)
    summary = {
        "store": redact_url(run.store.name),
        "collection": run.store.collection,
        "partners": int(len(partners)),
        "score": {k: (float(f(scores)) if len(scores) else None)
                  for k, f in (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))},
        "distance_nm": {k: (float(f(dist)) if len(dist) else None)
                        for k, f in (("min", np.min), ("median", np.median), ("max", np.max))},
        "with_segment_ids": int(np.sum((partners["pre_seg_id"] != NO_ID) & (partners["post_seg_id"] != NO_ID))),
        "histogram": str(predict_dir / HISTOGRAM_FILE),
    }
    _histogram(scores, predict_dir / HISTOGRAM_FILE, bins, f"{run.store.collection}: {len(scores)} partners")
    return summary


def score_histogram_figure(scores: np.ndarray, bins: int, title: str):
    """The partners' score histogram (a matplotlib ``Figure``, one ``Axes``) with a log count axis: a few
    high-scoring partners stay visible beside the many low-scoring ones; "no partners" written when empty."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    scores = np.asarray(scores, dtype=float)
    if len(scores):
        ax.hist(scores, bins=bins, color="tab:blue")
    else:
        ax.text(0.5, 0.5, "no partners", transform=ax.transAxes, ha="center", va="center")
    ax.set_yscale("log")
    ax.set_xlabel("score")
    ax.set_ylabel("partners (log scale)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _histogram(scores: np.ndarray, path: Path, bins: int, title: str):
    fig = score_histogram_figure(scores, bins, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
