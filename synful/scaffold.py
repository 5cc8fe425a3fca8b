"""Experiment directories: the layout the prepare_* scripts create.

::

    <base>/<exp>/
      01_data/                      dataset manifests, synthetic data
      02_train/setup_t<T>/          train_config.ini, worker_config.ini, train.py,
                                    checkpoints/, log/, snapshots/
      03_predict/setup_t<T>_p<P>/   predict_config.ini, worker_config.ini, outputs

Setups are written into a temporary sibling and renamed into place, so an
interrupted scaffold never leaves a half-written setup behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import (PREDICT_SECTIONS, TRAIN_SECTIONS, TRANSMITTER_PREDICT_SECTIONS, TRANSMITTER_TRAIN_SECTIONS,
                     WORKER_SECTIONS, fill_template, read_predict_config, read_train_config,
                     read_transmitter_predict_config, read_transmitter_train_config, read_worker_config,
                     render_template)
from .config.sections import EMBEDDING_PREDICT_SECTIONS, EMBEDDING_TRAIN_SECTIONS
from .errors import SynfulError

__all__ = [
    "ScaffoldError",
    "RunIds",
    "TEMPLATE_DIR",
    "template_text",
    "train_setup_dir",
    "predict_setup_dir",
    "create_train_setup",
    "remove_train_setup",
    "list_predict_setups",
    "remove_predict_setup",
    "create_predict_setups",
    "run_ids",
    "validate_setup",
    "setup_kind",
    "KINDS",
]

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "configs"
_TEMPLATE_SECTIONS = {
    "train_config.ini": TRAIN_SECTIONS,
    "predict_config.ini": PREDICT_SECTIONS,
    "worker_config.ini": WORKER_SECTIONS,
    "transmitter_train_config.ini": TRANSMITTER_TRAIN_SECTIONS,
    "transmitter_predict_config.ini": TRANSMITTER_PREDICT_SECTIONS,
    "embedding_train_config.ini": EMBEDDING_TRAIN_SECTIONS,
    "embedding_predict_config.ini": EMBEDDING_PREDICT_SECTIONS,
}
#: setup kinds: partner detection (U-Net), neurotransmitter classification (VGG3D) or self-supervised
#: synapse embeddings (SimCLR); config file prefix
KINDS = {"partner": "", "transmitter": "transmitter_", "embedding": "embedding_"}
#: the prediction section of each kind (where prepare_prediction.py writes train_setup and iteration)
PREDICT_SECTION = {"partner": "Prediction", "transmitter": "TransmitterPrediction", "embedding": "EmbeddingPrediction"}

TRAIN_LAUNCHER = '''#!/usr/bin/env python
"""Train this setup: python train.py [ITERATIONS]. Everything else comes from train_config.ini."""
import sys
from pathlib import Path

from synful.cli import main

args = ["train", str(Path(__file__).resolve().parent)]
if len(sys.argv) > 1:
    args += ["--iterations"] + sys.argv[1:2]
sys.exit(main(args + sys.argv[2:]))
'''

TRANSMITTER_TRAIN_LAUNCHER = '''#!/usr/bin/env python
"""Train this setup: python train.py [ITERATIONS]. Everything else comes from transmitter_train_config.ini;
without ITERATIONS, training runs to its [TransmitterTraining] iterations."""
import sys
from pathlib import Path

from synful.cli import main

args = ["transmitter", "train", str(Path(__file__).resolve().parent)]
if len(sys.argv) > 1:
    args += ["--iterations"] + sys.argv[1:2]
sys.exit(main(args + sys.argv[2:]))
'''


EMBEDDING_TRAIN_LAUNCHER = '''#!/usr/bin/env python
"""Train this setup: python train.py [ITERATIONS]. Everything else comes from embedding_train_config.ini;
without ITERATIONS, training runs to its [EmbeddingTraining] iterations."""
import sys
from pathlib import Path

from synful.cli import main

args = ["embed", "train", str(Path(__file__).resolve().parent)]
if len(sys.argv) > 1:
    args += ["--iterations"] + sys.argv[1:2]
sys.exit(main(args + sys.argv[2:]))
'''

LAUNCHERS = {"partner": TRAIN_LAUNCHER, "transmitter": TRANSMITTER_TRAIN_LAUNCHER, "embedding": EMBEDDING_TRAIN_LAUNCHER}


class ScaffoldError(SynfulError):
    """An experiment setup cannot be created or removed."""


@dataclass(frozen=True)
class RunIds:
    """Experiment name, train id and (for a prediction setup) predict id of a setup directory."""

    experiment: str
    train_id: int
    predict_id: int | None = None

    @property
    def name(self) -> str:
        """``<exp>_t<T>`` or ``<exp>_t<T>_p<P>``: the stem of every name a run writes."""
        s = f"{self.experiment}_t{self.train_id}"
        return s if self.predict_id is None else f"{s}_p{self.predict_id}"


def template_text(name: str) -> str:
    """The commented template ``configs/<name>``; generated from the dataclasses if the repo copy is absent."""
    path = TEMPLATE_DIR / name
    if path.is_file():
        return path.read_text()
    return render_template(_TEMPLATE_SECTIONS[name])


def _check_name(experiment: str):
    if not experiment or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", experiment):
        raise ScaffoldError(f"experiment name {experiment!r}: use letters, digits, '_', '-' or '.'")


def train_setup_dir(base_dir, experiment: str, train_id: int) -> Path:
    """``<base>/<exp>/02_train/setup_t<T>``."""
    return Path(base_dir) / experiment / "02_train" / f"setup_t{int(train_id)}"


def predict_setup_dir(base_dir, experiment: str, train_id: int, predict_id: int) -> Path:
    """``<base>/<exp>/03_predict/setup_t<T>_p<P>``."""
    return Path(base_dir) / experiment / "03_predict" / f"setup_t{int(train_id)}_p{int(predict_id)}"


def run_ids(setup_dir) -> RunIds:
    """Parse experiment, train and predict ids from a setup directory's path."""
    setup_dir = Path(setup_dir).resolve()
    m = re.fullmatch(r"setup_t(\d+)(?:_p(\d+))?", setup_dir.name)
    if not m or setup_dir.parent.name not in ("02_train", "03_predict"):
        raise ScaffoldError(f"{setup_dir}: not a setup directory (expected <exp>/02_train/setup_t<T> "
                            f"or <exp>/03_predict/setup_t<T>_p<P>)")
    return RunIds(setup_dir.parent.parent.name, int(m.group(1)), None if m.group(2) is None else int(m.group(2)))


