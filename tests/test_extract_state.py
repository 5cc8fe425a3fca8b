"""Extraction state: done markers keyed on a signature of the inputs, run identity in the collection,
an unreachable database failing the run fast, read-only runs readable, a full disk reported as such.

Each test injects the fault the issue describes and checks one clear error (naming what is at fault),
a non-zero CLI exit, nothing written that a rerun would take for done, and an idempotent rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from synful.cli import main
from synful.config import fill_template
from synful.errors import SynfulError
from synful.extract import ExtractionError, extract
from synful.scaffold import run_ids
from synful.store import open_run_store
from test_extract import ROOT, make_run, random_prediction, reference, set_config


def prediction_record(pdir: Path, run_id: str, complete: bool | None):
    """What `synful predict` leaves: its signature file when it starts, its metadata when it ends.

    ``complete=None``: started, no metadata yet (running, or killed).
    """
    name = run_ids(pdir).name
    (pdir / "blocks").mkdir(exist_ok=True)
    (pdir / "blocks" / f"predict_{name}.signature.json").write_text(
        json.dumps({"signature": "0123456789abcdef", "task_id": f"predict_{name}", "run_id": run_id}))
    meta = pdir / f"{name}_prediction.json"  # beside predictions.zarr
    if complete is None:
        return
    meta.write_text(json.dumps({"run": name, "run_id": run_id, "signature": "0123456789abcdef",
                                "complete": complete, "blocks": {"total": 4, "processed": 4 if complete else 1,
                                                                 "skipped": 0}}))


def files_of(pdir: Path) -> dict:
    """Path -> mtime of the run directory and everything in it: a file created and deleted again (an SQLite
    -wal) still changes its directory's mtime."""
    return {str(p.relative_to(pdir)): p.stat().st_mtime_ns for p in [pdir, *sorted(pdir.rglob("*"))]}


# ------------------------------------------------------------------------------------------------
# 1. done markers carry a signature of everything the partners depend on
# ------------------------------------------------------------------------------------------------

def test_changed_settings_are_refused_naming_the_change(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=21)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    extract(pdir, multiprocessing=False)
    ref = reference(ind_u8, vec)
    set_config(pdir, cc_threshold=0.8)
    # old code: "8 blocks, 8 already done", the partners of cc_threshold 0.5 kept
    with pytest.raises(ExtractionError, match=r"\[Extraction\] cc_threshold: 0.5 -> 0.8.*pass --overwrite"):
        extract(pdir, multiprocessing=False)
    assert main(["extract", str(pdir), "--serial"]) == 2
    assert "cc_threshold: 0.5 -> 0.8" in capsys.readouterr().err
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), ref)  # refused before anything was touched
    s = extract(pdir, overwrite=True, multiprocessing=False)
    assert s["blocks_skipped"] == 0
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec, cc_threshold=0.8))
    s = extract(pdir, multiprocessing=False)  # the new settings resume
    assert s["blocks_skipped"] == s["blocks_total"] == 8


def test_unfinished_or_replaced_prediction_is_refused(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=22)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    prediction_record(pdir, "run-a", complete=None)  # prediction killed: started, never finished
    with pytest.raises(ExtractionError, match=r"prediction of .* has started .* but not finished"):
        extract(pdir, multiprocessing=False)
    assert not (pdir / "partners.sqlite").exists() and not (pdir / "extract_tracking").exists()
    prediction_record(pdir, "run-a", complete=False)  # ... or finished with blocks missing
    assert main(["extract", str(pdir), "--serial"]) == 2
    assert "did not finish" in capsys.readouterr().err
    prediction_record(pdir, "run-a", complete=True)
    extract(pdir, multiprocessing=False)
    # `synful predict --overwrite` (e.g. another checkpoint) started: the metadata is of the old run
    prediction_record(pdir, "run-b", complete=None)
    with pytest.raises(ExtractionError, match=r"prediction run run-b started after the finished run run-a"):
        extract(pdir, multiprocessing=False)
    prediction_record(pdir, "run-b", complete=True)
    with pytest.raises(ExtractionError, match=r'prediction run_id: "run-a" -> "run-b".*--overwrite'):
        extract(pdir, multiprocessing=False)
    s = extract(pdir, overwrite=True, multiprocessing=False)
    assert s["blocks_skipped"] == 0 and s["partners"] == len(reference(ind_u8, vec))


