"""The README's performance table is generated from benchmarks/results/*.json and cannot drift from them.

``python benchmarks/readme_table.py --readme README.md`` writes the section between the markers;
``--check`` exits 1 when the README differs.  These tests run the generator on the committed results
(fast: no benchmark runs, no TensorFlow).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
README = ROOT / "README.md"
SCRIPT = BENCH / "readme_table.py"

sys.path.insert(0, str(BENCH))
import readme_table  # noqa: E402


def check(readme: Path, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme), "--results", str(results)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def copies(tmp_path):
    """A copy of the results folder and of the README (its table regenerated: these tests check the mechanism,
    the drift test the committed files), to break on purpose."""
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)
    readme = tmp_path / "README.md"
    shutil.copyfile(README, readme)
    assert readme_table.main(["--readme", str(readme), "--results", str(results)]) == 0
    return readme, results


def section(text: str) -> str:
    return text[text.index(readme_table.BEGIN):text.index(readme_table.END)]


def test_readme_table_equals_the_results():
    """The drift test: the committed README's performance section is what the committed JSONs generate."""
    proc = check(README, RESULTS)
    assert proc.returncode == 0, (
        "README.md's performance table differs from benchmarks/results/*.json; regenerate it with "
        "`python benchmarks/readme_table.py --readme README.md`\n" + proc.stderr[-4000:])


def test_results_folder_holds_only_canonical_results():
    """No stale duplicates beside the files the table is generated from."""
    canonical = {name for name, _ in readme_table.CANONICAL}
    assert {p.name for p in RESULTS.glob("*.json")} <= canonical


def test_every_figure_has_commit_date_and_machine():
    results = readme_table.load_results()
    assert results, "no benchmark results"
    for name, r in results.items():
        assert re.fullmatch(r"[0-9a-f]{7,40}", r["commit"]), name
        assert isinstance(r["dirty"], bool) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["date"]), name
        assert r["summary"] and not r.get("quick"), name  # full runs only, each with its summary rows
    rows = readme_table.rows(results)
    assert len(rows) == sum(len(r.get("summary") or readme_table.summarize(k, r))
                            for (n, k) in readme_table.CANONICAL if (r := results.get(n)))
    text = section(README.read_text())
    for row in rows:
        assert row["machine"] and row["date"] and row["commit"]
        assert f"| {row['stage']} | {row['measure'].replace('|', chr(92) + '|')} | " in text, row


def test_slow_figures_are_in_the_table_with_a_plain_remark():
    text = section(README.read_text())
    results = readme_table.load_results()
    xla = results.get("bench_train_xla.json")
    if xla and "GPU" not in xla["device"]:
        line = next(ln for ln in text.splitlines() if ", XLA, " in ln)
        assert "slow:" in line and "slower than the same step without XLA" in line, line
    store = results.get("bench_store.json")
    if store and "nx-27017" in store["results"].get("mongodb", {}).get("server", ""):
        lines = [ln for ln in text.splitlines() if ln.startswith("| store | mongodb")]
        assert lines and all("emulator, not a real mongod" in ln for ln in lines), lines
    assert "**What is slow**" in text


def test_changed_value_makes_the_check_fail(copies):
    """Break it on purpose: a figure in a JSON changes, the README does not -> --check fails; regenerating fixes it."""
    readme, results = copies
    assert check(readme, results).returncode == 0
    path = results / "bench_store.json"
    r = json.loads(path.read_text())
    r["summary"][0]["value"] = r["summary"][0]["value"] * 2 + 1
    path.write_text(json.dumps(r))
    proc = check(readme, results)
    assert proc.returncode == 1 and "differs" in proc.stderr, proc.stdout + proc.stderr
    assert f"{r['summary'][0]['value']:,.0f} partners/s" in proc.stderr  # the diff shows the new figure

    # regenerating the section makes the README agree again, and changes nothing outside the markers
    before = readme.read_text()
    subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme), "--results", str(results)], check=True,
                   capture_output=True, timeout=120)
    after = readme.read_text()
    assert after != before and check(readme, results).returncode == 0
    for text in (before, after):
        assert text.index(readme_table.BEGIN) == before.index(readme_table.BEGIN)
    assert after[after.index(readme_table.END):] == before[before.index(readme_table.END):]


def test_changed_commit_or_a_hand_edit_makes_the_check_fail(copies):
    readme, results = copies
    path = results / "bench_predict.json"
    r = json.loads(path.read_text())
    r["commit"], r["dirty"] = "0000000", False
    path.write_text(json.dumps(r))
    assert check(readme, results).returncode == 1
    path.write_text(json.dumps({**r, "commit": json.loads((RESULTS / "bench_predict.json").read_text())["commit"],
                                "dirty": json.loads((RESULTS / "bench_predict.json").read_text())["dirty"]}))
    assert check(readme, results).returncode == 0
    text = readme.read_text()  # a hand edit of a figure inside the generated section
    row = next(ln for ln in section(text).splitlines() if ln.startswith("| prediction |"))
    readme.write_text(text.replace(row, re.sub(r"\| ([\d,.]+) voxels/s", "| 1 voxels/s", row)))
    assert check(readme, results).returncode == 1


def test_projection_is_computed_from_the_prediction_result():
    """The FAFB projection's numbers in the README come from bench_predict.json (and bench_schedule.json)."""
    results = readme_table.load_results()
    pred = results.get("bench_predict.json")
    if not pred:
        pytest.skip("no prediction result")
    p = readme_table.projection(pred)
    text = section(README.read_text())
    assert f"**{readme_table.fmt(p['device_days'])} device-days on one {p['device']} worker**" in text
    assert f"{readme_table.fmt(p['voxels_per_s'])} voxels/s" in text


def test_generator_reads_results_without_summary_or_commit(tmp_path):
    """A result written before summaries and commits existed: summarised by _common.summarize, shown as unknown."""
    (tmp_path / "bench_evaluate.json").write_text(json.dumps({
        "benchmark": "evaluate", "machine": {"cpu": "Test CPU", "cpus_usable": 4, "time_utc": "2026-01-02T03:04:05Z",
                                         "load_average": [0.5, 0.4, 0.3]},
        "inputs": {"predictions": 10, "ground_truth": 10, "neurons": 2, "score_thresholds": 3},
        "seconds": {"evaluate_sweep_per_neuron": 0.5, "load_json": 0.25}}))
    text = readme_table.generate(tmp_path)
    assert "| evaluation | read FAFB JSON | 0.25 s | unknown | 2026-01-02 | 4-core Test CPU, no GPU, load 0.5 |  |" in text
    assert "Not measured yet:" in text and "`bench_predict.json`" in text
    assert "no prediction result yet" in text
