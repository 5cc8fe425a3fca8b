#!/usr/bin/env python
"""Run every stage benchmark and write one JSON with machine and GPU information.

Each stage is its benchmark script, run as a subprocess (own TensorFlow, own GPU view) with
``--out`` pointing into a stage folder; its JSON is embedded whole in the combined result, under
``stages.<stage>.result``, next to a ``summary`` of headline figures and the ``projection`` of
the device-days that a 50-teravoxel brain (FAFB) takes at the measured steady prediction rate
(``50e12 / voxels_per_s / 86400``, one device), with the hours daisy alone needs to hand out that
brain's prediction blocks (at the measured empty-block rate with two workers).

    python benchmarks/run_all.py [--quick] [--out benchmarks/results/all.json] [--stages prediction store ...]

``--quick`` passes ``--quick`` to every script (small inputs, about 30 s in all on 2 CPU cores):
it checks that the benchmarks run, its figures are not the machine's.  The summary is printed as a
Markdown table (the one the README shows).  Exit status 1 when a stage failed; the JSON is still
written, with the failed stage's exit code and output tail; ``--stages NAME --update`` reruns it
and replaces just that stage in the existing JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import HERE, RESULTS, gpu_info, machine_info, save_json

BRAIN_VOXELS = 50e12  # FAFB, the whole adult Drosophila brain at 40 x 4 x 4 nm


@dataclass(frozen=True)
class Stage:
    """One benchmark script; ``args`` are added in full runs (``--quick`` replaces them)."""

    name: str
    script: str
    what: str
    args: tuple[str, ...] = field(default=())


STAGES = (
    Stage("generation", "bench_synthetic.py", "synthetic volume generation, N5 / zarr reads", ("--io",)),
    Stage("training", "bench_train.py", "training iterations/s (network step, data pipeline)"),
    Stage("prediction", "bench_predict.py", "blockwise prediction voxels/s, reference U-Net"),
    Stage("extraction", "bench_extract.py", "partner extraction vs the per-region baseline"),
    Stage("store", "bench_store.py", "result-store inserts/s per backend"),
    Stage("evaluation", "bench_evaluate.py", "FAFB-protocol evaluation time"),
    Stage("scheduling", "bench_schedule.py", "daisy scheduling overhead, empty blocks/s"),
    Stage("cluster", "bench_cluster.py", "job launch overhead of the cluster layer"),
    Stage("transmitters", "bench_transmitters.py", "transmitter classifier training and prediction"),
)


def _row(stage: str, measure: str, value, unit: str) -> dict:
    return {"stage": stage, "measure": measure, "value": value, "unit": unit}


def summarize(stage: str, r: dict) -> list[dict]:
    """Headline figures of one stage's result JSON, as table rows (stage, measure, value, unit)."""
    rows = []
    if stage == "generation":
        for g in r["generate"]:
            rows.append(_row(stage, f"generate {'x'.join(map(str, g['shape']))}", g["mvoxels_per_s"], "Mvoxel/s"))
        for x in r.get("io", []):
            rows.append(_row(stage, f"read 64x512x512, {x['case']}", x["whole_mvoxels_per_s"], "Mvoxel/s"))
    elif stage == "training":
        for mode, s in r["step"].items():
            rows.append(_row(stage, f"step {mode}, preset {r['preset']} ({r['parameters']:,} parameters) "
                             f"on {r['device']}", s["iterations_per_s"], "iterations/s"))
        if "pipeline" in r:
            rows.append(_row(stage, "gunpowder pipeline, one process", r["pipeline"]["batches_per_s"], "batches/s"))
    elif stage == "prediction":
        for mode, m in r["modes"].items():
            rows.append(_row(stage, f"{mode} end to end on {m['device']}", m["end_to_end"]["voxels_per_second"],
                             "voxels/s"))
            rows.append(_row(stage, f"{mode} steady on {m['device']}", m["steady"]["voxels_per_second"], "voxels/s"))
    elif stage == "extraction":
        for x in r["results"]:
            rows.append(_row(stage, x["implementation"], x["mvoxels_per_s"], "Mvoxel/s"))
        rows.append(_row(stage, "speedup over the per-region baseline", r["speedup"], "x"))
    elif stage == "store":
        for backend, x in r["results"].items():
            label = f"{backend}, {x['server']}" if "server" in x else backend
            rows.append(_row(stage, f"{label} inserts", x["inserts_per_s"], "partners/s"))
            rows.append(_row(stage, f"{label} rewrites", x["rewrites_per_s"], "partners/s"))
    elif stage == "evaluation":
        i = r["inputs"]
        rows.append(_row(stage, f"{i['predictions']} predictions vs {i['ground_truth']} links, {i['neurons']} neurons, "
                         f"{i['score_thresholds']}-threshold sweep", r["seconds"]["evaluate_sweep_per_neuron"], "s"))
        rows.append(_row(stage, "read FAFB JSON", r["seconds"]["load_json"], "s"))
    elif stage == "scheduling":
        for mode, x in r["modes"].items():
            rows.append(_row(stage, f"{mode}, {x['blocks']} blocks", x["blocks_per_s"], "blocks/s"))
    elif stage == "cluster":
        for mode, x in r["seconds"].items():
            rows.append(_row(stage, f"{mode} launch to exit code", x["median_s"], "s"))
    elif stage == "transmitters":
        rows.append(_row(stage, f"VGG3D training, batch {r['batch_size']}", r["seconds_per_iteration"],
                         "s/iteration"))
        rows.append(_row(stage, "prediction", r["predict_synapses_per_second"], "synapses/s"))
    return rows


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


