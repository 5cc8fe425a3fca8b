"""Prediction workers: the ``synful predict-worker`` entry point, and how the scheduler starts one per
worker slot (locally on a GPU of its own or CPU threads, or as a Slurm job)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ..config import Worker
from .network import THREADS_ENV, BlockPredictor, configure_tensorflow
from .plan import PredictionError, plan_prediction, signature_path

logger = logging.getLogger("synful.predict")


def run_worker(predict_dir, *, model_factory=None) -> int:
    """Worker entry point (``synful predict-worker PREDICT_DIR``): process the blocks the daisy scheduler
    named in ``$DAISY_CONTEXT`` hands out until there are none left, loading the model once.

    Blocks go through :func:`serve_pipelined` (reading the next block and writing the last one overlap
    the network on the current one).  Returns the number of blocks processed.  Refuses to run when the
    run's configuration changed since the scheduler started it (the signature in ``PREDICT_DIR/blocks/``
    differs).  Raises :class:`synful.cluster.SchedulerLost` (the worker exits) when the scheduler is
    gone.  ``model_factory(plan)`` replaces :func:`~synful.predict.network.load_model` (benchmarks run
    the worker on a network-free model of the same shapes).
    """
    import daisy.v2 as daisy

    plan = plan_prediction(predict_dir)
    sig_file = signature_path(plan)
    if sig_file.is_file() and not plan.matches(json.loads(sig_file.read_text()).get("signature")):
        raise PredictionError(f"{plan.predict_dir}: configuration changed since this run started; "
                              f"rerun `synful predict {plan.predict_dir}` (with --overwrite to start over)")
    t0 = time.time()

    def make_predictor():  # TensorFlow only once there is work: a rerun of a finished run stays cheap
        configure_tensorflow(plan)
        return BlockPredictor(plan, model_factory(plan) if model_factory is not None else None)

    # a failed block ends this worker (daisy replaces it, up to max_retries x workers); a lost
    # scheduler ends it with SchedulerLost
    done = serve_pipelined(pipeline_clients(daisy), make_predictor)
    logger.info("worker processed %d blocks in %.1f s", done, time.time() - t0)
    return done


#: blocks a worker holds at once: one in the network, one being read ahead, one being written
PIPELINE_DEPTH = 3


def pipeline_clients(daisy, depth: int = PIPELINE_DEPTH) -> list:
    """``depth`` daisy clients of this worker's ``$DAISY_CONTEXT``: the worker's own, and more connections
    that the scheduler does not tie to a worker slot (``worker_id`` -1), each to hold one block.

    One client per held block because daisy's server answers a client's request for a block with
    "no more blocks" when none is ready, and then drops the connection and counts every block still
    held on it as lost (failed).  A client that asks only while it holds nothing loses nothing.
    """
    context = daisy.Context.from_env()
    clients = [daisy.Client(context)]
    for _ in range(depth - 1):
        extra = context.copy()
        extra["worker_id"] = "-1"
        clients.append(daisy.Client(extra))
    return clients


@dataclass(eq=False)  # compared by identity: held.remove() must remove this very block
class _Held:
    """A block this worker holds: its client, daisy's open ``acquire_block`` context, and where the block is."""

    client: object
    block: object
    lease: object  # the entered acquire_block() context manager; exited exactly once, by release
    read: Future | None = None
    write: Future | None = None
    error: BaseException | None = None


