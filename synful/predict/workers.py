"""Prediction workers: the ``synful predict-worker`` entry point, and how the scheduler starts one per
worker slot (locally on a GPU of its own or CPU threads, or as a Slurm job)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Worker
from .network import THREADS_ENV, BlockPredictor, configure_tensorflow
from .plan import PredictionError, plan_prediction, signature_path

logger = logging.getLogger("synful.predict")


def run_worker(predict_dir) -> int:
    """Worker entry point (``synful predict-worker PREDICT_DIR``): process the blocks the daisy scheduler
    named in ``$DAISY_CONTEXT`` hands out until there are none left, loading the model once.

    Returns the number of blocks processed.  Refuses to run when the run's configuration changed
    since the scheduler started it (the signature in ``PREDICT_DIR/blocks/`` differs).  Raises
    :class:`synful.cluster.SchedulerLost` (the worker exits) when the scheduler is gone.
    """
    import daisy.v2 as daisy

    from ..cluster import serve_blocks

    plan = plan_prediction(predict_dir)
    sig_file = signature_path(plan)
    if sig_file.is_file() and not plan.matches(json.loads(sig_file.read_text()).get("signature")):
        raise PredictionError(f"{plan.predict_dir}: configuration changed since this run started; "
                              f"rerun `synful predict {plan.predict_dir}` (with --overwrite to start over)")
    predictor = None
    done = 0
    t0 = time.time()

    def process(block):
        nonlocal predictor, done
        if predictor is None:  # TensorFlow only once there is work: a rerun of a finished run stays cheap
            configure_tensorflow(plan)
            predictor = BlockPredictor(plan)
        predictor.process(block)
        done += 1

    # a failed block ends this worker (daisy replaces it, up to max_retries x workers); a lost
    # scheduler ends it with SchedulerLost
    serve_blocks(daisy.Client(), process)
    logger.info("worker processed %d blocks in %.1f s", done, time.time() - t0)
    return done


def spawn_worker(worker_cfg: Worker, argv: list[str], *, name: str, log_dir: Path, env: dict,
                 gpu: int | None) -> int:
    """Start one worker and wait for it; return its exit code.

    The one place a worker is launched: :func:`synful.cluster.run` makes it a local subprocess (``gpu``
    sets ``CUDA_VISIBLE_DEVICES``) or a Slurm job, inside the worker's container if one is configured,
    and cancels it if this process is interrupted or terminated, or the scheduler that started this
    worker slot ends (even by SIGKILL).  Replace this function to launch workers elsewhere.
    """
    from ..cluster import run

    return run(worker_cfg, argv, name=name, log_dir=log_dir, env=env, gpu=gpu)


class _GpuSlot:
    """An exclusive claim on one GPU while a worker runs, as a flock on ``lock_dir/gpu<i>.lock``.

    The lock dies with the process holding it, so a crashed worker's GPU is free for its replacement.
    """

    def __init__(self, lock_dir: Path, gpus: list[int]):
        self.lock_dir, self.gpus, self.handle, self.gpu = lock_dir, gpus, None, None

    def __enter__(self):
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for g in self.gpus:
            f = open(self.lock_dir / f"gpu{g}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self.handle, self.gpu = f, g
            break
        return self.gpu

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()
        return False


@dataclass(frozen=True)
class _WorkerSpawner:
    """daisy's process function, run in daisy's worker-slot process: start one worker and wait for it.

    Picklable (paths and config values only).  Locally, a worker claims a free GPU of ``gpus`` for its
    lifetime, or runs on ``threads`` CPU threads when none is free.
    """

    predict_dir: str
    worker_cfg: Worker
    gpus: tuple[int, ...]
    threads: int

    def __call__(self, *, context):
        from ..cluster import synful_command

        predict_dir = Path(self.predict_dir)
        env = {"DAISY_CONTEXT": context.to_env(), "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        if self.threads:
            env[THREADS_ENV] = str(self.threads)
        argv = synful_command(self.worker_cfg, ["predict-worker", str(predict_dir)])
        name = f"predict-worker-{context.get('worker_id', '0')}"
        log_dir = predict_dir / "log" / "predict"
        with _GpuSlot(predict_dir / "blocks" / "gpu_locks", list(self.gpus)) as gpu:
            if self.worker_cfg.executor == "local" and gpu is None:
                env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker must not touch a GPU another worker holds
            elif gpu is not None:
                env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers GPUs as NVML does
            rc = spawn_worker(self.worker_cfg, argv, name=name, log_dir=log_dir, env=env, gpu=gpu)
        if rc != 0:
            raise RuntimeError(f"{name} exited with code {rc}{_log_tail(log_dir, name)}")


#: TensorFlow's C++ start-up chatter (absl log lines), left out of error messages
_TF_NOISE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)")


def _log_tail(log_dir: Path, name: str, lines: int = 6) -> str:
    """The stderr log of the last job called ``name`` and its last lines, for an error message."""
    from ..cluster import read_job_records

    records = [r for r in read_job_records(log_dir) if r.get("name") == name]
    if not records or not records[-1].get("stderr"):
        return f" (logs in {log_dir})"
    path = Path(records[-1]["stderr"])
    try:
        text = [ln for ln in path.read_text(errors="replace").splitlines()
                if ln.strip() and not _TF_NOISE.match(ln)][-lines:]
    except OSError:
        text = []
    return f"; log {path}" + ("".join("\n  " + ln for ln in text) if text else "")

