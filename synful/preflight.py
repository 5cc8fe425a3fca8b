"""Pre-flight checks: one function per stage, run by the stage before it starts work and by ``synful validate``.

- :func:`check_training_setup` (``synful train``): train_config.ini, the network's output shape for
  ``[Training] input_shape``, the manifest, and every train sample (datasets, voxel size, uint8 raw,
  ROI large enough for the input plus the augmentation margins).
- :func:`check_prediction_setup` (``synful predict``): predict_config.ini and the training setup's
  train_config.ini, the checkpoint of ``[Prediction] iteration``, the raw container / dataset (uint8,
  voxel size, not empty), the ROI, the network output shape with the ``[Prediction]`` overrides, and
  that the run directory and the output container can be written.
- :func:`check_extraction_setup` (``synful extract``): the ``[Extraction]`` cross-key rules, the
  segmentation (when set), the prediction outputs (when they exist, or always for the stage itself) and
  that the run directory can be written.

Each takes ``problems``: None makes the first problem raise (a stage); a :class:`Problems` collects
every problem it can find, one line each, checking what does not depend on an earlier failure
(``synful validate``).  :func:`check_setup` runs the checks that fit a setup directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import SynfulError

__all__ = ["Problems", "check_raw_dtype", "check_writable", "check_training_setup", "check_prediction_setup",
           "check_extraction_setup", "check_setup"]

#: the one raw dtype the U-Net takes (synful.models.normalize_raw maps uint8 0..255 to [-1, 1])
NETWORK_RAW_DTYPE = "uint8"


class Problems:
    """Where pre-flight checks put what they find: ``collect=False`` raises the first problem (a stage),
    ``collect=True`` keeps every one-line message in :attr:`messages` (``synful validate``)."""

    def __init__(self, collect: bool = True):
        self.collect = collect
        self.messages: list[str] = []

    def run(self, check: Callable, *args, **kwargs):
        """``(True, check(...))``, or ``(False, None)`` after recording the :class:`SynfulError` it raised
        (collecting); a stage's problems raise."""
        if not self.collect:
            return True, check(*args, **kwargs)
        try:
            return True, check(*args, **kwargs)
        except SynfulError as e:
            self.messages.append(str(e).splitlines()[0] if str(e) else type(e).__name__)
            return False, None


def _problems(problems: Problems | None) -> Problems:
    return Problems(collect=False) if problems is None else problems


def check_raw_dtype(dtype, name: str, error: type[SynfulError] = SynfulError) -> None:
    """Refuse raw data the U-Net cannot take: only uint8 (0..255, normalised to [-1, 1] as in training).

    ``name`` (``container/dataset``) starts the one-line ``error``.  uint16 or float raw is refused by
    its dtype alone, so NaN values (float only) never reach the network and need no scan of the data.
    """
    if str(dtype) != NETWORK_RAW_DTYPE:
        raise error(f"{name}: raw dtype {dtype}, but the network takes {NETWORK_RAW_DTYPE} raw (0..255, as in "
                    f"training); convert the raw to {NETWORK_RAW_DTYPE}")


def check_writable(path, what: str, error: type[SynfulError] = SynfulError) -> None:
    """Refuse a ``path`` (file or folder, existing or to be made) that cannot be written: a file is created and
    removed in the folder itself when it exists, else in its nearest existing ancestor (where its folders
    would be made).  Catches read-only file systems (EROFS) and missing permissions (EACCES) before any
    output is half-written; raises ``error`` naming ``path`` and ``what`` it is."""
    path = Path(path).absolute()
    probe_dir = path if path.is_dir() else path.parent
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    # access(2), not a probe file: checking must not touch the folder (a finished run's mtimes stay), and
    # it reports a read-only file system even to root
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(probe_dir).f_flag & os.ST_RDONLY)
        reason = "Read-only file system" if read_only else "Permission denied"
        where = "" if probe_dir == path else f" (in {probe_dir})"
        raise error(f"{path}: cannot write the {what}: {reason}{where}")


def check_training_setup(setup_dir, problems: Problems | None = None):
    """The checks ``synful train`` runs before training: returns the ``[Training]`` config, or None when it
    cannot be read (collecting).

    train_config.ini (:func:`synful.config.read_train_config`), the output shape of ``input_shape``
    (:func:`synful.models.output_shape`; the message names the file), then the manifest and its train
    samples (:func:`synful.train_data._training_samples`: datasets, voxel size, uint8 raw, ROI against
    the input plus augmentation margins).  With a bad input shape only the manifest's structure is
    checked (the sample sizes depend on the output shape).
    """
    from .config import ConfigError, read_train_config

    p = _problems(problems)
    ini = Path(setup_dir) / "train_config.ini"
    ok, cfg = p.run(read_train_config, ini)
    if not ok:
        return None

    def shape():
        from .models import output_shape

        try:
            return output_shape(cfg)
        except ConfigError as e:
            raise ConfigError(f"{ini} {e}" if str(e).startswith("[Training]") else str(e)) from None

    ok, _ = p.run(shape)
    if ok:
        from .train_data import _training_samples

        p.run(_training_samples, cfg)
    else:
        from .io.manifest import read_manifest

        p.run(read_manifest, cfg.manifest)
    return cfg