def test_switching_the_store_or_dropping_the_collection_is_refused(tmp_path, mongodb_url):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=23)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    extract(pdir, multiprocessing=False)
    ref = reference(ind_u8, vec)
    db = f"synful_test_{uuid.uuid4().hex[:8]}"
    set_config(pdir, store_url=mongodb_url, database=db)
    # old code: "8 blocks, 8 already done" and 0 partners in MongoDB
    with pytest.raises(ExtractionError, match=r'store backend: "sqlite" -> "mongodb"'):
        extract(pdir, multiprocessing=False)
    s = extract(pdir, overwrite=True, multiprocessing=False)
    assert s["partners"] == len(ref)
    # the collection dropped by hand: the markers must not say "done" over an empty collection
    import pymongo

    with pymongo.MongoClient(mongodb_url) as client:
        client[db][s["collection"]].drop()
    with pytest.raises(ExtractionError, match=r"done markers exist but .* has no record of this run"):
        extract(pdir, multiprocessing=False)
    extract(pdir, overwrite=True, multiprocessing=False)
    with open_run_store(pdir) as store:
        np.testing.assert_array_equal(store.query(), ref)
        store.drop()


def test_moved_experiment_resumes(tmp_path):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=24)
    pdir = make_run(tmp_path / "a", ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    extract(pdir, multiprocessing=False)
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = tmp_path / "b" / pdir.relative_to(tmp_path / "a")
    s = extract(moved, multiprocessing=False)
    assert s["blocks_skipped"] == s["blocks_total"] == 8
    with open_run_store(moved) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_u8, vec))


@pytest.mark.slow
def test_real_prediction_runs_key_the_extraction(tmp_path, monkeypatch):
    """Through `synful predict` itself: its run ids reach extraction (not just files shaped like them)."""
    from synful.predict import BlockPredictor, PredictionError, predict
    from test_predict import TRAINING, make_experiment, predict_setup

    exp = make_experiment(tmp_path, "exp", TRAINING, (11, 30, 34))
    setup = predict_setup(exp, {"indicator_dtype": "uint8", "vectors_dtype": "float16"}, {"num_block_workers": 1})
    set_config(setup, block_shape=(200, 60, 60), context=(40, 8, 8), cc_threshold=0.6)
    calls = {"n": 0}
    process = BlockPredictor.process

    def dies_after_two(self, block):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("killed")
        return process(self, block)

    monkeypatch.setattr(BlockPredictor, "process", dies_after_two)
    with pytest.raises((PredictionError, RuntimeError)):
        predict(setup, progress=False, in_process=True)
    # old code: extracted the partial prediction, then "already done" once prediction finished
    with pytest.raises(ExtractionError, match="not finished"):
        extract(setup, multiprocessing=False)
    monkeypatch.setattr(BlockPredictor, "process", process)
    predict(setup, progress=False, in_process=True)
    first = extract(setup, multiprocessing=False)
    assert first["blocks_skipped"] == 0
    assert extract(setup, multiprocessing=False)["blocks_skipped"] == first["blocks_total"]
    predict(setup, overwrite=True, progress=False, in_process=True)  # a new prediction run, same outputs
    with pytest.raises(ExtractionError, match=r"prediction run_id: .*pass --overwrite"):
        extract(setup, multiprocessing=False)
    assert extract(setup, overwrite=True, multiprocessing=False)["partners"] == first["partners"]


# ------------------------------------------------------------------------------------------------
# 2. a collection belongs to one run
# ------------------------------------------------------------------------------------------------

