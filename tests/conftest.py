"""Shared test fixtures: servers started by the test set-up on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nx27017_executable() -> str:
    exe = Path(sys.executable).parent / "nx-27017"
    return str(exe) if exe.exists() else (shutil.which("nx-27017") or "")


def start_nx27017(workdir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start the nx-27017 MongoDB wire-protocol server (SQLite-backed) in ``workdir``; return (process, URL)."""
    from synful.store import wait_for_mongodb

    exe = _nx27017_executable()
    if not exe:
        pytest.skip("nx-27017 is not installed (pip install nx-27017)")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = open(workdir / "nx-27017.out", "wb")
    proc = subprocess.Popen(
        [exe, "--host", "127.0.0.1", "--port", str(port), "--db", str(workdir / "mongo.sqlite"),
         "--pid-file", str(workdir / "nx-27017.pid"), "--log-file", str(workdir / "nx-27017.log")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"mongodb://127.0.0.1:{port}"
    try:
        wait_for_mongodb(url, timeout=30)
    except Exception:
        stop_process(proc)
        raise
    return proc, url


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process we started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory):
    """A mongodb:// URL: $SYNFUL_TEST_MONGODB_URL (a real mongod) if set, else a fresh nx-27017 on 127.0.0.1."""
    env = os.environ.get("SYNFUL_TEST_MONGODB_URL")
    if env:
        yield env
        return
    proc, url = start_nx27017(tmp_path_factory.mktemp("mongodb"))
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture(params=["sqlite", "mongodb"])
def partner_store(request, tmp_path):
    """A created partner store in a fresh collection, on SQLite and on MongoDB; dropped afterwards."""
    import uuid

    from synful.store import open_store

    url = f"sqlite:///{tmp_path}/p.sqlite" if request.param == "sqlite" else request.getfixturevalue("mongodb_url")
    s = open_store(url, database="synful_test", collection=f"partners_{uuid.uuid4().hex[:10]}")
    s.create()
    yield s
    s.drop()
    s.close()


def random_unet_setup(base: Path, training: dict, seed: int = 0):
    """A training setup ``exp/t0`` under ``base`` with ``[Training]`` ``training`` and a checkpoint of iteration 1
    holding random weights (normal, sd 0.5); returns the setup directory and the generator, for more data."""
    import numpy as np

    from synful.config import read_train_config
    from synful.models import build_unet
    from synful.scaffold import create_train_setup
    from synful.train import checkpoint_path

    train_dir = create_train_setup(base, "exp", 0, overrides={"train_config.ini": {"Training": training}})
    model = build_unet(read_train_config(train_dir / "train_config.ini"))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    ckpt = checkpoint_path(train_dir, 1)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(str(ckpt))
    return train_dir, rng


SLURM_SCRIPTS = Path(__file__).resolve().parent / "slurm"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node Slurm on 127.0.0.1 (tests/slurm/start_local_slurm.sh; partitions cpu, gpu; 2 fake GPUs).

    Installs slurm-wlm and munge when missing (needs root).  Fails the tests that use it, loudly, when
    Slurm cannot start.  A cluster this session started is stopped at the end, daemon by daemon through
    their pid files (tests/slurm/stop_local_slurm.sh); one that was already running is left alone.
    Yields the ready line (node, CPUs, memory, gres, partitions).
    """
    try:
        res = subprocess.run(["bash", str(SLURM_SCRIPTS / "start_local_slurm.sh")], capture_output=True, text=True,
                             timeout=900)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"local Slurm did not start within 900 s: {e}", pytrace=False)
    if res.returncode != 0:
        pytest.fail(f"local Slurm did not start (exit {res.returncode}):\n{res.stdout}\n{res.stderr}", pytrace=False)
    started = "LOCAL SLURM STARTED" in res.stdout
    try:
        yield res.stdout.strip().splitlines()[-1]
    finally:
        if started:
            subprocess.run(["bash", str(SLURM_SCRIPTS / "stop_local_slurm.sh")], capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def chromium():
    """(chromium, chromedriver) executables for the neuroglancer tests (headless, software WebGL).

    Installs Debian's chromium and chromium-driver with apt-get when either is missing (needs root), like the
    Slurm set-up installs slurm-wlm; fails the tests that use it, loudly, when they cannot be installed.
    """
    packages = ("chromium", "chromium-driver")

    def found():
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
        return (browser, driver) if browser and driver else None

    if found() is None:
        if os.geteuid() != 0:
            pytest.fail(f"chromium / chromedriver missing and not root: apt-get install {' '.join(packages)}",
                        pytrace=False)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
            if res.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed (exit {res.returncode}):\n{res.stdout}\n{res.stderr}",
                            pytrace=False)
    if found() is None:
        pytest.fail(f"apt-get installed {' '.join(packages)} but chromium / chromedriver are not on PATH",
                    pytrace=False)
    return found()
