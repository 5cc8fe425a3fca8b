#!/usr/bin/env python
"""Benchmark: overhead of starting a trivial job through the cluster layer.

Times ``synful.cluster.launch(...).wait()`` of ``python -c pass`` with the local executor and, when
a Slurm cluster answers (e.g. the one ``tests/slurm/start_local_slurm.sh`` starts), with the slurm
executor (submitit: sbatch, scheduling, srun, result file), sequentially and as N concurrent jobs
(one per fake GPU).  Prints the numbers and saves them with machine info to
``benchmarks/results/cluster_<host>.json``.

    python benchmarks/bench_cluster.py [--repeat 5] [--concurrent 2] [--profile local]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synful import __version__, cluster
from synful.config import Worker

HERE = Path(__file__).resolve().parent


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--concurrent", type=int, default=2, help="jobs at once in the concurrent measurement")
    ap.add_argument("--profile", default="local", help="cluster profile for the slurm executor")
    args = ap.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as tmp:
        tmp = Path(tmp)
        local = Worker(executor="local")
        results["local_sequential"] = _summary(_time_jobs(local, 1, args.repeat, tmp / "local"))
        results["local_concurrent"] = _summary(_time_jobs(local, args.concurrent, args.repeat, tmp / "local"))
        slurm_up = shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
        if slurm_up:
            w = Worker(executor="slurm", cluster_profile=args.profile, time_limit="00:05:00")
            results["slurm_sequential"] = _summary(_time_jobs(w, 1, args.repeat, tmp / "slurm"))
            results["slurm_concurrent"] = _summary(_time_jobs(w, args.concurrent, args.repeat, tmp / "slurm"))
        else:
            print("no Slurm cluster answers (start one with tests/slurm/start_local_slurm.sh): local executor only")

    for k, v in results.items():
        print(f"{k:18s} median {v['median_s']:7.3f} s  (min {v['min_s']:.3f}, max {v['max_s']:.3f})")
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P %c %m %G"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("sinfo") else None
    report = {
        "benchmark": "cluster_launch_overhead",
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "synful": __version__, "slurm_partitions": sinfo},
        "inputs": {"command": "python -c pass", "repeat": args.repeat, "concurrent": args.concurrent,
                   "profile": args.profile},
        "seconds": results,
    }
    out = HERE / "results" / f"cluster_{socket.gethostname()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
