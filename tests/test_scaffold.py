"""prepare_training.py / prepare_prediction.py: experiment layout, refusals, clean-up."""

import subprocess
import sys
from pathlib import Path

import pytest

from synful.config import read_predict_config, read_train_config, read_worker_config
from synful.scaffold import ScaffoldError, create_predict_setups, create_train_setup, run_ids

ROOT = Path(__file__).resolve().parent.parent


def _run(script, *args, input=None):
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True,
                          input=input, cwd=ROOT)


def test_prepare_scripts_layout(tmp_path):
    r = _run("prepare_training.py", "-e", "exp", "-t", "0", "-d", str(tmp_path))
    assert r.returncode == 0, r.stderr
    t = tmp_path / "exp" / "02_train" / "setup_t0"
    assert sorted(p.name for p in t.iterdir()) == ["train.py", "train_config.ini", "worker_config.ini"]
    assert (tmp_path / "exp" / "01_data").is_dir()
    read_train_config(t / "train_config.ini")
    read_worker_config(t / "worker_config.ini")

    # no checkpoint yet: refused, naming the file, unless scaffolding ahead of training is asked for
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "0", "-i", "1000", "2000", "-d", str(tmp_path))
    assert r.returncode != 0 and "model_1000.weights.h5: no checkpoint for iteration 1000 (there: none" in r.stderr
    assert not (tmp_path / "exp" / "03_predict").exists()
    (t / "checkpoints").mkdir()
    (t / "checkpoints" / "model_1000.weights.h5").write_bytes(b"")
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "0", "-i", "1000", "2000", "-d", str(tmp_path))
    assert r.returncode != 0 and "iteration 2000 (there: [1000]" in r.stderr
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "0", "-i", "1000", "2000", "-d", str(tmp_path),
             "--allow-missing-checkpoints")
    assert r.returncode == 0, r.stderr
    p0, p1 = (tmp_path / "exp" / "03_predict" / f"setup_t0_p{i}" for i in (0, 1))
    c0, c1 = read_predict_config(p0 / "predict_config.ini"), read_predict_config(p1 / "predict_config.ini")
    assert (c0.prediction.iteration, c1.prediction.iteration) == (1000, 2000)
    assert c0.prediction.split_part == "test"
    assert c0.prediction.train_setup == str(t.resolve())
    assert run_ids(p1).name == "exp_t0_p1"

    # P counts up from the highest existing one; -v selects the validation split
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "0", "-i", "3000", "-v", "-d", str(tmp_path),
             "--allow-missing-checkpoints")
    assert r.returncode == 0, r.stderr
    c2 = read_predict_config(tmp_path / "exp" / "03_predict" / "setup_t0_p2" / "predict_config.ini")
    assert c2.prediction.split_part == "validation" and c2.prediction.iteration == 3000


def test_prepare_training_refuses_existing(tmp_path):
    assert _run("prepare_training.py", "-e", "exp", "-t", "0", "-d", str(tmp_path)).returncode == 0
    cfg = tmp_path / "exp" / "02_train" / "setup_t0" / "train_config.ini"
    cfg.write_text(cfg.read_text().replace("fmap_num = 4", "fmap_num = 9"))
    r = _run("prepare_training.py", "-e", "exp", "-t", "0", "-d", str(tmp_path))
    assert r.returncode != 0
    assert str(tmp_path / "exp" / "02_train" / "setup_t0") in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "fmap_num = 9" in cfg.read_text()  # untouched


def test_prepare_training_clean(tmp_path):
    assert _run("prepare_training.py", "-e", "exp", "-t", "3", "-d", str(tmp_path)).returncode == 0
    t = tmp_path / "exp" / "02_train" / "setup_t3"
    r = _run("prepare_training.py", "-e", "exp", "-t", "3", "-d", str(tmp_path), "-c", input="n\n")
    assert r.returncode != 0 and t.exists()
    r = _run("prepare_training.py", "-e", "exp", "-t", "3", "-d", str(tmp_path), "-c", "--yes")
    assert r.returncode == 0 and not t.exists()
    r = _run("prepare_training.py", "-e", "exp", "-t", "3", "-d", str(tmp_path), "-c", "--yes")
    assert r.returncode != 0 and "no such setup" in r.stderr


def test_prepare_prediction_needs_train_setup(tmp_path):
    r = _run("prepare_prediction.py", "-e", "exp", "-t", "5", "-i", "10", "-d", str(tmp_path))
    assert r.returncode != 0 and "setup_t5" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "exp" / "03_predict").exists()


def test_api_errors(tmp_path):
    with pytest.raises(ScaffoldError, match="experiment name"):
        create_train_setup(tmp_path, "../evil", 0)
    create_train_setup(tmp_path, "e", 0)
    with pytest.raises(ScaffoldError, match="iterations"):
        create_predict_setups(tmp_path, "e", 0, [0])
    with pytest.raises(ScaffoldError, match="not a setup directory"):
        run_ids(tmp_path)


def test_no_half_written_setup_left(tmp_path):
    create_train_setup(tmp_path, "e", 0)
    leftovers = [p for p in (tmp_path / "e" / "02_train").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_synful_validate_cli(tmp_path):
    create_train_setup(tmp_path, "e", 0)
    setup = tmp_path / "e" / "02_train" / "setup_t0"
    r = subprocess.run([sys.executable, "-m", "synful", "validate", str(setup)], capture_output=True, text=True)
    # the configs are fine; the data they name is not there yet (tests/test_preflight.py: the data checks)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"error: {tmp_path / 'e' / '01_data' / 'manifest.yaml'}: manifest not found"
    cfg = setup / "train_config.ini"
    cfg.write_text(cfg.read_text().replace("voxel_size = 40, 4, 4", "voxel_size = 40, 4"))
    r = subprocess.run([sys.executable, "-m", "synful", "validate", str(setup)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: {cfg} [Training] voxel_size: expected 3 comma-separated integers (z, y, x), "
                                f"got '40, 4'")


def test_cli_help_lists_subcommands():
    r = subprocess.run([sys.executable, "-m", "synful", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "validate" in r.stdout