def _atomic_dir(target: Path, files: dict[str, str], executable: tuple = ()):
    # not io.files.atomic_write, which replaces: a setup directory is created once and never overwritten
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text)
            if name in executable:
                os.chmod(tmp / name, 0o755)
        os.rename(tmp, target)  # fails if target appeared meanwhile
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            raise ScaffoldError(f"{target}: setup already exists") from None
        raise ScaffoldError(f"{target}: cannot create setup: {e}") from None


def setup_kind(setup_dir) -> str:
    """``transmitter`` / ``embedding`` if the setup holds a transmitter_ / embedding_ train or predict config,
    else ``partner``."""
    setup_dir = Path(setup_dir)
    for kind in ("transmitter", "embedding"):
        if any((setup_dir / f"{kind}_{n}_config.ini").is_file() for n in ("train", "predict")):
            return kind
    return "partner"


def create_train_setup(base_dir, experiment: str, train_id: int, *, overrides: dict | None = None,
                       kind: str = "partner") -> Path:
    """Create ``02_train/setup_t<T>`` with train_config.ini, worker_config.ini and train.py.

    ``kind="transmitter"`` writes transmitter_train_config.ini instead of
    train_config.ini, and a train.py that runs ``synful transmitter train``;
    ``kind="embedding"`` embedding_train_config.ini and ``synful embed train``.

    ``overrides`` is {file name: {section: {key: value}}} applied to the
    templates.  Raises ScaffoldError when the setup exists.
    """
    _check_name(experiment)
    if int(train_id) < 0:
        raise ScaffoldError(f"train id {train_id}: must be >= 0")
    target = train_setup_dir(base_dir, experiment, train_id)
    if target.exists():
        raise ScaffoldError(f"{target}: setup already exists (remove it with -c)")
    overrides = overrides or {}
    (Path(base_dir) / experiment / "01_data").mkdir(parents=True, exist_ok=True)
    if kind not in KINDS:
        raise ScaffoldError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    train_ini = f"{KINDS[kind]}train_config.ini"
    files = {
        train_ini: fill_template(template_text(train_ini), overrides.get(train_ini, {})),
        "worker_config.ini": fill_template(template_text("worker_config.ini"), overrides.get("worker_config.ini", {})),
        "train.py": LAUNCHERS[kind],
    }
    _atomic_dir(target, files, executable=("train.py",))
    return target


