"""The benchmark command: `python benchmarks/run_all.py --quick` runs every stage benchmark, keeps each
stage's result JSON (stamped with commit and date, with its summary rows) and writes one combined JSON.

Runs the real scripts (synthetic data, TensorFlow models, daisy workers, SQLite and a MongoDB
wire-protocol server) with their small ``--quick`` inputs; asserts what the JSON holds, never a speed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
RUN_ALL = ROOT / "benchmarks" / "run_all.py"

# the stages the combined result must hold, with the unit of at least one of their summary rows
REQUIRED = {"generation": "Mvoxel/s", "training": "iterations/s", "training_xla": "iterations/s",
            "prediction": "voxels/s", "datapath": "voxels/s", "extraction": "Mvoxel/s", "store": "partners/s",
            "evaluation": "s", "scheduling": "blocks/s", "cluster": "s", "transmitters": "synapses/s", "embed": "synapses/s",
            "learnability": "iterations/s"}
# each stage's canonical result file under benchmarks/results/
RESULT_FILES = {"generation": "bench_synthetic.json", "training": "bench_train.json",
                "training_xla": "bench_train_xla.json", "prediction": "bench_predict.json",
                "datapath": "bench_datapath.json", "extraction": "bench_extract.json", "store": "bench_store.json",
                "evaluation": "bench_evaluate.json", "scheduling": "bench_schedule.json",
                "cluster": "bench_cluster.json", "transmitters": "bench_transmitters.json", "embed": "bench_embed.json",
                "learnability": "bench_synthetic_learnability.json"}

pytestmark = pytest.mark.slow  # trains and predicts with tiny TensorFlow models


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results" / "all.json"
    proc = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--out", str(out), "--stage-dir", str(tmp / "st"),
                           "--results-dir", str(tmp / "kept")], capture_output=True, text=True, timeout=900, cwd=tmp)
    return proc, out, tmp


def test_quick_run_writes_one_json_with_every_stage(quick_run):
    proc, out, tmp = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["failed"] == []
    assert set(REQUIRED) <= set(report["stages"])
    for name, unit in REQUIRED.items():
        stage = report["stages"][name]
        assert stage["returncode"] == 0 and isinstance(stage["result"], dict), name
        assert (tmp / "st" / f"{name}.json").is_file()  # --stage-dir keeps each script's own JSON
        result = stage["result"]
        rows = result["summary"]  # each script writes its own summary rows; run_all collects them
        assert rows, f"no summary rows for {name}"
        assert all(r in report["summary"] for r in rows), name
        # rates and times are positive; unitless figures (recall, precision) may be 0 after 4 iterations
        assert all(isinstance(r["value"], (int, float)) and (r["value"] > 0 or r["unit"] == "") for r in rows), rows
        assert unit in {r["unit"] for r in rows}, (name, rows)
        assert all("quick" in r["remark"] for r in rows), rows  # a --quick figure says so
        # --results-dir keeps the result unchanged under its canonical name
        assert json.loads((tmp / "kept" / RESULT_FILES[name]).read_text()) == result, name
        assert stage["saved"] == str(tmp / "kept" / RESULT_FILES[name])  # not benchmarks/results/
    assert report["stages"]["training_xla"]["result"]["xla"] is True
    assert not report["stages"]["training"]["result"]["xla"]
    # the summary is printed as a Markdown table
    assert "| stage | measure | value | unit |" in proc.stdout
    assert f"saved {out}" in proc.stdout


def test_quick_run_records_machine_gpu_and_projection(quick_run):
    _, out, _ = quick_run
    report = json.loads(out.read_text())
    m = report["machine"]
    assert m["cpu"] and m["cpu_count"] >= 1 and m["cpus_usable"] >= 1 and m["memory_bytes"] > 0
    assert m["os"] and m["python"].count(".") == 2
    for lib in ("tensorflow", "keras", "daisy", "gunpowder", "zarr", "synful"):
        assert m["versions"][lib], lib
    gpu = report["gpu"]
    assert gpu == "none" or (gpu["driver"] and all(d["name"] and d["memory_bytes"] > 0 for d in gpu["devices"]))
    assert m["gpus"] == ([] if gpu == "none" else [d["name"] for d in gpu["devices"]])
    # every result is stamped with the commit it was measured at, the dirty flag and the date
    for name in REQUIRED:
        r = report["stages"][name]["result"]
        assert re.fullmatch(r"[0-9a-f]{7,40}", r["commit"]), (name, r["commit"])
        assert subprocess.run(["git", "cat-file", "-e", f"{r['commit']}^{{commit}}"], cwd=ROOT).returncode == 0
        assert isinstance(r["dirty"], bool), name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["date"]), (name, r["date"])
    # each script stores the same machine description beside its own figures
    for name in REQUIRED:
        assert report["stages"][name]["result"]["machine"]["cpu"] == m["cpu"], name
    p = report["projection"]
    rate = report["stages"]["prediction"]["result"]["modes"][p["mode"]]["steady"]["voxels_per_second"]
    assert p["voxels"] == 50e12 and p["voxels_per_s"] == rate > 0
    assert p["device_days"] == pytest.approx(50e12 / rate / 86400, abs=0.05)


def test_failed_stage_is_reported_json_still_written_and_update_reruns_it(tmp_path):
    """A stage that fails (the store benchmark, pointed at a MongoDB URL where nothing listens) makes the
    command exit 1; the JSON is still written, with the other stages' results and the failure's output;
    ``--update`` reruns the failed stage into the same JSON."""
    out = tmp_path / "all.json"
    env = {**os.environ, "SYNFUL_TEST_MONGODB_URL": f"mongodb://127.0.0.1:{free_port()}"}
    proc = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--stages", "extraction", "store",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[store] FAILED" in proc.stderr
    report = json.loads(out.read_text())
    assert list(report["stages"]) == ["extraction", "store"] and report["failed"] == ["store"]
    assert "result" in report["stages"]["extraction"] and "projection" not in report
    store = report["stages"]["store"]
    assert store["returncode"] != 0 and "result" not in store
    assert any("cannot reach MongoDB" in line for line in store["output_tail"]), store["output_tail"]

    # --update reruns just the failed stage and keeps the other stages' results
    extraction = report["stages"]["extraction"]
    env.pop("SYNFUL_TEST_MONGODB_URL")
    proc = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--stages", "store", "--update", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["stages"]["extraction"] == extraction
    assert all("saved" not in e for e in report["stages"].values())  # --quick keeps nothing in benchmarks/results/
    assert report["stages"]["store"]["result"]["results"]["sqlite"]["inserts_per_s"] > 0
    assert [u["stages"] for u in report["updates"]] == [["store"]]
    assert {r["stage"] for r in report["summary"]} == {"extraction", "store"}
