#!/usr/bin/env python
"""Benchmark: daisy 2 scheduling overhead, in empty blocks/s (the process function does nothing).

A daisy task over a grid of empty blocks (write ROI = read ROI, no context, done markers in a
temporary tracking folder, as ``synful predict`` and ``synful extract`` run theirs), in the modes
the stages use:

- ``serial``: ``run_blockwise(multiprocessing=False)``, every block in this process (``--in-process``);
- ``workers_1``, ``workers_2``: local worker processes (daisy's subprocess workers, TCP to the
  scheduler on 127.0.0.1);
- ``resume``: the ``workers_2`` task run again: every block is already marked done and skipped;
- ``million``: 10^6 blocks with 2 workers and a tissue mask (daisy ``skip_mask``) that skips 65% of them, as
  a whole-brain bounding box would, run in a fresh process so that its peak memory (``ru_maxrss``) is the
  scheduler's own (workers are separate processes).

Each mode is timed twice, over one block (start-up: server, worker spawn) and over all blocks;
``blocks_per_s`` includes start-up, ``steady_blocks_per_s = (N - 1) / (t_N - t_1)`` does not.
Prints a table and saves JSON with machine info and the headline figures (``summary``) to
``benchmarks/results/bench_schedule.json``.

    python benchmarks/bench_schedule.py [--blocks 20000] [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, save_report

BLOCK_NM = (40, 400, 400)  # one write block, nm (z, y, x); its size does not matter to the scheduler


def noop(block) -> None:
    """daisy block function that does nothing: what is left is scheduling, messaging and markers."""


def _grid(n_blocks: int) -> tuple[int, int, int]:
    """(z, y, x) block grid with at least ``n_blocks`` blocks, as flat in z as a brain volume."""
    z = 4 if n_blocks >= 4 else 1
    side = max(1, round((n_blocks / z) ** 0.5))
    return z, side, -(-n_blocks // (z * side))


def run_task(n_blocks: int, workers: int, tracking: Path, task_id: str, skip_fraction: float = 0.0) -> dict:
    """Run one task of about ``n_blocks`` empty blocks; ``workers = 0`` is daisy's serial mode.

    ``skip_fraction`` of the blocks (chosen at random, seeded) are masked out with daisy's ``skip_mask``.
    """
    import daisy.v2 as daisy
    import numpy as np
    from funlib.geometry import Coordinate, Roi

    grid = Coordinate(_grid(n_blocks))
    block = Coordinate(BLOCK_NM)
    skip = None
    if skip_fraction > 0:
        skip = (np.random.default_rng(0).random(tuple(grid)) < skip_fraction).astype(np.uint8)
    task = daisy.Task(task_id, Roi((0, 0, 0), grid * block), Roi((0, 0, 0), block), Roi((0, 0, 0), block),
                      process_function=noop, read_write_conflict=False, fit="overhang",
                      max_workers=max(1, workers), max_retries=0, tracking_path=str(tracking / task_id),
                      skip_mask=skip)
    t0 = time.perf_counter()
    states = daisy.run_blockwise(task, multiprocessing=workers > 0, progress=False, return_states=True,
                                 summary=False, host="127.0.0.1")
    dt = time.perf_counter() - t0
    state = states[task_id]
    if state.completed_count != state.total_block_count:
        raise SystemExit(f"{task_id}: {state.completed_count} of {state.total_block_count} blocks completed "
                         f"({state.last_worker_error})")
    return {"blocks": int(state.total_block_count), "skipped": int(state.skipped_count), "seconds": dt}


def measure(n_blocks: int, workers: int, tracking: Path, name: str, resume: bool = False) -> dict:
    """Start-up (one block) and full run of one mode; with ``resume`` the full run is repeated over done markers."""
    one = run_task(1, workers, tracking, f"{name}_one")
    full = run_task(n_blocks, workers, tracking, name)
    if resume:
        full = run_task(n_blocks, workers, tracking, name)
        assert full["skipped"] == full["blocks"], full
    n, t, t1 = full["blocks"], full["seconds"], one["seconds"]
    steady = (n - 1) / (t - t1) if n > 1 and t > t1 else None
    return {"workers": workers, "blocks": n, "skipped": full["skipped"], "seconds": round(t, 3),
            "startup_seconds": round(t1, 3), "blocks_per_s": round(n / t, 1),
            "steady_blocks_per_s": round(steady, 1) if steady else None}


def measure_million(n_blocks: int, tracking: Path) -> dict:
    """The ``million`` mode, in a fresh Python process: 2 workers, 65% of the blocks masked out."""
    import json
    import subprocess

    res = subprocess.run([sys.executable, __file__, "--_million", str(n_blocks), "--_tracking", str(tracking)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _million(n_blocks: int, tracking: Path) -> dict:
    import resource

    import daisy.logging

    daisy.logging.set_log_basedir(tracking / "logs")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = run_task(n_blocks, 2, tracking, "million", skip_fraction=0.65)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"workers": 2, "blocks": r["blocks"], "skipped": r["skipped"], "processed": r["blocks"] - r["skipped"],
            "seconds": round(r["seconds"], 3), "blocks_per_s": round(r["blocks"] / r["seconds"], 1),
            "scheduler_peak_rss_bytes": peak, "scheduler_rss_before_bytes": before}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--_million", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_tracking", help=argparse.SUPPRESS)
    ap.add_argument("--million-blocks", type=int, default=10**6, help="blocks of the million mode")
    ap.add_argument("--blocks", type=int, default=20000, help="empty blocks per run")
    ap.add_argument("--quick", action="store_true", help="a small run (200 blocks): checks the set-up, not the speed")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_schedule.json)")
    args = ap.parse_args(argv)
    if args._million:
        import json

        print(json.dumps(_million(args._million, Path(args._tracking))))
        return 0
    n = 200 if args.quick else args.blocks

    import daisy.logging

    modes = {}
    with tempfile.TemporaryDirectory(prefix="bench_schedule_") as tmp:
        tmp = Path(tmp)
        daisy.logging.set_log_basedir(tmp / "logs")  # worker logs with the markers, not in the working directory
        modes["serial"] = measure(n, 0, tmp, "serial")
        modes["workers_1"] = measure(n, 1, tmp, "workers_1")
        modes["workers_2"] = measure(n, 2, tmp, "workers_2")
        modes["resume"] = measure(n, 2, tmp, "workers_2", resume=True)
        modes["million"] = measure_million(2000 if args.quick else args.million_blocks, tmp)
    report = {"benchmark": "schedule", "machine": machine_info(), "quick": args.quick,
              "inputs": {"blocks_requested": n, "grid": list(_grid(n)), "block_nm": list(BLOCK_NM),
                         "process_function": "no-op", "tracking": "done markers in a temporary folder"},
              "modes": modes}
    print(f"{'mode':10s} {'blocks':>7s} {'seconds':>8s} {'start-up s':>10s} {'blocks/s':>9s} {'steady/s':>9s}")
    for k, r in modes.items():
        print(f"{k:10s} {r['blocks']:7d} {r['seconds']:8.2f} {r.get('startup_seconds', float('nan')):10.2f} "
              f"{r['blocks_per_s']:9.0f} {r.get('steady_blocks_per_s') or float('nan'):9.0f}")
    m = modes["million"]
    print(f"million: {m['blocks']} blocks ({m['skipped']} masked out, {m['processed']} run) in {m['seconds']:.1f} s "
          f"with 2 workers; scheduler peak RSS {m['scheduler_peak_rss_bytes'] / 2**20:.0f} MiB")
    save_report(args.out, "schedule", report, stage="scheduling")
    return 0


if __name__ == "__main__":
    sys.exit(main())
