"""Blockwise workers: a worker slot's job that never outlives its run, and a worker's block loop."""

from __future__ import annotations

import os
import signal
from contextlib import suppress
from typing import Optional, Sequence

from ..config import Worker
from .errors import SchedulerLost, logger
from .executors import launch

#: seconds between two looks of a waiting worker slot at its parent (and, unless it can wait for it, its job)
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
        # bounded waits, not one wait(): a SIGKILLed parent sends no signal, reparenting is the only trace
        while not handle.ended_within(_SLOT_POLL_S):
            if os.getppid() != parent:
                raise SchedulerLost(f"the scheduler process (pid {parent}) that started {handle.executor} job "
                                    f"{handle.job_id} ({name}) ended; cancelling the job")
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
