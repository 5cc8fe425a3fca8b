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
    assert cluster.job_state(h.job_id) in ("COMPLETED", "COMPLETING")
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
