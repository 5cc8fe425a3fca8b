"""Fault injection: blockwise workers never outlive their scheduler (issue 3).

The main process of ``synful extract`` / ``synful predict`` (the daisy scheduler) is killed with
SIGKILL mid-run -- it can clean nothing up -- and every process it had started must be gone within
30 s: daisy's worker slots notice that they are orphaned and stop their workers, and a worker that
loses the scheduler's connection exits instead of retrying it (before the fix the extract workers
spun at 100% CPU writing ~3 MB/s of 'Broken pipe' to their logs).  On the test set-up's real Slurm
no worker job may be left in squeue, also when the worker slots die together with the scheduler
(the jobs must notice by themselves).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import random_unet_setup
from funlib.geometry import Roi

from synful import cluster
from synful.io.volumes import prepare_volume
from synful.scaffold import create_predict_setups, create_train_setup
from synful.store import open_run_store

ROOT = Path(__file__).resolve().parent.parent
GONE_WITHIN_S = 30.0
VS = (8, 4, 4)


# --------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state, ppid, ..., starttime at index 19), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_tree(root: int) -> dict[int, str]:
    """{pid: start time} of ``root`` and all its descendants (the start time tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            children.setdefault(int(st[1]), []).append(int(name))
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if (st := _stat(pid)) is not None:
            tree[pid] = st[19]
            todo += children.get(pid, [])
    return tree


def survivors(tree: dict[int, str]) -> list[int]:
    """Processes of ``tree`` still running (zombies count as gone)."""
    out = []
    for pid, start in tree.items():
        st = _stat(pid)
        if st is not None and st[19] == start and st[0] != "Z":
            out.append(pid)
    return out


def describe(pids) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"{pid}: " + open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:120])
        except OSError:
            pass
    return "; ".join(out)


def wait_for(condition, timeout: float, poll: float = 0.1) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m synful ARGS`` in its own session (so a failed test can still stop all of it)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "synful", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)


def kill_all(tree: dict[int, str]) -> None:
    """SIGKILL what is left of a process tree this test started (by pid)."""
    for pid in survivors(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def log_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


# --------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------

def make_extract_run(base: Path, worker: dict) -> Path:
    """A prediction setup with a hand-made indicator (a grid of blobs) in 512 small extraction blocks."""
    create_train_setup(base, "exp", 0)
    extraction = {"block_shape": (32, 64, 64), "context": (16, 32, 32), "cc_threshold": 0.5}
    (pdir,) = create_predict_setups(base, "exp", 0, [1000], overrides={
        "predict_config.ini": {"Extraction": extraction}, "worker_config.ini": {"Worker": worker}})
    shape = (32, 128, 128)
    ind = np.zeros(shape, np.uint8)
    for z in range(2, 32, 4):
        for y in range(4, 128, 16):
            for x in range(4, 128, 16):
                ind[z:z + 2, y:y + 4, x:x + 4] = 200
    vec = np.full((3,) + shape, 8.0, np.float16)
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(shape, VS)))
    a = prepare_volume(pdir / "predictions.zarr", "volumes/pred_syn_indicator", roi, VS, np.uint8,
                       chunk_shape=(8, 32, 32))
    a[roi] = ind
    a._source_data.attrs["scale"] = 1 / 255
    v = prepare_volume(pdir / "predictions.zarr", "volumes/pred_partner_vectors", roi, VS, np.float16,
                       num_channels=3, chunk_shape=(8, 32, 32))
    v[roi] = vec
    v._source_data.attrs["scale"] = 1.0
    return pdir


def blocks_stored(pdir: Path) -> int:
    if not (pdir / "partners.sqlite").exists():
        return 0
    with open_run_store(pdir) as store:
        return len(store.block_ids())


TINY_UNET = {"voxel_size": (40, 4, 4), "input_shape": (8, 20, 20), "fmap_num": 2, "fmap_inc_factor": 2,
             "downsample_factors": [(1, 2, 2)], "kernel_size": (3, 3, 3), "num_convs": 1, "tasks": "both"}