def remove_train_setup(base_dir, experiment: str, train_id: int) -> list[Path]:
    """Remove ``02_train/setup_t<T>`` and its prediction setups ``03_predict/setup_t<T>_p*``; return what was removed.

    The prediction setups go first (they predict with this setup's checkpoints and are useless
    without them), the training setup last, so an interrupted removal can be repeated.  Result
    collections in a MongoDB store are not touched (an SQLite store inside a run directory goes
    with it).  ScaffoldError when the training setup is absent.
    """
    target = train_setup_dir(base_dir, experiment, train_id)
    if not target.is_dir():
        raise ScaffoldError(f"{target}: no such setup")
    removed = []
    for p in list_predict_setups(base_dir, experiment, train_id):
        shutil.rmtree(p)
        removed.append(p)
    shutil.rmtree(target)
    return removed + [target]


def list_predict_setups(base_dir, experiment: str, train_id: int) -> list[Path]:
    """The prediction setups ``03_predict/setup_t<T>_p<P>`` of a training setup, by increasing P."""
    pdir = Path(base_dir) / experiment / "03_predict"
    found = [(int(m.group(1)), p) for p in (pdir.iterdir() if pdir.is_dir() else [])
             if p.is_dir() and (m := re.fullmatch(rf"setup_t{int(train_id)}_p(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def remove_predict_setup(base_dir, experiment: str, train_id: int, predict_id: int) -> Path:
    """Remove ``03_predict/setup_t<T>_p<P>`` and everything in it (outputs, logs, an SQLite store); ScaffoldError when absent."""
    target = predict_setup_dir(base_dir, experiment, train_id, predict_id)
    if not target.is_dir():
        raise ScaffoldError(f"{target}: no such setup")
    shutil.rmtree(target)
    return target


def _next_predict_id(base_dir, experiment: str, train_id: int) -> int:
    pdir = Path(base_dir) / experiment / "03_predict"
    ids = [int(m.group(1)) for p in (pdir.iterdir() if pdir.is_dir() else [])
           if (m := re.fullmatch(rf"setup_t{int(train_id)}_p(\d+)", p.name))]
    return max(ids) + 1 if ids else 0


def _check_checkpoints(train_dir: Path, kind: str, iterations: list[int]) -> None:
    """ScaffoldError naming the first iteration without a checkpoint in ``train_dir`` and the ones there are."""
    if kind == "transmitter":
        from .transmitters.train import checkpoint_path, list_checkpoints
    elif kind == "embedding":
        from .embed.train import checkpoint_path, list_checkpoints
    else:
        from .train import checkpoint_path, list_checkpoints

    for it in iterations:
        path = checkpoint_path(train_dir, it)
        if not path.is_file():
            have = [n for n, _ in list_checkpoints(train_dir)]
            raise ScaffoldError(f"{path}: no checkpoint for iteration {it} (there: {have or 'none'}; train first, "
                                f"or pass --allow-missing-checkpoints to scaffold ahead of training)")


def create_predict_setups(base_dir, experiment: str, train_id: int, iterations, *, validation: bool = False,
                          overrides: dict | None = None, require_checkpoints: bool = False) -> list[Path]:
    """Create one ``03_predict/setup_t<T>_p<P>`` per checkpoint iteration.

    P counts up from the highest existing predict id of this train setup.
    ``split_part`` is ``validation`` with ``validation=True``, else ``test``.
    Raises ScaffoldError when the train setup does not exist, and with
    ``require_checkpoints`` when an iteration has no checkpoint file.
    """
    _check_name(experiment)
    train_dir = train_setup_dir(base_dir, experiment, train_id)
    kind = setup_kind(train_dir)
    predict_ini = f"{KINDS[kind]}predict_config.ini"
    if not (train_dir / f"{KINDS[kind]}train_config.ini").is_file():
        raise ScaffoldError(f"{train_dir}: train setup does not exist (run prepare_training.py -e {experiment} "
                            f"-t {train_id} first)")
    iterations = [int(i) for i in iterations]
    if not iterations or any(i < 1 for i in iterations):
        raise ScaffoldError(f"iterations {iterations}: give one or more checkpoint iterations >= 1")
    if require_checkpoints:
        _check_checkpoints(train_dir, kind, iterations)
    overrides = overrides or {}
    created = []
    p = _next_predict_id(base_dir, experiment, train_id)
    for it in iterations:
        target = predict_setup_dir(base_dir, experiment, train_id, p)
        pvals = {s: dict(kv) for s, kv in overrides.get(predict_ini, {}).items()}
        run = {"train_setup": os.path.relpath(train_dir, target), "iteration": it}
        if kind != "embedding" or validation:  # an embedding run embeds every synapse unless -v asks for one part
            run["split_part"] = "validation" if validation else "test"
        pvals.setdefault(PREDICT_SECTION[kind], {}).update(run)
        wvals = overrides.get("worker_config.ini") or {}
        wtext = (train_dir / "worker_config.ini").read_text() if (train_dir / "worker_config.ini").is_file() \
            else template_text("worker_config.ini")
        files = {
            predict_ini: fill_template(template_text(predict_ini), pvals),
            "worker_config.ini": fill_template(wtext, wvals),
        }
        _atomic_dir(target, files)
        created.append(target)
        p += 1
    return created


def validate_setup(setup_dir) -> list[Path]:
    """Read and validate every config of a setup directory; return the files checked.

    Raises ConfigError (naming file, section and key) on the first invalid
    value and ScaffoldError when the directory holds no config.
    """
    setup_dir = Path(setup_dir)
    readers = {"train_config.ini": read_train_config, "predict_config.ini": read_predict_config,
               "worker_config.ini": read_worker_config,
               "transmitter_train_config.ini": read_transmitter_train_config,
               "transmitter_predict_config.ini": read_transmitter_predict_config,
               "embedding_train_config.ini": _read_embedding_train,
               "embedding_predict_config.ini": _read_embedding_predict}
    checked = []
    for name, reader in readers.items():
        path = setup_dir / name
        if path.is_file():
            reader(path)
            checked.append(path)
    if not checked:
        raise ScaffoldError(f"{setup_dir}: no train_config.ini, predict_config.ini or worker_config.ini")
    return checked


def _read_embedding_train(path):
    from .config import read_config

    return read_config(path, EMBEDDING_TRAIN_SECTIONS)


def _read_embedding_predict(path):
    from .config import read_config

    return read_config(path, EMBEDDING_PREDICT_SECTIONS)