def test_two_experiments_cannot_share_a_collection(tmp_path, mongodb_url, capsys):
    db = f"synful_test_{uuid.uuid4().hex[:8]}"
    ind_a, vec_a = random_prediction((16, 64, 64), 12, seed=25)
    ind_b, vec_b = random_prediction((16, 64, 64), 12, seed=26)
    kw = dict(block_shape=(64, 128, 128), context=(64, 64, 64), store_url=mongodb_url, database=db)
    a = make_run(tmp_path / "base_a", ind_a, vec_a, **kw)
    b = make_run(tmp_path / "base_b", ind_b, vec_b, **kw)  # same experiment names, same collection
    extract(a, multiprocessing=False)
    # old code: b replaced a's partners block by block; a's rerun then said "already done" over them
    for overwrite in (False, True):
        with pytest.raises(ExtractionError, match=rf"belongs to another extraction run: .*\({a} on .*this run is "
                                                  rf"\w+ \({b}\)"):
            extract(b, overwrite=overwrite, multiprocessing=False)
    assert main(["extract", str(b), "--serial"]) == 2
    assert "belongs to another extraction run" in capsys.readouterr().err
    s = extract(a, multiprocessing=False)
    assert s["blocks_skipped"] == s["blocks_total"]
    with open_run_store(a) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_a, vec_a))
    # a copy of a (same run id) must not take over a's collection either
    shutil.copytree(tmp_path / "base_a", tmp_path / "copy_a")
    copy = tmp_path / "copy_a" / a.relative_to(tmp_path / "base_a")
    with pytest.raises(ExtractionError, match=r"both carry extraction run"):
        extract(copy, multiprocessing=False)
    # b with a collection of its own works
    set_config(b, collection="partners_b")
    extract(b, multiprocessing=False)
    with open_run_store(b) as store:
        np.testing.assert_array_equal(store.query(), reference(ind_b, vec_b))
        store.drop()
    with open_run_store(a) as store:
        store.drop()


# ------------------------------------------------------------------------------------------------
# 6. a database that disappears fails the run fast
# ------------------------------------------------------------------------------------------------

def test_database_lost_mid_run_fails_fast_and_resumes(tmp_path):
    import pymongo

    from conftest import free_port, start_nx27017, stop_process

    port = free_port()
    server, url = start_nx27017(tmp_path / "mongo", port)
    ind_u8, vec = random_prediction((32, 128, 256), 0, seed=27, grid=(4, 4, 8))
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 64, 64),
                    store_url=url, database="lost", collection="partners_lost")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = tmp_path / "extract.err"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "synful", "extract", str(pdir), "--workers", "2"], env=env,
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        with pymongo.MongoClient(url, serverSelectionTimeoutMS=2000) as client:
            col = client["lost"]["partners_lost"]
            while time.monotonic() < deadline and proc.poll() is None:
                if len(col.distinct("block_id")) >= 4:
                    break
                time.sleep(0.05)
        stop_process(server)  # the database disappears mid-run
        t0 = time.monotonic()
        assert proc.poll() is None, "the run finished before the database could be stopped"
        try:
            proc.wait(45)
        except subprocess.TimeoutExpired:
            pass
        waited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        stop_process(server)
    err = log.read_text().strip().splitlines()[-1]
    print(f"failed {waited:.1f} s after the database went away")
    # old code: every remaining block waited 5 s, twice: minutes
    assert waited < 30, f"the run took {waited:.0f} s to fail after the database went away"
    assert proc.returncode == 2, err
    assert "unreachable" in err or "ServerSelectionTimeout" in err or "AutoReconnect" in err, err
    server, url = start_nx27017(tmp_path / "mongo", port)  # the same database, back
    try:
        s = extract(pdir, multiprocessing=False)
        assert 0 < s["blocks_skipped"] < s["blocks_total"] == 4 * 4 * 8
        with open_run_store(pdir) as store:
            got = store.query()
            assert store.count() == len(got) == len(np.unique(got["id"]))
        np.testing.assert_array_equal(got, reference(ind_u8, vec))
    finally:
        stop_process(server)