@pytest.fixture(scope="module")
def predict_experiment(tmp_path_factory):
    """A training setup with a random-weight tiny U-Net checkpoint and a raw volume of ~900 prediction blocks."""
    from synful.io.volumes import write_volume

    base = tmp_path_factory.mktemp("experiments")
    train_dir, rng = random_unet_setup(base, TINY_UNET)
    write_volume(base / "exp" / "01_data" / "raw.zarr", "volumes/raw",
                 rng.integers(0, 256, (20, 100, 110), dtype=np.uint8), (40, 4, 4), offset=(0, 0, 0))
    return base


def make_predict_run(base: Path, worker: dict) -> Path:
    prediction = {"raw_container": "../../01_data/raw.zarr", "raw_dataset": "volumes/raw",
                  "indicator_dtype": "float32", "vectors_dtype": "float32"}
    (pdir,) = create_predict_setups(base, "exp", 0, [1], overrides={
        "predict_config.ini": {"Prediction": prediction}, "worker_config.ini": {"Worker": worker}})
    return pdir


def chunks_written(pdir: Path) -> int:
    d = pdir / "predictions.zarr" / "volumes" / "pred_syn_indicator"
    return len([f for f in d.rglob("*") if f.is_file() and not f.name.startswith(".")]) if d.is_dir() else 0


def kill_scheduler_mid_run(args: list[str], progress, tmp_path: Path, *, whole_group: bool = False,
                           ready=lambda: True):
    """Start ``synful ARGS``, wait until ``progress()`` >= 2 and ``ready()``, SIGKILL the main process (with
    ``whole_group``: it and its worker slots); return (its process tree before the kill, the Popen)."""
    proc = start(args, tmp_path / "main.log")
    tree: dict[int, str] = {}
    try:
        ok = wait_for(lambda: proc.poll() is not None or (progress() >= 2 and ready()), 240, poll=0.05)
        assert ok and proc.poll() is None, \
            f"the run ended or stalled before it could be killed:\n{(tmp_path / 'main.log').read_text()[-3000:]}"
        tree = process_tree(proc.pid)
        assert len(tree) >= 2, f"no worker processes under the scheduler: {describe(tree)}"
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:
        kill_all(tree or process_tree(proc.pid))
        proc.kill()
        proc.wait()
        raise
    return tree, proc


def assert_all_gone(tree: dict[int, str]) -> float:
    """Every process of ``tree`` ends within GONE_WITHIN_S seconds; returns how long it took."""
    t0 = time.monotonic()
    gone = wait_for(lambda: not survivors(tree), GONE_WITHIN_S)
    left = survivors(tree)
    if not gone:
        desc = describe(left)
        kill_all(tree)
        pytest.fail(f"{len(left)} process(es) still running {GONE_WITHIN_S:g} s after the scheduler was killed: {desc}")
    return time.monotonic() - t0


# --------------------------------------------------------------------------------------
# local workers
# --------------------------------------------------------------------------------------

def test_extract_workers_exit_when_the_scheduler_is_killed(tmp_path):
    pdir = make_extract_run(tmp_path, {"executor": "local", "num_block_workers": 2})
    tree, proc = kill_scheduler_mid_run(["extract", str(pdir)], lambda: blocks_stored(pdir), tmp_path)
    assert proc.returncode == -signal.SIGKILL
    assert_all_gone(tree)
    # a worker that lost its scheduler says so once, instead of logging the broken pipe forever
    logs = pdir / "log" / "extract"
    assert log_bytes(logs) < 1_000_000, f"worker logs grew to {log_bytes(logs)} bytes"
    assert "lost the daisy scheduler" in "".join(f.read_text(errors="replace") for f in logs.rglob("*.err"))
    # and the run resumes where it stopped
    from synful.extract import extract

    s = extract(pdir, num_workers=1)
    assert 0 < s["blocks_skipped"] < s["blocks_total"] == 512


@pytest.mark.slow
def test_predict_workers_exit_when_the_scheduler_is_killed(predict_experiment, tmp_path):
    pdir = make_predict_run(predict_experiment, {"executor": "local", "gpus": 0, "num_block_workers": 2})
    tree, proc = kill_scheduler_mid_run(["predict", str(pdir), "--no-progress"], lambda: chunks_written(pdir),
                                        tmp_path)
    assert proc.returncode == -signal.SIGKILL
    assert_all_gone(tree)


