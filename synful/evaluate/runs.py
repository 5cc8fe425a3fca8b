"""Evaluating what a user names: an evaluation JSON (:func:`evaluate_config`) or a prediction run with its
[Evaluation] section (:func:`evaluate_run`); both read the inputs, record where their segment ids came from,
run :func:`~synful.evaluate.evaluate` and write the results."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ..config import Evaluation, read_predict_config, to_dict
from ..errors import SynfulError
from ..io.partners import NO_ID, read_partners
from .calibration import calibrated
from .common import EvaluationError, _file_ids, _sites, logger, read_ground_truth
from .results import _inputs_info, write_results
from .settings import check_settings, read_evaluation_json, read_skeleton_ids
from .sweep import evaluate


def _log_matching(settings: Evaluation, ids: dict) -> None:
    if settings.matching == "location":
        logger.info("matching = location: partners match by distance only, ids are not compared")
    elif settings.matching == "skeleton":
        logger.info("matching = skeleton: partners match only with equal (pre_skel_id, post_skel_id)")
    else:
        logger.info("matching = segment: partners match only with equal (pre_seg_id, post_seg_id); predictions' "
                    "ids from %s, ground truth's from %s", ids["predictions"], ids["ground_truth"])


def _evaluate_and_write(settings: Evaluation, pred: np.ndarray, gt: np.ndarray, skel, ids: dict, *, where: str,
                        sources: tuple, match_ids, calib: dict | None, out_dir, default_out: Path, title: str,
                        **info) -> tuple[list[dict], Path]:
    """Run :func:`evaluate` (timed), add the calibration, and write the results into ``out_dir`` (else
    ``results_dir``, else ``default_out``); ``info``: what ``inputs`` records besides the common keys."""
    start = time.perf_counter()
    results = evaluate(pred, gt, settings, skel, where=where, sources=sources, match_seg_ids=match_ids)
    seconds = time.perf_counter() - start
    extra = {}
    if calib is not None:
        results = [{**r, "calibration": calib} for r in results]
        extra["calibration"] = calib
    if out_dir is None and settings.results_dir is not None:
        out_dir = settings.results_dir
    out_dir = Path(out_dir) if out_dir is not None else default_out
    write_results(results, out_dir, title=title,
                  inputs=_inputs_info(settings, pred, gt, skel, seconds, **info, segment_ids=ids, **extra))
    return results, out_dir


def evaluate_config(path, out_dir=None, calibration=None) -> tuple[list[dict], Path]:
    """Evaluate what an evaluation JSON config names; write the results into ``out_dir``.

    ``out_dir`` defaults to ``<config folder>/<config stem>_evaluation``.
    Every results file records ``matching`` and, under
    ``inputs.segment_ids``, where each side's segment ids came from.
    ``calibration``: validation results (:func:`read_calibration`) whose
    chosen score threshold replaces ``score_thresholds``.
    Returns (per-threshold results, out_dir).
    """
    path = Path(path)
    settings, calib = calibrated(read_evaluation_json(path), calibration)
    pred = read_partners(settings.pred_synlinks)
    gt = read_ground_truth(settings.gt_synlinks)
    skel = read_skeleton_ids(settings.skeleton_ids) if settings.skeleton_ids else None
    ids = {"predictions": _file_ids(settings.pred_synlinks), "ground_truth": _file_ids(settings.gt_synlinks)}
    where = f"{path} matching"
    match_ids = _matching_seg_ids(settings, pred, gt, ids["ground_truth"], where, ids)
    _log_matching(settings, ids)
    return _evaluate_and_write(settings, pred, gt, skel, ids, where=where,
                               sources=(settings.pred_synlinks, settings.gt_synlinks), match_ids=match_ids,
                               calib=calib, out_dir=out_dir, default_out=path.parent / f"{path.stem}_evaluation",
                               title=path.stem, config=str(path.resolve()))


def evaluate_run(predict_dir, out_dir=None, calibration=None, overrides: dict | None = None) -> tuple[list[dict], Path]:
    """Evaluate a prediction run (``03_predict/setup_t<T>_p<P>``) with its [Evaluation] section.

    Predictions: ``pred_synlinks`` if set, else the run's result collection
    (:func:`synful.store.open_run_store`).  Ground truth: ``gt_synlinks`` if
    set, else the partners of the manifest sample the run predicted (the
    first ``split_part`` sample of the training manifest, or the sample whose
    container is ``raw_container``; post sites restricted to the [Prediction]
    ROI when one is set).  With ``matching = segment`` and predictions from
    the store, the ground truth's segment ids must equal the run's
    segmentation ([Extraction] seg_container / seg_dataset) at every
    ground-truth site inside it, else :class:`EvaluationError`.  Results go to
    ``out_dir`` (default ``<predict_dir>/evaluation``); each file records
    ``matching`` and, under ``inputs.segment_ids``, where each side's ids came
    from.  ``matching_seg_container`` set: the predictions' sites are looked up
    there for matching, and the ground truth's ids are checked against it
    instead (module doc).  ``calibration``: validation results
    (:func:`read_calibration`: a prediction run, its evaluation folder or its
    ``summary.json``) whose chosen score threshold replaces
    ``score_thresholds``; the results record it under ``calibration``.
    ``overrides``: [Evaluation] keys replaced for this evaluation only (e.g.
    ``{"matching": "location"}``), checked like the ini's.
    Returns (results, out_dir).
    """
    predict_dir = Path(predict_dir).resolve()
    ini = predict_dir / "predict_config.ini"
    if not ini.is_file():
        raise EvaluationError(f"{predict_dir}: not a prediction setup (no predict_config.ini)")
    cfg = read_predict_config(ini)  # includes the [Evaluation] cross-key checks
    extraction = _run_extraction_config(predict_dir, cfg.extraction)
    settings, calib = calibrated(_overridden(cfg.evaluation, overrides, ini), calibration, predict_dir=predict_dir,
                                 extraction=extraction)
    pred, pred_source, pred_ids, seg = _run_predictions(predict_dir, settings, cfg.extraction)
    if settings.gt_synlinks is not None:
        gt, gt_source, gt_ids = (read_ground_truth(settings.gt_synlinks), settings.gt_synlinks,
                                 _file_ids(settings.gt_synlinks))
    else:
        gt, gt_source, gt_ids = _run_ground_truth(cfg.prediction, f"{ini} [Evaluation] gt_synlinks")
    ids = {"predictions": pred_ids, "ground_truth": gt_ids}
    where = f"{ini} [Evaluation] matching"
    match_ids = _matching_seg_ids(settings, pred, gt, gt_ids, where, ids)
    if match_ids is None and settings.matching == "segment" and seg is not None and len(gt):
        ids["check"] = _check_same_segmentation(gt, seg, gt_ids, where)
    _log_matching(settings, ids)
    skel = read_skeleton_ids(settings.skeleton_ids) if settings.skeleton_ids else None
    title = _run_title(predict_dir)
    return _evaluate_and_write(settings, pred, gt, skel, ids, where=where, sources=(pred_source, gt_source),
                               match_ids=match_ids, calib=calib, out_dir=out_dir,
                               default_out=predict_dir / "evaluation", title=title, predictions=pred_source,
                               ground_truth=gt_source, run=title, predict_dir=str(predict_dir),
                               extraction=extraction)


def _overridden(settings: Evaluation, overrides: dict | None, ini: Path) -> Evaluation:
    """``settings`` with the [Evaluation] keys of ``overrides`` replaced, cross-key checks included."""
    if not overrides:
        return settings
    try:
        return check_settings(dataclasses.replace(settings, **overrides), f"{ini} [Evaluation] (overridden)")
    except TypeError as e:
        raise EvaluationError(f"evaluate_run overrides: {e}") from None


def _run_predictions(predict_dir: Path, settings: Evaluation, extraction) -> tuple:
    """(partners, their source, where their segment ids came from, the run's segmentation or None):
    ``pred_synlinks`` if set, else the run's result collection."""
    if settings.pred_synlinks is not None:
        return (read_partners(settings.pred_synlinks), settings.pred_synlinks, _file_ids(settings.pred_synlinks),
                None)
    from ..store import open_run_store

    with open_run_store(predict_dir) as store:
        pred = store.query()
        pred_source = f"{store!r}"
    seg = _run_segmentation(predict_dir, extraction)
    pred_ids = (f"{seg[0]}/{seg[1]} ([Extraction] seg_container, seg_dataset)" if seg
                else "none ([Extraction] seg_container = None)")
    return pred, pred_source, pred_ids, seg


def _run_title(predict_dir: Path) -> str:
    """The run's name (``<exp>_t<T>_p<P>``), else its folder's name."""
    try:
        from ..scaffold import run_ids

        return run_ids(predict_dir).name
    except SynfulError:
        return predict_dir.name


def _matching_seg_ids(settings: Evaluation, pred: np.ndarray, gt: np.ndarray, gt_ids: str, where: str,
                      ids: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The predictions' (pre, post) ids in ``matching_seg_container`` (None when unset); checks the ground truth's
    ids against it and records both in ``ids``."""
    if settings.matching != "segment" or settings.matching_seg_container is None:
        return None
    from ..io.volumes import lookup_ids, open_volume

    seg = (str(settings.matching_seg_container), settings.matching_seg_dataset)
    try:
        labels = open_volume(*seg)
    except SynfulError as e:
        raise EvaluationError(f"{where.rsplit(' ', 1)[0]} matching_seg_container: cannot open it: {e}") from None
    found = tuple(lookup_ids(labels, _sites(pred, prefix)) for prefix in ("pre", "post"))
    ids["matching"] = (f"{seg[0]}/{seg[1]} (matching_seg_container: the predictions' ids for matching, looked up "
                       f"at their sites; filters use {ids['predictions']})")
    if len(gt):
        ids["check"] = _check_same_segmentation(gt, seg, gt_ids, where)
    return found


def _run_extraction_config(predict_dir: Path, extraction) -> dict:
    """The [Extraction] a run's partners came from: its extraction summary's, else the config's."""
    summary = predict_dir / "extraction_summary.json"
    if summary.is_file():
        try:
            used = json.loads(summary.read_text()).get("config")
            if isinstance(used, dict):
                return used
        except (OSError, ValueError, AttributeError) as e:
            logger.warning("%s: unreadable (%s); taking the [Extraction] settings from the config", summary, e)
    return json.loads(json.dumps(to_dict(extraction)))


def _run_ground_truth(prediction, where: str) -> tuple[np.ndarray, str, str]:
    """Ground truth of the manifest sample a run predicted, restricted to its [Prediction] ROI when set.

    Returns (partners, their source, where their segment ids came from).
    """
    from ..config import read_train_config
    from ..io.manifest import read_manifest, read_sample_partners

    ini = Path(prediction.train_setup) / "train_config.ini"
    if not ini.is_file():
        raise EvaluationError(f"{where}: not set, and the training setup {prediction.train_setup} has no "
                              f"train_config.ini naming a manifest; set gt_synlinks")
    manifest = read_train_config(ini).manifest
    samples = read_manifest(manifest)
    if prediction.raw_container is None:
        chosen = [s for s in samples if s.split == prediction.split_part][:1]
    else:
        raw = Path(prediction.raw_container).resolve()
        chosen = [s for s in samples if Path(s.container).resolve() == raw][:1]
    if not chosen:
        what = (f"{prediction.split_part} sample" if prediction.raw_container is None
                else f"sample with container {prediction.raw_container}")
        raise EvaluationError(f"{where}: not set, and the manifest {manifest} has no {what}; set gt_synlinks")
    sample = chosen[0]
    gt = read_sample_partners(sample)
    if prediction.roi_offset is not None and prediction.roi_shape is not None and len(gt):
        begin = np.asarray(prediction.roi_offset)
        end = begin + np.asarray(prediction.roi_shape)
        post = _sites(gt, "post")
        gt = gt[np.all((post >= begin) & (post < end), axis=1)]
    labels = f"{sample.container}/{sample.labels_dataset}" if sample.labels_dataset else None
    if sample.annotations_in_container:
        ids = f"{labels} (looked up at the annotated sites)" if labels else "none (the sample has no labels)"
    else:
        ids = f"{sample.annotations}" + (f" (ids missing there looked up in {labels})" if labels else "")
    return gt, f"manifest {manifest} sample {sample.name}", ids


def _run_segmentation(predict_dir: Path, extraction) -> tuple[str, str] | None:
    """(container, dataset) the run's partners took their segment ids from, or None.

    The run's extraction summary records the [Extraction] it ran with; without
    one, the current [Extraction] is taken.
    """
    container, dataset = extraction.seg_container, extraction.seg_dataset
    summary = predict_dir / "extraction_summary.json"
    if summary.is_file():
        try:
            used = json.loads(summary.read_text()).get("config", {})
            container, dataset = used.get("seg_container", container), used.get("seg_dataset", dataset)
        except (OSError, ValueError, AttributeError) as e:  # an unreadable summary: fall back to the config's
            logger.warning("%s: cannot read the segmentation the extraction used (%s); taking [Extraction] "
                           "seg_container / seg_dataset", summary, e)
    return None if container is None else (str(container), str(dataset))


def _check_same_segmentation(gt: np.ndarray, seg: tuple[str, str], gt_ids: str, where: str) -> str:
    """Refuse ground-truth segment ids that disagree with ``seg`` (the predictions' segmentation) at the gt sites.

    Returns a one-line account of the check for the results file.
    """
    from ..io.volumes import lookup_ids, open_volume

    try:
        labels = open_volume(seg[0], seg[1])
    except SynfulError as e:
        raise EvaluationError(f"{where} = segment: cannot open the predictions' segmentation: {e}") from None
    checked = 0
    for prefix in ("pre", "post"):
        ids = gt[f"{prefix}_seg_id"]
        known = np.flatnonzero(ids != NO_ID)
        found = lookup_ids(labels, _sites(gt[known], prefix))
        inside = found != NO_ID
        checked += int(inside.sum())
        bad = np.flatnonzero(inside & (found != ids[known]))
        if len(bad):
            i = int(known[bad[0]])
            raise EvaluationError(
                f"{where} = segment: the ground truth's segment ids ({gt_ids}) differ from the predictions' "
                f"segmentation {seg[0]}/{seg[1]} ([Extraction] seg_container, seg_dataset) at {len(bad)} "
                f"{prefix} site(s), first ground-truth record {i}: {prefix}_seg_id {int(ids[i])} vs "
                f"{int(found[bad[0]])}; ids of two segmentations cannot be compared: extract with the ground "
                f"truth's segmentation, or set matching = location")
    if not checked:
        return f"not checked: no ground-truth site with a segment id lies inside {seg[0]}/{seg[1]}"
    return f"ground-truth ids equal {seg[0]}/{seg[1]} at all {checked} ground-truth sites inside it"
