"""The README's workflow blocks are its contract: each runs verbatim, in a fresh directory, and must not fail.

A block is the ```bash fence after a ``<!-- README workflow: NAME ...`` comment in README.md.  The test
copies the prepare_* scripts into an empty directory (as a fresh checkout has them, beside no
experiments), links the virtual environment there as ``.venv`` and runs the block's lines in one bash
with ``set -euo pipefail``.  Only the substitutions listed below are made, to shrink volumes and
iteration counts; each must match the README text, so a changed README line fails the test here
instead of drifting silently.  The one step the README leaves to the user, editing the setup's ini files,
is done by a script inserted after the scaffolding line: it shrinks the network (the template's is
Synful's full-size one) and keeps every other default the user gets.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

pytestmark = pytest.mark.slow


def readme_block(name: str) -> str:
    """The text of the ```bash block that follows ``<!-- README workflow: NAME``."""
    text = README.read_text()
    m = re.search(r"<!-- README workflow: " + re.escape(name) + r"\b[^\n]*-->\s*\n```bash\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no block marked '<!-- README workflow: {name}'"
    return m.group(1)


def substitute(block: str, subs: list[tuple[str, str, int]]) -> str:
    """Replace each (old, new, count): ``old`` must occur exactly ``count`` times in the block."""
    for old, new, count in subs:
        found = block.count(old)
        assert found == count, f"README block: expected {count} x {old!r}, found {found} (README changed?)"
        block = block.replace(old, new)
    return block


def insert_after(block: str, line_start: str, command: str) -> str:
    lines = block.splitlines()
    hits = [i for i, line in enumerate(lines) if line.startswith(line_start)]
    assert len(hits) == 1, f"README block: expected one line starting {line_start!r}, found {len(hits)}"
    lines.insert(hits[0] + 1, command)
    return "\n".join(lines)


def run_block(tmp_path: Path, script: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    """Run ``script`` with bash in ``tmp_path`` (a fresh directory with the prepare_* scripts and .venv)."""
    for name in ("prepare_training.py", "prepare_prediction.py"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    (tmp_path / "workflow.sh").write_text("set -euo pipefail\nset -x\n" + script + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(sys.prefix))  # the block's `source` must provide synful
    res = subprocess.run(["bash", "workflow.sh"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, (f"README workflow failed (exit {res.returncode}) at the last '+' line:\n"
                                 f"{res.stderr[-6000:]}\n--- stdout ---\n{res.stdout[-3000:]}")
    return res


# The user's edit of train_config.ini, made small: a two-level network on a 12 x 60 x 60 input (the
# template's is Synful's, 42 x 430 x 430, minutes per iteration on a CPU).  Everything else stays default.
TINY_PARTNER_EDIT = textwrap.dedent("""\
    import configparser, sys
    path = "experiments/exp/02_train/setup_t0/train_config.ini"
    cfg = configparser.ConfigParser()
    cfg.read(path)
    cfg["Training"].update({"input_shape": "12, 60, 60", "kernel_size": "1, 3, 3", "fmap_num": "2",
                            "fmap_inc_factor": "2", "downsample_factors": "[[1, 2, 2], [1, 2, 2]]",
                            "cache_size": "4"})
    with open(path, "w") as f:
        cfg.write(f)
""")

PARTNER_SUBS = [
    ("--shape 40 500 500", "--shape 16 140 140", 3),
    ("python train.py 4000", "python train.py 6", 1),
    ("-i 4000", "-i 6", 2),
]


def test_readme_partner_workflow_runs_as_written(tmp_path):
    block = substitute(readme_block("partner"), PARTNER_SUBS)
    (tmp_path / "tiny_settings.py").write_text(TINY_PARTNER_EDIT)
    block = insert_after(block, "python prepare_training.py -e exp -t 0", "python tiny_settings.py")
    res = run_block(tmp_path, block)

    exp = tmp_path / "experiments" / "exp"
    manifest = (exp / "01_data" / "manifest.yaml").read_text()
    assert all(f"split: {s}" in manifest for s in ("train", "validation", "test"))
    assert list((exp / "02_train" / "setup_t0" / "checkpoints").glob("model_6*"))
    validation, test = exp / "03_predict" / "setup_t0_p0", exp / "03_predict" / "setup_t0_p1"
    assert (validation / "evaluation" / "summary.json").exists()
    assert (validation / "evaluation" / "precision_recall.png").exists()
    calibrated = list((test / "evaluation").glob("results_thr*.json"))
    assert len(calibrated) == 1, calibrated
    assert '"calibration"' in calibrated[0].read_text()
    assert (tmp_path / "partners.parquet").stat().st_size > 0
    assert "checkpoint" in res.stdout


# Synister's classifier made small: a 8 x 64 x 64 input, 2 feature maps, batches of 2, no elastic augmentation
TRANSMITTER_SUBS = [
    ("--set fc_size=256", '--set fc_size=16 "input_shape=8, 64, 64" fmaps=2 batch_size=2 elastic_augment=false', 1),
    ("python train.py 300", "python train.py 3", 1),
    ("-i 300", "-i 3", 1),
]


def test_readme_transmitter_workflow_runs_as_written(tmp_path):
    block = substitute(readme_block("transmitter"), TRANSMITTER_SUBS)
    run_block(tmp_path, block)

    exp = tmp_path / "experiments" / "nt"
    assert (exp / "01_data" / "transmitters.sqlite").stat().st_size > 0
    assert list((exp / "02_train" / "setup_t0" / "checkpoints").glob("*3*"))
    evaluation = exp / "03_predict" / "setup_t0_p0" / "evaluation"
    assert list(evaluation.glob("*.json")) and list(evaluation.glob("*.png"))