def serve_pipelined(clients: list, make_predictor, *, prefetch: int = 1) -> int:
    """The prediction block loop: like :func:`synful.cluster.serve_blocks`, with three stages overlapping.

    ``clients``: daisy clients of one task (:func:`pipeline_clients`); each holds at most one block at a
    time and asks for the next only when it holds none, so ``len(clients)`` bounds the blocks held (each
    with its raw data or its outputs in memory).  ``make_predictor()`` (called once, when the first block
    arrives) returns a :class:`~synful.predict.network.BlockPredictor`.  A reader thread reads the raw
    data of up to ``prefetch`` blocks ahead (:meth:`~BlockPredictor.read_block`) while this thread runs
    the network (:meth:`~BlockPredictor.predict_raw`), and a writer thread stores finished blocks
    (:meth:`~BlockPredictor.write_block`), one after another in the order they left the network.

    Every call on a client (acquire, report success or failure) is made from this thread, and each
    block is released by the client that acquired it.  A block is reported done to the scheduler
    only after its write returned: a worker killed at any moment leaves every block whose outputs
    are not complete not done, and a rerun redoes it.  A block whose read, network or write raises
    is reported failed (never done).  After a failure no more blocks are acquired; those already
    held are finished (each reported on its own) and the first error is raised, which ends the worker
    as in :func:`~synful.cluster.serve_blocks`.  An error talking to the scheduler raises
    :class:`~synful.cluster.SchedulerLost`.  Returns the number of blocks done.
    """
    from ..cluster import SchedulerLost

    held: list[_Held] = []  # in the order acquired
    idle = list(clients)
    predictor = None
    exhausted = False
    first_error: BaseException | None = None
    done = 0

    def lost(client, e: BaseException) -> SchedulerLost:
        where = f"{getattr(client, 'host', '?')}:{getattr(client, 'port', '?')}"
        return SchedulerLost(f"lost the daisy scheduler at {where} ({type(e).__name__}: {e}) after "
                             f"{done} block(s); the worker exits")

    def release(h: _Held):
        nonlocal done, first_error
        held.remove(h)
        if h.error is None and h.write is not None:
            h.error = h.write.exception()
        try:
            if h.error is None:
                h.lease.__exit__(None, None, None)
            else:  # daisy's context reports the failure with its traceback (the block is not done)
                h.lease.__exit__(type(h.error), h.error, h.error.__traceback__)
        except Exception as e:
            raise lost(h.client, e) from e
        idle.append(h.client)
        if h.error is None:
            done += 1
        else:
            logger.error("block %s failed: %s: %s", h.block.block_id, type(h.error).__name__, h.error)
            first_error = first_error or h.error

    def release_written(block_on: Future | None = None):
        """Release every block whose write ended; with ``block_on``, first wait until it or a write ends."""
        if block_on is not None:
            wait([h.write for h in held if h.write is not None] + [block_on], return_when=FIRST_COMPLETED)
        for h in [h for h in held if h.write is not None and h.write.done()]:
            release(h)

    with ThreadPoolExecutor(1, thread_name_prefix="synful-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="synful-write") as writer:
        try:
            while True:
                # keep the reader busy: up to `prefetch` blocks beyond the one the network runs next
                while not exhausted and first_error is None and idle and \
                        sum(h.write is None for h in held) < 1 + prefetch:
                    client = idle.pop(0)
                    lease = client.acquire_block()
                    try:
                        block = lease.__enter__()
                    except Exception as e:
                        raise lost(client, e) from e
                    if block is None:  # the scheduler has no more blocks; this client holds none
                        lease.__exit__(None, None, None)
                        exhausted = True
                        break
                    h = _Held(client, block, lease)
                    held.append(h)
                    try:
                        if predictor is None:
                            predictor = make_predictor()
                        h.read = reader.submit(predictor.read_block, block.read_roi, block.write_roi)
                    except Exception as e:  # e.g. the model does not load: this block fails
                        h.error = e
                        release(h)
                nxt = next((h for h in held if h.write is None), None)
                if nxt is None:
                    if not held:
                        break
                    release_written(held[0].write)  # nothing to run: wait for the oldest write
                    continue
                while not nxt.read.done():  # report finished writes while waiting for the read
                    release_written(nxt.read)
                try:
                    result = predictor.predict_raw(nxt.read.result(), nxt.block.write_roi)
                except Exception as e:
                    nxt.error = e
                    release(nxt)
                    continue
                nxt.write = writer.submit(predictor.write_block, nxt.block.write_roi, result)
                del result
                release_written()
        except BaseException:
            # SchedulerLost or an interrupt: nothing more can be reported; what is held is not done and
            # the scheduler retries it.  Wait for the threads (the executors' exit) and leave.
            for h in held:
                for f in (h.read, h.write):
                    if f is not None:
                        f.cancel()
            raise
    if first_error is not None:
        raise first_error
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

