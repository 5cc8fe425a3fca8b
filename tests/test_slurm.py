"""The slurm executor against a real single-node Slurm (tests/slurm/start_local_slurm.sh, started by the
``slurm_cluster`` fixture): submission through submitit, GPUs, exit codes, cancellation, validation
before submitting.  Every test uses its own submitit folder (tmp_path)."""

import json
import subprocess
import sys
import time

import pytest

from synful import cluster
from synful.cluster import ClusterError
from synful.config import Worker

pytestmark = pytest.mark.slurm

PRINT_ENV = ("import json, os, sys, time; time.sleep(float(sys.argv[1])); print(json.dumps({'argv': sys.argv[2:], "
             "'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'extra': os.environ.get('SYNFUL_TEST_EXTRA'), "
             "'job': os.environ.get('SLURM_JOB_ID'), 'partition': os.environ.get('SLURM_JOB_PARTITION'), "
             "'cpus': os.environ.get('SLURM_CPUS_PER_TASK')}))")


def _worker(**kw) -> Worker:
    return Worker(**{"cluster_profile": "local", "time_limit": "00:05:00", **kw})


def _result(handle) -> dict:
    lines = [ln for ln in handle.stdout.read_text().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def _settled_state(job_id: str, timeout: float = 60.0) -> str:
    """Slurm's state of a job whose result is written: the job's python exits just after writing it, so
    Slurm may still say RUNNING for a moment after ``wait()`` returned."""
    deadline = time.monotonic() + timeout
    while (state := cluster.job_state(job_id)) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def test_job_runs_with_resources_env_and_gpu(slurm_cluster, tmp_path):
    odd = "$(echo injected); `id` 'q'"
    h = cluster.launch(_worker(), [sys.executable, "-c", PRINT_ENV, "0", odd], name="probe", log_dir=tmp_path,
                       env={"SYNFUL_TEST_EXTRA": "42"})
    assert h.executor == "slurm" and h.job_id.isdigit()
    assert h.wait() == 0
    out = _result(h)
    assert out["argv"] == [odd] and out["extra"] == "42" and out["job"] == h.job_id
    assert out["partition"] == "gpu" and out["cpus"] == "1"
    assert out["cuda"] in ("0", "1")  # one of the two fake GPUs
    assert _settled_state(h.job_id) in ("COMPLETED", "COMPLETING")
    script = (tmp_path / f"{h.job_id}_submission.sh").read_text()
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=1", "--mem=1024M", "--time=5",
                 "--job-name=probe"):
        assert f"#SBATCH {flag}" in script
    rec = cluster.read_job_records(tmp_path)
    assert rec[0]["job_id"] == h.job_id and rec[0]["executor"] == "slurm"


def test_two_jobs_get_different_gpus(slurm_cluster, tmp_path):
    jobs = [cluster.launch(_worker(), [sys.executable, "-c", PRINT_ENV, "3"], name=f"w{i}", log_dir=tmp_path)
            for i in range(2)]
    assert [j.wait() for j in jobs] == [0, 0]
    assert sorted(_result(j)["cuda"] for j in jobs) == ["0", "1"]


def test_exit_code_account_and_extra_options(slurm_cluster, tmp_path):
    w = _worker(gpus=0, queue="cpu", sbatch_extra=["--comment=synful-test", "--requeue"])
    h = cluster.launch(w, [sys.executable, "-c", "import sys; sys.exit(3)"], name="fails", log_dir=tmp_path)
    assert h.wait() == 3
    script = (tmp_path / f"{h.job_id}_submission.sh").read_text()
    assert "#SBATCH --comment=synful-test" in script and "#SBATCH --requeue" in script
    assert "--gpus-per-node" not in script and "#SBATCH --partition=cpu" in script


