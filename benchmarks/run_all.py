#!/usr/bin/env python
"""Run every stage benchmark; keep each stage's result JSON and print the headline figures.

Each stage is its benchmark script, run as a subprocess (own TensorFlow, own GPU view).  A full run
(no ``--quick``) stores each stage's result where the README table is generated from, as
``benchmarks/results/bench_<name>.json`` (``--results-dir``; a failed stage leaves its old file
alone), each stamped with the git commit and date (``_common.provenance``) and carrying its
``summary`` rows; then ``python benchmarks/readme_table.py --readme README.md`` rewrites the README's
performance table from them.  With ``--out`` a combined JSON is written too: every stage's result
under ``stages.<stage>.result``, the ``summary`` of all, and the ``projection`` of the device-days
that a 50-teravoxel brain (FAFB) takes at the measured steady prediction rate
(``50e12 / voxels_per_s / 86400``, one device), with the hours daisy alone needs to hand out that
brain's prediction blocks (at the measured empty-block rate with two workers).

    python benchmarks/run_all.py [--quick] [--stages prediction store ...] [--out all.json] [--results-dir DIR]

A full run takes about 25 minutes on 2 CPU cores (the learnability stage alone 7 to 9).
``--quick`` passes ``--quick`` to every script (small inputs, about a minute in all on 2 CPU cores):
it checks that the benchmarks run, its figures are not the machine's, and it writes nothing under
``benchmarks/results/`` unless ``--results-dir`` says so.  The summary is printed as a Markdown
table.  Exit status 1 when a stage failed; the combined JSON is still written, with the failed
stage's exit code and output tail; ``--stages NAME --update --out ...`` reruns it and replaces just
that stage in the existing combined JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import BRAIN_VOXELS, HERE, RESULTS, _row, gpu_info, machine_info, save_json, summarize

__all__ = ["STAGES", "Stage", "projection", "scheduling_share", "summarize", "main"]


@dataclass(frozen=True)
class Stage:
    """One benchmark script; ``args`` are added in full runs (``--quick`` replaces them), ``always`` in both.

    ``kind`` is the :func:`summarize` stage of its result (default: ``name``); ``result`` the file
    name of its canonical result under ``benchmarks/results/``."""

    name: str
    script: str
    what: str
    args: tuple[str, ...] = field(default=())
    always: tuple[str, ...] = field(default=())
    kind: str = ""
    result: str = ""

    @property
    def stage(self) -> str:
        return self.kind or self.name

    @property
    def result_name(self) -> str:
        return self.result or f"{Path(self.script).stem}.json"


STAGES = (
    Stage("generation", "bench_synthetic.py", "synthetic volume generation, N5 / zarr reads", ("--io",)),
    Stage("training", "bench_train.py", "training iterations/s (network step, data pipeline)"),
    Stage("training_xla", "bench_train.py", "training step with XLA (slow on CPU)",
          always=("--xla", "--no-pipeline"), kind="training", result="bench_train_xla.json"),
    Stage("prediction", "bench_predict.py", "blockwise prediction voxels/s, reference U-Net"),
    Stage("datapath", "bench_datapath.py", "prediction data path (network-free) vs model only vs end to end"),
    Stage("extraction", "bench_extract.py", "partner extraction vs the per-region baseline"),
    Stage("store", "bench_store.py", "result-store inserts/s per backend"),
    Stage("evaluation", "bench_evaluate.py", "FAFB-protocol evaluation time"),
    Stage("scheduling", "bench_schedule.py", "daisy scheduling overhead, empty blocks/s"),
    Stage("cluster", "bench_cluster.py", "job launch overhead of the cluster layer"),
    Stage("transmitters", "bench_transmitters.py", "transmitter classifier training and prediction"),
    Stage("embed", "bench_embed.py", "synapse-embedding inference synapses/s"),
    Stage("learnability", "bench_synthetic_learnability.py", "a small U-Net learns post-sites (about 7 min)"),
)


def projection(predict: dict) -> dict:
    """Device-days for a 50-teravoxel brain at each prediction mode's steady rate; the fastest first."""
    modes = sorted(predict["modes"].items(), key=lambda kv: -kv[1]["steady"]["voxels_per_second"])
    per_mode = [{"mode": k, "device": m["device"], "voxels_per_s": m["steady"]["voxels_per_second"],
                 "device_days": round(BRAIN_VOXELS / m["steady"]["voxels_per_second"] / 86400, 1)} for k, m in modes]
    return {"voxels": BRAIN_VOXELS, "formula": "voxels / steady voxels_per_s / 86400 (one device)",
            "network": predict.get("network_gpu") or predict.get("network_cpu"), **per_mode[0], "modes": per_mode}


