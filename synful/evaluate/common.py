"""What the evaluation modules share: errors, the match record, id and site fields, partner arrays as input,
ground truth and the checks every input passes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import Evaluation
from ..errors import SynfulError
from ..io.partners import NO_ID, PARTNER_DTYPE, check_partners, read_partners

#: one logger for the whole evaluation package (its records keep the name synful.evaluate)
logger = logging.getLogger("synful.evaluate")

#: one true-positive match: indices into the prediction and ground-truth arrays, cost in nm
MATCH_DTYPE = np.dtype([("pred", np.int64), ("gt", np.int64), ("cost", np.float64)])

_CREMI_SUFFIXES = (".h5", ".hdf", ".hdf5", ".zarr", ".n5")
_ID_FIELDS = {"seg": ("pre_seg_id", "post_seg_id"), "skel": ("pre_skel_id", "post_skel_id")}
#: the id type (key of _ID_FIELDS) each ``matching`` mode compares; None: locations only
_MODE_IDS = {"location": None, "segment": "seg", "skeleton": "skel"}
_SITE_FIELDS = {"pre": ("pre_z", "pre_y", "pre_x"), "post": ("post_z", "post_y", "post_x")}


class EvaluationError(SynfulError):
    """Evaluation input (partners, skeleton ids, run) is missing or invalid; the message names it."""


class Matching(NamedTuple):
    """Result of :func:`match_partners`: counts and the true-positive matches (:data:`MATCH_DTYPE`)."""

    tp: int
    fp: int
    fn: int
    matches: np.ndarray


def _as_partners(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != PARTNER_DTYPE:
        raise EvaluationError(f"{name}: expected a PARTNER_DTYPE array, got dtype {a.dtype}")
    return a.reshape(-1)


def _sites(a: np.ndarray, which: str) -> np.ndarray:
    return np.stack([a[f] for f in _SITE_FIELDS[which]], axis=1).astype(np.int64)


def read_ground_truth(path) -> np.ndarray:
    """Partners from FAFB JSON / CSV, or CREMI annotations (HDF5, zarr, N5) via synful.io.cremi."""
    path = Path(path)
    if path.suffix.lower() in _CREMI_SUFFIXES:
        try:
            from ..io.cremi import read_annotations
        except ImportError:
            raise EvaluationError(f"{path}: reading CREMI annotations needs synful.io.cremi") from None
        if not path.exists():
            raise EvaluationError(f"{path}: annotation container not found")
        return np.asarray(read_annotations(path), dtype=PARTNER_DTYPE)
    return read_partners(path)


def check_inputs(pred: np.ndarray, gt: np.ndarray, settings: Evaluation, *, where: str = "matching",
                 sources: tuple[str, str] = ("predictions", "ground truth")) -> dict:
    """Refuse inputs the metric cannot use; return how many partners lack the ids ``matching`` compares.

    Both arrays must pass :func:`synful.io.partners.check_partners` (finite
    scores, unique ids, no two records with the same sites), named by
    ``sources`` (predictions, ground truth).  With ``matching`` segment or
    skeleton, a non-empty side on which no partner carries both ids of that
    type raises :class:`EvaluationError` naming ``where`` (file and key).
    Returns ``{"pred_missing_ids": n, "gt_missing_ids": m}``: partners with one
    of those ids missing, which cannot match (0 for ``location``).
    """
    kind = _MODE_IDS.get(settings.matching, "?")
    if kind == "?":
        raise EvaluationError(f"{where}: expected one of {', '.join(_MODE_IDS)}, got {settings.matching!r}")
    missing = {}
    for a, source, side, key in ((pred, sources[0], "predicted", "pred_missing_ids"),
                                 (gt, sources[1], "ground-truth", "gt_missing_ids")):
        try:
            check_partners(a, source)
        except SynfulError as e:
            raise EvaluationError(str(e)) from None
        if kind is None:
            missing[key] = 0
            continue
        pre, post = _ID_FIELDS[kind]
        lack = int(np.count_nonzero((a[pre] == NO_ID) | (a[post] == NO_ID)))
        if len(a) and lack == len(a):
            raise EvaluationError(f"{where} = {settings.matching}: all {len(a)} {side} partners ({source}) lack "
                                  f"{pre} or {post}; give {side} partners with these ids, or set matching = "
                                  f"location")
        if lack:
            logger.warning("%s = %s: %d of %d %s partners (%s) lack %s or %s: they cannot match", where,
                           settings.matching, lack, len(a), side, source, pre, post)
        missing[key] = lack
    return missing


def _file_ids(path) -> str:
    """Where the segment ids of a partner file or CREMI container come from, in words."""
    path = Path(path)
    if path.suffix.lower() in _CREMI_SUFFIXES:
        from ..io.cremi import NEURON_IDS

        return f"{path}/{NEURON_IDS} (looked up at the annotated sites)"
    return f"{path} (as written in the file; its segmentation is not recorded)"
