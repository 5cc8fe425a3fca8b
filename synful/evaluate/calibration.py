"""Calibrate on validation, report on test: the score threshold chosen on a validation sweep, checked against
the run it is applied to (:func:`read_calibration`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import ConfigError, Evaluation, read_predict_config, to_dict
from .common import EvaluationError

#: [Evaluation] keys a calibration run may differ in (per-volume paths, the sweep itself, no-op keys)
_CALIBRATION_FREE = frozenset({f.name for f in dataclasses.fields(Evaluation) if f.metadata.get("path")}
                              | {"score_thresholds", "matching_seg_dataset", "multiprocess", "roi_file", "syn_dir"})
#: [Extraction] keys a calibration run may differ in (its segmentation, store and input scales)
_CALIBRATION_FREE_EXTRACTION = frozenset({"seg_container", "seg_dataset", "store_url", "database", "collection",
                                          "credentials_file", "credentials_env"})


def _calibration_file(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "predict_config.ini").is_file():
        try:
            results_dir = read_predict_config(path / "predict_config.ini").evaluation.results_dir
        except ConfigError:
            results_dir = None
        return Path(results_dir) / "summary.json" if results_dir else path / "evaluation" / "summary.json"
    return path / "summary.json"


def read_calibration(path, settings: Evaluation, *, predict_dir=None, extraction: dict | None = None) -> dict:
    """The score threshold chosen on validation results, checked against the run it will be applied to.

    ``path``: a validation prediction run (its ``evaluation/summary.json``),
    an evaluation folder, or a ``summary.json`` written by
    :func:`write_results`.  The choice: the highest f-score of its sweep, the
    lowest threshold on a tie.  Refused (:class:`EvaluationError`) when the
    file is missing, holds no sweep, is itself a calibrated evaluation, was
    evaluated with other metric settings than ``settings`` (any [Evaluation]
    key but paths and ``score_thresholds``), was extracted with other
    settings than ``extraction`` (the target run's [Extraction], when both are
    known; paths, segmentation and store aside), or is ``predict_dir``'s own.

    Returns ``{"score_thr", "validation_fscore", "validation_precision",
    "validation_recall", "rule", "source", "sha256", "validation_run"}``.
    """
    import hashlib

    path = Path(path)
    file = _calibration_file(path)
    if not file.is_file():
        raise EvaluationError(f"{path}: calibration: no evaluation results ({file} not found); run `synful evaluate` "
                              f"on the validation run first")
    raw = file.read_bytes()
    try:
        summary = json.loads(raw)
    except ValueError as e:
        raise EvaluationError(f"{file}: calibration: not a JSON results summary ({e})") from None
    sweep = summary.get("sweep") if isinstance(summary, dict) else None
    if not isinstance(sweep, list) or not sweep or not all(
            isinstance(r, dict) and isinstance(r.get("fscore"), (int, float))
            and isinstance(r.get("score_thr"), (int, float)) for r in sweep):
        raise EvaluationError(f"{file}: calibration: holds no results sweep (a summary.json of `synful evaluate`)")
    inputs = summary.get("inputs") or {}
    if summary.get("calibration") is not None or inputs.get("calibration") is not None:
        raise EvaluationError(f"{file}: calibration: these results are themselves a calibrated evaluation at one "
                              f"threshold; calibrate on a validation sweep")
    theirs = summary.get("settings")
    if not isinstance(theirs, dict):
        raise EvaluationError(f"{file}: calibration: records no evaluation settings")
    ours = to_dict(settings)
    for k in sorted(ours):
        if k in _CALIBRATION_FREE:
            continue
        a, b = json.loads(json.dumps(ours[k])), theirs.get(k)
        if a != b:
            raise EvaluationError(f"{file}: calibration: evaluated with {k} = {json.dumps(b)}, this evaluation has "
                                  f"{k} = {json.dumps(a)}; a threshold only carries over under the same metric")
    val_run = inputs.get("predict_dir")
    if predict_dir is not None and val_run is not None and Path(val_run).resolve() == Path(predict_dir).resolve():
        raise EvaluationError(f"{file}: calibration: these are the results of {predict_dir} itself; calibrate on a "
                              f"validation run")
    their_ex = inputs.get("extraction")
    if extraction is not None and isinstance(their_ex, dict):
        for k in sorted(extraction):
            if k in _CALIBRATION_FREE_EXTRACTION:
                continue
            if json.loads(json.dumps(extraction[k])) != their_ex.get(k):
                raise EvaluationError(f"{file}: calibration: the validation run was extracted with {k} = "
                                      f"{json.dumps(their_ex.get(k))}, this run with {k} = "
                                      f"{json.dumps(extraction[k])}; extract both with the same settings")
    best = max(sweep, key=lambda r: (r["fscore"], -r["score_thr"]))
    return {"score_thr": float(best["score_thr"]), "validation_fscore": best["fscore"],
            "validation_precision": best.get("precision"), "validation_recall": best.get("recall"),
            "rule": "highest validation f-score, lowest threshold on a tie",
            "source": str(file.resolve()), "sha256": hashlib.sha256(raw).hexdigest(), "validation_run": val_run,
            "validation_thresholds": [r["score_thr"] for r in sweep]}


def calibrated(settings: Evaluation, calibration, **where) -> tuple[Evaluation, dict | None]:
    """``settings`` at the score threshold :func:`read_calibration` chooses on ``calibration``, and that choice;
    ``(settings, None)`` without calibration.  ``where``: ``predict_dir`` and ``extraction`` of the target run."""
    if calibration is None:
        return settings, None
    calib = read_calibration(calibration, settings, **where)
    return dataclasses.replace(settings, score_thresholds=[calib["score_thr"]]), calib