def scheduling_share(proj: dict, sched: dict) -> dict:
    """Number of prediction write blocks in the brain, and the hours daisy alone (empty blocks, two local
    workers) takes to hand them out: the floor under a run with any number of GPUs."""
    net = proj["network"] or {}
    block = 1
    for o, f in zip(net.get("output_shape", ()), net.get("block_factor", (1, 1, 1))):
        block *= o * f
    rate = sched["modes"]["workers_2"]["steady_blocks_per_s"] or sched["modes"]["workers_2"]["blocks_per_s"]
    blocks = int(BRAIN_VOXELS // block) if block > 1 else None
    return {"blocks": blocks, "scheduling_blocks_per_s": rate,
            "scheduling_hours": round(blocks / rate / 3600, 1) if blocks else None}


def run_stage(stage: Stage, quick: bool, stage_dir: Path, results_dir: Path | None = None) -> dict:
    """Run one benchmark script; return {script, args, seconds, returncode, result | output_tail}.

    On success the script's JSON is copied unchanged to ``results_dir / stage.result_name`` (if given)."""
    out, log = stage_dir / f"{stage.name}.json", stage_dir / f"{stage.name}.log"
    args = [str(HERE / stage.script), "--out", str(out), *stage.always, *(["--quick"] if quick else stage.args)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        rc = subprocess.run([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    entry = {"script": f"benchmarks/{stage.script}", "args": args[1:], "seconds": round(time.perf_counter() - t0, 1),
             "returncode": rc}
    if rc == 0 and out.is_file():
        entry["result"] = json.loads(out.read_text())
        if results_dir is not None:
            results_dir.mkdir(parents=True, exist_ok=True)
            tmp = results_dir / f".{stage.result_name}.tmp-{os.getpid()}"
            shutil.copyfile(out, tmp)
            os.replace(tmp, results_dir / stage.result_name)
            entry["saved"] = str(results_dir / stage.result_name)
    else:
        entry["output_tail"] = log.read_text(errors="replace").splitlines()[-30:]
    return entry


def markdown(rows: list[dict]) -> str:
    lines = ["| stage | measure | value | unit |", "|---|---|---:|---|"]
    for r in rows:
        v = r["value"]
        v = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        lines.append(f"| {r['stage']} | {r['measure']} | {v} | {r['unit']} |")
    return "\n".join(lines)


def finish(report: dict) -> None:
    """(Re)build ``summary``, ``projection`` and ``failed`` from the stage entries, in STAGES order."""
    report["summary"], report["failed"] = [], []
    report.pop("projection", None)
    for s in STAGES:
        entry = report["stages"].get(s.name)
        if entry is None:
            continue
        if "result" not in entry:
            report["failed"].append(s.name)
            continue
        result = entry["result"]
        report["summary"] += result["summary"] if "summary" in result else summarize(s.stage, result)
        if s.name == "prediction" and result.get("modes"):
            report["projection"] = projection(result)
    sched = report["stages"].get("scheduling", {}).get("result")
    if "projection" in report and sched:
        p = report["projection"]
        p.update(scheduling_share(p, sched))
        if p["scheduling_hours"]:
            report["summary"].append(_row("scheduling", f"daisy alone, the 50 Tvoxel brain's {p['blocks']:,} "
                                          f"prediction blocks with 2 workers", p["scheduling_hours"], "hours"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs: checks that every benchmark runs")
    ap.add_argument("--out", default=None, help="also write a combined result JSON here")
    ap.add_argument("--results-dir", default=None,
                    help="where each stage's result JSON is kept under its canonical name "
                         "(default: benchmarks/results/ in a full run, nowhere with --quick)")
    ap.add_argument("--stages", nargs="+", choices=[s.name for s in STAGES], default=None,
                    help="run only these stages (default: all)")
    ap.add_argument("--update", action="store_true",
                    help="replace only the stages run now in an existing --out JSON (e.g. rerun a failed stage)")
    ap.add_argument("--stage-dir", default=None,
                    help="keep each stage's JSON and output log here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.update and not args.out:
        ap.error("--update needs --out (the combined JSON to update)")
    stages = [s for s in STAGES if args.stages is None or s.name in args.stages]
    results_dir = Path(args.results_dir) if args.results_dir else (None if args.quick else RESULTS)
    command = " ".join(["python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])

    report = {"benchmark": "all", "quick": args.quick, "command": command, "machine": machine_info(),
              "gpu": gpu_info(), "summary": [], "stages": {}}
    if args.update and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        if old.get("quick") != args.quick:
            ap.error(f"--update: {args.out} was written {'with' if old.get('quick') else 'without'} --quick")
        report = {**old, "updates": [*old.get("updates", []), {"command": command, "machine": report["machine"],
                                                               "stages": [s.name for s in stages]}]}
        report.pop("commit", None)  # the combined file gets the provenance of this run
    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        stage_dir = Path(args.stage_dir or tmp)
        stage_dir.mkdir(parents=True, exist_ok=True)
        for s in stages:
            print(f"[{s.name}] {s.what} ...", flush=True)
            entry = run_stage(s, args.quick, stage_dir, results_dir)
            entry["what"] = s.what
            report["stages"][s.name] = entry
            if "result" in entry:
                print(f"[{s.name}] done in {entry['seconds']} s" +
                      (f", saved {entry['saved']}" if "saved" in entry else ""), flush=True)
            else:
                print(f"[{s.name}] FAILED (exit code {entry['returncode']}):\n  " + "\n  ".join(entry["output_tail"]),
                      file=sys.stderr, flush=True)
    finish(report)
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = save_json(args.out, report) if args.out else None

    m, g = report["machine"], report["gpu"]
    gpus = "none" if g == "none" else ", ".join(d["name"] for d in g["devices"]) or "none"
    print(f"\n{m['cpu']} ({m['cpus_usable']} of {m['cpu_count']} cores), "
          f"{(m['memory_bytes'] or 0) / 2 ** 30:.0f} GiB, GPU: {gpus}; Python {m['python']}, "
          f"TensorFlow {m['versions']['tensorflow']}, daisy {m['versions']['daisy']}"
          + (" (--quick: figures check the set-up only)" if args.quick else "") + "\n")
    print(markdown(report["summary"]))
    failed = report["failed"]
    if out:
        print(f"\nsaved {out}")
    if failed:
        print(f"failed stages: {', '.join(failed)}")
    if results_dir == RESULTS and any("saved" in e for e in report["stages"].values()):
        print("README table: python benchmarks/readme_table.py --readme README.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