# ------------------------------------------------------------------------------------------------
# 8. a read-only (archived) run can be exported and evaluated
# ------------------------------------------------------------------------------------------------

def test_read_only_run_can_be_exported_and_evaluated(tmp_path, capsys):
    ind_u8, vec = random_prediction((16, 64, 64), 12, seed=28)
    pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(64, 64, 64))
    # in another process, as an earlier session would have: nothing of it stays open here
    subprocess.run([sys.executable, "-m", "synful", "extract", str(pdir), "--serial"], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, capture_output=True)
    ref = reference(ind_u8, vec)
    gt = tmp_path / "gt.json"
    assert main(["export", str(pdir), str(gt)]) == 0
    ini = pdir / "predict_config.ini"
    ini.write_text(fill_template(ini.read_text(), {"Evaluation": {"gt_synlinks": str(gt)}}))
    db = pdir / "partners.sqlite"
    before, data = files_of(pdir), db.read_bytes()
    subprocess.run(["chmod", "-R", "a-w", str(pdir)], check=True)
    try:
        # as root chmod stops nothing: what must hold is that reading writes nothing at all
        assert main(["export", str(pdir), str(tmp_path / "out.csv")]) == 0
        assert main(["evaluate", str(pdir), "--out", str(tmp_path / "eval")]) == 0
        assert "fscore 1.0000" in capsys.readouterr().out
        assert files_of(pdir) == before, "reading the run created or modified files in it"
        assert db.read_bytes() == data
        assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
        if os.geteuid() == 0 and shutil.which("setpriv"):
            # and as a user who really cannot write there (old code: "unable to open database file")
            shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"ro-{uuid.uuid4().hex[:8]}"
            shutil.copytree(pdir.parents[2], shared, symlinks=True)
            try:
                subprocess.run(["chmod", "-R", "a+rX,a-w", str(shared)], check=True)
                out = Path("/tmp") / f"ro-{uuid.uuid4().hex[:8]}.csv"
                run = subprocess.run(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "synful",
                     "export", str(shared / pdir.relative_to(pdir.parents[2])), str(out)],
                    env=dict(os.environ, PYTHONPATH=str(ROOT), HOME="/tmp"), cwd=ROOT, capture_output=True,
                    text=True, timeout=120)
                assert run.returncode == 0, run.stderr
                from synful.io.partners import read_partners

                np.testing.assert_array_equal(read_partners(out), ref)
                out.unlink()
            finally:
                subprocess.run(["chmod", "-R", "u+w", str(shared)], check=True)
                shutil.rmtree(shared)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(pdir)], check=True)


# ------------------------------------------------------------------------------------------------
# 9. a full disk is reported as a full disk
# ------------------------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return res.returncode == 0


def test_full_disk_is_reported_with_its_cause(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "160k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        ind_u8, vec = random_prediction((32, 128, 128), 0, seed=29, grid=(4, 4, 4))
        pdir = make_run(tmp_path, ind_u8, vec, block_shape=(64, 128, 128), context=(32, 64, 64),
                        store_url=f"sqlite:///{disk}/partners.sqlite")
        ref = reference(ind_u8, vec)
        # old code: "cannot rollback - no transaction is active"
        with pytest.raises(SynfulError, match=rf"sqlite:///{disk}/partners.sqlite \[partners_exp_t0_p\d+\]: "
                                                  rf"writing block \d+ failed: database or disk is full"):
            extract(pdir, multiprocessing=False)
        assert main(["extract", str(pdir), "--serial"]) == 2
        assert "database or disk is full" in capsys.readouterr().err
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        s = extract(pdir, multiprocessing=False)
        assert 0 < s["blocks_skipped"] < s["blocks_total"]
        with open_run_store(pdir) as store:
            np.testing.assert_array_equal(store.query(), ref)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
