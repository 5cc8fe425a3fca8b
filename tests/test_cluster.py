"""Cluster layer without Slurm: container commands, profiles, resource parsing, GPU discovery, the local
executor, job records and status, and the Singularity recipe."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from synful import cluster
from synful.cli import main as cli_main
from synful.cluster import ClusterError
from synful.config import Worker, read_worker_config

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------
# container command
# --------------------------------------------------------------------------------------

def test_container_command_without_container_is_unchanged():
    argv = ["python", "-m", "synful", "predict", "/data/run 1"]
    out = cluster.container_command(Worker(), argv)
    assert out == argv and out is not argv


def test_container_command_wraps_in_singularity_exec(tmp_path):
    image = tmp_path / "synful.sif"
    image.write_bytes(b"not really an image")
    d1, d2 = tmp_path / "data", tmp_path / "scratch dir"
    d1.mkdir()
    d2.mkdir()
    w = Worker(singularity_container=str(image), mount_dirs=[str(d1), f"{d2}:/scratch:ro"])
    out = cluster.container_command(w, ["python", "-m", "synful", "train", "/x; rm -rf /"])
    assert out == ["singularity", "exec", "--nv", "-B", str(d1), "-B", f"{d2}:/scratch:ro", str(image),
                   "python", "-m", "synful", "train", "/x; rm -rf /"]


def test_container_command_from_worker_config_ini(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "synful.sif").write_bytes(b"x")
    (tmp_path / "data").mkdir()
    ini = tmp_path / "worker_config.ini"
    ini.write_text(f"[Worker]\nsingularity_container = img/synful.sif\nmount_dirs = {tmp_path / 'data'}\n")
    w = read_worker_config(ini)  # relative image path resolves against the ini's folder
    out = cluster.container_command(w, ["python", "-c", "pass"])
    assert out[:5] == ["singularity", "exec", "--nv", "-B", str(tmp_path / "data")]
    assert out[5] == str(tmp_path / "img" / "synful.sif")


def test_container_command_missing_image(tmp_path):
    w = Worker(singularity_container=str(tmp_path / "missing.sif"))
    with pytest.raises(ClusterError, match=r"singularity_container: .*missing\.sif: no such file"):
        cluster.container_command(w, ["true"])


def test_container_command_missing_mount_dir(tmp_path):
    image = tmp_path / "synful.sif"
    image.write_bytes(b"x")
    w = Worker(singularity_container=str(image), mount_dirs=[str(tmp_path / "nope") + ":/data"])
    with pytest.raises(ClusterError, match=r"mount_dirs: .*nope.*no such directory"):
        cluster.container_command(w, ["true"])


def test_synful_command_python_inside_and_outside_container(tmp_path):
    assert cluster.synful_command(Worker(), ["status", "d"]) == [sys.executable, "-m", "synful", "status", "d"]
    image = tmp_path / "synful.sif"
    image.write_bytes(b"x")
    w = Worker(singularity_container=str(image))
    assert cluster.synful_command(w, ["train", "d"]) == ["python", "-m", "synful", "train", "d"]


# --------------------------------------------------------------------------------------
# profiles and resource parsing
# --------------------------------------------------------------------------------------

def test_shipped_profiles_load():
    names = sorted(p.stem for p in cluster.PROFILE_DIR.glob("*.yaml"))
    assert "local" in names and "example_site" in names
    for name in names:
        prof = cluster.load_profile(name)
        w, _ = cluster.resolve_worker(Worker(cluster_profile=name))
        cluster.parse_time_limit(w.time_limit)
        cluster.parse_mem(w.mem)
        cluster.parse_sbatch_extra(w.sbatch_extra)
        assert prof.description
    site = cluster.load_profile("example_site")
    assert site.setup == ("module load apptainer",) and site.container_runtime == "apptainer"


def test_profile_fills_only_keys_left_at_builtin_default():
    w, prof = cluster.resolve_worker(Worker(cluster_profile="local", num_cpus=2, mem="3G"))
    assert prof.name == "local"
    assert w.executor == "slurm" and w.queue == "gpu" and w.time_limit == "00:30:00"  # from the profile
    assert w.num_cpus == 2 and w.mem == "3G"  # set in the config: kept
    w0, prof0 = cluster.resolve_worker(Worker())
    assert prof0 is None and w0 == Worker()


def test_profile_errors(tmp_path):
    with pytest.raises(ClusterError, match=r"no profile 'nosuchsite'.*known: .*local"):
        cluster.load_profile("nosuchsite")
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  time_limit: 24:00:00\n")  # YAML 1.1 reads this as a number
    with pytest.raises(ClusterError, match=r"time_limit: expected a string \(quote times"):
        cluster.load_profile(str(bad))
    bad.write_text("defaults:\n  queues: gpu\n")
    with pytest.raises(ClusterError, match=r"unknown \[Worker\] key 'queues'"):
        cluster.load_profile(str(bad))
    bad.write_text("container_runtime: docker\n")
    with pytest.raises(ClusterError, match="container_runtime"):
        cluster.load_profile(str(bad))


def test_profile_container_runtime_and_relative_image(tmp_path):
    (tmp_path / "synful.sif").write_bytes(b"x")
    prof = tmp_path / "site.yaml"
    prof.write_text("defaults:\n  singularity_container: synful.sif\ncontainer_runtime: apptainer\n")
    out = cluster.container_command(Worker(cluster_profile=str(prof)), ["python", "-V"])
    assert out == ["apptainer", "exec", "--nv", str(tmp_path / "synful.sif"), "python", "-V"]


@pytest.mark.parametrize("text,minutes", [("48:00:00", 2880), ("90", 90), ("1-00:00:00", 1440), ("2-12", 3600),
                                          ("00:00:30", 1), ("10:30", 11), ("0-01:30", 90)])
def test_parse_time_limit(text, minutes):
    assert cluster.parse_time_limit(text) == minutes


@pytest.mark.parametrize("text", ["", "1h", "0", "12:xx", "-5"])
def test_parse_time_limit_rejects(text):
    with pytest.raises(ClusterError, match=r"\[Worker\] time_limit"):
        cluster.parse_time_limit(text)


def test_parse_mem_and_sbatch_extra():
    assert cluster.parse_mem("25G") == 25600 and cluster.parse_mem("500M") == 500 and cluster.parse_mem("1T") == 1048576
    assert cluster.parse_mem("1.5G") == 1536 and cluster.parse_mem("2048") == 2048
    with pytest.raises(ClusterError, match=r"\[Worker\] mem"):
        cluster.parse_mem("lots")
    assert cluster.parse_sbatch_extra(["--qos=high", "--exclusive", "--constraint=a100|h100"]) == {
        "qos": "high", "exclusive": True, "constraint": "a100|h100"}
    with pytest.raises(ClusterError, match=r"sbatch_extra: '-q high': use the long form"):
        cluster.parse_sbatch_extra(["-q high"])


def test_slurm_executor_without_sbatch_fails_before_submitting(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no sinfo
    w = Worker(executor="slurm")
    with pytest.raises(ClusterError, match="sbatch not found on PATH"):
        cluster.launch(w, [sys.executable, "-c", "pass"], name="x", log_dir=tmp_path / "logs")
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------------------
# GPUs
# --------------------------------------------------------------------------------------

def _nvml_device_count():
    try:
        nvml = cluster._import_nvml()
        nvml.nvmlInit()
    except Exception:
        return None
    try:
        return nvml.nvmlDeviceGetCount()
    finally:
        nvml.nvmlShutdown()


def test_discover_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    count = _nvml_device_count()
    if count is None:  # this machine: no NVIDIA driver
        with pytest.warns(RuntimeWarning, match="no GPUs found.*workers run on CPUs"):
            assert cluster.discover_gpus() == []
    else:
        assert cluster.discover_gpus() == list(range(count))


def test_discover_gpus_respects_hidden_devices(monkeypatch, recwarn):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cluster.discover_gpus() == []
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_block_worker_count():
    assert cluster.block_worker_count(Worker(num_block_workers=3), gpus=[0]) == 3
    assert cluster.block_worker_count(Worker(), gpus=[0, 1, 2, 3]) == 4
    assert cluster.block_worker_count(Worker(), gpus=[]) == max(1, (os.cpu_count() or 2) // 2)
    assert cluster.block_worker_count(Worker(executor="slurm"), gpus=[0, 1]) == 1


# --------------------------------------------------------------------------------------
# local executor, records, status
# --------------------------------------------------------------------------------------

PRINT_ENV = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
             "'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), 'extra': os.environ.get('SYNFUL_TEST_EXTRA')}))")


def test_launch_local_runs_argument_list(tmp_path):
    odd = "$(echo injected); `id` && rm -rf / 'quoted' \"x\""
    h = cluster.launch(Worker(), [sys.executable, "-c", PRINT_ENV, odd], name="probe", log_dir=tmp_path / "jobs",
                       env={"SYNFUL_TEST_EXTRA": "42"}, gpu=1)
    assert h.job_id.startswith("local-") and h.executor == "local"
    assert h.wait() == 0 and h.done() and h.state() == "COMPLETED"
    out = json.loads(h.stdout.read_text())
    assert out == {"argv": [odd], "cuda": "1", "extra": "42"}
    rec = cluster.read_job_records(tmp_path / "jobs")
    assert len(rec) == 1 and rec[0]["job_id"] == h.job_id and rec[0]["name"] == "probe"
    assert rec[0]["argv"][-1] == odd and rec[0]["stdout"] == str(h.stdout)


def test_launch_local_exit_code_and_cancel(tmp_path):
    h = cluster.launch(Worker(), [sys.executable, "-c", "import sys; sys.exit(3)"], name="fail", log_dir=tmp_path)
    assert h.wait() == 3 and h.state() == "FAILED"
    # the job's own children go too: a shell-free grandchild that would outlive a plain kill
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print('started', flush=True); time.sleep(60)")
    h = cluster.launch(Worker(), [sys.executable, "-c", code], name="sleeper", log_dir=tmp_path)
    for _ in range(100):
        if "started" in h.stdout.read_text():
            break
        import time
        time.sleep(0.1)
    assert cluster.job_state(h.job_id) == "RUNNING"
    children = subprocess.run(["pgrep", "-s", str(h.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 2
    h.cancel()
    assert h.done() and h.wait() != 0
    assert subprocess.run(["pgrep", "-s", str(h.pid)], capture_output=True, text=True).stdout.split() == []
    assert cluster.job_state(h.job_id) == "ENDED"


def test_run_returns_exit_code(tmp_path):
    assert cluster.run(Worker(), [sys.executable, "-c", "raise SystemExit(5)"], name="r", log_dir=tmp_path) == 5


def test_launch_rejects_bad_name_before_starting(tmp_path):
    with pytest.raises(ClusterError, match="job name"):
        cluster.launch(Worker(), [sys.executable, "-c", "pass"], name="a b;c", log_dir=tmp_path / "j")
    assert not (tmp_path / "j").exists()


def _train_setup(tmp_path) -> Path:
    from synful.scaffold import create_train_setup

    return create_train_setup(tmp_path / "experiments", "exp", 0)


def test_status_reports_jobs_checkpoint_and_log_tail(tmp_path, capsys):
    setup = _train_setup(tmp_path)
    st = cluster.status(setup)
    assert st["jobs"] == [] and st["last_checkpoint"] is None
    (setup / "checkpoints").mkdir()
    for it in (10, 200, 30):
        (setup / "checkpoints" / f"model_{it}.weights.h5").write_bytes(b"")
    h = cluster.launch(Worker(), [sys.executable, "-c", "print('\\n'.join(f'line {i}' for i in range(50)))"],
                       name="train_exp_t0", log_dir=setup / "jobs")
    assert h.wait() == 0
    st = cluster.status(setup, tail=5)
    assert st["last_checkpoint"]["iteration"] == 200
    assert [j["job_id"] for j in st["jobs"]] == [h.job_id] and st["jobs"][0]["state"] == "ENDED"
    assert st["log_tail"]["stdout"] == [f"line {i}" for i in range(45, 50)]
    assert cli_main(["status", str(setup), "--tail", "2"]) == 0
    text = capsys.readouterr().out
    assert "last checkpoint: iteration 200" in text and h.job_id in text and "line 49" in text
    assert cli_main(["status", str(setup), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_checkpoint"]["iteration"] == 200
    assert cli_main(["status", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_submit_training_refuses_non_training_dirs(tmp_path):
    with pytest.raises(Exception, match="not a setup directory"):
        cluster.submit_training(tmp_path)


# --------------------------------------------------------------------------------------
# Singularity recipe
# --------------------------------------------------------------------------------------

def _recipe():
    from spython.main.parse.parsers import SingularityParser

    return SingularityParser(str(ROOT / "singularity" / "synful.def")).recipe["spython-base"]


def test_singularity_definition_pins_this_version():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    r = _recipe()
    assert re.fullmatch(r"tensorflow/tensorflow:2\.\d+\.\d+-gpu", r.fromHeader)
    wheel = f"synful-{version}-py3-none-any.whl"
    assert r.files == [f"build/{wheel} /opt/synful/{wheel}"]
    assert any(line.startswith("python -m pip install") and line.endswith(f"/opt/synful/{wheel}")
               for line in r.install)
    assert f"org.opencontainers.image.version {version}" in r.labels
    assert "PYTHONNOUSERSITE=1" in r.environ
    assert r.cmd.startswith("exec python -m synful")
    # the TensorFlow of the base image must satisfy the package's own pin
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    tf_pin = next(d for d in deps if d.startswith("tensorflow"))
    from packaging.specifiers import SpecifierSet
    assert r.fromHeader.split(":")[1].removesuffix("-gpu") in SpecifierSet(tf_pin.removeprefix("tensorflow"))


def test_singularity_makefile_builds_wheel_then_image():
    res = subprocess.run(["make", "-n", "-C", str(ROOT / "singularity"), "synful.sif", "RUNTIME=apptainer"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = [ln.strip() for ln in res.stdout.splitlines()]
    wheel = next(i for i, ln in enumerate(lines) if "pip wheel" in ln)
    build = next(i for i, ln in enumerate(lines) if ln.startswith("apptainer build"))
    assert wheel < build and "synful.def" in lines[build]
    res = subprocess.run(["make", "-s", "-C", str(ROOT / "singularity"), "check-version"], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr


def test_worker_template_keys_are_known_to_profiles():
    fields = {f.name for f in dataclasses.fields(Worker)}
    for name in ("local", "example_site"):
        assert set(cluster.load_profile(name).defaults) <= fields
    read_worker_config(ROOT / "configs" / "worker_config.ini")
