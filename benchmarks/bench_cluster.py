#!/usr/bin/env python
"""Benchmark: overhead of starting a trivial job through the cluster layer.

Times ``synful.cluster.launch(...).wait()`` of ``python -c pass`` with the local executor and, when
a Slurm cluster answers (e.g. the one ``tests/slurm/start_local_slurm.sh`` starts), with the slurm
executor (submitit: sbatch, scheduling, srun, result file), sequentially and as N concurrent jobs
(one per fake GPU).  Prints the numbers and saves them with machine info to
``benchmarks/results/bench_cluster.json``, with the headline figures as its ``summary``.

    python benchmarks/bench_cluster.py [--repeat 5] [--concurrent 2] [--profile local] [--local-only] [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine_info, save_report

from synful import cluster
from synful.config import Worker


def _time_jobs(worker: Worker, n_parallel: int, repeat: int, log_dir: Path) -> list[float]:
    """Seconds from launch to the exit code of ``n_parallel`` concurrent trivial jobs, ``repeat`` times."""
    out = []
    for r in range(repeat):
        t0 = time.perf_counter()
        handles = [cluster.launch(worker, [sys.executable, "-c", "pass"], name=f"bench{r}_{i}", log_dir=log_dir)
                   for i in range(n_parallel)]
        codes = [h.wait() for h in handles]
        out.append(time.perf_counter() - t0)
        if any(codes):
            raise SystemExit(f"benchmark job failed: exit codes {codes}; logs in {log_dir}")
    return out


def _summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs": [round(t, 3) for t in times]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=2, help="jobs at once in the concurrent measurement")
    ap.add_argument("--profile", default="local", help="cluster profile for the slurm executor")
    ap.add_argument("--local-only", action="store_true", help="skip the slurm executor even when Slurm answers")
    ap.add_argument("--quick", action="store_true", help="one repetition, local executor only")
    ap.add_argument("--out", default=None, help="result JSON (default benchmarks/results/bench_cluster.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeat, args.local_only = 1, True

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        tmp = Path(tmp)
        local = Worker(executor="local")
        results["local_sequential"] = _summary(_time_jobs(local, 1, args.repeat, tmp / "local"))
        results["local_concurrent"] = _summary(_time_jobs(local, args.concurrent, args.repeat, tmp / "local"))
        slurm_up = not args.local_only and shutil.which("sinfo") \
            and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
        if slurm_up:
            w = Worker(executor="slurm", cluster_profile=args.profile, time_limit="00:05:00")
            results["slurm_sequential"] = _summary(_time_jobs(w, 1, args.repeat, tmp / "slurm"))
            results["slurm_concurrent"] = _summary(_time_jobs(w, args.concurrent, args.repeat, tmp / "slurm"))
        elif not args.local_only:
            print("no Slurm cluster answers (start one with tests/slurm/start_local_slurm.sh): local executor only")

    for k, v in results.items():
        print(f"{k:18s} median {v['median_s']:7.3f} s  (min {v['min_s']:.3f}, max {v['max_s']:.3f})")
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %c %m %G"], capture_output=True, text=True).stdout.strip() \
        if slurm_up else None
    report = {
        "benchmark": "cluster_launch_overhead",
        "machine": {**machine_info(), "slurm_partitions": sinfo}, "quick": args.quick,
        "inputs": {"command": "python -c pass", "repeat": args.repeat, "concurrent": args.concurrent,
                   "profile": args.profile},
        "seconds": results,
    }
    save_report(args.out, "cluster", report, indent=2, stage="cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