def test_cancel_running_job(slurm_cluster, tmp_path):
    h = cluster.launch(_worker(), [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(120)"],
                       name="sleeper", log_dir=tmp_path)
    for _ in range(120):
        if h.stdout.exists() and "up" in h.stdout.read_text():
            break
        time.sleep(0.5)
    assert cluster.job_state(h.job_id) == "RUNNING"
    h.cancel()
    assert h.wait() != 0
    for _ in range(40):
        if cluster.job_state(h.job_id) == "CANCELLED":
            break
        time.sleep(0.5)
    assert cluster.job_state(h.job_id) == "CANCELLED"


def test_scancel_from_outside_is_seen_as_failure(slurm_cluster, tmp_path):
    h = cluster.launch(_worker(), [sys.executable, "-c", "import time; time.sleep(120)"], name="victim",
                       log_dir=tmp_path)
    for _ in range(120):
        if cluster.job_state(h.job_id) == "RUNNING":
            break
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=KILL", "--full", h.job_id], check=True)  # no chance to write a result
    assert h.wait() == cluster.EXIT_NO_RESULT


@pytest.mark.parametrize("kw,match", [
    ({"queue": "nosuchpartition"}, r"queue: unknown Slurm partition 'nosuchpartition' \(known: cpu, gpu\)"),
    ({"singularity_container": "/nonexistent/synful.sif"}, r"singularity_container: /nonexistent/synful.sif: no such file"),
    ({"time_limit": "soon"}, r"time_limit"),
    ({"sbatch_extra": ["-p gpu"]}, r"sbatch_extra"),
])
def test_bad_input_fails_before_submitting(slurm_cluster, tmp_path, kw, match):
    before = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout.split()
    with pytest.raises(ClusterError, match=match):
        cluster.launch(_worker(**kw), [sys.executable, "-c", "pass"], name="bad", log_dir=tmp_path / "jobs")
    after = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert set(after) <= set(before)
    assert not (tmp_path / "jobs").exists()


def test_missing_mount_dir_fails_before_submitting(slurm_cluster, tmp_path):
    image = tmp_path / "synful.sif"
    image.write_bytes(b"x")
    w = _worker(singularity_container=str(image), mount_dirs=[str(tmp_path / "absent")])
    with pytest.raises(ClusterError, match=r"mount_dirs: .*absent.*no such directory"):
        cluster.launch(w, ["python", "-c", "pass"], name="bad", log_dir=tmp_path / "jobs")
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize("kw,match", [
    ({"num_cpus": 64}, r"num_cpus = 64: nodes of partition 'gpu' have at most \d+ CPUs"),
    ({"gpus": 3}, r"gpus = 3: nodes of partition 'gpu' have at most 2 GPUs"),
    ({"mem": "100T"}, r"mem = 100T: nodes of partition 'gpu' have at most \d+ MB"),
])
def test_requests_no_node_can_satisfy_fail_before_submitting(slurm_cluster, tmp_path, kw, match):
    with pytest.raises(ClusterError, match=match):
        cluster.launch(_worker(**kw), [sys.executable, "-c", "pass"], name="big", log_dir=tmp_path / "jobs")
    assert not (tmp_path / "jobs").exists()


def test_sbatch_refusal_is_one_clear_error(slurm_cluster, tmp_path):
    w = _worker(sbatch_extra=["--gres=tpu:1"])  # a resource Slurm does not know: sbatch itself refuses
    with pytest.raises(ClusterError, match=r"sbatch refused job many"):
        cluster.launch(w, [sys.executable, "-c", "pass"], name="many", log_dir=tmp_path)


# --------------------------------------------------------------------------------------
# in-process use leaves the caller's streams and logging alone (fresh interpreters: submitit not yet imported)
# --------------------------------------------------------------------------------------

def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("level,expected", [(None, 20), ("debug", 10)])
def test_importing_submitit_closes_no_stream_of_another_library(level, expected):
    # submitit's import-time logging.config.dictConfig closes every handler; absl's (TensorFlow's) then
    # closes its stream unless that is the current sys.stderr -- pytest's capture stream, under pytest
    code = ("import io, logging, os, sys\n"
            "captured = sys.stderr = io.StringIO()  # sys.stderr when absl (TensorFlow) is imported\n"
            "import absl.logging\n"
            "sys.stderr = sys.__stderr__  # ... swapped since, as a capture ends\n"
            "from synful import cluster\n"
            "cluster._import_submitit()\n"
            "sub = logging.getLogger('submitit')\n"
            "print(captured.closed, os.environ.get('SUBMITIT_LOG_LEVEL'), sub.level, len(sub.handlers))\n")
    env_level = "" if level is None else f"import os; os.environ['SUBMITIT_LOG_LEVEL'] = {level!r}\n"
    r = _python(env_level + code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", str(level), str(expected), "0"]


def test_cli_main_leaves_no_handler_on_a_stream_it_does_not_own(tmp_path):
    code = ("import io, logging, sys\n"
            "from synful.cli import main\n"
            "swapped = sys.stderr = io.StringIO()\n"
            "rc = main(['status', sys.argv[1]])\n"
            "sys.stderr = sys.__stderr__\n"
            "swapped.close()\n"
            "root = logging.getLogger()\n"
            "assert rc == 2 and root.handlers == [] and root.level == logging.WARNING, (rc, root.handlers)\n"
            "assert logging.getLogger('gunpowder').level == logging.NOTSET\n"
            "logging.getLogger('synful').warning('logged after main')\n")
    r = _python(code, str(tmp_path / "missing"))
    assert r.returncode == 0, r.stderr
    assert "logged after main" in r.stderr and "Logging error" not in r.stderr


# --------------------------------------------------------------------------------------
# acceptance: training, prediction and extraction with Slurm workers
# --------------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from conftest import random_unet_setup  # noqa: E402

VOXEL_SIZE = (40, 4, 4)
RAW_SHAPE = (20, 100, 110)  # voxels: big enough that blockwise prediction is still running when a worker is cancelled
TINY_UNET = {"voxel_size": VOXEL_SIZE, "input_shape": (8, 20, 20), "fmap_num": 2, "fmap_inc_factor": 2,
             "downsample_factors": [(1, 2, 2)], "kernel_size": (3, 3, 3), "num_convs": 1, "tasks": "both"}


def test_training_submitted_through_slurm_writes_checkpoints_and_resumes(slurm_cluster, tmp_path, capsys):
    import yaml

    from synful.cli import main as cli_main
    from synful.scaffold import create_train_setup
    from synful.synthetic import write_synthetic

    base = tmp_path / "experiments"
    write_synthetic(base / "exp" / "01_data" / "sample.zarr", (12, 128, 128), seed=1)
    (base / "exp" / "01_data" / "manifest.yaml").write_text(yaml.safe_dump(
        {"samples": [{"name": "s", "container": "sample.zarr", "split": "train"}]}))
    training = {**TINY_UNET, "input_shape": (8, 36, 36), "checkpoint_every": 2, "snapshot_every": 0,
                "image_every": 0, "log_every": 1, "cache_size": 2, "elastic_augment": False,
                "reject_probability": 0.0}
    setup = create_train_setup(base, "exp", 0, overrides={
        "train_config.ini": {"Training": training},
        "worker_config.ini": {"Worker": {"cluster_profile": "local", "time_limit": "00:10:00"}}})

    assert cli_main(["train", str(setup), "--iterations", "2", "--submit", "--wait"]) == 0
    out = capsys.readouterr().out
    job_id = out.split("submitted training job ")[1].split(";")[0]
    assert (setup / "checkpoints" / "model_2.weights.h5").is_file()
    _settled_state(job_id)
    st = cluster.status(setup)
    assert st["last_checkpoint"]["iteration"] == 2
    assert st["jobs"][-1]["job_id"] == job_id and st["jobs"][-1]["executor"] == "slurm"
    assert st["jobs"][-1]["state"] in ("COMPLETED", "COMPLETING")
    assert any("trained until iteration 2" in ln for ln in st["log_tail"]["stdout"])

    # resubmitting continues from the last checkpoint: iteration 2's checkpoint is not written again
    first = (setup / "checkpoints" / "model_2.weights.h5").stat().st_mtime_ns
    job = cluster.submit_training(setup, 4)
    assert job.job_id != job_id and job.wait() == 0
    assert (setup / "checkpoints" / "model_4.weights.h5").is_file()
    assert (setup / "checkpoints" / "model_2.weights.h5").stat().st_mtime_ns == first
    assert "trained until iteration 4" in job.stdout.read_text()
    assert cli_main(["status", str(setup)]) == 0
    assert "last checkpoint: iteration 4" in capsys.readouterr().out


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A training setup with a random-weight tiny U-Net checkpoint, and a random raw volume."""
    from synful.io.volumes import write_volume

    base = tmp_path_factory.mktemp("experiments")
    train_dir, rng = random_unet_setup(base, TINY_UNET)
    raw_container = base / "exp" / "01_data" / "raw.zarr"
    write_volume(raw_container, "volumes/raw", rng.integers(0, 256, RAW_SHAPE, dtype=np.uint8), VOXEL_SIZE,
                 offset=(0, 0, 0))
    return {"base": base, "raw_container": str(raw_container), "reference": {}}


def _predict_setup(experiment, worker: dict) -> Path:
    from synful.scaffold import create_predict_setups

    prediction = {"raw_container": experiment["raw_container"], "raw_dataset": "volumes/raw",
                  "indicator_dtype": "float32", "vectors_dtype": "float32", "block_factor": (2, 2, 2)}
    extraction = {"cc_threshold": 0.6, "context": (160, 160, 160), "block_shape": (400, 200, 200)}
    (setup,) = create_predict_setups(experiment["base"], "exp", 0, [1], overrides={
        "predict_config.ini": {"Prediction": prediction, "Extraction": extraction},
        "worker_config.ini": {"Worker": {"num_block_workers": 2, **worker}}})
    return setup


def _outputs(setup) -> tuple[np.ndarray, np.ndarray]:
    from synful.io.volumes import open_volume
    from synful.predict import plan_prediction

    p = plan_prediction(setup).prediction
    ind = open_volume(p.out_container, p.indicator_dataset)
    vec = open_volume(p.out_container, p.vectors_dataset)
    return ind[ind.roi], vec[vec.roi]


def _partners(setup) -> np.ndarray:
    from synful.store import open_run_store

    with open_run_store(setup) as store:
        return store.query()


def _local_reference(experiment):
    """Indicator, vectors and partners of the local executor (computed once per module)."""
    from synful.extract import extract
    from synful.predict import predict

    ref = experiment["reference"]
    if not ref:
        setup = _predict_setup(experiment, {"executor": "local", "gpus": 0})
        assert predict(setup, progress=False)["complete"]
        extract(setup)
        ref["indicator"], ref["vectors"] = _outputs(setup)
        ref["partners"] = _partners(setup)
        assert len(ref["partners"]) > 5
    return ref


def _slurm_jobs(setup, stage: str) -> list[dict]:
    return [r for r in cluster.read_job_records(Path(setup) / "log" / stage) if r["executor"] == "slurm"]


def test_prediction_and_extraction_with_slurm_workers_equal_local(slurm_cluster, experiment):
    from synful.cli import main as cli_main

    ref = _local_reference(experiment)
    setup = _predict_setup(experiment, {"cluster_profile": "local", "executor": "local", "time_limit": "00:10:00"})
    # --submit: workers become Slurm jobs although worker_config.ini says local
    assert cli_main(["predict", str(setup), "--submit", "--no-progress"]) == 0
    assert cli_main(["extract", str(setup), "--submit"]) == 0
    for stage in ("predict", "extract"):
        jobs = _slurm_jobs(setup, stage)
        assert len(jobs) >= 2 and all(j["job_id"].isdigit() for j in jobs)
        assert all(_settled_state(j["job_id"]) in ("COMPLETED", "COMPLETING") for j in jobs)
    indicator, vectors = _outputs(setup)
    np.testing.assert_array_equal(indicator, ref["indicator"])
    np.testing.assert_array_equal(vectors, ref["vectors"])
    np.testing.assert_array_equal(_partners(setup), ref["partners"])


def test_worker_cancelled_with_scancel_then_rerun_gives_same_partners(slurm_cluster, experiment, tmp_path):
    from synful.extract import extract
    from synful.predict import plan_prediction, predict

    ref = _local_reference(experiment)
    setup = _predict_setup(experiment, {"cluster_profile": "local", "max_retries": 0, "time_limit": "00:10:00"})
    plan = plan_prediction(setup)
    chunks = Path(plan.prediction.out_container) / plan.prediction.indicator_dataset
    log = open(tmp_path / "predict.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "synful", "predict", str(setup), "--no-progress"],
                            stdout=log, stderr=subprocess.STDOUT)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and proc.poll() is None:
            written = [f for f in chunks.glob("*") if not f.name.startswith(".")] if chunks.is_dir() else []
            running = [j["job_id"] for j in _slurm_jobs(setup, "predict") if cluster.job_state(j["job_id"]) == "RUNNING"]
            if written and running:  # blocks are being written: cancel a worker mid-run
                victim = running[0]
                subprocess.run(["scancel", victim], check=True)
            time.sleep(0.2)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert victim is not None, (tmp_path / "predict.log").read_text()[-2000:]
    for _ in range(40):
        if cluster.job_state(victim) == "CANCELLED":
            break
        time.sleep(0.5)
    assert cluster.job_state(victim) == "CANCELLED"

    rerun = predict(setup, progress=False)  # finished blocks stay done
    assert rerun["complete"] and rerun["blocks"]["skipped"] > 0
    extract(setup)
    indicator, vectors = _outputs(setup)
    np.testing.assert_array_equal(indicator, ref["indicator"])
    np.testing.assert_array_equal(vectors, ref["vectors"])
    np.testing.assert_array_equal(_partners(setup), ref["partners"])