def check_prediction_setup(predict_dir, problems: Problems | None = None):
    """The checks ``synful predict`` runs before anything is written or any worker starts: returns the
    :class:`synful.predict.PredictionPlan`, or None when it could not be made (a problem was collected).

    Everything :func:`synful.predict.plan_prediction` checks (configs, checkpoint, raw container,
    dataset, uint8 dtype, voxel size, a non-empty ROI inside the raw, the network output shape with the
    ``[Prediction]`` overrides), then that the run directory (done markers, logs) and the output
    container can be written.
    """
    from .predict.plan import PredictionError, plan_prediction

    p = _problems(problems)
    plan = plan_prediction(predict_dir, problems=p)
    if plan is None:
        return None
    p.run(check_writable, plan.predict_dir, "prediction run directory (done markers, logs)", PredictionError)
    p.run(check_writable, plan.prediction.out_container,
          f"output container of {plan.predict_dir / 'predict_config.ini'} [Prediction] out_container",
          PredictionError)
    return plan


def check_extraction_setup(predict_dir, problems: Problems | None = None, *, require_predictions: bool = True,
                           writable: bool = True):
    """The checks ``synful extract`` runs before it opens the store.

    predict_config.ini, the ``[Extraction]`` cross-key rules (:func:`synful.config.checks.check_extraction`),
    the segmentation of ``seg_container`` / ``seg_dataset`` when set, the prediction outputs (datasets,
    ``scale`` attributes, shapes: :class:`synful.extract.run._Run`) and that the run directory can be
    written (the store and done markers live there; ``writable=False`` leaves that to a caller that checked
    it already).  Without ``require_predictions`` (``synful validate`` before prediction ran) missing
    prediction outputs are no problem.
    """
    from .config import read_predict_config
    from .config.checks import check_extraction
    from .extract.common import ExtractionError
    from .extract.run import _open_array, _Run

    p = _problems(problems)
    predict_dir = Path(predict_dir).resolve()
    ini = predict_dir / "predict_config.ini"
    if not ini.is_file():
        p.run(_raise, ExtractionError(f"{predict_dir}: no predict_config.ini (not a prediction setup)"))
        return
    ok, cfg = p.run(read_predict_config, ini)
    if not ok:
        return
    x, pred = cfg.extraction, cfg.prediction
    p.run(check_extraction, x, f"{ini} [Extraction]")
    if require_predictions or Path(pred.out_container, pred.indicator_dataset).exists():
        p.run(_Run, predict_dir)  # opens predictions and segmentation as the workers will
    elif x.seg_container is not None:
        p.run(_open_array, x.seg_container, x.seg_dataset, "segmentation",
              f"check {ini} [Extraction] seg_container / seg_dataset, or `synful segment` to make one")
    if writable:
        p.run(check_writable, predict_dir, "prediction run directory (extraction store and done markers)",
              ExtractionError)


def _raise(error: Exception):
    raise error


def check_setup(setup_dir) -> tuple[list[Path], list[str]]:
    """Every pre-flight check that fits ``setup_dir``: ``(config files checked, one-line problems)``.

    A training setup gets :func:`check_training_setup`, a prediction setup
    :func:`check_prediction_setup` and :func:`check_extraction_setup` (prediction outputs checked only
    when they exist), and worker_config.ini is read.  Transmitter setups and unknown folders get the
    config reading of :func:`synful.scaffold.validate_setup`.
    """
    from .config import read_worker_config
    from .scaffold import validate_setup

    setup_dir = Path(setup_dir)
    files = [setup_dir / n for n in ("train_config.ini", "predict_config.ini", "worker_config.ini")]
    train_ini, predict_ini, worker_ini = files
    problems = Problems()
    if not (train_ini.is_file() or predict_ini.is_file()):
        _, checked = problems.run(validate_setup, setup_dir)
        return (checked or []), problems.messages
    if train_ini.is_file():
        check_training_setup(setup_dir, problems)
    if predict_ini.is_file():
        plan = check_prediction_setup(setup_dir, problems)
        before = len(problems.messages)
        # the run directory's write check is the prediction's, unless that stopped before it (no plan)
        check_extraction_setup(setup_dir, problems, require_predictions=False, writable=plan is None)
        # predict_config.ini unreadable: the extraction checks would say it again
        if any(m in problems.messages[:before] for m in problems.messages[before:]):
            del problems.messages[before:]
    if worker_ini.is_file():
        problems.run(read_worker_config, worker_ini)
    return [f for f in files if f.is_file()], problems.messages