def test_a_worker_slot_whose_scheduler_dies_stops_its_job(tmp_path):
    """cluster.run in a worker slot: the parent (the scheduler) is SIGKILLed, the slot's job goes with it,
    even one that never talks to the scheduler (a worker stuck in a long block)."""
    slot = ("import sys; from synful import cluster; from synful.config import Worker; "
            "cluster.run(Worker(), [sys.executable, '-c', 'import time; print(\\'up\\', flush=True); time.sleep(600)'], "
            f"name='sleeper', log_dir={str(tmp_path)!r})")
    scheduler = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', {slot!r}]).wait()"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", scheduler], env=env, start_new_session=True)
    tree: dict[int, str] = {}
    try:
        assert wait_for(lambda: any("up" in f.read_text() for f in tmp_path.glob("sleeper_*.out")), 60)
        tree = process_tree(proc.pid)
        assert len(tree) == 3, describe(tree)  # scheduler, slot, job
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:
        kill_all(tree or process_tree(proc.pid))
        raise
    took = assert_all_gone(tree)
    assert took < 15, f"the job outlived its scheduler by {took:.1f} s"


# --------------------------------------------------------------------------------------
# Slurm workers
# --------------------------------------------------------------------------------------

def slurm_jobs(pdir: Path, stage: str) -> list[str]:
    return [r["job_id"] for r in cluster.read_job_records(pdir / "log" / stage) if r["executor"] == "slurm"]


def running_jobs(pdir: Path, stage: str) -> list[str]:
    return [j for j in slurm_jobs(pdir, stage) if cluster.job_state(j) == "RUNNING"]


def active_jobs(pdir: Path, stage: str) -> list[str]:
    """Worker jobs of the run still pending or running in squeue."""
    return [j for j in slurm_jobs(pdir, stage) if cluster.job_state(j) in cluster.ACTIVE_STATES]


def assert_no_job_left(pdir: Path, stage: str) -> None:
    assert slurm_jobs(pdir, stage), "no Slurm worker job was recorded"
    if not wait_for(lambda: not active_jobs(pdir, stage), GONE_WITHIN_S, poll=0.5):
        left = active_jobs(pdir, stage)
        subprocess.run(["scancel", *left], capture_output=True)
        pytest.fail(f"Slurm worker job(s) {left} still in squeue {GONE_WITHIN_S:g} s after the scheduler was killed")


SLURM_WORKER = {"cluster_profile": "local", "num_block_workers": 2, "gpus": 0, "queue": "cpu",
                "time_limit": "00:10:00"}


@pytest.mark.slurm
@pytest.mark.parametrize("stage", ["extract", "predict"])
def test_slurm_worker_jobs_end_when_the_scheduler_is_killed(slurm_cluster, predict_experiment, tmp_path, stage):
    if stage == "extract":
        pdir = make_extract_run(tmp_path, SLURM_WORKER)
        args, progress = ["extract", str(pdir)], lambda: blocks_stored(pdir)
    else:
        pdir = make_predict_run(predict_experiment, SLURM_WORKER)
        args, progress = ["predict", str(pdir), "--no-progress"], lambda: chunks_written(pdir)
    tree, _ = kill_scheduler_mid_run(args, progress, tmp_path, ready=lambda: len(running_jobs(pdir, stage)) >= 2)
    assert_no_job_left(pdir, stage)  # the orphaned worker slots cancel their jobs
    assert_all_gone(tree)


@pytest.mark.slurm
def test_slurm_worker_job_ends_by_itself_when_scheduler_and_slots_die(slurm_cluster, tmp_path):
    """Nothing on the submitting side survives to scancel: the worker jobs must notice the lost scheduler."""
    pdir = make_extract_run(tmp_path, SLURM_WORKER)
    tree, _ = kill_scheduler_mid_run(["extract", str(pdir)], lambda: blocks_stored(pdir), tmp_path, whole_group=True,
                                     ready=lambda: len(running_jobs(pdir, "extract")) >= 2)
    assert_no_job_left(pdir, "extract")
    assert_all_gone(tree)
    logs = "".join(f.read_text(errors="replace") for f in (pdir / "log" / "extract").glob("*_log.err"))
    assert "lost the daisy scheduler" in logs