def run_stage(stage: Stage, quick: bool, stage_dir: Path) -> dict:
    """Run one benchmark script; return {script, args, seconds, returncode, result | output_tail}."""
    out, log = stage_dir / f"{stage.name}.json", stage_dir / f"{stage.name}.log"
    args = [str(HERE / stage.script), "--out", str(out), *(["--quick"] if quick else stage.args)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        rc = subprocess.run([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    entry = {"script": f"benchmarks/{stage.script}", "args": args[1:], "seconds": round(time.perf_counter() - t0, 1),
             "returncode": rc}
    if rc == 0 and out.is_file():
        entry["result"] = json.loads(out.read_text())
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
        report["summary"] += summarize(s.name, entry["result"])
        if s.name == "prediction" and entry["result"].get("modes"):
            p = report["projection"] = projection(entry["result"])
            report["summary"].append(_row(s.name, f"50 Tvoxel brain at the {p['mode']} steady rate on "
                                          f"{p['device']}", p["device_days"], "device-days"))
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
    ap.add_argument("--out", default=str(RESULTS / "all.json"), help="combined result JSON")
    ap.add_argument("--stages", nargs="+", choices=[s.name for s in STAGES], default=None,
                    help="run only these stages (default: all)")
    ap.add_argument("--update", action="store_true",
                    help="replace only the stages run now in an existing --out JSON (e.g. rerun a failed stage)")
    ap.add_argument("--stage-dir", default=None,
                    help="keep each stage's JSON and output log here (default: a temporary folder)")
    args = ap.parse_args(argv)
    stages = [s for s in STAGES if args.stages is None or s.name in args.stages]
    command = " ".join(["python", "benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])

    report = {"benchmark": "all", "quick": args.quick, "command": command, "machine": machine_info(),
              "gpu": gpu_info(), "summary": [], "stages": {}}
    if args.update and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        if old.get("quick") != args.quick:
            ap.error(f"--update: {args.out} was written {'with' if old.get('quick') else 'without'} --quick")
        report = {**old, "updates": [*old.get("updates", []), {"command": command, "machine": report["machine"],
                                                               "stages": [s.name for s in stages]}]}
    with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
        stage_dir = Path(args.stage_dir or tmp)
        stage_dir.mkdir(parents=True, exist_ok=True)
        for s in stages:
            print(f"[{s.name}] {s.what} ...", flush=True)
            entry = run_stage(s, args.quick, stage_dir)
            entry["what"] = s.what
            report["stages"][s.name] = entry
            if "result" in entry:
                print(f"[{s.name}] done in {entry['seconds']} s", flush=True)
            else:
                print(f"[{s.name}] FAILED (exit code {entry['returncode']}):\n  " + "\n  ".join(entry["output_tail"]),
                      file=sys.stderr, flush=True)
    finish(report)
    report["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = save_json(args.out, report)

    m, g = report["machine"], report["gpu"]
    gpus = "none" if g == "none" else ", ".join(d["name"] for d in g["devices"]) or "none"
    print(f"\n{m['cpu']} ({m['cpus_usable']} of {m['cpu_count']} cores), "
          f"{(m['memory_bytes'] or 0) / 2 ** 30:.0f} GiB, GPU: {gpus}; Python {m['python']}, "
          f"TensorFlow {m['versions']['tensorflow']}, daisy {m['versions']['daisy']}"
          + (" (--quick: figures check the set-up only)" if args.quick else "") + "\n")
    print(markdown(report["summary"]))
    failed = report["failed"]
    print(f"\nsaved {out}" + (f"; failed stages: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
